"""Consumption across a data gap is stored: summed over a period, the stored `consumption`
points (`actual`, and `gap_estimate` on the intervals a gap touches) equal the meter's
counter difference, as `docs/influx-schema.md` promises."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_service_units import FlakyWriter, _spec, reading

from collector import contract
from detectors.clean import Quality
from detectors.service.service import DetectService

T0 = 1767225600  # 2026-01-01T00:00Z, a Thursday
TOPIC = "recp/v1/dairy/m1/reading"
STEP_S = 300


def _fields(text: str) -> dict[str, float]:
    out = {}
    for part in text.split(","):
        key, value = part.split("=", 1)
        out[key] = float(value.rstrip("i")) if not value.startswith('"') else math.nan
    return out


def stored_consumption(svc: DetectService) -> dict[int, dict[str, float]]:
    """The `consumption` points in the spool, by time (seconds): the last one written wins,
    as in the database."""
    out: dict[int, dict[str, float]] = {}
    for _, text in svc.spool.peek(1_000_000):
        if text.startswith("consumption,"):
            _, fields, t_ms = text.rsplit(" ", 2)
            out[int(t_ms) // 1000] = _fields(fields)
    return out


def series(silences: list[tuple[int, int]], end_s: int) -> list[tuple[int, float]]:
    """Readings every 5 min from T0 to ``end_s`` (both on the 15-min grid), at 20 kW plus
    a daytime 60 kW, none inside the (start, end) silences."""
    out, e, t = [], 1000.0, T0
    while t <= end_s:
        if not any(a < t < b for a, b in silences):
            out.append((t, round(e, 6)))
        h = (t % 86400) / 3600
        e += (20.0 + (60.0 if 6 <= h < 18 else 0.0)) * STEP_S / 3600
        t += STEP_S
    return out


def check_totals(svc: DetectService, readings: list[tuple[int, float]]) -> dict[int, dict]:
    points = stored_consumption(svc)
    last = readings[-1][0] // 900 * 900
    assert readings[-1][0] == last  # the last reading closes every interval before it
    assert sorted(points) == list(range(T0, last, 900))  # every interval once
    measured = sum(p.get("actual", 0.0) for p in points.values())
    estimated = sum(p.get("gap_estimate", 0.0) for p in points.values())
    assert measured + estimated == pytest.approx(readings[-1][1] - readings[0][1], rel=1e-9)
    for p in points.values():  # a gap's intervals: estimated, flagged, never measured
        if "gap_estimate" in p:
            assert "actual" not in p and int(p["flags"]) & Quality.GAP
        else:
            assert "actual" in p
        money = p.get("actual", p.get("gap_estimate"))
        assert money is not None and p["cost"] == pytest.approx(0.21 * money)
    return points


META = contract.dumps({
    "v": 1, "site": "dairy", "meter": "m1", "resource": "electricity", "profile": "test",
    "manufacturer": "test", "model": "test", "interval_s": STEP_S,
    "points": {"energy_kwh": {"unit": "kWh", "kind": "counter"}}})
SPEC = "sites: {dairy: {price_per_unit: {kWh: 0.21}}}\n"


@pytest.mark.parametrize("per_batch", [1, 7, 100_000])
def test_a_gap_is_stored_as_estimated_consumption_summing_to_the_counter(
        tmp_path: Path, per_batch: int) -> None:
    """A 6-hour silence and a 2-hour one: stored actual + gap_estimate equals the counter
    difference whether the gap's ends arrive in one batch or in several."""
    silences = [(T0 + 86400 + 3 * 3600, T0 + 86400 + 9 * 3600 + 600),
                (T0 + 2 * 86400 + 13 * 3600 + 300, T0 + 2 * 86400 + 15 * 3600)]
    readings = series(silences, T0 + 3 * 86400)
    svc = run_spec(tmp_path, readings, per_batch)
    points = check_totals(svc, readings)
    gap = [t for t, p in points.items() if "gap_estimate" in p]
    # the intervals the silences touch (their ends' intervals included), spread evenly
    assert gap[0] == T0 + 86400 + 3 * 3600 and len(gap) == 25 + 8
    # (spread evenly over the intervals closed together: the last one may close later)
    first = [points[t]["gap_estimate"] for t in gap[:24]]
    assert max(first) == pytest.approx(min(first))
    svc.spool.close()


def run_spec(tmp_path: Path, readings: list[tuple[int, float]],
             per_batch: int) -> DetectService:
    svc = DetectService(_spec(tmp_path, SPEC), writer=FlakyWriter(0))
    msgs = [(TOPIC, reading(seq=i + 1, ts=t, energy_kwh=v))
            for i, (t, v) in enumerate(readings)]
    msgs.insert(0, (TOPIC.replace("/reading", "/meta"), META))

    async def go() -> None:
        for i in range(0, len(msgs), per_batch):
            await svc.handle(msgs[i : i + per_batch])

    asyncio.run(go())
    return svc


def test_a_silence_of_weeks_and_a_backlog_of_weeks_in_one_batch_keep_the_totals(
        tmp_path: Path) -> None:
    """A meter silent for ten days (more than the week of intervals the service fills
    after a silence), then twelve days of readings in one batch (an agent's backlog): the
    totals still equal the counter difference, and every interval of the backlog is
    stored (before, only the last week of a batch was, the rest of it lost)."""
    silences = [(T0 + 86400, T0 + 11 * 86400)]
    readings = series(silences, T0 + 23 * 86400)
    svc = run_spec(tmp_path, readings, 100_000)
    points = stored_consumption(svc)
    measured = sum(p.get("actual", 0.0) for p in points.values())
    estimated = sum(p.get("gap_estimate", 0.0) for p in points.values())
    assert measured + estimated == pytest.approx(readings[-1][1] - readings[0][1], rel=1e-9)
    # the twelve days after the silence: every interval measured
    assert all("actual" in points.get(t, {}) for t in range(T0 + 11 * 86400 + 900,
                                                            T0 + 23 * 86400, 900))
    # the silence: at most a week of intervals carries its estimate
    gap = [t for t, p in points.items() if "gap_estimate" in p]
    assert 0 < len(gap) <= 7 * 96
    svc.spool.close()


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(1, 60), st.integers(1, 40)), min_size=0, max_size=4),
       st.integers(1, 300))
def test_totals_equal_the_counter_with_any_gaps_and_batches(
        tmp_path_factory: pytest.TempPathFactory, holes: list[tuple[int, int]],
        per_batch: int) -> None:
    """Property: any silences (start, length in 5-minute steps) and batch sizes."""
    silences, t = [], T0 + 3600
    for after, length in holes:
        t += after * STEP_S
        silences.append((t, t + length * STEP_S))
        t += length * STEP_S
    end = max(t, T0 + 86400) // 900 * 900 + 900
    readings = series(silences, end)
    if readings[-1][0] != end:
        readings.append((end, readings[-1][1] + 1.0))
    svc = run_spec(tmp_path_factory.mktemp("gaps"), readings, per_batch)
    check_totals(svc, readings)
    svc.spool.close()
