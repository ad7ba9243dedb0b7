"""Coalesce a device's points into as few Modbus read requests as the protocol allows.

Pure and synchronous. Points of one unit and table are sorted by address and merged
greedily while the gap between them stays within ``max_gap`` and the request stays within
the per-request limit (125 registers for function codes 3 and 4, or the profile's own
smaller limit; 2000 bits for 1 and 2). Greedy merging of sorted intervals gives the fewest
requests for these two constraints. A request knows how to turn its response into values,
through decoders compiled once per point (the hot path of the poller).

Only read function codes (1-4) can be planned: the agent never writes to a meter.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..profiles import ResolvedPoint, Table
from .decode import DataType, WordOrder

MAX_REGISTERS = 125  # Modbus Application Protocol V1.1b3, function codes 3 and 4
MAX_BITS = 2000  # function codes 1 and 2
READ_FUNCTION_CODES = frozenset({1, 2, 3, 4})
DEFAULT_MAX_GAP_REGISTERS = 10
DEFAULT_MAX_GAP_BITS = 64

Decoder = Callable[[Sequence[int], int], float]
RawDecoder = Callable[[bytes, int], float]  # (register bytes as on the wire, offset in registers)
_STRUCT = {
    DataType.INT16: "h", DataType.UINT16: "H", DataType.INT32: "i", DataType.UINT32: "I",
    DataType.INT64: "q", DataType.UINT64: "Q", DataType.FLOAT32: "f", DataType.FLOAT64: "d",
}


def compile_decoder(point: ResolvedPoint) -> Decoder:
    """``f(words, offset) -> value`` for one point: raw decode, then ``raw * scale + offset``.

    Equal to ``decode_point`` of the plant and to :func:`collector.modbus.decode.decode`
    followed by :meth:`ResolvedPoint.to_value`, but with the struct formats and word
    reordering fixed up front (tests compare the two on random registers).
    """
    if point.type == "bool":
        return lambda bits, off: 1.0 if bits[off] else 0.0
    dtype = DataType(point.type)
    n = dtype.registers
    fmt = _STRUCT[dtype]
    value = struct.Struct(">" + fmt).unpack
    order = WordOrder(point.order)
    # Wire words w0..wn-1; the value's big-endian bytes are rebuilt by packing the words
    # big- or little-endian (byte swap) in their order or reversed (word swap).
    if n == 1:
        swap_bytes, reverse = order in (WordOrder.BADC, WordOrder.DCBA), False
    else:
        swap_bytes = order in (WordOrder.BADC, WordOrder.DCBA)
        reverse = order in (WordOrder.CDAB, WordOrder.DCBA)
    words = struct.Struct(("<" if swap_bytes else ">") + "H" * n).pack
    scale, shift = point.scale, point.offset

    if reverse:

        def decode_reversed(regs: Sequence[int], off: int) -> float:
            raw: float = value(words(*regs[off : off + n][::-1]))[0]
            return raw * scale + shift

        return decode_reversed

    def decode_in_order(regs: Sequence[int], off: int) -> float:
        raw: float = value(words(*regs[off : off + n]))[0]
        return raw * scale + shift

    return decode_in_order


def compile_raw_decoder(point: ResolvedPoint) -> RawDecoder:
    """``f(data, offset) -> value`` from the reply's register bytes as they came off the
    wire (big-endian words), without building a list of words first: one ``unpack_from``
    for the ABCD order, the word decoder above for the others. Equal to
    :func:`compile_decoder` on the same registers (tested)."""
    if point.type == "bool":
        raise ValueError("bits are not decoded from register bytes")
    dtype = DataType(point.type)
    n = dtype.registers
    scale, shift = point.scale, point.offset
    order = WordOrder(point.order)
    if order is WordOrder.ABCD or (n == 1 and order is WordOrder.CDAB):
        unpack = struct.Struct(">" + _STRUCT[dtype]).unpack_from

        def decode_raw(data: bytes, off: int) -> float:
            raw: float = unpack(data, 2 * off)[0]
            return raw * scale + shift

        return decode_raw
    words = struct.Struct(f">{n}H").unpack_from
    decoder = compile_decoder(point)

    def decode_swapped(data: bytes, off: int) -> float:
        return decoder(words(data, 2 * off), 0)

    return decode_swapped


BlockDecoder = Callable[[bytes], "dict[str, float | None]"]


def compile_block_decoder(slots: Sequence[Slot]) -> BlockDecoder | None:
    """``f(data) -> {name: value}`` for a whole register request from the reply's bytes:
    one precompiled ``struct`` format covers every point of the block (gaps skipped as pad
    bytes), so a reply of ten float32s is one ``unpack_from`` and a loop for scale and
    offset, instead of a call per point. Points in another word order than ``ABCD`` are
    taken as bytes and decoded by their own decoder; overlapping points (two names on the
    same registers) get None here, and the caller decodes point by point. Equal to
    :meth:`ReadRequest.decode` point by point (tested), non-finite values included."""
    fmt = [">"]
    pos = 0
    names: list[str] = []
    post: list[tuple[float, float, RawDecoder | None]] = []
    for slot in sorted(slots, key=lambda s: s.offset):
        p = slot.point
        if p.type == "bool" or slot.offset < pos:
            return None
        if slot.offset > pos:
            fmt.append(f"{2 * (slot.offset - pos)}x")
        dtype = DataType(p.type)
        n = dtype.registers
        order = WordOrder(p.order)
        if order is WordOrder.ABCD or (n == 1 and order is WordOrder.CDAB):
            fmt.append(_STRUCT[dtype])
            post.append((p.scale, p.offset, None))
        else:
            fmt.append(f"{2 * n}s")
            post.append((p.scale, p.offset, compile_raw_decoder(p)))
        names.append(p.name)
        pos = slot.offset + n
    if not names:
        return None
    unpack = struct.Struct("".join(fmt)).unpack_from
    isfinite = math.isfinite
    if all(conv is None for _, _, conv in post):
        keys = tuple(names)
        scales = tuple(s for s, _, _ in post)
        shifts = tuple(o for _, o, _ in post)
        unscaled = all(s == 1.0 for s in scales) and all(o == 0.0 for o in shifts)
        # every point a float32/64 (the usual meter): unpacked, they are floats already
        floats = all(f in ("f", "d") for f in fmt[1:] if not f.endswith("x"))

        def decode_block(data: bytes) -> dict[str, float | None]:
            vals: Sequence[float]
            if unscaled:  # raw * 1.0 + 0.0 is raw + 0.0 (a float; -0.0 becomes 0.0)
                vals = unpack(data)
                if not floats or 0.0 in vals:  # (-0.0 == 0.0: a zero may be -0.0)
                    vals = [raw + 0.0 for raw in vals]
            else:
                vals = [raw * scale + shift
                        for raw, scale, shift in zip(unpack(data), scales, shifts, strict=True)]
            if isfinite(sum(vals)):  # NaN and infinities spread into the sum
                return dict(zip(keys, vals, strict=True))
            return {k: v if isfinite(v) else None for k, v in zip(keys, vals, strict=True)}

        return decode_block
    mixed = tuple(zip(names, post, strict=True))

    def decode_mixed(data: bytes) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for (name, (scale, shift, conv)), raw in zip(mixed, unpack(data), strict=True):
            v = conv(raw, 0) if conv is not None else raw * scale + shift
            out[name] = v if isfinite(v) else None
        return out

    return decode_mixed


@dataclass(frozen=True)
class Slot:
    """One point inside a request: where its words start, relative to the request."""

    point: ResolvedPoint
    offset: int
    decoder: Decoder = field(repr=False, compare=False)
    raw_decoder: RawDecoder | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class ReadRequest:
    """One read of ``count`` registers or bits from ``address`` of one unit's table."""

    unit_id: int
    table: Table
    address: int
    count: int
    slots: tuple[Slot, ...]
    block: BlockDecoder | None = field(default=None, repr=False, compare=False)
    # for the poll loop, worked out once: (function code, address, count, unit id), and
    # the decoder of a reply that our Modbus TCP client has checked (bytes of 2 x count)
    wire: tuple[int, int, int, int] = field(init=False, repr=False, compare=False)
    decode_checked: Callable[[Any], dict[str, float | None]] = field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.function_code not in READ_FUNCTION_CODES:  # unreachable with Table's values
            raise ValueError(f"function code {self.function_code} is not a read")
        limit = MAX_BITS if self.table.is_bits else MAX_REGISTERS
        if not 1 <= self.count <= limit:
            raise ValueError(f"{self.count} {self.unit} in one request; the limit is {limit}")
        object.__setattr__(self, "wire",
                           (self.function_code, self.address, self.count, self.unit_id))
        object.__setattr__(self, "decode_checked", self.block or self.decode)

    @property
    def function_code(self) -> int:
        return self.table.function_code

    @property
    def unit(self) -> str:
        return "bits" if self.table.is_bits else "registers"

    @property
    def names(self) -> list[str]:
        return [s.point.name for s in self.slots]

    @property
    def has_gaps(self) -> bool:
        """Whether the request also reads words no point uses (some devices refuse that)."""
        return sum(s.point.registers for s in self.slots) < self.count

    def decode(self, words: Sequence[int] | Sequence[bool] | bytes) -> dict[str, float | None]:
        """Values of every point from the response; non-finite floats become None.

        ``words`` are registers (ints) or bits, or the reply's register bytes as they came
        off the wire (``bytes``, two per register: our Modbus TCP client's form)."""
        out: dict[str, float | None] = {}
        isfinite = math.isfinite
        if isinstance(words, bytes):
            if self.table.is_bits or len(words) < 2 * self.count:
                raise ValueError(f"response has {len(words)} bytes, expected {2 * self.count}")
            if self.block is not None:
                return self.block(words)
            for slot in self.slots:
                assert slot.raw_decoder is not None
                v = slot.raw_decoder(words, slot.offset)
                out[slot.point.name] = v if isfinite(v) else None
            return out
        if len(words) < self.count:
            raise ValueError(f"response has {len(words)} {self.unit}, expected {self.count}")
        for slot in self.slots:
            v = slot.decoder(words, slot.offset)
            out[slot.point.name] = v if isfinite(v) else None
        return out

    def split(self) -> list[ReadRequest]:
        """The same points read without gaps: one request per contiguous run."""
        return _merge(self.unit_id, self.table, [s.point for s in self.slots], 0, self.count)

    def describe(self) -> str:
        return (
            f"unit {self.unit_id} FC{self.function_code} {self.table.value} "
            f"{self.address}+{self.count}"
        )


def _merge(
    unit_id: int, table: Table, points: Sequence[ResolvedPoint], max_gap: int, limit: int
) -> list[ReadRequest]:
    out: list[ReadRequest] = []
    block: list[ResolvedPoint] = []
    start = end = 0  # end is exclusive

    def flush() -> None:
        if block:
            slots = tuple(Slot(p, p.address - start, compile_decoder(p),
                               None if table.is_bits else compile_raw_decoder(p))
                          for p in block)
            block_decoder = None if table.is_bits else compile_block_decoder(slots)
            out.append(ReadRequest(unit_id, table, start, end - start, slots, block_decoder))

    for p in sorted(points, key=lambda p: p.address):
        p_end = p.address + p.registers
        if block and p.address - end <= max_gap and p_end - start <= limit:
            block.append(p)
            end = max(end, p_end)
            continue
        flush()
        block, start, end = [p], p.address, p_end
    flush()
    return out


def plan_reads(
    points: Iterable[ResolvedPoint],
    unit_id: int,
    *,
    max_registers: int = MAX_REGISTERS,
    max_gap_registers: int = DEFAULT_MAX_GAP_REGISTERS,
    max_gap_bits: int = DEFAULT_MAX_GAP_BITS,
) -> list[ReadRequest]:
    """Fewest requests that read every point of one unit, in table and address order."""
    if not 1 <= max_registers <= MAX_REGISTERS:
        raise ValueError(f"max_registers must be 1..{MAX_REGISTERS}, got {max_registers}")
    if max_gap_registers < 0 or max_gap_bits < 0:
        raise ValueError("a maximum gap cannot be negative")
    if not 0 <= unit_id <= 255:
        raise ValueError(f"unit id must be 0..255, got {unit_id}")
    by_table: dict[Table, list[ResolvedPoint]] = {}
    for p in points:
        by_table.setdefault(p.table, []).append(p)
    out: list[ReadRequest] = []
    for table in (Table.HOLDING, Table.INPUT, Table.COIL, Table.DISCRETE):
        if table in by_table:
            if table.is_bits:
                out += _merge(unit_id, table, by_table[table], max_gap_bits, MAX_BITS)
            else:
                out += _merge(unit_id, table, by_table[table], max_gap_registers, max_registers)
    return out
