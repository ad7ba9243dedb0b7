"""The edge agent: poller -> outbox -> publisher, wired in one task group.

Sinks start first and sources last, and stop in the reverse order: the publisher connects
before anything is polled, and on shutdown polling stops first, every reading already
taken is committed, and the publisher drains the outbox (for at most ``drain_timeout_s``)
before saying goodbye. Readings travel as:

    Bus task -> PollResult -> pending list -> writer task (one SQLite transaction per
    batch, in the outbox's thread) -> outbox -> publisher task -> broker

A meter is polled again only once its previous reading is committed, so however slow the
disk, a crash loses at most one poll per meter: the one taken but not yet numbered.

The clock guard decides whether a reading's timestamp can be trusted; readings taken
before it can are held in the outbox and re-timed from the monotonic clock once it can.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import datetime as dt
import json
import logging
import math
import sqlite3
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__, contract, sdnotify
from .aio import TaskGroup, stop_task
from .configfile import ConfigError, Problem
from .contract import ClockState, Quality
from .modbus.poller import Poller, PollResult
from .outbox import Entry, Outbox
from .profiles import ResolvedPoint
from .publisher import Publisher
from .quantities import QUANTITIES
from .site import ClockSettings, MeterSpec, SiteSpec, broker_url, credentials

log = logging.getLogger("recp.agent")

QUEUE_SIZE = 10_000  # readings between pollers and the outbox writer (then polls wait)
WRITE_BATCH = 2_000  # readings per outbox transaction at most
WRITE_LINGER_S = 0.05  # wait this long for more readings before a commit (one fsync each)
TIME_ERROR = 5  # adjtimex(2): clock not synchronised
KERNEL_CHECK_S = 0.2  # a synchronised kernel clock is asked again at most this often
RATE_CHANGE = 0.01  # a time source's rate changed when it differs by more than 1 %
_libc: Any = None


def kernel_clock_synchronised() -> bool | None:
    """Whether the kernel says the clock is synchronised (Linux adjtimex); None: unknown."""
    global _libc
    if not sys.platform.startswith("linux"):
        return None
    try:
        if _libc is None:  # loading libc costs ~30 us: once, not per reading
            _libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(512)  # struct timex, modes = 0: read only
        state = _libc.adjtimex(buf)
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return bool(state != TIME_ERROR)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class DeviceClock:
    """Time from a Modbus time source: its last read value plus the monotonic time elapsed
    since, times its rate (a PLC's clock runs at 1; the virtual plant's at its speed)."""

    def __init__(self, meter: str, not_before: float):
        self.meter = meter
        self.not_before = not_before
        self.anchor: tuple[float, int, float] | None = None  # (clock s, monotonic ns, rate)
        self.noted_rate = 0.0  # the rate last logged (first read, start, stop or change)
        self.reads = 0
        self.failures = 0

    def observe(self, result: PollResult) -> bool:
        """Take the time from one poll of the time source; False if it gave none usable."""
        ms, rate = result.values.get("clock_unix_ms"), result.values.get("clock_rate")
        if ms is None or rate is None or not math.isfinite(rate) or rate < 0:
            self.failures += 1
            if self.failures == 1 or self.failures % 100 == 0:
                log.warning("clock device gave no time meter=%s failures=%d errors=%s "
                            "(extrapolating from its last read)", self.meter, self.failures,
                            json.dumps(result.errors)[:200])
            return False
        t = ms / 1000.0
        if t < self.not_before:
            self.failures += 1
            log.warning("clock device time %s is before clock.not_before: not used meter=%s",
                        contract.format_ts(max(t, 0.0)), self.meter)
            return False
        # the device answered somewhere within the poll: take the middle
        mono = result.mono_ns + int((result.latency_s or 0.0) * 5e8)
        if self.anchor is None:
            log.info("clock from device meter=%s time=%s rate=%g", self.meter,
                     contract.format_ts(t), rate)
            self.noted_rate = rate
        else:
            self._check(t, mono, rate)
        self.anchor = (t, mono, rate)
        self.reads += 1
        return True

    def _check(self, t: float, mono: int, rate: float) -> None:
        """Log a step of the source's time, and a start, stop or change of its rate (once
        each: the rate is compared with the last one logged, not the last one read).

        The time is expected where the last read, extrapolated, puts it. A clock whose
        rate changed between the two reads may have changed at any moment in between, so
        its time is expected between the extrapolations at the old and the new rate.
        Allowed beside that: half a wall second at the faster rate (when in its poll the
        device answered is not known)."""
        t0, mono0, old = self.anchor or (t, mono, rate)
        wall = (mono - mono0) / 1e9
        lo, hi = sorted((t0 + wall * old, t0 + wall * rate))
        off = t - hi if t > hi else t - lo if t < lo else 0.0
        if abs(off) > max(1.0, 0.5 * max(rate, old)):
            log.warning("clock device stepped by %.3f s meter=%s rate=%g", off, self.meter,
                        rate)
        noted = self.noted_rate
        if abs(rate - noted) > RATE_CHANGE * max(rate, noted):
            if noted == 0:
                log.info("clock device started: rate %g (was standing) meter=%s time=%s",
                         rate, self.meter, contract.format_ts(t))
            else:
                log.warning("clock device %s: rate %g, was %g meter=%s time=%s",
                            "stopped" if rate == 0 else "changed speed", rate, noted,
                            self.meter, contract.format_ts(t))
            self.noted_rate = rate

    def at(self, mono_ns: int) -> float | None:
        """The device's time at monotonic time ``mono_ns``; None before its first read."""
        if self.anchor is None:
            return None
        t, mono, rate = self.anchor
        return t + (mono_ns - mono) / 1e9 * rate

    @property
    def rate(self) -> float:
        return self.anchor[2] if self.anchor else 1.0


class ClockGuard:
    """Decides where timestamps come from and whether they can be trusted; notices clock
    steps. With ``clock.source: device`` the time comes from a :class:`DeviceClock`."""

    def __init__(self, settings: ClockSettings, kernel: Callable[[], bool | None] = (
            kernel_clock_synchronised)):
        self.settings = settings
        self.kernel = kernel
        self._kernel_ok = False
        self._kernel_next = 0.0  # monotonic time of the next question to the kernel
        self.not_before = dt.datetime.combine(
            settings.not_before, dt.time(), dt.timezone.utc).timestamp()
        self.device = (DeviceClock(settings.device, self.not_before)
                       if settings.source == "device" and settings.device else None)
        self._offset = time.time() - time.monotonic()
        self._last: bool | None = None

    def stamp(self, result: PollResult) -> tuple[PollResult, bool]:
        """``result`` with its timestamp from the clock source, and whether it is trusted."""
        if self.device is None:
            return result, self.synced()
        when = self.device.at(result.mono_ns)
        self._note(when is not None)
        if when is None:
            return result, False
        return dataclasses.replace(result, ts=when), True

    def now(self) -> tuple[float, int, float]:
        """(the source's time now, monotonic ns now, its rate): for re-timing held readings."""
        mono = time.monotonic_ns()
        if self.device is not None:
            when = self.device.at(mono)
            if when is not None:
                return when, mono, self.device.rate
        return time.time(), mono, 1.0

    def retimed(self, result: PollResult) -> PollResult:
        """A reading taken before the clock was trusted, re-timed from the monotonic clock
        now that it is (as held readings are when released)."""
        when, mono, rate = self.now()
        return dataclasses.replace(result, ts=when - (mono - result.mono_ns) / 1e9 * rate)

    def _note(self, ok: bool) -> None:
        if ok != self._last:
            what = (f"source=device meter={self.device.meter}" if self.device
                    else f"require={self.settings.require}")
            log.log(logging.INFO if ok else logging.WARNING,
                    "clock %s %s", "trusted" if ok else "NOT trusted: holding readings", what)
            self._last = ok

    def synced(self) -> bool:
        if self.device is not None:
            ok = self.device.anchor is not None
            self._note(ok)
            return ok
        now = time.time()
        offset = now - time.monotonic()
        if abs(offset - self._offset) > 1.0:
            log.warning("clock stepped by %.3f s (sequence numbers are unaffected)",
                        offset - self._offset)
        self._offset = offset
        if self.settings.require == "none":
            ok = True
        else:
            ok = now >= self.not_before
            if ok and self.settings.require == "ntp":
                # once synchronised, a reading a millisecond later gets the same answer;
                # until then ask every time, so held readings go out as soon as it is
                mono = time.monotonic()
                if not self._kernel_ok or mono >= self._kernel_next:
                    self._kernel_ok = self.kernel() is True
                    self._kernel_next = mono + KERNEL_CHECK_S
                ok = self._kernel_ok
        self._note(ok)
        return ok


def retime(payload: bytes, when: float | None) -> bytes:
    """A held reading's payload with its timestamp corrected (or flagged as unknown)."""
    data = json.loads(payload)
    if when is None:
        data["clock"] = ClockState.UNSYNCED.value
    else:
        data["ts"] = contract.format_ts(when)
        data["clock"] = ClockState.CORRECTED.value
    return contract.dumps(data)


class Agent:
    """One site's agent. ``await Agent(spec).run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        spec: SiteSpec,
        *,
        outbox_path: Path | None = None,
        broker: str | None = None,
        drain_timeout_s: float = 10.0,
        trace_pdu: Callable[[bool, Any], Any] | None = None,
        clock: ClockGuard | None = None,
    ):
        self.spec = spec
        self.site = spec.site.site
        self.mqtt = broker_url(spec.site.mqtt, broker)
        self.credentials = credentials(self.mqtt, Path(spec.file).resolve().parent)
        self.outbox_path = outbox_path or spec.outbox_path
        self.drain_timeout_s = drain_timeout_s
        self.poller = Poller(spec.meters, spec.site.polling, trace_pdu=trace_pdu)
        self.clock = clock or ClockGuard(spec.site.clock)
        self.meters: dict[str, MeterSpec] = {m.id: m for m in spec.published}
        self.clock_meter = spec.clock_meter.id if spec.clock_meter else None
        self.outbox: Outbox | None = None
        self.publisher: Publisher | None = None
        # readings not yet handed to the outbox, each with the commit its meter waits for
        # (one future per batch of readings, not per reading)
        self._pending: list[tuple[PollResult, bool, asyncio.Future[None]]] = []
        self._batch_saved: asyncio.Future[None] | None = None  # the next batch's commit
        self._writer_wake: asyncio.Future[None] | None = None  # the writer's current nap
        self._closing = False  # no more readings: commit what is pending and end
        self._unsaved: dict[str, asyncio.Future[None]] = {}  # meter -> its last reading's commit
        self._hurry = False  # a meter waits for its commit: do not linger
        self.poll_waits = 0  # polls that waited for the meter's previous commit
        self._waited: dict[str, asyncio.Future[None]] = {}  # the commit each one waited for
        # (meter, stream) -> (topic, its payload renderer)
        self._renderers: dict[tuple[str, str], tuple[str, Callable[..., bytes]]] = {}
        self.started = time.time()
        self.readings = 0
        self.written = 0
        self.commits = 0  # outbox transactions of readings
        self.polling = asyncio.Event()

    # -- messages -----------------------------------------------------------------------
    def _render(self, result: PollResult, trusted: bool | None, stream: str
                ) -> Callable[[int], tuple[str, bytes]]:
        """The reading's message once numbered; ``trusted`` None: re-timed (corrected)."""
        key = (result.meter, stream)
        found = self._renderers.get(key)
        if found is None:
            meter = self.meters[result.meter]
            found = self._renderers[key] = (
                contract.reading_topic(self.site, meter.id),
                contract.ReadingRenderer(site=self.site, meter=meter.id,
                                         resource=meter.profile.resource.value,
                                         stream=stream).render)
        topic, render_payload = found
        clock = (ClockState.CORRECTED if trusted is None
                 else ClockState.SYNCED if trusted else ClockState.UNSYNCED)
        latency_ms = None if result.latency_s is None else result.latency_s * 1000

        def render(seq: int) -> tuple[str, bytes]:
            return topic, render_payload(
                seq=seq, ts=result.ts, quality=result.quality, values=result.values,
                errors=result.errors, clock=clock, latency_ms=latency_ms)

        return render

    def meta_messages(self) -> list[tuple[str, bytes]]:
        """Retained metadata of every meter, for discovery by consumers."""
        out = []
        for m in self.spec.published:
            points = {}
            for p in m.points:
                q = QUANTITIES[p.name]
                points[p.name] = {"unit": q.unit, "kind": q.kind.value,
                                  "description": q.description, "rollover": p.rollover}
            payload = {
                "v": contract.VERSION, "site": self.site, "meter": m.id, "name": m.meter.name,
                "resource": m.profile.resource.value, "profile": m.profile_name,
                "manufacturer": m.profile.manufacturer, "model": m.profile.model,
                "interval_s": m.interval_s, "points": points, "tags": m.tags(),
            }
            out.append((contract.meta_topic(self.site, m.id), contract.dumps(payload)))
        return out

    async def health(self) -> dict[str, Any]:
        assert self.outbox is not None and self.publisher is not None
        stats = await self.outbox.call(self.outbox.stats)
        now = time.time()
        devices = {}
        for d in self.poller.devices:
            h = d.health()
            h["last_ok"] = contract.format_ts(h["last_ok"]) if h["last_ok"] else None
            devices[d.id] = h
        return {
            "v": contract.VERSION, "site": self.site, "ts": contract.format_ts(now),
            "uptime_s": round(now - self.started, 3),
            "clock": (ClockState.SYNCED if self.clock.synced() else ClockState.UNSYNCED).value,
            "outbox": {
                "depth": stats.depth, "held": stats.held, "cap": stats.cap,
                "dropped": stats.dropped,
                "oldest_age_s": round(now - stats.oldest_created, 3)
                if stats.oldest_created else None,
            },
            "mqtt": self.publisher.stats.as_dict() | {"readings": self.readings,
                                                      "written": self.written},
            "devices": devices,
        }

    # -- tasks --------------------------------------------------------------------------
    def _emit(self, result: PollResult) -> asyncio.Future[None] | None:
        """Take a poll's reading (called by the poller, in the loop); a future to await
        before polling on when the writer is QUEUE_SIZE readings behind."""
        self.readings += 1
        self.polling.set()  # the watchdog pings only while polls keep coming
        if result.quality is not Quality.OK:
            log.info("poll meter=%s quality=%s errors=%s", result.meter, result.quality.value,
                     json.dumps(result.errors)[:300])
        if result.meter == self.clock_meter and self.clock.device is not None:
            self.clock.device.observe(result)
            if result.meter not in self.meters:  # the time source is not published
                return None
        saved = self.enqueue(*self.clock.stamp(result))
        if len(self._pending) >= QUEUE_SIZE:  # the disk cannot keep up: polls wait
            self._kick_writer()
            return asyncio.shield(saved)
        return None

    def enqueue(self, result: PollResult, trusted: bool) -> asyncio.Future[None]:
        """Hand a (stamped) reading to the writer; the future is done once it is committed."""
        saved = self._batch_saved
        if saved is None or len(self._pending) % WRITE_BATCH == 0:
            saved = self._batch_saved = asyncio.get_running_loop().create_future()
        self._unsaved[result.meter] = saved
        self._pending.append((result, trusted, saved))
        if len(self._pending) >= len(self.meters):
            # every meter has a reading waiting (a meter is polled again only once its
            # last one is committed): nothing more can come, commit without lingering
            self._hurry = True
            self._kick_writer()
        elif len(self._pending) == 1:
            # the first: the writer may nap until one arrives (while it lingers there are
            # others before it, while it commits nobody naps and the kick does nothing)
            self._kick_writer()
        return saved

    def _kick_writer(self) -> None:
        wake = self._writer_wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _saved(self, meter: str) -> asyncio.Future[None] | None:
        """None once the meter's previous reading is committed (or failed to be), else its
        commit to wait for: at most one poll per meter is ever only in memory."""
        saved = self._unsaved.get(meter)
        if saved is None or saved.done():
            return None
        if self._waited.get(meter) is not saved:
            self._waited[meter] = saved
            self.poll_waits += 1
        self._hurry = True
        self._kick_writer()
        return saved

    async def _nap(self, timeout_s: float | None) -> None:
        """Until kicked (a reading arrives, a meter waits, stopping) or ``timeout_s``."""
        loop = asyncio.get_running_loop()
        self._writer_wake = wake = loop.create_future()
        timer = None if timeout_s is None else loop.call_later(timeout_s, _resolve, wake)
        try:
            await wake
        finally:
            self._writer_wake = None
            if timer is not None:
                timer.cancel()

    def close_writer(self) -> None:
        """No more readings: the writer commits what is pending and ends."""
        self._closing = True
        self._kick_writer()

    async def _writer(self) -> None:
        """Commit pending readings in batches until :meth:`close_writer` and nothing left."""
        while True:
            if not self._pending:
                if self._closing:
                    return
                await self._nap(None)  # until the first reading (enqueue) or closing
                continue
            if not self._hurry and not self._closing:
                # readings of a poll cycle arrive within milliseconds: commit them together,
                # unless a meter is already waiting to be polled again
                await self._nap(WRITE_LINGER_S)
            self._hurry = False
            batch = self._pending[:WRITE_BATCH]
            del self._pending[:WRITE_BATCH]
            if not self._pending:
                self._batch_saved = None
            try:
                await self._commit([(r, ok) for r, ok, _ in batch])
            finally:
                # a future serves one run of readings in a row, and the batch is a prefix:
                # only its last run can go on in what is still pending
                carry = self._pending[0][2] if self._pending else None
                for saved in dict.fromkeys(f for *_, f in batch):
                    if saved is not carry and not saved.done():
                        saved.set_result(None)

    async def _commit(self, batch: list[tuple[PollResult, bool]]) -> None:
        """Number and store one batch of readings in one SQLite transaction."""
        assert self.outbox is not None and self.publisher is not None
        box, stream = self.outbox, self.outbox.stream
        states: list[bool | None] = [ok for _, ok in batch]
        if any(states) and not all(states):
            # the clock became trusted within this batch: re-time the readings taken
            # just before now, or they would be held behind newer ones the publisher
            # has already passed
            batch = [(r if ok else self.clock.retimed(r), ok) for r, ok in batch]
            states = [True if ok else None for ok in states]
        entries = [Entry(r.meter, self._render(r, ok, stream), held=ok is False,
                         mono_ns=r.mono_ns) for (r, _), ok in zip(batch, states, strict=True)]
        release = all(ok is not False for ok in states) and box.held > 0

        def commit(entries: list[Entry] = entries, release: bool = release) -> int:
            if release:  # same thread call, so held readings go out before newer ones
                n = box.release(retime, *self.clock.now())
                if n:  # 0: it failed (logged by the outbox) and is tried again next commit
                    log.info("clock trusted: released held readings count=%d", n)
            return len(box.append(entries))

        self.written += await box.call(commit)
        self.commits += 1
        self.publisher.wake.set()

    async def _health(self) -> None:
        assert self.publisher is not None
        topic = contract.health_topic(self.site)
        while True:
            await asyncio.sleep(self.mqtt.health_interval_s)
            h = await self.health()
            states = [d["state"] for d in h["devices"].values()]
            log.info("health devices_up=%d devices_down=%d outbox_depth=%d dropped=%d "
                     "published=%d mqtt_connected=%s", states.count("up"),
                     len(states) - states.count("up"), h["outbox"]["depth"],
                     sum(h["outbox"]["dropped"].values()), h["mqtt"]["published"],
                     h["mqtt"]["connected"])
            await self.publisher.publish_now(topic, contract.dumps(h))

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down in order (see the module docstring)."""
        cfg = self.spec.site.outbox
        try:
            self.outbox = await asyncio.to_thread(
                Outbox, self.outbox_path, cap=cfg.cap, synchronous=cfg.synchronous)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError([Problem(self.spec.file, None, "outbox.path",
                                       f"cannot open {self.outbox_path}: {exc}")]) from None
        self.publisher = Publisher(
            self.mqtt, self.site, self.outbox, self.credentials,
            retained=self.meta_messages, agent=f"recp-monitor {__version__}",
            confirm_wait_s=self.drain_timeout_s / 2)
        log.info("agent starting site=%s meters=%d buses=%d outbox=%s depth=%d stream=%s "
                 "loop=%s", self.site, len(self.meters), len(self.poller.buses),
                 self.outbox_path, self.outbox.depth, self.outbox.stream,
                 type(asyncio.get_running_loop()).__module__.split(".")[0])
        poller_stop, publisher_stop = asyncio.Event(), asyncio.Event()
        try:
            async with TaskGroup() as tg:
                publisher = tg.create_task(self.publisher.run(publisher_stop), name="publisher")
                writer = tg.create_task(self._writer(), name="outbox writer")
                health = tg.create_task(self._health(), name="health")
                poller = tg.create_task(self.poller.run(self._emit, poller_stop, self._saved),
                                        name="poller")
                dog = tg.create_task(sdnotify.watchdog(self.polling), name="watchdog")
                sdnotify.notify("READY=1", f"STATUS=polling {len(self.meters)} meters")
                await stop.wait()
                sdnotify.notify("STOPPING=1", "STATUS=draining the outbox")
                dog.cancel()
                log.info("agent stopping: polling stops, outbox drains")
                poller_stop.set()  # a poll in progress finishes (bounded by its timeouts)
                longest = max(m.timeout_s * (m.retries + 1) for m in self.spec.meters)
                await stop_task(poller, longest * len(self.spec.meters) + 5)
                self.close_writer()
                await writer
                publisher_stop.set()
                self.publisher.wake.set()
                await stop_task(publisher, self.drain_timeout_s)
                if self.outbox.depth:
                    log.warning("stopped before the outbox drained; outbox_depth=%d kept on "
                                "disk for the next start", self.outbox.depth)
                health.cancel()
        finally:
            depth = self.outbox.depth
            await self.outbox.call(self.outbox.close)
            log.info("agent stopped readings=%d written=%d commits=%d published=%d "
                     "outbox_depth=%d poll_waits=%d", self.readings, self.written, self.commits,
                     self.publisher.stats.published, depth, self.poll_waits)


async def poll_once(spec: SiteSpec) -> list[PollResult]:
    """Poll every meter once (the commissioning check); no broker, no outbox."""
    return await Poller(spec.meters, spec.site.polling).poll_once()


def _f32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def shown(value: float, point: ResolvedPoint) -> str:
    """A value as the commissioning table prints it: a float32 register with the digits it
    holds (0.95, not 0.949999988079), scale and offset applied; anything else to 12."""
    if point.type != "float32":
        return f"{value:.12g}"
    try:
        raw = _f32((value - point.offset) / point.scale)
        for digits in range(1, 10):
            if _f32(float(f"{raw:.{digits}g}")) == raw:
                return f"{value:.{digits}g}"
    except (OverflowError, ValueError):  # not a float32 after all (inf, NaN)
        pass
    return f"{value:.12g}"


def format_once(spec: SiteSpec, results: list[PollResult]) -> str:
    """The commissioning table: one block per meter, one line per value."""
    meters = {m.id: m for m in spec.meters}
    lines = []
    for r in results:
        m = meters[r.meter]
        latency = f"{r.latency_s * 1000:.1f} ms" if r.latency_s is not None else "-"
        lines.append(f"{m.id}  {m.profile_name} at {m.meter.connection} unit {m.meter.unit_id}"
                     f"  {r.quality.value.upper()}  {latency}")
        for p in m.points:
            unit = QUANTITIES[p.name].unit
            value = r.values.get(p.name)
            text = "-" if value is None else shown(value, p)
            err = r.errors.get(p.name, "")
            lines.append(f"    {p.name:28s} {text:>16s} {unit:8s} {err}".rstrip())
        if "*" in r.errors:
            lines.append(f"    error: {r.errors['*']}")
        ms, rate = r.values.get("clock_unix_ms"), r.values.get("clock_rate")
        if ms is not None and rate is not None:
            role = " (the site's clock source)" if spec.clock_meter is m else ""
            lines.append(f"    = {contract.format_ts(ms / 1000)}, {rate:g} s per second{role}")
    ok = sum(r.quality is Quality.OK for r in results)
    lines.append(f"{ok} of {len(results)} meters answered every point")
    return "\n".join(lines)
