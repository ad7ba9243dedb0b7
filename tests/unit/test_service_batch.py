"""``readings`` messages (several readings of one meter) through ``DetectService.handle``.

The contract (docs/mqtt-contract.md, "Readings (batch)"): a consumer treats a batch exactly
as its readings arriving one by one, in order; a bad item is dead-lettered alone.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from test_service_units import TOPIC, _spec, counter, reading

from collector import contract
from detectors.service.service import DetectService

BATCH_TOPIC = "recp/v1/dairy/m1/readings"


def batch(payloads: list[bytes]) -> bytes:
    """The ``readings`` message carrying these single-reading payloads of one meter."""
    return contract.pack_readings(payloads)


class Discard:
    def write(self, lines: list[str]) -> None:
        pass

    def close(self) -> None:
        pass


def run(tmp_path: Path, batches: list[list[tuple[str, bytes]]]) -> DetectService:
    tmp_path.mkdir(parents=True, exist_ok=True)
    svc = DetectService(_spec(tmp_path), writer=Discard())

    async def go() -> None:
        for b in batches:
            await svc.handle(b)

    asyncio.run(go())
    return svc


def stored(svc: DetectService) -> list[str]:
    return [x for _, x in svc.spool.peek(1_000_000) if not x.startswith("service,")]


def alerts(svc: DetectService) -> list[dict[str, Any]]:
    out = []
    for o in svc.outgoing:
        if o.topic.startswith("recp/v1/_alerts/"):
            body = json.loads(o.payload)
            body.pop("published")
            out.append(body)
    return out


def series(days: int = 4) -> list[bytes]:
    return [reading(seq=i + 1, ts=t, energy_kwh=v) for i, (t, v) in enumerate(counter(days))]


def test_a_batch_stores_the_same_points_and_events_as_its_readings_one_by_one(
        tmp_path: Path) -> None:
    one = series()
    # one by one, 200 messages per handle() call; and as batches of 50 readings
    singles = [[(TOPIC, p) for p in one[i:i + 200]] for i in range(0, len(one), 200)]
    packed = [(BATCH_TOPIC, batch(one[i:i + 50])) for i in range(0, len(one), 50)]
    a = run(tmp_path / "a", singles)
    b = run(tmp_path / "b", [packed[i:i + 4] for i in range(0, len(packed), 4)])
    assert a.stats.readings_in == b.stats.readings_in == len(one)
    assert stored(a) == stored(b)
    assert sum(x.startswith("reading,") for x in stored(b)) == len(one)
    assert any(x.startswith("event,") for x in stored(b))  # the spike of day 4
    assert alerts(a) == alerts(b) and alerts(b)
    assert a.dedup.snapshot() == b.dedup.snapshot()


def test_a_bad_item_is_dead_lettered_alone_and_its_neighbours_stored(tmp_path: Path) -> None:
    good = series(1)[:5]
    body = json.loads(batch(good))
    body["readings"][2]["values"] = {"energy_kwh": "lots"}
    svc = run(tmp_path, [[(BATCH_TOPIC, json.dumps(body).encode())]])
    assert svc.stats.readings_in == 4 and svc.stats.dead_letters == 1
    seqs = sorted(int(x.rsplit("seq=", 1)[1].split("i")[0]) for x in stored(svc)
                  if x.startswith("reading,"))
    assert seqs == [1, 2, 4, 5]
    dead = [o for o in svc.outgoing if o.topic == "recp/v1/_deadletter/dairy"]
    assert len(dead) == 1
    letter = json.loads(dead[0].payload)
    assert letter["topic"] == BATCH_TOPIC
    assert letter["reason"].startswith("readings[2] (seq 3): values.energy_kwh")
    assert json.loads(letter["payload_text"])["seq"] == 3
    # seq 3 was never stored: the consumer ack stops below it
    svc.flush_acks()
    acks = [json.loads(o.payload) for o in svc.outgoing if o.topic.endswith("/ack")]
    assert acks == [{"v": 1, "stream": "s1", "seq": 2}]


def test_a_batch_delivered_again_is_stored_once(tmp_path: Path) -> None:
    one = series(1)
    packed = [(BATCH_TOPIC, batch(one[i:i + 50])) for i in range(0, len(one), 50)]
    twice = run(tmp_path / "twice", [packed[:3], packed[:4], packed, packed[2:5]])
    once = run(tmp_path / "once", [packed])
    assert twice.stats.readings_in == once.stats.readings_in == len(one)
    assert twice.stats.duplicates == 150 + 150 + 200
    assert sorted(stored(twice)) == sorted(stored(once))  # the same points, once each
    # and the same readings one by one after the batches: duplicates too
    again = run(tmp_path / "mixed", [packed[:2], [(TOPIC, p) for p in one[:150]]])
    assert again.stats.readings_in == 150 and again.stats.duplicates == 100


def test_a_batch_with_a_bad_shared_part_is_one_dead_letter(tmp_path: Path) -> None:
    body = json.loads(batch(series(1)[:3]))
    body["resource"] = "gas"
    svc = run(tmp_path, [[(BATCH_TOPIC, json.dumps(body).encode())]])
    assert svc.stats.readings_in == 0 and svc.stats.dead_letters == 1
    (dead,) = [json.loads(o.payload) for o in svc.outgoing
               if o.topic.startswith("recp/v1/_deadletter/")]
    assert dead["reason"].startswith("invalid readings: resource")


def test_the_service_subscribes_to_batches_too(tmp_path: Path) -> None:
    svc = DetectService(_spec(tmp_path), writer=Discard())
    assert "recp/v1/+/+/readings" in svc.filters()
    assert "recp/v1/+/+/reading" in svc.filters()


def test_a_readings_message_the_fast_path_refuses_is_fast_checked_once(
        tmp_path: Path, monkeypatch: Any) -> None:
    """The models give the verdict on what the fast path cannot prove valid, without the
    fast path being tried a second time; the bad item is still dead-lettered alone."""
    from detectors.service import service, validate

    calls: list[str] = []
    real = validate.fast_rows

    def counted(topic: str, *args: Any) -> Any:
        calls.append(topic)
        return real(topic, *args)

    monkeypatch.setattr(service, "fast_rows", counted)
    monkeypatch.setattr(validate, "fast_rows", counted)
    body = json.loads(batch(series(1)[:3]))
    body["readings"][1]["values"] = {"energy_kwh": "lots"}
    svc = run(tmp_path, [[(BATCH_TOPIC, json.dumps(body).encode())]])
    assert calls == [BATCH_TOPIC]
    assert svc.stats.readings_in == 2 and svc.stats.dead_letters == 1
