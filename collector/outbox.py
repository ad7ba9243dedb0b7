"""Store-and-forward outbox: a reading is on disk before it is published, and stays until acked.

One SQLite file in WAL mode. Readings are appended in batches (one transaction, one fsync
per batch: the agent's writer groups the readings of a poll cycle), published oldest
first, and deleted only when the broker's PUBACK (or, in ``confirm: consumer`` mode, the
consumer's high-water mark) says they are safe.

Storage: one row of the ``cycles`` table per batch of an append, holding all its readings
(meters, seqs, topics and payload offsets as JSON arrays, the payloads as one blob). A
reading's id is its cycle's ``first_id`` plus its index, so ids stay per reading, in commit
order, never reused. A cycle row is deleted once every reading in it is acknowledged;
readings acknowledged while others of their cycle are not are remembered in memory (after
a crash they are sent again: harmless, same stream and seq). The cap drops readings from
the oldest cycle's front (``start``). One insert and one delete per cycle instead of per
reading: about a third of the outbox thread's CPU (docs/decisions.md). The view ``outbox``
shows one row per reading on disk for people and tests; a file written by the agent before
(a table ``outbox``, one row per reading) is converted on open, ids and seqs unchanged.

Durability: ``synchronous=FULL``. In WAL mode NORMAL already survives a crash of the agent
(SIGKILL, OOM), but may lose the last transactions on power loss, which is the common way
a box in a plant stops; FULL syncs the WAL on every commit, and with batched commits that
costs one fsync per batch, not per reading.

Sequence numbers are assigned here, inside the transaction that stores the reading, from a
per-meter counter kept in the same file: a committed reading always has the next number,
a crash between polling and committing leaves no gap, and deleting rows never rewinds a
counter. Reading ids come from a counter in ``meta`` (``next_id``), so they are never
reused and id order is commit order.

The outbox is bounded (``cap`` readings). When full it drops the oldest readings first,
counts them per reason in the ``drops`` table and logs it: newest data is worth more on a
dashboard, and the gap shows downstream as missing sequence numbers. Per meter the
``holes`` table keeps the highest seq dropped and how many (:meth:`Outbox.holes`), which
the publisher announces to consumers (``recp/v1/{site}/{meter}/dropped``), so they need
not wait for readings that will never come.

All methods are synchronous and thread-safe (one connection behind a lock); the agent calls
them through :meth:`Outbox.call`, in the outbox's own worker thread, so disk waits never
block the event loop (one thread: the lock serialises the calls anyway, and one thread
costs fewer wake-ups and switches than the default pool).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fcntl
import itertools
import json
import logging
import math
import secrets
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple, TypeVar

log = logging.getLogger("recp.outbox")
T = TypeVar("T")

TAIL_MAX = 10_000  # rows kept in memory for peek_fresh at most (a publisher far behind reads
# the database)
DEFAULT_CAP = 500_000  # about 250 MB of typical readings; 6 days of 10 meters every second

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- the last seq of each meter whose readings are all deleted; the view sequences has them all
CREATE TABLE IF NOT EXISTS seq_base (meter TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cycles (
    first_id INTEGER PRIMARY KEY,  -- its readings have ids first_id .. first_id + n - 1
    n INTEGER NOT NULL,
    start INTEGER NOT NULL DEFAULT 0,  -- readings before this index were dropped (cap)
    meters TEXT NOT NULL,  -- JSON arrays, one item per reading
    seqs TEXT NOT NULL,
    topics TEXT NOT NULL,
    lasts TEXT NOT NULL,  -- JSON object: each meter's last seq in this cycle
    offsets TEXT NOT NULL,  -- n + 1 byte offsets into payloads
    payloads BLOB NOT NULL,
    created REAL NOT NULL,
    held INTEGER NOT NULL DEFAULT 0,
    monos TEXT,  -- JSON array of time.monotonic_ns() per reading (held cycles only)
    boot TEXT
);
CREATE TABLE IF NOT EXISTS drops (
    reason TEXT PRIMARY KEY, count INTEGER NOT NULL, first_at REAL NOT NULL, last_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS holes (
    meter TEXT PRIMARY KEY, through_seq INTEGER NOT NULL, count INTEGER NOT NULL,
    reason TEXT NOT NULL, at REAL NOT NULL
);
"""
# one row per reading on disk, for people (sqlite3 outbox.sqlite 'SELECT ...') and tests
_VIEW = """
CREATE VIEW IF NOT EXISTS outbox AS
SELECT c.first_id + j.key AS id, j.value AS meter,
       json_extract(c.seqs, '$[' || j.key || ']') AS seq,
       json_extract(c.topics, '$[' || j.key || ']') AS topic,
       substr(c.payloads, 1 + json_extract(c.offsets, '$[' || j.key || ']'),
              json_extract(c.offsets, '$[' || (j.key + 1) || ']')
              - json_extract(c.offsets, '$[' || j.key || ']')) AS payload,
       c.created AS created, c.held AS held,
       json_extract(c.monos, '$[' || j.key || ']') AS mono_ns, c.boot AS boot
FROM cycles AS c, json_each(c.meters) AS j WHERE j.key >= c.start;
CREATE VIEW IF NOT EXISTS sequences AS
SELECT meter, MAX(last_seq) AS last_seq FROM (
    SELECT meter, last_seq FROM seq_base
    UNION ALL SELECT j.key, j.value FROM cycles AS c, json_each(c.lasts) AS j
) GROUP BY meter;
"""
_CYCLE_MAX = 1000  # readings per cycle row at most when converting an old outbox

# seq -> (topic, payload)
Render = Callable[[int], tuple[str, bytes]]
# (payload, corrected epoch seconds or None when it cannot be corrected) -> payload
Retime = Callable[[bytes, "float | None"], bytes]


def boot_id() -> str:
    """Identity of this boot (Linux); monotonic clock readings compare only within one."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


class Entry(NamedTuple):
    """A reading to store: its meter, and how to render it once its seq is known.

    Entry and Row are named tuples (immutable like a frozen dataclass, a third of its
    cost to make): one of each is made per reading."""

    meter: str
    render: Render
    held: bool = False  # timestamp not trustworthy yet: do not publish until released
    mono_ns: int = 0  # time.monotonic_ns() of the poll, to re-time held readings


class Row(NamedTuple):
    """A stored reading, as the publisher sends it."""

    id: int
    meter: str
    seq: int
    topic: str
    payload: bytes


@dataclass(frozen=True)
class Hole:
    """Readings of one meter dropped by the cap: every seq up to ``through_seq`` is gone
    or was sent before; ``count`` dropped in all (this outbox's stream)."""

    meter: str
    through_seq: int
    count: int
    reason: str
    at: float


@dataclass(frozen=True)
class Stats:
    depth: int
    held: int
    cap: int
    dropped: dict[str, int]
    oldest_created: float | None


class _Cycle:
    """What the outbox keeps in memory of one ``cycles`` row."""

    __slots__ = ("acked", "first", "held", "n", "start")

    def __init__(self, first: int, n: int, start: int, held: bool):
        self.first = first
        self.n = n
        self.start = start  # readings before this index were dropped by the cap
        self.held = held
        self.acked: set[int] = set()  # indexes >= start acknowledged (row not deleted yet)

    @property
    def live(self) -> int:
        return self.n - self.start - len(self.acked)


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


class Outbox:
    """The SQLite outbox (see the module docstring). ``with Outbox(path) as box: ...``."""

    def __init__(self, path: str | Path, *, cap: int = DEFAULT_CAP, synchronous: str = "FULL"):
        if cap < 1:
            raise ValueError("cap must be at least 1")
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA", "OFF"):
            raise ValueError(f"unknown synchronous mode {synchronous!r}")
        self.path = Path(path)
        self.cap = cap
        self.boot = boot_id()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._owner = _claim(self.path)
        self._lock = threading.Lock()
        self.synchronous = synchronous.upper()
        try:  # a failed open frees the file at once, not when garbage collected
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            try:
                self._load()
            except BaseException:
                self._db.close()
                raise
        except BaseException:
            self._owner.close()
            raise
        self._unrecorded_drops: dict[str, int] = {}
        # meter -> first_id from which confirm() reads: none of the meter's publishable
        # readings in cycle rows before it is left (only confirm() and release() change
        # it, with the lock held)
        self._confirmed: dict[str, int] = {}
        self._release_failing = False  # the last release failed (logged once per streak)
        self.holes_changed = 0  # +1 whenever the cap drops readings (see holes())
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="outbox")
        # The rows of the latest commits, kept in memory for the publisher (peek_fresh):
        # every publishable row with id >= _tail_from is in _tail, in id order. Cleared
        # whenever that could stop being true (cap drops, released or confirmed rows).
        self._tail_lock = threading.Lock()  # never held across disk I/O
        self._tail: deque[Row] = deque()
        self._tail_from = math.inf

    def _load(self) -> None:
        """Set the file up (WAL, schema, conversion of an older one) and read what the
        outbox keeps in memory: stream, counters, cycle index."""
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={self.synchronous}")
        self._db.executescript(_SCHEMA)
        kinds = dict(self._db.execute(
            "SELECT name, type FROM sqlite_master WHERE name IN ('outbox', 'sequences')"))
        if "table" in kinds.values():
            self._convert(kinds)
        self._db.executescript(_VIEW)
        row = self._db.execute("SELECT value FROM meta WHERE key='stream'").fetchone()
        if row is None:
            self.stream = secrets.token_hex(6)
            self._db.execute("INSERT INTO meta VALUES ('stream', ?)", (self.stream,))
        else:
            self.stream = row[0]
        self._last_seq = dict(self._db.execute("SELECT meter, last_seq FROM sequences"))
        self._base = dict(self._db.execute("SELECT meter, last_seq FROM seq_base"))
        self._cycles: dict[int, _Cycle] = {}  # first_id -> its cycle
        self._order: list[int] = []  # first_ids, ascending
        for first, n, start, held in self._db.execute(
                "SELECT first_id, n, start, held FROM cycles ORDER BY first_id"):
            self._cycles[first] = _Cycle(first, n, start, bool(held))
            self._order.append(first)
        row = self._db.execute("SELECT value FROM meta WHERE key='next_id'").fetchone()
        last = self._cycles[self._order[-1]] if self._order else None
        self._next_id = max(int(row[0]) if row else 1, last.first + last.n if last else 1)
        self._count = sum(c.live for c in self._cycles.values())
        self._held = sum(c.live for c in self._cycles.values() if c.held)

    def _convert(self, kinds: dict[str, str]) -> None:
        """An outbox written before cycle rows (table ``outbox``, one row per reading, and
        table ``sequences``): its readings become cycle rows with the same ids, seqs and
        payloads, in one transaction (a crash in between leaves the old file as it was)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        rows: list[tuple] = []
        groups: list[list[tuple]] = []
        try:
            if kinds.get("sequences") == "table":
                if "lasts" not in {c[1] for c in db.execute("PRAGMA table_info(cycles)")}:
                    # the first cycle rows: their meters' last seqs are all in sequences,
                    # which becomes seq_base, so the view sequences needs none from them
                    db.execute("ALTER TABLE cycles ADD COLUMN lasts TEXT NOT NULL DEFAULT '{}'")
                db.execute("INSERT INTO seq_base SELECT meter, last_seq FROM sequences WHERE "
                           "true ON CONFLICT (meter) DO UPDATE SET last_seq = "
                           "MAX(last_seq, excluded.last_seq)")
                db.execute("DROP TABLE sequences")
            if kinds.get("outbox") != "table":
                db.execute("COMMIT")
                return
            rows = db.execute(
                "SELECT id, meter, seq, topic, payload, created, held, mono_ns, boot "
                "FROM outbox ORDER BY id").fetchall()
            counter = db.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            for r in rows:
                g = groups[-1] if groups else None
                if (g is None or r[0] != g[-1][0] + 1 or len(g) >= _CYCLE_MAX
                        or (r[6], r[8]) != (g[0][6], g[0][8])):
                    groups.append([r])
                else:
                    g.append(r)
            db.executemany(
                "INSERT INTO cycles (first_id, n, meters, seqs, topics, lasts, offsets, "
                "payloads, created, held, monos, boot) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_cycle_values(g[0][0], [r[1] for r in g], [r[2] for r in g],
                               [r[3] for r in g], [bytes(r[4]) for r in g], g[0][5],
                               bool(g[0][6]), [r[7] or 0 for r in g], g[0][8])
                 for g in groups])
            next_id = max(counter[0] if counter else 0, rows[-1][0] if rows else 0) + 1
            db.execute("INSERT INTO meta VALUES ('next_id', ?) ON CONFLICT (key) DO UPDATE "
                       "SET value = excluded.value", (str(next_id),))
            db.execute("DROP INDEX IF EXISTS outbox_meter_seq")
            db.execute("DROP TABLE outbox")
            db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        log.info("outbox converted to cycle rows readings=%d cycles=%d", len(rows),
                 len(groups))

    def call(self, fn: Callable[..., T], *args: object) -> asyncio.Future[T]:
        """``fn(*args)`` (a method of this outbox) in the outbox's worker thread, awaitable
        from the event loop; a future, not a task, so reading ahead costs little."""
        return asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    # -- writing ------------------------------------------------------------------------
    def append(self, entries: Sequence[Entry]) -> list[int]:
        """Store readings in one transaction; return their sequence numbers.

        If the write fails (disk full, I/O error) nothing is stored, the readings are
        counted as dropped with the error as reason, and an empty list is returned.
        """
        if not entries:
            return []
        now = time.time()
        with self._lock:
            before = dict(self._last_seq)
            base = self._base
            last_seq = self._last_seq
            meters, seqs, topics, payloads = [], [], [], []
            try:
                for e in entries:
                    seq = last_seq.get(e.meter, 0) + 1
                    last_seq[e.meter] = seq
                    topic, payload = e.render(seq)
                    meters.append(e.meter)
                    seqs.append(seq)
                    topics.append(topic)
                    payloads.append(payload)
            except BaseException:  # a renderer's bug: no seq consumed, the caller sees it
                self._last_seq = before
                raise
            # one cycle row per run of readings held alike (in practice: all of them)
            runs, lo = [], 0
            for i in range(1, len(entries) + 1):
                if i == len(entries) or entries[i].held != entries[lo].held:
                    runs.append((lo, i, entries[lo].held))
                    lo = i
            first = self._next_id
            new: list[_Cycle] = []
            over = self._count + len(seqs) - self.cap
            try:
                values = []
                for lo, hi, held in runs:
                    monos = [e.mono_ns for e in entries[lo:hi]] if held else None
                    values.append(_cycle_values(
                        first + lo, meters[lo:hi], seqs[lo:hi], topics[lo:hi],
                        payloads[lo:hi], now, held, monos, self.boot))
                    new.append(_Cycle(first + lo, hi - lo, 0, held))
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT INTO cycles (first_id, n, meters, seqs, topics, lasts, offsets,"
                    " payloads, created, held, monos, boot)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    values)
                self._db.execute(
                    "INSERT INTO meta VALUES ('next_id', ?) ON CONFLICT (key) DO UPDATE "
                    "SET value = excluded.value", (str(first + len(seqs)),))
                plan: list[tuple[_Cycle, int, bool]] = []
                if over > 0:
                    reason = f"outbox full (cap {self.cap}), oldest dropped"
                    plan = self._drop_oldest(over, new, reason, now)
                    self._record_drop(reason, over, now)
                self._db.execute("COMMIT")
            except (sqlite3.Error, TypeError) as exc:  # TypeError: a payload not bytes
                self._rollback()
                self._last_seq = before
                self._base = base
                reason = f"not stored: {exc}"
                self._unrecorded_drops[reason] = self._unrecorded_drops.get(reason, 0) + len(seqs)
                log.error("outbox write failed dropped=%d error=%s", len(seqs), exc)
                return []
            except BaseException:  # nothing stored: no seq consumed
                self._rollback()
                self._last_seq = before
                self._base = base
                raise
            self._next_id = first + len(seqs)
            for c in new:
                self._cycles[c.first] = c
                self._order.append(c.first)
            if over > 0:
                self._apply_drops(plan)
                self._forget_tail()
                self.holes_changed += 1
                log.warning("outbox full cap=%d dropped_oldest=%d", self.cap, over)
            else:
                self._count += len(seqs)
                self._held += sum(c.n for c in new if c.held)
                self._remember(first, runs, meters, seqs, topics, payloads)
            return seqs

    def _drop_oldest(self, over: int, new: list[_Cycle], reason: str, now: float
                     ) -> list[tuple[_Cycle, int, bool]]:
        """In the open transaction: drop the ``over`` oldest readings not yet acknowledged
        (held or not, the cycles just inserted last), record them per meter in ``holes``;
        the in-memory changes to make after the commit: (cycle, its new start, gone)."""
        plan = []
        holes: dict[str, list[int]] = {}
        left = over
        for c in [self._cycles[f] for f in self._order] + new:
            if not left:
                break
            meters_t, seqs_t = self._db.execute(
                "SELECT meters, seqs FROM cycles WHERE first_id = ?", (c.first,)).fetchone()
            meters, seqs = json.loads(meters_t), json.loads(seqs_t)
            i = c.start
            while i < c.n and left:
                if i not in c.acked:
                    h = holes.setdefault(meters[i], [0, 0])
                    h[0] = max(h[0], seqs[i])
                    h[1] += 1
                    left -= 1
                i += 1
            gone = not any(j not in c.acked for j in range(i, c.n))
            if gone:
                self._db.execute("DELETE FROM cycles WHERE first_id = ?", (c.first,))
            else:
                self._db.execute("UPDATE cycles SET start = ? WHERE first_id = ?",
                                 (i, c.first))
            plan.append((c, i, gone))
        if any(gone for *_, gone in plan):
            self._save_base()
        self._db.executemany(
            "INSERT INTO holes VALUES (?, ?, ?, ?, ?) ON CONFLICT (meter) DO UPDATE SET "
            "through_seq=MAX(through_seq, excluded.through_seq), count=count+excluded.count, "
            "reason=excluded.reason, at=excluded.at",
            [(meter, seq, count, reason, now) for meter, (seq, count) in holes.items()])
        return plan

    def _save_base(self) -> None:
        """In the open transaction that deletes cycle rows: the meters' last seqs, which
        those rows may have been the only record of, into ``seq_base``. ``self._base``
        is a new dict, so a rollback restores the old one."""
        changed = [(m, s) for m, s in self._last_seq.items() if self._base.get(m) != s]
        if changed:
            self._db.executemany(
                "INSERT INTO seq_base VALUES (?, ?) "
                "ON CONFLICT (meter) DO UPDATE SET last_seq = excluded.last_seq", changed)
            self._base = self._base | dict(changed)

    def _apply_drops(self, plan: list[tuple[_Cycle, int, bool]]) -> None:
        for c, start, gone in plan:
            if gone:
                self._forget_cycle(c)
            else:
                c.start = start
                c.acked = {j for j in c.acked if j >= start}
        self._count = sum(c.live for c in self._cycles.values())
        self._held = sum(c.live for c in self._cycles.values() if c.held)

    def _forget_cycle(self, c: _Cycle) -> None:
        if self._cycles.pop(c.first, None) is not None:
            k = bisect.bisect_left(self._order, c.first)
            del self._order[k]

    def _remember(self, first_id: int, runs: list[tuple[int, int, bool]], meters: list[str],
                  seqs: list[int], topics: list[str], payloads: list[bytes]) -> None:
        """Keep just-committed publishable rows for :meth:`peek_fresh`."""
        fresh = [Row(first_id + i, meters[i], seqs[i], topics[i], payloads[i])
                 for lo, hi, held in runs if not held for i in range(lo, hi)]
        with self._tail_lock:
            if len(self._tail) + len(fresh) > TAIL_MAX:
                self._tail.clear()
                self._tail_from = math.inf
            if self._tail_from == math.inf and not self._tail:
                self._tail_from = first_id  # complete from here on
            self._tail.extend(fresh)

    def _forget_tail(self) -> None:
        with self._tail_lock:
            self._tail.clear()
            self._tail_from = math.inf

    def peek_fresh(self, after_id: int, limit: int) -> list[Row] | None:
        """What :meth:`peek` would return, from memory, when every publishable row after
        ``after_id`` was committed since the publisher caught up (the steady state: it
        reads what the writer has just committed); None when the database must be asked.
        Never waits for the disk, so the event loop may call it directly."""
        with self._tail_lock:
            if after_id + 1 < self._tail_from:
                return None
            self._trim_tail(after_id)  # taken already: not asked for again
            return list(itertools.islice(self._tail, limit))

    def _trim_tail(self, through_id: int) -> None:
        """Drop the tail's rows up to ``through_id``: it starts after it (lock held)."""
        tail = self._tail
        while tail and tail[0].id <= through_id:
            tail.popleft()
        self._tail_from = max(self._tail_from, through_id + 1)

    def _record_drop(self, reason: str, n: int, now: float) -> None:
        self._db.execute(
            "INSERT INTO drops VALUES (?, ?, ?, ?) ON CONFLICT (reason) DO UPDATE "
            "SET count=count+excluded.count, last_at=excluded.last_at",
            (reason, n, now, now),
        )

    def holes(self) -> list[Hole]:
        """Every meter's readings dropped by the cap so far (this outbox's stream)."""
        with self._lock:
            return [Hole(*r) for r in self._db.execute(
                "SELECT meter, through_seq, count, reason, at FROM holes ORDER BY meter")]

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # no transaction was open
            self._db.execute("ROLLBACK")

    # -- reading and acknowledging ------------------------------------------------------
    def peek(self, after_id: int = 0, limit: int = 100) -> list[Row]:
        """Oldest publishable readings with ``id > after_id``, in commit order."""
        with self._lock:
            k = bisect.bisect_right(self._order, after_id) - 1
            lo = self._order[k] if k >= 0 else 0
            out: list[Row] = []
            cur = self._db.execute(
                "SELECT first_id, meters, seqs, topics, offsets, payloads FROM cycles "
                "WHERE first_id >= ? AND held = 0 ORDER BY first_id", (lo,))
            try:
                for first, meters_t, seqs_t, topics_t, offsets_t, blob in cur:
                    if len(out) >= limit:
                        break
                    c = self._cycles[first]
                    meters, seqs = json.loads(meters_t), json.loads(seqs_t)
                    topics, offsets = json.loads(topics_t), json.loads(offsets_t)
                    for i in range(max(c.start, after_id + 1 - first), c.n):
                        if i in c.acked:
                            continue
                        out.append(Row(first + i, meters[i], seqs[i], topics[i],
                                       blob[offsets[i]:offsets[i + 1]]))
                        if len(out) >= limit:
                            break
            finally:
                cur.close()  # an unfinished SELECT would hold a read transaction open
            return out

    def delete(self, ids: Iterable[int]) -> int:
        """Forget readings the broker has acknowledged; return how many were deleted.

        A cycle row goes once all its readings are acknowledged; until then they are
        marked in memory (a restart sends them again: harmless, same stream and seq).
        Deletions commit without an fsync of their own (synchronous=NORMAL for this
        transaction): the next reading's commit syncs the WAL and with it every deletion
        before it. Power lost in between can only bring deleted readings back, and a
        reading sent twice is harmless (same stream and seq); a lost reading is not. If the
        deletion fails (disk full, I/O error) it raises and nothing is marked: the readings
        are published again and deleted on their next acknowledgement.
        """
        wanted = sorted(set(ids))
        if not wanted:
            return 0
        with self._tail_lock:  # below the highest deleted id, peek_fresh() says "ask the db"
            self._trim_tail(wanted[-1])
        with self._lock:
            return self._delete(wanted)

    def _delete(self, wanted: list[int]) -> int:
        """:meth:`delete` of sorted ids, with the lock held."""
        order, cycles = self._order, self._cycles
        n = held = 0
        gone: list[_Cycle] = []
        marked: list[tuple[_Cycle, int]] = []  # unmarked again if the deletion fails
        c: _Cycle | None = None
        for i in wanted:
            if c is None or not c.first <= i < c.first + c.n:
                k = bisect.bisect_right(order, i) - 1
                if k < 0:
                    continue
                c = cycles[order[k]]
            idx = i - c.first
            if idx >= c.n or idx < c.start or idx in c.acked:
                continue
            c.acked.add(idx)
            marked.append((c, idx))
            n += 1
            held += c.held
            if c.start + len(c.acked) == c.n:
                gone.append(c)
        if gone:
            self._db.execute("PRAGMA synchronous=NORMAL")
            base = self._base
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany("DELETE FROM cycles WHERE first_id = ?",
                                         [(c.first,) for c in gone])
                    self._save_base()
                    self._db.execute("COMMIT")
                except BaseException:
                    # nothing deleted: the readings stay as on disk (sent again, deleted
                    # on their next ack), not marked as if gone with the depth unchanged
                    self._base = base
                    self._rollback()
                    for m, idx in marked:
                        m.acked.discard(idx)
                    raise
            finally:
                self._db.execute(f"PRAGMA synchronous={self.synchronous}")
            for c in gone:
                self._forget_cycle(c)
        self._count -= n
        self._held -= held
        return n

    def confirm(self, meter: str, stream: str, seq: int) -> int:
        """Forget readings of ``meter`` up to ``seq`` that a consumer has stored.

        A meter's seqs grow with the id, so its confirmed readings are the front of its
        readings in id order: the cycle rows are read from where its last confirmation
        stopped (its cursor) to the first one holding a later seq, not all of them; each
        confirmation costs about the rows it confirms, however deep the outbox."""
        if stream != self.stream:
            return 0
        self._forget_tail()  # it may delete rows the tail still holds
        quoted = json.dumps(meter)
        with self._lock:
            ids = []
            stop = self._next_id  # no later reading of the meter: it resumes after them all
            cur = self._db.execute(
                "SELECT first_id, meters, seqs FROM cycles WHERE first_id >= ? AND held = 0 "
                "ORDER BY first_id", (self._confirmed.get(meter, 0),))
            try:
                for first, meters_t, seqs_t in cur:
                    if quoted not in meters_t:
                        continue
                    later = False
                    for i, (m, s) in enumerate(zip(json.loads(meters_t), json.loads(seqs_t),
                                                   strict=True)):
                        if m == meter:
                            if s > seq:
                                later = True
                                break
                            ids.append(first + i)
                    if later:
                        stop = first
                        break
            finally:
                cur.close()  # an unfinished SELECT would hold a read transaction open
            n = self._delete(ids)  # raises if it fails: the cursor stays where it was
            self._confirmed[meter] = max(stop, self._confirmed.get(meter, 0))
            return n

    def release(self, retime: Retime, now_wall: float, now_mono_ns: int,
                rate: float = 1.0) -> int:
        """Make held readings publishable, re-timing those of this boot from the monotonic
        clock (the others keep their timestamp, flagged by ``retime(payload, None)``).

        ``now_wall`` is the trusted clock's time at ``now_mono_ns``; it advances ``rate``
        seconds per monotonic second (1 for the system clock, a simulated clock's speed).
        If the rewrite fails (disk full) it is logged (once until a release works again),
        0 returned and the readings stay held: the agent tries again with its next commit."""
        with self._lock:
            if not self._held:
                return 0
            self._forget_tail()  # rows become publishable below the tail's start
            rows = self._db.execute(
                "SELECT first_id, offsets, payloads, monos, boot FROM cycles WHERE held = 1 "
                "ORDER BY first_id").fetchall()
            updates = []
            count = 0
            for first, offsets_t, blob, monos_t, boot in rows:
                c = self._cycles[first]
                offsets = json.loads(offsets_t)
                monos = json.loads(monos_t) if monos_t else [0] * c.n
                parts = []
                for i in range(c.n):
                    payload = blob[offsets[i]:offsets[i + 1]]
                    if i >= c.start and i not in c.acked:
                        when = None
                        if boot == self.boot and monos[i]:
                            when = now_wall - (now_mono_ns - monos[i]) / 1e9 * rate
                        payload = retime(payload, when)
                        count += 1
                    parts.append(payload)
                updates.append((_dumps(_offsets(parts)), b"".join(parts), first))
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "UPDATE cycles SET offsets = ?, payloads = ?, held = 0 WHERE first_id = ?",
                    updates)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:  # disk full, I/O error: still held, tried again
                self._rollback()
                if not self._release_failing:  # once per streak, not with every commit
                    log.error("outbox release failed held=%d error=%s (tried again with "
                              "every commit, logged again once it works)", self._held, exc)
                self._release_failing = True
                return 0
            except BaseException:
                self._rollback()
                raise
            if self._release_failing:
                log.warning("outbox release works again held=%d", self._held)
                self._release_failing = False
            for _, _, first in updates:
                self._cycles[first].held = False
            self._held = 0
            self._confirmed = {}  # released rows may lie before a cursor
            return count

    # -- inspection ---------------------------------------------------------------------
    def stats(self) -> Stats:
        with self._lock:
            dropped = dict(self._db.execute("SELECT reason, count FROM drops"))
            oldest = self._db.execute(
                "SELECT created FROM cycles ORDER BY first_id LIMIT 1").fetchone()
            for reason, n in self._unrecorded_drops.items():
                dropped[reason] = dropped.get(reason, 0) + n
            return Stats(self._count, self._held, self.cap, dropped,
                         oldest[0] if oldest else None)

    @property
    def depth(self) -> int:
        return self._count

    @property
    def held(self) -> int:
        return self._held

    def last_seqs(self) -> dict[str, int]:
        """Highest sequence number given to each meter so far."""
        with self._lock:
            return dict(self._last_seq)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._owner.close()
        self._thread.shutdown(wait=False)  # may be called in that thread itself

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _claim(path: Path) -> BinaryIO:
    """The outbox, locked for this process: an flock on ``<path>.lock`` beside it. Two
    agents on one file would number readings from the same counters; the second is
    refused. The kernel releases the lock when the process ends, however it ends. A file
    of its own, not the database: closing any descriptor of the database would drop the
    POSIX locks SQLite holds on it for this process's connections."""
    owner = open(path.with_name(path.name + ".lock"), "ab")  # noqa: SIM115  # until close()
    try:
        fcntl.flock(owner.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner.close()
        raise OSError(f"{path} is in use by another process (another recp agent with this "
                      "outbox? stop it, or give this one its own outbox.path)") from None
    return owner


def _offsets(payloads: Sequence[bytes]) -> list[int]:
    """Where each payload starts in their concatenation, and where the last one ends."""
    out = [0]
    end = 0
    for p in payloads:
        end += len(p)
        out.append(end)
    return out


def _cycle_values(first: int, meters: list[str], seqs: list[int], topics: list[str],
                  payloads: list[bytes], created: float, held: bool,
                  monos: list[int] | None, boot: str) -> tuple:
    """A ``cycles`` row's values, in the order of its INSERT."""
    return (first, len(meters), _dumps(meters), _dumps(seqs), _dumps(topics),
            _dumps(dict(zip(meters, seqs, strict=True))), _dumps(_offsets(payloads)),
            b"".join(payloads), created, int(held),
            _dumps(monos) if held and monos is not None else None, boot)

