"""The embedded store's history (``influx.url: sqlite:FILE``, :mod:`detectors.store`)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .base import HistoryError, Row, hourly_means


class StoreHistory:
    """What ``recp detect`` or ``recp demo`` wrote into one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:{path}"

    def _open(self) -> object:
        from ..store import Store

        try:
            return Store(self.path)
        except FileNotFoundError as exc:
            raise HistoryError(str(exc)) from None

    def consumption(self, site: str, start: dt.datetime, end: dt.datetime,
                    meters: Iterable[str] = ()) -> list[Row]:
        from ..store import Store, consumption_rows

        store = self._open()
        assert isinstance(store, Store)
        with store:
            return consumption_rows(store, site, int(start.timestamp()), int(end.timestamp()),
                                    meters)

    def hourly_means(self, site: str, field: str, start: dt.datetime, end: dt.datetime,
                     meters: Iterable[str] = ()) -> tuple[np.ndarray, np.ndarray]:
        from ..store import Store

        ts: list[int] = []
        vs: list[float] = []
        store = self._open()
        assert isinstance(store, Store)
        with store:
            for p in store.points("reading", site=site, meters=meters,
                                  start_ms=round(start.timestamp() * 1000),
                                  end_ms=round(end.timestamp() * 1000)):  # fmt: skip
                v = p.fields.get(field)
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    ts.append(p.time_ms)
                    vs.append(float(v))
        return hourly_means(np.asarray(ts, dtype=np.int64), np.asarray(vs))
