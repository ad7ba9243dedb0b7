"""The CSV writer's fast path reads back exactly what the registers would hold."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.plant.registers import decode_point, encode_point, fast_reader, formatter, reading
from collector.profiles import ResolvedPoint, load_profile

PROFILES = sorted((Path(__file__).resolve().parents[2] / "edge_config" / "profiles").glob("*.yaml"))
# one point per distinct (type, scale, offset, rollover): the order cannot change a value
POINTS = list(
    {
        (p.type, p.scale, p.offset, p.rollover): p
        for path in PROFILES
        for p in load_profile(path).resolved()
    }.values()
)


@pytest.mark.parametrize("point", POINTS, ids=lambda p: f"{p.name}-{p.type}-{p.order.value}")
@given(value=st.floats(min_value=0, max_value=5e6, allow_nan=False))
def test_fast_reader_equals_register_round_trip(point: ResolvedPoint, value: float) -> None:
    if point.rollover:
        value %= point.rollover
    assert fast_reader(point)(value) == formatter(point)(reading(point, value))


def test_encode_clamps_to_the_register_range() -> None:
    point = ResolvedPoint(name="volume_m3", address=0, table="holding", type="uint16",
                          order="ABCD", scale=0.01, offset=0.0, counter_max=None)
    assert encode_point(point, 1e9) == [0xFFFF]
    assert encode_point(point, -5) == [0]
    assert decode_point(point, [12345]) == pytest.approx(123.45)
    assert point.rollover == pytest.approx(655.36)
