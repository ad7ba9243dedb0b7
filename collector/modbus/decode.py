"""Turn Modbus registers into numbers and back, for every type and word order meters use.

Pure functions over 16-bit register values. Byte orders are named by where the bytes of a
big-endian value ``A B C D`` end up on the wire:

- ``ABCD``: big-endian, high word first (Modbus' own convention; Eastron, Janitza, Schneider)
- ``CDAB``: low word first, bytes big-endian in each word (Carlo Gavazzi, many PLCs)
- ``BADC``: high word first, bytes swapped in each word
- ``DCBA``: little-endian

For 64-bit values the same rule extends to four words (``CDAB`` reverses the word order);
for 16-bit values only the byte swap matters (``BADC``/``DCBA`` swap the two bytes).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from enum import Enum


class DataType(str, Enum):
    """Register data types, as device register maps name them."""

    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"

    @property
    def registers(self) -> int:
        """Number of 16-bit registers one value occupies."""
        return _STRUCT[self][1] // 2

    @property
    def is_float(self) -> bool:
        return self in (DataType.FLOAT32, DataType.FLOAT64)

    @property
    def raw_range(self) -> tuple[int, int]:
        """Smallest and largest raw integer (floats: the largest exactly countable integer)."""
        if self.is_float:
            mant = 24 if self is DataType.FLOAT32 else 53
            return -(2**mant), 2**mant
        bits = 8 * _STRUCT[self][1]
        if self.value.startswith("u"):
            return 0, 2**bits - 1
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


class WordOrder(str, Enum):
    """Byte and word order of multi-byte values (see the module docstring)."""

    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"


# struct format character and size in bytes, big-endian
_STRUCT: dict[DataType, tuple[str, int]] = {
    DataType.INT16: ("h", 2),
    DataType.UINT16: ("H", 2),
    DataType.INT32: ("i", 4),
    DataType.UINT32: ("I", 4),
    DataType.INT64: ("q", 8),
    DataType.UINT64: ("Q", 8),
    DataType.FLOAT32: ("f", 4),
    DataType.FLOAT64: ("d", 8),
}


def registers_to_bytes(registers: Sequence[int]) -> bytes:
    """Registers as they travel on the wire (each big-endian)."""
    for i, reg in enumerate(registers):
        if not 0 <= reg <= 0xFFFF:
            raise ValueError(f"register {i} holds {reg}, outside 0..65535")
    return b"".join(reg.to_bytes(2, "big") for reg in registers)


def bytes_to_registers(data: bytes) -> list[int]:
    """Split wire bytes into 16-bit registers."""
    if len(data) % 2:
        raise ValueError(f"{len(data)} bytes cannot be split into 16-bit registers")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def _reorder(data: bytes, order: WordOrder) -> bytes:
    """Map between big-endian value bytes and wire bytes; the mapping is its own inverse."""
    if order is WordOrder.ABCD:
        return data
    if order is WordOrder.DCBA:
        return data[::-1]
    words = [data[i : i + 2] for i in range(0, len(data), 2)]
    if order is WordOrder.CDAB:
        return b"".join(reversed(words))
    return b"".join(w[::-1] for w in words)  # BADC


def decode(
    registers: Sequence[int], dtype: DataType | str, order: WordOrder | str = WordOrder.ABCD
) -> int | float:
    """Decode one value from exactly ``dtype.registers`` registers."""
    dtype, order = DataType(dtype), WordOrder(order)
    if len(registers) != dtype.registers:
        raise ValueError(
            f"{dtype.value} needs {dtype.registers} registers, got {len(registers)}"
        )
    fmt, _ = _STRUCT[dtype]
    value: int | float = struct.unpack(">" + fmt, _reorder(registers_to_bytes(registers), order))[0]
    return value


def encode(
    value: int | float, dtype: DataType | str, order: WordOrder | str = WordOrder.ABCD
) -> list[int]:
    """Encode one raw value into registers; integers out of range raise ``OverflowError``."""
    dtype, order = DataType(dtype), WordOrder(order)
    fmt, _ = _STRUCT[dtype]
    if not dtype.is_float:
        if isinstance(value, float):
            if not math.isfinite(value):
                raise OverflowError(f"{value} cannot be stored as {dtype.value}")
            value = round(value)
        lo, hi = dtype.raw_range
        if not lo <= value <= hi:
            raise OverflowError(f"{value} does not fit {dtype.value} ({lo}..{hi})")
    try:
        data = struct.pack(">" + fmt, value)
    except (struct.error, OverflowError) as exc:  # float32 overflow, for example
        raise OverflowError(f"{value} cannot be stored as {dtype.value}: {exc}") from None
    return bytes_to_registers(_reorder(data, order))
