"""The shipped device profiles: they validate, and they say what the manufacturers' maps say.

The pinned facts below are taken from the register maps cited in each profile's ``source``;
a test failing here after an edit means the edit disagrees with the manual (or the manual
was misread the first time; then fix both, with the document at hand).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest

from collector.configfile import ConfigError
from collector.modbus.decode import DataType, WordOrder, decode, encode
from collector.profiles import Profile, ResolvedPoint, Table, load_profile
from collector.quantities import Kind, Resource

PROFILE_DIR = Path(__file__).resolve().parents[2] / "edge_config" / "profiles"
PROFILE_FILES = sorted(PROFILE_DIR.glob("*.yaml"))

# the virtual plant and the site configurations refer to these by name
REQUIRED = {
    # electricity
    "eastron_sdm120",
    "eastron_sdm630",
    "carlo_gavazzi_em24",
    "schneider_iem3255",
    "schneider_pm5560",
    "janitza_umg604",
    # water
    "endress_hauser_promag_w400",
    "siemens_sitrans_mag6000",
    # steam
    "endress_hauser_prowirl_200",
    "spirax_sarco_vlm20",
    # production and weather
    "generic_plc_counter",
    "rs485_temperature_humidity_sensor",
}

# Meters with many values must map at least four of them. Sensors and flow instruments
# measure one thing (plus its total and a status word), so two points are enough for them.
MIN_POINTS = {
    Resource.ELECTRICITY: 4,
    Resource.PRODUCTION: 4,
    Resource.STEAM: 2,
    Resource.WATER: 2,
    Resource.WEATHER: 2,
    Resource.CLOCK: 2,
}

# the cumulative quantities that make sense for each resource
COUNTERS = {
    Resource.ELECTRICITY: {"energy_kwh", "energy_export_kwh", "reactive_energy_kvarh"},
    Resource.WATER: {"volume_m3"},
    Resource.STEAM: {"mass_kg", "mass_t", "heat_kwh"},
    Resource.PRODUCTION: {"produced_units"},
    Resource.WEATHER: set(),
    Resource.CLOCK: set(),
}


def _load(stem: str) -> Profile:
    return load_profile(PROFILE_DIR / f"{stem}.yaml")


def _point(stem: str, name: str) -> ResolvedPoint:
    points = {p.name: p for p in _load(stem).resolved()}
    assert name in points, f"{stem} has no {name} point"
    return points[name]


# --------------------------------------------------------------------------- every file


def test_required_profiles_exist() -> None:
    present = {p.stem for p in PROFILE_FILES}
    missing = REQUIRED - present
    assert not missing, f"missing profiles: {sorted(missing)}"


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: p.stem)
def test_profile_validates(path: Path) -> None:
    profile = load_profile(path)
    assert profile.kind == "profile"
    assert profile.source.strip(), "cite the register map the profile was laid out from"
    assert profile.manufacturer.strip() and profile.model.strip()


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: p.stem)
def test_profile_has_enough_points(path: Path) -> None:
    profile = load_profile(path)
    want = MIN_POINTS[profile.resource]
    assert len(profile.points) >= want, (
        f"{path.name}: {len(profile.points)} points; {profile.resource.value} needs {want}"
    )


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: p.stem)
def test_counters_fit_the_resource(path: Path) -> None:
    profile = load_profile(path)
    counters = [p for p in profile.resolved() if p.kind is Kind.COUNTER]
    allowed = COUNTERS[profile.resource]
    for p in counters:
        assert p.name in allowed, (
            f"{path.name}: {p.name} is not a {profile.resource.value} counter ({sorted(allowed)})"
        )
        assert p.type != "bool", f"{path.name}: counter {p.name} cannot be a bit"
        if not DataType(p.type).is_float:
            lo, _ = DataType(p.type).raw_range
            if lo == 0:
                assert p.rollover and p.rollover > 0, f"{path.name}: {p.name} has no rollover"
    if allowed:
        assert counters, f"{path.name}: a {profile.resource.value} profile needs a counter"


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: p.stem)
def test_bit_points_live_in_bit_tables(path: Path) -> None:
    for p in load_profile(path).resolved():
        assert (p.type == "bool") == p.table.is_bits, f"{path.name}: {p.name}"
        assert p.scale != 0


# --------------------------------------------------------------------------- manual facts

SENSOR = "rs485_temperature_humidity_sensor"

# (profile, point, table, address, type, order, scale) as the register maps give them
FACTS = [
    # Eastron SDM630 protocol: 30073 total import kWh = input 0x0048, IEEE float, high word first
    ("eastron_sdm630", "energy_kwh", "input", 0x0048, "float32", "ABCD", 1.0),
    ("eastron_sdm630", "power_kw", "input", 0x0034, "float32", "ABCD", 0.001),
    ("eastron_sdm630", "frequency_hz", "input", 0x0046, "float32", "ABCD", 1.0),
    ("eastron_sdm630", "voltage_l1_v", "input", 0x0000, "float32", "ABCD", 1.0),
    # Eastron SDM120 protocol V2.4
    ("eastron_sdm120", "energy_kwh", "input", 0x0048, "float32", "ABCD", 1.0),
    ("eastron_sdm120", "energy_export_kwh", "input", 0x004A, "float32", "ABCD", 1.0),
    ("eastron_sdm120", "power_kw", "input", 0x000C, "float32", "ABCD", 0.001),
    ("eastron_sdm120", "current_l1_a", "input", 0x0006, "float32", "ABCD", 1.0),
    ("eastron_sdm120", "power_factor", "input", 0x001E, "float32", "ABCD", 1.0),
    ("eastron_sdm120", "frequency_hz", "input", 0x0046, "float32", "ABCD", 1.0),
    # Carlo Gavazzi EM24-DIN: INT32 LSW first, kWh*10, W*10, A*1000; PF and Hz INT16
    ("carlo_gavazzi_em24", "energy_kwh", "input", 0x003E, "int32", "CDAB", 0.1),
    ("carlo_gavazzi_em24", "energy_export_kwh", "input", 0x005C, "int32", "CDAB", 0.1),
    ("carlo_gavazzi_em24", "power_kw", "input", 0x0028, "int32", "CDAB", 0.0001),
    ("carlo_gavazzi_em24", "current_l1_a", "input", 0x000C, "int32", "CDAB", 0.001),
    ("carlo_gavazzi_em24", "voltage_l1_v", "input", 0x0000, "int32", "CDAB", 0.1),
    ("carlo_gavazzi_em24", "power_factor", "input", 0x0035, "int16", "CDAB", 0.001),
    ("carlo_gavazzi_em24", "frequency_hz", "input", 0x0037, "int16", "CDAB", 0.1),
    # Schneider iEM3000: register 3204 INT64 Wh, 3060 float kW, 3110 Hz (address = reg - 1)
    ("schneider_iem3255", "energy_kwh", "holding", 3203, "int64", "ABCD", 0.001),
    ("schneider_iem3255", "energy_export_kwh", "holding", 3207, "int64", "ABCD", 0.001),
    ("schneider_iem3255", "power_kw", "holding", 3059, "float32", "ABCD", 1.0),
    ("schneider_iem3255", "current_l1_a", "holding", 2999, "float32", "ABCD", 1.0),
    ("schneider_iem3255", "frequency_hz", "holding", 3109, "float32", "ABCD", 1.0),
    # Schneider PM5000: same basic readings, 3204 active energy delivered INT64 Wh
    ("schneider_pm5560", "energy_kwh", "holding", 3203, "int64", "ABCD", 0.001),
    ("schneider_pm5560", "power_kw", "holding", 3059, "float32", "ABCD", 1.0),
    ("schneider_pm5560", "voltage_l1_v", "holding", 3027, "float32", "ABCD", 1.0),
    # Janitza UMG 604: float big-endian, W and Wh
    ("janitza_umg604", "voltage_l1_v", "holding", 19000, "float32", "ABCD", 1.0),
    ("janitza_umg604", "power_kw", "holding", 19026, "float32", "ABCD", 0.001),
    ("janitza_umg604", "frequency_hz", "holding", 19050, "float32", "ABCD", 1.0),
    ("janitza_umg604", "energy_kwh", "holding", 19068, "float32", "ABCD", 0.001),
    # Endress+Hauser Proline: registers 2009 / 2610 (address = reg - 1), factory byte order
    # 1-0-3-2 = low word first
    ("endress_hauser_promag_w400", "flow_m3_h", "holding", 2008, "float32", "CDAB", 1.0),
    ("endress_hauser_promag_w400", "volume_m3", "holding", 2609, "float32", "CDAB", 1.0),
    ("endress_hauser_prowirl_200", "mass_flow_kg_h", "holding", 2006, "float32", "CDAB", 1.0),
    ("endress_hauser_prowirl_200", "mass_t", "holding", 2609, "float32", "CDAB", 1.0),
    # Siemens MAG 6000 Modbus module: 4:03003 m3/s float, 4:03015 totalizer double, big-endian
    ("siemens_sitrans_mag6000", "flow_m3_h", "holding", 3002, "float32", "ABCD", 3600.0),
    ("siemens_sitrans_mag6000", "volume_m3", "holding", 3014, "float64", "ABCD", 1.0),
    # Spirax Sarco VLM20 (Sierra Innova-Mass map): 30009 mass flow, 30525 totalizer
    ("spirax_sarco_vlm20", "mass_flow_kg_h", "input", 8, "float32", "ABCD", 1.0),
    ("spirax_sarco_vlm20", "mass_kg", "input", 524, "uint32", "ABCD", 1.0),
    ("spirax_sarco_vlm20", "temperature_c", "input", 0, "float32", "ABCD", 1.0),
    ("spirax_sarco_vlm20", "pressure_bar", "input", 4, "float32", "ABCD", 1.0),
    # Spirax Sarco TVA: total low word at 40001, high word at 40002; pressure x100
    ("spirax_sarco_tva", "mass_kg", "holding", 0, "uint32", "CDAB", 1.0),
    ("spirax_sarco_tva", "pressure_bar", "holding", 3, "uint16", "ABCD", 0.01),
    ("spirax_sarco_tva", "temperature_c", "holding", 4, "uint16", "ABCD", 0.1),
    # generic PLC counter template
    ("generic_plc_counter", "produced_units", "holding", 0, "uint32", "CDAB", 1.0),
    ("generic_plc_counter", "production_rate_units_h", "holding", 2, "float32", "ABCD", 1.0),
    ("generic_plc_counter", "status_code", "holding", 4, "uint16", "ABCD", 1.0),
    ("generic_plc_counter", "line_running", "discrete", 0, "bool", "ABCD", 1.0),
    # XY-MD02 class sensor: input 1 temperature 0.1 degC, input 2 humidity 0.1 %
    (SENSOR, "outdoor_temperature_c", "input", 1, "int16", "ABCD", 0.1),
    (SENSOR, "outdoor_humidity_pct", "input", 2, "int16", "ABCD", 0.1),
]


@pytest.mark.parametrize(
    ("stem", "name", "table", "address", "dtype", "order", "scale"),
    FACTS,
    ids=[f"{f[0]}:{f[1]}" for f in FACTS],
)
def test_manual_facts(
    stem: str, name: str, table: str, address: int, dtype: str, order: str, scale: float
) -> None:
    p = _point(stem, name)
    assert p.table is Table(table)
    assert p.address == address
    assert str(getattr(p.type, "value", p.type)) == dtype
    if dtype not in ("bool", "int16", "uint16"):  # word order is moot for one register
        assert p.order is WordOrder(order)
    assert p.scale == pytest.approx(scale)
    assert p.offset == 0


def test_em24_energy_is_low_word_first() -> None:
    """1234.5 kWh is 12345 (kWh*10); the EM24 sends the low word first."""
    p = _point("carlo_gavazzi_em24", "energy_kwh")
    raw = p.to_raw(1234.5)
    assert raw == 12345
    regs = encode(raw, p.type, p.order)
    assert regs == [12345, 0]
    assert p.to_value(decode(regs, p.type, p.order)) == pytest.approx(1234.5)


def test_iem3255_energy_is_int64_wh() -> None:
    """1234.567 kWh is 1 234 567 Wh in four registers, most significant first."""
    p = _point("schneider_iem3255", "energy_kwh")
    raw = p.to_raw(1234.567)
    assert raw == 1_234_567
    regs = encode(raw, p.type, p.order)
    assert regs == [0, 0, 0x0012, 0xD687]
    assert p.to_value(decode(regs, p.type, p.order)) == pytest.approx(1234.567)


def test_sdm_power_register_is_watts() -> None:
    """2.5 kW travels as the float 2500.0 (0x451C4000)."""
    p = _point("eastron_sdm120", "power_kw")
    regs = encode(p.to_raw(2.5), p.type, p.order)
    assert regs == [0x451C, 0x4000]


def test_promag_float_factory_byte_order() -> None:
    """E+H byte order 1-0-3-2: 1.0 (0x3F800000) is sent as 00 00 3F 80."""
    p = _point("endress_hauser_promag_w400", "flow_m3_h")
    assert encode(1.0, p.type, p.order) == [0x0000, 0x3F80]


# --------------------------------------------------------------------------- round trips

# raw numbers that exercise sign, high bits and a fractional part for each register type
RAW_SAMPLES: dict[DataType, list[int | float]] = {
    DataType.INT16: [0, 1, -1, -1234, 32767, -32768],
    DataType.UINT16: [0, 1, 54321, 65535],
    DataType.INT32: [0, -1, 123456789, -123456789, 2**31 - 1, -(2**31)],
    DataType.UINT32: [0, 65536, 3_000_000_000, 2**32 - 1],
    DataType.INT64: [0, -1, 1_234_567, -(2**40) + 7, 2**63 - 1],
    DataType.UINT64: [0, 2**48 + 3, 2**64 - 1],
    DataType.FLOAT32: [0.0, 1.0, -1234.5, 3.0e9, 1.5e-3],
    DataType.FLOAT64: [0.0, 12345678.125, -1.0e-9, 1.0e15],
}


def _all_points() -> list[tuple[str, ResolvedPoint]]:
    return [(path.stem, p) for path in PROFILE_FILES for p in load_profile(path).resolved()]


def _used_types() -> set[tuple[DataType, WordOrder]]:
    return {(DataType(p.type), p.order) for _, p in _all_points() if p.type != "bool"}


@pytest.mark.parametrize(
    ("dtype", "order"),
    sorted(_used_types(), key=lambda t: (t[0].value, t[1].value)),
    ids=lambda v: v.value,
)
def test_encode_decode_round_trip(dtype: DataType, order: WordOrder) -> None:
    for raw in RAW_SAMPLES[dtype]:
        regs = encode(raw, dtype, order)
        assert len(regs) == dtype.registers
        assert all(0 <= r <= 0xFFFF for r in regs)
        back = decode(regs, dtype, order)
        if dtype is DataType.FLOAT32:
            assert back == pytest.approx(raw, rel=1e-7)
        else:
            assert back == raw


@pytest.mark.parametrize(
    ("stem", "point"), _all_points(), ids=[f"{s}:{p.name}" for s, p in _all_points()]
)
def test_point_value_round_trip(stem: str, point: ResolvedPoint) -> None:
    """A value in the point's unit survives to_raw -> encode -> decode -> to_value."""
    if point.type == "bool":
        for value in (0.0, 1.0):
            assert point.to_value(point.to_raw(value)) == value
        return
    dtype = DataType(point.type)
    lo, hi = dtype.raw_range
    raw_target = min(hi, max(lo, 1234)) if not dtype.is_float else 1234.5
    value = point.to_value(raw_target)
    raw = point.to_raw(value)
    regs = encode(raw, dtype, point.order)
    back = point.to_value(decode(regs, dtype, point.order))
    assert math.isclose(back, value, rel_tol=1e-6, abs_tol=abs(point.scale) / 2), (
        f"{stem}: {point.name} {value} came back as {back}"
    )


# --------------------------------------------------------------------------- validator

PROFILE_HEAD = """\
kind: profile
manufacturer: Test
model: T1
resource: electricity
source: unit test
defaults: {table: holding, type: float32, order: ABCD}
points:
"""


def _write(tmp_path: Path, points: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(PROFILE_HEAD + textwrap.indent(textwrap.dedent(points), "  "))
    return path


def test_overlapping_registers_are_rejected(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
        - {name: energy_kwh, address: 10}
        - {name: power_kw, address: 11}
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    text = str(info.value)
    assert "points[1]" in text and "power_kw" in text
    assert "overlaps energy_kwh" in text and "address 11" in text


def test_overlap_is_per_table(tmp_path: Path) -> None:
    """The same address in the input and the holding table is two different registers."""
    path = _write(
        tmp_path,
        """\
        - {name: energy_kwh, address: 10}
        - {name: power_kw, address: 10, table: input}
        """,
    )
    assert len(load_profile(path).points) == 2


def test_unknown_quantity_is_rejected(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
        - {name: energy_kwh, address: 0}
        - {name: energy_mwh, address: 2}
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    problems = info.value.problems
    assert [p.path for p in problems] == ["points[1].name"]
    assert "unknown quantity 'energy_mwh'" in problems[0].message
    assert problems[0].line == 9  # the line of the offending point in the file


def test_bool_in_holding_table_is_rejected(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
        - {name: line_running, address: 0, type: bool}
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    text = str(info.value)
    assert "points[0]" in text and "line_running" in text
    assert "holding table" in text and "bool" in text


def test_register_type_in_bit_table_is_rejected(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
        - {name: line_running, address: 0, table: coil, type: uint16}
        """,
    )
    with pytest.raises(ConfigError, match=r"points\[0\] \(line_running\): the coil table"):
        load_profile(path)
