"""Fuzz targets: every parser that takes outside input, with what counts as a clean refusal.

A target is a hypothesis strategy of inputs and a ``run`` that feeds one input to the parser
and checks the answer. ``run`` may raise one of ``refusals`` (the parser's own, located error:
``ConfigError``, ``CsvInputError``, ...); anything else is an *unhandled exception*, i.e. a
traceback a user would see or a service that would stop. ``run`` also asserts what the
parser promises when it accepts (finite values, located problems), and an AssertionError is
unhandled too.

Used by ``tests/unit/test_fuzz.py`` (a few hundred cases per target in the default test
run) and ``python -m benchmarks.fuzz`` (at least 10,000 per target, printing a table).
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import logging
import math
import random
import struct
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from collector.contract import ITEM_FIELDS

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "edge_config"


# --------------------------------------------------------------------------- harness


@dataclass
class Target:
    name: str
    strategy: st.SearchStrategy[Any]
    run: Callable[[Any], None]
    refusals: tuple[type[BaseException], ...] = ()


@dataclass
class Crash:
    error: str  # "TypeError: ..." with the innermost frame
    example: str  # repr of the input, cut
    trace: str


@dataclass
class Outcome:
    target: str
    cases: int = 0
    accepted: int = 0
    refused: int = 0
    crashes: list[Crash] = field(default_factory=list)  # distinct by error kind and place
    unhandled: int = 0
    seconds: float = 0.0


def _where(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    last = tb[-1] if tb else None
    place = f" at {Path(last.filename).name}:{last.lineno}" if last else ""
    return f"{type(exc).__name__}{place}"


def fuzz(target: Target, cases: int, seed_value: int | None = None) -> Outcome:
    """Run ``cases`` generated inputs through ``target``; count, never stop on a crash."""
    out = Outcome(target.name)
    seen: set[str] = set()
    logging.disable(logging.CRITICAL)  # the poller logs every link it loses

    @settings(max_examples=cases, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(target.strategy)
    def body(x: Any) -> None:
        out.cases += 1
        try:
            target.run(x)
        except target.refusals:
            out.refused += 1
        except Exception as exc:
            out.unhandled += 1
            key = _where(exc)
            if key not in seen and len(out.crashes) < 20:
                seen.add(key)
                out.crashes.append(Crash(f"{key}: {str(exc)[:200]}", repr(x)[:600],
                                         traceback.format_exc()))
        else:
            out.accepted += 1

    if seed_value is not None:
        body = seed(seed_value)(body)
    began = time.perf_counter()
    try:
        body()
    finally:
        logging.disable(logging.NOTSET)
    out.seconds = time.perf_counter() - began
    return out


# --------------------------------------------------------------------------- shared pieces

_workdir: Path | None = None


def workdir() -> Path:
    """One scratch folder per process for the files the file parsers read."""
    global _workdir
    if _workdir is None:
        _workdir = Path(tempfile.mkdtemp(prefix="recp-fuzz-"))
    return _workdir


weird_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "nan", "NaN", "inf", "-inf", "1e400", "-1e400", "1e308",
                     "0x10", "1_000", "١٢", "\x00", "\r", "\t", "\ufeff", "null", "~", "yes",
                     "2026-01-05T00:00:00Z", "2026-13-45T99:99:99Z", "9999-12-31T23:59:59Z",
                     "0001-01-01T00:00:00Z", "1970-01-01", "2026-01-05 00:00:00+14:00"]),
)
big_ints = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from(
    [0, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30]))
any_float = st.floats(allow_nan=True, allow_infinity=True)
scalars = st.one_of(st.none(), st.booleans(), big_ints, any_float, weird_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(weird_text, inner, max_size=4)),
    max_leaves=12,
)


# --------------------------------------------------------------------------- Modbus decoding

from collector.modbus import decode as mdecode  # noqa: E402

_TYPES = [t.value for t in mdecode.DataType]
_ORDERS = [o.value for o in mdecode.WordOrder]


def _decode_case(x: tuple[list[int], str, str]) -> None:
    regs, dtype, order = x
    value = mdecode.decode(regs, dtype, order)  # ValueError: wrong count, range, type name
    assert isinstance(value, (int, float))
    if isinstance(value, float) and math.isnan(value):
        return
    again = mdecode.encode(value, dtype, order)
    assert again == list(regs), (regs, value, again)


@st.composite
def _decode_input(draw: Callable[..., Any]) -> tuple[list[int], str, str]:
    dtype = draw(st.one_of(st.sampled_from(_TYPES), st.sampled_from(_TYPES),
                           st.sampled_from(["bool", "float16", "INT16", ""])))
    order = draw(st.one_of(st.sampled_from(_ORDERS), st.sampled_from(_ORDERS),
                           st.sampled_from(["abcd", "DCAB", ""])))
    n = mdecode.DataType(dtype).registers if dtype in _TYPES else 1
    if draw(st.integers(0, 9)) == 0:
        n = draw(st.integers(0, 5))
    word = st.integers(0, 0xFFFF) if draw(st.integers(0, 9)) else st.integers(-5, 0x1FFFF)
    return draw(st.lists(word, min_size=n, max_size=n)), dtype, order


decode_target = Target("modbus register decoding", _decode_input(), _decode_case, (ValueError,))


# --------------------------------------------------------------------------- poller replies


def _profiles() -> dict[str, Any]:
    from collector.profiles import load_profile

    return {p.stem: load_profile(p) for p in sorted((CONFIG / "profiles").glob("*.yaml"))}


_PROFILES: dict[str, Any] = {}
_LOOP: asyncio.AbstractEventLoop | None = None


class _Ctx:
    class comm_params:  # the attribute pymodbus' client has
        timeout_connect = 1.0


class _FakeClient:
    """What Link.read touches of a pymodbus client: ``connected`` and ``ctx``."""

    connected = True
    ctx = _Ctx()

    def close(self) -> None:
        pass


def _reply_strategy() -> st.SearchStrategy[Any]:
    """One answer to a read: PDU bytes for pymodbus' decoder, or an exception to raise."""
    pdu = st.one_of(
        st.binary(max_size=260),
        # a read answer with the right function code and a byte count, random data
        st.tuples(st.sampled_from([1, 2, 3, 4]), st.integers(0, 255),
                  st.binary(max_size=255)).map(lambda t: bytes([t[0], t[1]]) + t[2]),
        # an exception answer
        st.tuples(st.sampled_from([0x81, 0x82, 0x83, 0x84]), st.integers(0, 255))
        .map(bytes),
    )
    failure = st.sampled_from(["io", "connection", "modbus", "oserror", "none"])
    return st.one_of(pdu, pdu, pdu, failure)


def _spec(name: str, ask_points: int, conn: Any) -> Any:
    from collector.site import Meter, MeterSpec

    if not _PROFILES:
        _PROFILES.update(_profiles())
    profile = _PROFILES[name]
    points = profile.resolved()
    if ask_points:  # a subset, as a site's points: list would
        points = points[: max(1, ask_points % (len(points) + 1))]
    meter = Meter(id="m", profile=name, connection=conn)
    return MeterSpec(meter, name, profile, points, 1.0, 0.002, 0, 10)


def _check_polls(bus: Any, device: Any, polls: int) -> None:
    """Poll ``polls`` times; every result must be a well-formed reading."""
    from collector.contract import Quality

    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
    names = {p.name for p in device.spec.points}
    for _ in range(polls):  # more than once: a split request (exception 2) is re-planned
        result = _LOOP.run_until_complete(bus.poll(device))
        assert result.quality in Quality
        assert set(result.values) <= names
        for key, value in result.values.items():
            assert value is None or (isinstance(value, float) and math.isfinite(value)), (
                key, value)
        assert all(isinstance(v, str) and v for v in result.errors.values())
        assert (result.quality is Quality.OK) == (
            len(result.values) == len(names) and None not in result.values.values())


def _poller_case(x: tuple[str, list[Any], int]) -> None:
    """RTU framing (serial, RTU over TCP) goes through pymodbus: its decoded replies."""
    from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
    from pymodbus.pdu import DecodePDU

    from collector.modbus.poller import Bus, Device, Link, plan_device
    from collector.site import Polling, RtuOverTcpConnection

    name, replies, ask_points = x
    conn = RtuOverTcpConnection(type="rtu_over_tcp", host="127.0.0.1", port=502)
    spec = _spec(name, ask_points, conn)
    link = Link(conn, timeout_s=0.1)
    link.client = _FakeClient()
    answers = iter(replies)
    decoder = DecodePDU(False)
    sent: list[int] = []

    def reader(fc: int) -> Callable[..., Any]:
        async def read(address: int, count: int, device_id: int) -> Any:
            sent.append(fc)
            reply = next(answers, "io")
            if reply == "io":
                raise ModbusIOException("timeout")
            if reply == "connection":
                raise ConnectionException("gone")
            if reply == "modbus":
                raise ModbusException("garbage")
            if reply == "oserror":
                raise ConnectionResetError(104, "reset")
            if reply == "none":
                return None
            try:
                return decoder.decode(reply)
            except Exception:  # pymodbus' framer drops what it cannot decode: no answer
                raise ModbusIOException("undecodable") from None
        return read

    async def connected() -> bool:
        link.client = _FakeClient()
        return True

    link._readers = {fc: reader(fc) for fc in (1, 2, 3, 4)}
    link.ensure = connected  # type: ignore[method-assign]
    device = Device(spec, plan_device(spec))
    _check_polls(Bus(link, [device], Polling(retry_backoff_s=0, offline_after=2)), device, 2)
    assert set(sent) <= {1, 2, 3, 4}


poller_target = Target(
    "poller: RTU replies (pymodbus)",
    st.tuples(st.sampled_from(sorted(p.stem for p in (CONFIG / "profiles").glob("*.yaml"))),
              st.lists(_reply_strategy(), max_size=12), st.integers(0, 40)),
    _poller_case,
)


class _Transport:
    """What ModbusTcpClient uses of an asyncio transport; ``write`` answers from a script."""

    def __init__(self, client: Any, script: Iterator[tuple[str, bytes, int]]):
        self.client = client
        self.script = script
        self.closing = False
        self.sent: list[tuple[int, int]] = []

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self._lost(None)

    def abort(self) -> None:
        self._lost(None)

    def _lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.closing = True
            self.client.loop.call_soon(self.client.connection_lost, exc)

    def write(self, request: bytes) -> None:
        tid, _proto, _len, unit, fc, address, count = struct.unpack(">HHHBBHH", request)
        self.sent.append((fc, address))
        how, noise, cut = next(self.script, ("silence", b"", 0))
        if fc in (3, 4):
            data = (noise * (2 * count // max(len(noise), 1) + 1))[: 2 * count] if noise \
                else bytes(2 * count)
        else:
            data = (noise or b"\x00") * ((count + 7) // 8)
            data = data[: (count + 7) // 8]
        pdu = bytes([fc, len(data)]) + data
        if how == "silence":
            return
        if how == "reset":
            self._lost(ConnectionResetError(104, "reset"))
            return
        if how == "exception":
            pdu = bytes([fc | 0x80, cut & 0xFF])
        if how == "garbage":
            frame = noise
        else:
            frame = struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu
            if how == "mutated" and frame:
                b = bytearray(frame)
                for i in range(0, len(noise), 2):
                    b[noise[i] % len(b)] = noise[i + 1] if i + 1 < len(noise) else 0
                frame = bytes(b)
            elif how == "short":
                frame = frame[: cut % (len(frame) + 1)]
            elif how == "long":
                frame = frame + noise
        split = cut % (len(frame) + 1)
        loop = self.client.loop
        for chunk in (frame[:split], frame[split:]):
            if chunk:
                loop.call_soon(self.client.data_received, chunk)


def _tcp_case(x: tuple[str, list[tuple[str, bytes, int]], int]) -> None:
    """Plain Modbus TCP: our own client (collector/modbus/tcp.py) parses the wire bytes."""
    from collector.modbus.poller import Bus, Device, Link, plan_device
    from collector.modbus.tcp import ModbusTcpClient
    from collector.site import Polling, TcpConnection

    name, script, ask_points = x
    conn = TcpConnection(type="tcp", host="127.0.0.1", port=502)
    spec = _spec(name, ask_points, conn)
    link = Link(conn, timeout_s=0.002)
    steps = iter(script)
    transports: list[_Transport] = []

    async def connected() -> bool:
        if link.tcp is None or not link.tcp.connected:
            client = ModbusTcpClient()
            transport = _Transport(client, steps)
            transports.append(transport)
            client.connection_made(transport)  # type: ignore[arg-type]
            link.tcp = client
        return True

    link.ensure = connected  # type: ignore[method-assign]
    device = Device(spec, plan_device(spec))
    _check_polls(Bus(link, [device], Polling(retry_backoff_s=0, offline_after=2)), device, 3)
    assert all(fc in (1, 2, 3, 4) for t in transports for fc, _ in t.sent)


tcp_target = Target(
    "poller: Modbus TCP frames (own client)",
    st.tuples(
        st.sampled_from(sorted(p.stem for p in (CONFIG / "profiles").glob("*.yaml"))),
        st.lists(st.tuples(
            st.sampled_from(["valid", "valid", "valid", "mutated", "mutated", "short", "long",
                             "garbage", "exception", "silence", "reset"]),
            st.binary(max_size=24), st.integers(0, 300)), max_size=10),
        st.integers(0, 40)),
    _tcp_case,
)


# --------------------------------------------------------------------------- MQTT payloads


class _Refused(Exception):
    """The input was refused the way the code under test refuses it (e.g. a dead letter)."""


NOW = 1_790_000_000.0  # 2026-09-21
GOOD_READING: dict[str, Any] = {
    "v": 1, "site": "demo_dairy", "meter": "water_main", "resource": "water",
    "stream": "94a9da9ec1bd", "seq": 1841, "ts": "2026-09-21T13:33:20.123Z", "quality": "ok",
    "values": {"flow_m3_h": 0.3996, "volume_m3": 28431.5, "status_code": 0.0},
    "errors": {}, "latency_ms": 1.262,
}
GOOD_META: dict[str, Any] = {
    "v": 1, "site": "demo_dairy", "meter": "water_main", "name": "Water", "resource": "water",
    "profile": "x", "manufacturer": "y", "model": "z", "interval_s": 5.0,
    "points": {"volume_m3": {"unit": "m3", "kind": "counter", "rollover": None}},
    "tags": {"price_per_unit": 2.1},
}
GOOD_HEALTH: dict[str, Any] = {
    "v": 1, "site": "demo_dairy", "ts": "2026-09-21T13:33:20.123Z", "uptime_s": 10.0,
    "clock": "synced", "outbox": {"depth": 1, "held": 0, "cap": 100, "dropped": {"x": 2}},
    "mqtt": {}, "devices": {"m": {"state": "up", "polls": 3}},
}
_TS_VALUES = ["2026-09-21T13:33:20Z", "2126-09-21T13:33:20Z", "1999-12-31T23:59:59Z",
              "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999Z", "2026-09-21T13:33:20+02:00",
              "2026-09-21T13:33:20", "2026-09-21", 1790000000, 1.79e12, "now", ""]


def _mutate(base: dict[str, Any], draw: Callable[..., Any]) -> dict[str, Any]:
    data = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from([*data, "values", "ts", "seq", "extra_field"]))
        action = draw(st.sampled_from(["set", "set", "del", "nest"]))
        if action == "del":
            data.pop(key, None)
        elif action == "nest" and isinstance(data.get(key), dict):
            sub = data[key]
            sub[draw(weird_text)] = draw(json_values)
        elif key == "ts":
            data[key] = draw(st.one_of(st.sampled_from(_TS_VALUES), json_values))
        elif key == "values":
            data[key] = draw(st.one_of(
                json_values,
                st.dictionaries(st.sampled_from(["flow_m3_h", "volume_m3", "energy_kwh",
                                                 "bogus", ""]), scalars, max_size=3)))
        else:
            data[key] = draw(json_values)
    return data


@st.composite
def _mqtt_message(draw: Callable[..., Any]) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["reading", "reading", "reading", "readings", "readings",
                                 "meta", "health", "other"]))
    site = draw(st.sampled_from(["demo_dairy", "other", "Bad Site", "", "+"]))
    meter = draw(st.sampled_from(["water_main", "_agent", "x"]))
    topic = {
        "reading": f"recp/v1/{site}/{meter}/reading",
        "readings": f"recp/v1/{site}/{meter}/readings",
        "meta": f"recp/v1/{site}/{meter}/meta",
        "health": f"recp/v1/{site}/_agent/health",
        "other": draw(st.one_of(st.text(max_size=30), st.sampled_from(
            ["recp/v1/a/b/ack", "recp/v2/a/b/reading", "recp/v1/a/b/c/reading"]))),
    }[kind]
    if kind == "readings":
        return topic, _batch_payload(draw)
    base = {"meta": GOOD_META, "health": GOOD_HEALTH}.get(kind, GOOD_READING)
    how = draw(st.sampled_from(["mutated", "mutated", "mutated", "json", "bytes", "valid"]))
    if how == "bytes":
        payload = draw(st.binary(max_size=300))
    elif how == "json":
        payload = json.dumps(draw(json_values)).encode()
    else:
        data = base if how == "valid" else _mutate(base, draw)
        payload = json.dumps(data, allow_nan=True).encode()
        if draw(st.integers(0, 9)) == 0:  # cut or padded
            payload = payload[: draw(st.integers(0, len(payload)))] if draw(
                st.booleans()) else payload + b" " * 70000
    return topic, payload


ITEM_KEYS = ITEM_FIELDS  # the per-reading fields, in each item of a batch


def _batch_payload(draw: Callable[..., Any]) -> bytes:
    """A ``readings`` message: shared fields and 1-6 items, each valid or mutated."""
    shared = {k: v for k, v in GOOD_READING.items() if k not in ITEM_KEYS}
    if draw(st.integers(0, 4)) == 0:
        shared = _mutate(shared, draw)
    items = []
    for i in range(draw(st.integers(1, 6))):
        item = {k: v for k, v in GOOD_READING.items() if k in ITEM_KEYS}
        item["seq"] = GOOD_READING["seq"] + i * draw(st.sampled_from([1, 1, 2, 0, -1]))
        if draw(st.integers(0, 2)) == 0:
            item = _mutate(item, draw)
        items.append(item)
    body: Any = {**shared, "readings": items}
    if draw(st.integers(0, 9)) == 0:
        body["readings"] = draw(st.one_of(json_values, st.just([])))
    payload = json.dumps(body, allow_nan=True).encode()
    if draw(st.integers(0, 19)) == 0:  # cut
        payload = payload[: draw(st.integers(0, len(payload)))]
    return payload


def reference(topic: str, payload: bytes, now: float, limits: Any) -> list[Any]:
    """What the models say a message carries: :func:`~detectors.service.validate.parse` on
    it; for a ``readings`` message :func:`collector.contract.split_readings`, item by item
    in place (None: a dead letter; ``[None]`` the whole message's)."""
    from collector import contract
    from detectors.service.fastcheck import item_of
    from detectors.service.validate import _reading_problem, parse, split_topic

    where = split_topic(topic)
    if where is None or where[2] != "readings" or where[1] == contract.AGENT:
        res = parse(topic, payload, now, limits)
        if isinstance(res, contract.Reading):
            return [item_of(res)]
        return [] if res is None else [res]
    if len(payload) > limits.max_batch_payload_bytes:
        return [None]
    try:
        good, bad = contract.split_readings(payload)
    except (ValueError, RecursionError):
        return [None]
    if good and (good[0].site, good[0].meter) != (where[0], where[1]):
        return [None]
    out: list[Any] = [None] * (len(good) + len(bad))
    at = iter(good)
    for i in range(len(out)):
        if i not in {b.index for b in bad}:
            r = next(at)
            out[i] = None if _reading_problem(r, now, limits) else item_of(r)
    return out


def _mqtt_case(x: tuple[str, bytes]) -> None:
    from detectors.service.dedup import SeqTracker
    from detectors.service.fastcheck import Item
    from detectors.service.service import agent_line, contract, item_line, reading_line
    from detectors.service.validate import DeadLetter, Limits, parse_message

    topic, payload = x
    limits = Limits()
    got = parse_message(topic, payload, NOW, limits)
    # the fast path says what the models say (dead letters: with the same reason, or per
    # item of a batch, in place)
    want = reference(topic, payload, NOW, limits)
    if topic.endswith("/readings") and want == [None]:
        assert len(got) == 1 and isinstance(got[0], DeadLetter), (got, want)
    elif topic.endswith("/readings"):
        assert [None if isinstance(g, DeadLetter) else g for g in got] == want, (got, want)
    else:
        assert got == want, (got, want)
    refused = None
    for res in got:
        if isinstance(res, DeadLetter):
            body = json.loads(res.to_json(NOW))
            assert body["reason"] and res.out_topic.startswith("recp/v1/_deadletter/")
            assert "+" not in res.out_topic and "#" not in res.out_topic
            refused = res.reason
        elif isinstance(res, Item):
            assert limits.oldest_s <= res.ts_s <= NOW + limits.max_future_s
            assert all(v is None or math.isfinite(v) for v in res.values.values())
            tracker = SeqTracker()
            key = (res.site, res.meter, res.stream)
            assert tracker.accept(key, res.seq) and not tracker.accept(key, res.seq)
            text = item_line(res)
            assert text is None or ("\n" not in text and "\r" not in text)
            if topic.endswith("/reading"):  # the model's reading gives the same point
                model = contract.Reading.model_validate_json(payload)
                assert text == reading_line(model), (text, reading_line(model))
            _sqlite_int(res.seq)  # the service keeps seqs in SQLite (spool, checkpoint)
        elif isinstance(res, contract.Health):
            text = agent_line(res)
            assert text is None or "\n" not in text
    if refused is not None and not any(isinstance(r, Item) for r in got):
        raise _Refused(refused)  # counted as refused: a dead letter with its reason


def _sqlite_int(value: int) -> None:
    import sqlite3

    db = sqlite3.connect(":memory:")
    try:
        db.execute("SELECT ?", (value,))
    finally:
        db.close()


mqtt_target = Target("MQTT payloads (detector service)", _mqtt_message(), _mqtt_case,
                     (_Refused,))


# --------------------------------------------------------------------------- agent: acks

_OUTBOX: Any = None


@st.composite
def _ack_message(draw: Callable[..., Any]) -> bytes:
    how = draw(st.sampled_from(["good", "mutated", "json", "bytes"]))
    if how == "bytes":
        return bytes(draw(st.binary(max_size=100)))
    if how == "json":
        return json.dumps(draw(json_values)).encode()
    data: dict[str, Any] = {"v": 1, "stream": "OUTBOX", "seq": draw(big_ints)}
    if how == "mutated":
        data[draw(st.sampled_from(["v", "stream", "seq", "x"]))] = draw(json_values)
    return json.dumps(data, allow_nan=True).encode()


def _ack_case(raw: bytes) -> None:
    """What the agent's publisher does with a retained ack (collector/publisher.py)."""
    from collector import contract
    from collector.outbox import Outbox

    global _OUTBOX
    if _OUTBOX is None:
        _OUTBOX = Outbox(workdir() / "ack-outbox.sqlite")
    raw = raw.replace(b"OUTBOX", _OUTBOX.stream.encode())
    try:
        ack = contract.Ack.model_validate_json(raw)
    except ValueError:
        raise _Refused from None
    _OUTBOX.confirm("m", ack.stream, ack.seq)


ack_target = Target("MQTT acks (edge agent)", _ack_message(), _ack_case, (_Refused,))


# --------------------------------------------------------------------------- config files

BASES: dict[str, list[Path]] = {
    "site": sorted((CONFIG / "sites").glob("*.yaml")),
    "plant": sorted((CONFIG / "plants").glob("*.yaml")),
    "profile": sorted((CONFIG / "profiles").glob("*.yaml")),
    "analytics": [CONFIG / "analytics.yaml"],
}
_TEXT: dict[Path, str] = {}
_DATA: dict[Path, Any] = {}


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


yaml_scalars = st.one_of(
    st.none(), st.booleans(), big_ints, any_float, weird_text,
    st.sampled_from(["tcp", "rtu", "holding", "coil", "float32", "bool", "CDAB", "site",
                     "plant", "profile", "analytics", "mqtts://h:99999", "mqtt://u:p@h",
                     "/dev/null", "../../x.yaml", "eastron_sdm630", "2026-01-05T00:00:00",
                     "24:00", "Europe/Nowhere", "-1", "0", "1e9"]),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(weird_text, big_ints), inner, max_size=3)),
    max_leaves=8,
)


def _set(data: Any, path: tuple[Any, ...], value: Any, delete: bool = False) -> Any:
    if not path:
        return value
    parent = data
    for p in path[:-1]:
        parent = parent[p]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return data


@st.composite
def _config_text(draw: Callable[..., Any], kind: str) -> str:
    base = draw(st.sampled_from(BASES[kind]))
    if base not in _TEXT:
        _TEXT[base] = base.read_text(encoding="utf-8")
        _DATA[base] = yaml.safe_load(_TEXT[base])
    how = draw(st.sampled_from(["tree", "tree", "tree", "tree", "text", "random"]))
    if how == "random":
        return str(draw(st.one_of(st.text(max_size=200),
                                  yaml_values.map(lambda v: yaml.safe_dump(v)))))
    if how == "text":
        lines = _TEXT[base].splitlines()
        for _ in range(draw(st.integers(1, 4))):
            if not lines:
                break
            i = draw(st.integers(0, len(lines) - 1))
            op = draw(st.sampled_from(["del", "dup", "swap", "insert", "cut", "indent"]))
            if op == "del":
                del lines[i]
            elif op == "dup":
                lines.insert(i, lines[i])
            elif op == "swap":
                j = draw(st.integers(0, len(lines) - 1))
                lines[i], lines[j] = lines[j], lines[i]
            elif op == "insert":
                lines.insert(i, draw(st.text(max_size=30)))
            elif op == "cut":
                lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
            else:
                lines[i] = " " * draw(st.integers(1, 3)) + lines[i]
        return "\n".join(lines) + "\n"
    data = json.loads(json.dumps(_DATA[base], default=str))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(data))
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["set", "set", "del", "add", "dup"]))
        container = _get(data, path[:-1]) if path else None
        if op == "del" and path:
            data = _set(data, path, None, delete=True)
        elif op == "add" and isinstance(_get(data, path), dict):
            _get(data, path)[draw(st.one_of(weird_text, st.sampled_from(
                ["kind", "id", "points", "password", "token", "function_code"])))] = draw(
                yaml_values)
        elif op == "dup" and isinstance(container, list):
            container.append(json.loads(json.dumps(container[path[-1]])))
        else:
            data = _set(data, path, draw(yaml_values))
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        data = data[p]
    return data


_counter = [0]


def _config_case(kind: str) -> Callable[[str], None]:
    def run(text: str) -> None:
        from collector.commands.config import check_file
        from collector.configfile import ConfigError

        _counter[0] += 1
        # in a folder of its own kind, so relative profile paths resolve as in the repo
        folder = workdir() / kind
        folder.mkdir(exist_ok=True)
        path = folder / f"case{_counter[0] % 8}.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            obj = check_file(path)
        except ConfigError as exc:
            assert exc.problems, "ConfigError without a problem"
            for p in exc.problems:
                assert p.file and str(p), p
                assert p.message, p
                assert p.line or p.path, f"problem without a place: {p}"
            raise
        _after_load(obj)

    return run


def _after_load(obj: Any) -> None:
    """What start-up does next with a valid file (it must not fail on what passed)."""
    from collector.modbus.poller import plan_device
    from collector.site import SiteSpec

    if isinstance(obj, SiteSpec):
        for m in obj.meters:
            plan_device(m)


def _config_target(kind: str) -> Target:
    from collector.configfile import ConfigError

    return Target(f"config: {kind} files", _config_text(kind), _config_case(kind),
                  (ConfigError,))


site_target = _config_target("site")
plant_target = _config_target("plant")
profile_target = _config_target("profile")
analytics_target = _config_target("analytics")


# --------------------------------------------------------------------------- CSV input

_BAD_CELLS = ["", "1e400", "nan", "inf", "-inf", "1,5", "1.234,5", "12:00", "abc", " 7 ",
              "1e308", "-0", "0x1F", "1_0", "\x00", "\"", "9" * 30, "-1e19"]
_BAD_STAMPS = ["1790000000", "1790000000000", "1e30", "inf", "-inf", "nan", "1e400", "-1e19",
               "9" * 25, "2026-01-05", "2026-01-05T00:00:00+05:30", "2026-03-29T02:30:00", "",
               "yesterday", "0226-01-05T00:00:00Z", "9999-12-31T23:59:59Z",
               "0001-01-01T00:00:00Z", "2026-02-30T00:00:00Z", "24:00", "2026-01-05T00:00:00Z"]
_COLUMNS = ["timestamp_utc", "time", "energy_kwh", "volume_m3", "flow_m3_h", "mass_t",
            "outdoor_temperature_c", "produced_units", "line_running", "value", "", "x y"]


def _csv_from_seed(seed_value: int, noise: float, rows: int) -> bytes:
    """A meter CSV made by a seeded generator: mostly plausible, ``noise`` of it damaged.

    (One hypothesis draw per file instead of one per cell: ten times faster to generate.)
    """
    rnd = random.Random(seed_value)
    header = ["timestamp_utc", rnd.choice(_COLUMNS[2:])]
    header += rnd.sample(_COLUMNS, rnd.randint(0, 3))
    if rnd.random() < noise:
        rnd.shuffle(header)
    delim = rnd.choice([",", ",", ";", "\t"])
    t = rnd.randint(1_700_000_000, 1_800_000_000)
    step = rnd.choice([60, 300, 900, 900, 3600, 0, -900])
    counter = rnd.uniform(0, 1e6)
    out = []
    for _ in range(rows):
        t += step + (rnd.randint(-30, 30) if rnd.random() < noise else 0)
        cells = [dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")]
        for name in header[1:]:
            counter += rnd.uniform(0, 50) * (-1 if rnd.random() < noise / 4 else 1)
            value = (f"{counter:.3f}" if name in ("energy_kwh", "volume_m3", "mass_t",
                                                    "produced_units")
                     else f"{rnd.gauss(10, 5):.2f}")
            cells.append(value)
        if rnd.random() < noise:
            i = rnd.randrange(len(cells))
            cells[i] = rnd.choice(_BAD_STAMPS if i == 0 else _BAD_CELLS)
        if rnd.random() < noise / 4:
            cells = cells[: rnd.randrange(len(cells))] if rnd.random() < 0.5 else [*cells, "1"]
        out.append(cells)
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delim, lineterminator=rnd.choice(["\n", "\r\n"]))
    w.writerow(header)
    w.writerows(out)
    text = buf.getvalue()
    if rnd.random() < 0.1:
        text = "\ufeff" + text
    if rnd.random() < noise and text:
        i = rnd.randrange(len(text))
        text = text[:i] + "".join(chr(rnd.randint(0, 0x2FF)) for _ in range(3)) + text[i:]
    data = text.encode("utf-8", errors="surrogatepass")
    if rnd.random() < noise / 4:
        data += bytes(rnd.randrange(256) for _ in range(8))
    return data


_csv_file = st.one_of(
    st.builds(_csv_from_seed, st.integers(0, 2**32), st.sampled_from([0.0, 0.0, 0.02, 0.3]),
              st.integers(0, 60)),
    st.binary(max_size=300),
)


def _write_csv(data: bytes, name: str) -> Path:
    folder = workdir() / "csv"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def _scan_case(data: bytes) -> None:
    from detectors.scan import ScanOptions, scan

    path = _write_csv(data, "scan.csv")
    result = scan(path, ScanOptions(interval_s=900))
    assert all(0.0 <= s <= 1.0 for s in result.scores.tolist()), "score outside [0, 1]"


def _savings_case(data: bytes) -> None:
    from detectors.csvinput import header, read_columns

    path = _write_csv(data, "meter.csv")
    names = header(path)[1:]
    want = [c for c in names if c] or ["energy_kwh"]
    ts, cols = read_columns(path, want[:2])
    assert len(ts) and all(len(v) == len(ts) for v in cols.values())


def _csv_targets() -> tuple[Target, Target]:
    from detectors.csvinput import CsvInputError

    # `recp scan` turns CsvInputError and any ValueError into a located problem (exit 2)
    scan_t = Target("CSV: recp scan", _csv_file, _scan_case, (ValueError,))
    savings_t = Target("CSV: recp savings / report columns", _csv_file, _savings_case,
                       (CsvInputError,))
    return scan_t, savings_t


scan_target, savings_target = _csv_targets()

TARGETS: list[Target] = [
    decode_target, tcp_target, poller_target, mqtt_target, ack_target, site_target, plant_target,
    profile_target, analytics_target, scan_target, savings_target,
]

__all__ = ["TARGETS", "Outcome", "Target", "fuzz"]
