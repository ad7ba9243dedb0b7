"""Request planning and the poller's compiled decoders, pinned with byte literals."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.modbus.decode import DataType, WordOrder, decode
from collector.modbus.plan import (
    MAX_BITS,
    MAX_REGISTERS,
    READ_FUNCTION_CODES,
    ReadRequest,
    compile_decoder,
    compile_raw_decoder,
    plan_reads,
)
from collector.profiles import ResolvedPoint, Table, load_profile

PROFILES = sorted((Path(__file__).resolve().parents[2] / "edge_config" / "profiles").glob("*.yaml"))


def pt(
    name: str = "power_kw",
    address: int = 0,
    type: str = "float32",
    order: str = "ABCD",
    table: Table = Table.HOLDING,
    scale: float = 1.0,
    offset: float = 0.0,
) -> ResolvedPoint:
    return ResolvedPoint(
        name=name, address=address, table=table, type=type, order=WordOrder(order),
        scale=scale, offset=offset, counter_max=None,
    )


def words(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


# (type, order, wire bytes, value): the wire bytes as a protocol analyser shows them
WIRE_CASES = [
    ("float32", "ABCD", b"\x3f\x80\x00\x00", 1.0),
    ("float32", "CDAB", b"\x00\x00\x3f\x80", 1.0),
    ("float32", "BADC", b"\x80\x3f\x00\x00", 1.0),
    ("float32", "DCBA", b"\x00\x00\x80\x3f", 1.0),
    ("float32", "ABCD", b"\x43\x66\x80\x00", 230.5),
    ("float32", "CDAB", b"\x80\x00\x43\x66", 230.5),
    ("uint32", "ABCD", b"\x12\x34\x56\x78", 0x12345678),
    ("uint32", "CDAB", b"\x56\x78\x12\x34", 0x12345678),
    ("uint32", "BADC", b"\x34\x12\x78\x56", 0x12345678),
    ("uint32", "DCBA", b"\x78\x56\x34\x12", 0x12345678),
    ("int32", "ABCD", b"\xff\xff\xff\xfe", -2),
    ("int32", "CDAB", b"\xff\xfe\xff\xff", -2),
    ("int16", "ABCD", b"\xff\xfe", -2),
    ("int16", "BADC", b"\xfe\xff", -2),
    ("int16", "DCBA", b"\xfe\xff", -2),
    ("int16", "CDAB", b"\xff\xfe", -2),  # one word: no word to swap
    ("uint16", "ABCD", b"\x01\x02", 258),
    ("uint16", "BADC", b"\x02\x01", 258),
    ("int64", "ABCD", b"\x01\x02\x03\x04\x05\x06\x07\x08", 0x0102030405060708),
    ("int64", "CDAB", b"\x07\x08\x05\x06\x03\x04\x01\x02", 0x0102030405060708),
    ("int64", "BADC", b"\x02\x01\x04\x03\x06\x05\x08\x07", 0x0102030405060708),
    ("int64", "DCBA", b"\x08\x07\x06\x05\x04\x03\x02\x01", 0x0102030405060708),
    ("uint64", "ABCD", b"\xff\xff\xff\xff\xff\xff\xff\xff", 2**64 - 1),
    ("float64", "ABCD", b"\x3f\xf0\x00\x00\x00\x00\x00\x00", 1.0),
    ("float64", "DCBA", b"\x00\x00\x00\x00\x00\x00\xf0\x3f", 1.0),
    ("float64", "CDAB", b"\x00\x00\x00\x00\x00\x00\x3f\xf0", 1.0),
]


@pytest.mark.parametrize(("dtype", "order", "wire", "value"), WIRE_CASES)
def test_compiled_decoder_reads_wire_bytes(dtype: str, order: str, wire: bytes, value: float):
    regs = words(wire)
    assert decode(regs, dtype, order) == value
    # values leave the poller as floats: raw * scale + offset, like ResolvedPoint.to_value
    decoder = compile_decoder(pt(type=dtype, order=order))
    assert decoder(regs, 0) == value * 1.0 + 0.0
    # the same words further into a response
    assert decoder([0xDEAD, 0xBEEF, *regs, 0xFFFF], 2) == value * 1.0 + 0.0
    # straight from the reply's bytes (our Modbus TCP client's form)
    raw = compile_raw_decoder(pt(type=dtype, order=order))
    assert raw(wire, 0) == value * 1.0 + 0.0
    assert raw(b"\xde\xad\xbe\xef" + wire + b"\xff\xff", 2) == value * 1.0 + 0.0


def test_scale_and_offset_applied_like_the_profile_says():
    p = pt(name="energy_kwh", type="int64", scale=0.001)
    regs = words((1843302123).to_bytes(8, "big"))
    assert compile_decoder(p)(regs, 0) == 1843302123 * 0.001
    t = pt(name="temperature_c", type="int16", scale=0.1, offset=-40.0)
    assert compile_decoder(t)([0x0190], 0) == 400 * 0.1 - 40.0


def test_bits_decode_to_zero_and_one():
    p = pt(name="line_running", type="bool", table=Table.DISCRETE)
    assert compile_decoder(p)([False, True], 1) == 1.0
    assert compile_decoder(p)([False, True], 0) == 0.0


@given(
    dtype=st.sampled_from(list(DataType)),
    order=st.sampled_from(list(WordOrder)),
    regs=st.lists(st.integers(0, 0xFFFF), min_size=6, max_size=6),
    off=st.integers(0, 2),
)
def test_compiled_decoder_equals_reference_decode(dtype, order, regs, off):
    n = dtype.registers
    ref = decode(regs[off : off + n], dtype, order) * 1.0 + 0.0
    got = compile_decoder(pt(type=dtype.value, order=order.value))(regs, off)
    assert (math.isnan(ref) and math.isnan(got)) or got == ref
    data = b"".join(r.to_bytes(2, "big") for r in regs)
    raw = compile_raw_decoder(pt(type=dtype.value, order=order.value, scale=0.5,
                                 offset=-3.0))(data, off)
    scaled = compile_decoder(pt(type=dtype.value, order=order.value, scale=0.5,
                                offset=-3.0))(regs, off)
    assert (math.isnan(raw) and math.isnan(scaled)) or raw == scaled


# ---------------------------------------------------------------------------- planning


def spans(requests: list[ReadRequest]) -> list[tuple[str, int, int]]:
    return [(r.table.value, r.address, r.count) for r in requests]


def test_adjacent_registers_become_one_request():
    points = [pt("voltage_l1_v", 0), pt("voltage_l2_v", 2), pt("voltage_l3_v", 4)]
    assert spans(plan_reads(points, 1)) == [("holding", 0, 6)]


def test_points_are_sorted_before_merging():
    points = [pt("voltage_l3_v", 4), pt("voltage_l1_v", 0), pt("voltage_l2_v", 2)]
    (req,) = plan_reads(points, 1)
    assert req.names == ["voltage_l1_v", "voltage_l2_v", "voltage_l3_v"]
    assert [s.offset for s in req.slots] == [0, 2, 4]


def test_gap_within_limit_is_read_through_and_beyond_it_splits():
    points = [pt("voltage_l1_v", 0), pt("voltage_l2_v", 12), pt("voltage_l3_v", 30)]
    # 0-1, gap 10 (2..11), 12-13: merged; then a gap of 16 before 30
    assert spans(plan_reads(points, 1, max_gap_registers=10)) == [
        ("holding", 0, 14), ("holding", 30, 2)]
    assert spans(plan_reads(points, 1, max_gap_registers=9)) == [
        ("holding", 0, 2), ("holding", 12, 2), ("holding", 30, 2)]
    assert spans(plan_reads(points, 1, max_gap_registers=0)) == [
        ("holding", 0, 2), ("holding", 12, 2), ("holding", 30, 2)]


def test_125_register_limit_is_never_exceeded():
    names = ["voltage_l1_v", "voltage_l2_v", "voltage_l3_v", "current_l1_a"]
    points = [pt(n, a) for n, a in zip(names, (0, 60, 122, 124), strict=True)]
    reqs = plan_reads(points, 1, max_gap_registers=100)
    # 0..123 fits (124 registers); current_l1_a at 124..125 would make 126
    assert spans(reqs) == [("holding", 0, 124), ("holding", 124, 2)]
    assert all(r.count <= MAX_REGISTERS for r in reqs)


def test_profile_limit_is_respected():
    points = [pt("voltage_l1_v", 0), pt("voltage_l2_v", 2), pt("voltage_l3_v", 4)]
    assert spans(plan_reads(points, 1, max_registers=4)) == [("holding", 0, 4), ("holding", 4, 2)]


def test_a_point_is_never_cut_across_requests():
    points = [pt("energy_kwh", 0, type="int64"), pt("power_kw", 4)]
    assert spans(plan_reads(points, 1, max_registers=5)) == [("holding", 0, 4), ("holding", 4, 2)]


def test_tables_are_planned_separately_with_their_function_codes():
    points = [
        pt("voltage_l1_v", 0, table=Table.INPUT),
        pt("voltage_l2_v", 0, table=Table.HOLDING),
        pt("line_running", 0, type="bool", table=Table.DISCRETE),
        pt("status_code", 5, type="bool", table=Table.COIL),
    ]
    reqs = plan_reads(points, 7)
    assert [(r.table.value, r.function_code, r.unit_id) for r in reqs] == [
        ("holding", 3, 7), ("input", 4, 7), ("coil", 1, 7), ("discrete", 2, 7)]


def test_bits_merge_up_to_2000():
    points = [
        pt("line_running", 0, type="bool", table=Table.COIL),
        pt("status_code", 1999, type="bool", table=Table.COIL),
        pt("power_kw", 2000, type="bool", table=Table.COIL),
    ]
    reqs = plan_reads(points, 1, max_gap_bits=5000)
    assert spans(reqs) == [("coil", 0, 2000), ("coil", 2000, 1)]
    assert reqs[0].count == MAX_BITS


def test_decode_a_coalesced_response():
    points = [pt("voltage_l1_v", 0), pt("current_l1_a", 4, type="uint16", scale=0.01)]
    (req,) = plan_reads(points, 1)
    assert req.count == 5 and req.has_gaps
    response = [*words(b"\x43\x66\x80\x00"), 0xFFFF, 0xFFFF, 1234]
    assert req.decode(response) == {"voltage_l1_v": 230.5, "current_l1_a": 1234 * 0.01}
    with pytest.raises(ValueError, match="expected 5"):
        req.decode(response[:4])
    data = b"".join(w.to_bytes(2, "big") for w in response)
    assert req.decode(data) == {"voltage_l1_v": 230.5, "current_l1_a": 1234 * 0.01}
    with pytest.raises(ValueError, match="expected 10"):
        req.decode(data[:8])


def test_nan_from_a_meter_becomes_none():
    (req,) = plan_reads([pt("power_kw", 0)], 1)
    assert req.decode(words(b"\x7f\xc0\x00\x00")) == {"power_kw": None}
    assert req.decode(b"\x7f\xc0\x00\x00") == {"power_kw": None}


def test_split_reads_each_contiguous_run():
    points = [pt("voltage_l1_v", 0), pt("voltage_l2_v", 2), pt("current_l1_a", 8)]
    (req,) = plan_reads(points, 3)
    assert spans(req.split()) == [("holding", 0, 4), ("holding", 8, 2)]
    assert all(r.unit_id == 3 and not r.has_gaps for r in req.split())


def test_bad_limits_are_refused():
    with pytest.raises(ValueError):
        plan_reads([pt()], 1, max_registers=126)
    with pytest.raises(ValueError):
        plan_reads([pt()], 1, max_gap_registers=-1)
    with pytest.raises(ValueError):
        plan_reads([pt()], 256)


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_every_shipped_profile_plans_into_reads_covering_each_point_once(path: Path):
    profile = load_profile(path)
    points = profile.resolved()
    for gap in (0, 10, 125):
        reqs = plan_reads(points, 1, max_registers=profile.max_registers_per_request,
                          max_gap_registers=gap)
        assert {r.function_code for r in reqs} <= READ_FUNCTION_CODES
        names = [n for r in reqs for n in r.names]
        assert sorted(names) == sorted(p.name for p in points)
        for r in reqs:
            limit = MAX_BITS if r.table.is_bits else profile.max_registers_per_request
            assert r.count <= limit
            for s in r.slots:
                assert s.offset >= 0 and s.offset + s.point.registers <= r.count
        if gap == 0:
            assert not any(r.has_gaps for r in reqs)


# ------------------------------------------------------------ whole-block decoding


def _per_point(req: ReadRequest, data: bytes) -> dict[str, float | None]:
    """The reference: every point by its own raw decoder, non-finite values as None."""
    out: dict[str, float | None] = {}
    for slot in req.slots:
        assert slot.raw_decoder is not None
        v = slot.raw_decoder(data, slot.offset)
        out[slot.point.name] = v if math.isfinite(v) else None
    return out


@st.composite
def layouts(draw: st.DrawFn) -> list[ResolvedPoint]:
    """Points of distinct names at non-overlapping addresses, with gaps, mixed types,
    orders, scales and offsets."""
    names = ["voltage_l1_v", "voltage_l2_v", "current_l1_a", "power_kw", "energy_kwh",
             "frequency_hz", "power_factor"]
    points, address = [], draw(st.integers(0, 3))
    for name in names[: draw(st.integers(0, len(names)))]:
        dtype = draw(st.sampled_from(list(DataType)))
        points.append(pt(name, address, type=dtype.value,
                         order=draw(st.sampled_from(list(WordOrder))).value,
                         scale=draw(st.sampled_from([1.0, 0.1, -2.5, 1e-3])),
                         offset=draw(st.sampled_from([0.0, -40.0, 1.5]))))
        address += dtype.registers + draw(st.integers(0, 3))
    return points


@given(points=layouts(), seed=st.binary(min_size=0, max_size=400))
def test_block_decoder_equals_point_by_point(points: list[ResolvedPoint], seed: bytes):
    """One struct format for the whole request gives every point's value exactly as the
    per-point decoders do: NaN and infinities (floats from random bytes) become None, an
    empty plan has no requests, a too-short reply is refused before decoding."""
    requests = plan_reads(points, 1, max_gap_registers=3)
    assert sum(len(r.slots) for r in requests) == len(points)
    for req in requests:
        assert req.block is not None  # no overlaps in these layouts: always compiled
        data = (seed * (2 * req.count // max(len(seed), 1) + 1))[: 2 * req.count]
        data = data.ljust(2 * req.count, b"\x7f")
        got, ref = req.decode(data), _per_point(req, data)
        assert list(got) == list(ref)
        assert got == ref  # None where non-finite, so == is exact
        with pytest.raises(ValueError, match="expected"):
            req.decode(data[:-1])


def test_block_decoder_pinned_with_bytes_and_overlap_falls_back():
    points = [pt("voltage_l1_v", 0), pt("current_l1_a", 4, type="uint16", scale=0.01),
              pt("power_kw", 5, order="CDAB"), pt("frequency_hz", 7, type="int16",
                                                   order="BADC", offset=-1.0)]
    (req,) = plan_reads(points, 1)
    assert req.block is not None
    data = (b"\x43\x66\x80\x00" + b"\xff\xff" * 2 + (1234).to_bytes(2, "big")
            + b"\x00\x00\x3f\x80" + b"\xfe\xff")
    assert req.decode(data) == {"voltage_l1_v": 230.5, "current_l1_a": 1234 * 0.01,
                                "power_kw": 1.0, "frequency_hz": -2 - 1.0}
    assert req.decode(b"\x7f\xc0\x00\x00" + data[4:])["voltage_l1_v"] is None  # NaN
    # two names on the same registers: no single format, decoded point by point
    (both,) = plan_reads([pt("power_kw", 0), pt("power_l1_kw", 0)], 1)
    assert both.block is None
    assert both.decode(b"\x3f\x80\x00\x00") == {"power_kw": 1.0, "power_l1_kw": 1.0}


def test_block_decoder_of_floats_only_gives_plus_zero_and_floats():
    """A block of float32/64 points is handed on as unpacked (no copy per value), except
    that -0.0 still comes out as 0.0, as point by point (raw * 1.0 + 0.0)."""
    import math

    points = [pt("voltage_l1_v", 0), pt("power_kw", 2, type="float64"), pt("current_l1_a", 6)]
    (req,) = plan_reads(points, 1)
    data = b"\x43\x66\x80\x00" + b"\x80" + b"\x00" * 7 + b"\xbf\x80\x00\x00"
    got = req.decode(data)
    assert got == {"voltage_l1_v": 230.5, "power_kw": 0.0, "current_l1_a": -1.0}
    zero = got["power_kw"]
    assert zero is not None and math.copysign(1.0, zero) == 1.0  # not -0.0
    assert all(type(v) is float for v in got.values())
    assert req.decode(b"\x43\x66\x80\x00" + b"\x3f\xf0" + b"\x00" * 6 + b"\x00" * 4) == {
        "voltage_l1_v": 230.5, "power_kw": 1.0, "current_l1_a": 0.0}
