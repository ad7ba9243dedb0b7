"""The README's savings example, run as a user types it: the verdict passes, the truth lies
in the stated band, and the README quotes what the command prints."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from collector.cli import main
from detectors.savings import parse_local

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")


def example_commands() -> list[list[str]]:
    """The `recp` commands of the README's sh block that simulates steam_trap_repair.yaml."""
    blocks = re.findall(r"```sh\n(.*?)```", README, flags=re.S)
    (block,) = [b for b in blocks if "--csv out/trap" in b]
    return [shlex.split(c) for c in block.replace("\\\n", " ").splitlines() if c.strip()]


def test_readme_savings_example_passes_and_holds_the_truth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    commands = example_commands()
    assert [c[:2] for c in commands] == [["recp", "simulate"], ["recp", "savings"]]
    for argv in commands:
        argv = [str(REPO / a) if a.startswith("edge_config/") else a for a in argv[1:]]
        assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    s = json.loads((tmp_path / "out/trap-savings/savings.json").read_text(encoding="utf-8"))
    assert s["verdict"] == {"passed": True, "reasons": [], "warnings": []}
    truth = json.loads((tmp_path / "out/trap/truth.json").read_text(encoding="utf-8"))
    (trap,) = truth["events"]
    band = s["savings"]["uncertainty"]["90%"]
    hours = (parse_local(trap["end"]) - parse_local(trap["start"])) / 3600
    rate_t_h = trap["excess"] / hours
    assert trap["type"] == "steam_trap" and rate_t_h == pytest.approx(0.18)
    saved = rate_t_h * 14 * 24  # the reporting period is all after the repair
    assert band["low"] <= saved <= band["high"]
    assert f"= {saved:.2f} t" in README
    assert s["data"]["baseline_coverage_pct"] == s["data"]["reporting_coverage_pct"] == 100
    for line in printed.splitlines():  # the lines the README quotes are what it prints
        if line.startswith(("steam_main: avoided", "Guideline 14:")):
            assert line in README, line
    assert (REPO / "docs/img/savings-trap-repair.png").stat().st_size > 10_000
