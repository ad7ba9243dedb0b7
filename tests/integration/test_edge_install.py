"""The edge install stays small: ``pip install '.[edge]'`` in a fresh venv has no numba."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_edge_extra_installs_without_numba(tmp_path: Path) -> None:
    env_dir = tmp_path / "edge-venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         f"{REPO}[edge]"],
        check=True, timeout=600, capture_output=True,
    )
    installed = subprocess.run(
        [str(py), "-m", "pip", "list", "--format=freeze"], check=True, capture_output=True,
        text=True,
    ).stdout.lower()
    assert "pymodbus==3.16" in installed and "aiomqtt==2." in installed
    assert "numba" not in installed and "numpy" not in installed
    subprocess.run(
        [str(py), "-c", "import collector, sys; assert 'numba' not in sys.modules"],
        check=True, timeout=60,
    )
    # the installed console script works outside the source tree
    out = subprocess.run(
        [str(env_dir / "bin" / "recp"), "--help"], check=True, capture_output=True, text=True,
        cwd=tmp_path,
    ).stdout
    assert "simulate" in out
    # and carries the shipped device profiles: a site file anywhere finds them by name
    listed = subprocess.run(
        [str(env_dir / "bin" / "recp"), "profiles"], check=True, capture_output=True,
        text=True, cwd=tmp_path,
    ).stdout
    shipped = sorted(p.stem for p in (REPO / "edge_config" / "profiles").glob("*.yaml"))
    assert [line.split()[0] for line in listed.splitlines()] == shipped
    site = tmp_path / "site.yaml"
    site.write_text((REPO / "edge_config" / "sites" / "demo.yaml").read_text())
    subprocess.run([str(env_dir / "bin" / "recp"), "config", "check", str(site)], check=True,
                   capture_output=True, cwd=tmp_path, timeout=60)
    assert sys.version_info >= (3, 10)
