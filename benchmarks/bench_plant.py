"""Virtual plant throughput: simulated meter-readings per second written as CSV.

Baseline: the same CSV written through the generic register round trip (encode every value
into registers and decode it back, as a poller would) instead of the per-type fast path the
writer uses. Both run in this process on the same 3-day demo scenario.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from collector.plant import Engine, load_plant
from collector.plant import csvout as csvout_module
from collector.plant.registers import formatter, reading

DEMO = Path(__file__).resolve().parents[1] / "edge_config" / "plants" / "demo.yaml"
DAYS = 3


def run(fast: bool) -> tuple[float, int]:
    spec = load_plant(DEMO)
    plant = spec.plant.model_copy(update={"days": float(DAYS), "losses": []})
    engine = Engine(plant, spec.profiles)
    original = csvout_module.fast_reader
    if not fast:
        csvout_module.fast_reader = lambda p: (lambda v, p=p: formatter(p)(reading(p, v)))  # type: ignore[assignment]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            summary = csvout_module.write_csv(engine, Path(tmp))
            took = time.perf_counter() - started
    finally:
        csvout_module.fast_reader = original
    return took, summary.rows


def main() -> None:
    slow_s, rows = run(fast=False)
    fast_s, rows_fast = run(fast=True)
    assert rows == rows_fast
    print(f"{DAYS} days of the demo plant, {rows} meter readings (one a minute, 10 meters)")
    print(f"  register round trip (baseline): {slow_s:6.2f} s  {rows / slow_s:9.0f} readings/s")
    print(f"  fast path (recp simulate --csv): {fast_s:6.2f} s  {rows / fast_s:9.0f} readings/s")
    print(f"  speed-up: {slow_s / fast_s:.1f}x; 30 days take about {fast_s * 30 / DAYS:.0f} s")


if __name__ == "__main__":
    main()
