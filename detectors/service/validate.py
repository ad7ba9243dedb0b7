"""Every incoming message checked once: a Reading or a MeterMeta, or a dead letter.

A dead letter carries the original topic, the payload (text, or base64 when it is not
UTF-8; cut to :data:`KEEP_BYTES`) and the reason. It is published on
``recp/v1/_deadletter/{site or "unknown"}``, counted, and never stops the service.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from collector import contract

KEEP_BYTES = 4096
DEADLETTER_ROOT = f"{contract.ROOT}/_deadletter"
ALERTS_ROOT = f"{contract.ROOT}/_alerts"
DETECT_ROOT = f"{contract.ROOT}/_detect"


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    payload: bytes
    reason: str
    site: str | None = None

    @property
    def out_topic(self) -> str:
        site = self.site
        if site is None or not contract._ID.match(site):
            site = "unknown"
        return f"{DEADLETTER_ROOT}/{site}"

    def to_json(self, now_s: float) -> bytes:
        body: dict[str, Any] = {
            "v": 1,
            "topic": self.topic,
            "reason": self.reason,
            "received": contract.format_ts(now_s),
            "size": len(self.payload),
            "truncated": len(self.payload) > KEEP_BYTES,
        }
        kept = self.payload[:KEEP_BYTES]
        try:
            body["payload_text"] = kept.decode("utf-8")
        except UnicodeDecodeError:
            body["payload_b64"] = base64.b64encode(kept).decode("ascii")
        return contract.dumps(body)


@dataclass(frozen=True)
class Limits:
    max_payload_bytes: int = 65536
    max_future_s: float = 300.0
    oldest_s: float = 946684800.0  # 2000-01-01


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else err["msg"]


def split_topic(topic: str) -> tuple[str, str, str] | None:
    """``recp/v1/{site}/{meter}/{kind}`` -> (site, meter, kind); None for another shape."""
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != contract.ROOT:
        return None
    return parts[2], parts[3], parts[4]


def parse(
    topic: str, payload: bytes, now_s: float, limits: Limits
) -> (contract.Reading | contract.MeterMeta | contract.Health | contract.Dropped
      | DeadLetter | None):
    """Validate one message; None for messages the service ignores (agent status)."""
    where = split_topic(topic)
    site = where[0] if where else None
    if where is None:
        return DeadLetter(topic, payload, "topic is not recp/v1/{site}/{meter}/{kind}", site)
    _, meter, kind = where
    if meter == contract.AGENT:
        if kind != "health" or not payload:
            return None
        try:
            health = contract.Health.model_validate_json(payload)
        except ValidationError as exc:
            return DeadLetter(topic, payload, f"invalid agent health: {_first_error(exc)}",
                              site)
        if health.site != where[0]:
            return DeadLetter(topic, payload, "health site does not match the topic", site)
        return health
    if kind == "dropped":
        return parse_dropped(topic, payload, where[0], meter)
    if kind not in ("reading", "meta"):
        return DeadLetter(topic, payload, f"unknown message kind {kind!r}", site)
    if len(payload) > max(limits.max_payload_bytes, 1):
        return DeadLetter(
            topic, payload, f"payload of {len(payload)} bytes exceeds "
            f"{limits.max_payload_bytes}", site,
        )  # fmt: skip
    if kind == "meta":
        if not payload:
            return None  # a retained meta being cleared
        try:
            meta = contract.MeterMeta.model_validate_json(payload)
        except ValidationError as exc:
            return DeadLetter(topic, payload, f"invalid meta: {_first_error(exc)}", site)
        if (meta.site, meta.meter) != (where[0], meter):
            return DeadLetter(topic, payload, "meta site/meter do not match the topic", site)
        return meta
    try:
        reading = contract.Reading.model_validate_json(payload)
    except ValidationError as exc:
        reason = _first_error(exc)
        if "json" in exc.errors(include_url=False)[0]["type"]:
            reason = f"not valid JSON: {reason}"
        return DeadLetter(topic, payload, f"invalid reading: {reason}", site)
    if (reading.site, reading.meter) != (where[0], meter):
        return DeadLetter(
            topic, payload, f"reading names {reading.site}/{reading.meter} but came on "
            f"{where[0]}/{meter}", site,
        )  # fmt: skip
    for name, value in reading.values.items():
        if value is not None and not math.isfinite(value):
            return DeadLetter(topic, payload, f"values.{name} is not a finite number", site)
    t = reading.ts.timestamp()
    if t > now_s + limits.max_future_s:
        return DeadLetter(
            topic, payload, f"timestamp {reading.ts.isoformat()} is more than "
            f"{limits.max_future_s:g} s in the future", site,
        )  # fmt: skip
    if t < limits.oldest_s:
        return DeadLetter(topic, payload, f"timestamp {reading.ts.isoformat()} is too old",
                          site)
    return reading


def parse_dropped(topic: str, payload: bytes, site: str, meter: str
                  ) -> contract.Dropped | DeadLetter | None:
    """An agent's announcement of readings its outbox dropped (retained; empty: cleared)."""
    if not payload:
        return None
    if len(payload) > 4096:
        return DeadLetter(topic, payload, f"dropped message of {len(payload)} bytes", site)
    try:
        msg = contract.Dropped.model_validate_json(payload)
    except ValidationError as exc:
        return DeadLetter(topic, payload, f"invalid dropped message: {_first_error(exc)}", site)
    if (msg.site, msg.meter) != (site, meter):
        return DeadLetter(topic, payload, "dropped site/meter do not match the topic", site)
    return msg


def parse_oldest(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def loads_lenient(payload: bytes) -> Any:
    """JSON as Python would read it (NaN allowed): only for tests and tools."""
    return json.loads(payload)
