"""``recp demo`` end to end: real plant, agent, broker, detector service and store processes.

Shortened scenarios (fewer live days, or less history) keep these to a minute or three
each on a busy 2-core machine; the default scenario's full run is measured by hand and
noted in docs/demo.md.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import MosquittoServer, VictoriaMetricsServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def demo(out: Path, *args: str, env: dict[str, str] | None = None,
         timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector", "demo", "--out", str(out), "--plain", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env=env or dict(os.environ), check=False)


def children_of(out: Path) -> list[str]:
    """Processes still running whose command line names the demo's output folder."""
    left = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(out) in cmd:  # (the test's own process never names the folder)
            left.append(f"{pid}: {cmd[:200]}")
    return left


@pytest.mark.timeout(900)
def test_demo_finds_every_injected_loss_with_its_cost_and_writes_the_report(tmp_path: Path):
    out = tmp_path / "demo"
    done = demo(out, "--live-days", "5")
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-4000:]
    assert "broker: Mosquitto" in text  # found on the machine
    summary = json.loads((out / "summary.json").read_text())
    truth = json.loads((out / "truth.json").read_text())
    injected = {e["id"] for e in truth["events"]}
    assert {"water_main/leak/0", "el_compressed_air/base_load_rise/1",
            "steam_main/steam_trap/2"} <= injected
    for loss in summary["losses"]:
        assert loss["found"], f"missed {loss['truth']['id']}:\n{text[-3000:]}"
        best = max(loss["found"], key=lambda e: e["cost"] or 0)
        # reported with its cost, of the right order (the truth is excess x price)
        assert best["cost"] is not None and best["cost"] > 0
        assert 0.25 * loss["truth"]["cost"] <= best["cost"] <= 2.0 * loss["truth"]["cost"]
    assert len(summary["false_alarms"]) <= summary["false_alarm_limit"], summary["false_alarms"]
    report = (out / "report.html").read_text()
    for meter in ("water_main", "el_compressed_air", "steam_main"):
        assert meter in report
    assessment = json.loads((out / "assessment.json").read_text())
    lossy = {e["meter"] for e in assessment["events"]}
    assert {"water_main", "el_compressed_air", "steam_main"} <= lossy
    assert (out / "store.sqlite").exists() and (out / "events.json").exists()
    assert not children_of(out)
    # the store is readable by recp report
    again = subprocess.run(
        [sys.executable, "-m", "collector", "report", "--store", str(out / "store.sqlite"),
         "--timezone", "Europe/Vienna", "--out", str(tmp_path / "again")],
        capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "water_main" in (tmp_path / "again" / "report.html").read_text()


@pytest.mark.timeout(600)
def test_demo_writes_to_the_given_broker_and_database(
        tmp_path: Path, mosquitto_factory: Callable[..., MosquittoServer],
        victoria_metrics: VictoriaMetricsServer):
    # the fixture saves its database after every change (for the crash tests): with the
    # history's thousands of queued messages that is seconds per PUBACK; a broker as
    # deployed (deploy/mosquitto) saves every few seconds and queues without limit
    mosquitto = mosquitto_factory(extra_conf="autosave_on_changes false\n"
                                  "autosave_interval 5\nmax_queued_messages 0")
    out = tmp_path / "demo"
    done = demo(out, "--history-days", "3", "--live-days", "1", "--no-report",
                "--mqtt-url", mosquitto.url, "--influx-url", victoria_metrics.url)
    text = done.stdout + done.stderr
    assert done.returncode in (0, 1), text[-4000:]  # 1: a loss not reached in one day
    assert f"broker: the broker at {mosquitto.url}" in text
    assert not (out / "store.sqlite").exists()
    victoria_metrics.flush()
    series = victoria_metrics.query_export('{__name__="reading_energy_kwh",site="small_dairy"}')
    assert {s["metric"]["meter"] for s in series} >= {"el_main", "el_compressed_air"}
    # history and live readings, stamped in the plant's simulated time (August 2026)
    stamps = [t for s in series for t in s["timestamps"]]
    assert len(stamps) > 500
    assert max(stamps) / 1000 > 1786579200  # 2026-08-13: the live part after 3 days
    assert max(stamps) / 1000 < time.time() - 30 * 86400
    cons = victoria_metrics.query_export('{__name__="consumption_actual",site="small_dairy"}')
    assert {s["metric"]["meter"] for s in cons} >= {"water_main", "steam_main"}
    assert not children_of(out)


@pytest.mark.timeout(600)
def test_amqtt_broker_runs_the_chain(tmp_path: Path):
    out = tmp_path / "demo"
    done = demo(out, "--broker", "amqtt", "--history-days", "3", "--live-days", "1",
                "--no-report")
    text = done.stdout + done.stderr
    assert done.returncode in (0, 1), text[-4000:]
    assert "broker: amqtt" in text and "MQTT 3.1.1" in text
    assert "live readings" in text
    rows = sum(1 for _ in (out / "data" / "water_main.csv").open()) - 1
    assert rows > 3 * 288 * 0.9  # the history (5-minute rows) and live readings after it
    from detectors.store import Store

    with Store(out / "store.sqlite") as s:
        assert s.count("reading") > 1000
        assert s.count("consumption") > 100
    assert not children_of(out)
    # amqtt ran as a child process of its own, and is gone
    port = re.search(r"amqtt \S+ in a child process on 127\.0\.0\.1:(\d+)", text)
    assert port, text[-2000:]
    assert not children_of(Path(f"collector.demo.amqttd --port {port.group(1)}"))


@pytest.mark.timeout(600)
def test_ctrl_c_stops_everything_and_leaves_a_readable_output(tmp_path: Path):
    out = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector", "demo", "--out", str(out), "--plain",
         "--history-days", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    lines = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 400
    for text in proc.stdout:
        lines.append(text)
        if " live: " in text:
            break
        assert time.monotonic() < deadline, "".join(lines)
    time.sleep(3)  # a few simulated hours of the live part
    assert children_of(out), "the chain's processes should be running now"
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=180)
    text = "".join(lines) + rest
    assert proc.returncode == 130, text[-3000:]
    assert "stopped early" in text
    assert not children_of(out), children_of(out)
    summary = json.loads((out / "summary.json").read_text())
    assert "losses" in summary and "false_alarms" in summary
    json.loads((out / "events.json").read_text())
    assert (out / "report.html").exists()  # the report of what was there
    assert (out / "data" / "el_main.csv").stat().st_size > 0
