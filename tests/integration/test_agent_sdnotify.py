"""The real agent process under a stand-in systemd: READY, watchdog pings, STOPPING."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

if TYPE_CHECKING:
    from conftest import MosquittoServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def start_plant(tmp_path: Path) -> tuple[subprocess.Popen, dict]:
    status = tmp_path / "status.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector", "simulate", "-c",
         str(REPO / "edge_config" / "plants" / "dairy.yaml"), "--speed", "0", "--port-base",
         "0", "--status", str(status), "--start", "2026-01-07T09:00:00Z"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    while not status.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    return proc, json.loads(status.read_text())


def test_agent_tells_systemd_ready_alive_and_stopping(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    plant, status = start_plant(tmp_path)
    try:
        site = yaml.safe_load((REPO / "edge_config" / "sites" / "demo.yaml").read_text())
        site["mqtt"] = {"url": mosquitto.url}
        site["outbox"] = {"path": str(tmp_path / "outbox.sqlite")}
        site["polling"] = {"interval_s": 0.2, "timeout_s": 0.5, "retries": 0}
        ports = {int(k): v for k, v in status["ports"].items()}
        for m in site["meters"]:
            m["connection"]["port"] = ports[m["connection"]["port"]]
            m.pop("interval_s", None)
        site_file = tmp_path / "site.yaml"
        site_file.write_text(yaml.safe_dump(site, sort_keys=False))

        sock_path = tmp_path / "notify"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(sock_path))
        sock.settimeout(15)
        env = os.environ | {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"}
        env.pop("WATCHDOG_PID", None)
        agent = subprocess.Popen(
            [sys.executable, "-m", "collector", "agent", "-c", str(site_file)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        try:
            first = sock.recv(256).decode()
            assert first.startswith("READY=1\nSTATUS=polling "), first
            pings = [sock.recv(64) for _ in range(3)]  # one every 200 ms while polling
            assert pings == [b"WATCHDOG=1"] * 3
            agent.send_signal(signal.SIGTERM)
            while (msg := sock.recv(256).decode()) == "WATCHDOG=1":
                pass
            assert msg.startswith("STOPPING=1")
            assert agent.wait(timeout=30) == 0
        finally:
            if agent.poll() is None:
                agent.kill()
            sock.close()
    finally:
        plant.send_signal(signal.SIGINT)
        plant.wait(timeout=15)
