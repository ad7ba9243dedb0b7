"""Store-and-forward outbox: a reading is on disk before it is published, and stays until acked.

One SQLite file in WAL mode. Readings are appended in batches (one transaction, one fsync
per batch: the agent's writer groups every reading that arrived while the previous batch
was committing), published oldest first, and deleted only when the broker's PUBACK (or, in
``confirm: consumer`` mode, the consumer's high-water mark) says they are safe.

Durability: ``synchronous=FULL``. In WAL mode NORMAL already survives a crash of the agent
(SIGKILL, OOM), but may lose the last transactions on power loss, which is the common way
a box in a plant stops; FULL syncs the WAL on every commit, and with batched commits that
costs one fsync per batch, not per reading.

Sequence numbers are assigned here, inside the transaction that stores the reading, from a
per-meter counter kept in the same file: a committed reading always has the next number,
a crash between polling and committing leaves no gap, and deleting rows never rewinds a
counter. Row ids use AUTOINCREMENT so they are never reused and id order is commit order.

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
import contextlib
import logging
import math
import secrets
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

log = logging.getLogger("recp.outbox")
T = TypeVar("T")

TAIL_MAX = 10_000  # rows kept in memory for peek_fresh at most (a publisher far behind reads
# the database)
DEFAULT_CAP = 500_000  # about 250 MB of typical readings; 6 days of 10 meters every second

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sequences (meter TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    meter TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL,
    held INTEGER NOT NULL DEFAULT 0,
    mono_ns INTEGER,
    boot TEXT
);
CREATE INDEX IF NOT EXISTS outbox_meter_seq ON outbox (meter, seq);
CREATE TABLE IF NOT EXISTS drops (
    reason TEXT PRIMARY KEY, count INTEGER NOT NULL, first_at REAL NOT NULL, last_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS holes (
    meter TEXT PRIMARY KEY, through_seq INTEGER NOT NULL, count INTEGER NOT NULL,
    reason TEXT NOT NULL, at REAL NOT NULL
);
"""

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


@dataclass(frozen=True)
class Entry:
    """A reading to store: its meter, and how to render it once its seq is known."""

    meter: str
    render: Render = field(repr=False)
    held: bool = False  # timestamp not trustworthy yet: do not publish until released
    mono_ns: int = 0  # time.monotonic_ns() of the poll, to re-time held readings


@dataclass(frozen=True)
class Row:
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
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self.synchronous = synchronous.upper()
        self._db.execute(f"PRAGMA synchronous={self.synchronous}")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE key='stream'").fetchone()
        if row is None:
            self.stream = secrets.token_hex(6)
            self._db.execute("INSERT INTO meta VALUES ('stream', ?)", (self.stream,))
        else:
            self.stream = row[0]
        self._last_seq = dict(self._db.execute("SELECT meter, last_seq FROM sequences"))
        self._count = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        self._held = self._db.execute("SELECT COUNT(*) FROM outbox WHERE held=1").fetchone()[0]
        self._unrecorded_drops: dict[str, int] = {}
        self.holes_changed = 0  # +1 whenever the cap drops readings (see holes())
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="outbox")
        # The rows of the latest commits, kept in memory for the publisher (peek_fresh):
        # every publishable row with id >= _tail_from is in _tail, in id order. Cleared
        # whenever that could stop being true (cap drops, released or confirmed rows).
        self._tail_lock = threading.Lock()  # never held across disk I/O
        self._tail: deque[Row] = deque()
        self._tail_from = math.inf

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
            rows = []
            seqs = []
            for e in entries:
                seq = self._last_seq.get(e.meter, 0) + 1
                self._last_seq[e.meter] = seq
                topic, payload = e.render(seq)
                rows.append((e.meter, seq, topic, payload, now, int(e.held), e.mono_ns, self.boot))
                seqs.append(seq)
            changed = [(m, s) for m, s in self._last_seq.items() if before.get(m) != s]
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT INTO outbox (meter, seq, topic, payload, created, held, mono_ns, boot)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                # one writer, one transaction: AUTOINCREMENT gives consecutive ids
                last_id = self._db.execute("SELECT last_insert_rowid()").fetchone()[0]
                self._db.executemany(
                    "INSERT INTO sequences VALUES (?, ?) "
                    "ON CONFLICT (meter) DO UPDATE SET last_seq=excluded.last_seq",
                    changed,
                )
                over = self._count + len(rows) - self.cap
                if over > 0:
                    reason = f"outbox full (cap {self.cap}), oldest dropped"
                    self._record_holes(over, reason, now)
                    self._db.execute(
                        "DELETE FROM outbox WHERE id IN "
                        "(SELECT id FROM outbox ORDER BY id LIMIT ?)",
                        (over,),
                    )
                    self._record_drop(reason, over, now)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self._last_seq = before
                reason = f"not stored: {exc}"
                self._unrecorded_drops[reason] = self._unrecorded_drops.get(reason, 0) + len(rows)
                log.error("outbox write failed dropped=%d error=%s", len(rows), exc)
                return []
            if over > 0:
                self._forget_tail()
            else:
                self._remember(last_id - len(rows) + 1, rows)
            if over > 0:
                self.holes_changed += 1
                log.warning("outbox full cap=%d dropped_oldest=%d", self.cap, over)
                self._count = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
                self._held = self._db.execute(
                    "SELECT COUNT(*) FROM outbox WHERE held=1").fetchone()[0]
            else:
                self._count += len(rows)
                self._held += sum(r[5] for r in rows)
            return seqs

    def _remember(self, first_id: int, rows: list[tuple]) -> None:
        """Keep just-committed publishable rows for :meth:`peek_fresh`."""
        fresh = [Row(first_id + i, r[0], r[1], r[2], r[3]) for i, r in enumerate(rows)
                 if not r[5]]
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
            tail = self._tail
            while tail and tail[0].id <= after_id:  # taken already: not asked for again
                tail.popleft()
            self._tail_from = max(self._tail_from, after_id + 1)
            return [tail[i] for i in range(min(limit, len(tail)))]

    def _record_drop(self, reason: str, n: int, now: float) -> None:
        self._db.execute(
            "INSERT INTO drops VALUES (?, ?, ?, ?) ON CONFLICT (reason) DO UPDATE "
            "SET count=count+excluded.count, last_at=excluded.last_at",
            (reason, n, now, now),
        )

    def _record_holes(self, n: int, reason: str, now: float) -> None:
        """Per meter, the highest seq and the number of the ``n`` oldest rows (to drop)."""
        rows = self._db.execute(
            "SELECT meter, MAX(seq), COUNT(*) FROM (SELECT meter, seq FROM outbox "
            "ORDER BY id LIMIT ?) GROUP BY meter", (n,)).fetchall()
        self._db.executemany(
            "INSERT INTO holes VALUES (?, ?, ?, ?, ?) ON CONFLICT (meter) DO UPDATE SET "
            "through_seq=MAX(through_seq, excluded.through_seq), count=count+excluded.count, "
            "reason=excluded.reason, at=excluded.at",
            [(meter, seq, count, reason, now) for meter, seq, count in rows])

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
            cur = self._db.execute(
                "SELECT id, meter, seq, topic, payload FROM outbox "
                "WHERE id > ? AND held = 0 ORDER BY id LIMIT ?",
                (after_id, limit),
            )
            return [Row(*r) for r in cur]

    def delete(self, ids: Iterable[int]) -> int:
        """Forget readings the broker has acknowledged; return how many were deleted.

        Deletions commit without an fsync of their own (synchronous=NORMAL for this
        transaction): the next reading's commit syncs the WAL and with it every deletion
        before it. Power lost in between can only bring deleted readings back, and a
        reading sent twice is harmless (same stream and seq); a lost reading is not.
        """
        ranges = _ranges(sorted(set(ids)))
        if not ranges:
            return 0
        with self._tail_lock:  # below the highest deleted id, peek_fresh() says "ask the db"
            hi = ranges[-1][1]
            while self._tail and self._tail[0].id <= hi:
                self._tail.popleft()
            self._tail_from = max(self._tail_from, hi + 1)
        with self._lock:
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                n = 0
                for lo, hi in ranges:
                    n += self._db.execute(
                        "DELETE FROM outbox WHERE id BETWEEN ? AND ?", (lo, hi)
                    ).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            finally:
                self._db.execute(f"PRAGMA synchronous={self.synchronous}")
            self._count -= n
            return n

    def confirm(self, meter: str, stream: str, seq: int) -> int:
        """Forget readings of ``meter`` up to ``seq`` that a consumer has stored."""
        if stream != self.stream:
            return 0
        self._forget_tail()  # it may delete rows the tail still holds
        with self._lock:
            n: int = self._db.execute(
                "DELETE FROM outbox WHERE meter = ? AND seq <= ? AND held = 0", (meter, seq)
            ).rowcount
            self._count -= n
            return n

    def release(self, retime: Retime, now_wall: float, now_mono_ns: int,
                rate: float = 1.0) -> int:
        """Make held readings publishable, re-timing those of this boot from the monotonic
        clock (the others keep their timestamp, flagged by ``retime(payload, None)``).

        ``now_wall`` is the trusted clock's time at ``now_mono_ns``; it advances ``rate``
        seconds per monotonic second (1 for the system clock, a simulated clock's speed)."""
        with self._lock:
            if not self._held:
                return 0
            self._forget_tail()  # rows become publishable below the tail's start
            rows = self._db.execute(
                "SELECT id, payload, mono_ns, boot FROM outbox WHERE held = 1 ORDER BY id"
            ).fetchall()
            updates = []
            for rid, payload, mono_ns, boot in rows:
                when = None
                if boot == self.boot and mono_ns:
                    when = now_wall - (now_mono_ns - mono_ns) / 1e9 * rate
                updates.append((retime(payload, when), rid))
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("UPDATE outbox SET payload=?, held=0 WHERE id=?", updates)
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            self._held = 0
            return len(updates)

    # -- inspection ---------------------------------------------------------------------
    def stats(self) -> Stats:
        with self._lock:
            dropped = dict(self._db.execute("SELECT reason, count FROM drops"))
            oldest = self._db.execute(
                "SELECT created FROM outbox ORDER BY id LIMIT 1").fetchone()
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
        self._thread.shutdown(wait=False)  # may be called in that thread itself

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ranges(ids: list[int]) -> list[tuple[int, int]]:
    """Sorted ids -> inclusive ranges of consecutive ids."""
    out: list[tuple[int, int]] = []
    for i in ids:
        if out and i == out[-1][1] + 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out
