"""Overspend: consumption above its baseline, accumulated by a CUSUM with hysteresis.

Residuals (actual - baseline expected, counter units per interval) feed a tabular CUSUM
whose allowance ``k`` and threshold ``h`` are multiples of the baseline's prediction std
for each interval (its residual spread, larger at high load for most meters, widened for
autocorrelation), so a noisy meter or a noisy hour needs more evidence than a steady one.
Each alert becomes an :class:`~detectors.events.Event` of type OVERSPEND carrying the excess
(net residual sum from the alert's start to where it stopped growing), its cost and CO2, and
a one-line explanation. The batch function :func:`detect_overspend` and the streaming
:class:`OverspendDetector` share the compiled step, so they give the same events on the
same data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike

from .arrays import FloatArray, IntArray, as_timestamps, as_values, fmt_qty, fmt_utc, utc
from .baseline import BaselineModel
from .events import Event, EventType, Severity
from .kernels import overspend as kern
from .meter import MeterInfo
from .streaming import Point, StreamingDetector


@dataclass(frozen=True)
class OverspendConfig:
    """CUSUM tuning, in multiples of the baseline's long-run prediction std (sigma).

    ``k_sigma``: allowance per interval (half the smallest shift worth finding), at least
    ``k_rel`` of the expected consumption (a shift below twice that share of the load is
    more likely a model bias, such as weather beyond the baseline period's, than a loss);
    ``h_sigma``: alert threshold; ``release``: an alert closes once the CUSUM has stayed
    below ``release * h`` for ``min_close_intervals`` intervals in a row; ``cap``: the CUSUM
    never exceeds ``cap * h`` (bounds how long a finished overspend keeps an alert open);
    ``clip_sigma``: one interval adds at most this much, so a lone spike or glitch cannot
    open an alert (spikes have their own detector) while a sustained excess still does.
    An alert whose excess is at least ``alarm_pct`` of the expected consumption is an ALARM,
    otherwise a WARNING.
    """

    k_sigma: float = 0.5
    k_rel: float = 0.025
    h_sigma: float = 8.0
    release: float = 0.5
    cap: float = 2.0
    min_close_intervals: int = 3
    clip_sigma: float = 4.0
    alarm_pct: float = 10.0
    currency: str = "EUR"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.k_sigma) and self.k_sigma >= 0):
            raise ValueError(f"k_sigma must be a finite number >= 0, got {self.k_sigma!r}")
        if not (math.isfinite(self.k_rel) and 0 <= self.k_rel < 1):
            raise ValueError(f"k_rel must be in [0, 1), got {self.k_rel!r}")
        if not (math.isfinite(self.h_sigma) and self.h_sigma > 0):
            raise ValueError(f"h_sigma must be a finite number > 0, got {self.h_sigma!r}")
        if not 0.0 <= self.release < 1.0:
            raise ValueError(f"release must be in [0, 1), got {self.release!r}")
        if not self.clip_sigma > self.k_sigma:
            raise ValueError(
                f"clip_sigma must exceed k_sigma ({self.k_sigma}), got {self.clip_sigma!r}"
            )
        if not self.cap >= 1.0:
            raise ValueError(f"cap must be >= 1 (a multiple of h), got {self.cap!r}")
        if int(self.min_close_intervals) != self.min_close_intervals or (
            self.min_close_intervals < 1
        ):
            raise ValueError(
                f"min_close_intervals must be a whole number >= 1, got {self.min_close_intervals!r}"
            )

    def vector(self) -> FloatArray:
        """The kernel's parameter vector (thresholds in units of sigma)."""
        out = np.zeros(kern.NPARAM)
        out[kern.K] = self.k_sigma
        out[kern.H] = self.h_sigma
        out[kern.H_LOW] = self.release * self.h_sigma
        out[kern.CAP] = self.cap * self.h_sigma
        out[kern.MIN_CLOSE] = self.min_close_intervals
        out[kern.CLIP] = self.clip_sigma
        out[kern.K_REL] = self.k_rel
        return out


@dataclass(frozen=True)
class OverspendResult:
    """Batch output: the events and, per interval, expected, residual, scale and CUSUM.

    ``scale`` is the prediction std the residual was divided by; ``cusum`` is the CUSUM
    each interval's step computed, in units of it (an alert opens above ``h_sigma``).
    """

    events: list[Event]
    t_s: IntArray = field(repr=False)
    expected: FloatArray = field(repr=False)
    residual: FloatArray = field(repr=False)
    scale: FloatArray = field(repr=False)
    cusum: FloatArray = field(repr=False)


class OverspendDetector(StreamingDetector):
    """Streaming overspend detector of one meter against its fitted baseline.

    ``score_one`` is the CUSUM after the interval over the threshold (>= 1: an alert is or
    would be open); ``learn_one`` advances the state and queues the events it opens
    (end None) and closes, which :meth:`drain_events` hands out. ``snapshot`` returns a
    JSON-able dict holding the baseline, the meter, the config and the CUSUM state.
    """

    name: ClassVar[str] = "overspend"
    version: ClassVar[int] = 1

    def __init__(
        self,
        model: BaselineModel,
        meter: MeterInfo,
        config: OverspendConfig | None = None,
    ) -> None:
        if meter.unit and model.unit and meter.unit != model.unit:
            raise ValueError(
                f"the baseline of {model.meter} is in {model.unit} but the meter counts "
                f"{meter.unit}; fit the baseline on the meter's counter unit"
            )
        self.model = model
        self.meter = meter
        self.config = config or OverspendConfig()
        self._params = self.config.vector()
        self._state = kern._new_state()
        self._io = np.zeros(5)  # one streaming step's interval (kern._step)
        self._events: list[Event] = []

    @property
    def warmup(self) -> int:
        return 0  # the baseline was learned beforehand

    # -- streaming ---------------------------------------------------------------------
    def _inputs(self, x: Point) -> tuple[float, float]:
        """Baseline expectation and CUSUM scale of one interval (NaN: cannot tell)."""
        t = np.array([x.t_s], dtype=np.int64)
        temp = np.array([x.temperature]) if self.model.uses_temperature else None
        prod = np.array([x.production]) if self.model.uses_production else None
        e = self.model.predict(t, temp, prod)
        return float(e[0]), float(self.model.prediction_std(e, long_run=True)[0])

    def score_one(self, x: Point) -> float:
        e, scale = self._inputs(x)
        return kern._peek(self._state, float(x.value), e, scale, self._params) / self.config.h_sigma

    def learn_one(self, x: Point) -> None:
        self.update_one(x)

    def update_one(self, x: Point) -> float:
        """learn_one, returning the score score_one would have given."""
        e, scale = self._inputs(x)
        code = kern._step(
            self._state, float(x.t_s), float(x.value), e, scale, self._params, self._io
        )
        st = self._state
        if code == kern.CLOSED:
            self._events.append(
                self._event(
                    st[kern.DONE_START], st[kern.DONE_END], st[kern.DONE_R], st[kern.DONE_E],
                    st[kern.DONE_PEAK],
                )
            )  # fmt: skip
        elif code == kern.OPENED:
            ev = self.open_event()
            if ev is not None:
                self._events.append(ev)
        return float(st[kern.SCORE]) / self.config.h_sigma

    def drain_events(self) -> list[Event]:
        """Events opened or closed since the last call (an opened alert has end None)."""
        out, self._events = self._events, []
        return out

    def open_event(self) -> Event | None:
        """The alert open right now (end None, excess so far), if any."""
        st = self._state
        if st[kern.OPEN] == 0.0:
            return None
        return self._event(st[kern.RUN_T], None, st[kern.RUN_R], st[kern.RUN_E], st[kern.PEAK_S])

    @property
    def cusum(self) -> float:
        """Current CUSUM value, in units of the prediction std."""
        return float(self._state[kern.S])

    def snapshot(self) -> dict[str, Any]:
        return {
            "detector": self.name,
            "version": self.version,
            "config": {
                "model": self.model.to_dict(),
                "meter": asdict(self.meter),
                "config": asdict(self.config),
            },
            "state": [None if math.isnan(v) else float(v) for v in self._state],
        }

    @classmethod
    def restore(cls, state: Mapping[str, Any]) -> OverspendDetector:
        if state.get("detector") != cls.name or state.get("version") != cls.version:
            raise ValueError(
                f"not a {cls.name} detector snapshot of version {cls.version} (got "
                f"{state.get('detector')!r} version {state.get('version')!r}); "
                "start a fresh detector"
            )
        cfg = state["config"]
        obj = cls(
            BaselineModel.from_dict(cfg["model"]),
            MeterInfo(**cfg["meter"]),
            OverspendConfig(**cfg["config"]),
        )
        values = state["state"]
        if len(values) != kern.NSTATE:
            raise ValueError(
                f"{cls.name} snapshot: state has {len(values)} values, expected {kern.NSTATE}"
            )
        obj._state[:] = [math.nan if v is None else float(v) for v in values]
        return obj

    # -- batch -------------------------------------------------------------------------
    def process(
        self,
        timestamps: ArrayLike,
        consumption: ArrayLike,
        temperature: ArrayLike | None = None,
        production: ArrayLike | None = None,
    ) -> OverspendResult:
        """Learn a batch of consecutive intervals; returns the alerts closed in it (and
        leaves an alert still open in :meth:`open_event`)."""
        ts = as_timestamps("timestamps", timestamps)
        actual = as_values("consumption", consumption, ts.size)
        expected = self.model.predict(
            ts,
            temperature if self.model.uses_temperature else None,
            production if self.model.uses_production else None,
        )
        scale = self.model.prediction_std(expected, long_run=True)
        cusum, done = kern._run(
            self._state, ts.astype(np.float64), actual, expected, scale, self._params
        )
        events = [self._event(r[0], r[2], r[3], r[4], r[5]) for r in done]
        return OverspendResult(events, ts, expected, actual - expected, scale, cusum)

    # -- events ------------------------------------------------------------------------
    def _event(
        self, start_s: float, end_s: float | None, excess: float, expected: float, peak: float
    ) -> Event:
        """An OVERSPEND event; ``end_s`` is the start of the last interval (None: open)."""
        interval = self.model.interval_s
        m = self.meter
        pct = 100.0 * excess / expected if expected > 0 else math.inf
        cost = m.cost(excess)
        money = f", about {fmt_qty(cost)} {self.config.currency}" if cost is not None else ""
        share = f" (+{pct:.0f} %)" if math.isfinite(pct) else ""
        if end_s is None:
            when = f"since {fmt_utc(start_s)}"
        else:
            when = f"from {fmt_utc(start_s)} to {fmt_utc(end_s + interval)}"
        text = (
            f"{m.id} used {fmt_qty(excess)} {m.unit}{share} more than its baseline predicts "
            f"{when}{money}"
        )
        return Event(
            meter=m.id,
            type=EventType.OVERSPEND,
            start=utc(start_s),
            end=None if end_s is None else utc(end_s + interval),
            severity=Severity.ALARM if pct >= self.config.alarm_pct else Severity.WARNING,
            excess=float(excess),
            unit=m.unit,
            cost=cost,
            co2_kg=m.co2_kg(excess),
            explanation=text,
            score=float(peak / self.config.h_sigma),
        )


def detect_overspend(
    model: BaselineModel,
    meter: MeterInfo,
    timestamps: ArrayLike,
    consumption: ArrayLike,
    *,
    temperature: ArrayLike | None = None,
    production: ArrayLike | None = None,
    config: OverspendConfig | None = None,
) -> OverspendResult:
    """Overspend over intervals after the baseline period, in one batch.

    ``timestamps``: int64 UTC epoch seconds of interval starts, in order (the baseline's
    interval); ``consumption``: counter units per interval, NaN where unknown;
    ``temperature``/``production`` as for :meth:`BaselineModel.predict`. Returns the alerts
    in time order; one still open at the end comes last with end None.
    """
    det = OverspendDetector(model, meter, config)
    result = det.process(timestamps, consumption, temperature, production)
    still_open = det.open_event()
    events = result.events + ([still_open] if still_open is not None else [])
    return OverspendResult(
        events, result.t_s, result.expected, result.residual, result.scale, result.cusum
    )
