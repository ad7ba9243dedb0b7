"""The embedded store: one SQLite file holding what ``recp detect`` would write to InfluxDB.

For a machine without InfluxDB (the demo, a laptop trial): ``influx.url: sqlite:FILE`` in
the analytics file (or ``recp detect --influx sqlite:FILE``) makes the service's sink write
here instead. Same measurements, tags and fields as ``docs/influx-schema.md``: each point
is one row (measurement, series key, time), its fields JSON. A second write of the same
series and time merges fields, as InfluxDB does (the ``event`` rewrites rely on it).

Readers: :func:`consumption_rows` (``recp savings``, baselines), :func:`events`,
:func:`reading_series` and :func:`export_site_dir`, which writes the ``recp simulate --csv``
layout so ``recp report`` runs on the stored readings unchanged.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEME = "sqlite:"
log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    measurement TEXT NOT NULL,
    series TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    site TEXT,
    meter TEXT,
    tags TEXT NOT NULL,
    fields TEXT NOT NULL,
    PRIMARY KEY (measurement, series, time_ms)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS points_meter ON points (measurement, site, meter, time_ms);
"""


class LineError(ValueError):
    """A line of line protocol this module cannot parse."""


def store_path(url: str, base: Path | None = None) -> Path | None:
    """``sqlite:FILE`` -> the file (relative to ``base``); None for any other URL."""
    if not url.startswith(SCHEME):
        return None
    text = url[len(SCHEME):]
    if text.startswith("//"):  # sqlite:///abs/path or sqlite://rel
        text = text[2:]
    if not text:
        raise ValueError("sqlite: needs a file name, e.g. sqlite:recp-store.sqlite")
    path = Path(text)
    return path if path.is_absolute() or base is None else base / path


# --------------------------------------------------------------------------- line protocol


def _split(text: str, sep: str, quotes: bool = True) -> list[str]:
    """Split at ``sep`` outside backslash escapes (and, with ``quotes``, double quotes)."""
    out, cur, quoted, i = [], [], False, 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
            continue
        if c == '"' and quotes:
            quoted = not quoted
        elif c == sep and not quoted:
            out.append("".join(cur))
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    out.append("".join(cur))
    return out


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in ', ="\\':
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _value(text: str) -> float | int | bool | str:
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        return _unescape(text[1:-1])
    if text in ("t", "T", "true", "True", "TRUE"):
        return True
    if text in ("f", "F", "false", "False", "FALSE"):
        return False
    if text.endswith(("i", "u")):
        return int(text[:-1])
    return float(text)


@dataclass(frozen=True)
class Point:
    measurement: str
    tags: dict[str, str]
    fields: dict[str, float | int | bool | str]
    time_ms: int

    @property
    def series(self) -> str:
        return json.dumps(sorted(self.tags.items()), separators=(",", ":"))


def parse_line(line: str) -> Point:
    """One point of line protocol (as :mod:`detectors.service.lines` writes it, time in ms)."""
    # the series part knows no quotes (a '"' in a tag is a character); fields do
    head, *rest = _split(line.strip(), " ", quotes=False)
    parts = _split(" ".join(rest), " ")
    if len(parts) != 2 or not head:
        raise LineError(f"expected 'series fields time', got {line[:120]!r}")
    body, stamp = parts
    keys = _split(head, ",", quotes=False)
    tags = {}
    for item in keys[1:]:
        k, _, v = item.partition("=")
        tags[_unescape(k)] = _unescape(v)
    fields = {}
    for item in _split(body, ","):
        k, eq, v = item.partition("=")
        if not eq:
            raise LineError(f"field without '=' in {line[:120]!r}")
        fields[_unescape(k)] = _value(v)
    try:
        return Point(_unescape(keys[0]), tags, fields, int(stamp))
    except ValueError:
        raise LineError(f"bad timestamp {stamp!r}") from None


# --------------------------------------------------------------------------- writing


class StoreWriter:
    """The service's sink backend for ``sqlite:`` (the same ``write``/``close`` as InfluxWriter)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rejected = 0
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False,
                                   isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def write(self, lines: list[str]) -> None:
        """Store the points; a line that is not line protocol is logged and skipped (as a
        database refuses it), so it cannot block the spool behind it."""
        rows = []
        for text in lines:
            try:
                p = parse_line(text)
            except ValueError as exc:
                self.rejected += 1
                log.error("store: refused a point (%s): %s", exc, text[:200])
                continue
            rows.append((p.measurement, p.series, p.time_ms, p.tags.get("site"),
                         p.tags.get("meter"), json.dumps(p.tags), json.dumps(p.fields)))
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT INTO points VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (measurement, series, time_ms) DO UPDATE SET "
                    "fields = json_patch(points.fields, excluded.fields)", rows)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()


# --------------------------------------------------------------------------- reading


class Store:
    """Read-only access to a store file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such store file")
        self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def points(self, measurement: str, *, site: str | None = None,
               meters: Iterable[str] = (), start_ms: int | None = None,
               end_ms: int | None = None) -> Iterator[Point]:
        """Points of one measurement, oldest first (optionally of one site, some meters, and
        in [start, end))."""
        sql = "SELECT measurement, tags, fields, time_ms FROM points WHERE measurement = ?"
        args: list[Any] = [measurement]
        if site is not None:
            sql += " AND site = ?"
            args.append(site)
        pick = list(meters)
        if pick:
            sql += f" AND meter IN ({','.join('?' * len(pick))})"
            args += pick
        if start_ms is not None:
            sql += " AND time_ms >= ?"
            args.append(start_ms)
        if end_ms is not None:
            sql += " AND time_ms < ?"
            args.append(end_ms)
        sql += " ORDER BY time_ms"
        for m, tags, fields, t in self._db.execute(sql, args):
            yield Point(m, json.loads(tags), json.loads(fields), int(t))

    def sites(self) -> list[str]:
        rows = self._db.execute("SELECT DISTINCT site FROM points WHERE measurement = "
                                "'reading' AND site IS NOT NULL ORDER BY site").fetchall()
        return [r[0] for r in rows]

    def count(self, measurement: str) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM points WHERE measurement = ?",
                                    (measurement,)).fetchone()[0])


def consumption_rows(store: Store, site: str, start_s: int, end_s: int,
                     meters: Iterable[str] = ()) -> list[Any]:
    """``consumption.actual`` as the rows ``recp baseline fit`` and ``recp savings`` use."""
    from .history import Row

    out = []
    for p in store.points("consumption", site=site, meters=meters, start_ms=start_s * 1000,
                          end_ms=end_s * 1000):
        value = p.fields.get("actual")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(Row(p.tags.get("meter", ""), p.time_ms // 1000, float(value),
                           p.tags.get("unit", "")))
    return out


def reading_series(store: Store, site: str, field: str, start_s: int, end_s: int
                   ) -> tuple[list[int], list[float]]:
    """(epoch seconds, values) of one ``reading`` field over every meter of a site."""
    ts, vs = [], []
    for p in store.points("reading", site=site, start_ms=start_s * 1000, end_ms=end_s * 1000):
        v = p.fields.get(field)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            ts.append(p.time_ms // 1000)
            vs.append(float(v))
    return ts, vs


def events(store: Store, site: str | None = None) -> list[dict[str, Any]]:
    """Every stored ``event`` (its last version), oldest first, as plain dicts."""
    out = []
    for p in store.points("event", site=site):
        f = p.fields
        out.append({
            "id": p.tags.get("event_id", ""), "site": p.tags.get("site", ""),
            "meter": p.tags.get("meter", ""), "resource": p.tags.get("resource", ""),
            "type": p.tags.get("type", ""), "severity": p.tags.get("severity", ""),
            "unit": p.tags.get("unit", ""), "start_s": p.time_ms / 1000.0,
            "end_s": (float(f["end_ts"]) or None) if "end_ts" in f else None,
            "open": bool(f.get("open", 0)), "excess": f.get("excess"),
            "cost": f.get("cost"), "co2_kg": f.get("co2_kg"), "score": f.get("score"),
            "explanation": f.get("explanation", ""),
        })  # fmt: skip
    return out


def _price(store: Store, site: str, meter: str) -> tuple[float | None, float | None, str]:
    """A meter's price and CO2 factor per counter unit, from its stored consumption points."""
    for p in store.points("consumption", site=site, meters=[meter]):
        a = p.fields.get("actual")
        if isinstance(a, (int, float)) and a > 0:
            cost, co2 = p.fields.get("cost"), p.fields.get("co2_kg")
            return (float(cost) / a if isinstance(cost, (int, float)) else None,
                    float(co2) / a if isinstance(co2, (int, float)) else None,
                    p.tags.get("unit", ""))
    return None, None, ""


@dataclass(frozen=True)
class Export:
    """What :func:`export_site_dir` wrote: meters, and the readings' time span (epoch s)."""

    meters: int
    start_s: int | None
    end_s: int | None


def export_site_dir(store: Store, site: str, folder: Path, *, timezone: str | None = None
                    ) -> Export:
    """Write one site's stored readings in the ``recp simulate --csv`` layout.

    One ``<meter>.csv`` (``timestamp_utc`` and every stored value field) per meter and a
    ``meters.json`` with resource, main counter and its unit, price and CO2 factor (from the
    stored consumption points). The store keeps no register rollover, so a counter that
    wraps reads as a reset here.
    """
    from collector.quantities import QUANTITIES, Kind

    from .service.pipeline import pick_counter

    folder.mkdir(parents=True, exist_ok=True)
    by_meter: dict[str, list[Point]] = {}
    for p in store.points("reading", site=site):
        by_meter.setdefault(p.tags.get("meter", ""), []).append(p)
    manifest: dict[str, dict[str, Any]] = {}
    first = last = None
    for meter, pts in sorted(by_meter.items()):
        names: list[str] = []
        for p in pts:
            for k in p.fields:
                if k in QUANTITIES and k not in names:
                    names.append(k)
        resource = pts[0].tags.get("resource", "")
        counters = [n for n in names if QUANTITIES[n].kind is Kind.COUNTER]
        counter = pick_counter(resource, counters)
        price, co2, _ = _price(store, site, meter)
        manifest[meter] = {
            "name": meter, "resource": resource, "counter": counter,
            "counter_unit": QUANTITIES[counter].unit if counter else None,
            "rollover": None, "rate": None, "max_rate": None,
            "price_per_unit": price, "co2_kg_per_unit": co2,
            "columns": [{"name": n, "unit": QUANTITIES[n].unit,
                         "kind": QUANTITIES[n].kind.value} for n in names],
        }  # fmt: skip
        with (folder / f"{meter}.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["timestamp_utc", *names])
            for p in pts:
                if p.fields.get("quality") == 2:  # an error reading holds no values
                    continue
                row = [p.fields.get(n) for n in names]
                w.writerow([_iso(p.time_ms), *("" if v is None else repr(float(v))
                                                for v in row)])
        t0, t1 = pts[0].time_ms, pts[-1].time_ms
        first = t0 if first is None else min(first, t0)
        last = t1 if last is None else max(last, t1)
    (folder / "meters.json").write_text(json.dumps(
        {"plant": site, "timezone": timezone, "meters": manifest}, indent=2) + "\n",
        encoding="utf-8")
    return Export(len(manifest), None if first is None else first // 1000,
                  None if last is None else -(-last // 1000))


def _iso(ms: int) -> str:
    import datetime as dt

    t = dt.datetime.fromtimestamp(ms / 1000.0, dt.timezone.utc)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")
