"""The virtual plant's clock: steps drivers, meters and injections, and keeps the truth.

The engine always sits at the start of a step whose rates are already known, so values can
be read at any moment inside it (counters grow linearly within a step). Both the CSV writer
and the Modbus servers read the plant through :meth:`Engine.values`.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from ..profiles import Profile
from ..quantities import Kind
from .config import LossType, Plant
from .drivers import DriverModel, Drivers
from .losses import CONSUMPTION_TYPES, Injection, build, iso, truth_event
from .meters import RATE_FACTORS, MeterModel


class Unavailable(Exception):
    """A meter does not answer right now (``code`` None) or answers with an exception."""

    def __init__(self, code: int | None):
        self.code = code
        super().__init__("no response" if code is None else f"exception code {code}")


class Engine:
    """A running virtual plant."""

    def __init__(
        self,
        plant: Plant,
        profiles: dict[str, Profile],
        *,
        losses: bool = True,
        file: str = "<plant>",
        _prepass: bool = False,
    ):
        self.plant = plant
        self.step_s = plant.step_s
        self.start = plant.start.timestamp()
        self.end = plant.end.timestamp() if plant.end else None
        self.meters = {
            m.id: MeterModel(m, profiles[m.id], plant, file) for m in plant.meters
        }
        self._drivers = DriverModel(plant, self.step_s)
        chosen = plant.losses if losses else []
        if _prepass:
            chosen = [x for x in chosen if x.type is not LossType.ROLLOVER]
        self.injections = build(chosen, self.meters, plant.seed, self.step_s)
        self._by_meter: dict[str, list[Injection]] = {m: [] for m in self.meters}
        for inj in self.injections:
            self._by_meter[inj.meter.id].append(inj)
        self._avail_rng = {inj.index: random.Random(f"{plant.seed}/avail/{inj.index}")
                           for inj in self.injections}
        self.observed: list[dict] = []  # rollovers that happened, injected or natural
        if not _prepass and losses:
            self._place_rollovers(profiles, file)
        self.t = self.start
        self.drivers: Drivers = self._begin_step()

    # -- set-up -------------------------------------------------------------------------
    def _place_rollovers(self, profiles: dict[str, Profile], file: str) -> None:
        """Start each rolled-over counter so that its register wraps at the asked time."""
        wanted = [i for i in self.injections if i.type is LossType.ROLLOVER]
        if not wanted:
            return
        pre = Engine(self.plant, profiles, losses=True, file=file, _prepass=True)
        for inj in sorted(wanted, key=lambda i: i.start):
            meter = self.meters[inj.meter.id]
            point = meter.primary
            if point is None or not point.rollover:
                raise ValueError(
                    f"loss {inj.id}: the counter of meter {meter.id} never rolls over "
                    f"(its profile stores it as {point.type if point else 'nothing'}); "
                    "use a profile with an integer counter"
                )
            pre.advance_to(inj.start)
            consumed = pre.meters[meter.id].state.metered_total - meter.state.metered_total
            span = point.rollover / meter.primary_factor  # canonical units per wrap
            initial = (span - consumed) % span
            meter.state.metered_total = initial
            meter.state.wraps[point.name] = 0

    # -- stepping -----------------------------------------------------------------------
    def _begin_step(self) -> Drivers:
        """Compute rates for the step starting at ``self.t``."""
        d = self._drivers.next(self.t)
        self.drivers = d
        for mid, meter in self.meters.items():
            st = meter.state
            normal = meter.normal_rate(d)
            injections = self._by_meter[mid]
            extra = 0.0
            stuck = False
            if injections:
                part = meter.production_part(d)
                for inj in injections:
                    if inj.type in CONSUMPTION_TYPES:
                        x = inj.extra_rate(d, normal, part)
                        inj.excess += x * self.step_s / 3600.0
                        extra += x
                    elif inj.type is LossType.RESET and inj.fired_at is None and inj.start <= d.t:
                        self._reset(meter, inj)
                    elif inj.type is LossType.STUCK and inj.active(d.t):
                        stuck = True
            st.normal_rate = normal
            st.rate = normal + extra
            if stuck:
                if st.frozen is None:
                    st.frozen = meter.values(d, 0.0)
                for inj in injections:
                    if inj.type is LossType.STUCK and inj.active(d.t):
                        inj.unmetered += st.rate * self.step_s / 3600.0
            else:
                st.frozen = None
        return d

    def _reset(self, meter: MeterModel, inj: Injection) -> None:
        st = meter.state
        st.metered_total = inj.cfg.to / meter.primary_factor
        st.reactive_total = 0.0
        st.wraps = {}
        inj.fired_at = self.t

    def _end_step(self) -> None:
        """Integrate the current step and note every counter that wrapped in it."""
        hours = self.step_s / 3600.0
        for meter in self.meters.values():
            st = meter.state
            before = st.metered_total
            meter.advance(hours, metering=st.frozen is None)
            after = st.metered_total
            if after > before:
                self._note_wraps(meter, before, after)

    def _note_wraps(self, meter: MeterModel, before: float, after: float) -> None:
        point, rollover = meter.primary, meter.primary_rollover
        if point is None or not rollover:
            return
        span = rollover / meter.primary_factor
        k0, k1 = math.floor(before / span), math.floor(after / span)
        for k in range(k0 + 1, k1 + 1):
            at = self.t + (k * span - before) / (after - before) * self.step_s
            injected = None
            for inj in self._by_meter[meter.id]:
                if inj.type is LossType.ROLLOVER and inj.fired_at is None:
                    inj.fired_at = at
                    injected = inj.id
                    break
            self.observed.append(
                {
                    "id": injected or f"{meter.id}/rollover/observed-{len(self.observed)}",
                    "meter": meter.id,
                    "resource": meter.resource.value,
                    "type": "rollover",
                    "at": iso(at),
                    "point": point.name,
                    "rollover": rollover,
                    "injected": injected is not None,
                }
            )

    def step(self) -> None:
        """Finish the current step and begin the next."""
        self._end_step()
        self.t += self.step_s
        self._begin_step()

    def advance_to(self, t: float) -> None:
        """Step until ``t`` lies inside the current step."""
        while self.t + self.step_s <= t:
            self.step()

    # -- reading ------------------------------------------------------------------------
    def values(self, meter_id: str, t: float | None = None) -> dict[str, float]:
        """What the meter's registers hold at ``t`` (default: now), in point units."""
        elapsed = 0.0 if t is None else min(max(0.0, t - self.t), self.step_s)
        return self.meters[meter_id].values(self.drivers, elapsed)

    def check_available(self, meter_id: str, t: float | None = None) -> None:
        """Raise :class:`Unavailable` when the meter would not answer a poll at ``t``."""
        t = self.t if t is None else t
        for inj in self._by_meter[meter_id]:
            if (
                inj.type in (LossType.DROPOUT, LossType.EXCEPTION)
                and inj.active(t)
                and self._avail_rng[inj.index].random() < inj.cfg.probability
            ):
                raise Unavailable(None if inj.type is LossType.DROPOUT else inj.cfg.code)

    # -- truth --------------------------------------------------------------------------
    def manifest(self) -> dict:
        """What every meter is, in the terms the detectors need."""
        meters = {}
        for mid, m in self.meters.items():
            cfg = m.cfg
            rate = next((p for p in m.points if p.name in RATE_FACTORS), None)
            meters[mid] = {
                "name": cfg.name or mid,
                "resource": m.resource.value,
                "profile": cfg.profile,
                "model": f"{m.profile.manufacturer} {m.profile.model}",
                "port": cfg.port,
                "unit_id": cfg.unit_id,
                "counter": m.primary.name if m.primary else None,
                "counter_unit": m.primary.unit if m.primary else None,
                "rollover": m.primary.rollover if m.primary else None,
                "rate": rate.name if rate else None,
                "max_rate": m.max_rate * (RATE_FACTORS[rate.name] if rate else 1.0),
                "price_per_unit": cfg.price_per_unit,
                "co2_kg_per_unit": cfg.co2_kg_per_unit,
                "columns": [
                    {"name": p.name, "unit": p.unit, "kind": p.kind.value}
                    for p in m.points
                    if p.kind is not Kind.STATE or p.name == "line_running"
                ],
            }
        return meters

    def truth(self) -> dict:
        """Ground truth so far: every injected event and every rollover that happened."""
        now = self.t
        events = [truth_event(inj, now) for inj in self.injections if inj.start < now]
        injected_ids = {e["id"] for e in events}
        for obs in self.observed:
            if obs["id"] in injected_ids:
                for e in events:
                    if e["id"] == obs["id"]:
                        e.update(point=obs["point"], rollover=obs["rollover"])
            else:
                events.append(obs)
        events.sort(key=lambda e: (e.get("start") or e.get("at") or "", e["id"]))
        return {
            "format": "recp-truth/1",
            "plant": self.plant.name,
            "timezone": self.plant.timezone,
            "seed": self.plant.seed,
            "start": iso(self.start),
            "now": iso(now),
            "complete": self.end is not None and now >= self.end,
            "step_s": self.step_s,
            "meters": self.manifest(),
            "events": events,
        }


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (readers never see half a file)."""
    import json

    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
