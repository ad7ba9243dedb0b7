"""Baselines with production and temperature in the live service (detectors.service.inputs).

A meter whose baseline has a production term gets the units produced in each interval from
the production counter named in the analytics file: more consumption that more production
explains is no overspend; the same rise without the production is one.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import numpy as np
import pytest

from collector import contract
from collector.configfile import ConfigError
from detectors.baseline import BaselineConfig, fit_baseline
from detectors.service.config import load_analytics
from detectors.service.inputs import Inputs, InputSeries, Links, Source
from detectors.service.service import DetectService

T0 = 1767225600  # 2026-01-01T00:00Z
STEP = 300
Q = 900


def per_interval_production(t: int, day_factor: float) -> float:
    """Units produced in the 15 minutes from ``t``: 06:00-18:00, scaled per day."""
    h = (t % 86400) / 3600
    return 250.0 * day_factor if 6 <= h < 18 else 0.0


def per_interval_kwh(t: int, produced: float) -> float:
    """5 kWh base plus 0.05 kWh per unit, with a little noise."""
    return (5.0 + 0.05 * produced) * (1.0 + 0.02 * math.sin(t / Q * 1.7))


def day_factor(day: int) -> float:
    return 0.6 + 0.8 * ((day * 7919) % 11) / 10  # 0.6 .. 1.4, differs day to day


def baseline(tmp: Path) -> None:
    starts = np.arange(T0 - 28 * 86400, T0, Q, dtype=np.int64)
    prod = np.array([per_interval_production(int(t), day_factor(int(t) // 86400))
                     for t in starts])
    cons = np.array([per_interval_kwh(int(t), p) for t, p in zip(starts, prod, strict=True)])
    model = fit_baseline(starts, cons, production=prod, meter="m1", unit="kWh",
                         config=BaselineConfig(interval_s=Q))
    assert model.production_coef == pytest.approx(0.05, rel=0.05)
    (tmp / "bl" / "dairy").mkdir(parents=True)
    (tmp / "bl" / "dairy" / "m1.json").write_text(model.to_json())


def live(days: int, *, more_production: bool, more_consumption: bool
         ) -> list[tuple[str, bytes]]:
    """m1 and the line counter every 5 minutes; day 2, 08:00-16:00: a rise."""
    out: list[tuple[str, bytes]] = []
    e, u = 1000.0, 50_000.0
    for i, t in enumerate(range(T0, T0 + days * 86400, STEP)):
        for meter, resource, values in (
            ("m1", "electricity", {"energy_kwh": round(e, 4)}),
            ("line", "production", {"produced_units": round(u, 2)}),
        ):
            out.append((contract.reading_topic("dairy", meter), contract.dumps(
                contract.reading_payload(site="dairy", meter=meter, resource=resource,
                                         stream="s", seq=i + 1, ts=t,
                                         quality=contract.Quality.OK, values=values))))
        start = t // Q * Q
        p = per_interval_production(start, day_factor(start // 86400))
        rise = 86400 + 8 * 3600 <= start - T0 < 86400 + 16 * 3600
        p_made = 2 * p if rise and more_production else p
        p_used = 2 * p if rise and more_consumption else p
        e += per_interval_kwh(start, p_used) / (Q // STEP)
        u += p_made / (Q // STEP)
    return out


class Discard:
    def write(self, lines: list[str]) -> None:
        pass

    def close(self) -> None:
        pass


def run(tmp: Path, msgs: list[tuple[str, bytes]], sites: str) -> DetectService:
    cfg = tmp / "analytics.yaml"
    cfg.write_text("kind: analytics\nspool: {path: spool.sqlite}\ncheckpoint: {path: s.json}\n"
                   f"baselines: {{dir: bl}}\nsites: {sites}\n")
    svc = DetectService(load_analytics(cfg), writer=Discard())

    async def go() -> None:
        for k in range(0, len(msgs), 500):
            await svc.handle(msgs[k:k + 500])

    asyncio.run(go())
    return svc


def overspend_alerts(svc: DetectService) -> list[tuple[str, str]]:
    out = []
    for o in svc.outgoing:
        if o.topic.startswith("recp/v1/_alerts/"):
            body = json.loads(o.payload)
            if body["type"] == "overspend":
                out.append((body["meter"], body["event"]))
    return out


def consumption(svc: DetectService, at: int) -> tuple[float, float]:
    for _, text in svc.spool.peek(1_000_000):
        if text.startswith("consumption,") and "meter=m1" in text and \
                text.endswith(f" {at * 1000}"):
            fields = dict(kv.split("=") for kv in text.split(" ")[1].split(","))
            return float(fields["actual"]), float(fields.get("expected", "nan"))
    raise AssertionError(f"no consumption point of m1 at {at}")


def test_more_production_explains_more_consumption_no_overspend(tmp_path: Path) -> None:
    baseline(tmp_path)
    msgs = live(3, more_production=True, more_consumption=True)
    svc = run(tmp_path, msgs, "{dairy: {production_meter: line}}")
    assert svc.meters[("dairy", "m1")].overspend is not None
    assert overspend_alerts(svc) == []
    actual, expected = consumption(svc, T0 + 86400 + 10 * 3600)  # in the doubled hours
    assert actual == pytest.approx(30.0, rel=0.05)
    assert expected == pytest.approx(actual, rel=0.05)


def test_the_same_rise_without_the_production_is_overspend(tmp_path: Path) -> None:
    baseline(tmp_path)
    msgs = live(3, more_production=False, more_consumption=True)
    svc = run(tmp_path, msgs, "{dairy: {production_meter: line}}")
    assert overspend_alerts(svc) == [("m1", "open"), ("m1", "close")]
    actual, expected = consumption(svc, T0 + 86400 + 10 * 3600)
    assert expected == pytest.approx(actual / 30.0 * 17.5, rel=0.1)


def test_without_the_production_meter_named_there_is_no_expectation(tmp_path: Path) -> None:
    baseline(tmp_path)
    msgs = live(1, more_production=False, more_consumption=False)
    svc = run(tmp_path, msgs, "{dairy: {currency: EUR}}")
    _, expected = consumption(svc, T0 + 10 * 3600)
    assert math.isnan(expected)


def test_input_series_mean_rise_and_age() -> None:
    s = InputSeries()
    for t, v in [(0, 10.0), (300, 12.0), (600, 14.0), (300, 99.0)]:  # a repeat is ignored
        s.add(t, v)
    assert s.mean(0, 900, 1800) == pytest.approx(12.0)
    assert s.mean(900, 1800, 1800) == 14.0  # nothing inside yet: the latest, recent enough
    assert math.isnan(s.mean(3000, 3900, 1800))  # too old to carry forward
    c = InputSeries()
    for t, v in [(0, 100.0), (300, 130.0), (600, 160.0)]:
        c.add(t, v)
    assert c.rise(150, 450, 1800) == pytest.approx(30.0)  # interpolated at both ends
    assert c.rise(600, 900, 1800) == pytest.approx(30.0)  # the latest rate carried forward
    assert math.isnan(c.rise(600, 3000, 1800))
    assert math.isnan(c.rise(-300, 0, 1800))  # before the first reading
    c.add(900, 5.0)  # a reset
    assert math.isnan(c.rise(600, 900, 1800))
    again = InputSeries()
    again.restore(json.loads(json.dumps(c.snapshot())))
    assert again.ts == c.ts and again.vs == c.vs


def test_links_site_default_meter_override_never_itself() -> None:
    inputs = Inputs({"dairy": Links(Source("outdoor", "outdoor_temperature_c"),
                                    Source("line", "produced_units"))},
                    {("dairy", "boiler"): Links(production=Source("line2", "produced_units"))})
    assert inputs.of("dairy", "m1") == Links(Source("outdoor", "outdoor_temperature_c"),
                                             Source("line", "produced_units"))
    assert inputs.of("dairy", "boiler").production == Source("line2", "produced_units")
    assert inputs.of("dairy", "line") == Links(Source("outdoor", "outdoor_temperature_c"))
    assert inputs.of("textile", "m1") is None
    assert inputs.is_input("dairy", "line2") and not inputs.is_input("dairy", "m1")


def test_config_checks_input_value_names(tmp_path: Path) -> None:
    cfg = tmp_path / "a.yaml"
    cfg.write_text("kind: analytics\nsites: {dairy: {temperature_meter: outdoor, "
                   "temperature_value: energy_kwh}}\n")
    with pytest.raises(ConfigError, match="not a gauge quantity"):
        load_analytics(cfg)
