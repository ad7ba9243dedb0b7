"""InfluxDB line protocol for the measurements of ``docs/influx-schema.md``.

Times are epoch milliseconds (the service writes with precision ``ms``). Tag values are
escaped (comma, space, equals sign); string fields are quoted; integers carry ``i``. The
series part (measurement and tags) and escaped keys are cached: a meter's points share it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache

Field = float | int | bool | str | None

_TAG_ESCAPE = str.maketrans({",": r"\,", " ": r"\ ", "=": r"\=", "\n": " "})


@lru_cache(maxsize=65536)
def _tag(value: str) -> str:
    return value.translate(_TAG_ESCAPE)


@lru_cache(maxsize=65536)
def series(measurement: str, tags: tuple[tuple[str, str], ...]) -> str:
    """``measurement,tag=value,...`` with tags sorted and empty values left out."""
    text = "".join(f",{_tag(k)}={_tag(v)}" for k, v in sorted(tags) if v != "")
    return f"{_tag(measurement)}{text}"


def _field(value: float | int | bool | str) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):  # float(): numpy 2 reprs np.float64(x) as "np.float64(x)"
        return repr(float(value)) if math.isfinite(value) else None
    text = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
    return f'"{text}"'


def fields_text(fields: Mapping[str, Field]) -> str:
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        text = _field(value)
        if text is not None:
            parts.append(f"{_tag(key)}={text}")
    return ",".join(parts)


def line(measurement: str, tags: Mapping[str, str], fields: Mapping[str, Field],
         time_ms: int) -> str | None:
    """One point; None when no field has a value (line protocol needs one)."""
    text = fields_text(fields)
    if not text:
        return None
    return f"{series(measurement, tuple(tags.items()))} {text} {int(time_ms)}"


QUALITY_CODES = {"ok": 0, "partial": 1, "error": 2}
