"""The MQTT contract v1: topics, and what a valid payload is."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
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


# -- the batch message (recp/v1/{site}/{meter}/readings) -------------------------------------
def rendered(seq: int, **changes: object) -> bytes:
    return c.dumps(payload(seq=seq, ts=c.format_ts(1767607200.25 + seq), **changes))


def test_readings_topic_and_subscription():
    assert c.readings_topic("dairy", "el_main") == "recp/v1/dairy/el_main/readings"
    assert c.subscription("dairy", "readings") == "recp/v1/dairy/+/readings"


def test_packed_readings_expand_to_the_readings_sent_one_by_one():
    singles = [rendered(s) for s in (3, 4, 9)]
    singles[1] = c.dumps(payload(seq=4, quality="partial", values={"power_kw": None},
                                 errors={"power_kw": "not a number"}, clock="corrected"))
    packed = c.pack_readings(singles)
    batch = c.Readings.model_validate_json(packed)
    assert [r.seq for r in batch.readings] == [3, 4, 9]
    expected = [c.Reading.model_validate_json(p) for p in singles]
    assert batch.expand() == expected
    assert [r.model_dump() for r in batch.expand()] == [r.model_dump() for r in expected]
    good, bad = c.split_readings(packed)
    assert good == expected and bad == []
    # the shared fields once, every item exactly a Reading's per-reading fields
    data = json.loads(packed)
    assert set(data) == {"v", "site", "meter", "resource", "stream", "readings"}
    assert data["readings"][1] == {
        "seq": 4, "ts": "2026-01-05T10:00:00.250Z", "quality": "partial",
        "values": {"power_kw": None}, "errors": {"power_kw": "not a number"},
        "clock": "corrected", "latency_ms": 3.212}


def test_pack_readings_falls_back_to_parsing_for_other_key_orders():
    a = json.dumps({"seq": 1, **{k: v for k, v in payload().items() if k != "seq"}}).encode()
    b = rendered(2)
    packed = c.pack_readings([a, b])
    assert [r.seq for r in c.Readings.model_validate_json(packed).expand()] == [1, 2]
    with pytest.raises(ValueError, match="1 to 500"):
        c.pack_readings([])
    with pytest.raises(ValueError, match="1 to 500"):
        c.pack_readings([rendered(s) for s in range(1, 502)])


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([], "at least 1"),
        ([{"seq": 2}, {"seq": 2}], "strictly increasing"),
        ([{"seq": 3}, {"seq": 2}], "item 1: seq 2 after 3"),
        ([{"seq": s} for s in range(1, 502)], "at most 500"),
    ],
)
def test_readings_batch_refused(items: list[dict], message: str):
    base = {k: v for k, v in payload().items() if k in ("v", *c.SHARED_FIELDS)}
    item = {k: v for k, v in payload().items() if k in c.ITEM_FIELDS}
    with pytest.raises(ValidationError, match=message):
        c.Readings.model_validate({**base, "readings": [{**item, **i} for i in items]})


def test_split_readings_keeps_the_neighbours_of_a_bad_item():
    data = json.loads(c.pack_readings([rendered(s) for s in (1, 2, 3, 4, 5)]))
    data["readings"][1]["ts"] = "2026-01-05T11:00:00+01:00"   # not UTC
    data["readings"][3]["seq"] = 2                              # goes back
    data["readings"].append("junk")
    good, bad = c.split_readings(json.dumps(data))
    assert [r.seq for r in good] == [1, 3, 5]
    assert all(isinstance(r, c.Reading) and r.meter == "el_main" for r in good)
    assert [(b.index, b.seq) for b in bad] == [(1, 2), (3, 2), (5, None)]
    assert "UTC" in bad[0].reason and "not above 3" in bad[1].reason
    assert str(bad[0]).startswith("readings[1] (seq 2): ts:")


@pytest.mark.parametrize(
    ("change", "message"),
    [({"meter": "El Main"}, "lower-case"), ({"readings": []}, "1 to 500"),
     ({"readings": {"seq": 1}}, "1 to 500"), ({"v": 2}, "1"), ({"stream": ""}, "at least 1")],
)
def test_split_readings_refuses_a_bad_shared_part_whole(change: dict, message: str):
    data = {**json.loads(c.pack_readings([rendered(1)])), **change}
    with pytest.raises(ValueError, match=message):
        c.split_readings(json.dumps(data))
    with pytest.raises(ValueError, match="JSON object"):
        c.split_readings(b"[1]")


@settings(max_examples=60, deadline=None)
@given(
    seqs=st.lists(st.integers(1, 10**6), min_size=1, max_size=20, unique=True),
    power=st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
    late=st.booleans(),
)
def test_pack_then_expand_is_the_identity_on_readings(seqs: list[int], power: float | None,
                                                      late: bool):
    singles = [c.dumps(payload(seq=s, values={"power_kw": power},
                               **({"clock": "corrected"} if late and s % 2 else {})))
               for s in sorted(seqs)]
    expected = [c.Reading.model_validate_json(p) for p in singles]
    assert c.Readings.model_validate_json(c.pack_readings(singles)).expand() == expected


def _iso_reference(epoch_s: float) -> str:
    t = dt.datetime.fromtimestamp(epoch_s, dt.timezone.utc)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@given(st.lists(st.one_of(
    st.floats(0, 4e9), st.integers(0, 4_000_000_000).map(float),
    # just below a whole second: fromtimestamp rounds .9999995 up into the next one
    st.integers(0, 4_000_000_000).map(lambda s: s + 0.9999995),
    st.integers(0, 4_000_000_000).map(lambda s: s + 0.9999994),
    st.integers(0, 4_000_000_000).map(lambda s: s + 0.0005),
), min_size=1, max_size=20))
def test_format_ts_equals_isoformat_across_its_second_cache(stamps: list[float]):
    """The cached text of the last second never leaks into another second."""
    for s in stamps + stamps[::-1]:
        assert c.format_ts(s) == _iso_reference(s), s


_VALUES = st.dictionaries(
    st.sampled_from(["energy_kwh", "power_kw", "voltage_l1_v", "flow_m3h", "ünit", "p%s"]),
    st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False),
              st.integers(-(2**63), 2**64).map(float), st.integers(-5, 5)),
    max_size=5)


@given(seq=st.integers(1, c.MAX_SEQ), ts=st.floats(0, 4e9),
       values=st.lists(_VALUES, min_size=1, max_size=4),
       quality=st.sampled_from(list(c.Quality)), clock=st.sampled_from(list(c.ClockState)),
       errors=st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.text(max_size=8),
                                                   max_size=2)),
       latency_ms=st.one_of(st.none(), st.floats(0, 1e7)),
       meter=st.sampled_from(["el_main", "el%d_{x}", "m\"1"]))
def test_renderer_is_byte_identical_to_dumps_of_reading_payload(
        seq, ts, values, quality, clock, errors, latency_ms, meter):
    """Several readings through one renderer (its templates and key cache are per set of
    value names, filled on first use), meter ids with % and braces in them."""
    fixed = dict(site="dairy", meter=meter, resource="electricity", stream="a1b2c3")
    for fast in _FAST:  # float digits from orjson, and from float.__repr__ without it
        with _fast_dumps(fast):
            r = c.ReadingRenderer(**fixed)
            for one in values + values:  # each twice: a fresh template, then the cache
                args = dict(seq=seq, ts=ts, quality=quality, values=one, errors=errors,
                            clock=clock, latency_ms=latency_ms)
                assert r.render(**args) == c.dumps(c.reading_payload(**fixed, **args))


_FAST = [c._fast_dumps, None] if c._fast_dumps is not None else [None]


@contextlib.contextmanager
def _fast_dumps(fast: Any) -> Iterator[None]:
    saved = c._fast_dumps
    c._fast_dumps = fast
    try:
        yield
    finally:
        c._fast_dumps = saved


def test_renderer_takes_orjson_digits_only_where_they_equal_repr():
    """Where Python's repr writes an exponent (below 1e-4, from 1e16 up) orjson writes it
    otherwise; those readings take float.__repr__. Float32 values widened to double (what
    meters send) and the boundaries, against dumps; orjson is part of the edge extra."""
    import struct

    assert c._fast_dumps is not None, "orjson is in the edge extra"
    r = c.ReadingRenderer(site="s", meter="m", resource="water", stream="x")
    edges = [1e-5, 1.5e-5, 9.99e-5, 1e-4, 0.00012, 10.00001, 1e15, 9999999999999998.0,
             1e16, 1.5e16, 1e22, 5e-324, 1.7976931348623157e308, -0.0, 0.0, 230.5, -7.25]
    f32 = [struct.unpack(">f", struct.pack(">f", v))[0] for v in
           (230.7, 0.1, 1e-6, 3.4e38, 49.99, 123456.789, -1e-3)]
    for v in edges + f32:
        for values in ({"power_kw": v}, {"power_kw": 230.5, "energy_kwh": v}):
            args = dict(seq=1, ts=0.0, quality=c.Quality.OK, values=values)
            want = c.dumps(c.reading_payload(site="s", meter="m", resource="water",
                                             stream="x", **args))
            assert r.render(**args) == want, v
    assert c.ReadingRenderer._fast_reprs({"a": 230.5, "b": 1e-5}) is None
    assert c.ReadingRenderer._fast_reprs({"a": 230.5, "b": 2.0}) == ["230.5", "2.0"]


def test_renderer_refuses_nan_like_dumps():
    r = c.ReadingRenderer(site="s", meter="m", resource="water", stream="x")
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError):
            r.render(seq=1, ts=0.0, quality=c.Quality.OK, values={"power_kw": bad})
    with pytest.raises(ValueError):
        r.render(seq=1, ts=0.0, quality=c.Quality.OK, values={}, latency_ms=float("nan"))
