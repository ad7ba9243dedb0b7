"""``recp --help`` and every subcommand's help read well and exit 0."""

from __future__ import annotations

import subprocess
import sys

import pytest

from collector.cli import COMMANDS, build_parser, main


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: recp" in out
    for name in COMMANDS:
        assert f"    {name}" in out


@pytest.mark.parametrize("name", COMMANDS)
def test_each_subcommand_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: recp {name}" in out
    assert len(out.splitlines()) >= 3


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "commands:" in capsys.readouterr().out


def test_verbose_flag_before_or_after_the_command() -> None:
    parser = build_parser()
    assert parser.parse_args(["-v", "profiles"]).verbose == 1
    assert parser.parse_args(["profiles", "-vv"]).verbose == 2


def test_profiles_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    assert "eastron_sdm630" in out and "electricity" in out
    assert main(["profiles", "carlo_gavazzi_em24"]) == 0
    out = capsys.readouterr().out
    assert "energy_kwh" in out and "CDAB" in out


def test_importing_collector_never_imports_numba() -> None:
    code = (
        "import sys, collector, collector.cli, collector.plant, collector.plant.csvout;"
        "collector.cli.build_parser();"
        "assert 'numba' not in sys.modules and 'numpy' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_reader_that_goes_away_gets_no_traceback() -> None:
    """``recp profiles | head -1``: the pipe closes before recp has written; exit 141
    (128 + SIGPIPE, as a shell reports it), nothing on stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "collector", "profiles"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert err == ""
