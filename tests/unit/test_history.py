"""The VictoriaMetrics history reader against a real VictoriaMetrics (tests/conftest.py)."""

from __future__ import annotations

import datetime as dt
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from fluxserver import Point
from vmstore import store

from detectors.history import HistoryError, Row
from detectors.history.victoria import VictoriaHistory, selectors
from detectors.service.lines import line
from detectors.service.sink import InfluxWriter

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


def test_the_reader_sends_the_token_as_the_writer_does() -> None:
    """For the same configured token, the VictoriaMetrics reader's Authorization header is
    the one influxdb-client's writer sends (``Token``, what InfluxDB wants)."""
    seen: dict[str, str | None] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            seen[self.path.split("?")[0]] = self.headers.get("Authorization")
            self.send_response(204 if "write" in self.path else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        writer = InfluxWriter(url, "s3cret", "recp", "recp", timeout_s=10)
        writer.write(["m f=1 1"])
        writer.close()
        assert VictoriaHistory(url, "s3cret", timeout_s=10).consumption(
            "dairy", utc(T0), utc(T0 + 3600)) == []
    finally:
        server.shutdown()
        server.server_close()
    assert seen == {"/api/v2/write": "Token s3cret", "/api/v1/export": "Token s3cret"}


def test_writes_and_reads_through_vmauth_with_the_token(
    victoria_metrics: Any, vmauth_factory: Any
) -> None:
    """vmauth in front of VictoriaMetrics (its ``bearer_token``): the service's writer and
    the reader pass with the configured token; a wrong token is one clear error."""
    url = vmauth_factory(victoria_metrics.url, "s3cret").url
    tags = {"site": "dairy", "meter": "m1", "resource": "water", "unit": "m3"}
    writer = InfluxWriter(url, "s3cret", "recp", "recp", timeout_s=30)
    text = line("consumption", tags, {"actual": 2.5}, T0 * 1000)
    assert text is not None
    writer.write([text])
    writer.close()
    victoria_metrics.flush()
    rows = VictoriaHistory(url, "s3cret", timeout_s=30).consumption(
        "dairy", utc(T0), utc(T0 + 3600))
    assert rows == [Row("m1", T0, 2.5, "m3")]
    with pytest.raises(HistoryError, match=r"VictoriaMetrics \(http://.*\) answered 4\d\d"):
        VictoriaHistory(url, "wrong", timeout_s=30).consumption(
            "dairy", utc(T0), utc(T0 + 3600))
