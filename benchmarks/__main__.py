"""Run the benchmarks: `python -m benchmarks [NAME ...]` (`make bench [BENCH=a,b]`) from the root.

Each benchmarks/bench_*.py module defines main(); they run one after another in name order,
all of them, or only those named (`detect` or `bench_detect`; commas or spaces between).
main() prints its own results; a non-None return value is printed too.  An exception in a
benchmark stops the run with a non-zero exit.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import benchmarks


def available() -> list[str]:
    """The benchmark modules, `bench_*`, in name order."""
    return sorted(
        info.name
        for info in pkgutil.iter_modules(benchmarks.__path__)
        if info.name.startswith("bench_")
    )


def chosen(args: list[str], names: list[str]) -> list[str]:
    """The modules the arguments name, in name order (all when none); ValueError for unknown."""
    wanted = [w.strip() for a in args for w in a.replace(",", " ").split() if w.strip()]
    if not wanted:
        return names
    unknown = [w for w in wanted if w not in names and f"bench_{w}" not in names]
    if unknown:
        short = ", ".join(n.removeprefix("bench_") for n in names)
        raise ValueError(f"no benchmark {', '.join(unknown)}; known: {short}")
    keep = {w if w in names else f"bench_{w}" for w in wanted}
    return [n for n in names if n in keep]


def main(argv: list[str] | None = None) -> int:
    names = available()
    if not names:
        print("no benchmarks (benchmarks/bench_*.py) yet")
        return 0
    try:
        run = chosen(sys.argv[1:] if argv is None else argv, names)
    except ValueError as e:
        print(f"python -m benchmarks: {e}", file=sys.stderr)
        return 2
    for name in run:
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
