"""InfluxDB 2 history: Flux queries on ``/api/v2/query`` through influxdb-client."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from typing import Any

import numpy as np

from .base import HistoryError, Row, quoted, server_message


def _meter_filter(meters: Iterable[str]) -> str:
    pick = list(meters)
    return (" and (" + " or ".join(f"r.meter == {quoted(m)}" for m in pick) + ")"
            if pick else "")


def flux(bucket: str, site: str, start: dt.datetime, end: dt.datetime,
         meters: Iterable[str] = ()) -> str:
    """The Flux query for one site's interval consumption in [start, end)."""
    return (
        f"from(bucket: {quoted(bucket)})\n"
        f"  |> range(start: {start.isoformat()}, stop: {end.isoformat()})\n"
        f'  |> filter(fn: (r) => r._measurement == "consumption" and r._field == "actual"'
        f" and r.site == {quoted(site)}{_meter_filter(meters)})\n"
    )


def temperature_flux(bucket: str, site: str, field: str, start: dt.datetime,
                     end: dt.datetime, meters: Iterable[str] = ()) -> str:  # fmt: skip
    """Hourly means of one ``reading`` field of a site (every meter that has it, or
    ``meters``)."""
    return (
        f"from(bucket: {quoted(bucket)})\n"
        f"  |> range(start: {start.isoformat()}, stop: {end.isoformat()})\n"
        f'  |> filter(fn: (r) => r._measurement == "reading" and r._field == {quoted(field)}'
        f" and r.site == {quoted(site)}{_meter_filter(meters)})\n"
        "  |> group()\n"
        '  |> aggregateWindow(every: 1h, fn: mean, createEmpty: false, timeSrc: "_start")\n'
    )


def rows_from_records(records: Iterable[Any]) -> list[Row]:
    """FluxRecords (or anything with ``.values`` like them) -> rows."""
    out = []
    for rec in records:
        v = rec.values
        value = v.get("_value")
        if value is None:
            continue
        t = v["_time"]
        out.append(Row(str(v["meter"]), int(t.timestamp()), float(value), str(v.get("unit", ""))))
    return out


def gauge_from_records(records: Iterable[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(UTC epoch seconds, values) of FluxRecords (anything with ``.values``)."""
    ts, vs = [], []
    for rec in records:
        v = rec.values
        if v.get("_value") is None:
            continue
        ts.append(int(v["_time"].timestamp()))
        vs.append(float(v["_value"]))
    return np.asarray(ts, dtype=np.int64), np.asarray(vs, dtype=np.float64)


def flux_error(exc: BaseException) -> str:
    """One line for a failed query: InfluxDB's HTTP status and message, or the cause."""
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        body = getattr(exc, "body", "") or ""
        try:
            message = str(json.loads(body).get("message", body))
        except (ValueError, AttributeError):
            message = server_message(body) or str(getattr(exc, "reason", ""))
        text = f"InfluxDB answered {status}: {server_message(message)}"
        if 'unsupported path requested: "/api/v2/query"' in message:
            text += (" (VictoriaMetrics answers so: set influx.flavor: victoriametrics in the "
                     "analytics file)")
        return text
    reason = getattr(exc, "reason", None) or exc
    return f"could not query InfluxDB: {type(reason).__name__}: {str(reason)[:200]}"


class FluxHistory:
    """InfluxDB 2 (or anything answering Flux on ``/api/v2/query``)."""

    def __init__(self, url: str, token: str | None, org: str, bucket: str,
                 timeout_s: float) -> None:
        self.url, self.token, self.org, self.bucket = url, token or "", org, bucket
        self.timeout_ms = int(timeout_s * 1000)

    def _query(self, text: str) -> Any:
        from influxdb_client import InfluxDBClient

        with InfluxDBClient(url=self.url, token=self.token, org=self.org,
                            timeout=self.timeout_ms) as client:  # fmt: skip
            try:
                return list(client.query_api().query_stream(text, org=self.org))
            except Exception as exc:  # the database's own errors (HTTP, connection, timeout)
                raise HistoryError(flux_error(exc)) from exc

    def consumption(self, site: str, start: dt.datetime, end: dt.datetime,
                    meters: Iterable[str] = ()) -> list[Row]:
        return rows_from_records(self._query(flux(self.bucket, site, start, end, meters)))

    def hourly_means(self, site: str, field: str, start: dt.datetime, end: dt.datetime,
                     meters: Iterable[str] = ()) -> tuple[np.ndarray, np.ndarray]:
        text = temperature_flux(self.bucket, site, field, start, end, meters)
        return gauge_from_records(self._query(text))
