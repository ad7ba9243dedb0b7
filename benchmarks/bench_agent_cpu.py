"""The whole agent's cost: CPU per reading and resident memory, polling, storing, publishing.

`recp agent` runs as its own process against benchmarks/modbus_server.py (another process)
and a local Mosquitto (without persistence: the broker is not what is measured). A paho
subscriber in this process counts the readings that arrive. CPU seconds and RSS are read
from /proc for the agent's process only, after a warm-up.

Scenarios (issue 3 goals in brackets):
- 100 devices x 20 registers every second [under 5 % of one core, under 60 MB RSS];
- 50 devices polled as fast as the schedule allows (every 50 ms) [at most 0.04 ms of CPU
  per request including decoding and publishing].
Each scenario runs with ``mqtt.batch`` off (the default: one message per reading) and on
(several readings of a meter per ``readings`` message; settings below).
Baselines, same request, same server, same run: the floor (benchmarks/floor.py: a minimal
asyncio client on the same 50 ports and the same 50 ms schedule, on the same event loop,
that only writes the requests and unpacks the replies; the agent's figure is printed as a
ratio to it), bare pymodbus' own CPU per request (no decoding, storing or publishing; what
the agent's poll path used before its own Modbus TCP client) and mbpoll's (libmodbus, C);
and batching off for batching on. The agent runs on asyncio's event loop and, when
installed, on uvloop (RECP_EVENT_LOOP selects it). ``RECP_BENCH_BASE=DIR`` also runs the
agent of another checkout (main's, say: ``git archive main | tar -x -C DIR``) in the 50-device
scenarios, right before this one's, as the baseline of a "now / base" ratio.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from benchmarks import floor
from benchmarks.bench_agent_modbus import (
    N_MBPOLL,
    PROFILE,
    bare_pymodbus,
    loops,
    run_mbpoll,
    start_server,
)

REPO = Path(__file__).resolve().parents[1]
WARMUP_S = 3.0  # after the first reading
MEASURE_S = 15.0
TICKS = os.sysconf("SC_CLK_TCK")
# mqtt.batch for the "on" runs: a 100-device minute packs 10 readings of a meter per message
# (10 s of waiting at 1 s polls); the 50-device case 20 per message (1 s at 50 ms polls)
BATCH_HUNDRED = "{max_readings: 10, max_wait_ms: 10000}"
BATCH_FIFTY = "{max_readings: 50, max_wait_ms: 1000}"


def run_mbpoll_cpu(port: int) -> float:
    """mbpoll's CPU ms per request (printed as a baseline line)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run_mbpoll(port)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)) \
        / N_MBPOLL * 1e3


def proc_cpu_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS  # utime, stime


def proc_rss_mb(pid: int) -> tuple[float, float]:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def made(outbox: Path) -> int:
    """Readings the agent has committed so far: the sum of its per-meter sequence numbers."""
    import sqlite3

    if not outbox.exists():
        return 0
    db = sqlite3.connect(outbox, timeout=10)
    try:
        return int(db.execute("SELECT COALESCE(SUM(last_seq), 0) FROM sequences")
                   .fetchone()[0])
    except sqlite3.OperationalError:  # the agent is still creating it
        return 0
    finally:
        db.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Counter:
    def __init__(self, port: int):
        self.n = 0
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([("recp/v1/+/+/reading", 1), ("recp/v1/+/+/readings", 1)])
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        # a readings message counts as its readings (each item has one "seq")
        n = msg.payload.count(b'"seq":') if msg.topic.endswith("s") else 1
        with self.lock:
            self.n += n

    def count(self) -> int:
        with self.lock:
            return self.n

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def scenario(tmp: Path, ports: list[int], broker: int, interval: float, name: str,
             sync: str = "FULL", loop: str = "asyncio", batch: str = "", tree: Path = REPO
             ) -> tuple[float, int, float, float, float]:
    """Run the agent (the code in ``tree``); return (CPU s, readings, RSS MB, peak RSS MB,
    kernel CPU s) over the window.

    ``batch``: the site file's ``mqtt.batch`` (empty: off, the default)."""
    (tmp / "bench_meter.yaml").write_text(PROFILE)
    extra = f", batch: {batch}" if batch else ""
    lines = ["kind: site", "site: bench", f"mqtt: {{url: 'mqtt://127.0.0.1:{broker}'{extra}}}",
             f"outbox: {{path: {tmp / (name + '.sqlite')}, synchronous: {sync}}}",
             f"polling: {{interval_s: {interval}, timeout_s: 1, retries: 0}}", "meters:"]
    lines += [f"  - {{id: m{i}, profile: {tmp / 'bench_meter.yaml'},"
              f" connection: {{type: tcp, host: 127.0.0.1, port: {p}}}}}"
              for i, p in enumerate(ports)]
    site = tmp / f"{name}.yaml"
    site.write_text("\n".join(lines) + "\n")
    counter = Counter(broker)
    outbox = tmp / (name + ".sqlite")
    agent = subprocess.Popen([sys.executable, "-m", "collector", "agent", "-c", str(site)],
                             cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=os.environ | {"RECP_EVENT_LOOP": loop,
                                               "PYTHONPATH": str(tree)})
    try:
        deadline = time.monotonic() + 60  # start-up takes seconds on a loaded machine
        while made(outbox) == 0 and time.monotonic() < deadline and agent.poll() is None:
            time.sleep(0.2)
        time.sleep(WARMUP_S)
        (u0, s0), made0, n0 = proc_cpu_s(agent.pid), made(outbox), counter.count()
        time.sleep(MEASURE_S)
        (u1, s1), made1, n1 = proc_cpu_s(agent.pid), made(outbox), counter.count()
        rss, peak = proc_rss_mb(agent.pid)
    finally:
        agent.terminate()
        agent.wait(30)
        counter.close()
    # readings made in the window (the outbox's sequence numbers): with batching, arrivals
    # come in bursts up to max_wait_ms late, so counting them would be off by a pack
    n = made1 - made0
    arrived = n1 - n0
    if batch:
        print(f"  {arrived} of the {n} readings made arrived in the window (packed ones "
              "arrive up to max_wait_ms late)")
    elif arrived < 0.7 * n:
        print(f"  WARNING: only {arrived} of {n} readings made arrived in the window")
    return (u1 + s1) - (u0 + s0), n, rss, peak, s1 - s0


def main() -> None:
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        broker = free_port()
        conf = tmp / "mosquitto.conf"
        conf.write_text(f"listener {broker} 127.0.0.1\nallow_anonymous true\n"
                        f"user {os.environ.get('USER') or 'root'}\n")
        mq = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        server, ports = start_server(100)
        base = os.environ.get("RECP_BENCH_BASE")
        trees = ([("base", Path(base).resolve())] if base else []) + [("now", REPO)]
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        try:
            time.sleep(0.5)
            c0 = time.process_time()
            n, _lat = asyncio.run(bare_pymodbus(ports[:1], None, 2000))
            bare_ms = (time.process_time() - c0) / n * 1e3
            print(f"baseline: bare pymodbus {bare_ms:.3f} ms CPU per request (no decoding, "
                  "storing or publishing)")
            mbpoll_ms = run_mbpoll_cpu(ports[0])

            for loop in loops():
                hundred = {}
                for label, batch in (("off", ""), ("on", BATCH_HUNDRED)):
                    cpu, n, rss, peak, _ = scenario(tmp, ports, broker, 1.0,
                                                 f"hundred_{loop}_{label}", loop=loop,
                                                 batch=batch)
                    hundred[label] = cpu / max(n, 1)
                    print(f"agent on {loop}, batching {label} {batch}: 100 devices x 20 "
                          f"registers every 1 s, {MEASURE_S:.0f} s measured:")
                    print(f"  {n / MEASURE_S:6.1f} readings/s, agent CPU "
                          f"{cpu / MEASURE_S * 100:5.2f} % of one core (goal < 5 %), "
                          f"{cpu / max(n, 1) * 1e6:.1f} CPU-ms per 1000 readings, RSS "
                          f"{rss:.1f} MB (peak {peak:.1f} MB, goal < 60 MB)")
                    print(f"  agent CPU per reading / bare pymodbus per request = "
                          f"{cpu / max(n, 1) * 1e3 / bare_ms:.2f}")
                print(f"  batching on / off, CPU per reading = "
                      f"{hundred['on'] / hundred['off']:.2f}")

                fl = floor.measure(ports[:50], 0.05, WARMUP_S, MEASURE_S, loop)
                print(f"floor on {loop}: a minimal client, 50 devices every 50 ms, "
                      f"{MEASURE_S:.0f} s measured: {fl.describe()}")
                fifty = {}
                for label, batch in (("off", ""), ("on", BATCH_FIFTY)):
                    per_tree = {}
                    for name, tree in trees:
                        cpu, n, rss, _, kernel = scenario(
                            tmp, ports[:50], broker, 0.05, f"fifty_{loop}_{label}_{name}",
                            loop=loop, batch=batch, tree=tree)
                        per = per_tree[name] = cpu / max(n, 1) * 1e3
                        who = "agent" if name == "now" else f"base agent ({tree})"
                        print(f"{who} on {loop}, batching {label} {batch}: 50 devices "
                              f"polled every 50 ms, {MEASURE_S:.0f} s measured (load "
                              f"{os.getloadavg()[0]:.1f}):")
                        print(f"  {n / MEASURE_S:6.0f} readings/s, {per:.3f} ms CPU per "
                              f"request (sys {kernel / max(n, 1) * 1e3:.3f}) incl. decoding, "
                              f"outbox and publishing (goal <= 0.04 ms), RSS {rss:.1f} MB")
                        print(f"  agent / floor = {per / fl.ms_per_request:.1f}; agent / "
                              f"bare pymodbus = {per / bare_ms:.2f}; agent / mbpoll = "
                              f"{per / mbpoll_ms:.1f}")
                    if "base" in per_tree:
                        print(f"  now / base, CPU per request = "
                              f"{per_tree['now'] / per_tree['base']:.2f}")
                    fifty[label] = per_tree["now"]
                print(f"  batching on / off, CPU per request = "
                      f"{fifty['on'] / fifty['off']:.2f}")

            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "collector", "agent", "--help"],
                               cwd=REPO, check=True, capture_output=True)
                times.append(time.perf_counter() - t0)
            print(f"recp agent --help: {sorted(times)[2]:.2f} s median of 5 (goal < 1 s)")
        finally:
            server.terminate()
            mq.terminate()
            server.wait(5)
            mq.wait(5)


if __name__ == "__main__":
    main()
