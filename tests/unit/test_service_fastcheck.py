"""The service's fast validation path says what the models say, reading by reading.

:func:`detectors.service.validate.parse_message` checks readings without building pydantic
models where it can; these properties compare it with the models
(:func:`detectors.service.validate.parse`, reading by reading for a ``readings`` batch) on
payloads whose every field is drawn from values either side of each rule.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from fuzztargets import ITEM_KEYS, reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors.service.fastcheck import Item, ts_seconds
from detectors.service.service import item_line, reading_line
from detectors.service.validate import DeadLetter, Limits, parse, parse_message

NOW = 1_790_000_000.0
LIMITS = Limits()
TOPIC = "recp/v1/dairy/m1/reading"

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**60), 2**60),
    st.sampled_from([0, 1, -1, 2**53, 2**53 + 1, 10**30, 0.0, -0.0, 1e308, 1e-320]),
)
weird = st.one_of(st.none(), st.booleans(), st.text(max_size=6), st.lists(st.integers(),
                  max_size=2), st.sampled_from(["1.5", "12", "ok", "", "\u00e9"]))
timestamps = st.one_of(
    st.datetimes(timezones=st.none()).map(lambda d: d.isoformat() + "Z"),
    st.datetimes(timezones=st.none()).map(lambda d: d.isoformat(timespec="milliseconds") + "Z"),
    st.sampled_from(["2026-09-21T13:33:20Z", "2026-09-21T13:33:20.1234567Z",
                     "2026-09-21 13:33:20Z", "2026-09-21T13:33:20+00:00", "2026-02-30T00:00:00Z",
                     "2026-09-21T24:00:00Z", "2026-09-21T13:33:60Z", "2026-09-21T13:33:20z",
                     "2026-09-21T13:33:20.Z", "0000-01-01T00:00:00Z", "2026-09-21T13:33:20"]),
    numbers, weird,
)


def field(good: Any, *others: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the good value, else one of the others (or the key left out: ``...``)."""
    return st.one_of(st.just(good), st.just(good), st.just(good), st.just(...), *others)


reading_fields = st.fixed_dictionaries({
    "v": field(1, st.sampled_from([1.0, 2, True, "1"])),
    "site": field("dairy", st.sampled_from(["Dairy", "dairy\n", "d" * 65, "_x", "m1"]), weird),
    "meter": field("m1", st.sampled_from(["M1", "m2", "m1 "]), weird),
    "resource": field("electricity", st.sampled_from(["water", "Electricity", "gas"]), weird),
    "stream": field("s1", st.sampled_from(["", "\u00e9t\u00e9", "a b"]), weird, numbers),
    "seq": field(7, numbers, weird, st.sampled_from([0, 2**63 - 1, 2**63, 7.0, "7"])),
    "ts": field("2026-09-21T13:33:20.123Z", timestamps),
    "quality": field("ok", st.sampled_from(["partial", "error", "OK", "bad"]), weird),
    "values": field({"energy_kwh": 1.5}, st.dictionaries(
        st.sampled_from(["energy_kwh", "power_kw", "volume_m3", "bogus", ""]),
        st.one_of(numbers, weird), max_size=3), weird),
    "errors": field({}, st.dictionaries(st.sampled_from(["*", "x", "\u00e9"]),
                                        st.one_of(st.text(max_size=4), weird), max_size=2),
                    weird),
    "clock": field("synced", st.sampled_from(["corrected", "unsynced", "SYNCED"]), weird),
    "latency_ms": field(1.25, numbers, weird),
    "extra": field(..., numbers, weird),
})


def body(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not ...}


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reading_fields)
def test_fast_path_equals_the_model_on_single_readings(fields: dict[str, Any]) -> None:
    payload = dumps(body(fields))
    got = parse_message(TOPIC, payload, NOW, LIMITS)
    assert got == reference(TOPIC, payload, NOW, LIMITS)
    if got and type(got[0]) is Item:  # and the same point as from the model
        from collector import contract

        assert item_line(got[0]) == reading_line(contract.Reading.model_validate_json(payload))


item_fields = st.lists(reading_fields, min_size=1, max_size=5)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reading_fields, item_fields, st.lists(st.integers(-1, 3), min_size=5, max_size=5))
def test_a_batch_is_its_readings_one_by_one(shared: dict[str, Any],
                                            items: list[dict[str, Any]],
                                            steps: list[int]) -> None:
    seq = 5
    raw_items = []
    for fields, step in zip(items, steps, strict=False):
        item = {k: v for k, v in body(fields).items() if k in ITEM_KEYS}
        if fields["seq"] == 7:  # keep most seqs in order, some repeated or going back
            seq += step
            item["seq"] = seq
        raw_items.append(item)
    head = {k: v for k, v in body(shared).items() if k not in ITEM_KEYS}
    topic = TOPIC + "s"
    payload = dumps({**head, "readings": raw_items})
    got = parse_message(topic, payload, NOW, LIMITS)
    want = reference(topic, payload, NOW, LIMITS)
    if want == [None]:  # the shared part is bad: one dead letter for the whole message
        assert len(got) == 1 and isinstance(got[0], DeadLetter)
        return
    assert [None if isinstance(g, DeadLetter) else g for g in got] == want
    for i, g in enumerate(got):
        if isinstance(g, DeadLetter):
            assert g.reason.startswith(f"readings[{i}] (seq ")


def test_dead_letter_reasons_are_the_models() -> None:
    good = {"v": 1, "site": "dairy", "meter": "m1", "resource": "electricity", "stream": "s1",
            "seq": 3, "ts": "2026-09-21T13:33:20Z", "quality": "ok",
            "values": {"energy_kwh": 1.0}}
    for change in ({"seq": "three"}, {"values": {"energy_kwh": math.inf}},
                   {"ts": "2126-01-01T00:00:00Z"}, {"meter": "m2"}):
        payload = dumps({**good, **change})
        got = parse_message(TOPIC, payload, NOW, LIMITS)
        assert got == [parse(TOPIC, payload, NOW, LIMITS)]
        assert isinstance(got[0], DeadLetter)
    batch = {k: v for k, v in good.items() if k not in ITEM_KEYS}
    items = [{"seq": 1, "ts": "2026-09-21T13:33:20Z", "quality": "ok", "values": {}},
             {"seq": 2, "ts": "2026-09-21T13:33:30Z", "quality": "ok",
              "values": {"energy_kwh": "lots"}},
             {"seq": 2, "ts": "2026-09-21T13:33:40Z", "quality": "ok", "values": {}},
             {"seq": 4, "ts": "2026-09-21T13:33:50Z", "quality": "ok", "values": {}}]
    got = parse_message(TOPIC + "s", dumps({**batch, "readings": items}), NOW, LIMITS)
    assert [type(g).__name__ for g in got] == ["Item", "DeadLetter", "Item", "Item"]
    assert [g.seq for g in got if isinstance(g, Item)] == [1, 2, 4]
    dead = got[1]
    assert isinstance(dead, DeadLetter)
    assert dead.reason.startswith("readings[1] (seq 2): values.energy_kwh")
    # the dead letter carries the reading the item stands for, shared fields included
    assert json.loads(dead.payload)["site"] == "dairy"
    whole = parse_message(TOPIC + "s", dumps({**batch, "stream": "", "readings": items}),
                          NOW, LIMITS)
    assert len(whole) == 1 and isinstance(whole[0], DeadLetter)
    assert whole[0].reason.startswith("invalid readings: stream")
    for bad, why in ((b"[]", "must be a JSON object"), (b"{", "not valid JSON"),
                     (dumps({**batch, "readings": []}), "a list of 1 to 500"),
                     (dumps({**batch, "readings": items * 126}), "a list of 1 to 500"),
                     (dumps({**batch, "meter": "m2", "readings": items}), "but came on")):
        res = parse_message(TOPIC + "s", bad, NOW, LIMITS)
        assert len(res) == 1 and isinstance(res[0], DeadLetter) and why in res[0].reason


def test_timestamps_the_fast_path_reads_match_pythons_and_the_rest_are_left_to_the_model(
) -> None:
    assert ts_seconds("2026-09-21T13:33:20.5Z") == 1789997600.5
    assert ts_seconds("2026-09-21T13:33:20Z") == 1789997600.0
    for other in ("2026-09-21T13:33:20+00:00", "2026-09-21T13:33:20", "2026-13-01T00:00:00Z",
                  "2026-09-21T13:33:20.1234567Z", 1790343200, None, "x"):
        assert ts_seconds(other) is None


_SPOOL: list[Any] = []


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["energy_kwh", "power_kw", "volume_m3"]),
                       st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
                       max_size=3))
def test_replay_rows_give_the_same_values_back(values: dict[str, float | None]) -> None:
    from detectors.service.spool import PIPELINE, Spool

    if not _SPOOL:  # one spool for all examples (a fresh one each is most of the time)
        _SPOOL.append(Spool(Path(tempfile.mkdtemp()) / "s.sqlite", cap=10, synchronous="NORMAL"))
    sp = _SPOOL[0]
    ts = 1790343200.123
    before = sp.replay_last
    sp.append([], replay=[("a", "m1", "water", ts, values, PIPELINE)])
    ((row,),) = sp.replay_rows(before)
    assert row == ("a", "m1", "water", ts, values, PIPELINE)
    assert all(type(v) is float for v in row[4].values() if v is not None)
