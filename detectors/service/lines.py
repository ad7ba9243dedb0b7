"""InfluxDB line protocol for the measurements of ``docs/influx-schema.md``.

Times are epoch milliseconds (the service writes with precision ``ms``). Tag values are
escaped (comma, space, equals sign); string fields are quoted; integers carry ``i``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

Field = float | int | bool | str | None

_TAG_ESCAPE = str.maketrans({",": r"\,", " ": r"\ ", "=": r"\=", "\n": " "})


def _tag(value: str) -> str:
    return value.translate(_TAG_ESCAPE)


def _field(value: float | int | bool | str) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    text = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
    return f'"{text}"'


def line(measurement: str, tags: Mapping[str, str], fields: Mapping[str, Field],
         time_ms: int) -> str | None:
    """One point; None when no field has a value (line protocol needs one)."""
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        text = _field(value)
        if text is not None:
            parts.append(f"{_tag(key)}={text}")
    if not parts:
        return None
    tag_text = "".join(f",{_tag(k)}={_tag(v)}" for k, v in sorted(tags.items()) if v != "")
    return f"{_tag(measurement)}{tag_text} {','.join(parts)} {int(time_ms)}"


QUALITY_CODES = {"ok": 0, "partial": 1, "error": 2}
