"""Modbus RTU on a serial line: the agent polls two meters on one bus through a pty pair.

socat joins two pseudo-terminals like a null-modem cable; a pymodbus RTU server (two unit
ids, the register maps of an Eastron SDM120 and an SDM630) listens on one end, the agent's
poller on the other, at 19200 baud, 8N1 (a pty refuses parity settings, so another line
setting such as 9600 8E1 cannot be tried here); and at 1200 baud, where the 3.5 characters
of silence the agent keeps between frames (32 ms) are long enough to measure.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from collector.agent import poll_once
from collector.contract import Quality
from collector.plant.registers import encode_point
from collector.profiles import Table, load_profile
from collector.site import load_site

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "edge_config" / "profiles"
VALUES = {
    "energy_kwh": 12345.5, "power_kw": 2.25, "voltage_l1_v": 231.5, "current_l1_a": 9.75,
    "frequency_hz": 50.0, "power_factor": 0.93, "energy_export_kwh": 0.0,
}


def sim_device(unit: int, profile: str) -> tuple[object, dict[str, float]]:
    """A pymodbus SimDevice holding VALUES through ``profile``, and the values it serves."""
    from pymodbus.simulator import DataType, SimData, SimDevice

    blocks: dict[Table, list[SimData]] = {t: [] for t in Table}
    served = {}
    for p in load_profile(PROFILES / f"{profile}.yaml").resolved():
        if p.table.is_bits:
            continue
        value = VALUES.get(p.name, 1.0 + p.address / 100)
        regs = encode_point(p, value)
        blocks[p.table].append(SimData(address=p.address, values=regs,
                                       datatype=DataType.REGISTERS))
        served[p.name] = value
    spare = SimData(address=65520, values=[False], datatype=DataType.BITS)
    simdata = ([spare], [spare], blocks[Table.HOLDING] or
               [SimData(address=0, datatype=DataType.INVALID)],
               blocks[Table.INPUT] or [SimData(address=0, datatype=DataType.INVALID)])
    return SimDevice(id=unit, simdata=simdata), served


def test_rtu_bus_on_a_serial_line(tmp_path: Path) -> None:
    socat = shutil.which("socat")
    if socat is None:
        pytest.fail("socat is needed for the serial line: apt-get install socat (.ci/run does)")
    server_end, agent_end = tmp_path / "ttyS-meters", tmp_path / "ttyS-agent"
    line = subprocess.Popen(
        [socat, f"pty,raw,echo=0,link={server_end}", f"pty,raw,echo=0,link={agent_end}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not (server_end.exists() and agent_end.exists()):
            assert line.poll() is None and time.monotonic() < deadline, line.communicate()
            time.sleep(0.02)
        site = yaml.safe_load((REPO / "edge_config" / "sites" / "demo.yaml").read_text())
        rtu = {"type": "rtu", "device": str(agent_end), "baudrate": 19200, "parity": "N"}
        site["meters"] = [
            {"id": "el_office", "profile": "eastron_sdm120", "unit_id": 1, "connection": rtu},
            {"id": "el_workshop", "profile": "eastron_sdm630", "unit_id": 2, "connection": rtu},
        ]
        site["polling"] = {"interval_s": 1, "timeout_s": 1.0, "retries": 1}
        site_file = tmp_path / "site.yaml"
        site_file.write_text(yaml.safe_dump(site, sort_keys=False))
        spec = load_site(site_file)
        results = asyncio.run(serve_and_poll(spec, server_end))
    finally:
        line.terminate()
        line.wait(timeout=10)
    by_meter = {r.meter: r for r in results}
    assert set(by_meter) == {"el_office", "el_workshop"}
    for meter, result in by_meter.items():
        assert result.quality is Quality.OK, (meter, result.errors)
    office = by_meter["el_office"].values
    for name, value in VALUES.items():
        if name in office:
            assert office[name] == pytest.approx(value, rel=1e-6), name
    assert by_meter["el_workshop"].values["energy_kwh"] == pytest.approx(12345.5)


async def serve_and_poll(spec, server_end: Path):  # type: ignore[no-untyped-def]
    from pymodbus.framer import FramerType
    from pymodbus.server import ModbusSerialServer

    office, _ = sim_device(1, "eastron_sdm120")
    workshop, _ = sim_device(2, "eastron_sdm630")
    server = ModbusSerialServer([office, workshop], framer=FramerType.RTU,
                                port=str(server_end), baudrate=19200, parity="N",
                                stopbits=1, bytesize=8)
    await server.serve_forever(background=True)
    try:
        return await asyncio.wait_for(poll_once(spec), 30)
    finally:
        await server.shutdown()


def test_rtu_keeps_three_and_a_half_characters_of_silence_between_frames(
        tmp_path: Path) -> None:
    """At 1200 baud the silence between frames is 3.5 x 11 bits = 32 ms: the server sees
    no request sooner than that after its previous reply (both ends in this process, one
    monotonic clock). Without the gap the next request follows within a millisecond or two."""
    socat = shutil.which("socat")
    if socat is None:
        pytest.fail("socat is needed for the serial line: apt-get install socat (.ci/run does)")
    from pymodbus.framer import FramerType
    from pymodbus.server import ModbusSerialServer

    server_end, agent_end = tmp_path / "ttyS-meters", tmp_path / "ttyS-agent"
    line = subprocess.Popen(
        [socat, f"pty,raw,echo=0,link={server_end}", f"pty,raw,echo=0,link={agent_end}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    events: list[tuple[bool, float]] = []  # (server sending, monotonic time)

    def trace(sending: bool, pdu: object) -> object:
        events.append((sending, time.monotonic()))
        return pdu

    async def serve_and_poll_both() -> list:  # type: ignore[type-arg]
        office, _ = sim_device(1, "eastron_sdm120")
        workshop, _ = sim_device(2, "eastron_sdm630")
        server = ModbusSerialServer([office, workshop], framer=FramerType.RTU,
                                    port=str(server_end), baudrate=1200, parity="N",
                                    stopbits=1, bytesize=8, trace_pdu=trace)
        await server.serve_forever(background=True)
        try:
            return await asyncio.wait_for(poll_once(spec), 30)
        finally:
            await server.shutdown()

    try:
        deadline = time.monotonic() + 10
        while not (server_end.exists() and agent_end.exists()):
            assert line.poll() is None and time.monotonic() < deadline, line.communicate()
            time.sleep(0.02)
        rtu = {"type": "rtu", "device": str(agent_end), "baudrate": 1200, "parity": "N"}
        site = {"kind": "site", "site": "s", "outbox": {"path": str(tmp_path / "o.sqlite")},
                "polling": {"timeout_s": 2.0, "retries": 0},
                "meters": [
                    {"id": "el_office", "profile": "eastron_sdm120", "unit_id": 1,
                     "connection": rtu},
                    {"id": "el_workshop", "profile": "eastron_sdm630", "unit_id": 2,
                     "connection": rtu}]}
        site_file = tmp_path / "site.yaml"
        site_file.write_text(yaml.safe_dump(site, sort_keys=False))
        spec = load_site(site_file)
        gap = spec.meters[0].meter.connection.frame_gap_s  # type: ignore[union-attr]
        assert gap == pytest.approx(3.5 * 11 / 1200)
        results = asyncio.run(serve_and_poll_both())
    finally:
        line.terminate()
        line.wait(timeout=10)
    assert all(r.quality is Quality.OK for r in results), [r.errors for r in results]
    silences = [b[1] - a[1] for a, b in itertools.pairwise(events) if a[0] and not b[0]]
    assert len(silences) >= 3  # several requests, on both units
    assert min(silences) >= gap, (gap, silences)
