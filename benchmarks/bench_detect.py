"""Detector service throughput: readings per second through broker -> recp detect -> database.

Two measurements on this machine:

* in-process: ``DetectService.handle`` on batches of 2,000 messages (validation, dedup,
  line protocol, spool commit with ``synchronous=FULL``, the meters' pipelines), with a
  writer that discards; this is the service's ceiling per process.
* end to end: Mosquitto and VictoriaMetrics on loopback (Debian binaries), ``recp detect``
  as a subprocess. The service connects once (creating its persistent session) and stops;
  N readings of 100 meters are published with QoS 1 and queue at the broker (a Python
  publisher is slower than the service, so it is kept out of the timed part); then the
  service starts again and the clock runs from the first health message showing readings
  taken in until one shows them all taken in and the spool written to the database.

Baseline: the issue's goal of 50,000 readings/s sustained. Readings are 10-s polls of
electricity meters (three values each), so one 15-minute interval closes per 90 readings.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from collector import contract

REPO = Path(__file__).resolve().parents[1]
T0 = 1_767_225_600
METERS = 100
GOAL = 50_000


def messages(meters: int, polls: int, step: int = 10) -> list[tuple[str, bytes]]:
    out = []
    for k in range(polls):
        for m in range(meters):
            payload = contract.reading_payload(
                site="bench", meter=f"m{m}", resource="electricity", stream="s", seq=k + 1,
                ts=T0 + k * step, quality=contract.Quality.OK,
                values={"energy_kwh": 1000 + k * 0.01 * (1 + m % 7), "power_kw": 3.6 + m,
                        "voltage_l1_v": 230.1},
            )  # fmt: skip
            out.append((contract.reading_topic("bench", f"m{m}"), contract.dumps(payload)))
    return out


def in_process(msgs: list[tuple[str, bytes]], workdir: Path) -> float:
    from detectors.service.config import load_analytics
    from detectors.service.service import DetectService

    cfg = workdir / "inproc.yaml"
    cfg.write_text("kind: analytics\nspool: {path: inproc.sqlite, cap: 10000000}\n"
                   "checkpoint: {path: inproc.json}\n")

    class Discard:
        def write(self, lines: list[str]) -> None:
            pass

        def close(self) -> None:
            pass

    svc = DetectService(load_analytics(cfg), writer=Discard())

    async def go() -> float:
        began = time.perf_counter()
        for i in range(0, len(msgs), 2000):
            await svc.handle(msgs[i : i + 2000])
        return time.perf_counter() - began

    return len(msgs) / asyncio.run(go())


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(cond: Any, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError("benchmark step timed out")
        time.sleep(0.05)


def end_to_end(msgs: list[tuple[str, bytes]], workdir: Path) -> float | None:
    import paho.mqtt.client as mqtt

    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    vm = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
    if not (os.access(mosq, os.X_OK) and os.access(vm, os.X_OK)):
        print("end to end: skipped (mosquitto or victoria-metrics not installed)")
        return None
    mport, vport = _port(), _port()
    (workdir / "m.conf").write_text(f"listener {mport} 127.0.0.1\nallow_anonymous true\n"
                                    "max_queued_messages 0\n")
    procs = [
        subprocess.Popen([mosq, "-c", str(workdir / "m.conf")], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL),
        subprocess.Popen([vm, f"-httpListenAddr=127.0.0.1:{vport}",
                          f"-storageDataPath={workdir / 'vm'}", "-retentionPeriod=100y",
                          "-loggerLevel=ERROR"], stdout=subprocess.DEVNULL),
    ]  # fmt: skip
    try:
        _wait(lambda: _ok(f"http://127.0.0.1:{vport}/health"), 15)
        cfg = workdir / "detect.yaml"
        cfg.write_text(
            f"kind: analytics\ninstance: bench\nmqtt: {{url: 'mqtt://127.0.0.1:{mport}'}}\n"
            f"influx: {{url: 'http://127.0.0.1:{vport}', batch: 20000}}\n"
            "spool: {path: spool.sqlite, cap: 10000000}\ncheckpoint: {path: state.json}\n"
            "metrics_interval_s: 0.5\n"
        )
        health: list[dict[str, Any]] = []
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        sub.on_message = lambda c, u, m: health.append(json.loads(m.payload))
        _wait(lambda: _connects(sub, mport), 10)
        sub.subscribe("recp/v1/_detect/bench/health", qos=0)
        sub.loop_start()
        argv = [sys.executable, "-m", "collector", "detect", "-c", str(cfg)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        # first run: creates the persistent session and its subscriptions, then stops
        first = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
        procs.append(first)
        _wait(lambda: bool(health) and health[-1].get("connected"), 30)
        first.terminate()
        first.wait(30)
        # the agents' readings queue up at the broker for the absent service
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        pub.max_inflight_messages_set(2000)
        pub.max_queued_messages_set(0)
        pub.connect("127.0.0.1", mport)
        pub.loop_start()
        for info in [pub.publish(t, p, qos=1) for t, p in msgs]:
            info.wait_for_publish(120)
        pub.loop_stop()
        health.clear()
        # second run: time from the first reading taken in until all are in the database
        detect = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
        procs.append(detect)
        n = len(msgs)
        _wait(lambda: bool(health) and health[-1]["readings_in"] > 0, 60)
        began = time.perf_counter() - 0.25  # health comes every 0.5 s: half a period
        taken = health[-1]["readings_in"]
        _wait(lambda: bool(health) and health[-1]["readings_in"] >= n
              and health[-1]["spool_depth"] == 0, 600)
        elapsed = time.perf_counter() - began
        n -= taken
        sub.loop_stop()
        h = health[-1]
        print(f"end to end: {n} readings in {elapsed:.1f} s ({h['batches']} batches); "
              f"written {h['points_written']} points; spool {h['spool_depth']}; "
              f"dead letters {h['dead_letters']}")
        return n / elapsed
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as r:
            return bool(r.read().strip() == b"OK")
    except OSError:
        return False


def _connects(client: Any, port: int) -> bool:
    try:
        client.connect("127.0.0.1", port)
        return True
    except OSError:
        return False


def main() -> None:
    polls = int(os.environ.get("RECP_BENCH_POLLS", "600"))  # 100 minutes of 10-s polls
    msgs = messages(METERS, polls)
    load = os.getloadavg()[0]
    print(f"{len(msgs)} readings of {METERS} meters; {os.cpu_count()} CPUs, load {load:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        rate = in_process(msgs, Path(tmp))
        print(f"in-process handle(): {rate:,.0f} readings/s ({rate / GOAL:.2f} x the goal "
              f"of {GOAL:,}/s)")
        e2e = end_to_end(msgs, Path(tmp))
        if e2e is not None:
            print(f"end to end: {e2e:,.0f} readings/s ({e2e / GOAL:.2f} x the goal)")


if __name__ == "__main__":
    main()
