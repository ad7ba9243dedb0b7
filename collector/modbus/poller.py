"""Poll Modbus devices through their profiles: one connection per bus, its devices in turn.

A *link* is one connection: a Modbus TCP port (a meter, or a gateway with several unit ids
behind it), a transparent serial gateway speaking RTU over TCP, or a local RS485 port. One
pymodbus client runs one request at a time, so each link has its own client and its own
task: devices on one link are polled one after the other (never overlapping on a shared
bus), devices on different links concurrently.

Failure handling, from cheapest to dearest:

- A Modbus exception reply is data: the points of that request get an error and the
  reading's quality says so. Exception 2 (illegal address) on a request that reads through
  a gap is answered by splitting it into gap-free requests for good (some devices refuse
  to read unmapped registers).
- A request that gets no answer is retried ``retries`` times with a short backoff; then
  the device's remaining requests are skipped for this poll.
- After ``offline_after`` polls in a row without any answer a device is *offline*: it is
  only probed (one try) after a jittered, doubling backoff capped at
  ``offline_backoff_max_s``, so a dead meter does not cost the bus ``(retries + 1) x
  timeout`` every cycle. At each of its due times it still yields an error reading, so
  the gap is visible downstream.
- A transport failure closes the connection; reconnecting waits a doubling, jittered,
  capped delay, and meanwhile every due device yields an error reading at no cost.

Only read function codes 1-4 are ever sent (see :data:`READ_FUNCTION_CODES`).

A meter alone on a plain Modbus TCP connection (the usual case) is polled from callbacks
while all is well (:class:`_FastLoop`: no task wake-up, future or coroutine per request);
the first thing that is not a good reply hands the poll to the coroutine path above.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..aio import TaskGroup
from ..contract import Quality
from ..site import MeterSpec, Polling, RtuConnection, RtuOverTcpConnection, TcpConnection
from .plan import READ_FUNCTION_CODES, ReadRequest, plan_reads
from .tcp import EXCEPTION_NAMES, BadResponse, LinkDown, ModbusTcpClient, NoAnswer, ReplyError

__all__ = ["EXCEPTION_NAMES", "BadResponse", "Bus", "Device", "Link", "LinkDown", "NoAnswer",
           "PollResult", "Poller", "ReplyError", "Ticker", "plan_device"]

log = logging.getLogger("recp.poller")

SILENT_REQUESTS_BEFORE_RECONNECT = 3  # no answer at all on a TCP link: maybe half-open
GUARD_S = 2.0  # extra wait on top of pymodbus' own timeout before we give up on a call


@dataclass(slots=True)
class PollResult:
    """One poll of one device: its values, what went wrong, and when."""

    meter: str
    ts: float  # wall clock (epoch seconds) when the poll started
    mono_ns: int  # monotonic clock at the same moment
    values: dict[str, float | None]
    errors: dict[str, str]
    quality: Quality
    latency_s: float | None  # None when nothing was sent
    answered: bool  # the device said anything at all (values or an exception)


def jittered(delay: float) -> float:
    """``delay`` spread over [0.5, 1.0] x delay, so many clients do not retry in step."""
    return delay * (0.5 + random.random() / 2)


# --------------------------------------------------------------------------- links


class Link:
    """One Modbus connection (TCP port, RTU-over-TCP port or serial device).

    Plain Modbus TCP goes through our own small client (:mod:`collector.modbus.tcp`),
    RTU framing (serial, or tunnelled over TCP) through pymodbus.
    """

    def __init__(
        self,
        connection: TcpConnection | RtuOverTcpConnection | RtuConnection,
        *,
        timeout_s: float,
        reconnect_delay_s: float = 0.5,
        reconnect_delay_max_s: float = 60.0,
        trace_pdu: Callable[[bool, Any], Any] | None = None,
    ):
        self.connection = connection
        self.timeout_s = timeout_s
        self.reconnect_delay_s = reconnect_delay_s
        self.reconnect_delay_max_s = reconnect_delay_max_s
        self.trace_pdu = trace_pdu
        self.frame_gap_s = connection.frame_gap_s if isinstance(connection, RtuConnection) else 0
        self.client: Any = None  # pymodbus client (RTU framing)
        self.tcp: ModbusTcpClient | None = None  # our own client (plain Modbus TCP)
        self.own_tcp = isinstance(connection, TcpConnection)
        self.next_attempt = 0.0  # monotonic time before which we do not try to connect
        self.delay = 0.0
        self.last_error = ""
        self.silent = 0  # requests in a row without any answer
        self.connects = 0
        self.requests = 0
        self._last_io = 0.0
        self._readers: dict[int, Callable[..., Any]] = {}

    def __str__(self) -> str:
        return str(self.connection)

    @property
    def connected(self) -> bool:
        if self.tcp is not None:
            return self.tcp.connected
        return self.client is not None and bool(self.client.connected)

    def _make_client(self) -> Any:
        from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
        from pymodbus.framer import FramerType

        c = self.connection
        common: dict[str, Any] = dict(
            timeout=self.timeout_s, retries=0, reconnect_delay=0, trace_pdu=self.trace_pdu,
            name=str(c),
        )
        client: Any
        if isinstance(c, RtuConnection):
            client = AsyncModbusSerialClient(
                c.device, framer=FramerType.RTU, baudrate=c.baudrate, parity=c.parity,
                stopbits=c.stopbits, bytesize=c.bytesize, **common,
            )
        else:
            framer = FramerType.SOCKET if isinstance(c, TcpConnection) else FramerType.RTU
            client = AsyncModbusTcpClient(c.host, port=c.port, framer=framer, **common)
        # we decide when a silent link is dead (pymodbus would close it after retries+3)
        client.set_max_no_responses(1 << 30)
        self._readers = {  # read function codes only: nothing else is ever called
            3: client.read_holding_registers, 4: client.read_input_registers,
            1: client.read_coils, 2: client.read_discrete_inputs,
        }
        return client

    async def ensure(self) -> bool:
        """Connected, or try to connect unless still backing off; never raises."""
        if self.connected:
            return True
        now = time.monotonic()
        if now < self.next_attempt:
            return False
        self.close()
        self.last_error = ""
        try:
            if self.own_tcp:
                c = self.connection
                assert isinstance(c, TcpConnection)
                self.tcp = await ModbusTcpClient.open(c.host, c.port, max(self.timeout_s, 1.0))
                ok = True
            else:
                self.client = self._make_client()
                self.client.ctx.comm_params.timeout_connect = max(self.timeout_s, 1.0)
                ok = await asyncio.wait_for(self.client.connect(),
                                            max(self.timeout_s, 1.0) + GUARD_S)
        except asyncio.TimeoutError:
            ok = False
            self.last_error = f"no connection within {max(self.timeout_s, 1.0):g} s"
        except Exception as exc:
            ok = False
            self.last_error = f"{type(exc).__name__}: {exc}"
        if ok and self.connected:
            self.delay = 0.0
            self.silent = 0
            self.connects += 1
            self.last_error = ""
            log.info("link up link=%s connects=%d", self, self.connects)
            return True
        self.close()
        self.delay = min(max(self.delay * 2, self.reconnect_delay_s), self.reconnect_delay_max_s)
        self.next_attempt = time.monotonic() + jittered(self.delay)
        self.last_error = self.last_error or "connection refused or timed out"
        log.warning("link down link=%s retry_in_s=%.1f error=%s", self, self.delay,
                    self.last_error)
        return False

    def mark_down(self, reason: str) -> None:
        self.last_error = reason
        self.close()
        self.delay = min(max(self.delay * 2, self.reconnect_delay_s), self.reconnect_delay_max_s)
        self.next_attempt = time.monotonic() + jittered(self.delay)
        log.warning("link lost link=%s error=%s retry_in_s=%.1f", self, reason, self.delay)

    def close(self) -> None:
        if self.tcp is not None:
            self.tcp.close()
            self.tcp = None
        if self.client is not None:
            try:
                self.client.close()
            except Exception as exc:
                log.debug("closing %s: %s", self, exc)
            self.client = None

    def read(self, req: ReadRequest, timeout_s: float
             ) -> Awaitable[Sequence[int] | Sequence[bool] | bytes]:
        """One read request, one try, to await; raise ReplyError, NoAnswer, LinkDown or
        BadResponse. Not a coroutine itself: on our TCP client it is the client's own
        ``read`` (one coroutine per request, not two: the poll loop's hot path).

        Registers come back as values (pymodbus) or as their bytes off the wire (our TCP
        client); :meth:`ReadRequest.decode` takes either."""
        if self.tcp is not None:  # says itself why it is not connected, if it is not
            self.requests += 1
            return self.tcp.read(req.function_code, req.address, req.count, req.unit_id,
                                 timeout_s)
        return self._read_rtu(req, timeout_s)

    async def _read_rtu(self, req: ReadRequest, timeout_s: float
                        ) -> Sequence[int] | Sequence[bool]:
        """:meth:`read` through pymodbus (RTU framing, serial or over TCP)."""
        if req.function_code not in READ_FUNCTION_CODES:  # belt and braces: never write
            raise ValueError(f"refusing to send function code {req.function_code}")
        if not self.connected:
            raise LinkDown(self.last_error or "not connected")
        if self.frame_gap_s:
            wait = self._last_io + self.frame_gap_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

        self.client.ctx.comm_params.timeout_connect = timeout_s  # pymodbus' reply timeout
        self.requests += 1
        try:
            # no extra wait_for here: pymodbus bounds the wait for the reply by the timeout
            rr = await self._readers[req.function_code](
                req.address, count=req.count, device_id=req.unit_id)
        except ConnectionException as exc:
            raise LinkDown(str(exc)) from None
        except ModbusIOException as exc:
            raise NoAnswer(f"no answer within {timeout_s:g} s") from exc
        except ModbusException as exc:
            raise BadResponse(str(exc)) from None
        except OSError as exc:
            raise LinkDown(f"{type(exc).__name__}: {exc}") from None
        finally:
            self._last_io = time.monotonic()
        if rr is None:
            raise BadResponse("empty response")
        if rr.isError():
            raise ReplyError(int(getattr(rr, "exception_code", 0)))
        words = rr.bits if req.table.is_bits else rr.registers
        if len(words) < req.count:
            raise BadResponse(f"{len(words)} {req.unit} in the answer, asked for {req.count}")
        if rr.function_code != req.function_code:
            raise BadResponse(f"answer has function code {rr.function_code}")
        return words


# --------------------------------------------------------------------------- devices


@dataclass
class Device:
    """A meter on a link, with its read plan, schedule and health."""

    spec: MeterSpec
    requests: list[ReadRequest]
    next_due: float = 0.0  # monotonic
    consecutive_failures: int = 0
    offline: bool = False
    offline_delay: float = 0.0
    next_probe: float = 0.0
    polls: int = 0
    failures: int = 0
    overruns: int = 0
    last_ok: float | None = None  # wall clock
    last_error: str = ""
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    points: int = 0  # values per poll (splitting a request keeps them)
    id: str = field(init=False)  # the meter's id (asked on every poll: not a property)

    def __post_init__(self) -> None:
        self.points = sum(len(r.slots) for r in self.requests)
        self.id = self.spec.id

    @property
    def state(self) -> str:
        if self.offline:
            return "offline"
        return "down" if self.consecutive_failures else "up"

    def health(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "state": self.state, "polls": self.polls, "failures": self.failures,
            "consecutive_failures": self.consecutive_failures, "last_ok": self.last_ok,
            "latency_ms_p50": round(lat[len(lat) // 2] * 1000, 3) if lat else None,
            "latency_ms_max": round(lat[-1] * 1000, 3) if lat else None,
            "last_error": self.last_error,
        }


def plan_device(spec: MeterSpec) -> list[ReadRequest]:
    return plan_reads(
        spec.points, spec.meter.unit_id,
        max_registers=spec.profile.max_registers_per_request,
        max_gap_registers=spec.max_gap_registers,
    )


# takes a reading; returns None, or what to await before polling on (the agent's queue
# is full) -- an ``async def`` works too
Emit = Callable[[PollResult], "Awaitable[None] | None"]
# None when a meter may be polled again, else what to await first (its last reading's commit)
Ready = Callable[[str], "asyncio.Future[None] | None"]
READY_RECHECK_S = 0.005  # a meter not ready yet is asked again after this long


@dataclass(frozen=True)
class Resume:
    """A poll the fast path began and a request of which failed: the slow path finishes it
    (retries, splitting, marking the link down) exactly as if it had begun it."""

    ts: float
    mono: int
    t0: float
    values: dict[str, float | None]  # of the requests before ``index``
    index: int  # the request that failed
    exc: Exception  # how it failed, on its first try


class Ticker:
    """Due times shared by the fast-path meters of a poller: one event-loop timer per due
    time, however many meters are due then, instead of one timer per meter and poll (a
    timer costs about 5 us on uvloop, a third of a fast-path poll's Python). Meters on
    the same interval, started together (``start``), are due at the same instants."""

    def __init__(self, start: float | None = None):
        self.start = time.monotonic() if start is None else start  # the first due time
        self._due: dict[int, list[Callable[[], object]]] = {}  # due time in us -> calls

    def at(self, when: float, fn: Callable[[], object]) -> int:
        """Call ``fn()`` from the running loop at monotonic time ``when``; the key to
        :meth:`cancel` it with."""
        key = round(when * 1e6)
        calls = self._due.get(key)
        if calls is None:
            self._due[key] = [fn]
            asyncio.get_running_loop().call_later(when - time.monotonic(), self._fire, key)
        else:
            calls.append(fn)
        return key

    def cancel(self, key: int, fn: Callable[[], object]) -> None:
        calls = self._due.get(key)
        if calls is not None and fn in calls:
            calls.remove(fn)

    def _fire(self, key: int) -> None:
        for fn in self._due.pop(key, ()):
            try:
                fn()
            except Exception as exc:  # as the loop reports a failing timer; the rest go on
                asyncio.get_running_loop().call_exception_handler(
                    {"message": f"exception in a poll timer ({fn})", "exception": exc})


class _FastLoop:
    """One meter alone on our own Modbus TCP client, polled from callbacks: a timer at its
    due time sends the request, the reply's ``data_received`` decodes it and sends the
    next one, the last one's completes the reading, hands it to ``emit`` and sets the
    timer again. No task wakes, no future or coroutine is made per request or poll.

    It serves only the happy path: connected, the device up, every reply good. Anything
    else ends :meth:`run` and :meth:`Bus.run` takes over with the careful coroutine path
    (a failed request's poll is finished there through :class:`Resume`)."""

    def __init__(self, bus: Bus, dev: Device, emit: Emit, ready: Ready | None,
                 stop: asyncio.Event, ticker: Ticker):
        self.bus, self.dev, self.emit, self.ready, self.stop = bus, dev, emit, ready, stop
        self.loop = asyncio.get_running_loop()
        self.ticker = ticker
        self.exit: asyncio.Future[Any] | None = None
        self.timer: int | None = None  # the ticker's key of the next due time
        self._on_due = self._due  # one bound method for the ticker, made once
        self.waiting: asyncio.Future[None] | None = None  # the commit it waits for
        self.busy = False  # a request is out
        self.ts, self.mono, self.t0, self.index = 0.0, 0, 0.0, 0
        self.values: dict[str, float | None] = {}

    def usable(self) -> bool:
        tcp, dev = self.bus.link.tcp, self.dev
        return (tcp is not None and tcp.connected and not dev.offline
                and not dev.consecutive_failures)

    async def run(self) -> Resume | Awaitable[None] | None:
        """Poll until something needs the slow path; what it needs, or None (stopping,
        or no longer usable)."""
        self.exit = exit_ = self.loop.create_future()
        self._arm()
        try:
            return await exit_
        finally:
            self.exit = None
            if self.timer is not None:
                self.ticker.cancel(self.timer, self._on_due)
                self.timer = None
            if self.waiting is not None:
                self.waiting.remove_done_callback(self._committed)
                self.waiting = None

    def on_stop(self, _: object = None) -> None:
        if not self.busy:  # a poll under way finishes and is emitted first
            self._leave(None)

    def _leave(self, outcome: Resume | Awaitable[None] | None) -> None:
        if self.exit is not None and not self.exit.done():
            self.exit.set_result(outcome)

    def _arm(self) -> None:
        due = self.dev.next_due
        if due > time.monotonic():
            self.timer = self.ticker.at(due, self._on_due)
        else:  # due already (a slow device, a short interval): no trip through the loop
            self._due()

    def _due(self) -> None:
        self.timer = None
        if self.stop.is_set() or not self.usable():
            return self._leave(None)
        if self.ready is not None:
            pending = self.ready(self.dev.id)
            if pending is not None and not pending.done():
                self.waiting = pending
                pending.add_done_callback(self._committed)
                return None
        self.ts, self.mono = time.time(), time.monotonic_ns()
        self.t0 = time.perf_counter()
        self.values = {}
        self.index = 0
        self._send()
        return None

    def _committed(self, _: object) -> None:
        self.waiting = None
        if self.exit is not None and not self.exit.done():
            self._due()

    def _send(self) -> None:
        req = self.dev.requests[self.index]
        link = self.bus.link
        tcp = link.tcp
        link.requests += 1
        self.busy = True
        try:
            if tcp is None:
                raise LinkDown(link.last_error or "not connected")
            fc, address, count, unit = req.wire
            tcp.send(fc, address, count, unit, self.dev.spec.timeout_s, self._reply)
        except LinkDown as exc:
            self._reply(None, exc)

    def _reply(self, value: bytes | list[bool] | None, exc: Exception | None) -> None:
        self.busy = False
        if self.exit is None or self.exit.done():
            return  # left meanwhile (cancelled): nobody wants it
        try:
            if exc is not None or value is None:
                return self._leave(Resume(self.ts, self.mono, self.t0, self.values, self.index,
                                          exc or BadResponse("empty response")))
            dev = self.dev
            self.bus.link.silent = 0
            decoded = dev.requests[self.index].decode_checked(value)
            if self.index:
                self.values.update(decoded)
            else:  # a fresh dict per reply: the poll's values
                self.values = decoded
            self.index += 1
            if self.index < len(dev.requests):
                return self._send()
            values = self.values
            errors = ({n: "not a number" for n, v in values.items() if v is None}
                      if None in values.values() else {})
            result = self.bus._finish(dev, self.ts, self.mono, self.t0, values, errors, True)
            waiting = self.emit(result)
            if self.stop.is_set():
                return self._leave(waiting)
            self.bus.schedule(dev)
            if waiting is not None:
                return self._leave(waiting)
            self._arm()
        except Exception as exc:  # a bug: let Bus.run raise it
            if self.exit is not None and not self.exit.done():
                self.exit.set_exception(exc)
        return None


class Bus:
    """A link and the devices behind it, polled one at a time on their schedules."""

    fast_path = True  # a lone meter on our own TCP client is polled by _FastLoop

    def __init__(self, link: Link, devices: list[Device], polling: Polling):
        self.link = link
        self.devices = devices
        self.polling = polling

    async def run(self, emit: Emit, stop: asyncio.Event, ready: Ready | None = None,
                  ticker: Ticker | None = None) -> None:
        """Poll every device on its interval until ``stop`` is set. ``ready(meter)``, when
        given, is asked before each poll (the agent: is its previous reading on disk?); a
        device that is not ready waits, while the bus polls its other devices. ``ticker``:
        shared by the buses of a poller (their first due time, their timers)."""
        ticker = ticker or Ticker()
        now = ticker.start
        held: dict[str, float] = {}  # device -> when to ask ready() again
        for d in self.devices:
            d.next_due = now
        loop = asyncio.get_running_loop()
        nap: asyncio.Future[None] | None = None  # the current wait for a due time

        def wake(_: object = None) -> None:
            if nap is not None and not nap.done():
                nap.set_result(None)

        # one waiter for the whole run, and one future and timer per wait: cheaper than
        # asyncio.wait() per poll, which dominated the schedule's cost
        stopped = asyncio.ensure_future(stop.wait())
        stopped.add_done_callback(wake)
        try:
            single = self.devices[0] if len(self.devices) == 1 else None
            fast = (_FastLoop(self, single, emit, ready, stop, ticker)
                    if self.fast_path and single is not None and self.link.own_tcp else None)
            if fast is not None:
                stopped.add_done_callback(fast.on_stop)
            while not stop.is_set():
                if fast is not None and fast.usable():
                    outcome = await fast.run()
                    if isinstance(outcome, Resume):  # a request failed: finish carefully
                        result = await self.poll(fast.dev, resume=outcome)
                        waiting = emit(result)
                        if waiting is not None:
                            await waiting
                        if stop.is_set():
                            break
                        self.schedule(fast.dev)
                    elif outcome is not None:  # the reading waits for room
                        await outcome
                    continue
                if single is not None:  # one meter on the link (the usual TCP case)
                    dev = single
                    delay = dev.next_due - time.monotonic()
                else:
                    dev = min(self.devices,
                              key=lambda d: max(d.next_due, held.get(d.id, 0.0)))
                    delay = max(dev.next_due, held.get(dev.id, 0.0)) - time.monotonic()
                if delay > 0:
                    nap = loop.create_future()
                    timer = loop.call_later(delay, wake)
                    try:
                        await nap
                    finally:
                        timer.cancel()
                        nap = None
                    if stop.is_set():
                        break
                pending = ready(dev.id) if ready is not None else None
                if pending is not None:
                    if single is None:  # serve the others meanwhile
                        held[dev.id] = time.monotonic() + READY_RECHECK_S
                        continue
                    if not pending.done():  # wait for the commit (or stop), never cancel it
                        nap = loop.create_future()
                        pending.add_done_callback(wake)
                        try:
                            await nap
                        finally:
                            pending.remove_done_callback(wake)
                            nap = None
                        if stop.is_set():
                            break
                else:
                    held.pop(dev.id, None)
                result = await self.poll(dev)
                waiting = emit(result)
                if waiting is not None:
                    await waiting
                if stop.is_set():  # polled while stopping: still a reading, kept
                    break
                self.schedule(dev)
        finally:
            stopped.cancel()
            self.link.close()

    @staticmethod
    def schedule(dev: Device) -> None:
        """The device's next due time: one interval on, missed slots skipped (counted as
        overruns), not caught up in a burst."""
        interval = dev.spec.interval_s
        dev.next_due += interval
        late = time.monotonic() - dev.next_due
        if late >= 0:
            missed = math.floor(late / interval) + 1
            dev.next_due += missed * interval
            dev.overruns += missed

    async def poll(self, dev: Device, *, once: bool = False, resume: Resume | None = None
                   ) -> PollResult:
        """Poll one device now (or report why not); update its health. ``resume``: finish
        a poll the fast path (:class:`_FastLoop`) began, from the request that failed."""
        failed: Exception | None = None  # how the first request's first try went (resume)
        if resume is None:
            ts, mono = time.time(), time.monotonic_ns()
            now = mono / 1e9
            if dev.offline and not once and now < dev.next_probe:
                reason = f"offline; next probe in {dev.next_probe - now:.0f} s"
                return self._failed(dev, ts, mono, reason, None, count=False)
            if not (self.link.connected or await self.link.ensure()):
                reason = f"no connection to {self.link}: {self.link.last_error}"
                return self._failed(dev, ts, mono, reason, None, count=False)
            probing = dev.offline and not once
            retries = 0 if probing else dev.spec.retries
            t0 = time.perf_counter()
            values: dict[str, float | None] = {}
            errors: dict[str, str] = {}
            answered = False
            pending = list(dev.requests)
        else:  # the fast path polls only devices that are up: no probing
            ts, mono, t0, values, errors = resume.ts, resume.mono, resume.t0, resume.values, {}
            for name, value in values.items():
                if value is None:
                    errors[name] = "not a number"
            retries = dev.spec.retries
            answered = bool(values) or resume.index > 0
            pending = list(dev.requests[resume.index:])
            failed = resume.exc
        while pending:
            req = pending.pop(0)
            try:
                tried, failed = failed, None
                words = await self._read(req, dev, retries, tried)
            except ReplyError as exc:
                answered = True
                if exc.code == 2 and req.has_gaps:
                    parts = req.split()
                    i = dev.requests.index(req)
                    dev.requests[i : i + 1] = parts
                    pending[:0] = parts
                    log.info("split request meter=%s request=%s into=%d reason=%s",
                             dev.id, req.describe(), len(parts), exc)
                    continue
                for name in req.names:
                    errors[name] = str(exc)
                continue
            except NoAnswer as exc:
                for name in req.names + [n for r in pending for n in r.names]:
                    errors[name] = str(exc) if name in req.names else "skipped: no answer"
                self.link.silent += 1
                if (self.link.silent >= SILENT_REQUESTS_BEFORE_RECONNECT
                        and not isinstance(self.link.connection, RtuConnection)):
                    self.link.mark_down(f"{self.link.silent} requests without an answer")
                break
            except LinkDown as exc:
                self.link.mark_down(str(exc))
                for name in req.names + [n for r in pending for n in r.names]:
                    errors[name] = f"connection lost: {exc}"
                break
            except BadResponse as exc:
                answered = True
                for name in req.names:
                    errors[name] = f"bad response: {exc}"
                continue
            answered = True
            self.link.silent = 0
            for name, value in req.decode(words).items():
                values[name] = value
                if value is None:
                    errors[name] = "not a number"
        return self._finish(dev, ts, mono, t0, values, errors, answered)

    def _finish(self, dev: Device, ts: float, mono: int, t0: float,
                values: dict[str, float | None], errors: dict[str, str], answered: bool
                ) -> PollResult:
        """The reading of a poll whose requests are done; the device's health updated."""
        latency = time.perf_counter() - t0
        # a None value always has its error: without errors every value is good
        good = len(values) - list(values.values()).count(None) if errors else len(values)
        quality = (Quality.OK if good == dev.points else Quality.PARTIAL if good
                   else Quality.ERROR)
        dev.polls += 1
        if quality is Quality.ERROR:
            reason = next(iter(errors.values()), "no values")
            return self._failed(dev, ts, mono, reason, latency, errors=errors, count=not answered,
                                answered=answered)
        dev.latencies.append(latency)
        dev.last_ok = ts
        dev.last_error = "; ".join(sorted(set(errors.values())))[:200] if errors else ""
        if dev.offline or dev.consecutive_failures:
            log.info("device up meter=%s link=%s after_failures=%d", dev.id, self.link,
                     dev.consecutive_failures)
        dev.consecutive_failures, dev.offline, dev.offline_delay = 0, False, 0.0
        return PollResult(dev.id, ts, mono, values, errors, quality, latency, True)

    async def _read(self, req: ReadRequest, dev: Device, retries: int,
                    tried: Exception | None = None) -> Sequence[int] | Sequence[bool] | bytes:
        """One request with its retries (after no answer, backing off); ``tried``: how its
        first try already failed (the fast path's), the retries going on from there."""
        link = self.link
        for attempt in range(retries + 1):
            try:
                if tried is not None:
                    exc, tried = tried, None
                    raise exc
                return await link.read(req, dev.spec.timeout_s)
            except NoAnswer:
                if attempt == retries:
                    raise
                await asyncio.sleep(self.polling.retry_backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def _failed(
        self, dev: Device, ts: float, mono: int, reason: str, latency: float | None, *,
        errors: dict[str, str] | None = None, count: bool = True, answered: bool = False,
    ) -> PollResult:
        """An error reading; a poll that got no answer counts towards going offline."""
        dev.failures += 1
        dev.last_error = reason
        if count:
            dev.consecutive_failures += 1
            if dev.offline:
                dev.offline_delay = min(dev.offline_delay * 2, self.polling.offline_backoff_max_s)
                dev.next_probe = time.monotonic() + jittered(dev.offline_delay)
            elif dev.consecutive_failures >= self.polling.offline_after:
                dev.offline = True
                dev.offline_delay = min(max(2 * dev.spec.interval_s, 1.0),
                                        self.polling.offline_backoff_max_s)
                dev.next_probe = time.monotonic() + jittered(dev.offline_delay)
                log.warning("device offline meter=%s link=%s failures=%d probe_in_s=%.1f "
                            "error=%s", dev.id, self.link, dev.consecutive_failures,
                            dev.offline_delay, reason)
        return PollResult(dev.id, ts, mono, {}, errors or {"*": reason}, Quality.ERROR, latency,
                          answered)


# --------------------------------------------------------------------------- poller


class Poller:
    """Every bus of a site, polled concurrently."""

    def __init__(
        self,
        meters: Sequence[MeterSpec],
        polling: Polling,
        *,
        trace_pdu: Callable[[bool, Any], Any] | None = None,
    ):
        self.polling = polling
        groups: dict[tuple[str, ...], list[MeterSpec]] = {}
        for m in meters:
            groups.setdefault(m.meter.connection.key, []).append(m)
        self.buses: list[Bus] = []
        for specs in groups.values():
            link = Link(
                specs[0].meter.connection,
                timeout_s=max(s.timeout_s for s in specs),
                reconnect_delay_s=polling.reconnect_delay_s,
                reconnect_delay_max_s=polling.reconnect_delay_max_s,
                trace_pdu=trace_pdu,
            )
            self.buses.append(Bus(link, [Device(s, plan_device(s)) for s in specs], polling))
        if any(isinstance(b.link.connection, RtuConnection) for b in self.buses):
            check_serial_support()

    @property
    def devices(self) -> list[Device]:
        return [d for b in self.buses for d in b.devices]

    async def run(self, emit: Emit, stop: asyncio.Event, ready: Ready | None = None) -> None:
        """Poll until ``stop`` is set; one named task per bus (``ready``: see Bus.run)."""
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # we log what matters
        ticker = Ticker()  # every bus due at the same instants: one timer per instant
        async with TaskGroup() as tg:
            for bus in self.buses:
                tg.create_task(bus.run(emit, stop, ready, ticker), name=f"bus {bus.link}")

    async def poll_once(self) -> list[PollResult]:
        """Poll every device once (buses concurrently), then close the connections."""
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

        async def one_bus(bus: Bus) -> list[PollResult]:
            try:
                return [await bus.poll(d, once=True) for d in bus.devices]
            finally:
                bus.link.close()

        results = await asyncio.gather(*(one_bus(b) for b in self.buses))
        order = {d.id: i for i, d in enumerate(self.devices)}
        return sorted((r for rs in results for r in rs), key=lambda r: order[r.meter])


def check_serial_support() -> None:
    """RTU on a serial port needs pyserial; say so at start-up, not at the first poll."""
    import importlib.util

    from ..configfile import ConfigError, Problem

    if importlib.util.find_spec("serial") is None:
        raise ConfigError([Problem(
            "site", None, "meters.connection",
            "type rtu needs pyserial, which is not installed: pip install pyserial "
            "(or pymodbus[serial])",
        )])
