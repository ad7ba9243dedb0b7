"""Anomaly detectors on interval consumption: spikes, stuck meters, base-load shifts, drift.

Each detector is a streaming class (:class:`~detectors.streaming.StreamingDetector`: score
one interval, learn one, snapshot, restore) whose step is a numba kernel; ``process`` runs
the same step over arrays, so batch and streaming scores are identical. The ``detect_*``
functions run a fresh detector over a meter's history and turn its output into
:class:`~detectors.events.Event` records with the excess in the counter's unit, its cost and
CO2, and a one-line explanation.

* :class:`SpikeDetector`: robust z-score against the median and MAD of the same
  time-of-week slot (falling back to the time-of-day slot until enough weeks are seen).
* :class:`StuckDetector`: the counter stands still while production runs or while the
  profile says it should move; the score is the hours it has stood still.
* :class:`LevelShiftDetector`: CUSUM (or Page-Hinkley) on nightly mean rates outside
  production (leaks, steam traps, compressed air); the event carries the start, the step
  and the excess = step x duration, since such losses run around the clock.
* :class:`DriftDetector`: rolling median of daily consumption (per unit produced, or per
  hour) against a reference period; the excess follows a linear fit of the drift.

Times are UTC epoch seconds (interval starts); ``utc_offset_s`` shifts slots and days to
local time where the plant's rhythm matters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike

from .arrays import (
    FloatArray,
    IntArray,
    as_timestamps,
    as_values,
    fmt_qty,
    fmt_utc,
    optional_values,
    positive,
    utc,
)
from .clean import Consumption
from .events import Event, EventType, Severity, merge
from .kernels import anomaly as k
from .meter import MeterInfo
from .streaming import KernelDetector

DEFAULT_INTERVAL_S = 900
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _slot_s(slot_s: int) -> int:
    if slot_s <= 0 or k.DAY_S % slot_s:
        raise ValueError(f"slot_s must divide a day (86400 s), got {slot_s}; try 900 or 3600")
    return int(slot_s)


def _count(name: str, value: int, low: int = 1) -> int:
    if int(value) != value or value < low:
        raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
    return int(value)


def _ring(rows: int, depth: int) -> FloatArray:
    return np.zeros((rows, depth + 2))


# ---------------------------------------------------------------------------------- detectors


class SpikeDetector(KernelDetector):
    """Robust z-score of each interval against its time-of-week slot (median, MAD).

    Until the slot has ``min_count`` values, the same time of day on earlier days of the
    same kind (weekday or weekend) stands in, however few; where there is none, the
    ``tod_depth`` most recent values (after a day's worth of values), unless the interval
    is within 25 % of the same time on the other kind of day: the first weekend of a
    history has no weekend profile yet. ``slot_s``: slot width (keep it at the interval:
    a slot straddling a shift change or a break mixes two levels and its median flips
    between them); ``tow_depth``/
    ``tod_depth``: values kept per time-of-week and time-of-day slot (weeks and days at one
    value per slot); ``min_count``: values a slot needs before it scores; ``floor_rel``:
    the scale is at least this share of the slot median and of the mean level, and at
    least ``floor_abs``; ``warmup_n``: intervals learned before any score.
    Diagnostics: expected (the median), scale (only where the interval is above it), and
    where the expectation came from: 0 time of week, 1 time of day and kind of day,
    2 recent values (or the other kind of day).
    """

    name = "spike"
    version = 2  # 2: rows per kind of day and a recent row in the time-of-day rings
    n_out = k.SP_NOUT
    _kind = k.SPIKE
    _batch = k._spike_batch
    columns: ClassVar[tuple[str, ...]] = ("expected", "scale", "source")

    def __init__(
        self,
        slot_s: int = 900,
        tow_depth: int = 8,
        tod_depth: int = 7,
        min_count: int = 3,
        utc_offset_s: int = 0,
        floor_rel: float = 0.05,
        floor_abs: float = 0.0,
        warmup_n: int = 0,
    ) -> None:
        self.slot_s = _slot_s(slot_s)
        self.tow_depth = _count("tow_depth", tow_depth)
        self.tod_depth = _count("tod_depth", tod_depth)
        self.min_count = _count("min_count", min_count)
        self.utc_offset_s = int(utc_offset_s)
        self.floor_rel = positive("floor_rel", floor_rel, allow_zero=True)
        self.floor_abs = positive("floor_abs", floor_abs, allow_zero=True)
        self.warmup_n = _count("warmup_n", warmup_n, 0)
        p = np.zeros(k.SP_NPARAM)
        p[k.SP_SLOT] = self.slot_s
        p[k.SP_OFFSET] = self.utc_offset_s
        p[k.SP_MIN_COUNT] = self.min_count
        p[k.SP_FLOOR_REL] = self.floor_rel
        p[k.SP_FLOOR_ABS] = self.floor_abs
        p[k.SP_WARMUP] = self.warmup_n
        self._setup(
            p,
            np.zeros(k.SP_NSTATE),
            _ring(k.WEEK_S // self.slot_s, self.tow_depth),
            _ring(2 * (k.DAY_S // self.slot_s) + 1, self.tod_depth),
        )

    def config_dict(self) -> dict[str, Any]:
        return {
            "slot_s": self.slot_s,
            "tow_depth": self.tow_depth,
            "tod_depth": self.tod_depth,
            "min_count": self.min_count,
            "utc_offset_s": self.utc_offset_s,
            "floor_rel": self.floor_rel,
            "floor_abs": self.floor_abs,
            "warmup_n": self.warmup_n,
        }

    @property
    def warmup(self) -> int:
        return max(self.warmup_n, min(self.min_count, self.tow_depth, self.tod_depth))


class StuckDetector(KernelDetector):
    """Hours a counter has stood still (consumption <= ``eps``) while it should move.

    It should move while production runs (``active`` >= 0.5) or when its time-of-week slot
    (learned as for :class:`SpikeDetector`) has a median above ``eps``. No score during the
    first ``warmup_n`` intervals (default: one day). Diagnostics: run start, expected
    consumption during the run (what went unmetered), slot median (NaN while it moves).
    """

    name = "stuck"
    n_out = k.ST_NOUT
    _kind = k.STUCK
    _batch = k._stuck_batch
    columns: ClassVar[tuple[str, ...]] = ("run_start_s", "unmetered", "expected")

    def __init__(
        self,
        slot_s: int = 900,
        tow_depth: int = 8,
        tod_depth: int = 7,
        min_count: int = 3,
        utc_offset_s: int = 0,
        interval_s: int = DEFAULT_INTERVAL_S,
        eps: float = 0.0,
        warmup_n: int | None = None,
    ) -> None:
        self.slot_s = _slot_s(slot_s)
        self.tow_depth = _count("tow_depth", tow_depth)
        self.tod_depth = _count("tod_depth", tod_depth)
        self.min_count = _count("min_count", min_count)
        self.utc_offset_s = int(utc_offset_s)
        self.interval_s = _count("interval_s", interval_s)
        self.eps = positive("eps", eps, allow_zero=True)
        self.warmup_n = _count(
            "warmup_n", k.DAY_S // self.interval_s if warmup_n is None else warmup_n, 0
        )
        p = np.zeros(k.ST_NPARAM)
        p[k.ST_SLOT] = self.slot_s
        p[k.ST_OFFSET] = self.utc_offset_s
        p[k.ST_MIN_COUNT] = self.min_count
        p[k.ST_INTERVAL] = self.interval_s
        p[k.ST_EPS] = self.eps
        p[k.ST_WARMUP] = self.warmup_n
        fs = np.zeros(k.ST_NSTATE)
        fs[k.ST_RUN_START] = math.nan
        self._setup(
            p,
            fs,
            _ring(k.WEEK_S // self.slot_s, self.tow_depth),
            _ring(k.DAY_S // self.slot_s, self.tod_depth),
        )

    def config_dict(self) -> dict[str, Any]:
        return {
            "slot_s": self.slot_s,
            "tow_depth": self.tow_depth,
            "tod_depth": self.tod_depth,
            "min_count": self.min_count,
            "utc_offset_s": self.utc_offset_s,
            "interval_s": self.interval_s,
            "eps": self.eps,
            "warmup_n": self.warmup_n,
        }

    @property
    def warmup(self) -> int:
        return self.warmup_n


class LevelShiftDetector(KernelDetector):
    """Base-load step (leak, failed steam trap, compressed-air leak) from nightly rates.

    Intervals starting in the night window [``night_start_h``, ``night_end_h``) UTC (it may
    wrap midnight) and outside production are averaged per night; a night with at least
    ``min_coverage`` of its intervals is one observation (counter units per hour). After
    ``min_ref`` nights, the reference is the median of up to ``ref_nights`` quiet nights
    and the smallest step worth finding is the largest of ``step_sigma`` robust sigmas,
    ``step_rel`` of the reference and ``step_abs``; the CUSUM (``method="cusum"``) or
    Page-Hinkley (``"page_hinkley"``, reference = mean of nights outside alarms) uses half
    of it as allowance and ``h_steps`` of it as threshold. In an alarm the reference is
    frozen and a closing CUSUM watches for the level going back.
    Diagnostics: alarm, change start, step per hour, reference per hour, end of a closed
    alarm, the night's weather-normalised value (on the interval that completes it),
    smallest step, the night's start, its measured value, the slope per degree C.
    """

    name = "level_shift"
    n_out = k.LS_NOUT
    _kind = k.LEVEL_SHIFT
    _batch = k._ls_batch
    columns: ClassVar[tuple[str, ...]] = (
        "alarm",
        "change_start_s",
        "step_per_h",
        "reference_per_h",
        "closed_end_s",
        "night_per_h",
        "min_step_per_h",
        "night_start_s",
        "night_measured_per_h",
        "slope_per_degc",
    )
    METHODS: ClassVar[dict[str, float]] = {"cusum": k.CUSUM, "page_hinkley": k.PAGE_HINKLEY}

    def __init__(
        self,
        night_start_h: float = 0.0,
        night_end_h: float = 4.0,
        interval_s: int = DEFAULT_INTERVAL_S,
        min_coverage: float = 0.75,
        ref_nights: int = 14,
        min_ref: int = 5,
        step_sigma: float = 3.0,
        step_rel: float = 0.2,
        step_abs: float = 0.0,
        h_steps: float = 2.0,
        method: str = "cusum",
        use_temperature: bool = False,
    ) -> None:
        if method not in self.METHODS:
            raise ValueError(f"method must be one of {sorted(self.METHODS)}, got {method!r}")
        for name, hour in (("night_start_h", night_start_h), ("night_end_h", night_end_h)):
            if not 0 <= hour <= 24:
                raise ValueError(f"{name} must be an hour of the day in [0, 24], got {hour!r}")
        self.night_start_h = float(night_start_h)
        self.night_end_h = float(night_end_h)
        self.interval_s = _count("interval_s", interval_s)
        if not 0 < min_coverage <= 1:
            raise ValueError(f"min_coverage must be in (0, 1], got {min_coverage!r}")
        self.min_coverage = float(min_coverage)
        self.ref_nights = _count("ref_nights", ref_nights)
        self.min_ref = _count("min_ref", min_ref)
        if self.min_ref > self.ref_nights:
            raise ValueError(f"min_ref ({min_ref}) cannot exceed ref_nights ({ref_nights})")
        self.step_sigma = positive("step_sigma", step_sigma, allow_zero=True)
        self.step_rel = positive("step_rel", step_rel, allow_zero=True)
        self.step_abs = positive("step_abs", step_abs, allow_zero=True)
        self.h_steps = positive("h_steps", h_steps)
        self.method = method
        self.use_temperature = bool(use_temperature)
        start_s = self.night_start_h * 3600.0
        length_s = night_window_s((self.night_start_h, self.night_end_h))
        self.night_length_s = length_s
        p = np.zeros(k.LS_NPARAM)
        p[k.LS_START] = start_s
        p[k.LS_LENGTH] = length_s
        p[k.LS_INTERVAL] = self.interval_s
        p[k.LS_COVERAGE] = self.min_coverage
        p[k.LS_MIN_REF] = self.min_ref
        p[k.LS_STEP_SIGMA] = self.step_sigma
        p[k.LS_STEP_REL] = self.step_rel
        p[k.LS_STEP_ABS] = self.step_abs
        p[k.LS_H_STEPS] = self.h_steps
        p[k.LS_METHOD] = self.METHODS[method]
        p[k.LS_USE_TEMP] = 1.0 if self.use_temperature else 0.0
        self._setup(p, k._ls_new_state(), _ring(2, self.ref_nights), _ring(2, self.ref_nights))

    def config_dict(self) -> dict[str, Any]:
        return {
            "night_start_h": self.night_start_h,
            "night_end_h": self.night_end_h,
            "interval_s": self.interval_s,
            "min_coverage": self.min_coverage,
            "ref_nights": self.ref_nights,
            "min_ref": self.min_ref,
            "step_sigma": self.step_sigma,
            "step_rel": self.step_rel,
            "step_abs": self.step_abs,
            "h_steps": self.h_steps,
            "method": self.method,
            "use_temperature": self.use_temperature,
        }

    @property
    def warmup(self) -> int:
        per_night = math.ceil(self.min_coverage * self.night_length_s / self.interval_s)
        return self.min_ref * max(1, per_night)


class DriftDetector(KernelDetector):
    """Gradual drift of daily consumption (per unit produced, or per hour) from a reference.

    Days run from local midnight (``utc_offset_s``); a day with ``min_coverage`` of its
    intervals is one value: consumption / production when ``use_production`` (days that
    produce no more than ``min_production`` are skipped) or the mean rate per hour. The
    first ``ref_days`` values set the reference (median); the median of the last
    ``window_days`` values is compared with it. Alarm after ``confirm_days`` days at least
    ``min_rel`` above; it ends after as many days below half of that.
    Diagnostics: alarm, deviation, reference, the day's value, that day's start.
    """

    name = "drift"
    n_out = k.DR_NOUT
    _kind = k.DRIFT
    _batch = k._dr_batch
    columns: ClassVar[tuple[str, ...]] = ("alarm", "deviation", "reference", "day", "day_start_s")

    def __init__(
        self,
        utc_offset_s: int = 0,
        interval_s: int = DEFAULT_INTERVAL_S,
        min_coverage: float = 0.75,
        ref_days: int = 7,
        window_days: int = 7,
        min_rel: float = 0.05,
        confirm_days: int = 2,
        use_production: bool = False,
        min_production: float = 0.0,
    ) -> None:
        self.utc_offset_s = int(utc_offset_s)
        self.interval_s = _count("interval_s", interval_s)
        if not 0 < min_coverage <= 1:
            raise ValueError(f"min_coverage must be in (0, 1], got {min_coverage!r}")
        self.min_coverage = float(min_coverage)
        self.ref_days = _count("ref_days", ref_days)
        self.window_days = _count("window_days", window_days)
        self.min_rel = positive("min_rel", min_rel)
        self.confirm_days = _count("confirm_days", confirm_days)
        self.use_production = bool(use_production)
        self.min_production = positive("min_production", min_production, allow_zero=True)
        p = np.zeros(k.DR_NPARAM)
        p[k.DR_OFFSET] = self.utc_offset_s
        p[k.DR_INTERVAL] = self.interval_s
        p[k.DR_COVERAGE] = self.min_coverage
        p[k.DR_REF_DAYS] = self.ref_days
        p[k.DR_MIN_REL] = self.min_rel
        p[k.DR_CONFIRM] = self.confirm_days
        p[k.DR_USE_PROD] = 1.0 if self.use_production else 0.0
        p[k.DR_MIN_PROD] = self.min_production
        self._setup(p, k._dr_new_state(), _ring(1, self.ref_days), _ring(1, self.window_days))

    def config_dict(self) -> dict[str, Any]:
        return {
            "utc_offset_s": self.utc_offset_s,
            "interval_s": self.interval_s,
            "min_coverage": self.min_coverage,
            "ref_days": self.ref_days,
            "window_days": self.window_days,
            "min_rel": self.min_rel,
            "confirm_days": self.confirm_days,
            "use_production": self.use_production,
            "min_production": self.min_production,
        }

    @property
    def warmup(self) -> int:
        per_day = math.ceil(self.min_coverage * k.DAY_S / self.interval_s)
        return (self.ref_days + self.window_days) * max(1, per_day)


DETECTORS: tuple[type[KernelDetector], ...] = (
    SpikeDetector,
    StuckDetector,
    LevelShiftDetector,
    DriftDetector,
)


# ---------------------------------------------------------------------------------- batch


@dataclass(frozen=True)
class Detection:
    """A detector run over a meter's intervals: scores, diagnostics and events."""

    t_s: IntArray
    scores: FloatArray
    diagnostics: FloatArray  # one row per interval; columns named in ``columns``
    columns: tuple[str, ...]
    events: tuple[Event, ...]

    def column(self, name: str) -> FloatArray:
        """One diagnostics column by name."""
        return self.diagnostics[:, self.columns.index(name)]


@dataclass(frozen=True)
class _Inputs:
    t: IntArray
    x: FloatArray
    active: FloatArray
    production: FloatArray
    interval_s: int


def _inputs(
    t_s: ArrayLike,
    consumption: ArrayLike,
    active: ArrayLike | None,
    production: ArrayLike | None,
    interval_s: int,
) -> _Inputs:
    t = as_timestamps("t_s", t_s)
    n = t.shape[0]
    x = as_values("consumption", consumption, n)
    if n > 1 and not k._on_grid(t, int(interval_s)):
        raise ValueError(
            f"t_s must be a regular grid of interval starts {interval_s} s apart; resample "
            "with detectors.clean.clean_counter (or pass the grid's interval_s)"
        )
    return _Inputs(
        t,
        x,
        optional_values("active", active, n),
        optional_values("production", production, n),
        _count("interval_s", interval_s),
    )


def _money(meter: MeterInfo, quantity: float, currency: str, per: str = "") -> str:
    cost = meter.cost(quantity)
    return "" if cost is None else f", {fmt_qty(cost)} {currency}{per}"


def _event(
    meter: MeterInfo,
    kind: EventType,
    start_s: float,
    end_s: float | None,
    severity: Severity,
    excess: float,
    text: str,
    score: float,
) -> Event:
    return Event(
        meter=meter.id,
        type=kind,
        start=utc(start_s),
        end=None if end_s is None else utc(end_s),
        severity=severity,
        excess=float(excess),
        unit=meter.unit,
        cost=meter.cost(excess),
        co2_kg=meter.co2_kg(excess),
        explanation=text,
        score=float(score),
    )


def _runs(mask: np.ndarray) -> Iterable[tuple[int, int]]:
    """[start, stop) index pairs of the True runs in ``mask``."""
    starts, stops = k._true_runs(np.ascontiguousarray(mask, dtype=np.bool_))
    return zip(starts.tolist(), stops.tolist(), strict=True)


def _median_finite(values: Iterable[float]) -> float:
    """Median of the finite values (NaN when none); for the few values beside a run."""
    v = sorted(x for x in values if math.isfinite(x))
    if not v:
        return math.nan
    half = len(v) // 2
    return v[half] if len(v) % 2 else (v[half - 1] + v[half]) / 2


def _ratios(x: FloatArray, expected: FloatArray) -> list[float]:
    """x / expected where expected > 0, else NaN."""
    pairs = zip(x.tolist(), expected.tolist(), strict=True)
    return [a / b if b > 0 else math.nan for a, b in pairs]


def detect_spikes(
    t_s: ArrayLike,
    consumption: ArrayLike,
    *,
    meter: MeterInfo,
    interval_s: int = DEFAULT_INTERVAL_S,
    detector: SpikeDetector | None = None,
    threshold: float = 6.0,
    min_rel: float = 0.4,
    max_intervals: int = 4,
    context: int = 4,
    currency: str = "EUR",
) -> Detection:
    """Spikes: short, isolated runs of intervals far above usual for their time of week.

    An interval counts when it scores at least ``threshold`` robust sigmas and lies at least
    ``min_rel`` above the slot median. A run of more than ``max_intervals`` such intervals,
    or one whose ``context`` intervals before or after are themselves raised (median ratio
    to usual above ``1 + min_rel / 2``), is a level change or a sustained overspend, not a
    spike, and is left to the other detectors. Where "usual" came from the most recent
    values (no profile for that time yet), the intervals after the run must also be back
    near the level before it: a recent median catches up with a shift that starts, so only
    a return tells a spike from a start.
    """
    inp = _inputs(t_s, consumption, None, None, interval_s)
    det = detector or SpikeDetector()
    scores, diag = det.process(inp.t, inp.x, inp.active, inp.production)
    expected = diag[:, 0]
    with np.errstate(invalid="ignore"):
        high = (scores >= threshold) & (inp.x >= (1.0 + min_rel) * expected)
    events = []
    for i0, i1 in _runs(high):
        n = i1 - i0
        if n > max_intervals:
            continue
        sides = ((max(0, i0 - context), i0), (i1, i1 + context))
        raised = any(
            _median_finite(_ratios(inp.x[a:b], expected[a:b])) > 1.0 + 0.5 * min_rel
            for a, b in sides
        )  # NaN (no finite ratio beside the run) is no rise
        if raised:
            continue
        if np.any(diag[i0:i1, 2] == k.SOURCE_RECENT):
            after = _median_finite(inp.x[i1 : i1 + context].tolist())
            if not math.isfinite(after) or after > (1.0 + 0.5 * min_rel) * expected[i0]:
                continue
        excess = float(np.sum(inp.x[i0:i1] - expected[i0:i1]))
        top = i0 + int(np.argmax(scores[i0:i1]))
        when = utc(inp.t[top] + det.utc_offset_s)
        slot = f"{_WEEKDAYS[when.weekday()]} {when:%H:%M}"
        text = (
            f"{meter.id} used {fmt_qty(excess)} {meter.unit} more than usual for "
            f"{slot} in {n} interval{'s' if n > 1 else ''} from {fmt_utc(inp.t[i0])} "
            f"(robust z {scores[top]:.0f}){_money(meter, excess, currency)}"
        )
        events.append(
            _event(
                meter, EventType.SPIKE, inp.t[i0], inp.t[i1 - 1] + inp.interval_s,
                Severity.WARNING, excess, text, scores[top],
            )
        )  # fmt: skip
    return Detection(inp.t, scores, diag, SpikeDetector.columns, tuple(events))


def detect_stuck(
    t_s: ArrayLike,
    consumption: ArrayLike,
    *,
    meter: MeterInfo,
    active: ArrayLike | None = None,
    interval_s: int = DEFAULT_INTERVAL_S,
    detector: StuckDetector | None = None,
    min_hours: float = 2.0,
) -> Detection:
    """Stuck meters: runs standing still for at least ``min_hours`` while they should move.

    The event's excess is 0 (nothing extra was used); the explanation gives the estimated
    unmetered quantity.
    """
    inp = _inputs(t_s, consumption, active, None, interval_s)
    det = detector or StuckDetector(interval_s=inp.interval_s)
    scores, diag = det.process(inp.t, inp.x, inp.active, inp.production)
    events = []
    run_start = diag[:, 0]
    for i0, i1 in _runs(np.isfinite(run_start)):
        hours = float(np.max(scores[i0:i1]))
        if hours < min_hours:
            continue
        last = i0 + int(np.flatnonzero(scores[i0:i1] == hours)[0])
        start, end = float(run_start[i0]), float(inp.t[last] + inp.interval_s)
        unmetered = float(diag[last, 1])
        text = (
            f"{meter.id} counter stood still for {hours:.1f} h between {fmt_utc(start)} and "
            f"{fmt_utc(end)} while it should have moved; about {fmt_qty(unmetered)} "
            f"{meter.unit} not metered"
        )
        events.append(
            Event(
                meter=meter.id, type=EventType.STUCK, start=utc(start), end=utc(end),
                severity=Severity.WARNING, excess=0.0, unit=meter.unit, explanation=text,
                score=hours,
            )
        )  # fmt: skip
    return Detection(inp.t, scores, diag, StuckDetector.columns, tuple(events))


def _best_split(y: FloatArray) -> int:
    """Index splitting ``y`` into two runs whose means differ most (t-statistic weight).

    Returns j in [1, len(y) - 1]: the step up happens before ``y[j]``; 0 when len(y) < 2.
    """
    n = y.size
    if n < 2:
        return 0
    j = np.arange(1, n)
    csum = np.cumsum(y)[:-1]
    before = csum / j
    after = (y.sum() - csum) / (n - j)
    weight = np.sqrt(j * (n - j) / n)
    return int(j[np.argmax((after - before) * weight)])


def _refine_start(inp: _Inputs, det: LevelShiftDetector, night_s: float) -> float:
    """Sharpen a change start to the interval where the night-time level steps up.

    Looks at the qualifying intervals of the night before ``night_s`` and of that night, and
    splits them where the two sides' means differ most.
    """
    lo, hi = night_s - k.DAY_S, night_s + det.night_length_s
    offset = (inp.t - det.night_start_h * 3600.0) % k.DAY_S
    pick = (
        (inp.t >= lo)
        & (inp.t < hi)
        & (offset < det.night_length_s)
        & np.isfinite(inp.x)
        & ~(inp.active >= 0.5)
    )
    idx = np.flatnonzero(pick)
    if idx.size < 4:
        return night_s
    return float(inp.t[idx[_best_split(inp.x[idx])]])


def detect_level_shift(
    t_s: ArrayLike,
    consumption: ArrayLike,
    *,
    meter: MeterInfo,
    active: ArrayLike | None = None,
    temperature: ArrayLike | None = None,
    interval_s: int = DEFAULT_INTERVAL_S,
    detector: LevelShiftDetector | None = None,
    event_type: EventType | None = None,
    lookback_nights: int = 7,
    currency: str = "EUR",
) -> Detection:
    """Base-load rises: one event per alarm with its start, step and excess.

    With ``temperature`` (outdoor degC per interval) nights are weather-corrected (see
    :class:`LevelShiftDetector`). The CUSUM's own start is where its last excursion began,
    which a mild rise before the real step (a cold spell) can pull early. So the start is
    re-estimated: the nightly values from ``lookback_nights`` before that start up to the
    alarm are split where their mean steps up most, and the start is then placed at the
    interval of that night (or the one before) where the night-time level steps up. The
    step is the mean of the nights after the start minus the reference, the excess step x
    duration (the loss is assumed to run around the clock, as leaks do). ``event_type``
    defaults to LEVEL_SHIFT for steam meters (failed traps) and BASE_LOAD_RISE otherwise;
    an alarm still open at the end of the data gives an open event whose excess runs to
    that end.
    """
    inp = _inputs(t_s, consumption, active, None, interval_s)
    temp = optional_values("temperature", temperature, inp.t.size)
    det = detector or LevelShiftDetector(
        interval_s=inp.interval_s, use_temperature=temperature is not None
    )
    kind = event_type or (
        EventType.LEVEL_SHIFT if meter.resource == "steam" else EventType.BASE_LOAD_RISE
    )
    scores, diag = det.process(inp.t, inp.x, inp.active, inp.production, temp)
    alarm, change, step, ref, closed = (diag[:, j] for j in range(5))
    min_step, slope = diag[:, 6], diag[:, 9]
    has_night = np.isfinite(diag[:, 5])
    night_y, night_t = diag[has_night, 5], diag[has_night, 7]
    events = []
    data_end = float(inp.t[-1] + inp.interval_s) if inp.t.size else 0.0
    for i0, i1 in _runs(alarm == 1.0):
        last = i1 if i1 < inp.t.size and math.isfinite(closed[i1]) else i1 - 1
        end = float(closed[last]) if math.isfinite(closed[last]) else None
        base = float(ref[last])
        # where did the level step up? (nights from before the excursion to the alarm)
        raised = float(diag[i0, 7])
        window = (night_t >= change[i0] - lookback_nights * k.DAY_S) & (night_t <= raised)
        split = _best_split(night_y[window])
        night = float(night_t[window][split]) if split > 0 else float(change[i0])
        start = _refine_start(inp, det, night)
        upto = end if end is not None else data_end
        after = (night_t >= start) & (night_t < upto)
        rise = float(np.mean(night_y[after]) - base) if after.any() else float(step[last])
        hours = max(0.0, (upto - start) / 3600.0)
        excess = rise * hours
        per_day = rise * 24.0
        severity = Severity.ALARM if base <= 0 or rise >= 0.5 * base else Severity.WARNING
        since = (
            f"since {fmt_utc(start)}"
            if end is None
            else (f"from {fmt_utc(start)} to {fmt_utc(end)}")
        )
        weather = " (weather-corrected)" if slope[last] != 0 else ""
        text = (
            f"night base load{weather} of {meter.id} up {fmt_qty(rise)} {meter.unit}/h {since} "
            f"(from {fmt_qty(base)} {meter.unit}/h), about {fmt_qty(per_day)} {meter.unit}/day"
            f"{_money(meter, per_day, currency, '/day')}; {fmt_qty(excess)} {meter.unit} in all"
        )
        score = rise / float(min_step[last]) if min_step[last] > 0 else 1.0
        events.append(_event(meter, kind, start, end, severity, excess, text, score))
    return Detection(inp.t, scores, diag, LevelShiftDetector.columns, tuple(events))


def _step_rss(y: FloatArray) -> float:
    """Residual sum of squares of ``y`` as two flat runs split where their means differ most."""
    j = _best_split(y)
    return float(np.sum((y[:j] - y[:j].mean()) ** 2) + np.sum((y[j:] - y[j:].mean()) ** 2))


def _hinge_fit(x: FloatArray, y: FloatArray) -> tuple[float, float, float, float]:
    """(knot, level, slope, rss) of ``y = level + slope * max(0, x - knot)``, least squares.

    The knot is searched over the x values (a drift starts on some day): flat days before
    a ramp then pull the start neither early, as a straight line through all days does,
    nor late. All knots are fitted at once in closed form; ties go to the earliest.
    """
    knots = x[:-1]
    if knots.size == 0:
        return float(x[0]), float(np.mean(y)), 0.0, 0.0
    h = np.maximum(0.0, x[None, :] - knots[:, None])  # one row per knot
    hc = h - h.mean(axis=1, keepdims=True)
    yc = y - y.mean()
    shh = np.einsum("ij,ij->i", hc, hc)
    shy = hc @ yc
    slope = np.where(shh > 0, shy / np.where(shh > 0, shh, 1.0), 0.0)
    rss = float(yc @ yc) - slope * shy
    best = int(np.flatnonzero(rss <= rss.min() + 1e-12 * abs(rss.min()))[0])
    level = float(y.mean() - slope[best] * h[best].mean())
    return float(knots[best]), level, float(slope[best]), float(rss[best])


def detect_drift(
    t_s: ArrayLike,
    consumption: ArrayLike,
    *,
    meter: MeterInfo,
    production: ArrayLike | None = None,
    interval_s: int = DEFAULT_INTERVAL_S,
    detector: DriftDetector | None = None,
    currency: str = "EUR",
) -> Detection:
    """Gradual drift: one event per alarm whose daily values rise like a ramp.

    Each day's relative deviation from the reference, from the reference period's end to
    the alarm's end, is fitted with a hinge: flat, then a ramp (:func:`_hinge_fit`). An
    alarm whose days are better explained by a single step is not a drift (a leak or an
    overspend: the other detectors own those) and gives no event. Otherwise the drift
    starts at the hinge's knot, and the excess is the share of consumption above the level
    before the knot, following the ramp, summed over the event.
    """
    inp = _inputs(t_s, consumption, None, production, interval_s)
    det = detector or DriftDetector(
        interval_s=inp.interval_s, use_production=production is not None
    )
    scores, diag = det.process(inp.t, inp.x, inp.active, inp.production)
    alarm, dev, refs, days, day_start = (diag[:, j] for j in range(5))
    has_day = np.isfinite(days)
    events = []
    data_end = float(inp.t[-1] + inp.interval_s) if inp.t.size else 0.0
    for i0, i1 in _runs(alarm == 1.0):
        end = float(day_start[i1]) if i1 < inp.t.size and has_day[i1] else None
        upto = end if end is not None else data_end
        ref = float(refs[i0])
        ref_set = int(np.flatnonzero(np.isfinite(refs))[0])
        sel = has_day & (np.arange(inp.t.size) > ref_set) & (day_start < upto)
        d_t = day_start[sel]
        d_x = (d_t - d_t[0]) / k.DAY_S if d_t.size else d_t
        d_y = days[sel] / ref - 1.0
        if d_t.size < 2:
            continue
        knot, level, slope, rss = _hinge_fit(d_x, d_y)
        if slope <= 0 or (d_t.size >= 4 and _step_rss(d_y) < rss):
            continue  # one step explains the days better: not a drift
        if knot == d_x[0] and level > 0:
            # already rising when the days after the reference begin: the ramp started
            # where it leaves the reference level, before them
            start_day, base = float(d_t[0] - level / slope * k.DAY_S), 0.0
        else:
            start_day, base = float(d_t[0] + knot * k.DAY_S), level
        # day values stand for the day they start: the ramp's onset lies within the
        # knot's day, so the start is taken at its middle
        start = max(float(inp.t[0]), (start_day + k.DAY_S / 2) // inp.interval_s * inp.interval_s)
        span = (inp.t >= start) & (inp.t < upto) & np.isfinite(inp.x)
        ramp = slope * np.maximum(0.0, (inp.t[span] - start) / k.DAY_S)
        excess = float(np.sum(inp.x[span] * ramp / np.maximum(1.0 + base + ramp, 1e-12)))
        now = float(dev[i1 - 1])
        basis = "per unit produced" if det.use_production else "per hour"
        since = (
            f"since {fmt_utc(start)}"
            if end is None
            else (f"from {fmt_utc(start)} to {fmt_utc(end)}")
        )
        text = (
            f"{meter.id} consumption {basis} drifting up {since}, now {100 * now:+.0f} % "
            f"against its reference; about {fmt_qty(excess)} {meter.unit} extra"
            f"{_money(meter, excess, currency)}"
        )
        severity = Severity.ALARM if now >= 3 * det.min_rel else Severity.WARNING
        events.append(
            _event(meter, EventType.DRIFT, start, end, severity, excess, text, now / det.min_rel)
        )
    return Detection(inp.t, scores, diag, DriftDetector.columns, tuple(events))


_EXPLAINS_SPIKES = {EventType.BASE_LOAD_RISE, EventType.LEVEL_SHIFT, EventType.DRIFT}


def _explained(spike: Event, others: list[Event]) -> bool:
    """A spike inside a longer rise of the same meter is part of that rise."""
    return any(
        o.type in _EXPLAINS_SPIKES
        and o.meter == spike.meter
        and o.start <= spike.start
        and (o.end is None or spike.start <= o.end)
        for o in others
    )


def night_window_s(night_hours_utc: tuple[float, float]) -> float:
    """The length of a night window given as (start, end) UTC hours, in seconds; it may
    wrap past midnight, and equal hours mean the whole day."""
    return ((night_hours_utc[1] - night_hours_utc[0]) % 24.0 or 24.0) * 3600.0


def detect_anomalies(
    consumption: Consumption,
    meter: MeterInfo,
    *,
    active: ArrayLike | None = None,
    production: ArrayLike | None = None,
    temperature: ArrayLike | None = None,
    night_hours_utc: tuple[float, float] = (0.0, 4.0),
    utc_offset_s: int = 0,
    currency: str = "EUR",
) -> list[Event]:
    """Every detector over one cleaned meter, events merged (spike, stuck, shift, drift).

    Spikes inside a base-load rise, level shift or drift of the meter are dropped: they
    are that rise seen by a detector that has not learned it yet.

    ``active`` (production running share), ``production`` (units per interval) and
    ``temperature`` (outdoor degC) must be on the same grid as ``consumption``.
    """
    t, x, step = consumption.start_s, consumption.consumption, consumption.interval_s
    # a night's mean rate is only known to two counter steps over the night: smaller
    # base-load steps cannot be told from the counter's rounding
    night_length_s = night_window_s(night_hours_utc)
    events: list[Event] = []
    spikes = detect_spikes(
        t, x, meter=meter, interval_s=step, currency=currency,
        detector=SpikeDetector(utc_offset_s=utc_offset_s, floor_abs=consumption.resolution),
    ).events  # fmt: skip
    events += detect_stuck(
        t, x, meter=meter, active=active, interval_s=step,
        detector=StuckDetector(utc_offset_s=utc_offset_s, interval_s=step),
    ).events  # fmt: skip
    events += detect_level_shift(
        t, x, meter=meter, active=active, temperature=temperature, interval_s=step,
        currency=currency,
        detector=LevelShiftDetector(
            *night_hours_utc,
            interval_s=step,
            use_temperature=temperature is not None,
            step_abs=2.0 * consumption.resolution * 3600.0 / night_length_s,
        ),
    ).events  # fmt: skip
    events += detect_drift(
        t, x, meter=meter, production=production, interval_s=step, currency=currency,
        detector=DriftDetector(
            utc_offset_s=utc_offset_s, interval_s=step, use_production=production is not None
        ),
    ).events  # fmt: skip
    events += [e for e in spikes if not _explained(e, events)]
    return merge(events)
