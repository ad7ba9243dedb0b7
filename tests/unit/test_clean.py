"""Cleaning: kernels against their plain-Python twins, and each cleaning case by example."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors.clean import Quality, clean_counter, counter_segments, resample_gauge
from detectors.events import EventType
from detectors.kernels import clean as k
from detectors.meter import MeterInfo, rate_to_counter_factor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import naive

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
H = 3600


def same(a: np.ndarray, b: list[float] | np.ndarray, rel: float = 1e-9) -> bool:
    """Equal arrays, NaN where NaN, to a relative tolerance (sums are done in another order)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(
        np.all((np.isnan(a) & np.isnan(b)) | np.isclose(a, b, rtol=rel, atol=1e-9))
    )


# ----------------------------------------------------------------------------- strategies

special = st.sampled_from([math.nan, math.inf, -math.inf])


@st.composite
def readings(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """A counter's readings: mostly rising, with drops, wraps, NaN/inf, repeats and flats."""
    n = draw(st.integers(0, 40))
    ts = draw(st.lists(st.integers(0, 40).map(lambda x: x * 60), min_size=n, max_size=n))
    values: list[float] = []
    level = draw(st.sampled_from([0.0, 100.0, 65500.0, 655.0, 4294967000.0]))
    for _ in range(n):
        step = draw(
            st.one_of(
                st.just(0.0),  # constant stretch
                st.floats(0, 50, allow_nan=False),
                st.floats(-2, 0, allow_nan=False),  # jitter or small drops
                st.just(-level),  # reset to zero
                st.floats(1e5, 1e7),  # implausible jump
            )
        )
        level = level + step
        if level > 65536 and draw(st.booleans()) and level < 70000:
            level -= 65536  # 16-bit wrap
        values.append(draw(special) if draw(st.integers(0, 9)) == 0 else level)
    return np.asarray(ts, dtype=np.int64), np.asarray(values, dtype=np.float64)


params = st.tuples(
    st.sampled_from([0.0, 65536.0, 655.36, 4294967296.0]),  # rollover (0: infer)
    st.sampled_from([0.0, 1.0, 100.0]),  # max rate per second (0: unknown)
    st.sampled_from([0.0, 0.5, 7.0]),  # resolution
    st.sampled_from([60.0, 150.0, 1e9]),  # gap_s
    st.sampled_from([0.0, 0.5]),  # jitter_abs
    st.sampled_from([0.0, 1e-5, 1e-2]),  # jitter_rel
)


# ----------------------------------------------------------------------------- kernel == twin


@SETTINGS
@given(readings())
def test_order_readings_matches_naive(data: tuple[np.ndarray, np.ndarray]) -> None:
    ts, vs = data
    keep, flags = k._order_readings(ts, vs, np.argsort(ts, kind="stable"))
    want_keep, want_flags = naive.order_readings(ts.tolist(), vs.tolist())
    assert keep.tolist() == want_keep
    assert flags.tolist() == want_flags


@SETTINGS
@given(readings())
def test_min_rise_matches_naive(data: tuple[np.ndarray, np.ndarray]) -> None:
    _, vs = data
    assert k._min_rise(vs) == naive.min_rise(vs.tolist())


@SETTINGS
@given(readings(), params)
def test_counter_segments_matches_naive(
    data: tuple[np.ndarray, np.ndarray], p: tuple[float, float, float, float, float, float]
) -> None:
    ts, vs = data
    keep, flags = k._order_readings(ts, vs, np.argsort(ts, kind="stable"))
    got = k._counter_segments(ts[keep], vs[keep], flags, *p)
    want = naive.counter_segments(ts[keep].tolist(), vs[keep].tolist(), flags.tolist(), *p)
    assert len(got[0]) == len(want)
    for col in range(6):
        expected = [row[col] for row in want]
        if col in (0, 1, 3):
            assert got[col].tolist() == expected
        else:
            assert same(got[col], expected)


@SETTINGS
@given(readings(), params, st.sampled_from([60, 300, 900]), st.integers(-3, 3))
def test_resample_segments_matches_naive(
    data: tuple[np.ndarray, np.ndarray],
    p: tuple[float, float, float, float, float, float],
    interval: int,
    shift: int,
) -> None:
    ts, vs = data
    keep, flags = k._order_readings(ts, vs, np.argsort(ts, kind="stable"))
    t0, t1, d, f, _, _ = k._counter_segments(ts[keep], vs[keep], flags, *p)
    start = shift * interval
    n = 45 * 60 // interval
    cons, fl, _ = k._resample_segments(t0, t1, d, f, start, interval, n)
    want_cons, want_flags = naive.resample_segments(
        list(zip(t0.tolist(), t1.tolist(), d.tolist(), f.tolist(), strict=True)), start, interval, n
    )
    assert same(cons, want_cons)
    assert fl.tolist() == want_flags


@SETTINGS
@given(readings(), st.sampled_from([0, 3, 10_000]))
def test_sort_nearly_matches_naive(data: tuple[np.ndarray, np.ndarray], budget: int) -> None:
    ts, vs = data
    t, v, flags, done = k._sort_nearly(ts, vs, budget)
    want_keep, want_flags = naive.order_readings(ts.tolist(), vs.tolist())
    assert k._in_order(ts) == (want_keep == list(range(ts.size)) and not any(want_flags))
    if not done:  # gave up: too far out of order for the budget
        assert budget < 10_000
        return
    assert t.tolist() == ts[want_keep].tolist()
    assert same(v, vs[want_keep])
    assert flags.tolist() == want_flags


@SETTINGS
@given(readings(), params, st.sampled_from([60, 300, 900]), st.integers(-3, 3))
def test_fused_clean_matches_naive(
    data: tuple[np.ndarray, np.ndarray],
    p: tuple[float, float, float, float, float, float],
    interval: int,
    shift: int,
) -> None:
    """The one-pass kernel gives the twins' segments-then-resampling, NOTABLE pairs kept."""
    ts, vs = data
    keep, flags = k._order_readings(ts, vs, np.argsort(ts, kind="stable"))
    start, n = shift * interval, 45 * 60 // interval
    segs = naive.counter_segments(ts[keep].tolist(), vs[keep].tolist(), flags.tolist(), *p)
    want_cons, want_flags = naive.resample_segments([s[:4] for s in segs], start, interval, n)
    for in_flags in (flags, flags[:0] if not flags.any() else flags):
        cons, fl, *notable = k._clean(ts[keep], vs[keep], in_flags, *p, start, interval, n)
        assert same(cons, want_cons)
        assert fl.tolist() == want_flags
        kept = [s for s in segs if s[3] & k.NOTABLE]
        assert notable[0].tolist() == [s[0] for s in kept]
        assert notable[1].tolist() == [s[1] for s in kept]
        assert same(notable[2], [s[2] for s in kept])
        assert notable[3].tolist() == [s[3] for s in kept]
        assert same(notable[4], [s[4] for s in kept])
        assert same(notable[5], [s[5] for s in kept])


def test_fused_clean_keeps_many_notable_pairs() -> None:
    """More notable pairs than the kernel's first buffer holds (it grows)."""
    ts = np.arange(0, 100 * 7200, 7200, dtype=np.int64)  # every pair is a 2 h gap
    r = clean_counter(ts, np.arange(100.0), interval_s=900, gap_s=3600)
    assert r.notable.t0_s.tolist() == ts[:-1].tolist()
    assert [e.type for e in r.events] == [EventType.GAP] * 99
    assert len(r.gap_start_s) == 1  # touching gaps make one run of NaN intervals


def test_shuffled_readings_fall_back_to_a_full_sort() -> None:
    rng = np.random.default_rng(1)
    ts = rng.permutation(5000).astype(np.int64) * 60
    got = clean_counter(ts, ts / 60.0, interval_s=900)
    want = clean_counter(np.sort(ts), np.sort(ts) / 60.0, interval_s=900)
    assert same(got.consumption, want.consumption)
    assert np.all(got.flags & Quality.OUT_OF_ORDER)


@SETTINGS
@given(readings(), st.sampled_from([60, 300, 900]), st.integers(-3, 3))
def test_resample_gauge_matches_naive(
    data: tuple[np.ndarray, np.ndarray], interval: int, shift: int
) -> None:
    ts, vs = data
    keep, _ = k._order_readings(ts, vs, np.argsort(ts, kind="stable"))
    start, n = shift * interval, 45 * 60 // interval
    mean, count = k._resample_gauge(ts[keep], vs[keep], start, interval, n)
    want_mean, want_count = naive.resample_gauge(
        ts[keep].tolist(), vs[keep].tolist(), start, interval, n
    )
    assert same(mean, want_mean)
    assert count.tolist() == want_count


@SETTINGS
@given(
    st.lists(st.integers(0, 10_000), min_size=2, max_size=60, unique=True),
    st.sampled_from([60, 900, 3600]),
)
def test_resampling_conserves_total(times: list[int], interval: int) -> None:
    ts = np.sort(np.asarray(times, dtype=np.int64))
    values = np.cumsum(np.linspace(0.5, 3.0, ts.size))
    r = clean_counter(ts, values, interval_s=interval, gap_s=1e9)
    assert r.total == pytest.approx(values[-1] - values[0], rel=1e-12)
    # the same with gaps: the lumps keep what the NaN intervals lost
    r = clean_counter(ts, values, interval_s=interval, gap_s=120)
    assert r.total == pytest.approx(values[-1] - values[0], rel=1e-12)


# ----------------------------------------------------------------------------- cases


def segments_of(values: list[float], **kw: float) -> tuple[list[float], list[Quality]]:
    ts = np.arange(len(values), dtype=np.int64) * 60
    seg = counter_segments(ts, values, **kw)  # type: ignore[arg-type]
    return seg.delta.tolist(), [Quality(int(f)) for f in seg.flags]


def test_16_bit_rollover_is_inferred() -> None:
    deltas, flags = segments_of([65530, 65535, 4, 10], max_rate_per_h=3600)
    assert deltas == [5, 5, 6]
    assert Quality.ROLLOVER in flags[1]


def test_16_bit_rollover_without_rated_maximum_needs_top_and_bottom_of_register() -> None:
    deltas, flags = segments_of([65000, 65530, 20])
    assert deltas == [530, 26]
    assert Quality.ROLLOVER in flags[1]
    # from the middle of the register to near zero is no wrap: a reset of unknown size
    deltas, flags = segments_of([30000, 20])
    assert math.isnan(deltas[0]) and Quality.RESET | Quality.UNKNOWN in flags[0]


def test_scaled_16_bit_rollover_from_profile() -> None:
    deltas, flags = segments_of([655.20, 655.30, 0.05], rollover=655.36, max_rate_per_h=60)
    assert deltas[1] == pytest.approx(0.11)
    assert Quality.ROLLOVER in flags[1]


def test_32_bit_rollover() -> None:
    deltas, flags = segments_of([4294967290, 5], max_rate_per_h=3600)
    assert deltas == [11]
    assert Quality.ROLLOVER in flags[0]
    deltas, _ = segments_of([4294967290, 5], rollover=4294967296.0)
    assert deltas == [11]


def test_reset_takes_new_reading_as_consumption_when_plausible() -> None:
    deltas, flags = segments_of([402117, 402118, 0.4, 0.9], max_rate_per_h=192)
    assert deltas == pytest.approx([1, 0.4, 0.5])
    assert Quality.RESET in flags[1] and Quality.UNKNOWN not in flags[1]


def test_replacement_meter_starting_high_gives_unknown() -> None:
    deltas, flags = segments_of([402117, 402118, 5000, 5001], max_rate_per_h=192)
    assert math.isnan(deltas[1])
    assert Quality.RESET | Quality.UNKNOWN in flags[1]
    assert deltas[2] == 1


def test_duplicates_keep_last_finite_reading() -> None:
    ts = np.array([0, 60, 60, 60, 120], dtype=np.int64)
    seg = counter_segments(ts, [0, 1, 2, math.nan, 3])
    assert seg.t1_s.tolist() == [60, 120]
    assert seg.delta.tolist() == [2, 1]
    assert Quality.DUPLICATE in Quality(int(seg.flags[0]))


def test_out_of_order_readings_are_sorted_and_flagged() -> None:
    ts = np.array([0, 120, 60, 180], dtype=np.int64)
    seg = counter_segments(ts, [0, 2, 1, 3])
    assert seg.delta.tolist() == [1, 1, 1]
    assert Quality.OUT_OF_ORDER in Quality(int(seg.flags[0]))
    assert all(Quality.OUT_OF_ORDER not in Quality(int(f)) for f in seg.flags[1:])


def test_jitter_is_ignored_and_not_counted_twice() -> None:
    deltas, flags = segments_of([10.0, 9.99995, 10.1], jitter_rel=1e-5)
    assert deltas == pytest.approx([0.0, 0.1])
    assert Quality.JITTER in flags[0]
    # by default one counter step (the smallest rise seen) is the tolerance
    deltas, flags = segments_of([10.0, 10.5, 10.0, 11.0])
    assert deltas == pytest.approx([0.5, 0.0, 0.5])
    assert Quality.JITTER in flags[1]


def test_coarse_counter_step_is_not_an_impossible_rate() -> None:
    # a float32 register holding 7.3 million t moves in 0.5 t steps: one step per minute is
    # 30 t/h, far above the rated 7 t/h, yet nothing is wrong
    values = [7311000.0] * 5 + [7311000.5] * 5 + [7311001.0] * 5
    deltas, flags = segments_of(values, max_rate_per_h=7.05)
    assert sum(deltas) == 1.0
    assert not any(Quality.IMPOSSIBLE_RATE in f for f in flags)


def test_impossible_glitch_is_dropped() -> None:
    deltas, flags = segments_of([0, 1, 1e6, 3], max_rate_per_h=3600)
    assert deltas == [1, 2]
    assert Quality.IMPOSSIBLE_RATE in flags[1]


def test_impossible_jump_that_persists_is_unknown() -> None:
    ts = np.arange(4, dtype=np.int64) * 60
    seg = counter_segments(ts, [0, 1, 1e6, 1e6 + 1], max_rate_per_h=3600)
    assert seg.delta[0] == 1 and math.isnan(seg.delta[1]) and seg.delta[2] == 1
    assert Quality.IMPOSSIBLE_RATE | Quality.UNKNOWN in Quality(int(seg.flags[1]))


def test_gap_is_flagged_not_filled_and_total_kept() -> None:
    ts = np.concatenate([np.arange(0, 1800, 60), np.arange(7200, 9000, 60)]).astype(np.int64)
    values = ts / 60.0  # 1 unit per minute
    r = clean_counter(ts, values, interval_s=900)
    gap = (r.flags & Quality.GAP) != 0
    assert gap.any() and np.isnan(r.consumption[gap]).all()
    assert r.consumption[0] == pytest.approx(15)  # untouched by the gap
    assert r.gap_start_s.tolist() == [900] and r.gap_end_s.tolist() == [7200]
    assert r.gap_consumption[0] == pytest.approx(7200 / 60 - 15)
    assert r.total == pytest.approx(values[-1] - values[0])
    assert [e.type for e in r.events] == [EventType.GAP]


def test_resampling_spreads_by_time_and_aligns_to_utc() -> None:
    ts = np.array([450, 2250], dtype=np.int64)  # 00:07:30 .. 00:37:30
    r = clean_counter(ts, [0.0, 4.0], interval_s=900, gap_s=1e9)
    assert r.start_s.tolist() == [0, 900, 1800]
    assert r.consumption.tolist() == pytest.approx([1.0, 2.0, 1.0])
    assert Quality.PARTIAL in Quality(int(r.flags[0]))
    assert r.flags[1] == Quality.OK


def test_fixed_grid_marks_uncovered_intervals() -> None:
    r = clean_counter(np.array([900, 1800], dtype=np.int64), [0.0, 1.0], start_s=0, end_s=3600)
    assert r.consumption[1] == 1.0
    assert np.isnan(r.consumption[[0, 2, 3]]).all()
    assert all(Quality.NO_DATA in Quality(int(f)) for f in r.flags[[0, 2, 3]])


def test_events_for_rollover_and_reset_use_meter_unit() -> None:
    meter = MeterInfo("water_cip", "m3", rollover=655.36, max_rate_per_h=60)
    ts = np.arange(5, dtype=np.int64) * 60
    r = clean_counter(ts, [655.20, 655.30, 0.05, 0.2, 0.0], meter=meter)
    kinds = [e.type for e in r.events]
    assert kinds == [EventType.ROLLOVER, EventType.COUNTER_RESET]
    assert "m3" in r.events[0].explanation and "water_cip" in r.events[0].explanation


def test_gauge_resampling_means_per_interval() -> None:
    ts = np.array([0, 300, 600, 900, 2000], dtype=np.int64)
    g = resample_gauge(ts, [1.0, 2.0, math.nan, 4.0, 5.0], interval_s=900)
    assert g.mean.tolist()[:2] == [1.5, 4.0]
    assert g.count.tolist() == [2, 1, 1]


def test_empty_input() -> None:
    r = clean_counter(np.zeros(0, dtype=np.int64), np.zeros(0))
    assert r.consumption.size == 0 and r.total == 0.0 and r.events == ()
    g = resample_gauge(np.zeros(0, dtype=np.int64), np.zeros(0))
    assert g.mean.size == 0


def test_bad_inputs_say_how_to_fix() -> None:
    with pytest.raises(TypeError, match="astype"):
        clean_counter(np.array(["2026-01-01"], dtype="datetime64[s]"), [1.0])
    with pytest.raises(TypeError, match="integer epoch seconds"):
        clean_counter(np.array([0.5, 1.5]), [1.0, 2.0])
    with pytest.raises(ValueError, match="one value per timestamp"):
        clean_counter(np.array([0, 60]), [1.0])
    with pytest.raises(TypeError, match="real numbers"):
        clean_counter(np.array([0, 60]), ["1", "2"])
    with pytest.raises(ValueError, match="interval_s"):
        clean_counter(np.array([0, 60]), [1.0, 2.0], interval_s=0)


def test_rate_units_convert_to_counter_units() -> None:
    assert rate_to_counter_factor("kg/h", "t") == 0.001
    assert rate_to_counter_factor("kW", "kWh") == 1.0
    assert rate_to_counter_factor("m3/h", "m3") == 1.0
    meter = MeterInfo.from_manifest(
        "steam_main",
        {"counter_unit": "t", "rate": "mass_flow_kg_h", "max_rate": 7050.0, "rollover": None},
    )
    assert meter.max_rate_per_h == pytest.approx(7.05)
    with pytest.raises(ValueError, match="max_rate_per_h"):
        rate_to_counter_factor("kW", "m3")


def test_clean_counter_reusing_its_sort_buffers_gives_the_same_result() -> None:
    """Shuffled readings are sorted into per-thread buffers kept between calls."""
    rng = np.random.default_rng(3)

    def meter(n: int) -> tuple[np.ndarray, np.ndarray]:
        ts = np.arange(n, dtype=np.int64) * 60
        vs = np.cumsum(rng.random(n))
        swap = rng.integers(1, n - 1, 5)
        ts[swap], ts[swap + 1] = ts[swap + 1].copy(), ts[swap].copy()
        ts[swap[:2] + 3] = ts[swap[:2] + 2]  # repeated timestamps
        return ts, vs

    a, b = meter(5000), meter(20000)
    first = clean_counter(*a, interval_s=900)
    clean_counter(*b, interval_s=900)  # larger: the buffers grow
    again = clean_counter(*a, interval_s=900)
    assert same(again.consumption, first.consumption)
    assert again.flags.tolist() == first.flags.tolist()
    assert np.any(first.flags & Quality.DUPLICATE) and np.any(first.flags & Quality.OUT_OF_ORDER)
    ts, vs, _, done = k._sort_nearly(*a, 10**9)
    assert done
    assert same(clean_counter(ts, vs, interval_s=900).consumption, first.consumption)
