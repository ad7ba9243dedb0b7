"""The poller's failure handling, with a scripted link instead of a network."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from collector.contract import Quality
from collector.modbus import poller as poller_mod
from collector.modbus.plan import ReadRequest
from collector.modbus.poller import (
    BadResponse,
    Bus,
    Device,
    Link,
    LinkDown,
    NoAnswer,
    ReplyError,
    plan_device,
)
from collector.site import MeterSpec, Polling, TcpConnection, load_site

T = TypeVar("T")
Behaviour = Callable[[ReadRequest], Sequence[int] | Sequence[bool] | Exception]


class ScriptedLink(Link):
    """A link whose answers come from a function of the request."""

    def __init__(self, behaviour: Behaviour, connects: bool = True):
        super().__init__(TcpConnection(type="tcp", host="x", port=1), timeout_s=0.1,
                         reconnect_delay_s=0.01, reconnect_delay_max_s=0.04)
        self.behaviour = behaviour
        self.can_connect = connects
        self.sent: list[ReadRequest] = []
        self.up = False

    @property
    def connected(self) -> bool:
        return self.up

    async def ensure(self) -> bool:
        if self.up:
            return True
        self.up = self.can_connect
        if not self.up:
            self.last_error = "refused"
        return self.up

    def close(self) -> None:
        self.up = False

    async def read(self, req: ReadRequest, timeout_s: float) -> Sequence[int] | Sequence[bool]:
        self.sent.append(req)
        answer = self.behaviour(req)
        if isinstance(answer, Exception):
            raise answer
        return answer


def meter(tmp_path: Path, profile: str = "eastron_sdm120", **extra: object) -> MeterSpec:
    extras = "".join(f", {k}: {v}" for k, v in extra.items())
    f = tmp_path / "site.yaml"
    f.write_text(
        "kind: site\nsite: s\nmeters:\n"
        f"  - {{id: m, profile: {profile}, connection: {{type: tcp, host: x}}{extras}}}\n"
    )
    return load_site(f).meters[0]


def zeros(req: ReadRequest) -> list[int] | list[bool]:
    return [False] * req.count if req.table.is_bits else [0] * req.count


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_all_points_read_gives_ok(tmp_path: Path):
    spec = meter(tmp_path)
    bus = Bus(ScriptedLink(zeros), [dev := Device(spec, plan_device(spec))], Polling())
    r = run(bus.poll(dev))
    assert r.quality is Quality.OK and r.errors == {} and r.answered
    assert set(r.values) == {p.name for p in spec.points}
    assert dev.state == "up" and dev.polls == 1


def test_exception_reply_is_a_bad_reading_not_a_crash(tmp_path: Path):
    spec = meter(tmp_path, max_gap_registers=0)
    first = plan_device(spec)[0]

    def some_fail(req: ReadRequest) -> list[int] | Exception:
        return ReplyError(4) if req == first else [0] * req.count

    bus = Bus(ScriptedLink(some_fail), [dev := Device(spec, plan_device(spec))], Polling())
    r = run(bus.poll(dev))
    assert r.quality is Quality.PARTIAL
    assert all(r.errors[n] == "exception 4 (device failure)" for n in first.names)
    assert dev.state == "up"  # it answered


def test_exception_2_on_a_gap_request_splits_it_for_good(tmp_path: Path):
    spec = meter(tmp_path, max_gap_registers=20)
    gappy = [q for q in plan_device(spec) if q.has_gaps]
    assert gappy

    def refuse_gaps(req: ReadRequest) -> list[int] | Exception:
        return ReplyError(2) if req.has_gaps else [0] * req.count

    link = ScriptedLink(refuse_gaps)
    bus = Bus(link, [dev := Device(spec, plan_device(spec))], Polling())
    r = run(bus.poll(dev))
    assert r.quality is Quality.OK
    assert not any(q.has_gaps for q in dev.requests)
    n = len(link.sent)
    run(bus.poll(dev))
    assert len(link.sent) - n == len(dev.requests)  # no more failed tries


def test_silent_device_goes_offline_and_is_only_probed(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch):
    spec = meter(tmp_path, retries=2, interval_s=1)
    link = ScriptedLink(lambda req: NoAnswer("no answer within 0.1 s"))
    polling = Polling(offline_after=2, retry_backoff_s=0, offline_backoff_max_s=8)
    bus = Bus(link, [dev := Device(spec, plan_device(spec))], polling)
    clock = [1000.0]
    monkeypatch.setattr(poller_mod.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(poller_mod.time, "monotonic_ns", lambda: int(clock[0] * 1e9))
    monkeypatch.setattr(poller_mod, "jittered", lambda d: d)

    r = run(bus.poll(dev))
    assert r.quality is Quality.ERROR and not r.answered
    assert len(link.sent) == 3  # one request, tried 1 + retries times; the rest skipped
    assert "skipped: no answer" in r.errors.values()
    run(bus.poll(dev))
    assert dev.state == "offline" and len(link.sent) == 6

    r = run(bus.poll(dev))  # before the probe time: nothing sent
    assert len(link.sent) == 6 and "offline" in r.errors["*"]
    clock[0] += 2.0  # first backoff: 2 x interval
    run(bus.poll(dev))
    assert len(link.sent) == 7  # a probe is one try, no retries
    clock[0] += 3.9
    run(bus.poll(dev))
    assert len(link.sent) == 7  # backoff doubled to 4 s
    clock[0] += 0.2
    run(bus.poll(dev))
    assert len(link.sent) == 8

    link.behaviour = zeros  # it comes back
    clock[0] += 8.0
    r = run(bus.poll(dev))
    assert r.quality is Quality.OK and dev.state == "up" and dev.consecutive_failures == 0


def test_exceptions_never_make_a_device_offline(tmp_path: Path):
    spec = meter(tmp_path)
    bus = Bus(ScriptedLink(lambda req: ReplyError(6)), [dev := Device(spec, plan_device(spec))],
              Polling(offline_after=1))
    for _ in range(3):
        r = run(bus.poll(dev))
        assert r.quality is Quality.ERROR and r.answered
    assert dev.state == "up" and dev.failures == 3


def test_garbage_answers_are_bad_readings(tmp_path: Path):
    spec = meter(tmp_path)
    bus = Bus(ScriptedLink(lambda req: BadResponse("2 registers in the answer, asked for 4")),
              [dev := Device(spec, plan_device(spec))], Polling())
    r = run(bus.poll(dev))
    assert r.quality is Quality.ERROR
    assert all(e.startswith("bad response") for e in r.errors.values())


def test_lost_connection_reports_and_backs_off(tmp_path: Path):
    spec = meter(tmp_path)
    link = ScriptedLink(lambda req: LinkDown("connection reset"))
    bus = Bus(link, [dev := Device(spec, plan_device(spec))], Polling())
    r = run(bus.poll(dev))
    assert r.quality is Quality.ERROR and "connection lost" in next(iter(r.errors.values()))
    assert not link.up and link.next_attempt > 0


def test_no_connection_costs_nothing_and_says_why(tmp_path: Path):
    spec = meter(tmp_path)
    link = ScriptedLink(zeros, connects=False)
    bus = Bus(link, [dev := Device(spec, plan_device(spec))], Polling())
    r = run(bus.poll(dev))
    assert r.quality is Quality.ERROR and "no connection" in r.errors["*"]
    assert link.sent == [] and r.latency_s is None


def test_devices_on_one_bus_are_polled_in_turn_on_schedule(tmp_path: Path):
    f = tmp_path / "site.yaml"
    f.write_text(
        "kind: site\nsite: s\nmeters:\n"
        "  - {id: a, profile: eastron_sdm120, unit_id: 1, interval_s: 0.05,"
        " connection: {type: tcp, host: x}}\n"
        "  - {id: b, profile: eastron_sdm120, unit_id: 2, interval_s: 0.1,"
        " connection: {type: tcp, host: x}}\n"
    )
    specs = load_site(f).meters
    active = 0
    overlap = False

    class Slow(ScriptedLink):
        async def read(self, req: ReadRequest, timeout_s: float) -> Sequence[int]:
            nonlocal active, overlap
            active += 1
            overlap = overlap or active > 1
            await asyncio.sleep(0.001)
            active -= 1
            return [0] * req.count

    bus = Bus(Slow(zeros), [Device(s, plan_device(s)) for s in specs], Polling())
    got: list[str] = []

    async def main() -> None:
        stop = asyncio.Event()

        async def emit(r: poller_mod.PollResult) -> None:
            got.append(r.meter)

        task = asyncio.create_task(bus.run(emit, stop))
        await asyncio.sleep(0.52)
        stop.set()
        await asyncio.wait_for(task, 2)

    run(main())
    assert not overlap
    assert 9 <= got.count("a") <= 12 and 5 <= got.count("b") <= 7


def test_rtu_without_pyserial_is_a_config_error_at_start(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    import importlib.util

    from collector.configfile import ConfigError
    from collector.modbus.poller import Poller

    f = tmp_path / "site.yaml"
    f.write_text("kind: site\nsite: s\nmeters:\n  - {id: m, profile: eastron_sdm120,"
                 " connection: {type: rtu, device: /dev/ttyUSB0, baudrate: 9600}}\n")
    spec = load_site(f)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "serial" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install pyserial"):
        Poller(spec.meters, spec.site.polling)


def test_rtu_frame_gap_is_three_and_a_half_characters(tmp_path: Path):
    f = tmp_path / "site.yaml"
    f.write_text("kind: site\nsite: s\nmeters:\n"
                 "  - {id: a, profile: eastron_sdm120, connection: {type: rtu, device: /dev/x,"
                 " baudrate: 9600}}\n"
                 "  - {id: b, profile: eastron_sdm120, unit_id: 2, connection: {type: rtu,"
                 " device: /dev/y, baudrate: 115200}}\n")
    a, b = (m.meter.connection for m in load_site(f).meters)
    assert a.frame_gap_s == pytest.approx(3.5 * 11 / 9600)  # type: ignore[union-attr]
    assert b.frame_gap_s == 0.00175  # type: ignore[union-attr]


def test_a_meter_is_polled_again_only_when_ready(tmp_path: Path):
    """The agent's gate: while ``ready`` hands back a pending commit (the meter's previous
    reading is not yet on disk) the bus sends that meter nothing, so at most one poll per
    meter is in memory; on a shared bus the other meters are polled meanwhile."""
    (tmp_path / "site.yaml").write_text(
        "kind: site\nsite: s\nmeters:\n" + "".join(
            f"  - {{id: {m}, profile: eastron_sdm120, unit_id: {u}, interval_s: 0.05,"
            " connection: {type: tcp, host: x}}\n" for m, u in (("m", 1), ("other", 2))))
    link = ScriptedLink(zeros)
    bus = Bus(link, [Device(s, plan_device(s)) for s in load_site(tmp_path / "site.yaml").meters],
              Polling())
    emitted: list[str] = []

    async def main() -> tuple[Counter[str], Counter[str]]:
        stop = asyncio.Event()
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def emit(result: Any) -> None:
            emitted.append(result.meter)

        def ready(meter_id: str) -> asyncio.Future[None] | None:
            # "m" may go once; then its reading "stays uncommitted" until the gate opens
            return gate if meter_id == "m" and "m" in emitted and not gate.done() else None

        task = asyncio.create_task(bus.run(emit, stop, ready))
        await asyncio.sleep(0.5)  # ten intervals
        held = Counter(emitted)
        gate.set_result(None)
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.wait_for(task, 5)
        return held, Counter(emitted)

    held, after = run(main())
    assert held["m"] == 1 and held["other"] >= 5, held  # the other meter kept its schedule
    assert after["m"] > 2, after  # once ready, polling goes on


def test_ticker_calls_everything_due_at_one_instant_from_one_timer():
    """Meters due at the same instant share one event-loop timer; a cancelled call is not
    made, and a call that raises is reported without keeping the others from running."""
    async def main() -> tuple[list[str], int, list[Any]]:
        loop = asyncio.get_running_loop()
        timers = 0
        real_call_later = loop.call_later

        def counting(*a: Any, **kw: Any) -> asyncio.TimerHandle:
            nonlocal timers
            timers += 1
            return real_call_later(*a, **kw)

        loop.call_later = counting  # type: ignore[method-assign]
        reported: list[Any] = []
        loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx["exception"]))
        ticker = poller_mod.Ticker()
        calls: list[str] = []
        when = loop.time() + 0.02  # asyncio's loop.time() is time.monotonic()

        def boom() -> None:
            raise RuntimeError("a bug in one meter's poll")

        def later() -> None:
            calls.append("later")

        for name in ("a", "b", "c"):
            ticker.at(when, lambda n=name: calls.append(n))
        key = ticker.at(when, boom)
        skipped = ticker.at(when, later)
        ticker.cancel(skipped, later)
        ticker.at(when, lambda: calls.append("d"))  # after the raising one
        assert key == skipped
        made = timers
        await asyncio.sleep(0.05)
        return calls, made, reported

    calls, timers, reported = run(main())
    assert calls == ["a", "b", "c", "d"]
    assert timers == 1
    assert [str(e) for e in reported] == ["a bug in one meter's poll"]
