"""The fault matrix's bookkeeping (tests/matrix.py, tests/reliability/conftest.py): rows from
reconciliations, the table at the end of a run, the markdown file, the matrix rows left
out of the default run. The rows themselves run over the chain with make reliability."""

from __future__ import annotations

from pathlib import Path

import pytest
from chain import MeterCount, Reconciliation
from matrix import Matrix, render_markdown, render_text, row_from

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parents[1]


def reconciliation(lost: int = 0) -> Reconciliation:
    a = MeterCount("el_main", "energy_kwh", produced=300, published=300, stored=300 - lost,
                   matched=300 - lost, lost=lost, last_seq=300,
                   seq_missing=list(range(1, lost + 1)))
    b = MeterCount("water_main", "volume_m3", produced=280, published=280, stored=281,
                   matched=280, duplicated=1, last_seq=280, seq_twice=1)
    alerts = [{"event": "open", "id": "x", "meter": "el_main", "type": "overspend"},
              {"event": "open", "id": "x", "meter": "el_main", "type": "overspend"},
              {"event": "close", "id": "x", "meter": "el_main", "type": "overspend"}]
    return Reconciliation({"el_main": a, "water_main": b}, alerts, [("x", "open", 2)], {})


def test_a_row_sums_the_meters_and_counts_alerts_twice() -> None:
    row = row_from("broker SIGKILL x3", "t.py::t", reconciliation(lost=7),
                   {"outbox full (cap 200), oldest dropped": 7}, "note", 61.2)
    assert (row.produced, row.published, row.stored) == (580, 580, 574)
    assert (row.lost, row.duplicated, row.seq_gaps) == (7, 1, 7)
    assert (row.alerts_opened, row.alerts_twice) == (2, 1)
    assert row.per_meter == "el_main 300, water_main 280"


def test_table_and_markdown_hold_every_row() -> None:
    m = Matrix()
    m.rows.append(row_from("none", "a.py::a", reconciliation(), None, "baseline", 50))
    m.rows.append(row_from("cap | overflow", "b.py::b", reconciliation(lost=3),
                           {"outbox full (cap 200), oldest dropped": 3}, "", 70))
    m.rows[0].outcome, m.rows[1].outcome = "passed", "FAILED"
    text = render_text(m)
    assert text[0].split()[:3] == ["fault", "produced", "published"]
    assert len(text) == 4 and "FAILED" in text[3] and "3 outbox full" in text[3]
    assert len({len(line) for line in text}) <= 2  # columns aligned (the last may be short)
    md = render_markdown(m, 125.0).splitlines()
    table = [line for line in md if line.startswith("| ")]  # header and rows
    assert len(table) == 3
    assert all(line.count(" | ") == table[0].count(" | ") for line in table)  # | escaped
    assert "2.1 min wall" in md[2] and "load average" in md[2]


def test_matrix_rows_run_only_when_asked_and_print_the_table(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reliability folder with a default-run row, a matrix row and a failing row: the
    default run runs only the first; -m "" runs all three, prints the table with each
    outcome and writes the markdown."""
    pytester.makeini("""
        [pytest]
        addopts = -m "not matrix"
        markers =
            matrix: matrix row
            default_run: in the default run
        """)
    rel = pytester.mkpydir("reliability")
    (rel / "conftest.py").write_text((TESTS / "reliability" / "conftest.py").read_text())
    for helper in ("matrix.py", "chain.py"):
        (pytester.path / helper).write_text((TESTS / helper).read_text())
    (rel / "test_rows.py").write_text(
        "import pytest\n"
        "from chain import MeterCount, Reconciliation\n\n"
        "def rec():\n"
        "    m = MeterCount('m', 'c', produced=5, published=5, stored=5, matched=5)\n"
        "    return Reconciliation({'m': m}, [], [], {})\n\n"
        "@pytest.mark.default_run\n"
        "def test_quick(matrix_row):\n"
        "    matrix_row('quick fault', rec())\n\n"
        "def test_slow(matrix_row):\n"
        "    matrix_row('slow fault', rec(), dropped={'why': 2}, note='slow one')\n\n"
        "def test_broken(matrix_row):\n"
        "    matrix_row('broken fault', rec())\n"
        "    assert False\n")
    out = pytester.path / "matrix.md"
    monkeypatch.setenv("RECP_MATRIX_OUT", str(out))
    pytester.syspathinsert()
    default = pytester.runpytest("-p", "no:cacheprovider")
    default.assert_outcomes(passed=1, deselected=2)
    assert "quick fault" in out.read_text() and "slow fault" not in out.read_text()
    full = pytester.runpytest("-p", "no:cacheprovider", "-m", "")
    full.assert_outcomes(passed=2, failed=1)
    full.stdout.fnmatch_lines(["*fault matrix*", "fault * produced*",
                               "quick fault * passed", "slow fault * 2 why * passed",
                               "broken fault * FAILED", "(3 rows, * markdown: *matrix.md)"])
    md = out.read_text()
    assert "| slow fault | 5 | 5 | 5 | 0 | 0 | 0 | 0 (0) | 2 why |" in md
    assert "- slow fault: slow one (produced per meter: m 5)" in md
