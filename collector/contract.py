"""The MQTT contract, version 1: topics and JSON payloads between edge agent and consumers.

Shared by the agent (which renders payloads) and the detector service (which validates
them), so the two cannot drift apart. ``docs/mqtt-contract.md`` is the prose version;
tests check that every payload the agent sends validates against these models.

Topics (``{site}`` and ``{meter}`` match :data:`ID_PATTERN`)::

    recp/v1/{site}/{meter}/reading   QoS 1          one poll of one meter
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
import re
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .quantities import QUANTITIES, Kind, Resource

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


def meta_topic(site: str, meter: str) -> str:
    return f"{ROOT}/{site}/{meter}/meta"


def ack_topic(site: str, meter: str) -> str:
    return f"{ROOT}/{site}/{meter}/ack"


def status_topic(site: str) -> str:
    return f"{ROOT}/{site}/{AGENT}/status"


def health_topic(site: str) -> str:
    return f"{ROOT}/{site}/{AGENT}/health"


def subscription(site: str = "+", kind: str = "reading") -> str:
    """Wildcard filter for one kind of per-meter message, e.g. ``recp/v1/+/+/reading``."""
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


def format_ts(epoch_s: float) -> str:
    """UTC ISO 8601 with milliseconds and ``Z``: ``2026-01-05T10:00:00.123Z``."""
    t = dt.datetime.fromtimestamp(epoch_s, dt.timezone.utc)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Payload(BaseModel):
    # Consumers ignore fields they do not know: v1 may gain optional fields, never lose one.
    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal[1] = Field(description="contract version; a new major version changes topics")


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None or value.utcoffset() != dt.timedelta(0):
        raise ValueError("timestamps must be UTC (end in Z)")
    return value


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
        unknown = sorted(set(values) - set(QUANTITIES))
        if unknown:
            raise ValueError(f"unknown quantity names: {', '.join(unknown)}")
        return values


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
