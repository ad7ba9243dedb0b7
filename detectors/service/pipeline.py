"""One meter's streaming pipeline: counter readings -> interval consumption -> detectors.

Readings of the meter's main counter are buffered until an interval boundary has been
passed; then :func:`detectors.clean.clean_counter` turns the buffer (with the last reading
before the first open interval as anchor) into consumption for each completed interval,
with its quality flags (rollover, reset, jitter, gaps). Each completed interval is scored
and learned by the streaming detectors (:mod:`detectors.anomaly`) and fed to the meter's
:class:`~.alerts.EventTracker`. Everything here is synchronous numpy/numba work: the
service runs it in a worker thread. State is JSON-able for checkpoints.

Readings older than the first open interval (late arrivals) are stored by the service but
not counted again here: their interval is already closed.

A backward step of the edge clock shows as readings stamped behind the newest one with a
counter *above* it (a late arrival has a counter below). They are left out until the
readings' time passes the newest one again; the consumption meanwhile is in the next
reading's counter, so it lands in the interval(s) of that one reading pair: nothing is
lost, and those intervals are flagged ``CLOCK_STEP`` and not scored or learned (the
detectors and events see NaN), so the lump raises no false spike. A step of an hour or
more, back or forward (a long reading pair over which the counter rose as in a poll or
two), also holds the meter's intervals from scoring for ``Settings.clock_hold_s``: a wrong
clock moves the day's pattern into other hours.

A data gap's consumption (known as a whole, not when it was used) is spread evenly over
the gap's intervals as ``Interval.gap_estimate``, so the stored totals add up.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from collector.contract import MeterMeta
from collector.quantities import QUANTITIES, Kind

from ..anomaly import (
    DriftDetector,
    LevelShiftDetector,
    SpikeDetector,
    StuckDetector,
    night_window_s,
)
from ..clean import Consumption, Quality, clean_counter
from ..meter import MeterInfo
from ..streaming import KernelDetector, Point
from .alerts import AlertSettings, EventTracker, Transition

log = logging.getLogger(__name__)

COUNTER_PREFERENCE: dict[str, tuple[str, ...]] = {
    "electricity": ("energy_kwh", "heat_kwh"),
    "water": ("volume_m3",),
    "steam": ("mass_kg", "mass_t", "heat_kwh"),
    "production": ("produced_units",),
}
# a clock step of this much or more (and of an interval at least) holds scoring: smaller
# ones are an agent's clock reads jittering under load at a fast simulated clock, or a
# correction that moves the day's pattern by less than an hour
HOLD_STEP_S = 3600
MAX_INTERVALS = 7 * 96  # at most this many intervals of one gap are stored (a long silence)
DETECTOR_KINDS = ("spike", "stuck", "level_shift", "drift")
# Which detectors may raise events, per resource (others: all, and overspend on a
# baseline). A production counter standing still, slowing or rising at night is the line's
# schedule, not a loss: it is scored and stored (an input of other meters' baselines and of
# specific consumption) but raises no event.
EVENT_KINDS: dict[str, frozenset[str]] = {"production": frozenset()}


def event_kinds(resource: str) -> frozenset[str]:
    """The detector kinds (and ``overspend``) that raise events for this resource."""
    return EVENT_KINDS.get(resource, frozenset((*DETECTOR_KINDS, "overspend")))


def pick_counter(resource: str, names: list[str]) -> str | None:
    """The meter's main counter among ``names`` (the resource's usual one first)."""
    for name in COUNTER_PREFERENCE.get(resource, ()):
        if name in names:
            return name
    for name in names:
        q = QUANTITIES.get(name)
        if q is not None and q.kind is Kind.COUNTER:
            return name
    return None


@dataclass(frozen=True)
class Settings:
    interval_s: int = 900
    utc_offset_s: int = 0
    night_hours_utc: tuple[float, float] = (0.0, 4.0)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    # after the meter's clock stepped (by an hour and an interval or more, either way), its
    # intervals are stored, flagged CLOCK_STEP, but not scored this long of readings' time
    clock_hold_s: float = 86400.0


@dataclass(frozen=True)
class Interval:
    """One completed interval of one meter (``expected``/``std``: NaN without a baseline)."""

    t_s: int
    actual: float
    flags: int
    scores: dict[str, float]
    diagnostics: dict[str, list[float]]
    expected: float = math.nan
    std: float = math.nan
    # in an interval a data gap touches (flag GAP, ``actual`` NaN): its even share of the
    # consumption across the gap, so stored actual + gap_estimate sums to the counter
    gap_estimate: float = math.nan


InputsFor = Callable[[list[int], int], tuple[list[float] | None, list[float] | None]]


@dataclass(frozen=True)
class Expectation:
    """A baseline's view of some intervals: expectation, its std, and the inputs used.

    ``temperature``/``production`` are per interval of the *baseline* (NaN: unknown).
    """

    expected: list[float]
    std: list[float]
    temperature: list[float]
    production: list[float]


def expected_per_interval(model: Any, starts: list[int], interval_s: int,
                          inputs: InputsFor | None = None) -> Expectation:
    """A baseline's expectation and prediction std for intervals of ``interval_s``.

    A baseline on the same grid predicts directly; a coarser one (hourly for 15-minute
    intervals) predicts its own interval and is spread evenly. Terms needing outdoor
    temperature or production take them from ``inputs(baseline interval starts, baseline
    interval)`` (:class:`~.inputs.Inputs`); without them those intervals get NaN (no
    expectation written).
    """
    n = len(starts)
    nan = [math.nan] * n
    b = int(model.interval_s)
    if b < interval_s or b % interval_s:
        return Expectation(nan, nan, nan, nan)
    ts = np.asarray(starts, dtype=np.int64) // b * b
    temp: list[float] | None = None
    prod: list[float] | None = None
    if inputs is not None and (model.uses_temperature or model.uses_production):
        temp, prod = inputs(ts.tolist(), b)
    temp = temp if temp is not None else nan
    prod = prod if prod is not None else nan
    kwargs: dict[str, Any] = {}
    if model.uses_temperature:
        kwargs["temperature"] = np.asarray(temp, dtype=np.float64)
    if model.uses_production:
        kwargs["production"] = np.asarray(prod, dtype=np.float64)
    share = interval_s / b
    exp = np.asarray(model.predict(ts, **kwargs), dtype=np.float64)
    std = np.asarray(model.prediction_std(np.nan_to_num(exp)), dtype=np.float64)
    return Expectation((exp * share).tolist(), (std * share).tolist(), temp, prod)


def spread_gaps(cons: Consumption) -> tuple[list[bool] | None, list[float]]:
    """Which intervals to store, and each one's share of a data gap's consumption.

    ``clean_counter`` keeps a gap's consumption as one lump (``gap_consumption``) and
    leaves the intervals it touches NaN: *when* it was used is unknown. Stored totals
    must still add up, so the lump is spread evenly over those intervals as their
    ``gap_estimate`` (flag GAP tells it from a measured ``actual``). Of a gap longer than
    ``MAX_INTERVALS`` intervals only the last ``MAX_INTERVALS`` are stored (the first list
    False for the others; None: store all), carrying the whole lump between them.
    """
    n = len(cons.start_s)
    estimate = [math.nan] * n
    if not len(cons.gap_start_s):
        return None, estimate
    keep: list[bool] | None = None
    lo, interval = (int(cons.start_s[0]) if n else 0), cons.interval_s
    for gs, ge, lump in zip(cons.gap_start_s.tolist(), cons.gap_end_s.tolist(),
                            cons.gap_consumption.tolist(), strict=True):
        i0, i1 = (gs - lo) // interval, (ge - lo) // interval
        if i1 - i0 > MAX_INTERVALS:
            keep = keep or [True] * n
            keep[i0 : i1 - MAX_INTERVALS] = [False] * (i1 - MAX_INTERVALS - i0)
            i0 = i1 - MAX_INTERVALS
        share = lump / (i1 - i0)
        estimate[i0:i1] = [share] * (i1 - i0)
    return keep, estimate


def make_detectors(s: Settings) -> dict[str, KernelDetector]:
    i = s.interval_s
    return {
        "spike": SpikeDetector(slot_s=i, utc_offset_s=s.utc_offset_s),
        "stuck": StuckDetector(slot_s=i, interval_s=i, utc_offset_s=s.utc_offset_s),
        "level_shift": LevelShiftDetector(*s.night_hours_utc, interval_s=i),
        "drift": DriftDetector(utc_offset_s=s.utc_offset_s, interval_s=i),
    }


_ARRAYS = ("_fs", "_ra", "_rb")


def _pack(det: KernelDetector) -> dict[str, Any]:
    """A detector's snapshot with its state arrays as zlib-compressed float64 (base64).

    ``KernelDetector.snapshot`` writes nested lists, about 10 ms and 80 KiB per meter;
    packed, a checkpoint of thousands of meters takes a fraction of a second. The layout
    is the snapshot's: name, version, config, and the arrays fs, ra, rb.
    """
    state = {
        name[1:]: {"shape": list(arr.shape),
                   "f8z": base64.b64encode(zlib.compress(arr.tobytes(), 1)).decode()}
        for name in _ARRAYS for arr in (getattr(det, name),)
    }  # fmt: skip
    return {"detector": det.name, "version": det.version, "config": det.config_dict(),
            "packed": True, "state": state}


def _unpack(cls: type[KernelDetector], snap: dict[str, Any]) -> KernelDetector:
    if not snap.get("packed"):
        return cls.restore(snap)
    if snap.get("detector") != cls.name or snap.get("version") != cls.version:
        raise ValueError(f"not a {cls.name} snapshot of version {cls.version}")
    det = cls(**snap["config"])
    for name in _ARRAYS:
        packed = snap["state"][name[1:]]
        current = getattr(det, name)
        arr = np.frombuffer(zlib.decompress(base64.b64decode(packed["f8z"])), np.float64)
        if list(current.shape) != packed["shape"] or arr.size != current.size:
            raise ValueError(f"{cls.name} snapshot: {name[1:]} does not match its config")
        current[...] = arr.reshape(current.shape)
    return det


class MeterPipeline:
    def __init__(self, site: str, meter: str, resource: str, settings: Settings,
                 currency: str = "EUR") -> None:
        self.site = site
        self.meter = meter
        self.resource = resource
        self.settings = settings
        self.currency = currency
        self.counter: str | None = None
        self.info = MeterInfo(id=meter, unit="", resource=resource)
        self.poll_s: float | None = None
        self.buf: list[tuple[int, float]] = []
        self.next_start: int | None = None
        self.late = 0
        self.newest: tuple[int, float] | None = None  # newest reading taken (time, counter)
        self.stepped = 0  # readings left out since the clock stepped back (0: no step)
        self.clock_steps = 0  # clock steps seen (back, or forward by an hour or more)
        # reading pairs (from, to) carrying a clock step's consumption, not yet closed
        self.step_spans: list[tuple[int, int]] = []
        # intervals starting before this (readings' time) are not scored: the clock stepped
        self.hold_until = 0
        # the recent counter rise and time between readings (decaying sums): a forward
        # step of the clock is a long pair over which the counter rose as in one poll
        self.rise = 0.0
        self.span = 0.0
        self.pairs = 0.0
        self.detectors = make_detectors(settings)
        self.tracker = EventTracker(site, meter, settings.alerts,
                                    int(night_window_s(settings.night_hours_utc)))
        self.baseline: Any = None  # a detectors.baseline.BaselineModel, when one is fitted
        self.overspend: Any = None  # a detectors.overspend.OverspendDetector on that baseline
        self.inputs: InputsFor | None = None  # outdoor temperature and production (service)

    def set_baseline(self, model: Any) -> None:
        """Use a fitted baseline: expectation per interval, and overspend on the same grid.

        A restored overspend detector on the same model keeps its CUSUM state. Overspend
        needs the baseline on the service's interval grid and in the counter's unit.
        """
        self.baseline = model
        if model is None:
            self.overspend = None
            return
        if self.overspend is not None and self.overspend.model.to_dict() == model.to_dict():
            return
        self.overspend = None
        if int(model.interval_s) != self.settings.interval_s:
            return
        from ..overspend import OverspendConfig, OverspendDetector

        with contextlib.suppress(ValueError):  # unit mismatch: no overspend for this meter
            self.overspend = OverspendDetector(model, self.info,
                                               OverspendConfig(currency=self.currency))

    # ------------------------------------------------------------------ meter description

    def set_meta(self, meta: MeterMeta, price: dict[str, float] | None = None,
                 co2: dict[str, float] | None = None) -> None:
        counters = [n for n, p in meta.points.items() if p.kind is Kind.COUNTER]
        name = pick_counter(meta.resource.value, counters)
        if self.counter is None or (name is not None and name != self.counter
                                    and not self.buf):
            self.counter = name
        self.resource = meta.resource.value
        self.poll_s = meta.interval_s
        unit = QUANTITIES[self.counter].unit if self.counter in QUANTITIES else ""
        point = meta.points.get(self.counter or "")

        def num(key: str) -> float | None:
            value = meta.tags.get(key)
            return float(value) if isinstance(value, (int, float)) and not isinstance(
                value, bool) else None

        self.info = MeterInfo(
            id=self.meter, unit=unit, resource=self.resource,
            price_per_unit=num("price_per_unit") or (price or {}).get(unit),
            co2_kg_per_unit=num("co2_kg_per_unit") or (co2 or {}).get(unit),
            rollover=point.rollover if point is not None else None,
        )  # fmt: skip
        cur = meta.tags.get("currency")
        if isinstance(cur, str) and cur:
            self.currency = cur
        if self.overspend is not None:
            self.overspend.meter = self.info  # price and CO2 factor for its events

    def _guess_counter(self, values: dict[str, float | None]) -> None:
        self.counter = pick_counter(self.resource, list(values))
        if self.counter is not None:
            self.info = replace(self.info, unit=QUANTITIES[self.counter].unit)

    # ------------------------------------------------------------------ streaming

    def add(self, ts_s: float, values: dict[str, float | None]) -> None:
        """Buffer one reading's counter value (call :meth:`complete` after a batch)."""
        if self.counter is None:
            self._guess_counter(values)
            if self.counter is None:
                return
        value = values.get(self.counter)
        if value is None:
            return
        t = int(ts_s)
        v = float(value)
        interval = self.settings.interval_s
        newest = self.newest
        # (several readings a second share one whole second: only an earlier one steps)
        if newest is not None and (t < newest[0] or (self.stepped and t == newest[0])) and (
                self.stepped or v > newest[1]):
            # behind the newest reading with a higher counter: the clock stepped back
            if not self.stepped:
                self.clock_steps += 1
                log.warning("%s/%s: a reading stamped %d s behind the newest one with a "
                            "higher counter: the edge clock stepped back; its readings are "
                            "stored, and counted once their time passes the newest one",
                            self.site, self.meter, newest[0] - t)
                if newest[0] - t >= max(interval, HOLD_STEP_S):
                    self._hold(newest[0], "back")
            self.stepped += 1
            return
        if self.stepped and newest is not None:  # past the step: this pair carries it
            log.info("%s/%s: past the clock step (%d readings meanwhile); their consumption "
                     "is in the interval of %d, flagged CLOCK_STEP and not scored",
                     self.site, self.meter, self.stepped, newest[0])
            self.step_spans.append((newest[0], t))
            self.stepped = 0
        if newest is not None and t > newest[0] and v >= newest[1]:
            self._pace(t - newest[0], v - newest[1], t)
        if self.next_start is None:
            self.next_start = -(-t // interval) * interval
        elif t < self.next_start and (not self.buf or t < self.buf[0][0]):
            self.late += 1
            return
        self.buf.append((t, v))
        if newest is None or t > newest[0]:
            self.newest = (t, v)

    def _pace(self, dt: int, rise: float, t: int) -> None:
        """Learn the meter's pace from a reading pair, or see a forward step of its clock
        in it: far longer than usual (an interval at least, ten usual pairs, by an hour or
        more) while the counter rose by less than a tenth of what the recent rate would
        have made."""
        usual = self.span / self.pairs if self.pairs >= 5 else None
        if usual is not None and dt >= max(self.settings.interval_s, 10 * usual):
            if (self.rise > 0 and rise < 0.1 * self.rise / self.span * dt
                    and dt - usual >= HOLD_STEP_S):
                self.clock_steps += 1
                log.warning("%s/%s: %d s between two readings over which the counter rose "
                            "as in %.1f usual ones: the edge clock stepped forward",
                            self.site, self.meter, dt, rise / (self.rise / self.pairs)
                            if self.rise else 0.0)
                self._hold(t, "forward")
            return  # a gap (or a step) says nothing of the usual pace
        self.rise = 0.95 * self.rise + rise
        self.span = 0.95 * self.span + dt
        self.pairs = 0.95 * self.pairs + 1.0

    def _hold(self, t: int, way: str) -> None:
        hold = self.settings.clock_hold_s
        if hold > 0:
            self.hold_until = max(self.hold_until, int(t + hold))
            log.warning("%s/%s: the clock stepped %s: intervals until %s are stored, flagged "
                        "CLOCK_STEP, and not scored (a wrong clock moves the day's pattern "
                        "into other hours)", self.site, self.meter, way,
                        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.hold_until)))

    def complete(self) -> tuple[list[Interval], list[Transition]]:
        """Close every interval the buffered readings have passed; score and track them."""
        if self.next_start is None or not self.buf:
            return [], []
        self.buf.sort()
        interval = self.settings.interval_s
        boundary = self.buf[-1][0] // interval * interval
        if boundary <= self.next_start:
            return [], []
        ts = np.fromiter((t for t, _ in self.buf), np.int64, len(self.buf))
        vs = np.fromiter((v for _, v in self.buf), np.float64, len(self.buf))
        gap_s = max(float(interval), 3.0 * self.poll_s) if self.poll_s else None
        cons = clean_counter(ts, vs, meter=self.info, interval_s=interval,
                             start_s=self.next_start, end_s=boundary, gap_s=gap_s)
        stored, gap_estimate = spread_gaps(cons)
        # keep the last reading at or before the boundary as the next anchor
        keep = int(np.searchsorted(ts, boundary, side="right")) - 1
        self.buf = self.buf[max(keep, 0):]
        self.next_start = boundary
        out: list[Interval] = []
        transitions: list[Transition] = []
        starts = cons.start_s.tolist()
        nan = [math.nan] * len(starts)
        exp = Expectation(nan, nan, nan, nan)
        if self.baseline is not None:
            exp = expected_per_interval(self.baseline, starts, interval, self.inputs)
        kinds = event_kinds(self.resource)
        spans = self.step_spans
        self.step_spans = [(a, b) for a, b in spans if b > boundary]  # not yet closed
        for i, (t, x, f) in enumerate(zip(starts, cons.consumption.tolist(),
                                          cons.flags.tolist(), strict=True)):
            if stored is not None and not stored[i]:
                continue  # inside a gap of more than MAX_INTERVALS: its estimate is later
            if (spans and any(a < t + interval and b > t for a, b in spans)) or (
                    t < self.hold_until):
                f |= Quality.CLOCK_STEP  # a clock step's lump, or held: stored, not scored
            scored = math.nan if f & Quality.CLOCK_STEP else float(x)
            point = Point(int(t), scored)
            scores: dict[str, float] = {}
            diags: dict[str, list[float]] = {}
            for kind, det in self.detectors.items():
                score = det.update_one(point)
                diag = det._out
                scores[kind] = score
                diags[kind] = diag.tolist()
                # an event already open (a resource changed by its meta) may still close
                if self.info.unit and (kind in kinds or kind in self.tracker.open):
                    transitions += self.tracker.step(
                        kind, int(t), interval, scored, score, diag, self.info,
                        self.resource, self.currency,
                    )  # fmt: skip
            if self.overspend is not None:  # on the baseline's grid: inputs line up
                scores["overspend"] = self.overspend.update_one(Point(
                    int(t), scored, production=exp.production[i],
                    temperature=exp.temperature[i]))
                diags["overspend"] = [self.overspend.cusum]
                if "overspend" in kinds:
                    transitions += self._overspend_transitions()
                else:
                    self.overspend.drain_events()
            out.append(Interval(int(t), float(x), int(f), scores, diags, exp.expected[i],
                                exp.std[i], gap_estimate[i]))
        return out, transitions

    def _overspend_transitions(self) -> list[Transition]:
        out = []
        for ev in self.overspend.drain_events():
            event_id = f"{self.site}/{self.meter}/overspend/{int(ev.start.timestamp())}"
            kind = "open" if ev.end is None else "close"
            out.append(Transition(kind, self.site, event_id, ev, self.resource))
        if not out:
            ev = self.overspend.open_event()
            if ev is not None:
                event_id = f"{self.site}/{self.meter}/overspend/{int(ev.start.timestamp())}"
                out.append(Transition("update", self.site, event_id, ev, self.resource))
        return out

    # ------------------------------------------------------------------ checkpoints

    def snapshot(self) -> dict[str, Any]:
        return {
            "site": self.site, "meter": self.meter, "resource": self.resource,
            "counter": self.counter, "currency": self.currency, "poll_s": self.poll_s,
            "info": {"unit": self.info.unit, "price": self.info.price_per_unit,
                     "co2": self.info.co2_kg_per_unit, "rollover": self.info.rollover},
            "buf": [[t, v if math.isfinite(v) else None] for t, v in self.buf],
            "next_start": self.next_start,
            "newest": list(self.newest) if self.newest is not None else None,
            "stepped": self.stepped, "clock_steps": self.clock_steps,
            "step_spans": [list(x) for x in self.step_spans],
            "hold_until": self.hold_until, "pace": [self.rise, self.span, self.pairs],
            "detectors": {k: _pack(d) for k, d in self.detectors.items()},
            "events": self.tracker.snapshot(),
            "nights": [[t, v if math.isfinite(v) else None] for t, v in self.tracker.nights],
            "overspend": self.overspend.snapshot() if self.overspend is not None else None,
        }  # fmt: skip

    @classmethod
    def restore(cls, state: dict[str, Any], settings: Settings) -> MeterPipeline:
        obj = cls(state["site"], state["meter"], state["resource"], settings,
                  state.get("currency", "EUR"))
        obj.counter = state["counter"]
        obj.poll_s = state.get("poll_s")
        info = state["info"]
        obj.info = MeterInfo(id=obj.meter, unit=info["unit"], resource=obj.resource,
                             price_per_unit=info["price"], co2_kg_per_unit=info["co2"],
                             rollover=info["rollover"])
        obj.buf = [(int(t), math.nan if v is None else float(v)) for t, v in state["buf"]]
        obj.next_start = state["next_start"]
        newest = state.get("newest")  # older checkpoints: the newest buffered reading
        if newest is None and obj.buf:
            newest = max(obj.buf)
        obj.newest = (int(newest[0]), float(newest[1])) if newest is not None else None
        obj.stepped = int(state.get("stepped", 0))
        obj.clock_steps = int(state.get("clock_steps", 0))
        obj.step_spans = [(int(a), int(b)) for a, b in state.get("step_spans", [])]
        obj.hold_until = int(state.get("hold_until", 0))
        obj.rise, obj.span, obj.pairs = (float(x) for x in state.get("pace", (0, 0, 0)))
        for kind, snap in state["detectors"].items():
            if kind in obj.detectors:
                # a snapshot that does not fit (config change): that detector starts afresh
                with contextlib.suppress(ValueError, KeyError, TypeError, zlib.error):
                    obj.detectors[kind] = _unpack(type(obj.detectors[kind]), snap)
        obj.tracker.restore(state.get("events", {}),
                            [(t, math.nan if v is None else v) for t, v in state.get("nights", [])])
        if state.get("overspend"):
            from ..overspend import OverspendDetector

            with contextlib.suppress(ValueError, KeyError, TypeError):
                obj.overspend = OverspendDetector.restore(state["overspend"])
        return obj


def warm_up(settings: Settings | None = None) -> None:
    """Run a throwaway meter through two intervals, so that numba's compiled kernels (and
    the modules they pull in, about a second from numba's cache on the development VM) are
    loaded before the first batch instead of while it holds the broker's messages."""
    s = settings or Settings()
    pipe = MeterPipeline("warm", "up", "electricity", s)
    t0 = 1_767_225_600
    step = max(s.interval_s // 10, 1)
    for k in range(25):
        pipe.add(float(t0 + step * k), {"energy_kwh": 1.0 + k})
    pipe.complete()
