"""VictoriaMetrics history: raw samples from ``/api/v1/export`` (JSON lines, exact times).

VictoriaMetrics stores a written field as the metric ``<measurement>_<field>`` with the
tags as labels (``consumption_actual{site="dairy",meter="steam_main",unit="t"}``) and
keeps no buckets, so ``influx.bucket`` plays no part here. The export gives each series'
raw samples with millisecond timestamps; a timestamp written twice (a replay into a
VictoriaMetrics without ``-dedup.minScrapeInterval``) is kept once, the last answered.
Hourly means are computed here, as Flux's ``group() |> aggregateWindow(1h, mean)`` does.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from .base import HistoryError, Row, hourly_means, quoted, server_message


def selectors(metric: str, site: str, meters: Iterable[str] = ()) -> list[str]:
    """Series selectors (``match[]``) of one metric of a site: one per meter, or the site's."""
    base = f"__name__={quoted(metric)},site={quoted(site)}"
    pick = list(dict.fromkeys(meters))
    return [f"{{{base},meter={quoted(m)}}}" for m in pick] if pick else [f"{{{base}}}"]


def _ms(t: dt.datetime) -> int:
    return round(t.timestamp() * 1000)


class VictoriaHistory:
    """Single-node VictoriaMetrics (``http://host:8428``) or a cluster's vmselect
    (``http://vmselect:8481/select/0/prometheus``)."""

    def __init__(self, url: str, token: str | None, timeout_s: float) -> None:
        self.url, self.token, self.timeout_s = url.rstrip("/"), token, timeout_s

    def export(self, match: list[str], start: dt.datetime, end: dt.datetime
               ) -> Iterator[dict[str, Any]]:
        """The export's series of ``match`` with samples in [start, end), one dict each
        (``metric``: labels, ``timestamps`` in ms, ``values``)."""
        start_ms, end_ms = _ms(start), _ms(end)
        form = [("match[]", m) for m in match] + [
            ("start", f"{start_ms / 1000:.3f}"), ("end", f"{end_ms / 1000:.3f}")]
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if self.token:  # as influxdb-client writes: InfluxDB wants Token, vmauth takes it too
            headers["Authorization"] = f"Token {self.token}"
        request = urllib.request.Request(
            f"{self.url}/api/v1/export", data=urllib.parse.urlencode(form).encode(),
            headers=headers, method="POST")  # fmt: skip
        where = f"{self.url}/api/v1/export"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                for raw in answer:
                    if not raw.strip():
                        continue
                    try:
                        series = json.loads(raw)
                    except ValueError:
                        raise HistoryError(f"VictoriaMetrics ({where}) answered a line that is "
                                           f"not JSON: {server_message(raw)}") from None
                    ts, vs = series.get("timestamps", []), series.get("values", [])
                    keep = [(t, v) for t, v in zip(ts, vs, strict=False)
                            if start_ms <= t < end_ms]
                    yield {"metric": series.get("metric", {}),
                           "timestamps": [t for t, _ in keep], "values": [v for _, v in keep]}
        except urllib.error.HTTPError as exc:
            raise HistoryError(f"VictoriaMetrics ({where}) answered {exc.code}: "
                               f"{server_message(exc.read(4096))}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise HistoryError(f"could not query VictoriaMetrics ({where}): "
                               f"{type(reason).__name__}: {str(reason)[:200]}") from None

    def consumption(self, site: str, start: dt.datetime, end: dt.datetime,
                    meters: Iterable[str] = ()) -> list[Row]:
        rows: list[Row] = []
        for series in self.export(selectors("consumption_actual", site, meters), start, end):
            labels = series["metric"]
            meter, unit = str(labels.get("meter", "")), str(labels.get("unit", ""))
            once = dict(zip(series["timestamps"], series["values"], strict=True))
            rows += [Row(meter, t // 1000, float(v), unit) for t, v in sorted(once.items())
                     if v is not None]
        return rows

    def hourly_means(self, site: str, field: str, start: dt.datetime, end: dt.datetime,
                     meters: Iterable[str] = ()) -> tuple[np.ndarray, np.ndarray]:
        ts: list[int] = []
        vs: list[float] = []
        for series in self.export(selectors(f"reading_{field}", site, meters), start, end):
            once = dict(zip(series["timestamps"], series["values"], strict=True))
            ts += list(once)
            vs += [float("nan") if v is None else float(v) for v in once.values()]
        return hourly_means(np.asarray(ts, dtype=np.int64), np.asarray(vs))
