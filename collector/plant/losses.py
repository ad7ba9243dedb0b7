"""Injected losses and faults, and the ground truth they leave behind.

Every injection is seeded from the plant seed and its position in the file, and draws its
own random numbers, so turning losses off leaves the rest of the plant identical: the
difference between the two runs is exactly the injected excess.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

from .config import RATE_LOSSES, Loss, LossType
from .drivers import Drivers
from .meters import MeterModel

CONSUMPTION_TYPES = RATE_LOSSES | {LossType.DRIFT, LossType.OVERSPEND, LossType.SPIKES}


def iso(t: float) -> str:
    """Epoch seconds -> ``2026-01-05T06:00:00Z``."""
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Injection:
    """One configured loss at run time, with what it has done so far."""

    index: int
    cfg: Loss
    meter: MeterModel
    start: float  # epoch s (instants: the `at` time)
    end: float | None
    excess: float = 0.0  # canonical units; consumption losses
    unmetered: float = 0.0  # canonical units; stuck meters
    spikes: tuple[float, ...] = ()
    fired_at: float | None = None  # rollover/reset: when it actually happened

    @property
    def type(self) -> LossType:
        return self.cfg.type

    @property
    def id(self) -> str:
        return f"{self.meter.id}/{self.type.value}/{self.index}"

    def active(self, t: float) -> bool:
        return self.start <= t and (self.end is None or t < self.end)

    def extra_rate(self, d: Drivers, normal: float, production_part: float) -> float:
        """Additional rate this loss causes during the step starting at ``d.t``."""
        t, cfg = d.t, self.cfg
        if not self.active(t) or not d.matches(cfg.when):
            return 0.0
        kind = cfg.type
        if kind in RATE_LOSSES:
            return cfg.rate or 0.0
        if kind is LossType.DRIFT:
            assert self.end is not None and cfg.fraction is not None
            return cfg.fraction * (t - self.start) / (self.end - self.start) * normal
        if kind is LossType.OVERSPEND:
            return ((cfg.factor or 1.0) - 1.0) * production_part
        if kind is LossType.SPIKES:
            span = cfg.duration_min * 60.0
            if any(s <= t < s + span for s in self.spikes):
                return ((cfg.magnitude or 1.0) - 1.0) * normal
        return 0.0


def build(
    losses: list[Loss], meters: dict[str, MeterModel], seed: int, step_s: float
) -> list[Injection]:
    """Turn configured losses into run-time injections (spike times drawn here)."""
    out: list[Injection] = []
    for i, cfg in enumerate(losses):
        meter = meters[cfg.meter]
        if cfg.at is not None:
            start, end = cfg.at.timestamp(), None
        else:
            assert cfg.start is not None
            start = cfg.start.timestamp()
            end = cfg.end.timestamp() if cfg.end else None
        inj = Injection(i, cfg, meter, start, end)
        if cfg.type is LossType.SPIKES:
            assert end is not None and cfg.count is not None
            rng = random.Random(f"{seed}/loss/{i}")
            steps = max(1, int((end - start) // step_s))
            picks = sorted(rng.sample(range(steps), min(cfg.count, steps)))
            inj.spikes = tuple(start + k * step_s for k in picks)
        out.append(inj)
    return out


def truth_event(inj: Injection, now: float) -> dict:
    """The ground-truth record of one injection, as far as the simulation has run."""
    m = inj.meter
    unit_point = m.primary
    factor = m.primary_factor
    cfg = inj.cfg
    event: dict = {
        "id": inj.id,
        "meter": m.id,
        "resource": m.resource.value,
        "type": cfg.type.value,
        "injected": True,
    }
    if cfg.type in (LossType.ROLLOVER, LossType.RESET):
        event["at"] = iso(inj.fired_at if inj.fired_at is not None else inj.start)
        event["happened"] = inj.fired_at is not None
    else:
        event["start"] = iso(inj.start)
        end = inj.end
        event["end"] = iso(end) if end is not None and end <= now else None
        if end is not None and end > now:
            event["planned_end"] = iso(end)
    if cfg.type in CONSUMPTION_TYPES and unit_point is not None:
        excess = inj.excess * factor
        event["excess"] = excess
        event["unit"] = unit_point.unit
        event["quantity"] = unit_point.name
        if m.cfg.price_per_unit is not None:
            event["cost"] = excess * m.cfg.price_per_unit
        if m.cfg.co2_kg_per_unit is not None:
            event["co2_kg"] = excess * m.cfg.co2_kg_per_unit
        event["when"] = cfg.when.value
    if cfg.type is LossType.STUCK and unit_point is not None:
        event["unmetered"] = inj.unmetered * factor
        event["unit"] = unit_point.unit
        event["quantity"] = unit_point.name
    if cfg.type is LossType.SPIKES:
        event["spikes"] = [iso(s) for s in inj.spikes if s < now]
        event["spike_minutes"] = cfg.duration_min
    params = cfg.model_dump(
        mode="json",
        exclude_defaults=True,
        exclude={"meter", "type", "start", "end", "at", "note"},
    )
    if params:
        event["params"] = params
    if cfg.note:
        event["note"] = cfg.note
    return event
