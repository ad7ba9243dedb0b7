"""The virtual plant over real Modbus TCP, read by mbpoll, an independent client.

The plant runs as ``recp simulate`` in its own process. With ``--speed 0`` its clock stands
still, so what mbpoll reads must equal the simulator's own status file exactly: raw registers
for every point, and typed values (floats, 32-bit integers in both word orders) as mbpoll
decodes them itself.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from collector.profiles import load_profile

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "edge_config" / "plants" / "demo.yaml"
MBPOLL_TABLE = {"coil": "0", "discrete": "1", "input": "3", "holding": "4"}
STRUCT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q",
          "uint64": "Q", "float32": "f", "float64": "d"}


class Plant:
    """A ``recp simulate`` process and its status file."""

    def __init__(self, tmp: Path, *args: str):
        self.status_path = tmp / "status.json"
        self.truth_path = tmp / "truth.json"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "collector", "simulate", "-c", str(DEMO), "--port-base", "0",
             "--status", str(self.status_path), "--truth", str(self.truth_path), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 30
        while not self.status_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                out, err = self.proc.communicate()
                pytest.fail(f"recp simulate did not start:\n{out}\n{err}")
            time.sleep(0.05)

    def status(self) -> dict:
        return json.loads(self.status_path.read_text())

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=15)


@pytest.fixture
def frozen(tmp_path: Path) -> Iterator[Plant]:
    # Wednesday 10:00 in Vienna: the line runs, every meter shows load
    plant = Plant(tmp_path, "--speed", "0", "--start", "2026-01-07T09:00:00Z")
    yield plant
    if plant.proc.poll() is None:
        plant.proc.kill()
        plant.proc.wait()


def mbpoll_args(port: int, unit: int, table: str, address: int, count: int, dtype: str) -> list:
    return ["-m", "tcp", "-p", str(port), "-a", str(unit), "-0", "-r", str(address),
            "-c", str(count), "-t", f"{MBPOLL_TABLE[table]}{dtype}", "127.0.0.1"]


def test_mbpoll_reads_what_the_simulator_serves(
    frozen: Plant, mbpoll: Callable[..., list]
) -> None:
    status = frozen.status()
    plant_meters = {m["id"]: m for m in __import__("yaml").safe_load(DEMO.read_text())["meters"]}
    checked_types: set[tuple[str, str]] = set()
    for mid, served in status["meters"].items():
        profile = load_profile(REPO / "edge_config" / "profiles" /
                               f"{plant_meters[mid]['profile']}.yaml")
        port, unit = served["port"], served["unit_id"]
        for p in profile.resolved():
            ptype = getattr(p.type, "value", p.type)
            expected_regs = served["registers"][p.name]
            expected = served["values"][p.name]
            if ptype == "bool":
                (bit,) = mbpoll(mbpoll_args(port, unit, p.table.value, p.address, 1, ""))
                assert bit == expected_regs[0] == expected, (mid, p.name)
                continue
            # 1. the raw registers, exactly
            raw = mbpoll(mbpoll_args(port, unit, p.table.value, p.address, p.registers, ":hex"))
            assert raw == expected_regs, (mid, p.name)
            # 2. decoded independently of our decoder, with struct, in the profile's order
            wire = b"".join(r.to_bytes(2, "big") for r in raw)
            if p.order.value == "CDAB":
                wire = b"".join(wire[i:i + 2] for i in reversed(range(0, len(wire), 2)))
            elif p.order.value != "ABCD":
                pytest.fail(f"test does not cover word order {p.order.value}")
            number = struct.unpack(">" + STRUCT[ptype], wire)[0]
            assert number * p.scale + p.offset == pytest.approx(expected, rel=1e-12, abs=1e-9)
            # 3. mbpoll's own 32-bit decoding, in both word orders (-B: high word first)
            if ptype in ("float32", "int32", "uint32"):
                kind = ":float" if ptype == "float32" else ":int"
                args = mbpoll_args(port, unit, p.table.value, p.address, 1, kind)
                if p.order.value == "ABCD":
                    args.insert(0, "-B")
                (value,) = mbpoll(args)
                if ptype == "uint32":
                    value = int(value) & 0xFFFFFFFF
                assert float(value) * p.scale + p.offset == pytest.approx(
                    expected, rel=1e-5, abs=1e-5 * abs(p.scale)
                ), (mid, p.name)
                checked_types.add((ptype, p.order.value))
    # the demo covers floats and integers in both word orders
    assert {("float32", "ABCD"), ("float32", "CDAB"), ("uint32", "CDAB"),
            ("int32", "CDAB")} <= checked_types
    # a frozen plant never moves: the status is still the same
    assert frozen.status()["meters"] == status["meters"]
    assert frozen.stop() == 0


def test_running_plant_counts_up_and_stops_cleanly(tmp_path: Path, mbpoll: Callable) -> None:
    # one simulated hour per wall second from Wednesday 09:00 UTC
    plant = Plant(tmp_path, "--speed", "3600", "--start", "2026-01-07T09:00:00Z")
    try:
        served = plant.status()["meters"]["el_packaging"]  # Eastron SDM630: float32 ABCD
        args = ["-B", *mbpoll_args(served["port"], served["unit_id"], "input", 0x48, 1, ":float")]
        first = mbpoll(args)[0]
        time.sleep(1.5)
        second = mbpoll(args)[0]
        # 30 kW or more while running: 1.5 simulated hours add well over 30 kWh
        assert second - first > 30
    finally:
        assert plant.stop() == 0
    truth = json.loads(plant.truth_path.read_text())
    assert truth["format"] == "recp-truth/1" and truth["complete"] is False
    assert truth["now"] > "2026-01-07T10:00:00Z"


def first_point(mid: str) -> tuple[str, int, int]:
    """(table, address, registers) of a meter's first profile point."""
    plant_meters = {m["id"]: m for m in __import__("yaml").safe_load(DEMO.read_text())["meters"]}
    profile = load_profile(REPO / "edge_config" / "profiles" /
                           f"{plant_meters[mid]['profile']}.yaml")
    p = profile.resolved()[0]
    return p.table.value, p.address, p.registers


def raw_mbpoll(status: dict, mid: str) -> subprocess.CompletedProcess:
    served = status["meters"][mid]
    table, address, count = first_point(mid)
    return subprocess.run(
        ["mbpoll", "-1", "-o", "0.5",
         *mbpoll_args(served["port"], served["unit_id"], table, address, count, ":hex")],
        capture_output=True, text=True, timeout=10,
    )


def test_dropout_is_silent_and_exception_is_answered(tmp_path: Path) -> None:
    # 10:30 UTC on 12 January: the pasteuriser's steam meter is in a dropout
    plant = Plant(tmp_path, "--speed", "0", "--start", "2026-01-12T10:30:00Z")
    try:
        status = plant.status()
        silent = raw_mbpoll(status, "steam_pasteuriser")
        assert silent.returncode != 0
        assert "timed out" in (silent.stderr + silent.stdout).lower()
        # its neighbour on the same gateway port answers
        ok = raw_mbpoll(status, "steam_main")
        assert ok.returncode == 0, ok.stderr
    finally:
        plant.stop()
    # 14:30 UTC on 18 January: the packaging meter answers half its polls "busy"
    (tmp_path / "busy").mkdir()
    plant = Plant(tmp_path / "busy", "--speed", "0", "--start", "2026-01-18T14:30:00Z")
    try:
        status = plant.status()
        outcomes = [raw_mbpoll(status, "el_packaging") for _ in range(12)]
        busy = [o for o in outcomes if o.returncode != 0]
        assert busy and len(busy) < len(outcomes)
        assert all("busy" in (o.stderr + o.stdout).lower() for o in busy)
    finally:
        plant.stop()


def test_sigterm_leaves_no_process_and_a_truth_file(tmp_path: Path) -> None:
    plant = Plant(tmp_path, "--speed", "86400")
    time.sleep(1.0)
    plant.proc.send_signal(signal.SIGTERM)
    assert plant.proc.wait(timeout=15) == 0
    assert json.loads(plant.truth_path.read_text())["plant"] == "demo_dairy"
    with pytest.raises(ProcessLookupError):
        os.kill(plant.proc.pid, 0)


def test_rtu_over_tcp_gateway(tmp_path: Path) -> None:
    """The textile plant's steam meters sit behind a transparent serial gateway."""
    import asyncio

    from pymodbus.client import AsyncModbusTcpClient
    from pymodbus.framer import FramerType

    plant_file = REPO / "edge_config" / "plants" / "textile_dyeing.yaml"
    status_path = tmp_path / "status.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector", "simulate", "-c", str(plant_file), "--speed", "0",
         "--port-base", "0", "--status", str(status_path), "--start", "2026-03-04T09:00:00Z"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not status_path.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        status = json.loads(status_path.read_text())
        served = status["meters"]["steam_main"]
        assert status["framing"]["5032"] == "rtu"
        profile = load_profile(REPO / "edge_config" / "profiles" / "spirax_sarco_vlm20.yaml")
        point = next(p for p in profile.resolved() if p.name == "mass_flow_kg_h")

        async def read(framer: FramerType) -> list[int] | None:
            client = AsyncModbusTcpClient("127.0.0.1", port=served["port"], framer=framer,
                                          timeout=1, retries=0)
            await client.connect()
            try:
                rr = await client.read_input_registers(point.address, count=point.registers,
                                                       device_id=served["unit_id"])
                return None if rr.isError() else list(rr.registers)
            except Exception:  # a Modbus TCP client gets no answer it can parse
                return None
            finally:
                client.close()

        assert asyncio.run(read(FramerType.RTU)) == served["registers"]["mass_flow_kg_h"]
        assert asyncio.run(read(FramerType.SOCKET)) is None
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)


def test_held_clock_starts_at_its_next_read_so_no_reading_gets_a_stopped_time(
    tmp_path: Path, mbpoll: Callable
) -> None:
    """`--hold`: the agent read the clock while it stood (rate 0) and stamps with that until
    it reads it again. So the meters stand after the hold file appears until the clock is
    read, and that read already says it runs (before, `recp demo` stamped the first
    simulated minutes' consumption at 00:00: a false spike or base-load rise at the start)."""
    hold = tmp_path / "go"
    plant = Plant(tmp_path, "--speed", "3600", "--start", "2026-01-07T09:00:00Z",
                  "--hold", str(hold))  # fmt: skip
    try:
        status = plant.status()
        served = status["meters"]["el_packaging"]  # running: 30 kW or more
        meter = ["-B", *mbpoll_args(served["port"], served["unit_id"], "input", 0x48, 1, ":float")]
        clock = status["clock"]
        rate = ["-B", *mbpoll_args(clock["port"], clock["unit_id"], "holding", 4, 1, ":float")]
        before = mbpoll(meter)[0]
        assert mbpoll(rate)[0] == 0.0  # held: the clock stands
        hold.write_text("go\n")
        time.sleep(1.5)  # 1.5 simulated hours, were the clock running
        assert mbpoll(meter)[0] == before
        assert mbpoll(rate)[0] == 3600.0  # this read starts it, and says so
        time.sleep(1.0)
        assert mbpoll(meter)[0] - before > 20
    finally:
        assert plant.stop() == 0


def test_a_port_in_use_is_named_in_one_line(tmp_path: Path) -> None:
    """A port the plant cannot listen on: exit 1 and one line naming it and why, not a
    traceback (pymodbus 3.16 turns the OSError into "Could not start listen")."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "collector", "simulate", "-c", str(DEMO), "--speed", "0",
             "--port-base", str(port)],
            capture_output=True, text=True, timeout=60,
        )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("error: cannot listen") and f"port {port}" in line, line
    assert "in use" in line, line


def test_a_status_file_it_cannot_write_is_named_and_leaves_no_port_open(tmp_path: Path) -> None:
    """Not "cannot listen" (the listening went fine): the file, and why; and the servers
    started before the first write of the file are shut again (in-process too)."""
    import asyncio
    import socket

    from collector.plant import Engine, load_plant
    from collector.plant.server import PlantServer

    missing = tmp_path / "no such dir" / "status.json"
    proc = subprocess.run(
        [sys.executable, "-m", "collector", "simulate", "-c", str(DEMO), "--speed", "0",
         "--port-base", "0", "--status", str(missing)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    assert "cannot listen" not in line and str(missing) in line, line
    assert "No such file or directory" in line, line

    spec = load_plant(DEMO)

    async def main() -> dict[int, int]:
        server = PlantServer(Engine(spec.plant, spec.profiles, file=spec.file, losses=False),
                             spec, port_base=0, status_path=missing)
        with pytest.raises(OSError):
            async with server:
                pass
        return server.ports

    ports = asyncio.run(main())
    assert ports
    for port in ports.values():
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
