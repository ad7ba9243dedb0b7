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

And it keeps, in table ``replay`` and the same transaction, the readings fed to the
detectors since the last checkpoint (:class:`Replay` rows, numbered by batch): after
SIGKILL the restarted service feeds them again, batch by batch, before taking new
messages, so the detectors' state is what an uninterrupted run would have. A checkpoint
records the last row it covers; rows up to it are then forgotten.

And the alerts to publish (table ``alerts``, keyed by event id and open/close): committed
before they are queued for the broker, marked sent after its PUBACK, sent again after a
restart until then. A replay deriving the same transition again finds its key and adds
nothing; sent rows are forgotten with the replay rows they came from.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

# site, meter, stream, done, seqs above, ranges given up (SeqTracker.skip_to)
Mark = tuple[str, str, str, int, Sequence[int], Sequence[Sequence[int]]]
# site, meter, resource, ts_s, values as JSON, feed (PIPELINE | INPUT)
Replay = tuple[str, str, str, float, str, int]
PIPELINE, INPUT = 1, 2


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
        if "gaps" not in {r[1] for r in self._db.execute("PRAGMA table_info(seen)")}:
            self._db.execute("ALTER TABLE seen ADD COLUMN gaps TEXT NOT NULL DEFAULT '[]'")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS replay (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "batch INTEGER NOT NULL, site TEXT, meter TEXT, resource TEXT, ts REAL, "
            "vals TEXT, feed INTEGER)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS alerts (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "key TEXT NOT NULL UNIQUE, topic TEXT NOT NULL, payload BLOB NOT NULL, "
            "qos INTEGER NOT NULL, replay INTEGER NOT NULL, sent INTEGER NOT NULL DEFAULT 0)"
        )
        self._depth = int(self._db.execute("SELECT COUNT(*) FROM points").fetchone()[0])
        # the newest replay row ever committed (AUTOINCREMENT's counter: rows forgotten
        # after a checkpoint still count)
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'replay'"
                               ).fetchone()
        self.replay_last = int(row[0]) if row else 0
        self._batch = int(self._db.execute("SELECT MAX(batch) FROM replay").fetchone()[0]
                          or 0)

    @property
    def depth(self) -> int:
        return self._depth

    def append(self, lines: Sequence[str], marks: Iterable[Mark] = (),
               replay: Sequence[Replay] = ()) -> None:
        """Commit ``lines``, the streams' dedup ``marks`` and the batch's ``replay`` rows
        durably (one transaction); drop the oldest points beyond ``cap``."""
        rows = [(site, meter, stream, done, json.dumps(sorted(above)), json.dumps(gaps))
                for site, meter, stream, done, above, gaps in marks]
        if not lines and not rows and not replay:
            return
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT INTO points(line) VALUES (?)", ((x,) for x in lines))
                db.executemany("INSERT OR REPLACE INTO seen(site, meter, stream, done, above, "
                               "gaps) VALUES (?, ?, ?, ?, ?, ?)", rows)
                if replay:
                    batch = self._batch + 1
                    db.executemany(
                        "INSERT INTO replay(batch, site, meter, resource, ts, vals, feed) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)", ((batch, *r) for r in replay))
                    last = int(db.execute("SELECT MAX(id) FROM replay").fetchone()[0])
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
            if replay:
                self._batch, self.replay_last = batch, last

    def replay_rows(self, after_id: int) -> list[list[Replay]]:
        """The replay rows newer than ``after_id``, in order, one list per batch."""
        with self._lock:
            rows = self._db.execute(
                "SELECT batch, site, meter, resource, ts, vals, feed FROM replay "
                "WHERE id > ? ORDER BY id", (after_id,)).fetchall()
        out: list[list[Replay]] = []
        last = None
        for batch, site, meter, resource, ts, vals, feed in rows:
            if batch != last:
                out.append([])
                last = batch
            out[-1].append((str(site), str(meter), str(resource), float(ts), str(vals),
                            int(feed)))
        return out

    def replay_ids_above(self, last_id: int) -> None:
        """Number new replay rows above ``last_id`` (a checkpoint of another spool file)."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM sqlite_sequence WHERE name = 'replay'")
            db.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('replay', ?)",
                       (max(last_id, self.replay_last),))
            db.execute("COMMIT")
            self.replay_last = max(last_id, self.replay_last)

    def forget_replay(self, through_id: int) -> None:
        """Drop the replay rows a saved checkpoint covers (id <= ``through_id``), and the
        sent alerts derived from them (no replay can derive those again)."""
        with self._lock:
            self._db.execute("DELETE FROM replay WHERE id <= ?", (through_id,))
            self._db.execute("DELETE FROM alerts WHERE sent = 1 AND replay <= ?",
                             (through_id,))

    def add_alerts(self, alerts: Sequence[tuple[str, str, bytes, int]]) -> list[int | None]:
        """Commit alerts to publish, ``(key, topic, payload, qos)``; one whose key is known
        (derived again by a replay) is left out. Each one's row id, None when left out."""
        out: list[int | None] = []
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for key, topic, payload, qos in alerts:
                    cur = db.execute(
                        "INSERT OR IGNORE INTO alerts(key, topic, payload, qos, replay) "
                        "VALUES (?, ?, ?, ?, ?)", (key, topic, payload, qos, self.replay_last))
                    out.append(int(cur.lastrowid) if cur.rowcount == 1 and cur.lastrowid
                               else None)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return out

    def unsent_alerts(self) -> list[tuple[int, str, bytes, int]]:
        """Alerts committed but not yet PUBACKed by the broker, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload, qos FROM alerts "
                                    "WHERE sent = 0 ORDER BY id").fetchall()
        return [(int(i), str(t), bytes(p), int(q)) for i, t, p, q in rows]

    def alert_sent(self, alert_id: int) -> None:
        """The broker has the alert (PUBACK): not sent again."""
        with self._lock:
            self._db.execute("UPDATE alerts SET sent = 1 WHERE id = ?", (alert_id,))

    def alert_keys(self) -> dict[str, bool]:
        """Every alert kept, key -> sent (tests and diagnosis)."""
        with self._lock:
            rows = self._db.execute("SELECT key, sent FROM alerts ORDER BY id").fetchall()
        return {str(k): bool(v) for k, v in rows}

    def marks(self) -> list[list[Any]]:
        """Every stream's dedup marks as last committed, in :meth:`SeqTracker.snapshot` form."""
        with self._lock:
            rows = self._db.execute("SELECT site, meter, stream, done, above, gaps FROM seen")
            return [[site, meter, stream, int(done), json.loads(above), json.loads(gaps)]
                    for site, meter, stream, done, above, gaps in rows]

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
