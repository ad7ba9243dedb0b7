"""A stand-in for InfluxDB 2's query endpoint on loopback: Flux in, annotated CSV out.

No InfluxDB server can be installed here, so the tests of ``recp savings influx:...`` talk
to this instead, through the real ``influxdb_client`` over real HTTP. It answers
``POST /api/v2/query`` for the two query shapes recp sends (interval consumption of some
meters; hourly means of one ``reading`` field) from in-memory points, in the annotated-CSV
layout InfluxDB 2.7 writes (``#datatype``/``#group``/``#default`` rows, one table per
series, CRLF line ends, a blank line after the last table), checks the token, and answers
anything it does not understand with InfluxDB's JSON error (400), so a changed query fails
the test instead of being answered wrongly.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np


@dataclass
class Point:
    measurement: str
    tags: dict[str, str]
    field: str
    t_s: int
    value: float


@dataclass
class FluxReplay:
    """Points by measurement; ``queries`` collects every Flux text received."""

    token: str
    points: list[Point] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    port: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FluxReplay:
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if not self.path.startswith("/api/v2/query"):
                    return self._error(404, "not found", f"path not found: {self.path}")
                if self.headers.get("Authorization") != f"Token {replay.token}":
                    return self._error(401, "unauthorized", "unauthorized access")
                try:
                    request = json.loads(body)
                    text = request["query"]
                    replay.queries.append(text)
                    csv = replay.answer(text)
                except (ValueError, KeyError) as exc:
                    return self._error(400, "invalid", f"compilation failed: {exc}")
                data = csv.encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", "text/csv; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, code: str, message: str) -> None:
                data = json.dumps({"code": code, "message": message}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- the Flux subset ---------------------------------------------------------------
    def answer(self, text: str) -> str:
        rng = re.search(r"range\(start: ([^,]+), stop: ([^)]+)\)", text)
        meas = re.search(r'r\._measurement == "([^"]+)"', text)
        fld = re.search(r'r\._field == "([^"]+)"', text)
        site = re.search(r'r\.site == "([^"]+)"', text)
        if not (text.startswith("from(bucket: ") and rng and meas and fld and site):
            raise ValueError("unsupported query (this stand-in knows recp's two shapes)")
        start, stop = (int(dt.datetime.fromisoformat(x).timestamp()) for x in rng.groups())
        meters = set(re.findall(r'r\.meter == "([^"]+)"', text))
        chosen = [
            p for p in self.points
            if p.measurement == meas.group(1) and p.field == fld.group(1)
            and p.tags.get("site") == site.group(1) and start <= p.t_s < stop
            and (not meters or p.tags.get("meter") in meters)
        ]  # fmt: skip
        rest = text[rng.end():]
        if "aggregateWindow" in rest:
            every = re.search(r'group\(\)\s*\|> aggregateWindow\(every: 1h, fn: mean, '
                              r'createEmpty: false, timeSrc: "_start"\)', rest)  # fmt: skip
            if every is None:
                raise ValueError("unsupported aggregateWindow")
            return _hourly_means(chosen, start, stop)
        return _tables(chosen, start, stop)


def _rfc3339(t_s: int) -> str:
    return dt.datetime.fromtimestamp(t_s, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _float(v: float) -> str:
    return repr(float(v))


def _block(
    columns: list[str], types: list[str], group: list[bool], rows: Iterator[list[str]]
) -> str:
    head = [
        "#datatype,string,long," + ",".join(types),
        "#group,false,false," + ",".join("true" if g else "false" for g in group),
        "#default,_result," + "," * len(columns),
        ",result,table," + ",".join(columns),
    ]
    return "\r\n".join(head + [",," + ",".join(r) for r in rows]) + "\r\n\r\n"


def _tables(points: list[Point], start: int, stop: int) -> str:
    """One table per series (measurement, field, tag set), tags sorted as InfluxDB does."""
    if not points:
        return "\r\n"
    series: dict[tuple, list[Point]] = {}
    for p in points:
        series.setdefault((p.measurement, p.field, tuple(sorted(p.tags.items()))), []).append(p)
    tag_names = sorted({k for p in points for k in p.tags})
    columns = ["_start", "_stop", "_time", "_value", "_field", "_measurement", *tag_names]
    types = ["dateTime:RFC3339"] * 3 + ["double"] + ["string"] * (2 + len(tag_names))
    group = [True, True, False, False, True, True] + [True] * len(tag_names)

    def rows() -> Iterator[list[str]]:
        for table, (key, pts) in enumerate(sorted(series.items())):
            tags = dict(key[2])
            for p in sorted(pts, key=lambda p: p.t_s):
                yield [str(table), _rfc3339(start), _rfc3339(stop), _rfc3339(p.t_s),
                       _float(p.value), p.field, p.measurement,
                       *(tags.get(k, "") for k in tag_names)]  # fmt: skip

    return _block(columns, types, group, rows())


def _hourly_means(points: list[Point], start: int, stop: int) -> str:
    """group() then aggregateWindow(every: 1h, fn: mean, timeSrc: "_start"): one table."""
    if not points:
        return "\r\n"
    t = np.array([p.t_s for p in points], dtype=np.int64)
    v = np.array([p.value for p in points])
    hour = t // 3600 * 3600
    keys, inverse = np.unique(hour, return_inverse=True)
    means = np.bincount(inverse, v) / np.bincount(inverse)
    columns = ["_start", "_stop", "_time", "_value"]
    types = ["dateTime:RFC3339"] * 3 + ["double"]
    rows = (
        ["0", _rfc3339(start), _rfc3339(stop), _rfc3339(int(k)), _float(m)]
        for k, m in zip(keys, means, strict=True)
    )
    return _block(columns, types, [False, False, False, False], rows)
