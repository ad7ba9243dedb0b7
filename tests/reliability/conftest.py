"""The fault matrix: each test here is one row, a fault over the whole chain (tests/chain.py).

A row test ends by handing its reconciliation to the ``matrix_row`` fixture, before its
assertions (so a failing row still shows its figures)::

    def test_broker_sigkill_repeated(chain_factory, matrix_row):
        ...
        chain.finish()
        rec = chain.reconcile()
        matrix_row("broker SIGKILL x3", rec, note="while readings flow and alerts are open")
        assert ...

    matrix_row(fault, rec, dropped={"outbox full (cap 200), oldest dropped": 127}, note=...)

``dropped`` is what the agent counted as dropped, by reason (its health message's
``outbox.dropped``); leave it out when nothing was. At the end of the run the terminal
summary prints every recorded row as a table (with the test's outcome) and writes it as
markdown to ``build/reliability-matrix.md`` (or ``$RECP_MATRIX_OUT``).

Every test in this folder is marked ``matrix`` and so left out of the default test run
(``addopts`` deselects ``matrix``); ``make reliability`` runs them all. A row that should
also run in the default run (a short subset for CI) is marked ``@pytest.mark.default_run``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from matrix import Matrix, Row, render_markdown, render_text, row_from

HERE = Path(__file__).parent
DEFAULT_OUT = "build/reliability-matrix.md"

_MATRIX = pytest.StashKey[Matrix]()
_ROWS = pytest.StashKey[list[Row]]()  # the rows one test item recorded


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_MATRIX] = Matrix()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of this folder ``matrix`` unless it asks for the default run (before
    the ``-m`` deselection runs)."""
    for item in items:
        if HERE in item.path.parents and item.get_closest_marker("default_run") is None:
            item.add_marker(pytest.mark.matrix)


@pytest.fixture
def matrix_row(request: pytest.FixtureRequest) -> Iterator[Callable[..., Row]]:
    """record(fault, rec, dropped=None, note="") -> Row: put one row in the matrix."""
    began = time.monotonic()
    rows: list[Row] = []
    request.node.stash[_ROWS] = rows

    def record(fault: str, rec: Any, dropped: dict[str, int] | None = None,
               note: str = "") -> Row:
        row = row_from(fault, f"{request.node.path.name}::{request.node.name}", rec,
                       dropped, note, time.monotonic() - began)
        rows.append(row)
        request.config.stash[_MATRIX].rows.append(row)
        print(f"\nmatrix row: {fault} ({row.wall_s:.0f} s wall)\n{rec.table()}")
        return row

    yield record


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A row's outcome: failed if its call or teardown failed, else passed."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    rows = item.stash.get(_ROWS, None)
    if not rows or report.when == "setup":
        return
    for row in rows:
        if report.failed:
            row.outcome = "FAILED"
        elif row.outcome == "?" and report.when == "call":
            row.outcome = "passed"


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    m = config.stash.get(_MATRIX, None)
    if m is None or not m.rows:
        return
    wall = time.time() - m.began
    out = Path(os.environ.get("RECP_MATRIX_OUT") or config.rootpath / DEFAULT_OUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_markdown(m, wall), encoding="utf-8")
    terminalreporter.section("fault matrix")
    for line in render_text(m):
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"({len(m.rows)} rows, {wall / 60:.1f} min; markdown: {out})")
