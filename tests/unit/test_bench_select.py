"""`make bench BENCH=detect,agent_cpu` / `python -m benchmarks detect agent_cpu` run only those."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import available, chosen

ROOT = Path(__file__).resolve().parents[2]


def test_no_names_means_every_benchmark() -> None:
    names = available()
    assert "bench_detect" in names and "bench_agent_cpu" in names
    assert chosen([], names) == names
    assert chosen([""], names) == names  # `make bench` with BENCH unset


def test_short_and_full_names_commas_or_spaces() -> None:
    names = available()
    assert chosen(["detect,agent_cpu"], names) == ["bench_agent_cpu", "bench_detect"]
    assert chosen(["bench_detect", "agent_cpu"], names) == ["bench_agent_cpu", "bench_detect"]


def test_unknown_name_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"no benchmark detct; known: .*detect"):
        chosen(["detct"], available())


def test_make_passes_bench_and_an_unknown_name_exits_2() -> None:
    out = subprocess.run(["make", "-n", "bench", "BENCH=detect,agent_cpu"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "-m benchmarks detect,agent_cpu" in out
    run = subprocess.run([sys.executable, "-m", "benchmarks", "nosuch"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 2
    assert "no benchmark nosuch" in run.stderr
