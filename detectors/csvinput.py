"""Reading meter CSV files (the virtual plant's layout) with errors that name file and line.

A file has a header row; the first column is the UTC timestamp (``timestamp_utc``, ISO 8601
with ``Z``, an offset, or none meaning UTC), the others are numbers named with their unit
(``energy_kwh``, ``mass_t``, ``outdoor_temperature_c``). An empty cell is a missing value.
A folder written by ``recp simulate --csv`` also holds ``meters.json`` (each meter's
resource, counter column and unit, price and CO2 factor) and ``truth.json``.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .arrays import FloatArray, IntArray
from .meter import MeterInfo


class CsvInputError(ValueError):
    """Bad input data; ``file`` and ``line`` (1-based, None: the whole file) say where."""

    def __init__(self, file: Path | str, line: int | None, message: str):
        self.file = str(file)
        self.line = line
        self.message = message
        where = f"{self.file}:{line}" if line else self.file
        super().__init__(f"{where}: {message}")


def header(path: Path) -> list[str]:
    """The column names of a CSV file."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            row = next(csv.reader(f), None)
    except FileNotFoundError:
        raise CsvInputError(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CsvInputError(path, None, f"cannot read: {exc}") from None
    if not row:
        raise CsvInputError(path, 1, "empty file: a header row (timestamp_utc,...) is expected")
    return [c.strip() for c in row]


def parse_time(text: str) -> int:
    """UTC epoch seconds of an ISO 8601 date or date-time (no offset: UTC)."""
    value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return int(value.timestamp())


def read_columns(path: Path, columns: list[str]) -> tuple[IntArray, dict[str, FloatArray]]:
    """(timestamps, {column: values}) of some columns; unknown columns and bad cells raise.

    Errors name the file and line: a timestamp that is not ISO 8601, a value that is not a
    number, a row with too few cells, a column that is not in the header.
    """
    names = header(path)
    missing = [c for c in columns if c not in names[1:]]
    if missing:
        raise CsvInputError(
            path,
            1,
            f"no column {', '.join(missing)}; the file has {', '.join(names[1:]) or 'none'}",
        )
    index = [names.index(c) for c in columns]
    need = max(index, default=0) + 1
    stamps: list[int] = []
    values: list[list[float]] = [[] for _ in columns]
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < need:
                raise CsvInputError(
                    path, line, f"{len(row)} cells, expected {len(names)} ({','.join(names)})"
                )
            try:
                stamps.append(parse_time(row[0]))
            except ValueError:
                raise CsvInputError(
                    path, line, f"{row[0]!r} is not a UTC timestamp (2026-01-05T00:00:00Z)"
                ) from None
            for k, i in enumerate(index):
                cell = row[i].strip()
                if cell == "":
                    values[k].append(math.nan)
                    continue
                try:
                    values[k].append(float(cell))
                except ValueError:
                    raise CsvInputError(
                        path, line, f"column {columns[k]}: {cell!r} is not a number"
                    ) from None
    if not stamps:
        raise CsvInputError(path, 2, "no data rows after the header")
    ts = np.asarray(stamps, dtype=np.int64)
    return ts, {c: np.asarray(v, dtype=np.float64) for c, v in zip(columns, values, strict=True)}


def find_column(column: str, first: Path, folder: Path | None = None) -> Path:
    """The file holding ``column``: ``first`` if it has it, else the one CSV in ``folder``."""
    if column in header(first)[1:]:
        return first
    where = folder if folder is not None else first.parent
    found = sorted(p for p in where.glob("*.csv") if p != first and column in header(p)[1:])
    if len(found) == 1:
        return found[0]
    if not found:
        raise CsvInputError(
            first, 1, f"no column {column!r} here nor in another CSV file in {where}"
        )
    raise CsvInputError(
        first,
        1,
        f"column {column!r} is in several files ({', '.join(p.name for p in found)}); "
        "name the file",
    )


@dataclass(frozen=True)
class Manifest:
    """``meters.json`` of a plant CSV folder (and the truth's time span when present)."""

    folder: Path
    meters: dict[str, dict[str, Any]]
    start_s: int | None
    end_s: int | None
    timezone: str | None
    plant: str | None = None

    def meter_info(self, meter_id: str) -> MeterInfo:
        try:
            return MeterInfo.from_manifest(meter_id, self.meters[meter_id])
        except KeyError:
            raise CsvInputError(
                self.folder / "meters.json",
                None,
                f"no meter {meter_id!r}; it lists {', '.join(sorted(self.meters))}",
            ) from None

    def first_of(self, resource: str) -> str | None:
        return next((m for m, e in self.meters.items() if e.get("resource") == resource), None)


def load_manifest(folder: Path) -> Manifest | None:
    """The folder's ``meters.json`` (None when there is none)."""
    path = folder / "meters.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        meters = data["meters"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CsvInputError(path, None, f"not a meters.json of recp simulate: {exc}") from None
    start = end = None
    timezone = None
    truth = folder / "truth.json"
    if truth.exists():
        try:
            t = json.loads(truth.read_text(encoding="utf-8"))
            start, end = parse_time(t["start"]), parse_time(t["now"])
            timezone = t.get("timezone")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            start = end = None
    plant = data.get("plant") if isinstance(data, dict) else None
    timezone = data.get("timezone") or timezone if isinstance(data, dict) else timezone
    return Manifest(folder, meters, start, end, timezone, plant)
