"""What a history backend answers: interval consumption rows and hourly means of a reading
field of one site, from what ``recp detect`` stored (docs/influx-schema.md)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Row:
    """One stored ``consumption.actual`` point: interval start (UTC epoch s) and quantity."""

    meter: str
    t_s: int
    value: float
    unit: str


class HistoryError(Exception):
    """The database could not be read: one line naming the URL and the status or cause."""


def quoted(text: str) -> str:
    """A label or tag value as a double-quoted string literal (Flux and PromQL alike)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def server_message(body: bytes | str) -> str:
    """An error answer's text on one line, without VictoriaMetrics' ``remoteAddr: ...;
    requestURI: ...;`` head, at most 200 characters."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    text = text.strip()
    if text.startswith("remoteAddr:"):
        text = text.split("; ", 2)[-1]
    return " ".join(text.split())[:200]


def hourly_means(t_ms: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(UTC hour starts in s, mean of the finite values in each) of samples at ``t_ms``, as
    Flux's ``group() |> aggregateWindow(every: 1h, fn: mean, timeSrc: "_start")`` gives."""
    t = np.asarray(t_ms, dtype=np.int64)
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    t, v = t[ok], v[ok]
    if t.size == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    hours, inverse = np.unique(t // 3_600_000, return_inverse=True)
    return hours * 3600, np.bincount(inverse, v) / np.bincount(inverse)


class History(Protocol):
    """A database's stored history; ``url`` is where it is read from."""

    url: str

    def consumption(self, site: str, start: dt.datetime, end: dt.datetime,
                    meters: Iterable[str] = ()) -> list[Row]:
        """``consumption.actual`` of a site's meters (all, or ``meters``) in [start, end)."""
        ...

    def hourly_means(self, site: str, field: str, start: dt.datetime, end: dt.datetime,
                     meters: Iterable[str] = ()) -> tuple[np.ndarray, np.ndarray]:
        """(hour starts as UTC epoch s, mean) of one ``reading`` field over every meter of
        the site that has it (or ``meters``) in [start, end); hours without a value left out."""
        ...
