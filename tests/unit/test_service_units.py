"""Detector service parts without servers: validation, dedup, spool, alerts, checkpoints."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector import contract
from collector.configfile import ConfigError
from detectors.meter import MeterInfo
from detectors.service import checkpoint
from detectors.service.alerts import AlertSettings, EventTracker
from detectors.service.config import load_analytics
from detectors.service.dedup import SeqTracker
from detectors.service.lines import line
from detectors.service.pipeline import MeterPipeline, Settings
from detectors.service.service import DetectService, owns
from detectors.service.sink import SpoolSink
from detectors.service.spool import Spool
from detectors.service.validate import DeadLetter, Limits, parse

T0 = 1767225600  # 2026-01-01T00:00Z
TOPIC = "recp/v1/dairy/m1/reading"


def reading(seq: int = 1, ts: float = T0, meter: str = "m1", **values: float | None) -> bytes:
    return contract.dumps(contract.reading_payload(
        site="dairy", meter=meter, resource="electricity", stream="s1", seq=seq, ts=ts,
        quality=contract.Quality.OK, values=values or {"energy_kwh": 1.0},
    ))  # fmt: skip


def rate_kw(t: int) -> float:
    h = (t % 86400) / 3600
    base = 20.0 + (60.0 if 6 <= h < 18 else 0.0)
    if 3 * 86400 + 10 * 3600 <= t - T0 < 3 * 86400 + 10 * 3600 + 1800:
        base += 400.0  # a spike on day 4, 10:00-10:30
    return base


def counter(days: int, step: int = 300) -> list[tuple[int, float]]:
    out, e, t = [], 1000.0, T0
    while t < T0 + days * 86400:
        out.append((t, round(e, 3)))
        e += rate_kw(t) * step / 3600
        t += step
    return out


# ------------------------------------------------------------------------- validation

LIMITS = Limits(max_payload_bytes=4096, max_future_s=300.0)
GOOD = reading()
CORPUS = {
    "truncated JSON": (TOPIC, GOOD[: len(GOOD) // 2]),
    "not JSON": (TOPIC, b"hello"),
    "not UTF-8": (TOPIC, b"\xff\xfe\x00garbage"),
    "wrong types": (TOPIC, GOOD.replace(b'"seq":1', b'"seq":"one"')),
    "unknown quantity": (TOPIC, GOOD.replace(b"energy_kwh", b"energy_bananas")),
    "NaN value": (TOPIC, GOOD.replace(b'"energy_kwh":1.0', b'"energy_kwh":NaN')),
    "infinite value": (TOPIC, GOOD.replace(b'"energy_kwh":1.0', b'"energy_kwh":1e999')),
    "far future": (TOPIC, reading(ts=time.time() + 86400 * 365)),
    "too old": (TOPIC, reading(ts=100.0)),
    "huge payload": (TOPIC, GOOD[:-1] + b',"pad":"' + b"x" * 10000 + b'"}'),
    "site/meter differ from topic": ("recp/v1/dairy/m2/reading", GOOD),
    "unknown meter id in topic": ("recp/v1/dairy/BAD METER/reading", GOOD),
    "wrong topic shape": ("recp/v1/dairy/reading", GOOD),
    "unknown kind": ("recp/v1/dairy/m1/bogus", GOOD),
    "local time": (TOPIC, GOOD.replace(b'Z"', b'+01:00"')),
    "empty": (TOPIC, b""),
    "a list": (TOPIC, b"[1,2,3]"),
}


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_malformed_payloads_become_dead_letters(case: str) -> None:
    topic, payload = CORPUS[case]
    res = parse(topic, payload, time.time(), LIMITS)
    assert isinstance(res, DeadLetter), f"{case}: {res!r}"
    assert res.reason
    body = json.loads(res.to_json(time.time()))
    assert body["topic"] == topic and body["reason"] == res.reason
    kept = (base64.b64decode(body["payload_b64"]) if "payload_b64" in body
            else body["payload_text"].encode())
    assert kept == payload[:4096]
    assert body["truncated"] == (len(payload) > 4096)
    assert res.out_topic in ("recp/v1/_deadletter/dairy", "recp/v1/_deadletter/unknown")


def test_good_reading_and_ignored_agent_topics() -> None:
    res = parse(TOPIC, GOOD, time.time(), LIMITS)
    assert isinstance(res, contract.Reading) and res.values == {"energy_kwh": 1.0}
    assert parse("recp/v1/dairy/_agent/status", b"{}", time.time(), LIMITS) is None


# ------------------------------------------------------------------------- dedup


def test_dedup_drops_replays_and_out_of_order_duplicates() -> None:
    d = SeqTracker(window=4)
    key = ("dairy", "m1", "s1")
    assert [d.accept(key, s) for s in (1, 2, 3, 2, 1, 5, 4, 5, 6)] == [
        True, True, True, False, False, True, True, False, True]  # fmt: skip
    assert d.done(key) == 6
    assert d.accept(("dairy", "m1", "s2"), 1)  # a new stream starts afresh


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 40), max_size=30), st.integers(1, 45), st.integers(1, 12),
       st.lists(st.integers(0, 3), min_size=12, max_size=12), st.integers(0, 45))
def test_dedup_accept_many_is_accept_one_by_one(
        before: list[int], first: int, n: int, steps: list[int], skip: int) -> None:
    # a readings message's run of increasing seqs, on any tracker state (holes, repeats,
    # a window giving up, an announced drop): the same answers and marks as one by one
    key = ("dairy", "m1", "s1")
    a, b = SeqTracker(window=6), SeqTracker(window=6)
    for t in (a, b):
        for seq in before:
            t.accept(key, seq)
        if skip:
            t.skip_to(key, skip)
    seqs = [first]
    for step in steps[: n - 1]:
        seqs.append(seqs[-1] + 1 + step * (step > 1))
    one = [a.accept(key, seq) for seq in seqs]
    many = b.accept_many(key, seqs)
    assert (one if not all(one) else None) == many
    assert a.snapshot() == b.snapshot()


def test_dedup_window_gives_up_holes_and_round_trips() -> None:
    d = SeqTracker(window=3)
    key = ("dairy", "m1", "s1")
    d.accept(key, 1)
    for s in (3, 4, 5, 6):  # 2 never comes (the agent's outbox dropped it)
        assert d.accept(key, s)
    assert d.done(key) == 6
    d.accept(key, 9)
    e = SeqTracker.restore(json.loads(json.dumps(d.snapshot())), window=3)
    assert not e.accept(key, 9) and not e.accept(key, 6) and e.accept(key, 7)


# ------------------------------------------------------------------------- spool


def test_spool_keeps_order_across_reopen_and_deletes_written(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.sqlite", cap=1000)
    sp.append([f"p{i}" for i in range(10)])
    rows = sp.peek(4)
    assert [x for _, x in rows] == ["p0", "p1", "p2", "p3"]
    assert sp.delete_through(rows[-1][0]) == 4
    sp.close()
    sp = Spool(tmp_path / "s.sqlite", cap=1000)
    assert sp.depth == 6
    assert [x for _, x in sp.peek(100)] == [f"p{i}" for i in range(4, 10)]


def test_spool_is_bounded_dropping_oldest_counted(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.sqlite", cap=5)
    sp.append([f"a{i}" for i in range(4)])
    sp.append([f"b{i}" for i in range(3)])
    assert sp.depth == 5 and sp.dropped == 2
    assert [x for _, x in sp.peek(10)] == ["a2", "a3", "b0", "b1", "b2"]


def test_spool_rows_of_a_batch_are_written_and_dropped_point_by_point(tmp_path: Path) -> None:
    # a batch is one row; taking, deleting and the cap still count single points
    sp = Spool(tmp_path / "s.sqlite", cap=12)
    sp.append([f"a{i}" for i in range(5)])
    sp.append([f"b{i}" for i in range(5)])
    last, lines = sp.take(7)
    assert lines == [f"a{i}" for i in range(5)] + ["b0", "b1"]
    assert sp.delete_through(last) == 7 and sp.depth == 3
    sp.append([f"c{i}" for i in range(11)])  # 14 > 12: the two oldest go
    assert sp.dropped == 2 and sp.depth == 12
    assert [x for _, x in sp.peek(3)] == ["b4", "c0", "c1"]
    sp.close()
    sp = Spool(tmp_path / "s.sqlite", cap=12)
    assert sp.depth == 12
    rows = sp.peek(100)
    assert [x for _, x in rows] == ["b4"] + [f"c{i}" for i in range(11)]
    assert [i for i, _ in rows] == list(range(rows[0][0], rows[0][0] + 12))
    sp.append(["d0"])  # numbered after what is there, across the reopen
    assert sp.peek(100)[-1][0] == rows[-1][0] + 1
    assert sp.delete_through(sp.peek(100)[-1][0]) == 12 and sp.depth == 0


def test_spool_reads_a_spool_of_one_row_per_point(tmp_path: Path) -> None:
    # a spool file written before batches were packed (one row per point and per
    # replayed reading): its points and replay rows come out as before, new ones after
    db = sqlite3.connect(tmp_path / "old.sqlite")
    db.executescript(
        "CREATE TABLE points (id INTEGER PRIMARY KEY AUTOINCREMENT, line TEXT NOT NULL);"
        "CREATE TABLE replay (id INTEGER PRIMARY KEY AUTOINCREMENT, batch INTEGER NOT NULL,"
        " site TEXT, meter TEXT, resource TEXT, ts REAL, vals TEXT, feed INTEGER);"
        "INSERT INTO points(line) VALUES ('p0'), ('p1'), ('p2');"
        "INSERT INTO replay(batch, site, meter, resource, ts, vals, feed) VALUES"
        " (1, 'a', 'm1', 'water', 1.5, '{\"volume_m3\": 2.0}', 1);")
    db.commit()
    db.close()
    sp = Spool(tmp_path / "old.sqlite", cap=100)
    assert sp.depth == 3
    sp.append(["q0", "q1"], replay=[("a", "m1", "water", 2.5, {"volume_m3": 3.0}, 1)])
    assert [x for _, x in sp.peek(10)] == ["p0", "p1", "p2", "q0", "q1"]
    assert sp.replay_rows(0) == [[("a", "m1", "water", 1.5, {"volume_m3": 2.0}, 1)],
                                 [("a", "m1", "water", 2.5, {"volume_m3": 3.0}, 1)]]
    assert sp.delete_through(sp.peek(4)[-1][0]) == 4
    assert [x for _, x in sp.peek(10)] == ["q1"]


def test_spool_commits_dedup_marks_with_the_points_or_not_at_all(tmp_path: Path) -> None:
    d = SeqTracker(window=8)
    key = ("dairy", "m1", "s1")
    for s in (1, 2, 3, 5, 7):
        d.accept(key, s)
    sp = Spool(tmp_path / "s.sqlite", cap=1000)
    sp.append(["p1", "p2"], d.marks([key, ("dairy", "m9", "never-seen")]))
    assert sp.marks() == [["dairy", "m1", "s1", 3, [5, 7], []]]
    # a failing transaction (here a mark without its high-water mark, after the points
    # went in) commits neither its points nor its marks
    d.accept(key, 4)
    with pytest.raises(sqlite3.IntegrityError):
        sp.append(["p3"], [*d.marks([key]), ("dairy", "m2", "s1", None, [], [])])  # type: ignore[list-item]
    assert sp.depth == 2 and sp.marks() == [["dairy", "m1", "s1", 3, [5, 7], []]]
    sp.append(["p3"], d.marks([key]))
    sp.close()
    # reopened (as after SIGKILL), the marks take over from an older checkpoint's
    sp = Spool(tmp_path / "s.sqlite", cap=1000)
    e = SeqTracker.restore([["dairy", "m1", "s1", 1, []]], window=8)
    e.update(sp.marks())
    assert e.done(key) == 5 and e.seen(key, 7) and not e.seen(key, 6)
    assert [x for _, x in sp.peek(10)] == ["p1", "p2", "p3"]


class FlakyWriter:
    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.got: list[str] = []

    def write(self, lines: list[str]) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise ConnectionError("database down")
        self.got += lines

    def close(self) -> None:
        pass


def test_sink_retries_and_writes_everything_in_order(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.sqlite", cap=1000)
    sp.append([f"p{i}" for i in range(25)])
    writer = FlakyWriter(fail=3)
    sink = SpoolSink(sp, writer, batch=10, retry_delay_s=0.01, retry_delay_max_s=0.02)

    async def go() -> None:
        stop = asyncio.Event()
        stop.set()  # drain what is there, then return
        await sink.run(stop)
        while sp.depth:
            await sink.run(stop)

    asyncio.run(go())
    assert writer.got == [f"p{i}" for i in range(25)]
    assert sink.stats.failures >= 1 and sp.depth == 0


def test_line_protocol_escapes_and_skips_empty() -> None:
    assert line("m", {"site": "a b", "x": "c,d=e"}, {"v": 1.5, "n": 2, "s": 'q"'}, 7) == (
        'm,site=a\\ b,x=c\\,d\\=e v=1.5,n=2i,s="q\\"" 7')
    assert line("m", {"a": "b"}, {"v": None, "w": math.nan}, 1) is None


# ------------------------------------------------------------------------- alerts


def test_spike_hysteresis_opens_once_and_closes_once() -> None:
    tr = EventTracker("dairy", "m1", AlertSettings(spike_open=6, spike_close=3, close_after=2))
    info = MeterInfo("m1", "kWh", price_per_unit=0.2)
    kinds = []
    # a value fluctuating around the opening threshold: 7, 5, 6.5, 4, 2.9, 6.1 (reopens
    # only after two quiet intervals), then quiet
    for i, z in enumerate((1, 7, 5, 6.5, 4, 2.9, 5.5, 2, 1, 1, 1)):
        for t in tr.step("spike", T0 + 900 * i, 900, 100.0, z, [10.0, 5.0], info,
                         "electricity", "EUR"):
            kinds.append(t.kind)
            if t.kind == "close":
                assert t.event.end is not None and t.event.excess > 0
                assert t.event.cost == pytest.approx(0.2 * t.event.excess)
    assert kinds.count("open") == 1 and kinds.count("close") == 1


# ------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_continues_exactly(tmp_path: Path) -> None:
    data = counter(5)
    cut = len(data) * 7 // 10  # after the spike has opened... or not: both must agree
    straight = MeterPipeline("dairy", "m1", "electricity", Settings())
    full = []
    for t, v in data:
        straight.add(t, {"energy_kwh": v})
        iv, tr = straight.complete()
        full.append((iv, [(x.kind, x.event_id) for x in tr if x.kind != "update"]))

    first = MeterPipeline("dairy", "m1", "electricity", Settings())
    parts = []
    for t, v in data[:cut]:
        first.add(t, {"energy_kwh": v})
        iv, tr = first.complete()
        parts.append((iv, [(x.kind, x.event_id) for x in tr if x.kind != "update"]))
    checkpoint.save(tmp_path / "state.json", {"meters": [first.snapshot()]})
    state = checkpoint.load(tmp_path / "state.json")
    assert state is not None
    second = MeterPipeline.restore(state["meters"][0], Settings())
    # the level shift's recent nights (for when a step began) come back too
    assert first.tracker.nights and second.tracker.nights == first.tracker.nights
    for t, v in data[cut:]:
        second.add(t, {"energy_kwh": v})
        iv, tr = second.complete()
        parts.append((iv, [(x.kind, x.event_id) for x in tr if x.kind != "update"]))
    assert [p[1] for p in parts] == [p[1] for p in full]
    assert [[(i.t_s, i.actual, i.scores) for i in p[0]] for p in parts] == [
        [(i.t_s, i.actual, i.scores) for i in p[0]] for p in full]  # fmt: skip
    opened = [e for p in full for e in p[1] if e[0] == "open"]
    assert len(opened) == 1 and "spike" in opened[0][1]


def test_unreadable_checkpoint_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{not json")
    assert checkpoint.load(path) is None
    assert (tmp_path / "state.json.bad").exists() and not path.exists()


# ------------------------------------------------------------------------- the service


def _spec(tmp_path: Path, extra: str = ""):
    cfg = tmp_path / "analytics.yaml"
    cfg.write_text(
        "kind: analytics\nspool: {path: spool.sqlite}\ncheckpoint: {path: state.json}\n"
        + extra
    )
    return load_analytics(cfg)


def test_service_handles_batches_dead_letters_and_replays(tmp_path: Path) -> None:
    writer = FlakyWriter(0)
    svc = DetectService(_spec(tmp_path), writer=writer)
    msgs = [(TOPIC, reading(seq=i + 1, ts=t, energy_kwh=v))
            for i, (t, v) in enumerate(counter(2))]
    bad = [(TOPIC, b"{trunc"), ("recp/v1/dairy/m1/reading", reading(ts=time.time() + 1e6))]

    async def go() -> None:
        await svc.handle(msgs[:300] + bad)
        await svc.handle(msgs[250:])  # overlapping replay
        await svc.handle(msgs)  # full replay

    asyncio.run(go())
    assert svc.stats.readings_in == len(msgs)
    assert svc.stats.duplicates == 50 + len(msgs)
    assert svc.stats.dead_letters == 2
    dead = [o for o in svc.outgoing if o.topic.startswith("recp/v1/_deadletter/")]
    assert len(dead) == 2 and all(o.topic.endswith("/dairy") for o in dead)
    lines = [x for _, x in svc.spool.peek(100_000)]
    assert sum(x.startswith("reading,") for x in lines) == len(msgs)
    assert sum(x.startswith("consumption,") for x in lines) == 2 * 96 - 1
    svc.flush_acks()
    acks = [o for o in svc.outgoing if o.topic.endswith("/ack")]
    assert json.loads(acks[-1].payload) == {"v": 1, "stream": "s1", "seq": len(msgs)}


def test_partitions_split_meters_exactly_once() -> None:
    meters = [("dairy", f"m{i}") for i in range(200)]
    owners = [[i for i in range(3) if owns(s, m, i, 3)] for s, m in meters]
    assert all(len(o) == 1 for o in owners)
    assert {o[0] for o in owners} == {0, 1, 2}


def test_a_partition_leaves_other_meters_messages_unread(tmp_path: Path) -> None:
    # readings and batches of 20 meters (a malformed one each for m3 and m4) to two
    # partitions: each meter's readings stored by its owner alone, each dead letter once
    msgs = []
    for i in range(20):
        topic = f"recp/v1/dairy/m{i}/reading"
        msgs += [(topic, reading(seq=1, meter=f"m{i}")),
                 (topic + "s", contract.pack_readings([reading(seq=s, ts=T0 + 10 * s,
                                                               meter=f"m{i}")
                                                       for s in (2, 3)]))]
    msgs += [("recp/v1/dairy/m3/reading", b"{trunc"), ("recp/v1/dairy/m4/readings", b"[]")]
    stored: list[str] = []
    dead = 0
    for index in (0, 1):
        part = tmp_path / f"p{index}"
        part.mkdir()
        svc = DetectService(_spec(part, f"processing: {{partition: {{index: {index}, "
                                        "count: 2}}\n"), writer=FlakyWriter(0))
        asyncio.run(svc.handle(msgs))
        mine = [x for _, x in svc.spool.peek(1000) if x.startswith("reading,")]
        assert {x.split("meter=")[1].split(",")[0] for x in mine} == {
            f"m{i}" for i in range(20) if owns("dairy", f"m{i}", index, 2)}
        stored += mine
        dead += svc.stats.dead_letters
        assert svc.stats.not_ours > 0
        svc.spool.close()
    assert len(stored) == len(set(stored)) == 60 and dead == 2


def test_config_rejects_inline_secrets_and_bad_partition(tmp_path: Path) -> None:
    for bad in ("mqtt: {password: x}\n", "influx: {token: x}\n",
                "processing: {partition: {index: 2, count: 2}}\n",
                "processing: {interval_s: 700}\n", "bogus: 1\n"):
        with pytest.raises(ConfigError):
            _spec(tmp_path, bad)


def test_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECP_INFLUX_TOKEN", "t")
    spec = load_analytics(Path(__file__).parents[2] / "edge_config" / "analytics.yaml")
    assert spec.influx_token == "t" and spec.client_id.startswith("recp-detect-")


def test_packed_detector_snapshots_are_small_and_legacy_ones_still_load() -> None:
    pipe = MeterPipeline("dairy", "m1", "electricity", Settings())
    for t, v in counter(2):
        pipe.add(t, {"energy_kwh": v})
    pipe.complete()
    snap = pipe.snapshot()
    assert len(json.dumps(snap)) < 40_000  # nested lists would be ~80 KiB
    legacy = dict(snap, detectors={k: d.snapshot() for k, d in pipe.detectors.items()})
    for state in (snap, json.loads(json.dumps(legacy))):
        again = MeterPipeline.restore(state, Settings())
        for kind, det in pipe.detectors.items():
            assert again.detectors[kind].snapshot() == det.snapshot()


def test_fitted_baseline_gives_expected_and_band(tmp_path: Path) -> None:
    from detectors.baseline import BaselineConfig, fit_baseline

    # an hourly baseline of the same meter, fitted on two weeks before the live data
    hours = [T0 - 14 * 86400 + 3600 * i for i in range(14 * 24)]
    hourly = [sum(rate_kw(t + 60 * k) / 60 for k in range(60)) * (1 + 0.01 * math.sin(t / 3600))
              for t in hours]  # a little noise: the noise model needs some
    model = fit_baseline(hours, hourly, meter="m1", unit="kWh",
                         config=BaselineConfig(interval_s=3600))
    (tmp_path / "bl" / "dairy").mkdir(parents=True)
    (tmp_path / "bl" / "dairy" / "m1.json").write_text(model.to_json())
    svc = DetectService(_spec(tmp_path, "baselines: {dir: bl}\n"), writer=FlakyWriter(0))
    msgs = [(TOPIC, reading(seq=i + 1, ts=t, energy_kwh=v))
            for i, (t, v) in enumerate(counter(1))]
    asyncio.run(svc.handle(msgs))
    cons = [x for _, x in svc.spool.peek(100_000) if x.startswith("consumption,")]
    assert len(cons) == 95

    def field(text: str, name: str) -> float:
        return float(text.split(" ")[1].split(f"{name}=")[1].split(",")[0])

    for text in cons:
        actual, expected = field(text, "actual"), field(text, "expected")
        assert expected == pytest.approx(actual, rel=0.05, abs=0.5)
        assert field(text, "lower") <= expected <= field(text, "upper")


def test_batch_not_stored_is_not_taken_for_duplicates_later(tmp_path: Path) -> None:
    svc = DetectService(_spec(tmp_path), writer=FlakyWriter(0))
    msgs = [(TOPIC, reading(seq=i + 1, ts=t, energy_kwh=v))
            for i, (t, v) in enumerate(counter(1))]
    asyncio.run(svc.handle(msgs[:10]))
    real_append = svc.spool.append

    def disk_full(lines: Sequence[str], marks: Any = (), replay: Any = ()) -> None:
        raise OSError("disk full")

    svc.spool.append = disk_full  # type: ignore[method-assign]
    with pytest.raises(OSError):
        asyncio.run(svc.handle(msgs[5:50]))
    svc.spool.append = real_append  # type: ignore[method-assign]
    asyncio.run(svc.handle(msgs[5:50]))  # the broker's redelivery
    lines = [x for _, x in svc.spool.peek(100_000) if x.startswith("reading,")]
    assert len(lines) == 50  # 0-9 once, 10-49 after the failure, none twice


def test_one_meters_pipeline_failure_stops_nothing_else(tmp_path: Path) -> None:
    svc = DetectService(_spec(tmp_path), writer=FlakyWriter(0))
    m2 = "recp/v1/dairy/m2/reading"
    msgs = [(TOPIC, reading(seq=i + 1, ts=t, energy_kwh=v))
            for i, (t, v) in enumerate(counter(1))]
    msgs += [(m2, reading(seq=i + 1, ts=t, meter="m2", energy_kwh=v))
             for i, (t, v) in enumerate(counter(1))]
    svc.pipeline("dairy", "m2", "electricity").complete = None  # type: ignore[assignment]
    asyncio.run(svc.handle(msgs))
    lines = [x for _, x in svc.spool.peek(100_000)]
    assert sum(x.startswith("reading,") for x in lines) == len(msgs)
    assert sum(x.startswith("consumption,") and "meter=m1" in x for x in lines) == 95
    assert svc.stats.pipeline_errors == 1


def test_intake_pauses_while_the_spool_is_nearly_full(tmp_path: Path) -> None:
    svc = DetectService(_spec(tmp_path), writer=FlakyWriter(0))
    svc.spool.close()
    svc.spool = Spool(tmp_path / "small.sqlite", cap=1000)
    svc.spool.append([f"p{i}" for i in range(600)])

    async def go() -> float:
        stop = asyncio.Event()

        async def drain_later() -> None:
            await asyncio.sleep(0.3)
            rows = svc.spool.peek(200)
            svc.spool.delete_through(rows[-1][0])

        began = time.monotonic()
        task = asyncio.create_task(drain_later())
        await svc._backpressure(stop, 1000)  # 600 > 500: waits for the database
        await task
        paused = time.monotonic() - began
        await svc._backpressure(stop, 1000)  # 400: goes on at once
        return paused

    assert asyncio.run(go()) >= 0.3


class _Rec:
    def __init__(self, **values: Any) -> None:
        self.values = values


def test_baseline_fit_from_stored_consumption(tmp_path: Path) -> None:
    import datetime as dt

    from detectors.baseline import BaselineConfig, BaselineModel
    from detectors.service.baselines import fit_site, flux, rows_from_records, save

    records = []
    for i in range(14 * 96):  # two weeks of 15-minute consumption, one interval missing
        t = T0 + 900 * i
        value = None if i == 500 else sum(rate_kw(t + 60 * k) / 60 for k in range(15))
        records.append(_Rec(_time=dt.datetime.fromtimestamp(t, dt.timezone.utc), _value=value,
                            meter="m1", unit="kWh"))
    models = fit_site(rows_from_records(records), BaselineConfig(interval_s=3600))
    model = models["m1"]
    assert isinstance(model, BaselineModel) and model.stats.n == 14 * 24 - 1
    spec = _spec(tmp_path, "baselines: {dir: bl}\n")
    path = save(spec, "dairy", model)
    assert path == tmp_path / "bl" / "dairy" / "m1.json"
    svc = DetectService(spec, writer=FlakyWriter(0))
    assert svc.load_baseline("dairy", "m1") is not None
    q = flux("recp", "dairy", dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
             dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc), ["m1"])
    assert 'r.site == "dairy"' in q and 'r.meter == "m1"' in q and '"actual"' in q


def test_partition_flag_separates_files_client_ids_and_names(tmp_path: Path) -> None:
    cfg = tmp_path / "analytics.yaml"
    cfg.write_text("kind: analytics\ninstance: d1\nmqtt: {client_id: fixed}\n"
                   "spool: {path: spool.sqlite}\ncheckpoint: {path: state.json}\n")
    one = load_analytics(cfg)
    a, b = (load_analytics(cfg, partition=(i, 2)) for i in (0, 1))
    assert one.spool_path == tmp_path / "spool.sqlite" and one.client_id == "fixed"
    assert a.spool_path == tmp_path / "spool.p0of2.sqlite"
    assert b.checkpoint_path == tmp_path / "state.p1of2.json"
    assert (a.client_id, b.client_id) == ("fixed-p0of2", "fixed-p1of2")
    assert (a.instance, b.instance, one.instance) == ("d1-p0of2", "d1-p1of2", "d1")
    with pytest.raises(ConfigError):
        load_analytics(cfg, partition=(2, 2))


def test_overspend_against_the_baseline_opens_once_and_survives_restore(tmp_path: Path) -> None:
    from detectors.baseline import BaselineConfig, fit_baseline

    def usage(t: int, factor: float = 1.0) -> float:  # kWh per 15 minutes, a little noise
        wobble = 1.0 + 0.03 * math.sin(t / 900 * 1.7)
        return sum(rate_kw(t + 60 * k) / 60 for k in range(15)) * wobble * factor

    starts = [T0 - 21 * 86400 + 900 * i for i in range(21 * 96)]
    model = fit_baseline(starts, [usage(t) for t in starts], meter="m1", unit="kWh",
                         config=BaselineConfig(interval_s=900))
    pipe = MeterPipeline("dairy", "m1", "electricity", Settings())
    pipe.add(T0, {"energy_kwh": 0.0})  # the unit becomes known
    pipe.set_baseline(model)
    assert pipe.overspend is not None
    e, kinds, saved, open_at = 0.0, [], None, None
    for i in range(1, 3 * 96):
        t = T0 + 900 * i
        # day 2, 08:00 to 16:00: 40 % more than the baseline expects
        factor = 1.4 if 96 + 32 <= i < 96 + 64 else 1.0
        e += usage(t - 900, factor)
        pipe.add(t, {"energy_kwh": e})
        _, trans = pipe.complete()
        kinds += [(x.kind, x.event.type.value) for x in trans if x.kind != "update"]
        if ("open", "overspend") in kinds and open_at is None:
            open_at = i
        if i == 96 + 50 and saved is None:  # restart while the overspend is open
            saved = json.loads(json.dumps(pipe.snapshot()))
            pipe = MeterPipeline.restore(saved, Settings())
            pipe.set_baseline(model)
    assert open_at is not None and open_at < 96 + 50  # open when the restart came
    opened = [k for k in kinds if k == ("open", "overspend")]
    closed = [k for k in kinds if k == ("close", "overspend")]
    assert len(opened) == 1 and len(closed) == 1, kinds


def test_agent_health_becomes_an_agent_point_and_bad_health_a_dead_letter() -> None:
    from collector import contract
    from detectors.service.service import agent_line
    from detectors.service.validate import DeadLetter, Limits, parse

    topic = contract.health_topic("dairy")
    payload = contract.dumps({
        "v": 1, "site": "dairy", "ts": "2026-01-05T10:00:00.000Z", "uptime_s": 60.0,
        "clock": "unsynced", "outbox": {"depth": 7, "held": 2, "cap": 1000,
                                         "dropped": {"cap": 4}},
        "devices": {"a": {"state": "up"}, "b": {"state": "offline"}, "c": {"state": "down"}},
    })
    health = parse(topic, payload, 1767607200.0, Limits())
    assert isinstance(health, contract.Health)
    line = agent_line(health)
    assert line == (
        "agent,site=dairy devices_up=1i,devices_down=2i,outbox_depth=7i,outbox_held=2i,"
        "outbox_dropped=4i,uptime_s=60.0,clock_synced=0i 1767607200000"
    )
    other = parse(contract.health_topic("textile"), payload, 1767607200.0, Limits())
    assert isinstance(other, DeadLetter) and "does not match" in other.reason
    broken = parse(topic, b'{"v": 1, "site": "dairy"}', 1767607200.0, Limits())
    assert isinstance(broken, DeadLetter) and "invalid agent health" in broken.reason
    assert parse(contract.status_topic("dairy"), b'{"v":1}', 1767607200.0, Limits()) is None


def test_concurrent_checkpoints_do_not_collide(tmp_path: Path) -> None:
    # the periodic save and an event's save at once once renamed each other's temp file
    svc = DetectService(_spec(tmp_path), writer=FlakyWriter(0))
    msgs = [(TOPIC, reading(seq=i + 1, ts=t, energy_kwh=v))
            for i, (t, v) in enumerate(counter(1))]
    asyncio.run(svc.handle(msgs))

    async def go() -> None:
        await asyncio.gather(*(svc.save_checkpoint() for _ in range(30)))

    asyncio.run(go())
    assert svc.stats.checkpoints == 30 and svc.stats.checkpoint_errors == 0
    assert json.loads((tmp_path / "state.json").read_text())["meters"]


def test_paho_properties_share_tables_and_still_round_trip() -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from detectors.service import mqttfast

    assert mqttfast.install() and mqttfast.install()  # idempotent
    a, b = Properties(PacketTypes.PUBLISH), Properties(PacketTypes.PUBLISH)
    assert a.names is b.names and a.properties is b.properties
    a.MessageExpiryInterval = 60
    a.UserProperty = ("site", "dairy")
    assert not hasattr(b, "MessageExpiryInterval")  # values stay per instance
    packed = a.pack()
    c = Properties(PacketTypes.PUBLISH)
    c.unpack(packed)
    assert c.MessageExpiryInterval == 60 and c.UserProperty == [("site", "dairy")]
    with pytest.raises(Exception, match="does not apply"):
        Properties(PacketTypes.PUBACK).SessionExpiryInterval = 5  # checks still in place


def _state(svc: DetectService) -> dict[str, Any]:
    return {f"{p.site}/{p.meter}": {k: v for k, v in p.snapshot().items()}
            for p in svc.meters.values()}


def _alerts(svc: DetectService) -> list[tuple[str, str]]:
    out = []
    for o in svc.outgoing:
        if o.topic.startswith("recp/v1/_alerts/"):
            a = json.loads(o.payload)
            out.append((a["event"], a["id"]))
    return out


def _deliver(svc: DetectService) -> list[tuple[str, str]]:
    """What a session does with the queued alerts: publish, and on PUBACK mark sent."""
    out = _alerts(svc)
    for o in [o for o in svc.outgoing if o.alert]:
        svc.spool.alert_sent(o.alert)
        svc.outgoing.remove(o)
    return out


@pytest.mark.parametrize("died", ["between checkpoints", "before an event's checkpoint"])
def test_readings_after_the_checkpoint_reach_the_detectors_after_sigkill(
    tmp_path: Path, died: str
) -> None:
    """Issue 5: what was stored (and PUBACKed) after the last checkpoint is fed to the
    restarted detectors before new messages; their state then equals an uninterrupted
    run's, and no alert is sent twice (or lost)."""
    m2 = "recp/v1/dairy/m2/reading"
    msgs = []
    for i, (t, v) in enumerate(counter(5)):
        msgs.append((TOPIC, reading(seq=i + 1, ts=t, energy_kwh=v)))
        msgs.append((m2, reading(seq=i + 1, ts=t, meter="m2", energy_kwh=v / 2)))
    batches = [msgs[i : i + 150] for i in range(0, len(msgs), 150)]
    spike = next(i for i, b in enumerate(batches)  # the batch whose readings open it
                 if any(json.loads(p)["ts"] >= "2026-01-04T10:3" for _, p in b))

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = DetectService(_spec(tmp_path / "a"), writer=FlakyWriter(0))
    for b in batches:
        asyncio.run(straight.handle(b))

    first = DetectService(_spec(tmp_path / "b"), writer=FlakyWriter(0))
    sent = []
    if died == "between checkpoints":
        kill = spike + 6  # the spike has opened and closed, alerts sent
        asyncio.run(first.handle([m for b in batches[:kill - 4] for m in b]))
        asyncio.run(first.save_checkpoint())  # then 4 batches stored, not checkpointed
        for b in batches[kill - 4 : kill]:
            asyncio.run(first.handle(b))
            sent += _deliver(first)
    else:  # the opening batch is stored, the process dies before its alert is published
        kill = spike + 1
        for b in batches[:spike]:
            asyncio.run(first.handle(b))
            sent += _deliver(first)
        first._handle_sync(batches[spike], time.time())
    first.spool.close()  # SIGKILL: no shutdown checkpoint

    second = DetectService(_spec(tmp_path / "b"), writer=FlakyWriter(0))
    assert sum(len(r) for r in second.replay) > 0
    asyncio.run(second.replay_after_checkpoint())
    assert second.replay == []
    for b in batches[kill:]:
        asyncio.run(second.handle(b))
    assert _state(second) == _state(straight)
    assert sent + _alerts(second) == _alerts(straight)
    assert ("open", f"dairy/m1/spike/{T0 + 3 * 86400 + 36000}") in _alerts(straight)
    # nothing left to replay after a checkpoint; a clean restart replays nothing
    asyncio.run(second.save_checkpoint())
    second.spool.close()
    third = DetectService(_spec(tmp_path / "b"), writer=FlakyWriter(0))
    assert third.replay == []
    third.spool.close()


def test_dedup_skips_an_announced_hole_and_still_takes_its_late_readings() -> None:
    d = SeqTracker()
    key = ("dairy", "m1", "s1")
    for seq in (1, 2, 3, 8, 9, 12):
        assert d.accept(key, seq)
    assert d.done(key) == 3
    assert d.skip_to(key, 10) == 5  # 4-7 and 10 never came; 8, 9 did
    assert d.done(key) == 10 and d.skip_to(key, 10) is None and d.skip_to(key, 5) is None
    assert d.accept(key, 11) and d.done(key) == 12  # 12 was above
    assert not d.accept(key, 8) and not d.accept(key, 2)  # stored already
    assert d.accept(key, 5) and not d.accept(key, 5)  # sent before it was dropped
    restored = SeqTracker.restore(d.snapshot())
    assert restored.accept(key, 6) and not restored.accept(key, 5)
    assert SeqTracker.restore([["dairy", "m1", "s1", 3, [5]]]).done(key) == 3  # old rows
    fresh = SeqTracker()
    assert fresh.skip_to(key, 50) == 0 and fresh.accept(key, 51) and fresh.done(key) == 51


def test_service_takes_a_dropped_announcement_acks_past_the_hole_and_stores_it(
    tmp_path: Path,
) -> None:
    svc = DetectService(_spec(tmp_path), writer=FlakyWriter(0))
    msgs = [(TOPIC, reading(seq=i + 1, ts=t, energy_kwh=v))
            for i, (t, v) in enumerate(counter(1))]
    dropped = contract.dumps({
        "v": 1, "site": "dairy", "meter": "m1", "stream": "s1", "through_seq": 150,
        "count": 120, "reason": "outbox full (cap 1000), oldest dropped",
        "ts": "2026-01-01T12:00:00.000Z"})  # fmt: skip
    asyncio.run(svc.handle(msgs[:20] + msgs[140:200]))  # 21-140 never arrive
    svc.flush_acks()
    assert json.loads(svc.outgoing[-1].payload)["seq"] == 20
    asyncio.run(svc.handle([("recp/v1/dairy/m1/dropped", dropped)]))
    svc.flush_acks()
    assert json.loads(svc.outgoing[-1].payload) == {"v": 1, "stream": "s1", "seq": 200}
    asyncio.run(svc.handle([("recp/v1/dairy/m1/dropped", dropped)]))  # retained, again
    asyncio.run(svc.handle([msgs[30], msgs[150]]))  # sent before the drop; a repeat
    points = [x for _, x in svc.spool.peek(100_000) if x.startswith("dropped,")]
    # the reason is a tag (a string field means nothing in VictoriaMetrics)
    assert len(points) == 1 and points[0].startswith(
        r"dropped,meter=m1,reason=outbox\ full\ (cap\ 1000)\,\ oldest\ dropped,site=dairy,"
        "stream=s1 ")
    assert "reason=" not in points[0].split(" ")[-2]
    assert points[0].endswith(f" {(T0 + 43200) * 1000}") and "through_seq=150i" in points[0]
    assert "missing=120i" in points[0] and "count=120i" in points[0]
    assert svc.stats.drops_announced == 1 and svc.stats.readings_in == 81
    assert svc.stats.duplicates == 1
    bad = contract.dumps({"v": 1, "site": "dairy", "meter": "m2", "stream": "s1",
                          "through_seq": 1, "count": 1, "reason": "x",
                          "ts": "2026-01-01T00:00:00Z"})
    asyncio.run(svc.handle([("recp/v1/dairy/m1/dropped", bad)]))
    assert svc.stats.dead_letters == 1
    assert "dropped" in " ".join(svc.filters())


def _line_counter(days: int, stop_day: int) -> list[tuple[int, float]]:
    """A counter rising 06:00-22:00 on weekdays, standing still at night, at weekends and
    on day ``stop_day`` all day (a line stopped for maintenance)."""
    out, e, t = [], 1000.0, T0  # 2026-01-01 is a Thursday
    while t < T0 + days * 86400:
        out.append((t, round(e, 3)))
        day, h = (t - T0) // 86400, (t % 86400) / 3600
        weekday = (3 + day) % 7 < 5
        if weekday and 6 <= h < 22 and day != stop_day:
            e += 20.0 * 300 / 3600
        t += 300
    return out


@pytest.mark.parametrize(("resource", "counter_name"),
                         [("production", "produced_units"), ("water", "volume_m3")])
def test_production_standing_still_is_no_loss(resource: str, counter_name: str) -> None:
    """Issue 5: a production line standing still (nights, weekends, a stopped day) or
    producing more at night is scored but raises no stuck, base-load or other loss event;
    the same counter as a water meter does raise them."""
    pipe = MeterPipeline("dairy", "line1", resource, Settings())
    transitions = []
    intervals = 0
    for t, v in _line_counter(28, stop_day=19):
        pipe.add(t, {counter_name: v})
        iv, tr = pipe.complete()
        intervals += len(iv)
        transitions += [x for x in tr if x.kind == "open"]
    assert intervals == 28 * 96 - 1 and pipe.info.unit
    if resource == "production":
        assert transitions == []
    else:
        assert {x.event.type.value for x in transitions} & {"stuck", "base_load_rise"}


def test_replay_numbering_survives_a_clean_stop_and_a_new_spool_file(tmp_path: Path) -> None:
    msgs = [(TOPIC, reading(seq=i + 1, ts=t, energy_kwh=v))
            for i, (t, v) in enumerate(counter(1))]
    svc = DetectService(_spec(tmp_path), writer=FlakyWriter(0))
    asyncio.run(svc.handle(msgs[:100]))
    asyncio.run(svc.save_checkpoint())  # a clean stop: nothing left to replay
    through = json.loads((tmp_path / "state.json").read_text())["replay_through"]
    svc.spool.close()
    svc = DetectService(_spec(tmp_path), writer=FlakyWriter(0))
    assert svc.replay == [] and svc.spool.replay_last == through > 0
    svc.spool.close()
    (tmp_path / "spool.sqlite").unlink()  # the spool replaced; the checkpoint kept
    svc = DetectService(_spec(tmp_path), writer=FlakyWriter(0))
    asyncio.run(svc.handle(msgs[100:150]))  # then SIGKILL before a checkpoint
    assert svc.spool.replay_last > through
    svc.spool.close()
    svc = DetectService(_spec(tmp_path), writer=FlakyWriter(0))
    assert sum(len(b) for b in svc.replay) == 50
    svc.spool.close()


def _spike_batches() -> tuple[list[list[tuple[str, bytes]]], int]:
    msgs = [(TOPIC, reading(seq=i + 1, ts=t, energy_kwh=v))
            for i, (t, v) in enumerate(counter(5))]
    batches = [msgs[i : i + 100] for i in range(0, len(msgs), 100)]
    spike = next(i for i, b in enumerate(batches)  # the batch whose readings open it
                 if any(json.loads(p)["ts"] >= "2026-01-04T10:3" for _, p in b))
    return batches, spike


def test_alerts_survive_a_session_cancelled_mid_batch(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 5: the broker lost while a batch that opened an event was being finished (its
    checkpoint being saved) cancelled the batch after its readings were stored and marked
    seen; the redelivery was then dropped as duplicates and the alert never sent. Now the
    alert is committed with the batch and queued whatever happens to the session."""
    batches, spike = _spike_batches()
    svc = DetectService(_spec(tmp_path), writer=FlakyWriter(0))
    for b in batches[:spike]:
        asyncio.run(svc.handle(b))
    real = checkpoint.save

    def slow_save(path: Any, state: Any) -> int:
        time.sleep(0.5)
        return real(path, state)

    monkeypatch.setattr(checkpoint, "save", slow_save)

    async def lost_broker() -> None:
        task = asyncio.create_task(svc.handle(batches[spike]))
        await asyncio.sleep(0.05)
        for _ in range(200):  # until the batch's thread is done (readings stored)
            if svc.stats.batches or svc.dedup.done(("dairy", "m1", "s1")) >= 100 * (spike + 1):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)
        task.cancel()  # the session ends (broker connection dropped)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await svc.handle(batches[spike])  # the broker delivers the batch again

    asyncio.run(lost_broker())
    opened = f"dairy/m1/spike/{T0 + 3 * 86400 + 36000}"
    assert _deliver(svc) == [("open", opened), ("close", opened)]  # the batch spans both
    assert svc.spool.alert_keys() == {f"{opened}/open": True, f"{opened}/close": True}
    svc.spool.close()


def test_an_alert_sent_is_not_raised_again_by_a_replay_when_checkpoints_fail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 5: a checkpoint save failing after an alert was sent let the replay after a
    restart raise it again. The spool knows the alerts committed: a replay adds none."""
    batches, spike = _spike_batches()
    svc = DetectService(_spec(tmp_path), writer=FlakyWriter(0))
    asyncio.run(svc.save_checkpoint())  # before the disk fills up

    def full_disk(path: Any, state: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save", full_disk)
    sent = []
    for b in batches[: spike + 8]:
        asyncio.run(svc.handle(b))
        sent += _deliver(svc)
    with pytest.raises(OSError):
        asyncio.run(svc.save_checkpoint())
    assert [e for e, _ in sent] == ["open", "close"]
    svc.spool.close()  # SIGKILL
    monkeypatch.undo()

    again = DetectService(_spec(tmp_path), writer=FlakyWriter(0))
    assert len(again.replay) >= spike  # the detectors are fed everything again
    asyncio.run(again.replay_after_checkpoint())
    for b in batches[spike + 8 :]:
        asyncio.run(again.handle(b))
    assert _deliver(again) == []
    # once a checkpoint covers them, the sent alerts' keys are forgotten
    asyncio.run(again.save_checkpoint())
    assert again.spool.alert_keys() == {}
    again.spool.close()
