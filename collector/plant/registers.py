"""Plant values -> register contents, through a device profile (and back, for the CSV)."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

from ..modbus.decode import DataType, decode, encode
from ..profiles import ResolvedPoint


def encode_point(point: ResolvedPoint, value: float) -> list[int]:
    """The registers a device stores for ``value`` (clamped to what the type can hold)."""
    if point.type == "bool":
        return [1 if value else 0]
    dtype = DataType(point.type)
    raw = point.to_raw(value)
    if not dtype.is_float:
        lo, hi = dtype.raw_range
        raw = min(max(int(raw), lo), hi)
    return encode(raw, dtype, point.order)


def decode_point(point: ResolvedPoint, registers: list[int]) -> float:
    """Inverse of :func:`encode_point`, as a poller would read it."""
    if point.type == "bool":
        return 1.0 if registers[0] else 0.0
    return point.to_value(decode(registers, DataType(point.type), point.order))


def formatter(point: ResolvedPoint) -> Callable[[float], str]:
    """Shortest text that keeps everything the register holds."""
    if point.type == "bool":
        return lambda v: "1" if v else "0"
    dtype = DataType(point.type)
    if dtype is DataType.FLOAT32:
        return lambda v: format(v, ".9g")
    if dtype is DataType.FLOAT64:
        return repr
    decimals = max(0, -math.floor(math.log10(abs(point.scale)) + 1e-9)) if point.scale else 0
    return lambda v: f"{v:.{decimals}f}"


def reading(point: ResolvedPoint, value: float) -> float:
    """What a poller reads back for ``value``: quantised and wrapped like the register."""
    return decode_point(point, encode_point(point, value))


_F32 = struct.Struct(">f")


def fast_reader(point: ResolvedPoint) -> Callable[[float], str]:
    """``formatter(point)(reading(point, v))`` without building registers (for bulk CSV).

    Word order cannot change a value that survives the round trip, so only the type's
    precision and range matter; tests check this equals the slow path.
    """
    fmt = formatter(point)
    if point.type == "bool":
        return fmt
    dtype = DataType(point.type)
    if dtype is DataType.FLOAT64:
        return fmt
    if dtype is DataType.FLOAT32:
        pack, unpack = _F32.pack, _F32.unpack

        def f32(v: float) -> str:
            try:
                return fmt(unpack(pack((v - point.offset) / point.scale))[0] * point.scale
                           + point.offset)
            except OverflowError:
                return fmt(reading(point, v))

        return f32
    lo, hi = dtype.raw_range
    scale, offset = point.scale, point.offset

    def integer(v: float) -> str:
        raw = min(max(round((v - offset) / scale), lo), hi)
        return fmt(raw * scale + offset)

    return integer
