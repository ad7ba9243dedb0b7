"""The VictoriaMetrics history reader against a real VictoriaMetrics (tests/conftest.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pytest
from fluxserver import Point
from vmstore import store

from detectors.history import HistoryError, Row
from detectors.history.victoria import VictoriaHistory, selectors

T0 = 1_767_571_200  # 2026-01-05T00:00:00Z


def utc(t_s: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(t_s, dt.timezone.utc)


def test_selectors_quote_label_values() -> None:
    assert selectors("consumption_actual", "dairy", ["a", "a", 'b"\\']) == [
        '{__name__="consumption_actual",site="dairy",meter="a"}',
        '{__name__="consumption_actual",site="dairy",meter="b\\"\\\\"}',
    ]
    assert selectors("reading_x", "s") == ['{__name__="reading_x",site="s"}']


def test_range_is_half_open_a_replayed_time_counts_once_and_hours_are_means(
    victoria_metrics_factory: Any,
) -> None:
    # without deduplication VictoriaMetrics keeps both samples of a replayed timestamp
    vm = victoria_metrics_factory("-dedup.minScrapeInterval=0s")
    tags = {"site": "dairy", "meter": "m1", "resource": "water", "unit": "m3"}
    other = {**tags, "meter": "m2"}
    weather = {"site": "dairy", "meter": "outdoor", "resource": "weather"}
    weather2 = {**weather, "meter": "roof"}
    points = [Point("consumption", tags, "actual", T0 + 900 * i, float(i)) for i in range(8)]
    points += [Point("consumption", other, "actual", T0, 7.0),
               Point("consumption", {**tags, "site": "textile"}, "actual", T0, 9.0),
               Point("reading", weather, "outdoor_temperature_c", T0 + 60, 1.0),
               Point("reading", weather, "outdoor_temperature_c", T0 + 1800, 2.0),
               Point("reading", weather2, "outdoor_temperature_c", T0 + 600, 6.0),
               Point("reading", weather, "outdoor_temperature_c", T0 + 3600, 5.0)]
    store(vm, points)
    store(vm, [Point("consumption", tags, "actual", T0 + 900, 1.0)])  # the replay
    raw = vm.query_export('{__name__="consumption_actual",site="dairy",meter="m1"}', start="0")
    assert sum(len(s["timestamps"]) for s in raw) == 9  # the duplicate is stored
    history = VictoriaHistory(vm.url, None, timeout_s=30)
    rows = history.consumption("dairy", utc(T0), utc(T0 + 7200), ["m1"])
    assert rows == [Row("m1", T0 + 900 * i, float(i), "m3") for i in range(8)]
    # end excluded, start included; every meter of the site without a filter
    rows = history.consumption("dairy", utc(T0 + 900), utc(T0 + 1800))
    assert rows == [Row("m1", T0 + 900, 1.0, "m3")]
    assert {r.meter for r in history.consumption("dairy", utc(T0), utc(T0 + 1))} == {"m1", "m2"}
    t, v = history.hourly_means("dairy", "outdoor_temperature_c", utc(T0), utc(T0 + 7200))
    assert t.tolist() == [T0, T0 + 3600]
    assert v == pytest.approx([3.0, 5.0])  # (1 + 2 + 6) / 3: both meters, as Flux's group()
    t, v = history.hourly_means("dairy", "outdoor_temperature_c", utc(T0), utc(T0 + 7200),
                                ["outdoor"])
    assert v == pytest.approx([1.5, 5.0])
    t, v = history.hourly_means("dairy", "rain_mm", utc(T0), utc(T0 + 7200))
    assert t.dtype == np.int64 and t.size == 0 and v.size == 0
    vm.stop()
    with pytest.raises(HistoryError, match=r"could not query VictoriaMetrics \(http://"):
        history.consumption("dairy", utc(T0), utc(T0 + 7200))
