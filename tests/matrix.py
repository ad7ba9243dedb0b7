"""The fault matrix's rows and how they are printed (used by tests/reliability/conftest.py).

A row is one fault over the whole chain, its :class:`chain.Reconciliation` summed over the
chain's meters; :func:`render_text` is the table at the end of a run, :func:`render_markdown`
the same for docs/reliability.md.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    """One fault row: the chain's counts summed over its meters."""

    fault: str
    test: str  # file::function
    produced: int
    published: int
    stored: int
    lost: int
    duplicated: int
    seq_gaps: int  # the agent's sequence numbers missing from the database
    alerts_opened: int
    alerts_twice: int  # alert opens/closes seen more than once on the broker
    dropped: dict[str, int]  # reason -> readings the agent dropped on purpose
    note: str
    wall_s: float  # from the test's start to its matrix_row call
    per_meter: str  # "el_main 320, water_main 318": produced per meter
    outcome: str = "?"  # passed / failed, filled in after the test's call


@dataclass
class Matrix:
    rows: list[Row] = field(default_factory=list)
    began: float = field(default_factory=time.time)
    load_start: tuple[float, float, float] = field(default_factory=os.getloadavg)



def row_from(fault: str, test: str, rec: Any, dropped: dict[str, int] | None, note: str,
             wall_s: float) -> Row:
    """A row from a reconciliation (tests/chain.py) and what the agent dropped, by reason."""
    meters = list(rec.meters.values())
    return Row(
        fault=fault,
        test=test,
        produced=sum(m.produced for m in meters),
        published=sum(m.published for m in meters),
        stored=sum(m.stored for m in meters),
        lost=sum(m.lost for m in meters),
        duplicated=sum(m.duplicated for m in meters),
        seq_gaps=sum(len(m.seq_missing) for m in meters),
        alerts_opened=sum(1 for a in rec.alerts if a.get("event") == "open"),
        alerts_twice=len(rec.alerts_twice),
        dropped=dict(dropped or {}),
        note=note,
        wall_s=wall_s,
        per_meter=", ".join(f"{m.meter} {m.produced}" for m in meters),
    )


def _dropped(d: dict[str, int]) -> str:
    return "; ".join(f"{n} {reason}" for reason, n in d.items()) or "none"


COLUMNS = ("fault", "produced", "published", "stored", "lost", "dup", "seq gaps",
           "alerts (twice)", "dropped, with reason", "wall s", "result", "test")


def _cells(r: Row) -> tuple[str, ...]:
    return (r.fault, str(r.produced), str(r.published), str(r.stored), str(r.lost),
            str(r.duplicated), str(r.seq_gaps), f"{r.alerts_opened} ({r.alerts_twice})",
            _dropped(r.dropped), f"{r.wall_s:.0f}", r.outcome, r.test)


def render_markdown(m: Matrix, wall_s: float) -> str:
    load_end = os.getloadavg()
    when = dt.datetime.fromtimestamp(m.began, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    lines = [
        "# Fault matrix",
        "",
        f"Run {when} UTC, {wall_s / 60:.1f} min wall; {os.cpu_count()} CPUs, load average "
        f"{m.load_start[0]:.1f} at start, {load_end[0]:.1f} at end; Python "
        f"{platform.python_version()}. Counts summed over the meters of each row.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in m.rows:
        cells = (c.replace("|", "\\|").replace("\n", " ") for c in _cells(r))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Notes:", ""]
    lines += [f"- {r.fault}: {r.note} (produced per meter: {r.per_meter})" for r in m.rows]
    return "\n".join(lines) + "\n"


def render_text(m: Matrix) -> list[str]:
    cells = [COLUMNS[:-1]] + [_cells(r)[:-1] for r in m.rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS) - 1)]
    out = []
    for k, c in enumerate(cells):
        out.append("  ".join(v.ljust(w) if i in (0, 8) else v.rjust(w)
                             for i, (v, w) in enumerate(zip(c, widths, strict=True))))
        if k == 0:
            out.append("-" * len(out[0]))
    return out


