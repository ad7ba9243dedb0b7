"""Agent pieces that need no network: clock guard, re-timing, messages, import weight."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collector import contract
from collector.agent import Agent, ClockGuard, format_once, retime
from collector.contract import Quality
from collector.modbus.poller import PollResult
from collector.site import ClockSettings, load_site

REPO = Path(__file__).resolve().parents[2]
DEMO_SITE = REPO / "edge_config" / "sites" / "demo.yaml"


def test_edge_agent_never_imports_numba():
    code = ("import collector.agent, collector.commands.agent, sys; "
            "assert 'numba' not in sys.modules and 'numpy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


def test_agent_help_is_fast():
    """``recp agent --help`` imports little: under 1 s of the child's CPU time (about 0.2 s
    here). CPU time, not wall time: on the shared 2-core machine at load 10 to 20 the
    child waits for a core longer than it runs, and a wall-clock bound flaked."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "collector", "agent", "--help"], check=True,
                         cwd=REPO, capture_output=True, text=True, timeout=60).stdout
    took = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert "--once" in out
    assert cpu < 1.0, f"recp agent --help took {cpu:.2f} s of CPU ({took:.2f} s wall)"


@pytest.mark.parametrize(
    ("require", "kernel", "expected"),
    [("none", False, True), ("plausible", False, True), ("ntp", True, True),
     ("ntp", False, False), ("ntp", None, False)],
)
def test_clock_guard(require: str, kernel: bool | None, expected: bool):
    guard = ClockGuard(ClockSettings(require=require), kernel=lambda: kernel)
    assert guard.synced() is expected


def test_a_clock_before_not_before_is_not_trusted():
    guard = ClockGuard(ClockSettings(require="plausible", not_before=dt.date(2999, 1, 1)))
    assert not guard.synced()


def test_retime_corrects_or_flags_the_timestamp():
    p = contract.dumps(contract.reading_payload(
        site="s", meter="m", resource="water", stream="x", seq=1, ts=0.0, quality=Quality.OK,
        values={"volume_m3": 1.0}, clock=contract.ClockState.UNSYNCED))
    fixed = json.loads(retime(p, 1767607200.0))
    assert fixed["ts"] == "2026-01-05T10:00:00.000Z" and fixed["clock"] == "corrected"
    contract.Reading.model_validate(fixed)
    assert json.loads(retime(p, None))["clock"] == "unsynced"


def test_rendered_readings_and_metadata_follow_the_contract(tmp_path: Path):
    agent = Agent(load_site(DEMO_SITE), outbox_path=tmp_path / "o.db")
    result = PollResult("el_main", 1767607200.5, 1, {"energy_kwh": 1.5, "power_kw": None},
                        {"power_kw": "not a number"}, Quality.PARTIAL, 0.0042, True)
    topic, payload = agent._render(result, True, "stream1")(7)
    assert topic == "recp/v1/demo_dairy/el_main/reading"
    r = contract.Reading.model_validate_json(payload)
    assert (r.seq, r.stream, r.quality, r.latency_ms) == (7, "stream1", Quality.PARTIAL, 4.2)
    assert r.clock is contract.ClockState.SYNCED
    _, held = agent._render(result, False, "stream1")(8)
    assert contract.Reading.model_validate_json(held).clock is contract.ClockState.UNSYNCED
    metas = agent.meta_messages()
    assert len(metas) == 10
    for topic, payload in metas:
        m = contract.MeterMeta.model_validate_json(payload)
        assert topic == contract.meta_topic("demo_dairy", m.meter)
        assert all(p.unit for p in m.points.values())


def test_commissioning_table():
    spec = load_site(DEMO_SITE)
    ok = PollResult("outdoor", 0, 0, {"outdoor_temperature_c": -2.1, "outdoor_humidity_pct": 93.0},
                    {}, Quality.OK, 0.003, True)
    bad = PollResult("prod_line", 0, 0, {}, {"*": "no connection to tcp://127.0.0.1:5023"},
                     Quality.ERROR, None, False)
    text = format_once(spec, [ok, bad])
    assert "outdoor  rs485_temperature_humidity_sensor at tcp://127.0.0.1:5024 unit 1  OK" in text
    assert "outdoor_temperature_c" in text and "-2.1" in text and "degC" in text
    assert "error: no connection" in text
    assert text.endswith("1 of 2 meters answered every point")


def test_commissioning_table_shows_the_digits_a_float32_holds():
    import struct

    def f32(x: float) -> float:
        return struct.unpack("<f", struct.pack("<f", x))[0]

    spec = load_site(DEMO_SITE)
    values = {"power_factor": f32(0.95), "energy_kwh": f32(1843708.59),
              "power_kw": f32(16963.97) * 0.001, "voltage_l1_v": f32(230.44984436)}
    text = format_once(spec, [PollResult("el_packaging", 0, 0, values, {}, Quality.OK, 0.002,
                                         True)])
    rows = {line.split()[0]: line.split()[1] for line in text.splitlines()[1:-1]
            if len(line.split()) > 1}
    assert rows["power_factor"] == "0.95"  # not 0.949999988079
    assert rows["energy_kwh"] == "1843708.6"  # float32 1843708.625, shortest text of it
    assert rows["power_kw"] == "16.96397"  # W register scaled to kW keeps its 7 digits
    assert float(rows["voltage_l1_v"]) == pytest.approx(230.44984, abs=1e-4)
    for name, value in values.items():  # nothing lost: the text reads back as the register
        point = next(p for m in spec.meters if m.id == "el_packaging" for p in m.points
                     if p.name == name)
        assert f32(float(rows[name]) / point.scale) == f32(value / point.scale)


CLOCK_SITE = """kind: site
site: s
outbox: {path: box.sqlite}
clock: {source: device, device: plc_clock}
meters:
  - {id: plc_clock, profile: recp_clock, unit_id: 2,
     connection: {type: tcp, host: 127.0.0.1, port: 5023}}
  - {id: m1, profile: eastron_sdm120, connection: {type: tcp, host: 127.0.0.1, port: 5023}}
"""


def clock_read(ms: float, rate: float, mono_ns: int, latency_s: float = 0.0) -> PollResult:
    return PollResult("plc_clock", 0.0, mono_ns, {"clock_unix_ms": ms, "clock_rate": rate}, {},
                      Quality.OK, latency_s, True)


def clock_agent(tmp_path: Path, rate: float) -> Agent:
    """An agent of CLOCK_SITE whose time source has been read once, at ``rate``."""
    (tmp_path / "site.yaml").write_text(CLOCK_SITE)
    agent = Agent(load_site(tmp_path / "site.yaml"))
    assert agent.clock.device is not None
    agent.clock.device.observe(clock_read(1767571200_000, rate, 1_500_000_000))
    return agent


def m1_poll(mono_ns: int) -> PollResult:
    """A good reading of meter m1 taken at ``mono_ns``."""
    return PollResult("m1", 0.0, mono_ns, {"energy_kwh": 1.0}, {}, Quality.OK, 0.001, True)


def test_device_clock_extrapolates_at_its_rate_and_holds_until_read():
    guard = ClockGuard(ClockSettings(source="device", device="plc_clock"))
    reading = PollResult("m1", 111.0, 5_000_000_000, {"energy_kwh": 1.0}, {}, Quality.OK, 0.001,
                         True)
    # not read yet: the reading keeps its wall time and is not trusted (held)
    assert guard.stamp(reading) == (reading, False) and not guard.synced()
    # read at monotonic 4 s (+ half its 2 ms latency): 2026-01-05 00:00, a day per 10 s
    assert guard.device is not None
    assert guard.device.observe(clock_read(1767571200_000, 8640.0, 3_999_000_000, 0.002))
    stamped, ok = guard.stamp(reading)
    assert ok and guard.synced()
    assert stamped.ts == pytest.approx(1767571200 + 1.0 * 8640)  # one second later
    assert stamped.values == reading.values and stamped.mono_ns == reading.mono_ns
    # before its first read, too (a poll that started earlier)
    assert guard.stamp(dataclasses.replace(reading, mono_ns=3_000_000_000))[0].ts == (
        pytest.approx(1767571200 - 8640))
    # a failed read keeps the last anchor; a time before not_before is not used
    assert not guard.device.observe(PollResult("plc_clock", 0, 6_000_000_000, {}, {"*": "x"},
                                               Quality.ERROR, None, False))
    assert not guard.device.observe(clock_read(0.0, 1.0, 6_000_000_000))
    assert guard.stamp(reading)[0].ts == pytest.approx(1767571200 + 8640)
    when, mono, rate = guard.now()
    assert rate == 8640.0 and when == pytest.approx(guard.device.at(mono))


def test_device_clock_logs_a_start_stop_or_change_of_rate_once_and_real_steps_only(
        caplog: pytest.LogCaptureFixture):
    """The step check measured a read against the new rate's tolerance (half a wall
    second of it: 2,160 s at 4,320x), so a clock starting, stopping or changing speed was
    never logged, and a clock that stopped could be taken for a step back. Now each
    change of rate is logged once, and a step is time outside both extrapolations."""
    import logging

    clock = ClockGuard(ClockSettings(source="device", device="plc_clock")).device
    assert clock is not None
    t0 = 1788739200_000  # 2026-09-07 00:00 UTC, in ms
    s = 1_000_000_000  # a wall second, in monotonic ns

    def read(ms: float, rate: float, wall_s: float) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="recp.agent"):
            assert clock.observe(clock_read(ms, rate, int(wall_s * s)))
        return [f"{r.levelname} {r.getMessage()}" for r in caplog.records]

    assert read(t0, 0.0, 1.0)[0].startswith("INFO clock from device")  # held: standing
    assert read(t0, 0.0, 1.05) == []
    # started between two reads 50 ms apart, the first answer 0.02 s into its run
    started = read(t0 + 0.02 * 4320_000, 4320.0, 1.10)
    assert len(started) == 1 and started[0].startswith("INFO clock device started: rate 4320")
    assert read(t0 + 0.07 * 4320_000, 4320.0, 1.15) == []  # once
    assert read(t0 + 0.12 * 4320_000 + 600_000, 4320.0, 1.20) == []  # 600 s: jitter at 4320x
    assert read(t0 + 0.17 * 4320_000 + 600_000 * 1.004, 4320.0 * 1.004, 1.25) == []  # < 1 %
    # stopped (the scenario's end): not a step back
    end = t0 + 0.2 * 4320_000 + 600_000
    stopped = read(end, 0.0, 1.35)
    assert len(stopped) == 1, stopped
    assert stopped[0].startswith("WARNING clock device stopped: rate 0, was 4320")
    assert read(end, 0.0, 5.0) == []
    # a real clock set to another speed; then stepped by an hour at that speed
    assert read(end, 1.0, 6.0)[0].startswith("INFO clock device started: rate 1")
    changed = read(end + 1_000 + 500, 2.0, 7.0)  # a second at 1, then at 2: between both
    assert len(changed) == 1 and "changed speed: rate 2, was 1" in changed[0], changed
    stepped = read(end + 1_500 + 2_000 + 3600_000, 2.0, 8.0)
    assert len(stepped) == 1 and stepped[0].startswith("WARNING clock device stepped by 3600")
    # a step at a change of rate: beyond both extrapolations
    both = read(end + 3_604_500 - 7200_000, 1.0, 9.0)  # a second at 1 after the last read
    assert [x.split(" meter")[0] for x in both] == [
        "WARNING clock device stepped by -7200.000 s",
        "WARNING clock device changed speed: rate 1, was 2"]


def test_held_readings_are_retimed_at_the_clock_rate(tmp_path: Path):
    from collector.outbox import Entry, Outbox

    def render(seq: int) -> tuple[str, bytes]:
        return "t", contract.dumps(contract.reading_payload(
            site="s", meter="m1", resource="electricity", stream="x", seq=seq, ts=5.0,
            quality=Quality.OK, values={"energy_kwh": 1.0}, clock=contract.ClockState.UNSYNCED))

    with Outbox(tmp_path / "o.db") as box:
        box.append([Entry("m1", render, held=True, mono_ns=1_000_000_000)])
        # the clock shows T at monotonic 3 s and runs 100 s per second
        assert box.release(retime, 1767571200.0, 3_000_000_000, rate=100.0) == 1
        out = json.loads(box.peek()[0].payload)
    assert out["ts"] == "2026-01-04T23:56:40.000Z" and out["clock"] == "corrected"


def test_the_time_source_is_polled_but_not_published(tmp_path: Path):
    (tmp_path / "site.yaml").write_text(CLOCK_SITE)
    spec = load_site(tmp_path / "site.yaml")
    assert spec.clock_meter is not None and spec.clock_meter.id == "plc_clock"
    assert [m.id for m in spec.published] == ["m1"]
    agent = Agent(spec)
    assert [m.id for m in agent.poller.devices] == ["plc_clock", "m1"]
    assert [json.loads(p)["meter"] for _, p in agent.meta_messages()] == ["m1"]
    (tmp_path / "site.yaml").write_text(CLOCK_SITE.replace("device: plc_clock}",
                                                           "device: plc_clock, publish: true}"))
    assert len(load_site(tmp_path / "site.yaml").published) == 2
    text = format_once(spec, [clock_read(1767571200_000, 8640.0, 0)])
    assert "= 2026-01-05T00:00:00.000Z, 8640 s per second (the site's clock source)" in text


def test_event_loop_is_uvloop_when_installed_unless_turned_off(monkeypatch: pytest.MonkeyPatch):
    import asyncio
    import importlib.util

    from collector import aio

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    monkeypatch.setenv("RECP_EVENT_LOOP", "asyncio")
    assert aio.event_loop_name() == "asyncio"
    assert aio.run(loop_module()).startswith("asyncio")
    monkeypatch.delenv("RECP_EVENT_LOOP")
    installed = importlib.util.find_spec("uvloop") is not None
    assert aio.event_loop_name() == ("uvloop" if installed else "asyncio")
    assert aio.run(loop_module()).startswith("uvloop" if installed else "asyncio")


def test_a_batch_straddling_the_first_clock_read_holds_nothing_back(tmp_path: Path):
    """Readings taken just before the clock became trusted, committed in one batch with
    readings taken just after, are re-timed there and then (the publisher reads the outbox
    in id order and would pass them by if they were held behind newer ones)."""
    import asyncio
    from types import SimpleNamespace

    from collector.outbox import Outbox

    agent = clock_agent(tmp_path, 100.0)
    poll = m1_poll

    async def main() -> list[dict]:
        agent.outbox = Outbox(tmp_path / "o.db")
        agent.publisher = SimpleNamespace(wake=asyncio.Event())  # type: ignore[assignment]
        before, after = poll(1_000_000_000), poll(2_000_000_000)
        saved = [agent.enqueue(before, False), agent.enqueue(*agent.clock.stamp(after))]
        agent.close_writer()
        await agent._writer()
        assert all(f.done() for f in saved)  # their meter may be polled again
        rows = [json.loads(r.payload) for r in agent.outbox.peek()]
        agent.outbox.close()
        return rows

    rows = asyncio.run(main())
    assert [r["seq"] for r in rows] == [1, 2]  # nothing held
    assert rows[0]["clock"] == "corrected" and "clock" not in rows[1]
    # the clock runs 100 s per second from 2026-01-05 00:00 at monotonic 1.5 s
    assert rows[0]["ts"] == "2026-01-04T23:59:10.000Z"
    assert rows[1]["ts"] == "2026-01-05T00:00:50.000Z"


def test_an_idle_writer_wakes_for_the_first_reading_and_commits_the_cycle_together(
        tmp_path: Path):
    """With nothing pending the writer naps; the first reading of a poll cycle wakes it,
    and it commits that reading with the others of the cycle in one transaction (every
    cycle: it naps again in between)."""
    import asyncio
    from types import SimpleNamespace

    from collector.outbox import Outbox

    agent = Agent(load_site(DEMO_SITE))
    first, second = list(agent.meters)[:2]
    assert len(agent.meters) > 2  # neither reading completes a cycle: no hurry

    def poll(meter: str) -> PollResult:
        return PollResult(meter, 5.0, 1, {"energy_kwh": 1.0}, {}, Quality.OK, 0.001, True)

    async def main() -> int:
        agent.outbox = Outbox(tmp_path / "o.db")
        agent.publisher = SimpleNamespace(wake=asyncio.Event())  # type: ignore[assignment]
        writer = asyncio.ensure_future(agent._writer())
        for cycle in range(1, 3):
            await asyncio.sleep(0.02)  # the writer naps: nothing is pending
            saved = agent.enqueue(poll(first), True)
            assert agent.enqueue(poll(second), True) is saved  # before the writer runs
            await asyncio.wait_for(asyncio.shield(saved), 5)
            assert agent.commits == cycle and agent.written == 2 * cycle
        agent.close_writer()
        await asyncio.wait_for(writer, 5)
        n = len(agent.outbox.peek())
        agent.outbox.close()
        return n

    assert asyncio.run(main()) == 4


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_a_write_registered_on_a_closed_mqtt_socket_is_one_line_not_a_traceback(
        loop_name: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    """paho asks for a write while the broker is going away: by the time the loop gets to
    it the socket is closed (fileno -1: nothing to do) or its number is no longer open (one
    warning, the session ends). aiomqtt's own handler passed the stale number to
    ``loop.add_writer``, and uvloop logged an ``OSError: Bad file descriptor`` traceback."""
    import asyncio
    import logging
    import os
    import socket

    import aiomqtt

    from collector import aio
    from collector.publisher import _AckingClient

    monkeypatch.setenv("RECP_EVENT_LOOP", loop_name)
    if aio.event_loop_name() != loop_name:
        pytest.skip("uvloop is not installed")  # the dev environment has it (make venv)

    class Stale:  # a socket whose descriptor number was closed under it
        def __init__(self) -> None:
            r, w = os.pipe()
            os.close(r)
            os.close(w)
            self.fd = w

        def fileno(self) -> int:
            return self.fd

    async def main() -> tuple[list[dict], BaseException | None]:
        loop = asyncio.get_running_loop()
        errors: list[dict] = []
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        client = _AckingClient("127.0.0.1", port=1)
        closed = socket.socket()
        closed.close()
        client._on_socket_register_write(client._client, None, closed)
        client._on_socket_register_write(client._client, None, Stale())
        for _ in range(3):
            await asyncio.sleep(0)
        done = client._disconnected
        return errors, done.exception() if done.done() else None

    with caplog.at_level(logging.DEBUG, logger="recp.publisher"):
        errors, lost = aio.run(main())
    assert errors == []  # nothing reached the loop's exception handler (no traceback)
    assert isinstance(lost, aiomqtt.MqttError)  # the session ends and reconnects
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "mqtt connection lost" in warnings[0]


def test_a_failing_release_is_logged_once_per_streak_and_nothing_as_released(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """The agent tries to release held readings with every commit once the clock is
    trusted; on a full disk each try failed and logged 'released held readings count=0'
    and the failure again, a pair of lines per commit (every poll cycle). Now: the failure
    once, and 'released' only when something was."""
    import asyncio
    import logging
    import sqlite3
    from types import SimpleNamespace

    from collector.outbox import Entry, Outbox

    agent = clock_agent(tmp_path, 1.0)
    poll = m1_poll

    def deny_update(action: int, arg1: str | None, *_: object) -> int:
        refused = action == sqlite3.SQLITE_UPDATE and arg1 == "cycles"
        return sqlite3.SQLITE_DENY if refused else sqlite3.SQLITE_OK

    async def main() -> None:
        box = agent.outbox = Outbox(tmp_path / "o.db")
        agent.publisher = SimpleNamespace(wake=asyncio.Event())  # type: ignore[assignment]
        held = poll(1_000_000_000)
        box.append([Entry("m1", agent._render(held, False, box.stream), held=True,
                          mono_ns=held.mono_ns)])
        box._db.set_authorizer(deny_update)
        for k in range(3):
            await agent._commit([(poll(2_000_000_000 + k), True)])
        assert box.held == 1 and box.depth == 4
        box._db.set_authorizer(None)
        for k in range(2):
            await agent._commit([(poll(3_000_000_000 + k), True)])
        assert box.held == 0 and box.depth == 6
        box.close()

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "releas" in r.getMessage()]
    assert len(lines) == 3, lines
    assert lines[0].startswith("outbox release failed held=1")
    assert lines[1].startswith("outbox release works again")
    assert lines[2] == "clock trusted: released held readings count=1"
