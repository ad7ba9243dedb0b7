"""The on-disk point spool: line-protocol points wait here until the database has them.

SQLite in WAL mode with ``synchronous=FULL``: a committed batch survives a crash or power
loss, so an MQTT message is acknowledged only after its points are in. Points leave in
insertion order (``peek`` then ``delete_through``), so a database outage delays writes but
never reorders them. The spool is bounded: the service pauses intake before ``cap`` (the
broker then holds the readings); :meth:`append` still enforces the cap as a last resort by
dropping the oldest points, counted in ``dropped``.

A batch's points are one row (their lines joined by newlines, ``n`` of them): one SQLite
row per point cost about a quarter of ``recp detect``'s time per reading. Points are
numbered one by one all the same (a row's ``id`` is its first point's number, the next
row starts after its last), so :meth:`peek` and :meth:`delete_through` work point by point
and a row only partly written keeps its rest. Rows of a spool written before (one point
each, ``n`` 1) read the same.

The spool also keeps the dedup marks (:class:`~.dedup.SeqTracker`) of the streams a batch
touched, committed in the same transaction as its points: what the broker was told is
stored (PUBACK) is then also known as seen after a crash, however old the checkpoint.

And it keeps, in table ``replay`` and the same transaction, the readings fed to the
detectors since the last checkpoint (:class:`Replay` rows, one table row per batch holding
them all as JSON; older spools' rows, one per reading, read the same): after
SIGKILL the restarted service feeds them again, batch by batch, before taking new
messages, so the detectors' state is what an uninterrupted run would have. A checkpoint
records the last row it covers; rows up to it are then forgotten.

And the topic filters the broker acknowledged for our client id (table ``subscribed``):
a broker that kept our session keeps its subscriptions, which need no new SUBSCRIBE.

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

from pydantic_core import to_json

# site, meter, stream, done, seqs above, ranges given up (SeqTracker.skip_to)
Mark = tuple[str, str, str, int, Sequence[int], Sequence[Sequence[int]]]
# site, meter, resource, ts_s, values, feed (PIPELINE | INPUT)
Replay = tuple[str, str, str, float, dict[str, float | None], int]
PIPELINE, INPUT = 1, 2
PACKED = 0  # a replay row's ``feed`` when ``vals`` holds the whole batch's rows as JSON


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
            "line TEXT NOT NULL, n INTEGER NOT NULL DEFAULT 1)"
        )
        if "n" not in {r[1] for r in self._db.execute("PRAGMA table_info(points)")}:
            self._db.execute("ALTER TABLE points ADD COLUMN n INTEGER NOT NULL DEFAULT 1")
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
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS subscribed (client_id TEXT PRIMARY KEY, "
            "filters TEXT NOT NULL)"
        )
        depth, end = self._db.execute("SELECT SUM(n), MAX(id + n) FROM points").fetchone()
        self._depth = int(depth or 0)
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'points'"
                               ).fetchone()
        self._next = max(int(end or 1), int(row[0]) + 1 if row else 1)  # next point's id
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
        durably (one transaction, one row each for the lines and the replay rows); drop
        the oldest points beyond ``cap``."""
        rows = [(site, meter, stream, done, json.dumps(sorted(above)), json.dumps(gaps))
                for site, meter, stream, done, above, gaps in marks]
        if not lines and not rows and not replay:
            return
        text = "\n".join(lines)
        n = len(lines)
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if n:
                    db.execute("INSERT INTO points(id, line, n) VALUES (?, ?, ?)",
                               (self._next, text, n))
                db.executemany("INSERT OR REPLACE INTO seen(site, meter, stream, done, above, "
                               "gaps) VALUES (?, ?, ?, ?, ?, ?)", rows)
                if replay:
                    batch = self._batch + 1
                    db.execute("INSERT INTO replay(batch, vals, feed) VALUES (?, ?, ?)",
                               (batch, to_json(replay).decode(), PACKED))
                    last = int(db.execute("SELECT MAX(id) FROM replay").fetchone()[0])
                over = self._depth + n - self.cap
                if over > 0:
                    self._drop_oldest(over)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._next += n
            if over > 0:
                self.dropped += over
            self._depth += n - max(over, 0)
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
            if feed == PACKED:
                out[-1] += [(str(s), str(m), str(r), float(t), v, int(f))
                            for s, m, r, t, v, f in json.loads(vals)]
            else:  # a spool written before batches were packed: a row per reading
                out[-1].append((str(site), str(meter), str(resource), float(ts),
                                json.loads(vals), int(feed)))
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

    def subscribed(self, client_id: str) -> list[str] | None:
        """The topic filters the broker last acknowledged (SUBACK) for this client id."""
        with self._lock:
            row = self._db.execute("SELECT filters FROM subscribed WHERE client_id = ?",
                                   (client_id,)).fetchone()
        return None if row is None else [str(f) for f in json.loads(row[0])]

    def set_subscribed(self, client_id: str, filters: Sequence[str]) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO subscribed(client_id, filters) "
                             "VALUES (?, ?)", (client_id, json.dumps(list(filters))))

    def marks(self) -> list[list[Any]]:
        """Every stream's dedup marks as last committed, in :meth:`SeqTracker.snapshot` form."""
        with self._lock:
            rows = self._db.execute("SELECT site, meter, stream, done, above, gaps FROM seen")
            return [[site, meter, stream, int(done), json.loads(above), json.loads(gaps)]
                    for site, meter, stream, done, above, gaps in rows]

    def peek(self, n: int) -> list[tuple[int, str]]:
        """The oldest ``n`` points as (id, line), oldest first."""
        return [(first + i, text) for first, lines in self._oldest(n)
                for i, text in enumerate(lines)]

    def take(self, n: int) -> tuple[int, list[str]]:
        """The oldest ``n`` points (fewer when the spool holds fewer) and the id of the
        last of them, for :meth:`delete_through`."""
        out: list[str] = []
        last = 0
        for first, lines in self._oldest(n):
            out += lines
            last = first + len(lines) - 1
        return last, out

    def _oldest(self, n: int) -> list[tuple[int, list[str]]]:
        """The oldest ``n`` points as (id of the first, lines) per row."""
        got: list[tuple[int, list[str]]] = []
        with self._lock:
            cur = self._db.execute("SELECT id, line, n FROM points ORDER BY id")
            while n > 0:
                row = cur.fetchone()
                if row is None:
                    break
                text, count = str(row[1]), int(row[2])
                lines = (text.split("\n") if count > 1 else [text])[:n]
                got.append((int(row[0]), lines))
                n -= len(lines)
            cur.close()
        return got

    def delete_through(self, last_id: int) -> int:
        """Forget every point with id <= ``last_id`` (written); returns how many."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                gone = self._delete_through(last_id)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._depth -= gone
        return gone

    def _drop_oldest(self, count: int) -> None:
        """Within a transaction: delete the oldest ``count`` points (the cap's last resort)."""
        for first, n in self._db.execute("SELECT id, n FROM points ORDER BY id").fetchall():
            if n >= count:
                self._delete_through(first + count - 1)
                return
            count -= n
        self._delete_through(self._next)

    def _delete_through(self, last_id: int) -> int:
        """Within a transaction: delete the points up to ``last_id``, keeping the rest of
        a row they end inside; how many went."""
        db = self._db
        row = db.execute("SELECT id, line, n FROM points WHERE id <= ? ORDER BY id DESC "
                         "LIMIT 1", (last_id,)).fetchone()
        if row is None:
            return 0
        first, text, count = int(row[0]), str(row[1]), int(row[2])
        keep = first + count - 1 - last_id  # points of that row after last_id
        cur = db.execute("SELECT COALESCE(SUM(n), 0) FROM points WHERE id < ?", (first,))
        gone = int(cur.fetchone()[0])
        db.execute("DELETE FROM points WHERE id < ?", (first,))
        if keep > 0:
            rest = text.split("\n")[count - keep:]
            db.execute("UPDATE points SET id = ?, line = ?, n = ? WHERE id = ?",
                       (last_id + 1, "\n".join(rest), keep, first))
            gone += count - keep
        else:
            db.execute("DELETE FROM points WHERE id = ?", (first,))
            gone += count
        return gone

    def close(self) -> None:
        with self._lock:
            self._db.close()
