"""The reports open in a real browser and their plots render (headless Chromium).

Each report page is rendered to PNG twice: as written, and with its embedded images
removed. The plots are matplotlib figures with coloured lines and bands, so the page with
them must show far more coloured pixels (and more ink) than the same page without them;
both must show text. A broken image, a blocked data URI or an empty plot fails this.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import plantdata
import pytest

from collector.cli import main

pytestmark = pytest.mark.integration

METERS = ["water_main", "el_compressed_air", "prod_line", "outdoor"]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("headless Chromium is needed: apt-get install chromium (.ci/run does)")
    return path


def screenshot(html: Path, png: Path) -> np.ndarray:
    """Render ``html`` in headless Chromium and return the page as an RGB array."""
    import matplotlib.image

    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={png.parent / 'chromium-profile'}",
         "--hide-scrollbars", "--window-size=1400,5000", f"--screenshot={png}",
         html.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert png.exists(), proc.stderr[-2000:]
    return np.asarray(matplotlib.image.imread(png))[..., :3]


def coloured(rgb: np.ndarray) -> int:
    """Pixels of clear colour (plot lines, bands, markers), not grey text or background."""
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    return int(np.count_nonzero(spread > 0.25))


def ink(rgb: np.ndarray) -> int:
    """Pixels that are not background: text, axes, grid, lines."""
    return int(np.count_nonzero(rgb.min(axis=2) < 0.9))


def check_renders(html: Path, tmp: Path, min_images: int) -> None:
    text = html.read_text(encoding="utf-8")
    assert len(re.findall(r'src="data:image/png;base64,', text)) >= min_images
    stripped = tmp / f"{html.stem}-no-images.html"
    stripped.write_text(re.sub(r'src="data:image/png;base64,[^"]+"', 'src=""', text),
                        encoding="utf-8")
    full = screenshot(html, tmp / f"{html.stem}.png")
    bare = screenshot(stripped, tmp / f"{html.stem}-bare.png")
    assert float(full.std()) > 0.05 and float(bare.std()) > 0.02  # not blank pages
    # the plots add coloured lines and bands, and axes, ticks and labels
    assert coloured(full) > 2 * coloured(bare) + 5_000, (coloured(full), coloured(bare))
    assert ink(full) > 1.3 * ink(bare), (ink(full), ink(bare))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    plant = plantdata.small_demo(root, meters=METERS, days=21, step_s=300.0)
    return plantdata.simulate(plant, root / "out", losses=True, interval_s=300)


def test_assessment_report_renders(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chromium()
    assert main(["report", "--site-dir", str(site), "--out", str(tmp_path / "r"),
                 "--timezone", "Europe/Vienna"]) == 0
    check_renders(tmp_path / "r" / "report.html", tmp_path, min_images=4)
    # the PDF beside it (Chromium is there): a real PDF with pages and the plots in it
    assert "report.pdf with chromium" in capsys.readouterr().out
    pdf = (tmp_path / "r" / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert len(re.findall(rb"/Type\s*/Page[^s]", pdf)) >= 2
    assert len(re.findall(rb"/Subtype\s*/Image", pdf)) >= 4


def test_no_pdf_converter_is_one_line(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no chromium, no wkhtmltopdf
    assert main(["report", "--site-dir", str(site), "--out", str(tmp_path / "r"),
                 "--from", "2026-01-05", "--to", "2026-01-11"]) == 0
    captured = capsys.readouterr()
    lines = [x for x in captured.out.splitlines() if "PDF" in x]
    assert lines == ["no PDF: no converter found (install chromium or wkhtmltopdf); "
                     "the HTML prints well from a browser too"]
    assert "Traceback" not in captured.err
    assert (tmp_path / "r" / "report.html").exists()
    assert not (tmp_path / "r" / "report.pdf").exists()


def test_savings_report_renders(site: Path, tmp_path: Path) -> None:
    assert main(["savings", str(site / "water_main.csv"), "--baseline",
                 "2026-01-05..2026-01-18", "--reporting", "2026-01-19..2026-01-25",
                 "--out", str(tmp_path / "s")]) == 0
    check_renders(tmp_path / "s" / "report.html", tmp_path, min_images=3)
