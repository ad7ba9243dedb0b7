"""The SQLite outbox: ordering, sequence numbers, the cap, re-timing, and crash safety."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.outbox import _VIEW, Entry, Outbox


def entry(meter: str, held: bool = False, mono_ns: int = 0) -> Entry:
    return Entry(meter, lambda seq: (f"t/{meter}", json.dumps({"seq": seq}).encode()),
                 held=held, mono_ns=mono_ns)


def test_sequence_numbers_are_per_meter_and_contiguous(tmp_path: Path):
    with Outbox(tmp_path / "o.db") as box:
        assert box.append([entry("a"), entry("b"), entry("a")]) == [1, 1, 2]
        assert box.append([entry("a")]) == [3]
        rows = box.peek()
        assert [(r.meter, r.seq) for r in rows] == [("a", 1), ("b", 1), ("a", 2), ("a", 3)]
        assert json.loads(rows[3].payload) == {"seq": 3}
        assert box.depth == 4


def test_deleting_never_rewinds_sequences_and_ids(tmp_path: Path):
    path = tmp_path / "o.db"
    with Outbox(path) as box:
        box.append([entry("a"), entry("a")])
        box.delete(r.id for r in box.peek())
        assert box.depth == 0
        assert box.append([entry("a")]) == [3]
        (row,) = box.peek()
        assert row.id == 3  # never reused: a publisher cursor at id 2 still sees it
        stream = box.stream
    with Outbox(path) as box:  # reopened: same stream, counters continue
        assert box.stream == stream
        assert box.append([entry("a")]) == [4]
        assert box.last_seqs() == {"a": 4}


def test_peek_pages_in_commit_order(tmp_path: Path):
    with Outbox(tmp_path / "o.db") as box:
        box.append([entry("m") for _ in range(10)])
        first = box.peek(0, 4)
        rest = box.peek(first[-1].id, 100)
        assert [r.seq for r in first + rest] == list(range(1, 11))


def test_delete_takes_any_subset(tmp_path: Path):
    with Outbox(tmp_path / "o.db") as box:
        box.append([entry("m") for _ in range(10)])
        ids = [r.id for r in box.peek()]
        assert box.delete([ids[0], ids[1], ids[2], ids[5], ids[9]]) == 5
        assert [r.seq for r in box.peek()] == [4, 5, 7, 8, 9]
        assert box.delete([]) == 0
        assert box.delete([ids[0]]) == 0  # already gone: harmless
        assert box.depth == 5


def test_cap_drops_oldest_first_and_counts_it(tmp_path: Path):
    with Outbox(tmp_path / "o.db", cap=5) as box:
        box.append([entry("m") for _ in range(4)])
        box.append([entry("m") for _ in range(3)])
        assert [r.seq for r in box.peek()] == [3, 4, 5, 6, 7]
        stats = box.stats()
        assert stats.depth == 5
        assert stats.dropped == {"outbox full (cap 5), oldest dropped": 2}
    with Outbox(tmp_path / "o.db", cap=5) as box:  # the count is kept in the file
        box.append([entry("m")])
        assert box.stats().dropped == {"outbox full (cap 5), oldest dropped": 3}


def test_cap_drops_are_recorded_per_meter_for_the_dropped_announcement(tmp_path: Path):
    with Outbox(tmp_path / "o.db", cap=5) as box:
        assert box.holes() == [] and box.holes_changed == 0
        box.append([entry("a"), entry("b"), entry("a"), entry("a")])
        box.append([entry("b") for _ in range(3)])  # drops a1 and b1
        holes = {h.meter: (h.through_seq, h.count) for h in box.holes()}
        assert holes == {"a": (1, 1), "b": (1, 1)} and box.holes_changed == 1
        box.append([entry("b") for _ in range(3)])  # drops a2, a3, b2
        holes = {h.meter: (h.through_seq, h.count) for h in box.holes()}
        assert holes == {"a": (3, 3), "b": (2, 2)} and box.holes_changed == 2
        assert [(r.meter, r.seq) for r in box.peek()] == [("b", s) for s in range(3, 8)]
        assert box.holes()[0].reason == "outbox full (cap 5), oldest dropped"
    with Outbox(tmp_path / "o.db", cap=5) as box:  # kept in the file
        assert {h.meter: h.count for h in box.holes()} == {"a": 3, "b": 2}


def test_failed_write_is_counted_and_does_not_consume_sequence_numbers(tmp_path: Path):
    with Outbox(tmp_path / "o.db") as box:
        box.append([entry("m")])

        def broken(seq: int) -> tuple[str, bytes]:
            return "t", object()  # type: ignore[return-value]  # sqlite cannot store it

        assert box.append([entry("m"), Entry("m", broken)]) == []
        assert box.append([entry("m")]) == [2]
        assert sum(box.stats().dropped.values()) == 2


def test_confirm_deletes_up_to_the_consumers_mark_of_this_stream(tmp_path: Path):
    with Outbox(tmp_path / "o.db") as box:
        box.append([entry("a"), entry("a"), entry("b"), entry("a")])
        assert box.confirm("a", "another-stream", 10) == 0
        assert box.confirm("a", box.stream, 2) == 2
        assert [(r.meter, r.seq) for r in box.peek()] == [("b", 1), ("a", 3)]


def test_held_readings_wait_and_are_retimed_on_release(tmp_path: Path):
    with Outbox(tmp_path / "o.db") as box:
        box.append([entry("a", held=True, mono_ns=1_000_000_000)])
        box.append([entry("a", held=True, mono_ns=3_000_000_000)])
        assert box.peek() == []
        assert box.stats().held == 2
        seen: list[float | None] = []

        def retime(payload: bytes, when: float | None) -> bytes:
            seen.append(when)
            return payload + b"!"

        assert box.release(retime, now_wall=1000.0, now_mono_ns=5_000_000_000) == 2
        assert seen == [996.0, 998.0]
        assert [r.payload[-1:] for r in box.peek()] == [b"!", b"!"]
        assert box.stats().held == 0


def test_held_readings_of_another_boot_cannot_be_retimed(tmp_path: Path):
    with Outbox(tmp_path / "o.db") as box:
        box.append([entry("a", held=True, mono_ns=1)])
    db = sqlite3.connect(tmp_path / "o.db")
    db.execute("UPDATE cycles SET boot='previous-boot'")
    db.commit()
    db.close()
    with Outbox(tmp_path / "o.db") as box:
        seen: list[float | None] = []

        def retime(payload: bytes, when: float | None) -> bytes:
            seen.append(when)
            return payload

        box.release(retime, 1000.0, 5)
        assert seen == [None]


def test_wal_and_full_sync_are_on(tmp_path: Path):
    with Outbox(tmp_path / "o.db") as box:
        assert box._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        box.append([entry("m")])
        box.delete(r.id for r in box.peek())  # deletions ride on the next fsync...
        assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # ...FULL again


WRITER = textwrap.dedent(
    """
    import json, sys
    from collector.outbox import _VIEW, Entry, Outbox
    box = Outbox(sys.argv[1], cap=10**9)
    payload = b"x" * 300
    n = 0
    while True:
        seqs = box.append([Entry(m, lambda s: ("t", payload)) for m in ("a", "b", "c")] * 5)
        n += len(seqs)
        if n % 600 == 0:
            print(n, flush=True)
        # the acknowledging side, concurrently in spirit: delete what is old
        rows = box.peek(0, 7)
        box.delete(r.id for r in rows[:3])
    """
)


@pytest.mark.parametrize("kill_after_s", [0.3, 0.7, 1.1])
def test_sigkill_mid_write_loses_no_committed_reading(tmp_path: Path, kill_after_s: float):
    """A writer killed at a random moment leaves a sound file, and every reading it committed
    is either still there or was deleted on purpose; sequences continue without a gap."""
    path = tmp_path / "o.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 20
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the writer is up and committing
    assert line.strip(), "writer did not start"
    time.sleep(kill_after_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait(5)
    assert time.monotonic() < deadline

    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    with Outbox(path) as box:
        last = box.last_seqs()
        assert set(last) == {"a", "b", "c"} and min(last.values()) >= 200
        rows = box._db.execute("SELECT meter, seq FROM outbox ORDER BY id").fetchall()
        for meter in ("a", "b", "c"):
            seqs = [s for m, s in rows if m == meter]
            # rows left are the newest readings, contiguous up to the counter
            assert seqs == list(range(seqs[0], last[meter] + 1))
        depth = box.depth
        assert box.append([entry("a")]) == [last["a"] + 1]
        assert box.depth == depth + 1


_OPS = st.lists(st.one_of(
    st.tuples(st.just("append"), st.lists(st.tuples(st.sampled_from("abc"), st.booleans()),
                                          min_size=1, max_size=6)),
    st.tuples(st.just("peek"), st.integers(0, 40), st.integers(1, 8)),
    st.tuples(st.just("take"), st.integers(1, 8)),  # the publisher: from its cursor on
    st.tuples(st.just("ack"), st.integers(0, 10)),  # delete some taken rows
    st.tuples(st.just("reconnect"), st.just(0)),  # a new session starts at cursor 0
    st.tuples(st.just("confirm"), st.sampled_from("abc"), st.integers(0, 10)),
    st.tuples(st.just("release"), st.just(0)),
), max_size=40)


@settings(max_examples=60, deadline=None)
@given(ops=_OPS, cap=st.sampled_from([5, 12, 1000]))
def test_peek_fresh_is_peek_or_says_ask_the_database(tmp_path_factory, ops, cap):
    """Whatever happens (held rows, cap drops, deletes, consumer confirms, releases, a
    publisher starting over), the in-memory peek either returns exactly what the database
    query returns or None."""
    with Outbox(tmp_path_factory.mktemp("o") / "o.db", cap=cap) as box:
        cursor, taken = 0, []
        for op in ops:
            if op[0] == "append":
                box.append([entry(m, held=h) for m, h in op[1]])
            elif op[0] == "peek":
                fresh = box.peek_fresh(op[1], op[2])
                assert fresh is None or fresh == box.peek(op[1], op[2])
            elif op[0] == "take":
                fresh = box.peek_fresh(cursor, op[1])
                rows = box.peek(cursor, op[1])
                assert fresh is None or fresh == rows
                if rows:
                    cursor = rows[-1].id
                    taken += [r.id for r in rows]
            elif op[0] == "ack":
                box.delete(taken[: op[1]])
                del taken[: op[1]]
            elif op[0] == "reconnect":
                cursor, taken = 0, []
            elif op[0] == "confirm":
                box.confirm(op[1], box.stream, op[2])
            else:
                box.release(lambda payload, when: payload, time.time(), time.monotonic_ns())
        fresh = box.peek_fresh(cursor, 1000)
        assert fresh is None or fresh == box.peek(cursor, 1000)


def test_peek_fresh_serves_the_steady_state_from_memory(tmp_path: Path):
    with Outbox(tmp_path / "o.db") as box:
        box.append([entry("a"), entry("b")])
        rows = box.peek_fresh(0, 100)  # a fresh outbox: complete from id 1
        assert rows is not None and [r.seq for r in rows] == [1, 1]
        box.append([entry("a")])
        more = box.peek_fresh(rows[-1].id, 100)
        assert more is not None and [(r.meter, r.seq) for r in more] == [("a", 2)]
        box.delete([r.id for r in rows])
        assert box.peek_fresh(0, 100) is None  # below the deleted ids: ask the database
        assert box.peek_fresh(more[-1].id, 100) == []


# drops and holes, as every format before the current one had them
_OLD_DROPS_AND_HOLES = """
CREATE TABLE drops (
    reason TEXT PRIMARY KEY, count INTEGER NOT NULL, first_at REAL NOT NULL, last_at REAL NOT NULL
);
CREATE TABLE holes (
    meter TEXT PRIMARY KEY, through_seq INTEGER NOT NULL, count INTEGER NOT NULL,
    reason TEXT NOT NULL, at REAL NOT NULL
);
"""

# The outbox's schema before cycle rows (one row per reading), as agents wrote it then.
_OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sequences (meter TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, meter TEXT NOT NULL, seq INTEGER NOT NULL,
    topic TEXT NOT NULL, payload BLOB NOT NULL, created REAL NOT NULL,
    held INTEGER NOT NULL DEFAULT 0, mono_ns INTEGER, boot TEXT
);
CREATE INDEX outbox_meter_seq ON outbox (meter, seq);
""" + _OLD_DROPS_AND_HOLES


def test_an_outbox_written_one_row_per_reading_is_read_after_an_upgrade(tmp_path: Path):
    """A file from before cycle rows: its readings are published with the same ids, seqs,
    topics and payloads, in order; held ones are still held and re-timed; sequence
    numbers, ids, drop counts and holes continue; the view shows what is on disk."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(_OLD_SCHEMA)
    db.execute("INSERT INTO meta VALUES ('stream', 'oldstream')")
    rows = [(1, "a", 1, 0), (2, "b", 1, 0), (3, "a", 2, 0), (5, "a", 3, 0),  # 4 acked
            (6, "b", 2, 1), (7, "a", 4, 1)]  # held: the clock was not trusted yet
    db.executemany(
        "INSERT INTO outbox (id, meter, seq, topic, payload, created, held, mono_ns, boot) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(i, m, s, f"t/{m}", json.dumps({"seq": s}).encode(), 100.0 + i, h,
          i * 1_000_000_000, "old-boot") for i, m, s, h in rows])
    db.execute("UPDATE sqlite_sequence SET seq = 9 WHERE name = 'outbox'")  # 8, 9 deleted
    db.executemany("INSERT INTO sequences VALUES (?, ?)", [("a", 4), ("b", 2)])
    db.execute("INSERT INTO drops VALUES ('outbox full (cap 9), oldest dropped', 3, 1, 2)")
    db.execute("INSERT INTO holes VALUES ('a', 0, 3, 'outbox full', 2)")
    db.commit()
    db.close()
    with Outbox(path, cap=9) as box:
        assert box.stream == "oldstream"
        assert box.depth == 6 and box.held == 2
        assert [(r.id, r.meter, r.seq, r.topic, json.loads(r.payload)) for r in box.peek()] == [
            (1, "a", 1, "t/a", {"seq": 1}), (2, "b", 1, "t/b", {"seq": 1}),
            (3, "a", 2, "t/a", {"seq": 2}), (5, "a", 3, "t/a", {"seq": 3})]
        assert box.peek(3, 10)[0].id == 5
        seen: list[float | None] = []

        def retime(payload: bytes, when: float | None) -> bytes:
            seen.append(when)
            return payload + b" "

        assert box.release(retime, 1000.0, 5) == 2
        assert seen == [None, None]  # another boot: cannot be re-timed
        assert [(r.id, r.seq) for r in box.peek(5)] == [(6, 2), (7, 4)]
        assert box.peek(5)[0].payload == json.dumps({"seq": 2}).encode() + b" "
        assert box.append([entry("a"), entry("c")]) == [5, 1]
        assert [r.id for r in box.peek(7)] == [10, 11]  # ids are never reused
        assert box.stats().dropped == {"outbox full (cap 9), oldest dropped": 3}
        assert [(h.meter, h.count) for h in box.holes()] == [("a", 3)]
        assert box.delete([1, 2, 3, 5]) == 4 and box.depth == 4
    db = sqlite3.connect(path)
    assert db.execute("SELECT type FROM sqlite_master WHERE name = 'outbox'").fetchone() == (
        "view",)
    assert db.execute("SELECT id, meter, seq FROM outbox ORDER BY id").fetchall() == [
        (6, "b", 2), (7, "a", 4), (10, "a", 5), (11, "c", 1)]
    db.close()
    with Outbox(path) as box:  # converted once: opened again as it is
        assert [r.id for r in box.peek()] == [6, 7, 10, 11]
        assert box.last_seqs() == {"a": 5, "b": 2, "c": 1}


def test_the_outbox_view_shows_one_row_per_reading_on_disk(tmp_path: Path):
    with Outbox(tmp_path / "o.db", cap=6) as box:
        box.append([entry("a"), entry("b"), entry("a", held=True, mono_ns=7)])
        box.append([entry("b") for _ in range(4)])  # the cap drops a1 (cycle 1's front)
        db = sqlite3.connect(tmp_path / "o.db")
        got = db.execute("SELECT id, meter, seq, topic, payload, held, mono_ns FROM outbox "
                         "ORDER BY id").fetchall()
        db.close()
        assert got == [
            (2, "b", 1, "t/b", b'{"seq": 1}', 0, None), (3, "a", 2, "t/a", b'{"seq": 2}', 1, 7),
            *[(2 + i, "b", i, "t/b", json.dumps({"seq": i}).encode(), 0, None)
              for i in range(2, 6)]]
        assert [(r.id, r.meter, r.seq) for r in box.peek()] == [
            (2, "b", 1), *[(2 + i, "b", i) for i in range(2, 6)]]


_MODEL_OPS = st.lists(st.one_of(
    st.tuples(st.just("append"), st.lists(st.tuples(st.sampled_from("abc"), st.booleans()),
                                          min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.lists(st.integers(1, 60), max_size=10)),
    st.tuples(st.just("confirm"), st.sampled_from("abc"), st.integers(0, 12)),
    st.tuples(st.just("release"), st.just(0)),
    st.tuples(st.just("reopen"), st.just(0)),
), max_size=30)


@settings(max_examples=80, deadline=None)
@given(ops=_MODEL_OPS, cap=st.sampled_from([3, 7, 1000]))
def test_cycle_rows_behave_like_one_row_per_reading(tmp_path_factory, ops, cap):
    """Against a plain model of the outbox (a list of readings: append numbers and adds,
    the cap drops the oldest and counts each, delete and confirm remove): depth, held,
    peek, drop counts and holes agree exactly. After a reopen (a restart), readings
    acknowledged while others of their cycle were not may come back (sent again); none
    that was not acknowledged is missing."""
    path = tmp_path_factory.mktemp("o") / "o.db"
    box = Outbox(path, cap=cap)
    model: list[list] = []  # [id, meter, seq, held], in id order
    next_id, last = 1, {}
    dropped, holes = 0, {}
    maybe_back: set[int] = set()  # acknowledged ids a restart may bring back
    try:
        for op in ops:
            if op[0] == "append":
                seqs = box.append([entry(m, held=h) for m, h in op[1]])
                for (m, h), s in zip(op[1], seqs, strict=True):
                    assert s == last.get(m, 0) + 1
                    last[m] = s
                    model.append([next_id, m, s, h])
                    next_id += 1
                over = len(model) - cap
                if over > 0:
                    for _, m, s, _ in model[:over]:
                        holes[m] = (max(holes.get(m, (0, 0))[0], s), holes.get(m, (0, 0))[1] + 1)
                    dropped += over
                    del model[:over]
            elif op[0] == "delete":
                ids = set(op[1])
                n = sum(r[0] in ids for r in model)
                assert box.delete(op[1]) == n
                maybe_back |= {r[0] for r in model if r[0] in ids}
                model = [r for r in model if r[0] not in ids]
            elif op[0] == "confirm":
                gone = {r[0] for r in model if r[1] == op[1] and r[2] <= op[2] and not r[3]}
                assert box.confirm(op[1], box.stream, op[2]) == len(gone)
                maybe_back |= gone
                model = [r for r in model if r[0] not in gone]
            elif op[0] == "release":
                box.release(lambda payload, when: payload, time.time(), time.monotonic_ns())
                for r in model:
                    r[3] = False
            else:
                box.close()
                box = Outbox(path, cap=cap)
                # every reading on disk, held ones too (the outbox view): an acknowledged
                # reading of a cycle row not yet deleted comes back as it was stored
                db = sqlite3.connect(path)
                disk = db.execute("SELECT id, meter, seq, held FROM outbox").fetchall()
                db.close()
                on_disk = {i for i, _, _, _ in disk}
                kept = {r[0] for r in model}
                assert kept <= on_disk <= kept | maybe_back
                back = on_disk - kept
                model = sorted(model + [[i, m, s, bool(h)] for i, m, s, h in disk if i in back])
                maybe_back -= back
            assert box.depth == len(model)
            assert box.held == sum(1 for r in model if r[3])
            assert [(r.id, r.meter, r.seq) for r in box.peek(0, 10**6)] == [
                (i, m, s) for i, m, s, h in model if not h]
            assert sum(box.stats().dropped.values()) == dropped
            assert {h.meter: (h.through_seq, h.count) for h in box.holes()} == holes
            assert box.last_seqs() == last
    finally:
        box.close()


def _deny(action: int, arg1: str | None, *_: object) -> int:
    """An authorizer refusing deletes from cycles: a write that fails like a full disk."""
    if action == sqlite3.SQLITE_DELETE and arg1 == "cycles":
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def test_a_failed_delete_leaves_the_readings_as_on_disk(tmp_path: Path):
    """A delete whose transaction fails (disk full, I/O error) raises and changes nothing:
    the readings are still there, publishable (sent again) and deletable later."""
    with Outbox(tmp_path / "o.db") as box:
        box.append([entry("a"), entry("b")])
        box.append([entry("a")])
        ids = [r.id for r in box.peek()]
        box._db.set_authorizer(_deny)
        with pytest.raises(sqlite3.DatabaseError):
            box.delete(ids[:2])  # the whole first cycle row: a DELETE
        box._db.set_authorizer(None)
        assert box.depth == 3
        assert [r.id for r in box.peek()] == ids
        assert box.delete(ids) == 3 and box.depth == 0
        assert box._db.execute("SELECT count(*) FROM outbox").fetchone() == (0,)


# The first cycle-row schema (one morning on main): per-meter sequences still a table and
# cycle rows without their meters' last seqs (``lasts``).
_CYCLES_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sequences (meter TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE TABLE cycles (
    first_id INTEGER PRIMARY KEY, n INTEGER NOT NULL, start INTEGER NOT NULL DEFAULT 0,
    meters TEXT NOT NULL, seqs TEXT NOT NULL, topics TEXT NOT NULL, offsets TEXT NOT NULL,
    payloads BLOB NOT NULL, created REAL NOT NULL, held INTEGER NOT NULL DEFAULT 0,
    monos TEXT, boot TEXT
);
""" + _OLD_DROPS_AND_HOLES


def test_an_outbox_of_the_first_cycle_rows_is_read_after_an_upgrade(tmp_path: Path):
    """Its sequences table was moved into seq_base, but the sequences view needs each cycle
    row's ``lasts``, which that file lacks: it could not be opened (no such column)."""
    path = tmp_path / "v1.db"
    db = sqlite3.connect(path)
    db.executescript(_CYCLES_V1)
    db.executemany("INSERT INTO meta VALUES (?, ?)", [("stream", "v1stream"), ("next_id", "8")])
    db.executemany("INSERT INTO sequences VALUES (?, ?)", [("a", 5), ("b", 1)])
    db.executescript(_VIEW.split(";")[0])  # its view outbox was the one of today
    db.execute("INSERT INTO cycles (first_id, n, meters, seqs, topics, offsets, payloads, "
               "created) VALUES (6, 2, '[\"a\",\"b\"]', '[5,1]', '[\"t/a\",\"t/b\"]', "
               "'[0,1,3]', X'616262', 1.0)")
    db.commit()
    db.close()
    with Outbox(path) as box:
        assert box.stream == "v1stream" and box.depth == 2
        assert [(r.id, r.meter, r.seq, r.payload) for r in box.peek()] == [
            (6, "a", 5, b"a"), (7, "b", 1, b"bb")]
        assert box.last_seqs() == {"a": 5, "b": 1}
        assert box.append([entry("a"), entry("b")]) == [6, 2]
        assert box.delete([6, 7]) == 2
    with Outbox(path) as box:  # the counters survive the old row's deletion
        assert box.last_seqs() == {"a": 6, "b": 2}
        assert [(r.id, r.seq) for r in box.peek()] == [(8, 6), (9, 2)]


def test_a_failed_release_keeps_the_readings_held_for_the_next_try(tmp_path: Path, caplog):
    """Releasing held readings rewrites their rows; on a full disk that fails. Like a failed
    append it is logged and the agent goes on (before, the exception ended the agent's
    writer, and with it the agent): the readings stay held, released on a later try."""
    with Outbox(tmp_path / "o.db") as box:
        box.append([entry("a", held=True, mono_ns=1), entry("b", held=True, mono_ns=2)])

        def deny_update(action: int, arg1: str | None, *_: object) -> int:
            refused = action == sqlite3.SQLITE_UPDATE and arg1 == "cycles"
            return sqlite3.SQLITE_DENY if refused else sqlite3.SQLITE_OK

        box._db.set_authorizer(deny_update)
        assert box.release(lambda p, when: p + b"!", 1000.0, 5) == 0
        box._db.set_authorizer(None)
        assert "outbox release failed held=2" in caplog.text
        assert box.held == 2 and box.peek() == []
        assert box.release(lambda p, when: p + b"!", 1000.0, 5) == 2
        assert box.held == 0 and [r.payload[-1:] for r in box.peek()] == [b"!", b"!"]


def test_a_second_outbox_on_the_same_file_is_refused(tmp_path: Path):
    """Two agents on one outbox file (the service, and one started by hand to try
    something) both numbered from the same counters: one's rows collided with the other's
    ids and were dropped, until a deletion freed an id and it stored seqs the other had
    already published (same stream and seq, other content: consumers keep the first)."""
    path = tmp_path / "o.db"
    with Outbox(path) as box:
        box.append([entry("a")])
        with pytest.raises(OSError, match=r"o\.db is in use by another process"):
            Outbox(path)
        assert box.append([entry("a")]) == [2]  # the first one goes on undisturbed
    with Outbox(path) as box:  # free again once closed
        assert box.last_seqs() == {"a": 2}


def test_a_renderer_that_raises_consumes_no_sequence_number(tmp_path: Path):
    """The readings are rendered before the transaction: an exception there (a bug in a
    decoder's renderer) left the meter's counter advanced, and the next stored reading
    skipped a seq that consumers then waited for as a gap."""
    with Outbox(tmp_path / "o.db") as box:
        box.append([entry("m")])

        def broken(seq: int) -> tuple[str, bytes]:
            raise ValueError("renderer bug")

        with pytest.raises(ValueError, match="renderer bug"):
            box.append([entry("m"), entry("n"), Entry("m", broken)])
        assert box.last_seqs() == {"m": 1}
        assert box.append([entry("m"), entry("n")]) == [2, 1]
        assert [r.seq for r in box.peek()] == [1, 2, 1] and box.depth == 3


def test_an_outbox_that_fails_to_open_frees_its_file_at_once(tmp_path: Path):
    """An open that fails after taking the file (not a database, a failed conversion) closes
    the connection and the lock itself: before, only garbage collection freed them, and an
    exception kept alive (its traceback holds the half-made outbox) left the file 'in use
    by another process' for a retry in the same process."""
    path = tmp_path / "o.db"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(sqlite3.DatabaseError) as failed:
        Outbox(path)
    path.write_bytes(b"")  # mended in place (same file, so a lock left on it would hold)
    with Outbox(path) as box:
        assert box.append([entry("a")]) == [1]
    assert failed.value is not None  # the traceback lived until here
