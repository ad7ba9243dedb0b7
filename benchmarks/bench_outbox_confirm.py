"""Consumer confirmation (``mqtt.confirm: consumer``) at depth: CPU per ``Outbox.confirm``.

A long outage leaves a deep outbox (DEPTH readings: METERS meters polled together, one
cycle row per poll); after it, the consumer's acks arrive meter by meter, each a little
further on, while the backlog drains oldest first. Measured: process CPU time per confirm
of one reading, over the first ROUNDS rounds of acks (every meter once per round).
Baseline: the scan it replaced (every stored cycle row read on each ack), run here on a
copy of the same outbox.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from collector.outbox import Entry, Outbox

METERS = 20
DEPTH = 100_000
ROUNDS = 10


def scan_confirm(box: Outbox, meter: str, stream: str, seq: int) -> int:
    """The confirm of before (baseline): every publishable cycle row read, each ack."""
    if stream != box.stream:
        return 0
    box._forget_tail()
    quoted = json.dumps(meter)
    with box._lock:
        ids = []
        for first, meters_t, seqs_t in box._db.execute(
                "SELECT first_id, meters, seqs FROM cycles WHERE held = 0 ORDER BY first_id"):
            if quoted not in meters_t:
                continue
            for i, (m, s) in enumerate(zip(json.loads(meters_t), json.loads(seqs_t),
                                           strict=True)):
                if m == meter and s <= seq:
                    ids.append(first + i)
        return box._delete(ids)


def fill(path: Path) -> None:
    meters = [f"m{k:02d}" for k in range(METERS)]
    body = b'{"v":' + b"1" * 180 + b"}"  # about a reading's size
    with Outbox(path, cap=DEPTH * 2, synchronous="OFF") as box:
        for _ in range(DEPTH // METERS):
            box.append([Entry(m, lambda seq, m=m: (f"recp/v1/b/{m}/reading", body))
                        for m in meters])


def cpu_per_confirm(path: Path, confirm: Callable[[Outbox, str, str, int], int]) -> float:
    with Outbox(path, cap=DEPTH * 2) as box:
        assert box.depth == DEPTH
        n = 0
        started = time.process_time()
        for seq in range(1, ROUNDS + 1):
            for k in range(METERS):
                n += confirm(box, f"m{k:02d}", box.stream, seq)
        used = time.process_time() - started
        assert n == ROUNDS * METERS and box.depth == DEPTH - n
        return used / (ROUNDS * METERS)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        fill(tmp / "a.db")
        shutil.copy(tmp / "a.db", tmp / "b.db")
        print(f"confirm at depth {DEPTH} ({METERS} meters, {DEPTH // METERS} cycle rows), "
              f"{ROUNDS} rounds of acks, CPU per confirm:")
        base = cpu_per_confirm(tmp / "b.db", scan_confirm)
        print(f"  scan of every row (baseline) {base * 1e3:9.3f} ms")
        now = cpu_per_confirm(tmp / "a.db", Outbox.confirm)
        print(f"  Outbox.confirm               {now * 1e3:9.3f} ms  ({base / now:.0f}x less)")


if __name__ == "__main__":
    main()
