"""The chain harness's reconciliation pairs stored readings with the plant's served reads."""

from __future__ import annotations

from chain import match


def test_each_stored_reading_pairs_with_one_served_read():
    served = [(0.0, 10.0), (900.0, 11.0), (1800.0, 11.0), (2700.0, 12.5)]
    # stamped a little off the plant's time; the flat counter's two reads pair by time
    stored = [(40.0, 10.0), (1750.0, 11.0), (880.0, 11.0), (2650.0, 12.5)]
    assert match(served, stored, tolerance_s=600) == (4, 50.0)


def test_lost_duplicated_and_wrong_readings_do_not_pair():
    served = [(0.0, 10.0), (900.0, 11.0), (1800.0, 12.0)]
    # 11.0 lost; 10.0 stored twice (a replay under another timestamp); 12.0 stored as 12.1
    stored = [(0.0, 10.0), (300.0, 10.0), (1800.0, 12.1)]
    assert match(served, stored, tolerance_s=600)[0] == 1
    # too far from the read's time to be that reading
    assert match(served, [(5000.0, 12.0)], tolerance_s=600)[0] == 0


def test_reads_in_memory_at_an_agent_kill_are_the_unstored_last_ones():
    from chain import in_memory_at_kills, pair

    served = [(0.0, 1.0), (10.0, 2.0), (20.0, 3.0), (30.0, 4.0), (40.0, 5.0), (50.0, 6.0)]
    stored = [(0.0, 1.0), (20.0, 3.0), (40.0, 5.0), (50.0, 6.0)]
    used, _ = pair(served, stored, tolerance_s=5)
    assert used == [True, False, True, False, True, True]
    # killed at 32: the read of 30 was taken, not committed; the read of 10 is a real loss
    assert in_memory_at_kills(served, used, [32.0]) == ([1], 2.0)
    # a kill after which the last read was stored: nothing was in memory
    assert in_memory_at_kills(served, used, [55.0]) == ([0], 0.0)
    # every unstored read back to the last stored one is counted (the harness asserts <= 1)
    used[2] = False
    assert in_memory_at_kills(served, used, [32.0])[0] == [3]


def test_an_alert_delivered_again_is_not_raised_twice():
    from chain import raised_twice

    opened = {"id": "w/spike/1", "event": "open", "published": "2026-03-02T01:00:00.000Z"}
    closed = {"id": "w/spike/1", "event": "close", "published": "2026-03-02T02:00:00.000Z"}
    assert raised_twice([opened, closed]) == ([], 0)
    # the same close message again (a QoS 1 redelivery after a broker restart)
    assert raised_twice([opened, closed, dict(closed)]) == ([], 1)
    # closed again later: a second message for the same close
    again = {**closed, "published": "2026-03-02T05:00:00.000Z"}
    assert raised_twice([opened, closed, again]) == ([("w/spike/1", "close", 2)], 0)
