"""Baseline inputs from other meters: outdoor temperature and production per interval.

A baseline fitted with degree-day or production terms (:mod:`detectors.baseline`) predicts
an interval from its mean outdoor temperature and the units produced in it. In the live
service both come from other meters of the same site, named in the analytics file (a
weather sensor's ``outdoor_temperature_c``, a line counter's ``produced_units``). Every
reading of such an input meter is kept here (a bounded window, whichever partition owns
that meter), and an interval ``[t0, t1)`` gets:

* temperature: the mean of the input's readings in it; with none there yet, the latest
  reading, when it is at most ``max_age_s`` older than ``t1``;
* production: the counter's rise over it, the counter interpolated linearly at ``t0`` and
  ``t1``; when the readings do not reach ``t1`` yet, the latest rate carried forward (at
  most ``max_age_s``). A counter that went down inside (reset, rollover) gives NaN.

NaN means "cannot tell": the interval gets no expectation and overspend skips it.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


class InputSeries:
    """Readings of one input value of one meter, sorted by time, bounded."""

    def __init__(self, keep_s: float = 2 * 86400.0, cap: int = 50_000) -> None:
        self.keep_s = keep_s
        self.cap = cap
        self.ts: list[float] = []
        self.vs: list[float] = []

    def add(self, ts: float, value: float) -> None:
        """Keep one reading (a repeat of a time already kept is ignored)."""
        if not math.isfinite(value):
            return
        ts_list = self.ts
        if not ts_list or ts > ts_list[-1]:
            ts_list.append(ts)
            self.vs.append(value)
        else:
            i = bisect.bisect_left(ts_list, ts)
            if i < len(ts_list) and ts_list[i] == ts:
                return
            ts_list.insert(i, ts)
            self.vs.insert(i, value)
        if len(ts_list) > self.cap or ts_list[0] < ts_list[-1] - self.keep_s:
            cut = max(len(ts_list) - self.cap,
                      bisect.bisect_left(ts_list, ts_list[-1] - self.keep_s))
            del ts_list[:cut]
            del self.vs[:cut]

    def mean(self, t0: float, t1: float, max_age_s: float) -> float:
        """Mean of the readings in ``[t0, t1)``; else the latest recent one; else NaN."""
        i, j = bisect.bisect_left(self.ts, t0), bisect.bisect_left(self.ts, t1)
        if j > i:
            return math.fsum(self.vs[i:j]) / (j - i)
        if i > 0 and t1 - self.ts[i - 1] <= max_age_s:
            return self.vs[i - 1]
        return math.nan

    def _at(self, t: float, max_age_s: float) -> float:
        ts, vs = self.ts, self.vs
        if not ts or t < ts[0]:
            return math.nan
        i = bisect.bisect_left(ts, t)
        if i < len(ts) and ts[i] == t:
            return vs[i]
        if i < len(ts):  # between two readings
            a, b = i - 1, i
            return vs[a] + (vs[b] - vs[a]) * (t - ts[a]) / (ts[b] - ts[a])
        if t - ts[-1] > max_age_s:  # beyond the newest reading: carry its rate forward
            return math.nan
        if len(ts) < 2:
            return vs[-1]
        rate = (vs[-1] - vs[-2]) / (ts[-1] - ts[-2])
        return vs[-1] + max(rate, 0.0) * (t - ts[-1])

    def rise(self, t0: float, t1: float, max_age_s: float) -> float:
        """The counter's rise over ``[t0, t1]``; NaN when unknown or it went down."""
        a, b = self._at(t0, max_age_s), self._at(t1, max_age_s)
        if not (math.isfinite(a) and math.isfinite(b)):
            return math.nan
        i, j = bisect.bisect_left(self.ts, t0), bisect.bisect_right(self.ts, t1)
        inside = self.vs[max(i - 1, 0):min(j + 1, len(self.vs))]
        if any(y < x for x, y in itertools.pairwise(inside)) or b < a:
            return math.nan
        return b - a

    def snapshot(self, last: int = 64) -> list[list[float]]:
        return [[t, v] for t, v in zip(self.ts[-last:], self.vs[-last:], strict=True)]

    def restore(self, rows: Iterable[Any]) -> None:
        for t, v in rows:
            self.add(float(t), float(v))


@dataclass(frozen=True)
class Source:
    """Where one input comes from: a meter of the same site and one of its values."""

    meter: str
    value: str


@dataclass(frozen=True)
class Links:
    temperature: Source | None = None
    production: Source | None = None


class Inputs:
    """The input series of a service instance and which meters use them.

    ``site_links``: a site's default inputs (every meter of the site); ``meter_links``:
    a meter's own, each of its fields replacing the site's. An input meter is never its
    own input.
    """

    def __init__(self, site_links: dict[str, Links], meter_links: dict[tuple[str, str], Links],
                 max_age_s: float = 1800.0) -> None:
        self.site_links = site_links
        self.meter_links = meter_links
        self.max_age_s = max_age_s
        self.series: dict[tuple[str, str, str], InputSeries] = {}
        self._by_meter: dict[tuple[str, str], list[tuple[str, InputSeries]]] = {}
        every = [(site, ln) for site, ln in site_links.items()] + [
            (site, ln) for (site, _), ln in meter_links.items()]
        for site, link in every:
            for src in (link.temperature, link.production):
                if src is not None and (site, src.meter, src.value) not in self.series:
                    series = InputSeries()
                    self.series[(site, src.meter, src.value)] = series
                    self._by_meter.setdefault((site, src.meter), []).append((src.value, series))

    def __bool__(self) -> bool:
        return bool(self.series)

    def is_input(self, site: str, meter: str) -> bool:
        return (site, meter) in self._by_meter

    def feed(self, site: str, meter: str, ts: float, values: dict[str, float | None]) -> None:
        """Keep the input values of one reading of an input meter."""
        for value, s in self._by_meter.get((site, meter), ()):
            v = values.get(value)
            if v is not None:
                s.add(ts, v)

    def of(self, site: str, meter: str) -> Links | None:
        """The inputs of one meter, or None when it has none."""
        base = self.site_links.get(site, Links())
        own = self.meter_links.get((site, meter), Links())
        temp = own.temperature or base.temperature
        prod = own.production or base.production
        if temp is not None and temp.meter == meter:
            temp = None
        if prod is not None and prod.meter == meter:
            prod = None
        return Links(temp, prod) if temp or prod else None

    def for_intervals(self, site: str, links: Links, starts: list[int], interval_s: int
                      ) -> tuple[list[float] | None, list[float] | None]:
        """(temperature, production) for intervals starting at ``starts`` (None: no link)."""
        temp = prod = None
        if links.temperature is not None:
            s = self.series[(site, links.temperature.meter, links.temperature.value)]
            temp = [s.mean(t, t + interval_s, self.max_age_s) for t in starts]
        if links.production is not None:
            s = self.series[(site, links.production.meter, links.production.value)]
            prod = [s.rise(t, t + interval_s, self.max_age_s) for t in starts]
        return temp, prod

    def snapshot(self) -> list[list[Any]]:
        return [[*k, s.snapshot()] for k, s in self.series.items()]

    def restore(self, rows: list[list[Any]]) -> None:
        for site, meter, value, data in rows:
            s = self.series.get((str(site), str(meter), str(value)))
            if s is not None:
                s.restore(data)


def inputs_from_config(cfg: Any) -> Inputs:
    """The analytics file's baseline inputs (outdoor temperature, production) per site and
    meter (``cfg``: its :class:`~.config.Analytics` model)."""

    def links(m: Any) -> Links:
        return Links(
            Source(m.temperature_meter, m.temperature_value) if m.temperature_meter else None,
            Source(m.production_meter, m.production_value) if m.production_meter else None)

    site_links = {site: links(s) for site, s in cfg.sites.items()}
    meter_links = {(site, meter): links(m) for site, s in cfg.sites.items()
                   for meter, m in s.meters.items()}
    return Inputs(site_links, meter_links, cfg.baselines.input_max_age_s)
