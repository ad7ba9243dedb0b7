"""Fuzz every parser that takes outside input and print what it survived.

    python -m benchmarks.fuzz                  # 10,000 cases per parser (make fuzz)
    python -m benchmarks.fuzz --cases 500 --only csv
    python -m benchmarks.fuzz --atheris 20000  # plus coverage-guided runs ('.[fuzz]')

The targets and what counts as a clean refusal are in ``tests/fuzztargets.py`` (the default
test run uses the same targets with a few hundred cases each). Prints one row per parser:
cases, accepted, refused with the parser's own located error, unhandled exceptions, seconds;
then the first input and traceback of each distinct crash. Exit status 1 if any crashed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import fuzztargets  # noqa: E402


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.node()}: {os.cpu_count()} CPUs, load {load:.1f} at start, "
            f"Python {platform.python_version()}, {platform.platform(terse=True)}")


def atheris_run(name: str, runs: int) -> tuple[int, int, float, str]:
    """(runs done, crashes, seconds, tail of the output) of one atheris child process."""
    began = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.fuzz_atheris", name, f"-runs={runs}",
         "-max_len=8192"],
        cwd=REPO, capture_output=True, text=True, timeout=3600,
    )
    seconds = time.perf_counter() - began
    out = proc.stdout + proc.stderr
    done = re.search(r"Done (\d+) runs", out)
    crashed = proc.returncode != 0
    return (int(done.group(1)) if done else 0), int(crashed), seconds, out[-3000:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=10_000, help="cases per parser (10000)")
    p.add_argument("--only", default="", help="run the parsers whose name contains this")
    p.add_argument("--seed", type=int, default=None, help="hypothesis seed (default random)")
    p.add_argument("--atheris", type=int, default=0, metavar="RUNS",
                   help="also run each atheris target this many times (needs '.[fuzz]')")
    args = p.parse_args(argv)

    print(machine())
    print(f"{'parser':38s} {'cases':>7s} {'accepted':>8s} {'refused':>8s} {'unhandled':>9s} "
          f"{'seconds':>8s}", flush=True)
    crashes = []
    total = 0
    for target in fuzztargets.TARGETS:
        if args.only and args.only.lower() not in target.name.lower():
            continue
        out = fuzztargets.fuzz(target, args.cases, args.seed)
        total += out.unhandled
        crashes += out.crashes
        print(f"{out.target:38s} {out.cases:7,d} {out.accepted:8,d} {out.refused:8,d} "
              f"{out.unhandled:9,d} {out.seconds:8.1f}", flush=True)
    if args.atheris:
        if importlib.util.find_spec("atheris") is None:
            print("atheris is not installed: pip install -e '.[fuzz]' (Linux, CPython <= 3.11)")
            return 1
        for name in ("mqtt", "config", "csv"):
            if args.only and args.only.lower() not in name:
                continue
            runs, crashed, seconds, tail = atheris_run(name, args.atheris)
            total += crashed
            print(f"{'atheris: ' + name:38s} {runs:7,d} {'':8s} {'':8s} {crashed:9,d} "
                  f"{seconds:8.1f}", flush=True)
            if crashed:
                print(tail)
    for c in crashes:
        print(f"\n--- {c.error}\ninput: {c.example}\n{c.trace}")
    print(f"unhandled exceptions: {total}")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
