"""Detector service throughput: readings per second through broker -> recp detect -> database.

Each measurement twice, with one reading per MQTT message (``reading``) and with the same
readings packed into ``readings`` messages of ``RECP_BENCH_BATCH`` (50) readings of one
meter (``contract.pack_readings``, as the agent packs a backlog), in one run, as ratios to
the first row of the same run:

* in-process: ``DetectService.handle`` on batches of about 2,000 readings (validation,
  dedup, line protocol, spool commit with ``synchronous=FULL``, the meters' pipelines),
  with a writer that discards, after a first batch has warmed it up; readings per second
  and per CPU-second of this process: the service's ceiling per process, without MQTT.
* end to end, ``--workers`` 1 and 2: Mosquitto and VictoriaMetrics on loopback (Debian
  binaries), ``recp detect`` as a subprocess. The service connects once (creating its
  persistent session) and stops; N readings of 100 meters are published with QoS 1 and
  queue at the broker (a Python publisher is slower than the service, so it is kept out of
  the timed part); then the service starts again and the clock runs from the first health
  message showing readings taken in (those not counted) until one shows them all taken
  in and the spool written to the database, less a quarter-second (health comes every
  0.5 s: each run says its length, known to +-0.25 s; 300,000 readings by default, runs
  of several seconds). Also readings per CPU-second of ``recp detect`` (its processes
  together) and of the whole chain (with Mosquitto's and VictoriaMetrics' CPU seconds in
  the same time), and the cores each process and thread kept busy meanwhile (event loop
  thread, worker threads, Mosquitto, VictoriaMetrics). ``RECP_BENCH_BASE=DIR`` times
  another checkout's ``recp detect`` (main's, say) before each row, as its baseline.
* publish -> alert latency (p50/p99): 50 meters with a spike each, see
  :func:`alert_latency` (live traffic: one reading per message).

The issue's goal: 50,000 readings/s sustained. Readings are 10-s polls of electricity
meters (three values each), so one 15-minute interval closes per 90 readings.
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


def batched(msgs: list[tuple[str, bytes]], size: int) -> list[tuple[str, bytes]]:
    """The same readings as ``readings`` messages of up to ``size`` readings of one meter,
    packed as the agent packs them (``contract.pack_readings``; what an agent with
    ``mqtt.batch.max_readings: size`` sends from a backlog)."""
    by_topic: dict[str, list[bytes]] = {}
    for topic, payload in msgs:
        by_topic.setdefault(topic, []).append(payload)
    out = []
    longest = max(len(v) for v in by_topic.values())
    for i in range(0, longest, size):
        for topic, payloads in by_topic.items():
            if payloads[i : i + size]:
                out.append((topic + "s", contract.pack_readings(payloads[i : i + size])))
    return out


def count(msgs: list[tuple[str, bytes]]) -> int:
    """Readings carried by these messages."""
    return sum(len(json.loads(p)["readings"]) if t.endswith("/readings") else 1
               for t, p in msgs)


class Discard:
    """A database writer that drops every line: times the service without a database."""

    def write(self, lines: list[str]) -> None:
        pass

    def close(self) -> None:
        pass


def in_process(msgs: list[tuple[str, bytes]], workdir: Path) -> tuple[float, float]:
    """Readings per second of ``DetectService.handle`` (wall, and per CPU-second of this
    process), after a first batch has warmed it up (imports, numba caches, new meters)."""
    from detectors.service.config import load_analytics
    from detectors.service.service import DetectService

    cfg = workdir / "inproc.yaml"
    cfg.write_text("kind: analytics\nspool: {path: inproc.sqlite, cap: 10000000}\n"
                   "checkpoint: {path: inproc.json}\n")

    svc = DetectService(load_analytics(cfg), writer=Discard())
    per_call = max(1, 2000 // (count(msgs[:1]) or 1))
    warm, rest = msgs[:per_call], msgs[per_call:]

    async def go() -> tuple[float, float]:
        await svc.handle(warm)
        began, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(rest), per_call):
            await svc.handle(rest[i : i + per_call])
        return time.perf_counter() - began, time.process_time() - cpu

    n = count(rest)
    wall, cpu = asyncio.run(go())
    return n / wall, n / cpu


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(cond: Any, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"benchmark step timed out after {timeout:.0f} s")
        time.sleep(0.05)


def _servers(workdir: Path) -> tuple[int, int, list[subprocess.Popen[bytes]]] | None:
    """Mosquitto and VictoriaMetrics on free loopback ports, or None when not installed."""
    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    vm = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
    if not (os.access(mosq, os.X_OK) and os.access(vm, os.X_OK)):
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
    _wait(lambda: _ok(f"http://127.0.0.1:{vport}/health"), 15)
    return mport, vport, procs


def _detect_config(workdir: Path, mport: int, vport: int, name: str) -> Path:
    cfg = workdir / f"{name}.yaml"
    cfg.write_text(
        f"kind: analytics\ninstance: {name}\nmqtt: {{url: 'mqtt://127.0.0.1:{mport}'}}\n"
        f"influx: {{url: 'http://127.0.0.1:{vport}', batch: 20000}}\n"
        f"spool: {{path: {name}.sqlite, cap: 10000000}}\ncheckpoint: {{path: {name}.json}}\n"
        "metrics_interval_s: 0.5\nprocessing: {batch_wait_s: 0.01}\n"
    )
    return cfg


def end_to_end(msgs: list[tuple[str, bytes]], workdir: Path, workers: int = 1,
               tree: Path = REPO) -> tuple[float, float | None] | None:
    """Readings/s through broker -> recp detect -> VictoriaMetrics, and readings per
    CPU-second of recp detect (all its processes, the code of ``tree``); the CPU seconds
    of each process and thread meanwhile are printed (:func:`_cpu_picture`)."""
    import paho.mqtt.client as mqtt

    servers = _servers(workdir)
    if servers is None:
        print("end to end: skipped (mosquitto or victoria-metrics not installed)")
        return None
    mport, vport, procs = servers
    try:
        cfg = _detect_config(workdir, mport, vport, f"bench{workers}")
        latest: dict[str, dict[str, Any]] = {}  # instance -> newest health message

        def on_message(c: Any, u: Any, m: Any) -> None:
            body = json.loads(m.payload)
            latest[body["instance"]] = body

        def total(key: str) -> int:
            return sum(int(h.get(key) or 0) for h in latest.values())

        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        sub.on_message = on_message
        _wait(lambda: _connects(sub, mport), 10)
        sub.subscribe("recp/v1/_detect/+/health", qos=0)
        sub.loop_start()
        argv = [sys.executable, "-m", "collector", "detect", "-c", str(cfg),
                "--workers", str(workers)]
        env = {**os.environ, "PYTHONPATH": str(tree)}

        def all_connected() -> bool:
            return len(latest) == workers and all(h.get("connected") for h in latest.values())

        # first run: creates the persistent sessions and their subscriptions, then stops
        first = subprocess.Popen(argv, cwd=tree, env=env, stdout=subprocess.DEVNULL)
        procs.append(first)
        _wait(all_connected, 300)  # the first start of a checkout compiles numba kernels
        first.terminate()
        first.wait(30)
        # the agents' readings queue up at the broker for the absent service
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        pub.max_inflight_messages_set(2000)
        pub.max_queued_messages_set(0)
        pub.connect("127.0.0.1", mport)
        pub.loop_start()
        for i in range(0, len(msgs), 20_000):  # paho's message ids wrap at 65,535
            for info in [pub.publish(t, p, qos=1) for t, p in msgs[i : i + 20_000]]:
                info.wait_for_publish(120)
        pub.loop_stop()
        latest.clear()
        # second run: time from the first reading taken in until all are in the database
        detect = subprocess.Popen(argv, cwd=tree, env=env, stdout=subprocess.DEVNULL)
        procs.append(detect)
        n = count(msgs)
        # the clock runs from the first health message showing readings taken in (those
        # are not counted) until one shows them all taken in and written; health comes
        # every 0.5 s, so the end is taken as a quarter-second before that message: the
        # run's length is known to +-0.25 s (RECP_BENCH_POLLS makes the run longer)
        _wait(lambda: total("readings_in") > 0, 60)
        began = time.perf_counter()
        cpu0 = _threads_cpu_s(detect.pid, procs[0].pid, procs[1].pid)
        taken = total("readings_in")
        _wait(lambda: len(latest) == workers and total("readings_in") >= n
              and total("spool_depth") == 0, 900)
        elapsed = max(time.perf_counter() - 0.25 - began, 0.01)  # (a very short run)
        cpu1 = _threads_cpu_s(detect.pid, procs[0].pid, procs[1].pid)
        n -= taken
        sub.loop_stop()
        used = {k: v - cpu0.get(k, 0.0) for k, v in cpu1.items()}
        cpu = sum(v for (role, _, _), v in used.items() if role == "detect")
        servers = sum(v for (role, _, _), v in used.items() if role != "detect")
        per_cpu = n / cpu if cpu > 0 else None
        # a short run (small RECP_BENCH_POLLS) may take less CPU than the clock ticks show
        per_all = f"{n / (cpu + servers):,.0f}" if cpu + servers > 0 else "too short to tell"
        print(f"  {n:,} readings in {len(msgs):,} messages, {elapsed:.2f} s (+-0.25), "
              f"{total('batches')} batches; written {total('points_written')} points; "
              f"dead letters {total('dead_letters')}; duplicates {total('duplicates')}; "
              f"CPU s: recp detect {cpu:.1f}, Mosquitto + VictoriaMetrics {servers:.1f} "
              f"({per_all} readings per CPU-second of the three)")
        print("    " + _cpu_picture(used, elapsed))
        assert total("dead_letters") == 0
        return n / elapsed, per_cpu
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def alert_latency(workdir: Path, meters: int = 50) -> list[float] | None:
    """Seconds from publishing the reading that completes a spike to its alert, per meter.

    Each meter has 3.5 days of 15-minute readings (the spike detector needs three days of
    its time-of-day slot); then, one meter every 50 ms, the reading that closes the
    interval [10:00, 10:15) of day 4, whose consumption is ten times the usual, is
    published and the time until the spike's "open" alert arrives is measured.
    """
    import paho.mqtt.client as mqtt

    servers = _servers(workdir)
    if servers is None:
        return None
    mport, vport, procs = servers
    step, day = 900, 86400
    spike_end = T0 + 3 * day + 10 * 3600 + 900

    def rate(t: int) -> float:
        base = 20.0 + (60.0 if 6 <= (t % day) / 3600 < 18 else 0.0)
        return base * (10.0 if spike_end - 900 <= t < spike_end else 1.0)

    def series(m: int) -> list[tuple[int, tuple[str, bytes]]]:
        out, e = [], 1000.0
        for k, t in enumerate(range(T0, spike_end + 1, step)):
            payload = contract.reading_payload(
                site="bench", meter=f"m{m}", resource="electricity", stream="s", seq=k + 1,
                ts=t, quality=contract.Quality.OK, values={"energy_kwh": round(e, 3)},
            )  # fmt: skip
            out.append((t, (contract.reading_topic("bench", f"m{m}"), contract.dumps(payload))))
            e += rate(t) * step / 3600
        return out

    try:
        cfg = _detect_config(workdir, mport, vport, "latency")
        got: dict[str, float] = {}
        health: list[dict[str, Any]] = []

        def on_message(c: Any, u: Any, m: Any) -> None:
            body = json.loads(m.payload)
            if m.topic.startswith("recp/v1/_alerts/"):
                if body["type"] == "spike" and body["event"] == "open":
                    got.setdefault(body["meter"], time.perf_counter())
            else:
                health.append(body)

        bus = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        bus.on_message = on_message
        bus.max_inflight_messages_set(2000)
        bus.max_queued_messages_set(0)
        _wait(lambda: _connects(bus, mport), 10)
        bus.subscribe([("recp/v1/_alerts/#", 0), ("recp/v1/_detect/latency/health", 0)])
        bus.loop_start()
        detect = subprocess.Popen(
            [sys.executable, "-m", "collector", "detect", "-c", str(cfg)], cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(detect)
        _wait(lambda: bool(health) and health[-1].get("connected"), 30)
        all_series = [series(m) for m in range(meters)]
        history = [msg for s in all_series for t, msg in s if t < spike_end]
        for info in [bus.publish(t, p, qos=1) for t, p in history]:
            info.wait_for_publish(120)
        _wait(lambda: bool(health) and health[-1]["readings_in"] >= len(history), 300)
        sent: dict[str, float] = {}
        for m, s in enumerate(all_series):
            topic, payload = s[-1][1]
            sent[f"m{m}"] = time.perf_counter()
            bus.publish(topic, payload, qos=1)
            time.sleep(0.05)
        _wait(lambda: len(got) >= meters, 60)
        bus.loop_stop()
        return sorted(got[m] - sent[m] for m in sent)
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def _cpu_s(pid: int | str) -> float:
    """User + system CPU seconds of a process (or ``PID/task/TID``: a thread) so far
    (Linux /proc), NaN elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(k) for k in f.read().split()]
        except OSError:
            continue
    return kids


def _threads_cpu_s(detect: int, mosquitto: int, vm: int) -> dict[tuple[str, int, str], float]:
    """CPU seconds so far per (role, process, thread): every thread of ``recp detect`` and
    its ``--workers`` processes (the event loop is the process's first thread), Mosquitto
    and VictoriaMetrics as wholes."""
    out = {("mosquitto", mosquitto, ""): _cpu_s(mosquitto), ("vm", vm, ""): _cpu_s(vm)}
    for pid in [detect, *_children(detect)]:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            kind = "loop" if tid == pid else "thread"
            out[("detect", pid, f"{kind}{'' if tid == pid else tid}")] = _cpu_s(
                f"{pid}/task/{tid}")
    return out


def _cpu_picture(used: dict[tuple[str, int, str], float], elapsed: float) -> str:
    """Where the CPU went: cores busy per process (event loop thread, other threads)."""
    parts = []
    for pid in sorted({p for (role, p, _) in used if role == "detect"}):
        mine = {t: v for (role, p, t), v in used.items() if role == "detect" and p == pid}
        if sum(mine.values()) < 0.05 * elapsed:
            continue  # the --workers parent only waits
        loop = sum(v for t, v in mine.items() if t.startswith("loop"))
        rest = sorted((v for t, v in mine.items() if not t.startswith("loop")), reverse=True)
        parts.append(f"detect {pid}: loop {loop / elapsed:.2f} + threads "
                     f"{'/'.join(f'{v / elapsed:.2f}' for v in rest[:3] if v > 0.005)}")
    for role in ("mosquitto", "vm"):
        v = sum(x for (r, _, _), x in used.items() if r == role)
        parts.append(f"{role} {v / elapsed:.2f}")
    total = sum(used.values())
    return (f"cores busy (CPU-s per wall-s): {'; '.join(parts)}; all {total / elapsed:.2f} "
            f"of {os.cpu_count()}")


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
    # 3,000 polls of 100 meters: 300,000 readings, runs of several seconds (a run of
    # 60,000 lasted about 1.6 s, which the health messages' 0.5 s could not time)
    polls = int(os.environ.get("RECP_BENCH_POLLS", "3000"))
    size = int(os.environ.get("RECP_BENCH_BATCH", "50"))  # readings per batch message
    singles = messages(METERS, polls)
    packed = batched(singles, size)
    kinds = {"one reading per message": singles, f"{size} readings per message": packed}
    load = os.getloadavg()[0]
    print(f"{len(singles):,} readings of {METERS} meters ({len(packed):,} messages of up to "
          f"{size}); {os.cpu_count()} CPUs, load {load:.1f}; the baseline of the ratios "
          "is the first row, measured in this run")
    print("in-process DetectService.handle() (validation, dedup, line protocol, spool "
          "with fsync, pipelines; no MQTT, no database):")
    with tempfile.TemporaryDirectory() as tmp:  # numba's kernels loaded for both rows
        in_process(messages(2, 200), Path(tmp))
    base = None
    for label, msgs in kinds.items():
        with tempfile.TemporaryDirectory() as tmp:
            rate, per_cpu = in_process(msgs, Path(tmp))
        base = base or per_cpu
        print(f"  {label:26s} {rate:9,.0f} readings/s, {per_cpu:9,.0f} per CPU-second "
              f"({1e6 / per_cpu:5.1f} us each; x{per_cpu / base:.2f})")
    # RECP_BENCH_BASE=DIR: also time the recp detect of another checkout (say main, from
    # `git archive main | tar -x -C DIR`), alternating with this one, as the baseline
    base_tree = os.environ.get("RECP_BENCH_BASE")
    trees = [("base", Path(base_tree)), ("now", REPO)] if base_tree else [("now", REPO)]
    print(f"end to end (broker -> recp detect -> VictoriaMetrics), goal {GOAL:,}/s"
          + (f"; base is {base_tree}" if base_tree else "") + ":")
    rows: list[tuple[str, float, float | None]] = []
    for label, msgs in kinds.items():
        for workers in (1, 2):
            got: dict[str, tuple[float, float | None]] = {}
            for name, tree in trees:
                with tempfile.TemporaryDirectory() as tmp:
                    print(f"  {name}: {label}, --workers {workers} (load "
                          f"{os.getloadavg()[0]:.1f})", flush=True)
                    try:
                        res = end_to_end(msgs, Path(tmp), workers, tree)
                    except TimeoutError as exc:  # (main before the answer-wait fix)
                        print(f"  {name}: {label}, --workers {workers}: did not finish "
                              f"({exc})", flush=True)
                        continue
                if res is None:
                    continue
                got[name] = res
                rate, per_cpu = res
                rows.append((f"{name}: {label}, --workers {workers}", rate, per_cpu))
                cpu_text = f", {per_cpu:,.0f} per CPU-second" if per_cpu else ""
                vs = ""
                if name == "now" and "base" in got:
                    b_rate, b_cpu = got["base"]
                    vs = (f"; x{rate / b_rate:.2f} the base" if b_rate else "") + (
                        f", x{per_cpu / b_cpu:.2f} per CPU-second" if per_cpu and b_cpu
                        else "")
                print(f"  {rows[-1][0]:46s} {rate:8,.0f} readings/s ({rate / GOAL:.2f} of "
                      f"the goal){cpu_text}{vs}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        lat = alert_latency(Path(tmp))
        if lat:
            p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(0.99 * len(lat)))]
            print(f"publish -> alert, {len(lat)} spikes: p50 {p50 * 1000:.0f} ms, "
                  f"p99 {p99 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms (goal: p99 < 2 s)")
    print(f"load average after the run: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
