"""Register decoding against byte literals, and encode/decode round trips."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.modbus.decode import (
    DataType,
    WordOrder,
    bytes_to_registers,
    decode,
    encode,
    registers_to_bytes,
)

# 123456.789 as float32 is 0x47F12065; bytes A B C D = 47 F1 20 65
F32 = bytes.fromhex("47F12065")


@pytest.mark.parametrize(
    ("order", "wire"),
    [
        ("ABCD", "47F1 2065"),
        ("CDAB", "2065 47F1"),
        ("BADC", "F147 6520"),
        ("DCBA", "6520 F147"),
    ],
)
def test_float32_word_orders_from_wire_bytes(order: str, wire: str) -> None:
    regs = bytes_to_registers(bytes.fromhex(wire.replace(" ", "")))
    assert decode(regs, "float32", order) == struct.unpack(">f", F32)[0]
    assert encode(struct.unpack(">f", F32)[0], "float32", order) == regs


@pytest.mark.parametrize(
    ("dtype", "order", "registers", "value"),
    [
        ("uint16", "ABCD", [0xFFFF], 65535),
        ("int16", "ABCD", [0xFFFE], -2),
        ("int16", "BADC", [0xFEFF], -2),
        ("uint32", "ABCD", [0x0001, 0x0002], 65538),
        ("uint32", "CDAB", [0x0002, 0x0001], 65538),
        ("int32", "CDAB", [0xFFFF, 0xFFFF], -1),
        ("int32", "ABCD", [0x8000, 0x0000], -(2**31)),
        ("uint64", "ABCD", [0x0000, 0x0000, 0x0001, 0x0002], 65538),
        ("uint64", "CDAB", [0x0002, 0x0001, 0x0000, 0x0000], 65538),
        ("int64", "DCBA", [0x0201, 0, 0, 0], 0x0102),
        ("float64", "ABCD", [0x3FF0, 0, 0, 0], 1.0),
        ("float64", "CDAB", [0, 0, 0, 0x3FF0], 1.0),
    ],
)
def test_decode_literals(dtype: str, order: str, registers: list[int], value: float) -> None:
    assert decode(registers, dtype, order) == value
    assert encode(value, dtype, order) == registers


def test_wrong_register_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="float32 needs 2 registers, got 1"):
        decode([1], "float32")


def test_out_of_range_values_are_rejected() -> None:
    with pytest.raises(OverflowError):
        encode(70000, "uint16")
    with pytest.raises(OverflowError):
        encode(-1, "uint32")
    with pytest.raises(OverflowError):
        encode(1e39, "float32")
    with pytest.raises(ValueError, match=r"outside 0\.\.65535"):
        registers_to_bytes([70000])


INT_TYPES = [t for t in DataType if not t.is_float]


@given(st.data(), st.sampled_from(INT_TYPES), st.sampled_from(list(WordOrder)))
def test_integer_round_trip(data: st.DataObject, dtype: DataType, order: WordOrder) -> None:
    lo, hi = dtype.raw_range
    value = data.draw(st.integers(lo, hi))
    regs = encode(value, dtype, order)
    assert len(regs) == dtype.registers
    assert all(0 <= r <= 0xFFFF for r in regs)
    assert decode(regs, dtype, order) == value


@given(st.floats(allow_nan=True, width=32), st.sampled_from(list(WordOrder)))
def test_float32_round_trip(value: float, order: WordOrder) -> None:
    out = decode(encode(value, "float32", order), "float32", order)
    assert (math.isnan(out) and math.isnan(value)) or out == value


@given(st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4), st.sampled_from(list(WordOrder)))
def test_any_registers_decode_and_reencode(regs: list[int], order: WordOrder) -> None:
    value = decode(regs, "uint64", order)
    assert encode(value, "uint64", order) == regs
