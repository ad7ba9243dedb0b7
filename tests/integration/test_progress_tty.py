"""``recp report`` and ``recp savings`` draw a progress bar when stderr is a real terminal.

The commands run as separate processes with stderr on a pseudo-terminal (what an engineer
at a shell sees) and, for comparison, on a pipe (a log file, cron): the bar is drawn and
cleared on the terminal, and not a byte of it goes to the pipe.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import plantdata
import pytest

pytestmark = pytest.mark.integration

METERS = ["water_main", "prod_line", "outdoor"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tty")
    plant = plantdata.small_demo(root, meters=METERS, days=14, step_s=600.0)
    return plantdata.simulate(plant, root / "out", losses=True, interval_s=600)


def run_on_terminal(argv: list[str]) -> tuple[int, str]:
    """Run ``python -m collector ARGV`` with stderr on a pty; (exit code, what it drew)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "collector", *argv],
                            stdout=subprocess.DEVNULL, stderr=slave)  # fmt: skip
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=300), b"".join(chunks).decode("utf-8", "replace")


def test_progress_bar_on_a_terminal_not_on_a_pipe(site: Path, tmp_path: Path) -> None:
    report = ["report", "--site-dir", str(site), "--out", str(tmp_path / "r"), "--no-pdf"]
    code, drawn = run_on_terminal(report)
    assert code == 0, drawn
    assert "report [" in drawn and "#" in drawn and "\r" in drawn
    assert "water_main" in drawn  # it names what it is working on
    assert drawn.endswith("\r\033[K")  # and leaves a clean line behind
    savings = ["savings", str(site / "water_main.csv"), "--baseline", "2026-01-05..2026-01-11",
               "--reporting", "2026-01-12..2026-01-18", "--time-of-week", "daytype",
               "--out", str(tmp_path / "s")]  # fmt: skip
    code, drawn = run_on_terminal(savings)
    assert code == 0, drawn
    assert "savings [" in drawn and "fitting" in drawn and "5/5" in drawn
    piped = subprocess.run([sys.executable, "-m", "collector", *report], capture_output=True,
                           text=True, timeout=300, check=True)  # fmt: skip
    assert "[" not in piped.stderr and "\r" not in piped.stderr
