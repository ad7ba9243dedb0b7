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
from pydantic_core import from_json

from collector import contract

from .fastcheck import Item, Rows, item_fields, item_of, reading_item, shared_ok

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
    max_batch_payload_bytes: int = 1 << 20  # a ``readings`` message (up to 500 readings)


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
    problem = _reading_problem(reading, now_s, limits)
    return reading if problem is None else DeadLetter(topic, payload, problem, site)


def _reading_problem(reading: contract.Reading, now_s: float, limits: Limits) -> str | None:
    """What is wrong with a reading the model accepted (values, time), or None."""
    for name, value in reading.values.items():
        if value is not None and not math.isfinite(value):
            return f"values.{name} is not a finite number"
    t = reading.ts.timestamp()
    if t > now_s + limits.max_future_s:
        return (f"timestamp {reading.ts.isoformat()} is more than "
                f"{limits.max_future_s:g} s in the future")
    if t < limits.oldest_s:
        return f"timestamp {reading.ts.isoformat()} is too old"
    return None


Parsed = Item | contract.MeterMeta | contract.Health | contract.Dropped | DeadLetter


def parse_message(topic: str, payload: bytes, now_s: float, limits: Limits, *,
                  fast_tried: bool = False) -> list[Parsed]:
    """Validate one message into what it carries: its readings (one, or a batch's) as
    :class:`~.fastcheck.Item`, a meta or agent health, dead letters; [] when ignored.

    Readings take the fast path (:mod:`.fastcheck`) when it can prove them valid; anything
    else goes through the models (:func:`parse`), which give the verdict and the reason.
    ``fast_tried``: :func:`fast_rows` already said no to this ``readings`` message.
    """
    where = split_topic(topic)
    if where is not None and where[2] == "readings" and where[1] != contract.AGENT:
        return _parse_batch(topic, payload, now_s, limits, where[0], where[1], fast_tried)
    if where is None or where[2] != "reading" or len(payload) > limits.max_payload_bytes:
        res = parse(topic, payload, now_s, limits)
        if isinstance(res, contract.Reading):  # not reached: kept for the type checker
            return [item_of(res)]
        return [] if res is None else [res]
    try:
        obj = from_json(payload)
    except ValueError:
        obj = None
    item = reading_item(obj)
    if (item is not None and item.site == where[0] and item.meter == where[1]
            and limits.oldest_s <= item.ts_s <= now_s + limits.max_future_s):
        return [item]
    res = parse(topic, payload, now_s, limits)
    if isinstance(res, contract.Reading):
        return [item_of(res)]
    return [] if res is None else [res]


def _parse_batch(topic: str, payload: bytes, now_s: float, limits: Limits, site: str,
                 meter: str, fast_tried: bool = False) -> list[Parsed]:
    """A ``readings`` message: each item as the Reading the ``reading`` topic would have
    carried (shared fields + item); a bad item dead-lettered alone (reason: its index and
    seq), a bad shared part the whole message. The fast path (:func:`fast_rows`) takes a
    message whose every item it can prove valid; any other goes to
    :func:`collector.contract.split_readings` (the models), which gives the verdict and
    the reasons."""
    rows = None if fast_tried else fast_rows(topic, payload, now_s, limits)
    if rows is not None:
        return list(rows.items())
    cap = max(limits.max_batch_payload_bytes, 1)
    if len(payload) > cap:
        return [DeadLetter(topic, payload, f"invalid readings: payload of {len(payload)} "
                           f"bytes exceeds {cap}", site)]
    return _reference_batch(topic, payload, now_s, limits, site, meter)


def fast_rows(topic: str, payload: bytes, now_s: float, limits: Limits) -> Rows | None:
    """A ``readings`` message whose shared part and every item :mod:`.fastcheck` proves
    valid (seqs increasing, times within the limits), as :class:`~.fastcheck.Rows`; None
    for anything else (then :func:`parse_message` asks the models)."""
    where = split_topic(topic)
    if (where is None or where[2] != "readings" or where[1] == contract.AGENT
            or len(payload) > max(limits.max_batch_payload_bytes, 1)):
        return None
    try:
        obj = from_json(payload)
    except ValueError:
        return None
    items = obj.get("readings") if type(obj) is dict else None
    if not (type(items) is list and 1 <= len(items) <= contract.MAX_BATCH and shared_ok(obj)
            and obj["site"] == where[0] and obj["meter"] == where[1]):
        return None
    seqs: list[int] = []
    times: list[float] = []
    qualities: list[str] = []
    values: list[dict[str, float | None]] = []
    last = 0
    low, high = limits.oldest_s, now_s + limits.max_future_s
    for raw in items:
        got = item_fields(raw) if type(raw) is dict else None
        if got is None:
            return None
        seq, ts, quality, vals = got
        if seq <= last or not low <= ts <= high:
            return None
        last = seq
        seqs.append(seq)
        times.append(ts)
        qualities.append(quality)
        values.append(vals)
    return Rows(obj["site"], obj["meter"], obj["resource"], obj["stream"], seqs, times,
                qualities, values)


def _reference_batch(topic: str, payload: bytes, now_s: float, limits: Limits, site: str,
                     meter: str) -> list[Parsed]:
    """A ``readings`` message through the models, item by item, in order."""
    try:
        good, bad = contract.split_readings(payload)
    except ValidationError as exc:
        return [DeadLetter(topic, payload, f"invalid readings: {_first_error(exc)}", site)]
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        return [DeadLetter(topic, payload, f"invalid readings: not valid JSON: {exc}", site)]
    except ValueError as exc:  # not an object, no items or too many
        return [DeadLetter(topic, payload, f"invalid readings: {exc}", site)]
    first = good[0] if good else None
    if first is not None and (first.site, first.meter) != (site, meter):
        return [DeadLetter(topic, payload, f"readings name {first.site}/{first.meter} but "
                           f"came on {site}/{meter}", site)]
    bad_at = {b.index: b for b in bad}
    out: list[Parsed] = []
    readings = iter(good)
    for i in range(len(good) + len(bad)):
        if i in bad_at:
            out.append(DeadLetter(topic, _item_payload(payload, i), str(bad_at[i]), site))
            continue
        reading = next(readings)
        if (reading.site, reading.meter) != (site, meter):  # no shared fields: checked
            return [DeadLetter(topic, payload, f"readings name {reading.site}/"
                               f"{reading.meter} but came on {site}/{meter}", site)]
        problem = _reading_problem(reading, now_s, limits)
        if problem is None:
            out.append(item_of(reading))
        else:
            out.append(DeadLetter(topic, _item_payload(payload, i),
                                  f"readings[{i}] (seq {reading.seq}): {problem}", site))
    return out


def _item_payload(payload: bytes, index: int) -> bytes:
    """What a dead letter of one item carries: the Reading it stands for (shared fields
    and the item, as sent), else the whole message."""
    try:
        body = json.loads(payload)
        shared = {k: v for k, v in body.items() if k != "readings"
                  and k not in contract.ITEM_FIELDS}
        item = {k: v for k, v in body["readings"][index].items()
                if k in contract.ITEM_FIELDS}
        return json.dumps({**shared, **item}, allow_nan=True).encode()
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):
        return payload


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
