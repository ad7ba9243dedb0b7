"""Outbox rows -> MQTT messages: single readings, or packs of one meter's readings."""

from __future__ import annotations

from collector import contract
from collector.outbox import Row
from collector.packer import Packer

_ids = iter(range(1, 10**6))


def row(meter: str, seq: int) -> Row:
    payload = contract.dumps(contract.reading_payload(
        site="s", meter=meter, resource="water", stream="x1", seq=seq, ts=1767607200.0 + seq,
        quality=contract.Quality.OK, values={"volume_m3": float(seq)}))
    return Row(next(_ids), meter, seq, contract.reading_topic("s", meter), payload)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def seqs(messages: list) -> list[tuple[str, list[int]]]:
    return [(m.topic.split("/")[3], [r.seq for r in m.rows]) for m in messages]


def test_off_every_row_is_its_own_reading_message():
    p = Packer("s")
    rows = [row("a", 1), row("b", 1), row("a", 2)]
    p.add(rows)
    assert len(p) == 3
    out = p.take(more_waiting=True)
    assert [(m.topic, m.payload, m.rows) for m in out] == [(r.topic, r.payload, (r,))
                                                          for r in rows]
    assert len(p) == 0 and p.next_due() is None


def test_a_backlog_is_packed_per_meter_in_order_and_expands_to_its_readings():
    p = Packer("s", max_readings=3)
    rows = [row(m, s) for s in range(1, 8) for m in ("a", "b")]
    p.add(rows)
    # more rows waiting in the outbox: only full packs go
    out = p.take(more_waiting=True)
    assert seqs(out) == [("a", [1, 2, 3]), ("b", [1, 2, 3]), ("a", [4, 5, 6]),
                         ("b", [4, 5, 6])]
    assert len(p) == 2
    out += p.take(more_waiting=False)  # the backlog is read: the rest goes (max_wait 0)
    assert seqs(out)[4:] == [("a", [7]), ("b", [7])]
    assert all(m.topic.endswith("/readings") for m in out)
    by_seq = {(r.meter, r.seq): contract.Reading.model_validate_json(r.payload) for r in rows}
    for m in out:
        batch = contract.Readings.model_validate_json(m.payload)
        assert batch.expand() == [by_seq[(r.meter, r.seq)] for r in m.rows]
    assert len(p) == 0


def test_live_readings_wait_up_to_max_wait_to_be_packed():
    clock = Clock()
    p = Packer("s", max_readings=10, max_wait_s=1.0, clock=clock)
    p.add([row("a", 1)])
    assert p.take() == [] and p.next_due() == 101.0
    clock.t = 100.6
    p.add([row("a", 2), row("b", 1)])
    assert p.take() == [] and p.next_due() == 101.0
    clock.t = 101.0
    assert seqs(p.take()) == [("a", [1, 2])]  # b has waited 0.4 s only
    assert p.next_due() == 101.6
    clock.t = 101.7
    assert seqs(p.take()) == [("b", [1])]


def test_the_read_ahead_limit_sends_the_largest_partial_packs_and_stop_sends_all():
    p = Packer("s", max_readings=50, max_wait_s=5.0, clock=Clock())
    p.add([row("a", s) for s in range(1, 5)] + [row("b", 1)] + [row("c", s) for s in (1, 2)])
    assert seqs(p.take(more_waiting=True, limit=6)) == [("a", [1, 2, 3, 4])]
    assert seqs(p.take(more_waiting=True, force=True)) == [("b", [1]), ("c", [1, 2])]
    assert len(p) == 0
