"""``recp report``: the RECP assessment of a small demo plant run, and the progress bar."""

from __future__ import annotations

import base64
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from collector.cli import main
from detectors.report.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import plantdata

METERS = ["water_main", "el_compressed_air", "el_packaging", "prod_line", "outdoor"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four weeks of the demo dairy: a water leak and a compressed-air base-load rise."""
    root = tmp_path_factory.mktemp("report")
    plant = plantdata.small_demo(root, meters=METERS, days=28, step_s=300.0)
    return plantdata.simulate(plant, root / "out", losses=True, interval_s=300)


def test_report_ranks_losses_by_money_and_renders_plots(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["report", "--site-dir", str(site), "--from", "2026-01-05", "--to", "2026-02-01",
                 "--timezone", "Europe/Vienna", "--out", str(tmp_path), "--no-pdf"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    a = json.loads((tmp_path / "assessment.json").read_text(encoding="utf-8"))
    truth = json.loads((site / "truth.json").read_text(encoding="utf-8"))
    meters = {m["meter"]: m for m in a["meters"]}
    assert set(meters) == {"water_main", "el_compressed_air", "el_packaging"}
    for m in meters.values():
        assert 0 < m["base_share"] < 1
        assert m["cost"] > 0 and m["co2_kg"] > 0
        assert m["specific"] == pytest.approx(m["consumption"] / a["produced"], rel=0.02)
    # losses: most expensive first, money and CO2 follow from the meter's price
    costs = [e["cost"] for e in a["events"]]
    assert costs == sorted(costs, reverse=True)
    assert a["savings_potential"] == pytest.approx(sum(costs), rel=1e-5)
    found = {(e["meter"], e["type"]) for e in a["events"]}
    assert ("water_main", "base_load_rise") in found or ("water_main", "level_shift") in found
    leak = next(e for e in a["events"] if e["meter"] == "water_main")
    assert leak["cost"] == pytest.approx(leak["excess"] * 3.9, rel=1e-4)
    (true_leak,) = [e for e in truth["events"] if e["type"] == "leak"]
    assert leak["excess"] == pytest.approx(true_leak["excess"] * 27 / 28, rel=0.35)
    assert a["savings_potential_annualised"] > a["savings_potential"]
    # the page: every plot is there and not blank
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 4
    import matplotlib.image

    for b in images:
        im = matplotlib.image.imread(io.BytesIO(base64.b64decode(b)), format="png")
        assert im.shape[1] >= 800 and float(im[..., :3].std()) > 0.05
    assert "Losses found, most expensive first" in html
    out = capsys.readouterr().out
    assert "loss events" in out and "savings potential" in out
    assert not (tmp_path / "report.pdf").exists()  # --no-pdf


def test_report_errors_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--site-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "meters.json: not found" in capsys.readouterr().err
    assert main(["report", "--site-dir", str(tmp_path), "--from", "yesterday",
                 "--out", str(tmp_path / "o")]) == 2  # fmt: skip
    assert "--from/--to" in capsys.readouterr().err


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal() -> None:
    quiet = io.StringIO()
    with Progress(3, "x", stream=quiet) as bar:
        bar.step("a")
    assert quiet.getvalue() == ""
    tty = _Tty()
    with Progress(2, "fit", stream=tty) as bar:
        bar.step("meter a")
        bar.step("meter b")
    text = tty.getvalue()
    assert "fit [" in text and "2/2" in text and "meter b" in text
    assert text.endswith("\r\033[K")  # the line is cleared at the end
    assert np.isfinite(bar.done)
