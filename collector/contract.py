"""The MQTT contract, version 1: topics and JSON payloads between edge agent and consumers.

Shared by the agent (which renders payloads) and the detector service (which validates
them), so the two cannot drift apart. ``docs/mqtt-contract.md`` is the prose version;
tests check that every payload the agent sends validates against these models.

Topics (``{site}`` and ``{meter}`` match :data:`ID_PATTERN`)::

    recp/v1/{site}/{meter}/reading   QoS 1          one poll of one meter
    recp/v1/{site}/{meter}/readings  QoS 1          several polls of one meter (batch)
    recp/v1/{site}/{meter}/meta      QoS 1 retained what the meter is: profile, units, tags
    recp/v1/{site}/{meter}/ack       QoS 1 retained consumer's high-water mark (optional)
    recp/v1/{site}/_agent/status     QoS 1 retained online / offline (birth and last will)
    recp/v1/{site}/_agent/health     QoS 1 retained devices, latency, outbox depth

A reading is identified by ``(site, meter, stream, seq)``: ``stream`` names the agent's
outbox (a new one starts at seq 1) and ``seq`` grows by one per reading of a meter, so a
reading delivered twice (at-least-once delivery) is recognised and dropped downstream.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .quantities import QUANTITIES, Kind, Resource

_fast_dumps: Callable[[Any], bytes] | None
try:  # the edge extra's: shortest-round-trip float digits in C (docs/decisions.md)
    from orjson import dumps as _fast_dumps
except ImportError:  # pragma: no cover - the readings are the same, from float.__repr__
    _fast_dumps = None

VERSION = 1
ROOT = f"recp/v{VERSION}"
ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
AGENT = "_agent"  # topic level of the agent's own messages; meter ids cannot start with _
_ID = re.compile(ID_PATTERN)
MAX_SEQ = 2**63 - 1  # sequence numbers are SQLite integers on both ends


def check_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it can be a site or meter id in a topic, else raise ValueError."""
    if not _ID.match(value):
        raise ValueError(
            f"{what} {value!r} must be 1-64 lower-case letters, digits, '_' or '-', "
            "starting with a letter or digit (it becomes an MQTT topic level)"
        )
    return value


def reading_topic(site: str, meter: str) -> str:
    return f"{ROOT}/{site}/{meter}/reading"


def readings_topic(site: str, meter: str) -> str:
    """Topic of the batch message (:class:`Readings`): several readings of one meter."""
    return f"{ROOT}/{site}/{meter}/readings"


def meta_topic(site: str, meter: str) -> str:
    return f"{ROOT}/{site}/{meter}/meta"


def ack_topic(site: str, meter: str) -> str:
    return f"{ROOT}/{site}/{meter}/ack"


def dropped_topic(site: str, meter: str) -> str:
    return f"{ROOT}/{site}/{meter}/dropped"


def status_topic(site: str) -> str:
    return f"{ROOT}/{site}/{AGENT}/status"


def health_topic(site: str) -> str:
    return f"{ROOT}/{site}/{AGENT}/health"


def subscription(site: str = "+", kind: str = "reading") -> str:
    """Wildcard filter for one kind of per-meter message, e.g. ``recp/v1/+/+/reading``
    (``kind="readings"`` for the batch message)."""
    return f"{ROOT}/{site}/+/{kind}"


class Quality(str, Enum):
    """How complete a reading is."""

    OK = "ok"  # every value was read in this poll
    PARTIAL = "partial"  # some values are missing; ``errors`` says why
    ERROR = "error"  # nothing was read (timeout, no connection, exception reply)


class ClockState(str, Enum):
    """How far the reading's timestamp can be trusted."""

    SYNCED = "synced"  # taken while the system clock was synchronised
    CORRECTED = "corrected"  # taken before synchronisation, re-timed from the monotonic clock
    UNSYNCED = "unsynced"  # taken before synchronisation and could not be re-timed


_ts_second: tuple[int, str] = (-1, "")  # (epoch second, its "YYYY-MM-DDTHH:MM:SS.")


def format_ts(epoch_s: float) -> str:
    """UTC ISO 8601 with milliseconds and ``Z``: ``2026-01-05T10:00:00.123Z``.

    The text up to the second is kept for the last second seen (readings of one poll
    cycle share it), which saves two thirds of the cost per reading; the result is
    ``datetime.isoformat`` to the byte (tested), microseconds rounded as ``fromtimestamp``
    rounds them, then cut to milliseconds."""
    global _ts_second
    t = dt.datetime.fromtimestamp(epoch_s, dt.timezone.utc)
    us = t.microsecond
    second = math.floor(epoch_s)
    if us == 0 and epoch_s - second > 0.5:  # .9999995 and up rounds into the next second
        second += 1
    cached, text = _ts_second
    if cached != second:
        text = t.isoformat(timespec="seconds")[:19] + "."
        _ts_second = (second, text)  # one tuple: a reader in another thread sees a pair
    return f"{text}{us // 1000:03d}Z"


class _Payload(BaseModel):
    # Consumers ignore fields they do not know: v1 may gain optional fields, never lose one.
    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal[1] = Field(description="contract version; a new major version changes topics")


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None or value.utcoffset() != dt.timedelta(0):
        raise ValueError("timestamps must be UTC (end in Z)")
    return value


def _known_names(values: dict[str, float | None]) -> dict[str, float | None]:
    unknown = sorted(set(values) - set(QUANTITIES))
    if unknown:
        raise ValueError(f"unknown quantity names: {', '.join(unknown)}")
    return values


class Reading(_Payload):
    """``recp/v1/{site}/{meter}/reading``: the values of one poll of one meter."""

    site: str
    meter: str
    resource: Resource
    stream: str = Field(min_length=1, description="outbox identity; (stream, seq) is unique")
    seq: int = Field(ge=1, le=MAX_SEQ, description="per meter and stream, +1 per reading, "
                     "no gaps made")
    ts: dt.datetime = Field(description="UTC time the poll started")
    quality: Quality
    values: dict[str, float | None] = Field(
        description="quantity name (unit in the name) -> value; None: read but not a number"
    )
    errors: dict[str, str] = Field(
        default_factory=dict, description="point name, or '*' for the device, -> reason"
    )
    clock: ClockState = ClockState.SYNCED
    latency_ms: float | None = Field(None, ge=0, description="time the poll took")

    @field_validator("ts")
    @classmethod
    def _ts_utc(cls, value: dt.datetime) -> dt.datetime:
        return _utc(value)

    @field_validator("site", "meter")
    @classmethod
    def _ids(cls, value: str) -> str:
        return check_id(value)

    @field_validator("values")
    @classmethod
    def _known_names(cls, values: dict[str, float | None]) -> dict[str, float | None]:
        return _known_names(values)


MAX_BATCH = 500  # readings in one ``readings`` message
SHARED_FIELDS = ("site", "meter", "resource", "stream")  # of a Reading, once per batch
ITEM_FIELDS = ("seq", "ts", "quality", "values", "errors", "clock", "latency_ms")


class ReadingItem(BaseModel):
    """One reading inside a :class:`Readings` batch: exactly a Reading's per-reading fields."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    seq: int = Field(ge=1, le=MAX_SEQ)
    ts: dt.datetime
    quality: Quality
    values: dict[str, float | None]
    errors: dict[str, str] = Field(default_factory=dict)
    clock: ClockState = ClockState.SYNCED
    latency_ms: float | None = Field(None, ge=0)

    @field_validator("ts")
    @classmethod
    def _ts_utc(cls, value: dt.datetime) -> dt.datetime:
        return _utc(value)

    @field_validator("values")
    @classmethod
    def _known_names(cls, values: dict[str, float | None]) -> dict[str, float | None]:
        return _known_names(values)


class _ReadingsShared(_Payload):
    site: str
    meter: str
    resource: Resource
    stream: str = Field(min_length=1)

    @field_validator("site", "meter")
    @classmethod
    def _ids(cls, value: str) -> str:
        return check_id(value)


class Readings(_ReadingsShared):
    """``recp/v1/{site}/{meter}/readings``: several readings of one meter in one message.

    The shared fields plus one item are exactly the :class:`Reading` the ``reading`` topic
    would have carried; a consumer treats the batch as those readings arriving in order.
    """

    readings: list[ReadingItem] = Field(min_length=1, max_length=MAX_BATCH)

    @field_validator("readings")
    @classmethod
    def _increasing(cls, items: list[ReadingItem]) -> list[ReadingItem]:
        for i in range(1, len(items)):
            if items[i].seq <= items[i - 1].seq:
                raise ValueError(
                    f"item {i}: seq {items[i].seq} after {items[i - 1].seq} "
                    "(seqs must be strictly increasing)"
                )
        return items

    def expand(self) -> list[Reading]:
        """The readings one by one, in order, as the ``reading`` topic would carry them."""
        return [_reading(self, item) for item in self.readings]


def _reading(shared: _ReadingsShared, item: ReadingItem) -> Reading:
    """Shared fields + one item (both validated already) -> the Reading they describe."""
    return Reading.model_construct(
        v=shared.v, site=shared.site, meter=shared.meter, resource=shared.resource,
        stream=shared.stream, seq=item.seq, ts=item.ts, quality=item.quality,
        values=item.values, errors=item.errors, clock=item.clock, latency_ms=item.latency_ms)


@dataclass(frozen=True)
class BadItem:
    """An item of a batch that is not a valid reading: dead-lettered alone."""

    index: int
    seq: object  # as sent (may be missing or not a number)
    reason: str

    def __str__(self) -> str:
        return f"readings[{self.index}] (seq {self.seq}): {self.reason}"


def split_readings(payload: bytes | str) -> tuple[list[Reading], list[BadItem]]:
    """A ``readings`` message item by item, for consumers that keep the good neighbours
    of a bad item: ``(valid readings in order, bad items)``.

    Raises ``ValueError`` (a ``pydantic.ValidationError`` for a bad field) when the message
    as a whole is unusable: not a JSON object, bad shared fields, no item, more than
    :data:`MAX_BATCH`. An item is bad when it does not validate or its seq is not above
    the previous good item's.
    """
    data = json.loads(payload)
    if not isinstance(data, dict):
        raise ValueError("a readings message must be a JSON object")
    shared = _ReadingsShared.model_validate(data)
    items = data.get("readings")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        raise ValueError(f"'readings' must be a list of 1 to {MAX_BATCH} items")
    good: list[Reading] = []
    bad: list[BadItem] = []
    for i, raw in enumerate(items):
        seq = raw.get("seq") if isinstance(raw, dict) else None
        try:
            item = ReadingItem.model_validate(raw)
        except ValidationError as exc:
            bad.append(BadItem(i, seq, _first_error(exc)))
            continue
        if good and item.seq <= good[-1].seq:
            bad.append(BadItem(i, seq, f"seq {item.seq} not above {good[-1].seq}"))
            continue
        good.append(_reading(shared, item))
    return good, bad


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {err['msg']}{more}" if where else f"{err['msg']}{more}"


class PointMeta(BaseModel):
    """One value a meter publishes."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    unit: str
    kind: Kind
    description: str = ""
    rollover: float | None = Field(None, description="value at which a counter wraps to 0")


class MeterMeta(_Payload):
    """``recp/v1/{site}/{meter}/meta`` (retained): what a meter is, for discovery."""

    site: str
    meter: str
    name: str = ""
    resource: Resource
    profile: str
    manufacturer: str
    model: str
    interval_s: float = Field(gt=0)
    points: dict[str, PointMeta]
    tags: dict[str, str | float | int | bool] = Field(default_factory=dict)


class Ack(_Payload):
    """``recp/v1/{site}/{meter}/ack`` (retained, published by the consumer).

    Every reading of ``stream`` with ``seq <= seq`` has been stored by the consumer; an
    agent in ``confirm: consumer`` mode keeps readings until this mark passes them.
    """

    stream: str
    seq: int = Field(ge=0, le=MAX_SEQ)


class Dropped(_Payload):
    """``recp/v1/{site}/{meter}/dropped`` (retained, published by the agent).

    The agent's outbox dropped readings of this meter and ``stream``: none with
    ``seq <= through_seq`` will be sent (again), so a consumer may take every such seq as
    done. ``count`` is every reading of the meter and stream dropped so far (cumulative).
    """

    site: str
    meter: str
    stream: str = Field(min_length=1)
    through_seq: int = Field(ge=1, le=MAX_SEQ)
    count: int = Field(ge=1)
    reason: str
    ts: dt.datetime = Field(description="UTC time of the latest drop")

    @field_validator("ts")
    @classmethod
    def _ts_utc(cls, value: dt.datetime) -> dt.datetime:
        return _utc(value)


class AgentState(str, Enum):
    ONLINE = "online"
    OFFLINE = "offline"


class AgentStatus(_Payload):
    """``recp/v1/{site}/_agent/status`` (retained): birth message, clean exit and last will."""

    site: str
    state: AgentState
    ts: dt.datetime | None = None
    agent: str = ""
    stream: str = ""
    reason: str = ""


class DeviceHealth(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    state: Literal["up", "down", "offline"]
    polls: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_ok: dt.datetime | None = None
    latency_ms_p50: float | None = None
    latency_ms_max: float | None = None
    last_error: str = ""


class OutboxHealth(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    depth: int
    held: int = 0
    cap: int
    dropped: dict[str, int] = Field(default_factory=dict, description="reason -> count")
    oldest_age_s: float | None = None


class Health(_Payload):
    """``recp/v1/{site}/_agent/health`` (retained): the agent's own condition."""

    site: str
    ts: dt.datetime
    uptime_s: float
    clock: ClockState
    outbox: OutboxHealth
    mqtt: dict[str, Any] = Field(default_factory=dict)
    devices: dict[str, DeviceHealth]


def dumps(payload: dict[str, Any]) -> bytes:
    """Compact JSON, as every payload travels (NaN is not allowed in JSON)."""
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def reading_payload(
    *,
    site: str,
    meter: str,
    resource: str,
    stream: str,
    seq: int,
    ts: float,
    quality: Quality,
    values: dict[str, float | None],
    errors: dict[str, str] | None = None,
    clock: ClockState = ClockState.SYNCED,
    latency_ms: float | None = None,
) -> dict[str, Any]:
    """A :class:`Reading` as a plain dict, built without pydantic (the agent's hot path)."""
    out: dict[str, Any] = {
        "v": VERSION, "site": site, "meter": meter, "resource": resource, "stream": stream,
        "seq": seq, "ts": format_ts(ts), "quality": quality.value, "values": values,
    }
    if errors:
        out["errors"] = errors
    if clock is not ClockState.SYNCED:
        out["clock"] = clock.value
    if latency_ms is not None:
        out["latency_ms"] = round(latency_ms, 3)
    return out


class ReadingRenderer:
    """One meter's reading payloads rendered straight to bytes, equal byte for byte to
    ``dumps(reading_payload(...))`` (tested) at a fraction of its cost: the fields that
    are the same for every reading of the meter, and the value names of each set of
    names seen, are rendered once into a ``%`` template; values with ``float.__repr__``
    as :mod:`json` does, or (when orjson is installed) with orjson's digits, which are
    the same shortest round-trip digits: they are taken only when every value came out
    in fixed notation with its ``.`` (Python's ``repr`` and orjson differ only in how they
    write exponents; tested over the float ranges). Anything unusual (a value that is not
    a finite float or None) goes through :func:`dumps`, which also refuses NaN as before."""

    TEMPLATES_MAX = 64  # sets of value names remembered per meter (a meter has one or two)

    def __init__(self, *, site: str, meter: str, resource: str, stream: str):
        self.fixed = {"site": site, "meter": meter, "resource": resource, "stream": stream}
        head = dumps({"v": VERSION, **self.fixed}).decode()
        self._head = head[:-1] + ',"seq":'
        self._keys: dict[str, str] = {}
        self._templates: dict[tuple[str, ...], str] = {}

    def _template(self, names: tuple[str, ...]) -> str:
        """The payload up to its values, with ``%`` slots for seq, ts, quality and each
        value of ``names`` in order."""
        fixed = [self._head] + [json.dumps(n) + ":" for n in names]
        esc = [f.replace("%", "%%") for f in fixed]
        return (esc[0] + '%d,"ts":"%s","quality":"%s","values":{'
                + ",".join(k + "%s" for k in esc[1:]) + "}")

    def render(self, *, seq: int, ts: float, quality: Quality,
               values: dict[str, float | None], errors: dict[str, str] | None = None,
               clock: ClockState = ClockState.SYNCED, latency_ms: float | None = None
               ) -> bytes:
        reprs = self._fast_reprs(values)
        if reprs is None:
            try:  # every value a float (None, an int: TypeError) and their sum finite
                reprs = list(map(float.__repr__, values.values()))
                total = sum(values.values())  # type: ignore[arg-type]
            except TypeError:
                return self._mixed(seq, ts, quality, values, errors, clock, latency_ms)
            if total - total != 0.0:  # NaN or inf among them (or a sum too large, which
                # the general path renders right)
                return self._mixed(seq, ts, quality, values, errors, clock, latency_ms)
        if type(seq) is not int:
            return self._mixed(seq, ts, quality, values, errors, clock, latency_ms)
        names = tuple(values)
        template = self._templates.get(names)
        if template is None:
            template = self._template(names)
            if len(self._templates) < self.TEMPLATES_MAX:
                self._templates[names] = template
        text = template % (seq, format_ts(ts), quality.value, *reprs)
        return self._tail(text, seq, ts, quality, values, errors, clock, latency_ms)

    @staticmethod
    def _fast_reprs(values: dict[str, float | None]) -> list[str] | None:
        """Every value's ``repr`` from orjson, or None when they cannot all be had so:
        orjson missing, a value that is not a float (its text has no ``.``: ``null``
        for None and NaN, an int) or is written with an exponent (``e``; also ``true``
        and ``false``) or below 1e-4 (``0.0000``, where ``repr`` switches to one)."""
        if _fast_dumps is None:
            return None
        try:
            out = _fast_dumps(list(values.values()))
        except TypeError:  # not a type orjson knows
            return None
        if b"e" in out or b"0.0000" in out or out.count(b".") != len(values):
            return None
        return out[1:-1].decode().split(",") if values else []

    def _mixed(self, seq: int, ts: float, quality: Quality, values: dict[str, float | None],
               errors: dict[str, str] | None, clock: ClockState, latency_ms: float | None
               ) -> bytes:
        """Values with None among them, value by value."""
        keys = self._keys
        parts = []
        for name, v in values.items():
            key = keys.get(name)
            if key is None:
                key = keys[name] = json.dumps(name) + ":"
            if v is None:
                parts.append(key + "null")
            elif type(v) is float and v - v == 0.0:  # finite: inf - inf and NaN are NaN
                parts.append(key + float.__repr__(v))
            else:
                return self._slow(seq, ts, quality, values, errors, clock, latency_ms)
        if type(seq) is not int:
            return self._slow(seq, ts, quality, values, errors, clock, latency_ms)
        text = (f'{self._head}{seq},"ts":"{format_ts(ts)}","quality":"{quality.value}",'
                f'"values":{{{",".join(parts)}}}')
        return self._tail(text, seq, ts, quality, values, errors, clock, latency_ms)

    def _tail(self, text: str, seq: int, ts: float, quality: Quality,
              values: dict[str, float | None], errors: dict[str, str] | None,
              clock: ClockState, latency_ms: float | None) -> bytes:
        if errors:
            text += ',"errors":' + json.dumps(errors, separators=(",", ":"))
        if clock is not ClockState.SYNCED:
            text += f',"clock":"{clock.value}"'
        if latency_ms is not None:
            lat = round(latency_ms, 3)
            if type(lat) is not float or lat - lat != 0.0:
                return self._slow(seq, ts, quality, values, errors, clock, latency_ms)
            text += ',"latency_ms":' + float.__repr__(lat)
        return (text + "}").encode()

    def _slow(self, seq: int, ts: float, quality: Quality, values: dict[str, float | None],
              errors: dict[str, str] | None, clock: ClockState, latency_ms: float | None
              ) -> bytes:
        return dumps(reading_payload(**self.fixed, seq=seq, ts=ts, quality=quality,
                                     values=values, errors=errors, clock=clock,
                                     latency_ms=latency_ms))


_SEQ_KEY = b',"seq":'


def pack_readings(payloads: Sequence[bytes]) -> bytes:
    """Rendered ``reading`` payloads of one meter and stream (seqs increasing) -> one
    ``readings`` payload, byte for byte the same items.

    The agent's hot path: payloads from :func:`reading_payload` share their first bytes up
    to ``,"seq":``, so the items are spliced out without parsing; any other payload is
    parsed and re-rendered.
    """
    if not 1 <= len(payloads) <= MAX_BATCH:
        raise ValueError(f"a readings message carries 1 to {MAX_BATCH} readings")
    first = payloads[0]
    cut = first.find(_SEQ_KEY)
    head = first[:cut] if cut > 0 else b""
    if head and all(p.startswith(head) and p[cut:cut + len(_SEQ_KEY)] == _SEQ_KEY
                    for p in payloads):
        items = b",".join(b"{" + p[cut + 1:] for p in payloads)
        return head + b',"readings":[' + items + b"]}"
    parsed = [json.loads(p) for p in payloads]
    out = {k: parsed[0][k] for k in ("v", *SHARED_FIELDS)}
    out["readings"] = [{k: r[k] for k in ITEM_FIELDS if k in r} for r in parsed]
    return dumps(out)
