"""The MQTT contract v1: topics, and what a valid payload is."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from pydantic import ValidationError

from collector import contract as c


def payload(**changes: object) -> dict:
    base = c.reading_payload(
        site="dairy", meter="el_main", resource="electricity", stream="a1b2c3", seq=7,
        ts=1767607200.25, quality=c.Quality.OK, values={"energy_kwh": 1843302.5,
                                                        "power_kw": 61.2},
        latency_ms=3.21234,
    )
    base.update(changes)
    return base


def test_topics():
    assert c.reading_topic("dairy", "el_main") == "recp/v1/dairy/el_main/reading"
    assert c.meta_topic("dairy", "el_main") == "recp/v1/dairy/el_main/meta"
    assert c.ack_topic("dairy", "el_main") == "recp/v1/dairy/el_main/ack"
    assert c.status_topic("dairy") == "recp/v1/dairy/_agent/status"
    assert c.health_topic("dairy") == "recp/v1/dairy/_agent/health"
    assert c.subscription() == "recp/v1/+/+/reading"


def test_rendered_reading_is_compact_json_that_validates():
    raw = c.dumps(payload())
    assert raw == (
        b'{"v":1,"site":"dairy","meter":"el_main","resource":"electricity","stream":"a1b2c3",'
        b'"seq":7,"ts":"2026-01-05T10:00:00.250Z","quality":"ok",'
        b'"values":{"energy_kwh":1843302.5,"power_kw":61.2},"latency_ms":3.212}'
    )
    r = c.Reading.model_validate_json(raw)
    assert r.ts == dt.datetime(2026, 1, 5, 10, 0, 0, 250000, tzinfo=dt.timezone.utc)
    assert r.clock is c.ClockState.SYNCED and r.errors == {}


def test_partial_reading_carries_errors_and_null_values():
    p = payload(quality="partial", values={"energy_kwh": 1.0, "power_kw": None},
                errors={"power_kw": "not a number"})
    r = c.Reading.model_validate_json(c.dumps(p))
    assert r.quality is c.Quality.PARTIAL and r.values["power_kw"] is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ts": "2026-01-05T11:00:00+01:00"}, "UTC"),
        ({"ts": "2026-01-05T11:00:00"}, "UTC"),
        ({"seq": 0}, "greater than or equal to 1"),
        ({"values": {"energy": 1.0}}, "unknown quantity"),
        ({"meter": "El Main"}, "lower-case"),
        ({"meter": "_agent"}, "starting with a letter"),
        ({"v": 2}, "1"),
        ({"quality": "stale"}, "ok"),
    ],
)
def test_invalid_readings_are_refused(change: dict, message: str):
    with pytest.raises(ValidationError, match=message):
        c.Reading.model_validate(payload(**change))


def test_unknown_fields_are_ignored_for_forward_compatibility():
    r = c.Reading.model_validate(payload(firmware="1.2"))
    assert not hasattr(r, "firmware")


def test_nan_never_reaches_the_wire():
    with pytest.raises(ValueError):
        c.dumps(payload(values={"power_kw": float("nan")}))


def test_timestamps_are_utc_milliseconds():
    assert c.format_ts(0) == "1970-01-01T00:00:00.000Z"
    assert c.format_ts(1767607200.1239) == "2026-01-05T10:00:00.123Z"


def test_status_health_meta_and_ack_models():
    c.AgentStatus.model_validate({"v": 1, "site": "s", "state": "offline", "reason": "will"})
    c.Ack.model_validate_json(json.dumps({"v": 1, "stream": "x", "seq": 3}))
    meta = c.MeterMeta.model_validate({
        "v": 1, "site": "s", "meter": "m", "resource": "water", "profile": "p",
        "manufacturer": "E+H", "model": "Promag", "interval_s": 10,
        "points": {"volume_m3": {"unit": "m3", "kind": "counter"}},
        "tags": {"price_per_unit": 3.9, "currency": "EUR"},
    })
    assert meta.points["volume_m3"].kind.value == "counter"
    c.Health.model_validate({
        "v": 1, "site": "s", "ts": "2026-01-05T10:00:00.000Z", "uptime_s": 3.0,
        "clock": "synced", "outbox": {"depth": 0, "cap": 10},
        "devices": {"m": {"state": "up"}},
    })
