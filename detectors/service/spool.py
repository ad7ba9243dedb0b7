"""The on-disk point spool: line-protocol points wait here until the database has them.

SQLite in WAL mode with ``synchronous=FULL``: a committed batch survives a crash or power
loss, so an MQTT message is acknowledged only after its points are in. Points leave in
insertion order (``peek`` then ``delete_through``), so a database outage delays writes but
never reorders them. The spool is bounded: the service pauses intake before ``cap`` (the
broker then holds the readings); :meth:`append` still enforces the cap as a last resort by
dropping the oldest points, counted in ``dropped``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path


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
        self._depth = int(self._db.execute("SELECT COUNT(*) FROM points").fetchone()[0])

    @property
    def depth(self) -> int:
        return self._depth

    def append(self, lines: Sequence[str]) -> None:
        """Commit ``lines`` durably (one transaction); drop the oldest beyond ``cap``."""
        if not lines:
            return
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT INTO points(line) VALUES (?)", ((x,) for x in lines))
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
