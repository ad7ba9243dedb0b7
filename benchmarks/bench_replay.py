"""What keeping the readings for a restart after SIGKILL costs ``recp detect`` (issue 5).

Every reading fed to the detectors is also written to the spool's ``replay`` table (same
transaction as its points) until the next checkpoint. Baseline, measured in the same run:
the same ``DetectService.handle`` with the replay rows left out. Runs alternate (A, B, A,
B, ...) on fresh spools; CPU seconds of the whole process (worker threads included) and
wall time per run, as readings per second. ``RECP_BENCH_POLLS`` sets the length (100
meters x polls readings, three values each).

    python -m benchmarks.bench_replay
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_detect import messages


def run(msgs: list[tuple[str, bytes]], workdir: Path, replay: bool) -> tuple[float, float]:
    """(readings per CPU-second, readings per wall second) of one in-process run."""
    from benchmarks.bench_detect import Discard
    from detectors.service.config import load_analytics
    from detectors.service.service import DetectService

    cfg = workdir / "replay.yaml"
    cfg.write_text("kind: analytics\nspool: {path: spool.sqlite, cap: 10000000}\n"
                   "checkpoint: {path: state.json, interval_s: 3600}\n")

    svc = DetectService(load_analytics(cfg), writer=Discard())
    if not replay:
        append = svc.spool.append

        def without(lines: Any, marks: Any = (), rows: Any = ()) -> None:
            append(lines, marks)

        svc.spool.append = without  # type: ignore[method-assign]

    async def go() -> None:
        for i in range(0, len(msgs), 2000):
            await svc.handle(msgs[i : i + 2000])

    cpu, wall = time.process_time(), time.perf_counter()
    asyncio.run(go())
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    svc.spool.close()
    return len(msgs) / cpu, len(msgs) / wall


def main() -> None:
    polls = int(os.environ.get("RECP_BENCH_POLLS", "200"))
    rounds = int(os.environ.get("RECP_BENCH_ROUNDS", "4"))
    msgs = messages(100, polls)
    with tempfile.TemporaryDirectory() as tmp:
        warm = Path(tmp) / "warm"
        warm.mkdir()
        run(msgs[:4000], warm, True)  # compile the kernels first
        got: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for r in range(rounds):
            for replay in (False, True):
                d = Path(tmp) / f"{r}-{replay}"
                d.mkdir()
                got[replay].append(run(msgs, d, replay))
    print(f"DetectService.handle, {len(msgs):,} readings in batches of 2,000, {rounds} "
          f"alternating rounds (load average {os.getloadavg()[0]:.1f})")
    for replay, name in ((False, "without replay rows (baseline)"), (True, "with replay rows")):
        cpu = [c for c, _ in got[replay]]
        wall = [w for _, w in got[replay]]
        print(f"  {name:32s} {min(cpu):8,.0f} - {max(cpu):8,.0f} per CPU-s "
              f"(median {statistics.median(cpu):,.0f}); wall {min(wall):,.0f} - "
              f"{max(wall):,.0f}/s")
    ratio = statistics.median(c for c, _ in got[True]) / statistics.median(
        c for c, _ in got[False])
    print(f"  with / without, median readings per CPU-second: {ratio:.2f}")


if __name__ == "__main__":
    main()
