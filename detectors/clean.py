"""Cleaning: counter readings to interval consumption on a regular UTC grid, with flags.

:func:`clean_counter` takes raw readings of a cumulative counter (int64 UTC epoch seconds,
float64 values in the counter's unit, NaN allowed) and returns :class:`Consumption`: the
consumption per interval (default 15 min, aligned to UTC multiples of the interval), a
:class:`Quality` bitmask per interval, the gaps, and :class:`~detectors.events.Event` records
for rollovers, resets, gaps and impossible rates. :func:`resample_gauge` averages gauges
(temperature, production rate, line running) onto the same grid.

Choices, in the order the readings meet them:

* Readings are sorted by time. Of several with one timestamp the last finite one wins
  (DUPLICATE); a reading older than one received before it is OUT_OF_ORDER but kept.
* NaN/inf readings are skipped (INVALID on the next interval).
* A coarse counter (a float32 register holding millions) moves in steps: one step of
  ``resolution`` is always plausible, and a drop of one step is jitter.
* A drop no larger than the jitter tolerance is JITTER: zero consumption, and the higher
  reading stays the reference so the recovery is not counted twice.
* A drop explained by the register wrapping (the profile's rollover value, or a 16/32/64-bit
  maximum times a power of ten when none is given) is a ROLLOVER: consumption continues.
* Any other drop is a RESET (meter reset or replaced): the new reading is taken as the
  consumption since the reset when that is possible at the rated maximum, otherwise the
  consumption across the reset is UNKNOWN (NaN).
* A rise above the rated maximum (IMPOSSIBLE_RATE) is held back: if the next reading fits
  the old level the reading was a glitch and is dropped; if it fits the new level the jump is
  accepted with UNKNOWN consumption.
* Gaps: two readings further apart than ``gap_s`` (default: the larger of the interval and
  three typical sampling periods). The counter difference across a gap is exact, but *when* it was
  used is not known, so it is never spread over the gap: every interval the gap touches
  gets NaN consumption and the GAP flag, and the consumption of those intervals is kept as
  one lump per gap in ``gap_consumption``. Shorter holes (a missed poll) are spread by time
  like any other reading pair, which only moves consumption within ``gap_s``.
* Resampling spreads each reading pair's consumption over the intervals it spans in
  proportion to time, so ``nansum(consumption) + nansum(gap_consumption)`` equals the counter
  difference (wraps and resets included) over the grid.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import IntFlag

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .arrays import (
    FloatArray,
    IntArray,
    as_timestamps,
    as_values,
    fmt_qty,
    fmt_utc,
    positive,
    utc,
)
from .events import Event, EventType, Severity
from .kernels import clean as k
from .meter import MeterInfo

DEFAULT_INTERVAL_S = 900


class Quality(IntFlag):
    """Per-interval quality bits (OR-ed over every reading pair touching the interval)."""

    OK = 0
    DUPLICATE = k.DUPLICATE  # a reading with a repeated timestamp was dropped
    OUT_OF_ORDER = k.OUT_OF_ORDER  # a reading arrived after a later one
    INVALID = k.INVALID  # a NaN/inf reading was skipped
    JITTER = k.JITTER  # a small backward step was ignored
    ROLLOVER = k.ROLLOVER  # the counter register wrapped
    RESET = k.RESET  # the counter dropped: meter reset or replaced
    UNKNOWN = k.UNKNOWN  # consumption cannot be known (NaN)
    GAP = k.GAP  # no readings for longer than gap_s: consumption NaN, kept per gap
    IMPOSSIBLE_RATE = k.IMPOSSIBLE_RATE  # a reading implied more than the rated maximum
    PARTIAL = k.PARTIAL  # readings cover only part of the interval (series edge)
    NO_DATA = k.NO_DATA  # no readings cover the interval: consumption NaN
    # set by the detector service (not by clean_counter): the edge clock stepped back, and
    # the consumption of the readings stamped behind it landed here; kept, not scored
    CLOCK_STEP = 2048

    @classmethod
    def unusable(cls) -> Quality:
        """Bits that make an interval's consumption NaN."""
        return cls.UNKNOWN | cls.GAP | cls.NO_DATA


@dataclass(frozen=True)
class Segments:
    """Consumption between consecutive accepted readings (the step before resampling)."""

    t0_s: IntArray
    t1_s: IntArray
    delta: FloatArray  # counter units over [t0, t1); NaN when unknown
    flags: NDArray[np.int32]
    before: FloatArray  # counter reading the delta starts from (the reference level)
    level: FloatArray  # counter reading at t1
    resolution: float  # the counter's step used for plausibility and jitter


@dataclass(frozen=True)
class Consumption:
    """Interval consumption of one counter on a regular UTC grid."""

    start_s: IntArray  # interval starts, UTC epoch seconds
    interval_s: int
    consumption: FloatArray  # counter units per interval; NaN: unknown, gap or no data
    flags: NDArray[np.int32]  # Quality bits per interval
    gap_start_s: IntArray  # one entry per gap: first interval start
    gap_end_s: IntArray  # end of the last interval the gap touches
    gap_consumption: FloatArray  # consumption of the intervals a gap touches (one lump)
    unit: str
    events: tuple[Event, ...]
    notable: Segments  # the reading pairs the events come from (rollover, reset, gap, rate)

    @property
    def total(self) -> float:
        """All known consumption on the grid, gaps included (NaN parts left out)."""
        return float(np.nansum(self.consumption) + np.nansum(self.gap_consumption))

    @property
    def valid(self) -> NDArray[np.bool_]:
        """Intervals whose consumption is known."""
        return np.isfinite(self.consumption)

    @property
    def resolution(self) -> float:
        """The counter's step (counter units): smaller differences are not meaningful."""
        return self.notable.resolution

    def rate_per_h(self) -> FloatArray:
        """Mean rate per interval in counter units per hour."""
        return self.consumption * (3600.0 / self.interval_s)


@dataclass(frozen=True)
class Gauge:
    """A gauge averaged per interval: mean of the readings inside, NaN when none."""

    start_s: IntArray
    interval_s: int
    mean: FloatArray
    count: IntArray


def order_readings(
    timestamps_s: ArrayLike, values: ArrayLike
) -> tuple[IntArray, FloatArray, NDArray[np.int32]]:
    """Readings sorted by time with repeated timestamps dropped, and their flags."""
    ts, vs, flags = _ordered(timestamps_s, values)
    return ts, vs, flags if flags.size == ts.size else np.zeros(ts.size, dtype=np.int32)


_NO_FLAGS = np.zeros(0, dtype=np.int32)
# Readings up to this many per call are sorted into a per-thread buffer kept between calls
# (20 bytes a reading, 21 MB at most): fresh arrays of that size are new pages from the
# kernel on every call, and faulting them in cost more than the sort itself.
_KEEP_BUFFER_READINGS = 1 << 20
_buffers = threading.local()


def _sort_buffers(n: int) -> tuple[IntArray, FloatArray, NDArray[np.int32]]:
    """This thread's sort buffers, at least ``n`` long (fresh ones beyond the kept size)."""
    t: IntArray | None = getattr(_buffers, "t", None)
    if t is not None and t.size >= n:
        return t, _buffers.v, _buffers.f
    size = max(n, 1024)
    bufs = (np.empty(size, np.int64), np.empty(size, np.float64), np.empty(size, np.int32))
    if size <= _KEEP_BUFFER_READINGS:
        _buffers.t, _buffers.v, _buffers.f = bufs
    return bufs


def _ordered(
    timestamps_s: ArrayLike, values: ArrayLike, *, scratch: bool = False
) -> tuple[IntArray, FloatArray, NDArray[np.int32]]:
    """:func:`order_readings`, with an empty flag array when no reading needs a flag.

    Readings already in order (the usual case) are used as they are; a few out of place
    are sorted by insertion; only badly shuffled ones pay for a full sort. With
    ``scratch`` the sorted readings may live in this thread's reused buffers: valid only
    until the thread's next call.
    """
    ts = as_timestamps("timestamps_s", timestamps_s)
    vs = as_values("values", values, ts.shape[0])
    if k._in_order(ts):
        return ts, vs, _NO_FLAGS
    budget = 8 * ts.size + 64
    if scratch:
        t, v, flags = _sort_buffers(ts.size)
        m, done = k._sort_nearly_into(ts, vs, budget, t, v, flags)
        if done:
            return t[:m], v[:m], flags[:m]
    else:
        t, v, flags, done = k._sort_nearly(ts, vs, budget)
        if done:
            return t, v, flags
    return k._ordered(ts, vs, np.argsort(ts, kind="stable"))


def infer_resolution(values: FloatArray) -> float:
    """The counter's step: the smallest rise between consecutive finite readings (0: none).

    For a smooth counter this is the least consumed between two polls, an upper bound of
    the true step; it only loosens the jitter and plausibility tolerances by that much.
    """
    return float(k._min_rise(np.ascontiguousarray(values, dtype=np.float64)))


def counter_segments(
    timestamps_s: ArrayLike,
    values: ArrayLike,
    *,
    rollover: float | None = None,
    max_rate_per_h: float | None = None,
    resolution: float | None = None,
    gap_s: float = np.inf,
    jitter_abs: float = 0.0,
    jitter_rel: float = 0.0,
) -> Segments:
    """Consumption between consecutive readings (sorting, wraps, resets; see module doc).

    ``resolution`` is the counter's step in counter units (default: inferred from the
    readings); one step is always plausible and a drop of one step is jitter.
    """
    ts, vs, flags = order_readings(timestamps_s, values)
    return _segments(ts, vs, flags, rollover, max_rate_per_h, resolution, gap_s, jitter_abs,
                     jitter_rel)  # fmt: skip


def _segments(
    ts: IntArray,
    vs: FloatArray,
    flags: NDArray[np.int32],
    rollover: float | None,
    max_rate_per_h: float | None,
    resolution: float | None,
    gap_s: float,
    jitter_abs: float,
    jitter_rel: float,
) -> Segments:
    """:func:`counter_segments` on readings already sorted and deduplicated."""
    limits = _limits(vs, rollover, max_rate_per_h, resolution, gap_s, jitter_abs, jitter_rel)
    t0, t1, delta, f, before, level = k._counter_segments(ts, vs, flags, *limits)
    return Segments(t0, t1, delta, f, before, level, limits[2])


def _limits(
    vs: FloatArray,
    rollover: float | None,
    max_rate_per_h: float | None,
    resolution: float | None,
    gap_s: float,
    jitter_abs: float,
    jitter_rel: float,
) -> tuple[float, float, float, float, float, float]:
    """The kernels' checked (rollover, max rate per s, resolution, gap_s, jitter abs, rel)."""
    roll = positive("rollover", rollover) if rollover is not None else 0.0
    per_s = positive("max_rate_per_h", max_rate_per_h) / 3600.0 if max_rate_per_h else 0.0
    if resolution is None:
        resolution = infer_resolution(vs)
    gap = float(gap_s)
    if not gap > 0:
        raise ValueError(f"gap_s must be > 0 (seconds), got {gap_s!r}")
    return (
        roll,
        per_s,
        float(positive("resolution", resolution, allow_zero=True)),
        gap,
        float(positive("jitter_abs", jitter_abs, allow_zero=True)),
        float(positive("jitter_rel", jitter_rel, allow_zero=True)),
    )


def _grid(
    first: int, last: int, interval_s: int, start_s: int | None, end_s: int | None
) -> tuple[int, int]:
    """(grid start, number of intervals) aligned to UTC multiples of ``interval_s``."""
    lo = (first if start_s is None else int(start_s)) // interval_s * interval_s
    hi_raw = last if end_s is None else int(end_s)
    hi = -(-hi_raw // interval_s) * interval_s
    return lo, max(0, (hi - lo) // interval_s)


def _interval(interval_s: int) -> int:
    if int(interval_s) != interval_s or interval_s <= 0:
        raise ValueError(f"interval_s must be a positive whole number of seconds, got {interval_s}")
    return int(interval_s)


def clean_counter(
    timestamps_s: ArrayLike,
    values: ArrayLike,
    *,
    meter: MeterInfo | None = None,
    interval_s: int = DEFAULT_INTERVAL_S,
    rollover: float | None = None,
    max_rate_per_h: float | None = None,
    resolution: float | None = None,
    gap_s: float | None = None,
    jitter_abs: float = 0.0,
    jitter_rel: float = 0.0,
    start_s: int | None = None,
    end_s: int | None = None,
) -> Consumption:
    """Counter readings -> consumption per interval, flags, gaps and data-quality events.

    ``rollover`` and ``max_rate_per_h`` (counter units per hour) default to the meter's,
    ``resolution`` (the counter's step) to the smallest rise seen in the readings;
    ``start_s``/``end_s`` fix the grid (to align several meters), otherwise it spans the
    readings. See the module docstring for every choice made on the way.
    """
    interval = _interval(interval_s)
    # the sorted readings are only used inside this call
    ts_in, vs, reading_flags = _ordered(timestamps_s, values, scratch=True)
    if gap_s is None:
        # the typical sampling period, from at most ~10,000 evenly spread steps
        every = max(1, ts_in.size // 10_000)
        steps = ts_in[1::every] - ts_in[:-1:every]
        gap_s = max(float(interval), 3.0 * float(np.median(steps)) if steps.size else 0.0)
    if meter is not None:
        rollover = meter.rollover if rollover is None else rollover
        max_rate_per_h = meter.max_rate_per_h if max_rate_per_h is None else max_rate_per_h
    limits = _limits(vs, rollover, max_rate_per_h, resolution, gap_s, jitter_abs, jitter_rel)
    unit = meter.unit if meter is not None else ""
    if ts_in.size == 0 and (start_s is None or end_s is None):
        empty_i = np.zeros(0, dtype=np.int64)
        empty_f = np.zeros(0)
        empty_flags = np.zeros(0, np.int32)
        seg = Segments(empty_i, empty_i, empty_f, empty_flags, empty_f, empty_f, limits[2])
        return Consumption(
            empty_i, interval, empty_f, empty_flags, empty_i, empty_i, empty_f, unit, (), seg
        )
    first = int(ts_in[0]) if ts_in.size else int(start_s or 0)
    last = int(ts_in[-1]) if ts_in.size else int(end_s or 0)
    lo, n = _grid(first, last, interval, start_s, end_s)
    cons, flags, t0, t1, delta, seg_flags, before, level = k._clean(
        ts_in, vs, reading_flags, *limits, lo, interval, n
    )
    seg = Segments(t0, t1, delta, seg_flags, before, level, limits[2])
    starts = lo + interval * np.arange(n, dtype=np.int64)
    gap_start, gap_end, gap_cons = _gaps(starts, interval, cons, flags)
    meter_id = meter.id if meter is not None else "meter"
    events = _events(seg, meter_id, unit, max_rate_per_h)
    return Consumption(
        starts, interval, cons, flags, gap_start, gap_end, gap_cons, unit, events, seg
    )


def _gaps(
    starts: IntArray, interval: int, cons: FloatArray, flags: NDArray[np.int32]
) -> tuple[IntArray, IntArray, FloatArray]:
    """Move the consumption of GAP intervals into one lump per run of them (in place)."""
    in_gap = (flags & k.GAP) != 0
    if not in_gap.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    edges = np.diff(np.concatenate(([0], in_gap.astype(np.int8), [0])))
    first = np.flatnonzero(edges == 1)
    stop = np.flatnonzero(edges == -1)
    lumps = np.add.reduceat(np.where(in_gap, cons, 0.0), first)
    # a NaN (unknown) interval inside a gap makes its lump unknown too
    unknown = np.add.reduceat((in_gap & np.isnan(cons)).astype(np.int64), first) > 0
    lumps[unknown] = np.nan
    cons[in_gap] = np.nan
    return starts[first], starts[stop - 1] + interval, lumps


def _events(
    seg: Segments, meter_id: str, unit: str, max_rate_per_h: float | None
) -> tuple[Event, ...]:
    """Rollover, reset, gap and impossible-rate events from the reading pairs."""

    def q(value: float) -> str:
        return f"{fmt_qty(value)} {unit}".rstrip()

    def event(kind: EventType, t0: int, t1: int, severity: Severity, text: str) -> Event:
        return Event(meter_id, kind, utc(t0), utc(t1), severity, 0.0, unit, explanation=text)

    out: list[Event] = []
    f = seg.flags
    for i in np.flatnonzero(f & (k.ROLLOVER | k.RESET | k.GAP | k.IMPOSSIBLE_RATE)):
        t0, t1 = int(seg.t0_s[i]), int(seg.t1_s[i])
        before, after, delta = float(seg.before[i]), float(seg.level[i]), float(seg.delta[i])
        flag, when = int(f[i]), fmt_utc(t1)
        moved = f"from {q(before)} to {q(after)} at {when}"
        if flag & k.ROLLOVER:
            size = f"{delta + before - after:.10g} {unit}".rstrip()
            text = f"counter of {meter_id} wrapped {moved} (register maximum {size})"
            out.append(event(EventType.ROLLOVER, t1, t1, Severity.INFO, text))
        if flag & k.RESET:
            how = (
                "consumption across the reset is unknown"
                if np.isnan(delta)
                else f"the new reading counts as {q(delta)} used since the reset"
            )
            text = f"counter of {meter_id} dropped {moved}: meter reset or replaced; {how}"
            out.append(event(EventType.COUNTER_RESET, t1, t1, Severity.WARNING, text))
        if flag & k.GAP:
            hours = (t1 - t0) / 3600.0
            used = "an unknown amount" if np.isnan(delta) else q(delta)
            text = (
                f"no readings of {meter_id} from {fmt_utc(t0)} to {when} ({hours:.1f} h); "
                f"{used} used meanwhile, kept as one lump"
            )
            severity = Severity.WARNING if hours >= 6 else Severity.INFO
            out.append(event(EventType.GAP, t0, t1, severity, text))
        if flag & k.IMPOSSIBLE_RATE:
            limit = f" (rated {q(max_rate_per_h)}/h)" if max_rate_per_h else ""
            what = (
                f"the counter jumped to {q(after)}; consumption before {when} unknown"
                if flag & k.UNKNOWN
                else "a reading that would need more than the meter can pass was dropped"
            )
            text = f"{meter_id}: {what}{limit}"
            out.append(event(EventType.IMPOSSIBLE_RATE, t1, t1, Severity.WARNING, text))
    return tuple(out)


def resample_gauge(
    timestamps_s: ArrayLike,
    values: ArrayLike,
    *,
    interval_s: int = DEFAULT_INTERVAL_S,
    start_s: int | None = None,
    end_s: int | None = None,
) -> Gauge:
    """Mean of a gauge's readings per interval (temperature, production rate, line running)."""
    interval = _interval(interval_s)
    ts, vs, _ = order_readings(timestamps_s, values)
    if ts.size == 0 and (start_s is None or end_s is None):
        return Gauge(np.zeros(0, np.int64), interval, np.zeros(0), np.zeros(0, np.int64))
    first = int(ts[0]) if ts.size else int(start_s or 0)
    last = int(ts[-1]) + 1 if ts.size else int(end_s or 0)
    lo, n = _grid(first, last, interval, start_s, end_s)
    mean, count = k._resample_gauge(ts, vs, lo, interval, n)
    return Gauge(lo + interval * np.arange(n, dtype=np.int64), interval, mean, count)
