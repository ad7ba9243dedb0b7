"""Store and forward: outbox write rate, and the time to drain a backlog after an outage.

Write rate: readings committed per second by ``Outbox.append`` (WAL, synchronous=FULL, one
fsync per transaction) in batches of 1 and 100 readings of a typical size. Baseline: the
obvious SQLite outbox, a rollback journal and one committed INSERT per reading.

Drain: N readings sit in the outbox (the broker was away); the publisher connects to a
local Mosquitto and sends them all, each deleted after its PUBACK. Measured with the
agent's default rate limit (mqtt.max_rate_per_s) and without it. Baseline: paho-mqtt's own
threaded client publishing the same N payloads at QoS 1 and waiting for every PUBACK
(nothing stored, nothing deleted).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from benchmarks.bench_agent_cpu import free_port
from collector import contract
from collector.contract import Quality
from collector.outbox import Entry, Outbox
from collector.publisher import Publisher
from collector.site import Credentials, Mqtt

N_WRITE = 3000
N_DRAIN = 10000


def payload(seq: int) -> bytes:
    return contract.dumps(contract.reading_payload(
        site="bench", meter="m1", resource="electricity", stream="bench", seq=seq,
        ts=time.time(), quality=Quality.OK,
        values={n: 230.5 + seq % 7 for n in ("voltage_l1_v", "voltage_l2_v", "voltage_l3_v",
                                               "current_l1_a", "power_kw", "energy_kwh")},
        latency_ms=1.234))


def write_rate(tmp: Path, batch: int, sync: str) -> float:
    box = Outbox(tmp / f"w{batch}{sync}.sqlite", cap=10**7, synchronous=sync)
    body = payload(1)
    t0 = time.perf_counter()
    for _ in range(N_WRITE // batch):
        box.append([Entry(f"m{i % 10}", lambda s: ("t", body)) for i in range(batch)])
    took = time.perf_counter() - t0
    box.close()
    return N_WRITE / took


def naive_rate(tmp: Path) -> float:
    db = sqlite3.connect(tmp / "naive.sqlite")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, topic TEXT, payload BLOB)")
    body = payload(1)
    t0 = time.perf_counter()
    for _ in range(N_WRITE):
        db.execute("INSERT INTO q (topic, payload) VALUES (?, ?)", ("t", body))
        db.commit()
    took = time.perf_counter() - t0
    db.close()
    return N_WRITE / took


def drain(tmp: Path, port: int, rate: float, name: str, batch: int = 1
          ) -> tuple[float, float]:
    """(wall s, CPU s of this process) to drain N_DRAIN readings."""
    box = Outbox(tmp / f"{name}.sqlite", cap=10**7)
    topic = contract.reading_topic("bench", "m1")
    for start in range(0, N_DRAIN, 1000):
        box.append([Entry("m1", lambda s: (topic, payload(s))) for _ in range(1000)])
        del start
    settings = Mqtt(url=f"mqtt://127.0.0.1:{port}", max_rate_per_s=rate, client_id=name,
                    batch={"max_readings": batch})

    async def run() -> float:
        pub = Publisher(settings, "bench", box, Credentials(None, None))
        stop = asyncio.Event()
        t0 = time.perf_counter()
        task = asyncio.create_task(pub.run(stop))
        while box.depth:
            await asyncio.sleep(0.01)
        took = time.perf_counter() - t0
        stop.set()
        await task
        return took

    c0 = time.process_time()
    took = asyncio.run(run())
    cpu = time.process_time() - c0
    box.close()
    return took, cpu


def paho_drain(port: int) -> float:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-bench",
                    protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(20)
    c.connect("127.0.0.1", port)
    c.loop_start()
    bodies = [payload(s) for s in range(1, N_DRAIN + 1)]
    t0 = time.perf_counter()
    infos = [c.publish("recp/v1/bench/m1/reading", b, qos=1) for b in bodies]
    for info in infos:
        info.wait_for_publish(30)
    took = time.perf_counter() - t0
    c.loop_stop()
    c.disconnect()
    return took


def main() -> None:
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        print(f"outbox writes, {N_WRITE} readings of {len(payload(1))} bytes:")
        base = naive_rate(tmp)
        print(f"  rollback journal, commit per reading (baseline) {base:9.0f} readings/s")
        for sync in ("FULL", "NORMAL"):
            for batch in (1, 100):
                r = write_rate(tmp, batch, sync)
                print(f"  WAL synchronous={sync:6s} batch {batch:3d}            {r:9.0f} "
                      f"readings/s  ({r / base:.1f}x)")

        port = free_port()
        conf = tmp / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                        f"user {os.environ.get('USER') or 'root'}\n")
        mq = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c",
                               str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            print(f"draining {N_DRAIN} buffered readings after an outage (QoS 1, loopback):")
            base_s = paho_drain(port)
            print(f"  paho threaded client, nothing stored (baseline) {base_s:6.2f} s "
                  f"{N_DRAIN / base_s:7.0f} msg/s")
            default = Mqtt().max_rate_per_s
            for rate, batch, label in ((default, 1, f"default limit {default:.0f}/s"),
                                       (1e9, 1, "no rate limit"),
                                       (default, 50, "batch 50, default limit")):
                s, cpu = drain(tmp, port, rate, f"drain{int(min(rate, 1e6))}_{batch}", batch)
                print(f"  agent publisher, {label:23s} {s:6.2f} s {N_DRAIN / s:7.0f} "
                      f"readings/s ({base_s / s:.2f}x the baseline's rate), "
                      f"{cpu / N_DRAIN * 1e3:.3f} ms CPU per reading")
        finally:
            mq.terminate()
            mq.wait(5)


if __name__ == "__main__":
    main()
