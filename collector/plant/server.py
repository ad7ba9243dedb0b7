"""Serve a virtual plant over Modbus TCP (pymodbus), its clock running in the event loop.

Each distinct port in the plant file is one Modbus TCP server (a gateway); each meter is a
unit id behind it. Register contents come from the meter's device profile. A meter in a
dropout does not answer at all, nor does a unit id no meter has; one in an exception spell
answers with its exception code.
The servers only answer reads: every register is read-only, as on a metering device.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from ..profiles import ResolvedPoint, Table
from .engine import Engine, Unavailable, write_json
from .load import PlantSpec
from .losses import iso
from .registers import decode_point, encode_point

log = logging.getLogger("recp.plant")

TICK_S = 0.1  # wall-clock seconds between clock updates
STATUS_EVERY_S = 0.5  # wall-clock seconds between status/truth file writes
HOLD_CLOCK_READ_S = 10.0  # --hold: start anyway when the clock is not read this long
FC_TABLE = {1: Table.COIL, 2: Table.DISCRETE, 3: Table.HOLDING, 4: Table.INPUT}
_TABLE_ORDER = (Table.COIL, Table.DISCRETE, Table.HOLDING, Table.INPUT)
_SPARE_BIT = 65520  # pymodbus needs every bit table non-empty: one unused, aligned bit


@dataclass
class ServedMeter:
    """A meter's registers as currently served, per table: (address, registers) per point,
    and the simulated time they show."""

    meter_id: str
    unit_id: int
    points: list[ResolvedPoint]
    image: dict[Table, list[tuple[int, list[int]]]]
    t: float = float("-inf")


SimBlocks = tuple[list[SimData], list[SimData], list[SimData], list[SimData]]


def _simdata(points: list[ResolvedPoint]) -> SimBlocks:
    blocks: dict[Table, list[SimData]] = {t: [] for t in _TABLE_ORDER}
    for p in points:
        if p.table.is_bits:
            blocks[p.table].append(
                SimData(address=p.address, values=[False], datatype=SimType.BITS, readonly=True)
            )
        else:
            blocks[p.table].append(
                SimData(
                    address=p.address,
                    values=[0] * p.registers,
                    datatype=SimType.REGISTERS,
                    readonly=True,
                )
            )
    for table in (Table.COIL, Table.DISCRETE):
        if not blocks[table]:
            blocks[table].append(
                SimData(address=_SPARE_BIT, values=[False], datatype=SimType.BITS, readonly=True)
            )
    for table in (Table.HOLDING, Table.INPUT):
        if not blocks[table]:
            blocks[table].append(SimData(address=0, count=1, datatype=SimType.INVALID))
    return (blocks[Table.COIL], blocks[Table.DISCRETE], blocks[Table.HOLDING], blocks[Table.INPUT])


def _nobody() -> SimDevice:
    """Unit id 0 for pymodbus: every unit id no meter has. It never answers, as a bus
    behind a transparent gateway (pymodbus 3.16's SimCore looks unknown ids up as 0 and,
    without one, answers exception 4 and logs a KeyError; ignore_missing_devices applies
    only to NoSuchIdException). Every address is valid, so each request reaches the
    action instead of an illegal-address answer."""

    async def silent(*_: object) -> ExcCodes | None:
        raise NoSuchIdException("no meter has this unit id")

    bits = [SimData(address=0, values=[0] * 4096, datatype=SimType.BITS)]  # 65,536 bits
    words = [SimData(address=0, count=65536, datatype=SimType.REGISTERS)]
    return SimDevice(id=0, simdata=(bits, list(bits), words, list(words)), action=silent)


class CannotListen(OSError):
    """A port of the plant cannot be listened on (in use, not an address of this host)."""


def _why_not_listening(host: str, port: int) -> str:
    """Why a server cannot listen on ``host:port``, asked again of the OS (pymodbus logs
    the reason at a level we silence and raises a RuntimeError without it)."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return "pymodbus could not listen there"


class PlantServer:
    """The plant's Modbus servers and clock. Use as ``async with PlantServer(...) as s``."""

    def __init__(
        self,
        engine: Engine,
        spec: PlantSpec,
        *,
        port_base: int | None = None,
        truth_path: Path | None = None,
        status_path: Path | None = None,
        record_path: Path | None = None,
    ):
        self.engine = engine
        self.plant = spec.plant
        self.file = spec.file
        self.truth_path = truth_path
        self.status_path = status_path
        self.meters: dict[str, ServedMeter] = {}
        self.servers: dict[int, ModbusTcpServer] = {}  # configured port -> server
        self.ports: dict[int, int] = {}  # configured port -> listening port
        self.requests = 0
        self.record_path = record_path
        self._record: TextIO | None = None
        self.recorded = 0
        self.clock_points = spec.clock_profile.resolved() if spec.clock_profile else []
        self._origin: tuple[float, float] | None = None  # (monotonic, sim time) of run()
        self._finished = False
        self._start_on_clock_read = False  # see start_at_next_clock_read()
        self.started = asyncio.Event()  # the clock runs (set by run() or a clock read)
        self._clock_offset = 0.0  # the served clock's offset last logged
        configured = sorted({m.port for m in self.plant.meters}
                            | ({self.plant.clock.port} if self.plant.clock else set()))
        if port_base is None:
            self._bind = {p: p for p in configured}
        elif port_base == 0:
            self._bind = {p: 0 for p in configured}
        else:
            self._bind = {p: port_base + (p - configured[0]) for p in configured}
        for m in self.plant.meters:
            points = spec.profiles[m.id].resolved()
            self.meters[m.id] = ServedMeter(m.id, m.unit_id, points, {})
        self.sim_time = engine.t
        self._refresh(engine.t)

    # -- registers ----------------------------------------------------------------------
    def _refresh(self, t: float) -> None:
        """Recompute every meter's register image for simulated time ``t``."""
        for served in self.meters.values():
            self._refresh_meter(served, t)
        self.sim_time = t

    def _refresh_meter(self, served: ServedMeter, t: float) -> None:
        values = self.engine.values(served.meter_id, t)
        image: dict[Table, list[tuple[int, list[int]]]] = {t_: [] for t_ in _TABLE_ORDER}
        for p in served.points:
            image[p.table].append((p.address, encode_point(p, values[p.name])))
        served.image = image
        served.t = t

    def sim_now(self) -> float:
        """Simulated time at this very moment (between the clock's ticks, too)."""
        if self._origin is None or self.plant.speed == 0:
            return self.sim_time
        wall0, sim0 = self._origin
        t = sim0 + (time.monotonic() - wall0) * self.plant.speed
        end = self.engine.end
        return t if end is None else min(t, end)

    @property
    def rate(self) -> float:
        """Simulated seconds per wall second right now (0: frozen, not started or ended)."""
        return 0.0 if self._origin is None or self._finished else self.plant.speed

    def _current(self, served: ServedMeter) -> float:
        """Bring a meter's registers up to the simulated time of this moment."""
        t = self.sim_now()
        if t > served.t:
            self.engine.advance_to(t)
            self._refresh_meter(served, t)
        return served.t

    @staticmethod
    def _fill(image: dict[Table, list[tuple[int, list[int]]]], table: Table,
              start_address: int, registers: list[int]) -> None:
        for addr, regs in image[table]:
            if table.is_bits:
                i, bit = addr // 16 - start_address, addr % 16
                if 0 <= i < len(registers):
                    registers[i] = (registers[i] & ~(1 << bit)) | (int(bool(regs[0])) << bit)
            else:
                i = addr - start_address
                if i >= 0 and i + len(regs) <= len(registers):
                    registers[i : i + len(regs)] = regs

    async def _clock_action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """The time source: simulated time (ms since 1970) and speed, as of this request."""
        self.requests += 1
        if set_values is not None or function_code not in FC_TABLE:
            return ExcCodes.ILLEGAL_FUNCTION
        if self._start_on_clock_read and self._origin is None:
            self._start()  # this answer already says the clock runs, at its speed
        t = self.sim_now()
        offset = self.plant.clock.offset_s(t) if self.plant.clock else 0.0
        values = {"clock_unix_ms": round((t + offset) * 1000.0), "clock_rate": self.rate}
        image: dict[Table, list[tuple[int, list[int]]]] = {t_: [] for t_ in _TABLE_ORDER}
        for p in self.clock_points:
            image[p.table].append((p.address, encode_point(p, values[p.name])))
        self._fill(image, FC_TABLE[function_code], start_address, registers)
        return None

    async def _action(
        self,
        meter_id: str,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Called by pymodbus for every request to one unit: fill its registers, or fail."""
        self.requests += 1
        if set_values is not None or function_code not in FC_TABLE:
            return ExcCodes.ILLEGAL_FUNCTION
        served = self.meters[meter_id]
        t = self._current(served)
        try:
            self.engine.check_available(meter_id, t)
        except Unavailable as exc:
            self._note(served, t, function_code, address, count,
                       "dropout" if exc.code is None else f"exception {exc.code}")
            if exc.code is None:
                # pymodbus stays silent on NoSuchIdException with ignore_missing_devices
                raise NoSuchIdException(f"{meter_id} is in a dropout") from None
            return ExcCodes(exc.code)
        self._fill(served.image, FC_TABLE[function_code], start_address, registers)
        self._note(served, t, function_code, address, count)
        return None

    def _note(self, served: ServedMeter, t: float, function_code: int, address: int,
              count: int, error: str | None = None) -> None:
        """Append one served read to the record: what the plant answered, and when."""
        if self._record is None:
            return
        table = FC_TABLE[function_code]
        item: dict[str, object] = {"meter": served.meter_id, "t": round(t, 3),
                                   "fc": function_code, "address": address, "count": count}
        if error is None:
            span = count * 16 if table.is_bits else count  # pymodbus counts bit words
            regs = {(tbl, a): r for tbl, items in served.image.items() for a, r in items}
            item["values"] = {
                p.name: decode_point(p, regs[(table, p.address)])
                for p in served.points
                if p.table is table and address <= p.address
                and p.address + (1 if table.is_bits else p.registers) <= address + span
            }
        else:
            item["error"] = error
        self._record.write(json.dumps(item, separators=(",", ":")) + "\n")
        self.recorded += 1

    # -- life cycle ---------------------------------------------------------------------
    async def __aenter__(self) -> PlantServer:
        logging.getLogger("pymodbus").setLevel(logging.ERROR)
        if self.record_path is not None:
            self._record = open(self.record_path, "a", encoding="utf-8")  # noqa: SIM115
        by_port: dict[int, list[SimDevice]] = {}
        framing = {m.port: m.framing for m in self.plant.meters}
        for m in self.plant.meters:
            served = self.meters[m.id]
            device = SimDevice(
                id=m.unit_id,
                simdata=_simdata(served.points),
                action=functools.partial(self._action, m.id),
            )
            by_port.setdefault(m.port, []).append(device)
        clock = self.plant.clock
        if clock is not None:
            device = SimDevice(id=clock.unit_id, simdata=_simdata(self.clock_points),
                               action=self._clock_action)
            by_port.setdefault(clock.port, []).append(device)
            framing.setdefault(clock.port, "tcp")
        try:
            for port, devices in by_port.items():
                server = ModbusTcpServer(
                    [*devices, _nobody()],
                    address=(self.plant.host, self._bind[port]),
                    framer=FramerType.RTU if framing[port] == "rtu" else FramerType.SOCKET,
                    ignore_missing_devices=True,
                )
                try:
                    await server.serve_forever(background=True)
                except RuntimeError:  # pymodbus 3.16: "Could not start listen", no reason
                    bind = self._bind[port]
                    where = f" (port {port} in {self.file})" if bind != port else ""
                    raise CannotListen(f"{self.plant.host} port {bind}{where}: "
                                       f"{_why_not_listening(self.plant.host, bind)}") from None
                self.servers[port] = server
                sockets = getattr(server.transport, "sockets", None) or []
                self.ports[port] = sockets[0].getsockname()[1] if sockets else self._bind[port]
            self.write_files()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for server in self.servers.values():
            with contextlib.suppress(Exception):
                await server.shutdown()
        self.servers.clear()
        try:
            self.write_files()
        finally:
            if self._record is not None:
                self._record.close()
                self._record = None

    def start_at_next_clock_read(self) -> None:
        """Start the clock at the next read of the time source, not at run().

        A client that stamps readings with this clock (the agent, ``clock.source: device``)
        read it while it stood (rate 0) and extrapolates at rate 0 until it reads it again;
        meters running meanwhile would be stamped with the stopped time, their consumption
        of those minutes all at one instant. Started by that read, the meters stand until
        the client knows the clock runs.
        """
        self._start_on_clock_read = True

    def _start(self) -> None:
        self._origin = (time.monotonic(), self.engine.t)
        self.started.set()

    async def run(self, stop: asyncio.Event | None = None) -> bool:
        """Advance the clock until the scenario ends (True) or ``stop`` is set (False)."""
        stop = stop or asyncio.Event()
        engine = self.engine
        speed = self.plant.speed
        if self._origin is None:
            self._start()
        assert self._origin is not None
        wall0, sim0 = self._origin
        last_write = wall0
        next_day = sim0 + 86400.0
        while not stop.is_set():
            now = time.monotonic()
            target = sim0 + (now - wall0) * speed
            finished = engine.end is not None and target >= engine.end
            if engine.end is not None and finished:
                target = engine.end
            if speed > 0:
                engine.advance_to(target)
                self._refresh(target)
            if self._record is not None:
                self._record.flush()  # a SIGKILLed plant loses at most a tick of its record
            if now - last_write >= STATUS_EVERY_S or finished:
                self.write_files()
                last_write = now
            if self.plant.clock is not None and self.plant.clock.steps:
                offset = self.plant.clock.offset_s(target)
                if offset != self._clock_offset:
                    log.info("clock device stepped by %+g s at %s (now %+g s from the "
                             "plant's time)", offset - self._clock_offset, iso(target), offset)
                    self._clock_offset = offset
            if target >= next_day:
                log.info("simulated time %s", iso(target))
                next_day += 86400.0
            if finished:
                self._finished = True
                return True
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), TICK_S)
        return False

    # -- reporting ----------------------------------------------------------------------
    def status(self) -> dict:
        meters = {}
        for m in self.plant.meters:
            served = self.meters[m.id]
            regs = {(tbl, a): r for tbl, items in served.image.items() for a, r in items}
            meters[m.id] = {
                "port": self.ports.get(m.port, self._bind[m.port]),
                "unit_id": m.unit_id,
                "values": {
                    p.name: decode_point(p, regs[(p.table, p.address)]) for p in served.points
                },
                "registers": {p.name: regs[(p.table, p.address)] for p in served.points},
            }
        clock = self.plant.clock
        return {
            "plant": self.plant.name,
            "sim_time": iso(self.sim_time),
            "speed": self.plant.speed,
            "clock": None if clock is None else {
                "port": self.ports.get(clock.port, self._bind[clock.port]),
                "unit_id": clock.unit_id, "profile": clock.profile,
                "offset_s": clock.offset_s(self.sim_time),
            },
            "host": self.plant.host,
            "ports": {str(k): v for k, v in self.ports.items()},
            "framing": {str(m.port): m.framing for m in self.plant.meters},
            "requests": self.requests,
            "recorded": self.recorded,
            "meters": meters,
        }

    def write_files(self) -> None:
        if self.status_path:
            write_json(self.status_path, self.status())
        if self.truth_path:
            write_json(self.truth_path, self.engine.truth())


def serve_plant(
    engine: Engine,
    spec: PlantSpec,
    *,
    port_base: int | None = None,
    truth_path: Path | None = None,
    status_path: Path | None = None,
    record_path: Path | None = None,
    hold_path: Path | None = None,
) -> int:
    """Serve until the scenario ends or SIGINT/SIGTERM; return an exit status.

    With ``hold_path`` the meters answer at once but the clock starts only when that file
    exists (``recp demo`` starts it when the agent is up, so no simulated hour is missed)
    and, for a plant with a clock, its time source is next read (so the agent, which
    stamps readings with it, knows it runs; see ``start_at_next_clock_read``), or
    HOLD_CLOCK_READ_S after the file appeared if nobody reads it.
    """

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            server = PlantServer(
                engine, spec, port_base=port_base, truth_path=truth_path,
                status_path=status_path, record_path=record_path,
            )
            async with server:
                plant = spec.plant
                ports = ", ".join(str(p) for p in sorted(server.ports.values()))
                pace = (
                    "frozen" if plant.speed == 0
                    else "real time" if plant.speed == 1
                    else f"1 simulated day per {86400 / plant.speed:g} s"
                )
                end = iso(engine.end) if engine.end else "never"
                clock = ""
                if plant.clock is not None:
                    clock = (f"; its clock on port {server.ports[plant.clock.port]} unit "
                             f"{plant.clock.unit_id}")
                print(
                    f"serving {len(plant.meters)} meters of {plant.name} on {plant.host} "
                    f"port(s) {ports}; {pace}; simulated time {iso(engine.t)} until {end}"
                    f"{clock}. Ctrl-C stops.",
                    flush=True,
                )
                while hold_path is not None and not hold_path.exists() and not stop.is_set():
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.02)
                if hold_path is not None and plant.clock is not None and not stop.is_set():
                    server.start_at_next_clock_read()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(server.started.wait(), HOLD_CLOCK_READ_S)
                finished = await server.run(stop)
            print("scenario complete" if finished else "stopped", flush=True)
            return 0
        except CannotListen as exc:
            print(f"error: cannot listen: {exc}", flush=True)
            return 1
        except OSError as exc:  # the status, truth or record file
            print(f"error: cannot write {exc.filename}: {exc.strerror or exc}", flush=True)
            return 1

    return asyncio.run(main())
