"""Our Modbus TCP client (collector.modbus.tcp) against real servers on loopback.

1. The virtual plant's pymodbus servers: every point of every Modbus TCP meter reads the
   same registers and bits the plant serves, and mbpoll (libmodbus) reads the same words.
2. A scripted asyncio server answering wrong: transaction id, unit id, function code,
   byte count, truncated frames, garbage, exception replies, late replies, resets. Each
   gives a clear error of the right kind, and the link keeps polling afterwards.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from collector.contract import Quality
from collector.modbus.poller import Bus, Device, Link, Poller, PollResult, plan_device
from collector.modbus.tcp import (
    BadResponse,
    LinkDown,
    ModbusTcpClient,
    NoAnswer,
    ReplyError,
    registers,
)
from collector.plant import Engine, load_plant
from collector.plant.load import PlantSpec
from collector.plant.server import PlantServer
from collector.profiles import Table
from collector.site import Polling, load_site

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEMO_PLANT = REPO / "edge_config" / "plants" / "demo.yaml"
FC = {Table.COIL: 1, Table.DISCRETE: 2, Table.HOLDING: 3, Table.INPUT: 4}
MBPOLL_TABLE = {Table.COIL: "0", Table.DISCRETE: "1", Table.INPUT: "3", Table.HOLDING: "4"}


# --------------------------------------------------------------------------- real servers


def frozen_demo() -> PlantSpec:
    spec = load_plant(DEMO_PLANT)
    plant = type(spec.plant).model_validate(spec.plant.model_dump() | {"speed": 0.0})
    return PlantSpec(plant, spec.profiles, spec.file)


def test_reads_what_the_pymodbus_servers_serve_and_mbpoll_reads(
        mbpoll: Callable[..., list]) -> None:
    spec = frozen_demo()

    async def main() -> tuple[int, int]:
        engine = Engine(spec.plant, spec.profiles, file=spec.file, losses=False)
        async with PlantServer(engine, spec, port_base=0) as plant:
            status = plant.status()
            points = words = 0
            for m in spec.plant.meters:
                if m.framing != "tcp":
                    continue
                served = status["meters"][m.id]
                client = await ModbusTcpClient.open("127.0.0.1", served["port"], 2.0)
                try:
                    for p in plant.meters[m.id].points:
                        got = await client.read(FC[p.table], p.address, p.registers,
                                                served["unit_id"], 2.0)
                        want = served["registers"][p.name]
                        if not p.table.is_bits:
                            assert isinstance(got, bytes)
                            got = registers(got)
                        assert [int(w) for w in got] == [int(w) for w in want], (m.id, p.name)
                        points += 1
                    # mbpoll, an independent client, reads the same words (first point)
                    p = plant.meters[m.id].points[0]
                    kind = "" if p.table.is_bits else ":hex"
                    args = ["-m", "tcp", "-p", str(served["port"]), "-a",
                            str(served["unit_id"]), "-0", "-r", str(p.address), "-c",
                            str(p.registers), "-t", MBPOLL_TABLE[p.table] + kind, "127.0.0.1"]
                    seen = await asyncio.to_thread(mbpoll, args)
                    got = await client.read(FC[p.table], p.address, p.registers,
                                            served["unit_id"], 2.0)
                    if isinstance(got, bytes):
                        got = registers(got)
                    assert [int(w) for w in got] == seen, (m.id, p.name)
                    words += len(seen)
                    # an address the meter does not have: pymodbus answers exception 2
                    with pytest.raises(ReplyError, match=r"exception 2 \(illegal data address"):
                        await client.read(3, 65000, 10, served["unit_id"], 2.0)
                finally:
                    client.close()
            return points, words

    points, words = asyncio.run(main())
    assert points > 30 and words >= 5


def test_a_unit_id_nobody_has_gets_no_answer_like_a_meter_in_a_dropout() -> None:
    """A unit id not in the plant file behind a served port: silent, as a transparent
    gateway's bus (pymodbus 3.16's SimCore answered exception 4, device failure, and logged
    a KeyError traceback per request; ignore_missing_devices did not apply). The
    meters behind the same port answer on the same connection afterwards."""
    spec = frozen_demo()

    async def main() -> None:
        engine = Engine(spec.plant, spec.profiles, file=spec.file, losses=False)
        async with PlantServer(engine, spec, port_base=0) as plant:
            m = next(m for m in spec.plant.meters if m.framing == "tcp")
            served = plant.status()["meters"][m.id]
            units = {x.unit_id for x in spec.plant.meters if x.port == m.port}
            p = plant.meters[m.id].points[0]
            client = await ModbusTcpClient.open("127.0.0.1", served["port"], 2.0)
            try:
                for unit in (99, 247):
                    assert unit not in units
                    with pytest.raises(NoAnswer):
                        await client.read(FC[p.table], p.address, p.registers, unit, 0.5)
                got = await client.read(FC[p.table], p.address, p.registers,
                                        served["unit_id"], 2.0)
                assert got
            finally:
                client.close()

    asyncio.run(main())


# --------------------------------------------------------------------------- scripted server

Reply = Callable[[int, int, int, int, int], Awaitable[bytes | None]]


def reply(tid: int, unit: int, fc: int, count: int) -> bytes:
    """A correct answer of ``count`` registers 1000, 1001, ..."""
    data = struct.pack(f">{count}H", *range(1000, 1000 + count))
    return struct.pack(">HHHBBB", tid, 0, 3 + len(data), unit, fc, len(data)) + data


class Scripted:
    """A Modbus TCP server on loopback whose n-th request is answered by ``script[n]``
    (a correct answer once the script runs out); an answer of None stays silent, the
    string "reset" aborts the connection."""

    def __init__(self, script: list[Any]):
        self.script = list(script)
        self.requests = 0
        self.port = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                tid, _p, _n, unit, fc, _a, count = struct.unpack(">HHHBBHH",
                                                                  await r.readexactly(12))
                step = self.script.pop(0) if self.script else None
                self.requests += 1
                if step is None:
                    answer: Any = reply(tid, unit, fc, count)
                else:
                    answer = await step(tid, unit, fc, count)
                if answer == "reset":
                    w.transport.abort()
                    return
                if answer:
                    w.write(answer)
                    await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()


def answer(build: Callable[[int, int, int, int], Any]) -> Reply:
    async def step(tid: int, unit: int, fc: int, count: int) -> Any:
        return build(tid, unit, fc, count)
    return step


def late(seconds: float) -> Reply:
    async def step(tid: int, unit: int, fc: int, count: int) -> bytes:
        await asyncio.sleep(seconds)
        return reply(tid, unit, fc, count)
    return step


SILENT = answer(lambda *a: b"")
CASES: list[tuple[str, Reply, type[Exception], str, bool]] = [
    # name, first answer, error, message, connection still usable afterwards
    ("wrong transaction id", answer(lambda t, u, f, c: reply(t + 7, u, f, c)), BadResponse,
     r"transaction id \d+, expected \d+", True),
    ("wrong unit id", answer(lambda t, u, f, c: reply(t, u + 1, f, c)), BadResponse,
     "reply from unit 2, asked unit 1", True),
    ("wrong function code", answer(lambda t, u, f, c: reply(t, u, 4, c)), BadResponse,
     "reply has function code 4, asked function code 3", True),
    ("too few registers", answer(lambda t, u, f, c: reply(t, u, f, c - 2)), BadResponse,
     "8 registers in the answer, asked for 10", True),
    ("byte count beyond the frame", answer(
        lambda t, u, f, c: struct.pack(">HHHBBB", t, 0, 5, u, f, 20) + b"\x00\x01"),
     BadResponse, "byte count 20 does not match the frame length", True),
    ("exception reply", answer(lambda t, u, f, c: struct.pack(">HHHBBB", t, 0, 3, u, f | 0x80,
                                                              2)),
     ReplyError, r"exception 2 \(illegal data address\)", True),
    ("truncated frame, then silence", answer(lambda t, u, f, c: reply(t, u, f, c)[:11]),
     NoAnswer, "no answer within 0.3 s", True),
    ("silence", SILENT, NoAnswer, "no answer within 0.3 s", True),
    ("late reply", late(0.5), NoAnswer, "no answer within 0.3 s", True),
    ("garbage bytes", answer(lambda *a: b"HTTP/1.1 400 Bad Request\r\n\r\n"), BadResponse,
     "not a Modbus TCP frame", False),
    ("connection reset", answer(lambda *a: "reset"), LinkDown, "connection", False),
]


@pytest.mark.parametrize(("name", "first", "error", "message", "usable"), CASES,
                         ids=[c[0] for c in CASES])
def test_a_bad_reply_is_a_clear_error_and_the_next_read_works(
        name: str, first: Reply, error: type[Exception], message: str, usable: bool) -> None:
    async def main() -> None:
        async with Scripted([first]) as server:
            client = await ModbusTcpClient.open("127.0.0.1", server.port, 2.0)
            with pytest.raises(error, match=message):
                await client.read(3, 0, 10, 1, 0.3)
            if not usable:  # framing lost or connection gone: the next read says so
                await asyncio.sleep(0.05)
                with pytest.raises(LinkDown):
                    await client.read(3, 0, 10, 1, 0.3)
                client.close()
                client = await ModbusTcpClient.open("127.0.0.1", server.port, 2.0)
            # a late reply arrives while the next read waits: its transaction id is an
            # abandoned one, so it is dropped and the next read gets its own answer
            got = await client.read(3, 0, 10, 1, 0.5)
            assert isinstance(got, bytes) and registers(got) == tuple(range(1000, 1010))
            got = await client.read(3, 0, 4, 1, 0.5)
            assert isinstance(got, bytes) and registers(got) == tuple(range(1000, 1004))
            client.close()

    asyncio.run(main())


def test_bits_and_only_read_function_codes() -> None:
    def bits(t: int, u: int, f: int, c: int) -> bytes:
        return struct.pack(">HHHBBBBB", t, 0, 5, u, f, 2, 0b10100101, 0b1)

    async def main() -> None:
        async with Scripted([answer(bits)]) as server:
            client = await ModbusTcpClient.open("127.0.0.1", server.port, 2.0)
            assert await client.read(2, 0, 9, 1, 0.5) == [True, False, True, False, False,
                                                          True, False, True, True]
            for fc in (5, 6, 15, 16, 0x2B):
                with pytest.raises(ValueError, match=f"refusing to send function code {fc}"):
                    await client.read(fc, 0, 1, 1, 0.5)
            assert server.requests == 1
            client.close()

    asyncio.run(main())


def test_send_refuses_what_read_refuses() -> None:
    """The callback form (send, the fast path's) checks a request as read does: only read
    function codes, one request at a time, a connection; nothing refused is sent."""

    async def main() -> None:
        async with Scripted([]) as server:
            client = await ModbusTcpClient.open("127.0.0.1", server.port, 2.0)
            got: list[Any] = []
            loop = asyncio.get_running_loop()
            answered = loop.create_future()

            def done(value: Any, exc: Exception | None) -> None:
                got.append((value, exc))
                answered.set_result(None)

            with pytest.raises(ValueError, match="refusing to send function code 6"):
                client.send(6, 0, 1, 1, 0.5, done)
            client.send(3, 0, 2, 1, 0.5, done)
            with pytest.raises(RuntimeError, match="one request at a time"):
                client.send(3, 0, 1, 1, 0.5, done)
            with pytest.raises(RuntimeError, match="one request at a time"):
                await client.read(3, 0, 1, 1, 0.5)
            await answered
            assert got == [(struct.pack(">2H", 1000, 1001), None)]
            client.close()
            with pytest.raises(LinkDown, match="closed"):
                client.send(3, 0, 1, 1, 0.5, done)
            with pytest.raises(LinkDown, match="closed"):
                await client.read(3, 0, 1, 1, 0.5)
            assert server.requests == 1

    asyncio.run(main())


def test_a_device_answering_wrong_keeps_being_polled(tmp_path: Path) -> None:
    """Through the poller: each bad answer is a bad reading naming the problem, the link
    reconnects where the stream was lost, and the device is polled on."""
    script = [case[1] for case in CASES]

    async def main() -> list[Any]:
        async with Scripted(script) as server:
            (tmp_path / "p.yaml").write_text(
                "kind: profile\nmanufacturer: T\nmodel: t\nresource: electricity\n"
                "source: test\ndefaults: {table: holding, type: uint16}\npoints:\n"
                + "".join(f"  - {{name: {n}, address: {i}}}\n" for i, n in enumerate(
                    ["voltage_l1_v", "voltage_l2_v", "voltage_l3_v"])))
            (tmp_path / "site.yaml").write_text(
                "kind: site\nsite: s\nmeters:\n"
                f"  - {{id: m, profile: {tmp_path / 'p.yaml'}, connection: {{type: tcp, "
                f"host: 127.0.0.1, port: {server.port}}}, timeout_s: 0.3, retries: 0}}\n")
            spec = load_site(tmp_path / "site.yaml").meters[0]
            link = Link(spec.meter.connection, timeout_s=0.3, reconnect_delay_s=0.01,
                        reconnect_delay_max_s=0.02)
            polling = Polling(offline_after=100)
            bus = Bus(link, [dev := Device(spec, plan_device(spec))], polling)
            results = []
            for _ in range(len(script) + 6):
                results.append(await bus.poll(dev))
                await asyncio.sleep(0.03)
            link.close()
            return results

    results = asyncio.run(main())
    errors = [next(iter(r.errors.values()), "") for r in results]
    for text in ("transaction id", "reply from unit 2", "function code 4",
                 "registers in the answer", "byte count 20", "exception 2",
                 "no answer within 0.3 s", "not a Modbus TCP frame", "connection"):
        assert any(text in e for e in errors), (text, errors)
    assert all(r.quality is Quality.ERROR for r in results[:3])
    assert results[-1].quality is Quality.OK
    assert results[-1].values == {"voltage_l1_v": 1000.0, "voltage_l2_v": 1001.0,
                                  "voltage_l3_v": 1002.0}


def test_the_fast_path_reads_and_fails_exactly_like_the_careful_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lone meter on our own TCP client is polled from callbacks (_FastLoop), and a
    request that fails there is finished by the coroutine path (retries, splitting on
    exception 2, reconnecting). Against the same scripted server, Bus.run gives the same
    readings with the fast path as without it: good ones, each kind of bad answer, a
    silent request retried, and what follows a lost connection."""
    gap_refused = answer(lambda t, u, f, c: struct.pack(">HHHBBB", t, 0, 3, u, f | 0x80, 2)
                         if c > 2 else reply(t, u, f, c))
    script = [None, None, gap_refused, None, None, None]
    for case in CASES:
        if case[0] != "late reply":  # its timing decides which request gets it
            script += [case[1], None, None]
    n_readings = 30
    (tmp_path / "p.yaml").write_text(
        "kind: profile\nmanufacturer: T\nmodel: t\nresource: electricity\n"
        "source: test\ndefaults: {table: holding, type: uint16}\npoints:\n"
        + "".join(f"  - {{name: {n}, address: {a}}}\n" for n, a in (
            ("voltage_l1_v", 0), ("voltage_l2_v", 2), ("current_l1_a", 40))))

    async def run(fast: bool) -> tuple[list[tuple[Any, ...]], int]:
        async with Scripted(script) as server:
            (tmp_path / "site.yaml").write_text(
                "kind: site\nsite: s\nmeters:\n"
                f"  - {{id: m, profile: {tmp_path / 'p.yaml'}, connection: {{type: tcp, "
                f"host: 127.0.0.1, port: {server.port}}}, timeout_s: 0.5, retries: 1, "
                "interval_s: 0.05}\n")
            spec = load_site(tmp_path / "site.yaml").meters[0]
            link = Link(spec.meter.connection, timeout_s=0.5, reconnect_delay_s=0.01,
                        reconnect_delay_max_s=0.02)
            bus = Bus(link, [Device(spec, plan_device(spec))],
                      Polling(offline_after=100, retry_backoff_s=0.01))
            monkeypatch.setattr(Bus, "fast_path", fast)
            careful = 0
            slow_poll = Bus.poll

            async def counted(self: Bus, *a: Any, **kw: Any) -> PollResult:
                nonlocal careful
                careful += 1
                return await slow_poll(self, *a, **kw)

            monkeypatch.setattr(Bus, "poll", counted)
            got: list[PollResult] = []
            stop = asyncio.Event()

            def emit(r: PollResult) -> None:
                got.append(r)
                if len(got) >= n_readings:
                    stop.set()

            await asyncio.wait_for(bus.run(emit, stop), 60)
            monkeypatch.setattr(Bus, "poll", slow_poll)
            # a poll due while the link waits to reconnect sends nothing: how many fall
            # there depends on timing, not on the path
            return [(r.quality, r.values, r.errors) for r in got
                    if not next(iter(r.errors.values()), "").startswith("no connection")
                    ], careful

    fast, careful_fast = asyncio.run(run(True))
    slow, careful_slow = asyncio.run(run(False))
    assert fast == slow
    assert careful_slow == n_readings and careful_fast < n_readings / 2  # fast path used
    assert fast[0] == (Quality.OK, {"voltage_l1_v": 1000.0, "voltage_l2_v": 1002.0,
                                    "current_l1_a": 1000.0}, {})
    errors = " ".join(str(e) for _, _, e in fast)
    for text in ("transaction id", "reply from unit 2", "function code 4", "byte count 20",
                 "not a Modbus TCP frame", "connection"):
        assert text in errors, text
    assert all(q is Quality.OK for q, _, _ in fast[-3:])


def test_meters_on_their_own_connections_share_one_timer_per_poll_instant(
        tmp_path: Path) -> None:
    """Three lone meters on three connections (the fast path), every 50 ms: polled at the
    same instants, from one event-loop timer per instant (not one per meter and poll),
    and every reading good."""
    (tmp_path / "p.yaml").write_text(
        "kind: profile\nmanufacturer: T\nmodel: t\nresource: electricity\n"
        "source: test\ndefaults: {table: holding, type: uint16}\npoints:\n"
        "  - {name: voltage_l1_v, address: 0}\n")

    async def main() -> tuple[list[PollResult], int]:
        async with Scripted([]) as a, Scripted([]) as b, Scripted([]) as c:
            (tmp_path / "site.yaml").write_text(
                "kind: site\nsite: s\npolling: {interval_s: 0.05}\nmeters:\n" + "".join(
                    f"  - {{id: m{i}, profile: {tmp_path / 'p.yaml'}, connection: "
                    f"{{type: tcp, host: 127.0.0.1, port: {s.port}}}}}\n"
                    for i, s in enumerate((a, b, c))))
            poller = Poller(load_site(tmp_path / "site.yaml").meters, Polling())
            got: list[PollResult] = []
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            timers = 0
            real_call_later = loop.call_later

            def counting(*args: Any, **kw: Any) -> asyncio.TimerHandle:
                nonlocal timers
                if len(got) >= 3:  # after the first round (connecting)
                    timers += 1
                return real_call_later(*args, **kw)

            def emit(r: PollResult) -> None:
                got.append(r)
                if len(got) >= 3 * 12:
                    stop.set()

            loop.call_later = counting  # type: ignore[method-assign]
            await asyncio.wait_for(poller.run(emit, stop), 30)
            return got, timers

    got, timers = asyncio.run(main())
    assert all(r.quality is Quality.OK for r in got)
    assert timers <= 12 + 2  # one per instant (three per instant before)
    rounds: dict[str, list[int]] = {}
    for r in got:
        rounds.setdefault(r.meter, []).append(r.mono_ns)
    for starts in zip(*rounds.values(), strict=False):
        assert max(starts) - min(starts) < 20e6, starts  # same instant, give or take 20 ms
