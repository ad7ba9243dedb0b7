"""Bad configuration files give one clear line per problem and exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from collector.cli import main
from collector.configfile import ConfigError
from collector.plant import load_plant

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "edge_config" / "plants" / "demo.yaml"

GOOD_HEAD = """\
kind: plant
name: tiny
start: 2026-01-05T00:00:00Z
days: 1
meters:
  - id: el
    profile: eastron_sdm630
    port: 5020
"""


def write(tmp_path: Path, text: str, name: str = "plant.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_plant(path)
    return [str(p) for p in info.value.problems]


def test_shipped_plants_are_valid() -> None:
    for path in sorted((REPO / "edge_config" / "plants").glob("*.yaml")):
        spec = load_plant(path)
        assert spec.plant.meters, path


def test_each_problem_names_file_line_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        GOOD_HEAD
        + """\
    load: {base: lots}
    unit_id: 900
  - id: Bad-Id
    profile: eastron_sdm630
    port: 5021
    colour: red
""",
    )
    found = problems_of(path)
    assert len(found) == 4, found
    text = "\n".join(found)
    assert f"{path}:9: meters[0].load.base: Input should be a valid number" in text
    assert "(got 'lots')" in text
    assert f"{path}:10: meters[0].unit_id: Input should be less than or equal to 247" in text
    assert f"{path}:11: meters[1].id: String should match pattern" in text
    assert f"{path}:14: meters[1].colour: unknown field" in text


def test_missing_field_and_bad_time(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_HEAD.replace("name: tiny\n", "").replace("Z\n", "\n", 1))
    text = "\n".join(problems_of(path))
    assert "name: required field is missing" in text
    assert "start: Value error, give the time zone" not in text  # prefix stripped
    assert ":2: start: give the time zone, e.g. 2026-01-05T00:00:00Z for UTC" in text
    assert "(got 2026-01-05T00:00:00)" in text


def test_unknown_profile_lists_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_HEAD.replace("eastron_sdm630", "eastron_sdm999"))
    (msg,) = problems_of(path)
    assert ":7: meters[0].profile: no profile named 'eastron_sdm999'" in msg
    assert "eastron_sdm630" in msg  # the known ones are listed


def test_loss_on_unknown_meter_and_missing_parameter(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        GOOD_HEAD
        + """\
losses:
  - {meter: nope, type: leak, start: 2026-01-05T01:00:00Z, rate: 1}
  - {meter: el, type: spikes, start: 2026-01-05T01:00:00Z}
""",
    )
    text = "\n".join(problems_of(path))
    assert "spikes needs count" in text
    assert ":11: losses[1]" in text


def test_rollover_needs_an_integer_counter(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        GOOD_HEAD + "losses:\n  - {meter: el, type: rollover, at: 2026-01-05T06:00:00Z}\n",
    )
    (msg,) = problems_of(path)
    assert "never rolls over" in msg and "float32" in msg


def test_exception_code_must_be_one_the_server_can_answer(tmp_path: Path) -> None:
    """Codes outside pymodbus' ExcCodes were accepted and served as 4 (device failure),
    with a traceback in the plant's log for every poll."""
    from pymodbus.constants import ExcCodes

    from collector.plant.config import MODBUS_EXCEPTION_CODES

    assert set(MODBUS_EXCEPTION_CODES) == {int(c) for c in ExcCodes}
    path = write(
        tmp_path,
        GOOD_HEAD + "losses:\n  - {meter: el, type: exception, start: 2026-01-05T01:00:00Z,"
        " code: 12}\n",
    )
    (msg,) = problems_of(path)
    assert f"{path}:10: losses[0].code:" in msg
    assert "1, 2, 3, 4, 5, 6, 7, 8, 10 or 11" in msg and "(got 12)" in msg, msg


def test_yaml_syntax_and_duplicate_keys(tmp_path: Path) -> None:
    bad = write(tmp_path, GOOD_HEAD + "  - id: [unclosed\n", "syntax.yaml")
    (msg,) = problems_of(bad)
    assert msg.startswith(f"{bad}:") and "not valid YAML" in msg
    dup = write(tmp_path, GOOD_HEAD.replace("days: 1\n", "days: 1\ndays: 2\n"), "dup.yaml")
    (msg,) = problems_of(dup)
    assert f"{dup}:5:" in msg and "duplicate key 'days' (first on line 4)" in msg


def test_missing_file(tmp_path: Path) -> None:
    (msg,) = problems_of(tmp_path / "nope.yaml")
    assert msg.endswith("nope.yaml: file not found")


def test_config_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(DEMO)]) == 0
    assert "ok    " in capsys.readouterr().out
    bad = write(tmp_path, GOOD_HEAD.replace("port: 5020", "port: seventy"))
    assert main(["config", "check", str(DEMO), str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"error: {bad}:8: meters[0].port: Input should be a valid integer" in err
    assert "1 problem found" in err
    nokind = write(tmp_path, "name: x\n", "nokind.yaml")
    assert main(["config", "check", str(nokind)]) == 2
    assert "kind: required field is missing (one of:" in capsys.readouterr().err


def test_malformed_plant_file_exits_2_without_traceback(tmp_path: Path) -> None:
    bad = write(tmp_path, GOOD_HEAD.replace("days: 1", "days: -3"))
    proc = subprocess.run(
        [sys.executable, "-m", "collector", "simulate", "-c", str(bad), "--csv", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{bad}:4: days: Input should be greater than 0" in proc.stderr
