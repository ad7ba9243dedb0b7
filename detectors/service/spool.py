"""The on-disk point spool: line-protocol points wait here until the database has them.

SQLite in WAL mode with ``synchronous=FULL``: a committed batch survives a crash or power
loss, so an MQTT message is acknowledged only after its points are in. Points leave in
insertion order (``peek`` then ``delete_through``), so a database outage delays writes but
never reorders them. The spool is bounded: the service pauses intake before ``cap`` (the
broker then holds the readings); :meth:`append` still enforces the cap as a last resort by
dropping the oldest points, counted in ``dropped``.

The spool also keeps the dedup marks (:class:`~.dedup.SeqTracker`) of the streams a batch
touched, committed in the same transaction as its points: what the broker was told is
stored (PUBACK) is then also known as seen after a crash, however old the checkpoint.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

Mark = tuple[str, str, str, int, Sequence[int]]  # site, meter, stream, done, seqs above


class Spool:
    def __init__(self, path: str | Path, cap: int, synchronous: str = "FULL") -> None:
        if cap < 1:
            raise ValueError(f"cap must be >= 1 point, got {cap}")
        self.path = Path(path)
        self.cap = cap
        self.dropped = 0
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'FULL' else 'NORMAL'}")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS points (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "line TEXT NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seen (site TEXT, meter TEXT, stream TEXT, "
            "done INTEGER NOT NULL, above TEXT NOT NULL, PRIMARY KEY (site, meter, stream))"
        )
        self._depth = int(self._db.execute("SELECT COUNT(*) FROM points").fetchone()[0])

    @property
    def depth(self) -> int:
        return self._depth

    def append(self, lines: Sequence[str], marks: Iterable[Mark] = ()) -> None:
        """Commit ``lines`` and the streams' dedup ``marks`` durably (one transaction);
        drop the oldest points beyond ``cap``."""
        rows = [(site, meter, stream, done, json.dumps(sorted(above)))
                for site, meter, stream, done, above in marks]
        if not lines and not rows:
            return
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT INTO points(line) VALUES (?)", ((x,) for x in lines))
                db.executemany("INSERT OR REPLACE INTO seen VALUES (?, ?, ?, ?, ?)", rows)
                over = self._depth + len(lines) - self.cap
                if over > 0:
                    db.execute(
                        "DELETE FROM points WHERE id IN (SELECT id FROM points ORDER BY id "
                        "LIMIT ?)", (over,),
                    )  # fmt: skip
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            if over > 0:
                self.dropped += over
            self._depth += len(lines) - max(over, 0)

    def marks(self) -> list[list[Any]]:
        """Every stream's dedup marks as last committed, in :meth:`SeqTracker.snapshot` form."""
        with self._lock:
            rows = self._db.execute("SELECT site, meter, stream, done, above FROM seen")
            return [[site, meter, stream, int(done), json.loads(above)]
                    for site, meter, stream, done, above in rows]

    def peek(self, n: int) -> list[tuple[int, str]]:
        """The oldest ``n`` points as (id, line), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, line FROM points ORDER BY id LIMIT ?", (n,)
            ).fetchall()
        return [(int(i), str(line)) for i, line in rows]

    def delete_through(self, last_id: int) -> int:
        """Forget every point with id <= ``last_id`` (written); returns how many."""
        with self._lock:
            cur = self._db.execute("DELETE FROM points WHERE id <= ?", (last_id,))
            n = cur.rowcount
            self._depth -= n
        return n

    def close(self) -> None:
        with self._lock:
            self._db.close()
