"""The embedded SQLite store: line protocol in, the same measurements, tags and fields out."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.service.config import Influx
from detectors.service.lines import line
from detectors.store import (
    LineError,
    Store,
    StoreWriter,
    consumption_rows,
    events,
    export_site_dir,
    parse_line,
    store_path,
)

# tag values as the service writes them (ids, units, types); a backslash before a separator
# is ambiguous in line protocol itself, and the service's tags never hold one
TAG_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\\"),
                   min_size=1, max_size=12)
KEYS = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
FIELD_VALUES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.integers(-(2**62), 2**62),
    st.booleans(),
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20),
)


@settings(max_examples=200, deadline=None)
@given(
    measurement=KEYS,
    tags=st.dictionaries(KEYS, TAG_TEXT, max_size=4),
    fields=st.dictionaries(KEYS, FIELD_VALUES, min_size=1, max_size=5),
    t=st.integers(0, 2**41),
)
def test_parse_line_inverts_the_services_line_protocol(measurement, tags, fields, t):
    # tags with leading/trailing spaces or only spaces cannot round-trip in any line protocol
    tags = {k: v for k, v in tags.items() if v.strip() == v and v}
    text = line(measurement, tags, fields, t)
    assert text is not None
    p = parse_line(text)
    assert p.measurement == measurement
    assert p.tags == {k: v.replace("\n", " ") for k, v in tags.items()}
    assert p.time_ms == t
    assert set(p.fields) == set(fields)
    for k, v in fields.items():
        got = p.fields[k]
        if isinstance(v, float):
            assert got == v or (math.isnan(v) and math.isnan(got))
        elif isinstance(v, str):
            assert got == v.replace("\n", " ")
        else:
            assert got == v and type(got) is type(v)


@pytest.mark.parametrize("bad", ["", "m", "m f=1", "m f 1", "m f=1 notatime"])
def test_bad_lines_are_refused(bad):
    with pytest.raises((LineError, ValueError)):
        parse_line(bad)


def test_store_url_is_a_file_relative_to_a_base(tmp_path: Path):
    assert store_path("http://x:8086") is None
    assert store_path("sqlite:a/b.sqlite", tmp_path) == tmp_path / "a" / "b.sqlite"
    assert store_path("sqlite:///abs/b.sqlite", tmp_path) == Path("/abs/b.sqlite")
    assert Influx(url="sqlite:store.sqlite").url == "sqlite:store.sqlite"
    with pytest.raises(ValueError, match="file name"):
        Influx(url="sqlite:")


def _write(path: Path, lines: list[str | None]) -> None:
    w = StoreWriter(path)
    try:
        w.write([x for x in lines if x])
    finally:
        w.close()


def test_same_series_and_time_merges_fields_like_influxdb(tmp_path: Path):
    db = tmp_path / "s.sqlite"
    tags = {"site": "d", "meter": "m1", "resource": "water", "type": "base_load_rise",
            "severity": "warning", "unit": "m3", "event_id": "d/m1/base_load_rise/3600"}
    _write(db, [line("event", tags, {"excess": 1.0, "open": 1, "end_ts": 0.0,
                                     "cost": 3.9}, 3_600_000)])
    _write(db, [line("event", tags, {"excess": 5.0, "open": 0, "end_ts": 7200.0,
                                     "cost": 19.5}, 3_600_000)])
    with Store(db) as s:
        assert s.count("event") == 1
        [e] = events(s)
    assert e["meter"] == "m1" and e["type"] == "base_load_rise" and e["unit"] == "m3"
    assert e["excess"] == 5.0 and e["cost"] == 19.5 and not e["open"]
    assert e["start_s"] == 3600.0 and e["end_s"] == 7200.0


def test_consumption_rows_and_site_export_feed_report_and_savings(tmp_path: Path):
    from detectors.report.assessment import assess

    db = tmp_path / "s.sqlite"
    lines: list[str | None] = []
    hour = 3600
    for i in range(24 * 21):
        t = 1_767_571_200 + i * hour
        used = 10.0 + (5.0 if 6 <= (i % 24) < 18 else 0.0)
        lines.append(line("reading", {"site": "d", "meter": "el", "resource": "electricity"},
                          {"energy_kwh": 1000.0 + 12.5 * i, "power_kw": used, "quality": 0,
                           "seq": i + 1}, t * 1000))
        lines.append(line("consumption", {"site": "d", "meter": "el",
                                          "resource": "electricity", "unit": "kWh"},
                          {"actual": used, "flags": 0, "cost": used * 0.2,
                           "co2_kg": used * 0.3}, t * 1000))
    _write(db, lines)
    with Store(db) as s:
        rows = consumption_rows(s, "d", 1_767_571_200, 1_767_571_200 + 2 * 86400)
        assert len(rows) == 48 and rows[0].meter == "el" and rows[0].unit == "kWh"
        assert s.sites() == ["d"]
        out = export_site_dir(s, "d", tmp_path / "site", timezone="UTC")
    assert out.meters == 1 and out.start_s == 1_767_571_200
    head = (tmp_path / "site" / "el.csv").read_text().splitlines()
    assert head[0] == "timestamp_utc,energy_kwh,power_kw" and len(head) == 24 * 21 + 1
    a = assess(tmp_path / "site", out.start_s, out.end_s, timezone="UTC")
    [m] = a.meters
    assert m.meter.price_per_unit == pytest.approx(0.2)
    assert m.total == pytest.approx(12.5 * (24 * 21 - 1), rel=1e-6)


def test_numpy_floats_are_written_as_plain_numbers():
    import numpy as np

    assert line("m", {"a": "b"}, {"x": np.float64(1.5), "n": 2}, 7) == "m,a=b x=1.5,n=2i 7"


def test_a_malformed_line_is_skipped_not_blocking_the_rest(tmp_path: Path):
    db = tmp_path / "s.sqlite"
    w = StoreWriter(db)
    w.write(["m,site=d x=np.float64(1.0) 1", "m,site=d x=2.0 2"])
    w.close()
    assert w.rejected == 1
    with Store(db) as s:
        assert [p.fields for p in s.points("m")] == [{"x": 2.0}]
