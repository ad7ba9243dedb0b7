"""deploy/install-agent.sh for real, into temporary directories, run twice and a third time.

The script runs as root (as on a Pi); here the prefix, configuration and unit directories
are moved into tmp_path and the service user is the current one, so nothing outside
tmp_path changes. systemd is not PID 1 in the test environment, so the script stops before
systemctl, which it says.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "install-agent.sh"
CREDENTIAL = "/run/credentials/recp-agent.service/mqtt-password"


def run(tmp: Path, *args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    user = pwd.getpwuid(os.getuid()).pw_name
    return subprocess.run(
        ["bash", str(SCRIPT), "--prefix", str(tmp / "opt"), "--etc", str(tmp / "etc"),
         "--unit-dir", str(tmp / "units"), "--user", user, *args],
        capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})},
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="install-agent.sh runs as root")
def test_install_update_and_rerun(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    # 1. no site file yet: the example is installed, pointed at the credential and the CA
    first = run(tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "installed the example" in first.stdout
    site = yaml.safe_load((etc / "site.yaml").read_text())
    assert site["mqtt"]["password_file"] == CREDENTIAL
    assert site["mqtt"]["tls"]["ca_file"] == str(etc / "ca.crt")
    assert "no broker password yet" in first.stdout
    assert (tmp_path / "opt" / "bin" / "recp").exists()
    assert not list((tmp_path / "opt").glob("lib/python*/site-packages/numba"))
    # RTU meters on a local serial port need pyserial (collector.modbus.poller)
    subprocess.run([str(tmp_path / "opt" / "bin" / "python"), "-c", "import serial"],
                   check=True)
    # uvloop where it has a wheel (this machine: x86-64), so the agent runs on it
    assert "uvloop installed" in first.stdout
    subprocess.run([str(tmp_path / "opt" / "bin" / "python"), "-c", "import uvloop"],
                   check=True)
    assert sorted(p.name for p in (etc / "profiles").iterdir()) == sorted(
        p.name for p in (REPO / "edge_config" / "profiles").glob("*.yaml"))

    unit = tmp_path / "units" / "recp-agent.service"
    text = unit.read_text()
    assert f"ExecStart={tmp_path}/opt/bin/recp agent -c {etc}/site.yaml" in text
    assert f"LoadCredential=mqtt-password:{etc}/credentials/mqtt-password" in text
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(["systemd-analyze", "verify", str(unit)],
                                capture_output=True, text=True)
        assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr

    # 2. the real site, the CA and the password (from a file: never on the command line)
    my_site = tmp_path / "site.yaml"
    my_site.write_text((REPO / "edge_config/sites/demo.yaml").read_text().replace(
        "url: mqtt://127.0.0.1:1883", f"url: mqtts://broker.lan:8883\n  username: agent-demo"
        f"\n  password_file: {CREDENTIAL}"))
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    pw = tmp_path / "pw"
    pw.write_text("s3cret-password-0123\nsecond line ignored\n")
    second = run(tmp_path, "--site", str(my_site), "--ca", str(ca), "--password-file", str(pw))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "kept the previous site file" in second.stdout
    assert len(list(etc.glob("site.yaml.*.bak"))) == 1
    assert (etc / "site.yaml").read_text() == my_site.read_text()
    cred = etc / "credentials" / "mqtt-password"
    assert cred.read_text() == "s3cret-password-0123"
    assert stat.S_IMODE(cred.stat().st_mode) == 0o600
    assert stat.S_IMODE((etc / "credentials").stat().st_mode) == 0o700
    assert stat.S_IMODE((etc / "site.yaml").stat().st_mode) == 0o640
    assert "no broker password yet" not in second.stdout
    assert "should say mqtt.password_file" not in second.stdout
    assert "systemd is not running here" in second.stdout or "started" in second.stdout

    # 3. again with the same arguments: nothing changes
    unit_mtime = unit.stat().st_mtime_ns
    third = run(tmp_path, "--site", str(my_site), "--ca", str(ca), "--password-file", str(pw))
    assert third.returncode == 0, third.stdout + third.stderr
    assert len(list(etc.glob("site.yaml.*.bak"))) == 1
    assert unit.stat().st_mtime_ns == unit_mtime and "installed " not in third.stdout

    # 4. a broken site file: the check says so and the exit status is 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: site\nsite: Not An Id\nmeters: []\n")
    fourth = run(tmp_path, "--site", str(bad))
    assert fourth.returncode == 1
    assert "fix" in fourth.stdout and "site.yaml" in fourth.stdout


def test_refuses_without_root_or_with_missing_files(tmp_path: Path) -> None:
    proc = run(tmp_path, "--site", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 1
    if os.geteuid() == 0:
        assert "cannot read" in proc.stderr
    else:
        assert "run as root" in proc.stderr
    assert not (tmp_path / "opt").exists()
