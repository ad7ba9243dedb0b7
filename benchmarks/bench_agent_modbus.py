"""Modbus polling rate on loopback: the agent's poll path next to mbpoll and bare pymodbus.

Every request reads 20 holding registers (10 float32 values) of one unit. "One device":
back-to-back polls on one connection. "100 devices": 100 ports, one connection each, all
polled at once. The server is benchmarks/modbus_server.py in its own process.

Baselines, measured in the same run against the same server:
- the floor (benchmarks/floor.py): a minimal asyncio client that only writes the request
  and unpacks the reply's ten floats, back to back, on the same event loop; the agent's
  CPU per request is printed as a ratio to it;
- mbpoll (libmodbus, C), given one long list of the same unit id so that it reads back to
  back (its polling mode sleeps 10 ms between rounds);
- bare pymodbus 3.16 (AsyncModbusTcpClient.read_holding_registers in a loop), what the
  agent's poll path used before it got its own Modbus TCP client (collector/modbus/tcp.py).
The agent's poll path (Bus.run as the agent runs it, planning done once; per poll: the
request, the checks, the decoding of every value, the result record, the schedule) runs on
asyncio's own event loop and on uvloop (the optional extra `recp agent` uses when
installed); so does bare pymodbus.
Goal (issue 3): the agent's single-device rate at least half of mbpoll's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from benchmarks import floor
from collector.modbus.poller import Bus, Device, Link, PollResult, plan_device
from collector.site import MeterSpec, Polling, load_site

N_ONE = 5000  # polls of one device
N_MBPOLL = 20000
SECONDS_MANY = 4.0
DEVICES = 100

PROFILE = """\
kind: profile
manufacturer: Bench
model: 10 float32 gauges
resource: electricity
source: benchmarks/bench_agent_modbus.py
defaults: {table: holding, type: float32, order: ABCD}
points:
""" + "".join(
    f"  - {{name: {n}, address: {2 * i}}}\n"
    for i, n in enumerate(["voltage_l1_v", "voltage_l2_v", "voltage_l3_v", "current_l1_a",
                           "current_l2_a", "current_l3_a", "power_l1_kw", "power_l2_kw",
                           "power_l3_kw", "power_kw"])
)


def start_server(ports: int) -> tuple[subprocess.Popen[str], list[int]]:
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.modbus_server", str(ports)],
                            stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())["ports"]


def meters(tmp: Path, ports: list[int]) -> list[MeterSpec]:
    (tmp / "bench_meter.yaml").write_text(PROFILE)
    lines = ["kind: site", "site: bench", "polling: {timeout_s: 2, retries: 0}", "meters:"]
    lines += [f"  - {{id: m{i}, profile: {tmp / 'bench_meter.yaml'}, unit_id: 1,"
              f" connection: {{type: tcp, host: 127.0.0.1, port: {p}}}}}"
              for i, p in enumerate(ports)]
    (tmp / "site.yaml").write_text("\n".join(lines) + "\n")
    return load_site(tmp / "site.yaml").meters


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def report_floor(loop: str, ports: list[int], seconds: float) -> float:
    """The floor's line; its CPU ms per request."""
    f = floor.measure(ports, 0, 1.0, seconds, loop)
    print(f"  {'floor, ' + loop:28s} {f.requests / seconds:8.0f} req/s  "
          f"CPU {f.ms_per_request:6.3f} ms/req (user {f.user_s / f.requests * 1e3:.3f}, sys "
          f"{f.sys_s / f.requests * 1e3:.3f})")
    return f.ms_per_request


def report(name: str, n: int, wall: float, cpu: float, lat: list[float] | None) -> float:
    rate = n / wall
    extra = (f"  p50 {pct(lat, 0.5) * 1e3:6.3f} ms  p99 {pct(lat, 0.99) * 1e3:6.3f} ms"
             if lat else "")
    print(f"  {name:28s} {rate:8.0f} req/s  CPU {cpu / n * 1e3:6.3f} ms/req{extra}")
    return rate


def run_mbpoll(port: int) -> float:
    units = ",".join(["1"] * N_MBPOLL)
    argv = ["mbpoll", "-m", "tcp", "-p", str(port), "-a", units, "-r", "1", "-c", "20",
            "-t", "4", "-0", "-1", "127.0.0.1"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    assert os.waitstatus_to_exitcode(status) == 0, "mbpoll failed"
    return report("mbpoll (libmodbus, C)", N_MBPOLL, wall, usage.ru_utime + usage.ru_stime,
                  None)


async def bare_pymodbus(ports: list[int], seconds: float | None, n: int
                        ) -> tuple[int, list[float]]:
    from pymodbus.client import AsyncModbusTcpClient

    lat: list[float] = []
    count = 0

    async def one(port: int) -> None:
        nonlocal count
        c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0,
                                 reconnect_delay=0)
        await c.connect()
        end = time.perf_counter() + seconds if seconds else None
        i = 0
        while (end is None and i < n) or (end is not None and time.perf_counter() < end):
            t = time.perf_counter()
            rr = await c.read_holding_registers(0, count=20, device_id=1)
            lat.append(time.perf_counter() - t)
            assert not rr.isError()
            i += 1
        count += i
        c.close()

    await asyncio.gather(*(one(p) for p in ports))
    return count, lat


async def agent_path(specs: list[MeterSpec], seconds: float | None, n: int
                     ) -> tuple[int, list[float]]:
    """Bus.run as the agent runs it (for a lone meter on our own TCP client: the callback
    fast path), every poll due at once (interval 1 us), readings handed to a callback."""
    lat: list[float] = []
    count = 0

    async def one(spec: MeterSpec) -> None:
        nonlocal count
        spec = dataclasses.replace(spec, interval_s=1e-6)  # back to back
        link = Link(spec.meter.connection, timeout_s=2)
        bus = Bus(link, [Device(spec, plan_device(spec))], Polling())
        stop = asyncio.Event()
        end = time.perf_counter() + seconds if seconds else None
        i = 0

        def emit(r: PollResult) -> None:
            nonlocal i
            assert r.quality.value == "ok" and len(r.values) == 10
            lat.append(r.latency_s or 0.0)
            i += 1
            if (end is None and i >= n) or (end is not None and time.perf_counter() >= end):
                stop.set()

        await bus.run(emit, stop)
        count += i

    await asyncio.gather(*(one(s) for s in specs))
    return count, lat


def timed(coro_factory: Callable[[], Coroutine[Any, Any, tuple[int, list[float]]]],
          loop: str = "asyncio") -> tuple[int, float, float, list[float]]:
    c0, t0 = time.process_time(), time.perf_counter()
    if loop == "uvloop":
        import uvloop

        n, lat = uvloop.run(coro_factory())
    else:
        n, lat = asyncio.run(coro_factory())
    return n, time.perf_counter() - t0, time.process_time() - c0, lat


def loops() -> list[str]:
    """asyncio, and uvloop when installed."""
    import importlib.util

    return ["asyncio"] + (["uvloop"] if importlib.util.find_spec("uvloop") else [])


def main() -> None:
    import logging

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    have_mbpoll = shutil.which("mbpoll") is not None
    with tempfile.TemporaryDirectory() as tmp:
        server, ports = start_server(DEVICES)
        try:
            specs = meters(Path(tmp), ports)
            print(f"one device, {N_ONE} polls of 20 registers back to back (loopback)")
            mb = run_mbpoll(ports[0]) if have_mbpoll else float("nan")
            bare, ours, vs_floor = {}, {}, {}
            for loop in loops():
                fl = report_floor(loop, ports[:1], 3.0)
                n, wall, cpu, lat = timed(lambda: bare_pymodbus(ports[:1], None, N_ONE), loop)
                bare[loop] = report(f"bare pymodbus, {loop}", n, wall, cpu, lat)
                n, wall, cpu, lat = timed(lambda: agent_path(specs[:1], None, N_ONE), loop)
                ours[loop] = report(f"agent poll path, {loop}", n, wall, cpu, lat)
                vs_floor[loop] = cpu / n * 1e3 / fl
            mb_after = run_mbpoll(ports[0]) if have_mbpoll else float("nan")
            mb = (mb + mb_after) / 2  # the machine is shared: mbpoll before and after
            for loop in ours:
                print(f"  {loop}: agent / mbpoll = {ours[loop] / mb:.2f} (goal >= 0.5); "
                      f"agent / bare pymodbus = {ours[loop] / bare[loop]:.2f}; CPU per "
                      f"request agent / floor = {vs_floor[loop]:.1f}")

            print(f"{DEVICES} devices on {DEVICES} ports at once, {SECONDS_MANY:.0f} s")
            for loop in loops():
                fl = report_floor(loop, ports, SECONDS_MANY)
                n, wall, cpu, lat = timed(lambda: bare_pymodbus(ports, SECONDS_MANY, 0), loop)
                b = report(f"bare pymodbus, {loop}", n, wall, cpu, lat)
                n, wall, cpu, lat = timed(lambda: agent_path(specs, SECONDS_MANY, 0), loop)
                o = report(f"agent poll path, {loop}", n, wall, cpu, lat)
                print(f"  {loop}: agent / bare pymodbus = {o / b:.2f}; CPU per request "
                      f"agent / floor = {cpu / n * 1e3 / fl:.1f}; median poll "
                      f"{statistics.median(lat) * 1e3:.2f} ms")
        finally:
            server.terminate()
            server.wait(5)


if __name__ == "__main__":
    main()
