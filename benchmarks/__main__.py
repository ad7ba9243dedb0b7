"""Run every benchmark: `python -m benchmarks` (or `make bench`) from the repository root.

Each benchmarks/bench_*.py module defines main(); they run one after another in name order.
main() prints its own results; a non-None return value is printed too.  An exception in a
benchmark stops the run with a non-zero exit.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import benchmarks


def main() -> int:
    names = sorted(
        info.name
        for info in pkgutil.iter_modules(benchmarks.__path__)
        if info.name.startswith("bench_")
    )
    if not names:
        print("no benchmarks (benchmarks/bench_*.py) yet")
        return 0
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        result = module.main()
        if result is not None:
            print(result)
        print(f"== {name} done in {time.perf_counter() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
