"""The numpy pipeline of bench_pipeline gives the package's events on the same input.

The benchmark's ratio against numpy means something only if both do the same work; this
runs both on a few small meters (one loss each, plus register wraps, NaN readings,
repeated and swapped timestamps) and compares every event.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks import bench_pipeline as bench
from benchmarks import numpy_pipeline as npp
from detectors.events import Event

DAYS = 49


def _key(ev: Event) -> tuple[object, ...]:
    return (ev.meter, ev.type, ev.start, ev.end, ev.severity)


@pytest.fixture(scope="module")
def site() -> bench.Site:
    return bench.site_readings(DAYS * 1440)


@pytest.mark.parametrize("seed", range(4), ids=lambda s: bench.LOSSES[s % 4])
def test_numpy_pipeline_finds_the_same_events(site: bench.Site, seed: int) -> None:
    lo, hi = bench.grid(site)
    ts, v, _ = bench.meter_readings(seed, site)
    ours, _, model = bench.run_ours(ts, v, seed, bench.ours_site(site), lo, hi, bench.Clock())
    ours = [e for e in ours if e.type.value not in bench.DATA_EVENTS]
    mine = bench.run_numpy(ts, v, seed, bench.numpy_site(site), lo, hi, model, bench.Clock())
    assert ours, "nothing found: the comparison would prove nothing"
    assert sorted(map(_key, mine)) == sorted(map(_key, ours))
    for a, b in zip(sorted(ours, key=_key), sorted(mine, key=_key), strict=True):
        assert math.isclose(a.excess, b.excess, rel_tol=1e-6, abs_tol=1e-9)


def test_numpy_cleaning_matches_on_faulty_readings(site: bench.Site) -> None:
    from detectors.clean import clean_counter

    lo, hi = bench.grid(site)
    ts, v, _ = bench.meter_readings(5, site)
    v[1000:1100] = np.nan  # a hole longer than the gap limit
    meter = bench.meter_info(5)
    ours = clean_counter(ts, v, meter=meter, interval_s=bench.INTERVAL_S, start_s=lo, end_s=hi)
    mine = npp.clean_counter(ts, v, interval_s=bench.INTERVAL_S, rollover=meter.rollover,
                             max_rate_per_h=meter.max_rate_per_h, start_s=lo, end_s=hi)
    assert np.array_equal(np.isnan(ours.consumption), np.isnan(mine.consumption))
    np.testing.assert_allclose(mine.consumption, ours.consumption, rtol=1e-9, atol=1e-9)
    assert mine.resolution == ours.resolution
