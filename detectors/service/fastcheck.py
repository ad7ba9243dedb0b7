"""The ``Reading`` model's rules checked on a parsed JSON object, without building the model.

``recp detect`` spends most of its per-reading validation time in pydantic building a
``contract.Reading`` (enums, a datetime, a frozen model) it then only reads a few fields
of. :func:`reading_item` checks the same rules on the dict that ``pydantic_core.from_json``
(pydantic's own JSON parser, so the same JSON is accepted) returned, for the payloads
agents actually send: exact JSON types, a ``...Z`` timestamp. Whatever it cannot prove
valid it answers ``None`` for, and the caller asks the model, which gives the verdict and
the reason. So it never accepts what the model refuses, and what it accepts equals the
model's answer (``tests/unit/test_service_fastcheck.py`` and the fuzz target check both).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import re
from typing import Any, NamedTuple

from collector import contract
from collector.quantities import QUANTITIES, Resource


class Item(NamedTuple):
    """One valid reading, as the service uses it (values as floats, time as epoch seconds)."""

    site: str
    meter: str
    resource: str
    stream: str
    seq: int
    ts_s: float
    quality: str
    values: dict[str, float | None]


def item_of(r: contract.Reading) -> Item:
    """The :class:`Item` of a reading the model validated (the reference path)."""
    return Item(r.site, r.meter, r.resource.value, r.stream, r.seq, r.ts.timestamp(),
                r.quality.value, dict(r.values))


_RESOURCES = frozenset(r.value for r in Resource)
_QUALITIES = frozenset(q.value for q in contract.Quality)
_CLOCKS = frozenset(c.value for c in contract.ClockState)
_NAMES = frozenset(QUANTITIES)
_ID = contract._ID
_MAX_SEQ = contract.MAX_SEQ
_EXACT_INT = 2**53  # ints up to this are floats without rounding
_finite = math.isfinite
_MINUTE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}\Z")
_CACHE_MAX = 4096
_minutes: dict[str, int | None] = {}  # "YYYY-MM-DDTHH:MM" -> epoch seconds (None: invalid)
_ids: set[str] = set()  # site and meter ids seen valid


def _minute(prefix: str) -> int | None:
    if len(_minutes) >= _CACHE_MAX:
        _minutes.clear()
    epoch: int | None = None
    if _MINUTE.match(prefix):
        with contextlib.suppress(ValueError, OverflowError):
            epoch = int(dt.datetime.fromisoformat(prefix + ":00+00:00").timestamp())
    _minutes[prefix] = epoch
    return epoch


def ts_seconds(text: Any) -> float | None:
    """Epoch seconds of ``YYYY-MM-DDTHH:MM:SS[.f{1,6}]Z``, the float
    ``datetime.timestamp()`` gives (so the model's); None for anything else.

    The minute's epoch is cached (readings of a plant share it); seconds and fraction are
    read here, as ``datetime`` would: whole microseconds over 10**6, one division.
    """
    if type(text) is not str or text[-1:] != "Z":
        return None
    n = len(text)
    if n != 20 and not 22 <= n <= 27:
        return None
    prefix = text[:16]
    epoch = _minutes.get(prefix, -1)
    if epoch == -1:
        epoch = _minute(prefix)
    if epoch is None or text[16] != ":":
        return None
    sec = text[17:19]
    if not (sec.isascii() and sec.isdigit()) or sec > "59":
        return None
    micro = 0
    if n > 20:
        frac = text[20:-1]
        if text[19] != "." or not (frac.isascii() and frac.isdigit()):
            return None
        micro = int(frac) * 10 ** (27 - n)
    elif text[19] != "Z":
        return None
    return ((epoch + int(sec)) * 1_000_000 + micro) / 1_000_000


def _id_ok(value: Any) -> bool:
    if type(value) is not str:
        return False
    if value in _ids:
        return True
    if _ID.match(value) is None:
        return False
    if len(_ids) >= _CACHE_MAX:
        _ids.clear()
    _ids.add(value)
    return True


def shared_ok(obj: Any) -> bool:
    """The fields a Reading shares with its batch (v, site, meter, resource, stream)."""
    if type(obj) is not dict:
        return False
    v, stream, resource = obj.get("v"), obj.get("stream"), obj.get("resource")
    return (type(v) is int and v == 1 and _id_ok(obj.get("site"))
            and _id_ok(obj.get("meter"))
            and type(resource) is str and resource in _RESOURCES
            and type(stream) is str and stream != "" and stream.isascii())


class Rows(NamedTuple):
    """The readings of one ``readings`` message, all valid, as columns (the service's
    batch path: no object per reading)."""

    site: str
    meter: str
    resource: str
    stream: str
    seqs: list[int]
    ts_s: list[float]
    qualities: list[str]
    values: list[dict[str, float | None]]

    def items(self) -> list[Item]:
        """The same readings as :class:`Item` s."""
        return [Item(self.site, self.meter, self.resource, self.stream, seq, ts, q, v)
                for seq, ts, q, v in zip(self.seqs, self.ts_s, self.qualities, self.values,
                                         strict=True)]


def reading_item(obj: Any) -> Item | None:
    """``obj`` as an :class:`Item` when it certainly is a valid Reading; None: ask the
    model."""
    if type(obj) is not dict or not shared_ok(obj):
        return None
    got = item_fields(obj)
    if got is None:
        return None
    return Item(obj["site"], obj["meter"], obj["resource"], obj["stream"], *got)


def item_fields(obj: dict[str, Any]) -> tuple[int, float, str, dict[str, float | None]] | None:
    """A reading's own fields (seq, ts_s, quality, values as floats) when they certainly
    are valid; None: ask the model. ``values`` is ``obj``'s own dict when it holds floats
    and nulls only (the usual case), else a converted copy."""
    seq = obj.get("seq")
    if type(seq) is not int or not 1 <= seq <= _MAX_SEQ:
        return None
    ts = ts_seconds(obj.get("ts"))
    quality = obj.get("quality")
    if ts is None or type(quality) is not str or quality not in _QUALITIES:
        return None
    values = obj.get("values")
    if type(values) is not dict:
        return None
    ints = False
    for name, value in values.items():
        if name not in _NAMES:
            return None
        t = type(value)
        if t is float:
            if not _finite(value):
                return None
        elif t is int and -_EXACT_INT <= value <= _EXACT_INT:
            ints = True
        elif value is not None:
            return None
    if ints:
        values = {k: float(v) if v is not None else None for k, v in values.items()}
    if "errors" in obj:
        errors = obj["errors"]
        if type(errors) is not dict:
            return None
        for k, v in errors.items():
            if type(v) is not str or not k.isascii() or not v.isascii():
                return None
    if "clock" in obj:
        clock = obj["clock"]
        if type(clock) is not str or clock not in _CLOCKS:
            return None
    latency = obj.get("latency_ms")
    if latency is not None:
        t = type(latency)
        if not ((t is float and _finite(latency)) or
                (t is int and abs(latency) <= _EXACT_INT)) or latency < 0:
            return None
    return seq, ts, quality, values
