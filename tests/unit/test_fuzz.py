"""Every parser of outside input, fuzzed briefly (``python -m benchmarks.fuzz`` runs 10,000
cases each), and the crashes fuzzing found, kept as regression tests."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fuzztargets import TARGETS, Target, fuzz

from collector import contract
from collector.commands.config import check_file
from collector.configfile import ConfigError
from detectors.csvinput import CsvInputError
from detectors.scan import ScanOptions, scan
from detectors.service.validate import DeadLetter, Limits, parse

CASES = 100  # each; about 1-10 s per parser


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_no_unhandled_exception(target: Target) -> None:
    out = fuzz(target, CASES)
    assert out.cases >= CASES * 0.9
    details = "\n".join(f"{c.error}\ninput: {c.example}\n{c.trace}" for c in out.crashes)
    assert out.unhandled == 0, details
    # the inputs reach past the first check: some are accepted, some refused
    assert out.accepted > 0, out
    assert out.refused > 0 or target.name.startswith("poller"), out


# --------------------------------------------------------------------------- found by fuzzing


def test_ack_or_reading_seq_beyond_sqlite_is_refused_not_a_crash() -> None:
    """A retained ack with seq 1e30 reached the outbox's SQLite DELETE and raised
    OverflowError in the publisher, on every reconnection (the ack is retained)."""
    with pytest.raises(ValueError, match="less than or equal"):
        contract.Ack.model_validate_json(b'{"v":1,"stream":"s","seq":%d}' % 10**30)
    assert contract.Ack.model_validate_json(
        f'{{"v":1,"stream":"s","seq":{contract.MAX_SEQ}}}').seq == contract.MAX_SEQ
    payload = (b'{"v":1,"site":"s","meter":"m","resource":"water","stream":"x",'
               b'"seq":9223372036854775808,"ts":"2026-09-21T13:33:20Z","quality":"ok",'
               b'"values":{}}')
    res = parse("recp/v1/s/m/reading", payload, 1_790_000_000.0, Limits())
    assert isinstance(res, DeadLetter) and "seq" in res.reason


def test_config_kind_that_is_a_mapping_is_a_problem(tmp_path: Path) -> None:
    """``kind: {a: 1}`` raised TypeError (unhashable dict) in recp config check."""
    path = tmp_path / "x.yaml"
    path.write_text("kind:\n  a: 1\n")
    with pytest.raises(ConfigError) as info:
        check_file(path)
    assert str(info.value).startswith(f"{path}:1: kind: unknown kind")


def test_scan_infinite_epoch_timestamp_names_its_line(tmp_path: Path) -> None:
    """An epoch-seconds cell of 'inf' raised OverflowError in recp scan."""
    path = tmp_path / "m.csv"
    path.write_text("time,energy_kwh\n1790000000,1\ninf,2\n")
    with pytest.raises(CsvInputError) as info:
        scan(path, ScanOptions())
    assert info.value.line == 3 and "not a time" in info.value.message


def test_scan_timestamp_with_a_wrong_year_is_refused_quickly(tmp_path: Path) -> None:
    """A year typo (0226 for 2026) made recp scan build a grid of 70 million intervals
    (seconds of CPU and gigabytes); now it names the line."""
    path = tmp_path / "m.csv"
    rows = [f"2026-01-05T{h:02d}:00:00Z,{h}" for h in range(10)]
    rows.insert(4, "0226-01-05T04:30:00Z,4.5")
    path.write_text("timestamp_utc,energy_kwh\n" + "\n".join(rows) + "\n")
    began = time.process_time()
    with pytest.raises(CsvInputError) as info:
        scan(path, ScanOptions())
    assert time.process_time() - began < 2.0
    assert info.value.line == 6 and "0226-01-05" in info.value.message
    assert "years from the other readings" in info.value.message


def test_a_control_character_in_yaml_names_its_line(tmp_path: Path) -> None:
    """A character YAML refuses (here U+0093) was reported without a line."""
    path = tmp_path / "site.yaml"
    path.write_text("kind: site\nsite: a\nname: b\x93c\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        check_file(path)
    assert str(info.value).startswith(f"{path}:3: not valid YAML: character U+0093 is not")
