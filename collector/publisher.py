"""Publish the outbox to an MQTT broker (aiomqtt 2.x, MQTT 5, QoS 1), reconnecting forever.

aiomqtt neither reconnects nor lets a publish wait for a connection, so this module owns
the connection loop: connect (with the last will set), publish the birth and the retained
meter metadata, then drain the outbox oldest first, a batch at a time, with at most
``max_inflight`` unacknowledged messages and at most ``max_rate_per_s`` messages a second.
A reading leaves the outbox only when its PUBACK has arrived with a success reason code
(or, with ``confirm: consumer``, when the consumer's retained high-water mark has passed
it). Any failure of the connection ends the session; the next one starts after a capped,
jittered backoff and sends again whatever is still in the outbox, so delivery is
at-least-once and a repeat carries the same ``(stream, seq)``. A failed outbox deletion
(disk full) is no such failure: logged once per streak, the readings stay and their
deletion is tried again (PUBACKed ones every FLUSH_S, confirmed ones with the next ack).
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import ssl
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from . import contract
from .aio import TaskGroup, wait_event
from .outbox import Outbox, Row
from .packer import Message, Packer
from .site import Broker, Credentials, Mqtt

if sys.version_info < (3, 11):  # pragma: no cover - exercised on Python 3.10
    from exceptiongroup import BaseExceptionGroup

log = logging.getLogger("recp.publisher")

FLUSH_S = 0.5  # acknowledged readings are deleted from the outbox at least this often
PACK_ROWS_MAX = 20_000  # rows read ahead at most when packing (a few MB)


class Rejected(Exception):
    """The broker answered a publish with a failure reason code."""


class _AckingClient(aiomqtt.Client):
    """aiomqtt client with a cheap QoS 1 publish that resolves on PUBACK with its reason code.

    aiomqtt 2.x's ``publish`` ignores the PUBACK reason code, so a broker refusing a
    message (e.g. "not authorized") would look like a success and the reading would be
    deleted; it also costs a task and a scan of all pending calls per message. Here each
    publish is one future keyed by message id, failed at once when the connection drops.
    The broker's Receive Maximum from the CONNACK is kept so we never exceed it.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._acks: dict[int, asyncio.Future[Any]] = {}
        self.receive_maximum: int | None = None
        self.progress: asyncio.Future[bool] | None = None  # resolved by the next PUBACK

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any = None) -> None:
        value = getattr(properties, "ReceiveMaximum", None)
        self.receive_maximum = int(value) if value else None
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        fut = self._acks.pop(mid, None)  # called in the event loop (socket reader callback)
        if fut is not None and not fut.done():
            fut.set_result(reason_code)
        if self.progress is not None and not self.progress.done():
            self.progress.set_result(True)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any = None) -> None:
        self._loop.call_soon_threadsafe(self._fail_pending, f"disconnected ({reason_code})")
        super()._on_disconnect(client, userdata, flags, reason_code, properties)

    def _on_socket_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        """aiomqtt's, but the socket's descriptor is taken when the loop gets to it, not
        when paho asks: a broker that goes away closes the socket in between, and aiomqtt's
        ``loop.add_writer(stale_fd)`` then logged an ``OSError: Bad file descriptor``
        traceback under uvloop (or watched whatever socket reused the number)."""

        def on_writable() -> None:
            try:
                client.loop_write()
            except Exception as exc:  # a broken pipe: the connection is lost
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def register() -> None:
            fd = sock.fileno()
            if fd < 0:
                log.debug("mqtt socket closed before its write was scheduled")
                return  # paho has closed it; the session ends through on_disconnect
            try:
                self._loop.add_writer(fd, on_writable)
            except (OSError, ValueError) as exc:
                log.warning("mqtt connection lost: its socket cannot be written (%s)", exc)
                if not self._disconnected.done():
                    self._disconnected.set_exception(aiomqtt.MqttError(
                        f"socket cannot be written: {exc}"))

        # paho may call this from the thread that runs connect(): hand it to the loop
        self._loop.call_soon_threadsafe(register)

    def _fail_pending(self, why: str) -> None:
        acks, self._acks = self._acks, {}
        for fut in acks.values():
            if not fut.done():
                fut.set_exception(aiomqtt.MqttError(why))
        if self.progress is not None and not self.progress.done():
            self.progress.set_result(True)

    async def wait_progress(self, timeout: float) -> bool:
        """Wait until a PUBACK (or a disconnect) arrives; False after ``timeout`` seconds.

        Cheaper than ``asyncio.wait`` over every outstanding publish, which registers and
        removes a callback on each of them every time one completes."""
        loop = self._loop
        self.progress = waiter = loop.create_future()

        def expire() -> None:
            if not waiter.done():
                waiter.set_result(False)

        timer = loop.call_later(timeout, expire)
        try:
            return await waiter
        finally:
            timer.cancel()
            self.progress = None

    def publish_future(self, topic: str, payload: bytes, *, retain: bool = False
                       ) -> asyncio.Future[Any]:
        """Send at QoS 1 now; the future gets the PUBACK reason code."""
        info = self._client.publish(topic, payload, 1, retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "could not publish")
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._acks[info.mid] = fut
        return fut

    async def publish_acked(self, topic: str, payload: bytes, *, retain: bool = False,
                            timeout: float) -> None:
        """Publish at QoS 1 and wait for its PUBACK; raise Rejected or aiomqtt.MqttError."""
        fut = self.publish_future(topic, payload, retain=retain)
        await asyncio.wait({fut}, timeout=timeout)
        if not fut.done():
            fut.cancel()
            raise aiomqtt.MqttError(f"no PUBACK within {timeout:g} s")
        check_puback(topic, fut.result())


def check_puback(topic: str, code: Any) -> None:
    """Raise Rejected for a failure reason code (0x80 and above); 0x10 "no subscribers" is ok."""
    if code is not None and getattr(code, "is_failure", False):
        raise Rejected(f"{topic}: {code}")


def tls_context(mqtt: Broker) -> ssl.SSLContext | None:
    """An SSL context that verifies the broker's certificate (unless told not to)."""
    if not mqtt.use_tls:
        return None
    tls = mqtt.tls
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls and tls.ca_file else None)
    if tls and tls.cert_file:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    if tls and tls.insecure_skip_verify:
        log.warning("TLS certificate verification is OFF (insecure_skip_verify): anyone on "
                    "the path can read and alter readings")
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def persistent_session(protocol: str, expiry_s: int, receive_maximum: int | None = None
                       ) -> dict[str, Any]:
    """aiomqtt.Client arguments for a session the broker keeps while we are away.

    MQTT 5: clean_start False and a session expiry; 3.1.1 (brokers without MQTT 5, such as
    the demo's amqtt): clean_session False, which the broker keeps until it restarts.
    """
    if protocol == "3.1.1":
        return {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": False}
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = expiry_s
    if receive_maximum is not None:
        props.ReceiveMaximum = receive_maximum
    return {"protocol": aiomqtt.ProtocolVersion.V5, "clean_start": False, "properties": props}


@dataclass
class PublisherStats:
    connected: bool = False
    sessions: int = 0
    published: int = 0  # readings the broker acknowledged
    messages: int = 0  # their messages (fewer with mqtt.batch)
    rejected: int = 0
    failures: int = 0
    last_error: str = ""
    connected_since: float | None = None
    publish_seconds: float = 0.0
    batches: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "connected": self.connected, "sessions": self.sessions,
            "published": self.published, "messages": self.messages,
            "rejected": self.rejected,
            "failures": self.failures, "last_error": self.last_error,
        }


class Publisher:
    """The outbox's way to the broker (see the module docstring)."""

    def __init__(
        self,
        mqtt: Mqtt,
        site: str,
        outbox: Outbox,
        credentials: Credentials,
        *,
        retained: Callable[[], Sequence[tuple[str, bytes]]] = lambda: (),
        agent: str = "",
        confirm_wait_s: float = 5.0,
    ):
        self.mqtt = mqtt
        self.site = site
        self.outbox = outbox
        self.credentials = credentials
        self.retained = retained  # (topic, payload) published retained on every connect
        self.agent = agent
        self.confirm_wait_s = confirm_wait_s  # on stop, wait this long for consumer acks
        self.client_id = mqtt.client_id or f"recp-agent-{site}"
        self.wake = asyncio.Event()  # set when new readings are in the outbox
        self.stats = PublisherStats()
        self.connected_event = asyncio.Event()
        self._client: _AckingClient | None = None
        self._tls = tls_context(mqtt)

    def _status(self, state: contract.AgentState, reason: str) -> bytes:
        return contract.dumps({
            "v": contract.VERSION, "site": self.site, "state": state.value,
            "ts": contract.format_ts(time.time()), "agent": self.agent,
            "stream": self.outbox.stream, "reason": reason,
        })

    def _make_client(self) -> _AckingClient:
        m = self.mqtt
        session = persistent_session(m.protocol, m.session_expiry_s)
        will = aiomqtt.Will(
            contract.status_topic(self.site),
            self._status(contract.AgentState.OFFLINE, "connection lost (last will)"),
            qos=1, retain=True,
        )
        return _AckingClient(
            m.host, m.port,
            username=self.credentials.username, password=self.credentials.password,
            identifier=self.client_id, will=will, keepalive=m.keepalive_s, **session,
            timeout=m.connect_timeout_s, tls_context=self._tls,
            tls_insecure=bool(m.tls and m.tls.insecure_skip_verify) or None,
            max_inflight_messages=m.max_inflight,
            logger=logging.getLogger("recp.publisher.paho"),
        )

    # -- the loop -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Keep a session up and drain the outbox until ``stop`` is set and it is drained
        (or the broker is away when stopping: what is left stays in the outbox)."""
        delay = 0.0
        while True:
            try:
                await self._session(stop)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the session failed: MqttError, OSError, Rejected, ...
                self.stats.failures += 1
                self.stats.last_error = _describe(exc)
                if self.stats.connected:
                    log.warning("mqtt disconnected error=%s outbox_depth=%d",
                                self.stats.last_error, self.outbox.depth)
                else:
                    log.warning("mqtt connect failed broker=%s error=%s", self.mqtt.url,
                                self.stats.last_error)
            finally:
                self._client = None
                self.stats.connected = False
                self.connected_event.clear()
            if stop.is_set():
                log.warning("stopping without a broker: outbox_depth=%d kept on disk",
                            self.outbox.depth)
                return
            delay = min(max(2 * delay, self.mqtt.reconnect_delay_s),
                        self.mqtt.reconnect_delay_max_s)
            wait = delay * (0.5 + random.random() / 2)
            log.info("mqtt reconnect_in_s=%.2f", wait)
            await wait_event(stop, wait)

    async def _session(self, stop: asyncio.Event) -> None:
        client = self._make_client()
        async with client:
            self._client = client
            self.stats.connected = True
            self.stats.sessions += 1
            self.stats.connected_since = time.time()
            inflight = min(self.mqtt.max_inflight, client.receive_maximum or 65535)
            log.info("mqtt connected broker=%s client_id=%s session=%d inflight=%d "
                     "outbox_depth=%d", self.mqtt.url, self.client_id, self.stats.sessions,
                     inflight, self.outbox.depth)
            timeout = self.mqtt.publish_timeout_s
            await client.publish_acked(
                contract.status_topic(self.site),
                self._status(contract.AgentState.ONLINE, "connected"), retain=True,
                timeout=timeout)
            for topic, payload in self.retained():
                await client.publish_acked(topic, payload, retain=True, timeout=timeout)
            if self.mqtt.confirm == "consumer":
                await client.subscribe(contract.subscription(self.site, "ack"), qos=1,
                                       timeout=timeout)
            self.connected_event.set()
            async with TaskGroup() as tg:
                watcher = tg.create_task(self._watch(client), name="mqtt watch")
                holes = tg.create_task(self._announce_holes(client), name="mqtt holes")
                await self._send(client, stop, inflight)
                holes.cancel()
                await client.publish_acked(
                    contract.status_topic(self.site),
                    self._status(contract.AgentState.OFFLINE, "stopped"), retain=True,
                    timeout=timeout)
                watcher.cancel()
            log.info("mqtt leaving published=%d outbox_depth=%d", self.stats.published,
                     self.outbox.depth)

    async def _announce_holes(self, client: _AckingClient) -> None:
        """Tell consumers, retained on ``.../{meter}/dropped``, which readings the outbox
        cap dropped (at connect, then whenever it drops more), so they stop waiting."""
        seen = -1
        while True:
            changed = self.outbox.holes_changed
            if changed != seen:
                holes = await self.outbox.call(self.outbox.holes)
                for h in holes:
                    payload = contract.dumps({
                        "v": contract.VERSION, "site": self.site, "meter": h.meter,
                        "stream": self.outbox.stream, "through_seq": h.through_seq,
                        "count": h.count, "reason": h.reason, "ts": contract.format_ts(h.at),
                    })  # fmt: skip
                    await client.publish_acked(contract.dropped_topic(self.site, h.meter),
                                               payload, retain=True,
                                               timeout=self.mqtt.publish_timeout_s)
                if holes:
                    log.info("announced dropped readings meters=%d", len(holes))
                seen = changed
            await asyncio.sleep(FLUSH_S)

    async def _watch(self, client: _AckingClient) -> None:
        """Notice a lost connection (raises) and apply consumers' acknowledgements."""
        confirm_failing = False  # the last confirmation's delete failed (logged once)
        async for message in client.messages:
            if self.mqtt.confirm != "consumer" or not str(message.topic).endswith("/ack"):
                continue
            meter = str(message.topic).split("/")[-2]
            raw = message.payload
            try:
                if not isinstance(raw, (bytes, bytearray, str)):
                    raise ValueError(f"payload is {type(raw).__name__}, not JSON")
                ack = contract.Ack.model_validate_json(raw)
            except ValueError as exc:
                log.warning("bad ack topic=%s error=%s", message.topic, exc)
                continue
            try:
                n = await self.outbox.call(self.outbox.confirm, meter, ack.stream, ack.seq)
            except sqlite3.Error as exc:  # disk full: kept; a later ack confirms them too
                if not confirm_failing:
                    log.error("outbox delete failed (consumer confirmation) meter=%s "
                              "error=%s (the readings stay in the outbox; logged again "
                              "once a confirmation works)", meter, exc)
                confirm_failing = True
                continue
            if confirm_failing:
                log.warning("outbox delete works again (consumer confirmation)")
                confirm_failing = False
            if n:
                log.debug("confirmed meter=%s seq=%d deleted=%d", meter, ack.seq, n)

    async def _send(self, client: _AckingClient, stop: asyncio.Event, inflight: int) -> None:
        """Drain the outbox in commit order until stopping with nothing left to send.

        A sliding window of at most ``inflight`` unacknowledged messages, each carrying one
        reading or (``mqtt.batch``) several of one meter; acknowledged readings are deleted
        a batch at a time (and on the way out, whatever happens). The outbox is read again
        only when the writer has committed something new (``wake``) or the last read was a
        full page, not on every PUBACK.
        """
        cursor = 0  # id of the last row taken from the outbox in this session
        batch = self.mqtt.batch
        packer = Packer(self.site, batch.max_readings, batch.max_wait_ms / 1000)
        page = max(self.mqtt.read_ahead, batch.max_readings)
        # rows read ahead at most; packing needs room for a full pack of every meter
        limit = page if not batch.enabled else max(page, min(100 * batch.max_readings,
                                                                 PACK_ROWS_MAX))
        more = True  # the outbox may hold more than was read (at start: unknown)
        ready: deque[Message] = deque()
        outstanding: dict[asyncio.Future[Any], Message] = {}
        acked: list[int] = []
        timeout = self.mqtt.publish_timeout_s
        delete = self.mqtt.confirm == "puback"
        rate = self.mqtt.max_rate_per_s
        burst_start, burst_sent = time.monotonic(), 0
        last_flush = time.monotonic()
        stats = self.stats
        # the outbox is read ahead and cleaned up in worker threads while publishing goes on
        peeking: asyncio.Future[list[Row]] | None = None
        deleting: asyncio.Future[int] | None = None
        deleting_ids: list[int] = []
        delete_failing = False  # the last deletion failed; tried again from retry_at on
        retry_at = 0.0

        async def settle() -> None:
            """Await the deletion in flight. One that fails (disk full, I/O error) deletes
            nothing; its readings are published already, so the session goes on and they
            are deleted with a later flush (a reconnect would only send them again)."""
            nonlocal deleting, delete_failing, retry_at
            assert deleting is not None
            fut, deleting = deleting, None
            try:
                await fut
            except sqlite3.Error as exc:
                acked.extend(deleting_ids)
                retry_at = time.monotonic() + FLUSH_S
                if not delete_failing:  # once per streak, not every FLUSH_S
                    log.error("outbox delete failed count=%d error=%s (the readings stay in "
                              "the outbox, published already; deleting them is tried again, "
                              "logged again once it works)", len(deleting_ids), exc)
                delete_failing = True
                return
            if delete_failing:
                log.warning("outbox delete works again count=%d", len(deleting_ids))
                delete_failing = False

        async def flush(wait: bool = False) -> None:
            nonlocal last_flush, deleting, deleting_ids
            last_flush = time.monotonic()
            if deleting is not None and (wait or deleting.done()):
                await settle()
            if acked and delete and deleting is None and (
                    wait or not delete_failing or time.monotonic() >= retry_at):
                deleting_ids = list(acked)
                acked.clear()
                deleting = self.outbox.call(self.outbox.delete, deleting_ids)
                if wait:
                    await settle()
            elif not delete:
                acked.clear()

        try:
            while True:
                if (peeking is None and len(packer) + len(ready) < limit
                        and (more or self.wake.is_set())):
                    self.wake.clear()
                    # the latest commits straight from memory when the cursor has caught up
                    # with them (no thread, no query); else from the database
                    fresh = self.outbox.peek_fresh(cursor, page)
                    if fresh is None:
                        peeking = self.outbox.call(self.outbox.peek, cursor, page)
                    else:
                        more = len(fresh) == page
                        if fresh:
                            packer.add(fresh)
                            cursor = fresh[-1].id
                if peeking is not None and (peeking.done() or not ready):
                    rows = await peeking
                    peeking = None
                    more = len(rows) == page
                    if rows:
                        packer.add(rows)
                        cursor = rows[-1].id
                if len(packer):
                    ready.extend(packer.take(more_waiting=more and not stop.is_set(),
                                             limit=limit, force=stop.is_set()))
                while ready and len(outstanding) < inflight:
                    wait = burst_sent / rate - (time.monotonic() - burst_start)
                    if wait > 0:  # bounded drain rate after an outage
                        break
                    msg = ready.popleft()
                    outstanding[client.publish_future(msg.topic, msg.payload)] = msg
                    burst_sent += 1
                if not outstanding:
                    # deletions are batched too: at most every FLUSH_S while trickling
                    if stop.is_set() or time.monotonic() - last_flush >= FLUSH_S:
                        await flush(wait=stop.is_set())
                    if ready:  # rate-limited
                        await asyncio.sleep(max(burst_sent / rate
                                                - (time.monotonic() - burst_start), 0.001))
                        continue
                    if peeking is not None or (more and len(packer) < limit):
                        continue
                    if stop.is_set():
                        # readings whose deletion fails stay in the outbox (sent again)
                        if ((acked and not delete_failing) or deleting is not None
                                or len(packer)):
                            continue
                        if self.wake.is_set():  # the writer's last commit: read it first
                            continue
                        if not delete:  # confirm: consumer -- give the acks a moment
                            deadline = time.monotonic() + self.confirm_wait_s
                            while self.outbox.depth and time.monotonic() < deadline:
                                await asyncio.sleep(0.05)
                        return
                    idle = FLUSH_S if acked else 1.0
                    due = packer.next_due()
                    if due is not None:  # a partial pack waits for more readings
                        idle = min(idle, max(due - time.monotonic(), 0.001))
                    await wait_event(self.wake, idle, also=stop)
                    burst_start, burst_sent = time.monotonic(), 0
                    continue
                done = [f for f in outstanding if f.done()]
                if not done:
                    if not await client.wait_progress(timeout):
                        raise aiomqtt.MqttError(f"no PUBACK within {timeout:g} s "
                                                f"({len(outstanding)} outstanding)")
                    continue
                for fut in done:
                    msg = outstanding.pop(fut)
                    try:
                        check_puback(msg.topic, fut.result())
                    except Rejected as exc:
                        stats.rejected += 1
                        log.error("broker rejected a message (its readings kept in the "
                                  "outbox) error=%s", exc)
                        raise
                    acked.extend(r.id for r in msg.rows)
                    stats.published += len(msg.rows)
                    stats.messages += 1
                if len(acked) >= self.mqtt.read_ahead:
                    await flush()
        finally:
            for fut in outstanding:
                fut.cancel()
            if peeking is not None:
                peeking.cancel()
            await flush(wait=True)

    async def publish_now(self, topic: str, payload: bytes, *, retain: bool = True) -> bool:
        """Publish a status-like message if connected (not through the outbox)."""
        client = self._client
        if client is None or not self.stats.connected:
            return False
        try:
            await client.publish_acked(topic, payload, retain=retain,
                                       timeout=self.mqtt.publish_timeout_s)
            return True
        except (aiomqtt.MqttError, Rejected, RuntimeError) as exc:
            log.debug("could not publish %s: %s", topic, exc)
            return False


def _describe(exc: BaseException) -> str:
    """One line for an exception, unwrapping task groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"

