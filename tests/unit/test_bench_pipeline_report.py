"""bench_pipeline's printout reads at every size: 40,000 readings, not "0.0 M"."""

from __future__ import annotations

import re

import pytest

from benchmarks.bench_pipeline import readable, report


def test_readable_counts_and_rates() -> None:
    assert readable(40_000) == "40,000"
    assert readable(2_777) == "2,777"
    assert readable(850_400.7) == "850,401"
    assert readable(10_000_000) == "10.0 M"
    assert readable(1_234_567) == "1.2 M"
    assert readable(12.3456) == "12.3"
    assert readable(0) == "0"


def _run(readings: int, intervals: int, cpu_s: float) -> dict[str, object]:
    clock = {"site": cpu_s / 10, "clean": cpu_s / 2, "detectors": cpu_s / 4,
             "overspend": cpu_s / 4, "baseline fit": cpu_s / 10}  # fmt: skip
    return {"meters": 2, "readings": readings, "intervals": intervals, "ours_cpu": clock,
            "ours_wall": clock, "numpy_cpu": {k: 3 * v for k, v in clock.items()},
            "numpy_wall": clock, "river_cpu": 0.5, "river_n": 1000,
            "found": {"m0 (leak)": {"ours": ["leak"], "numpy": ["leak"]}}, "load": [1.0, 2.0]}


@pytest.mark.parametrize(("readings", "intervals", "cpu_s", "shows"), [
    (40_000, 2_776, 4.0, "40,000 one-minute readings -> 2,776 15-minute intervals"),
    (10_000_000, 666_700, 2.0, "10.0 M one-minute readings -> 666,700 15-minute intervals"),
])  # fmt: skip
def test_report_prints_no_zero_millions(
    capsys: pytest.CaptureFixture[str], readings: int, intervals: int, cpu_s: float, shows: str
) -> None:
    compile_s = {"cold": {"first_call_s": 9.0, "first_call_cpu_s": 8.0, "cache_misses": 40},
                 "warm": {"first_call_s": 0.2, "first_call_cpu_s": 0.2, "cache_hits": 40,
                          "cache_misses": 0}}  # fmt: skip
    report(_run(readings, intervals, cpu_s), _run(readings, intervals, cpu_s), compile_s)
    out = capsys.readouterr().out
    assert shows in out
    assert not re.search(r"\b0\.0+ M\b", out), out
    assert "| 10,000 | 10,000 |" in out if readings == 40_000 else "| 5.0 M | 5.0 M |" in out
