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
