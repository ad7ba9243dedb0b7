"""A small asyncio Modbus TCP client for the read function codes (1-4), one request at a time.

Used for plain Modbus TCP links; serial RTU and RTU over TCP keep pymodbus. It exists for
speed (see docs/decisions.md, "Own Modbus TCP transport"): pymodbus' client costs about
0.17-0.21 ms of CPU per request on the 2-core VM, this one 0.10-0.14 ms (0.03-0.07 ms on
uvloop), because a read is one ``struct`` pack, one write and one future (the timeout is
one timer per connection, re-armed lazily), and a reply is checked in place from the
MBAP header and handed on as bytes.

Every reply is checked against the request before it is believed: protocol id 0, a sane
length, the transaction id, the unit id, the function code (an exception reply becomes
:class:`ReplyError`), and a byte count that matches what was asked. What fails a check is
a :class:`BadResponse` naming the field; bytes that cannot be a Modbus TCP frame (the
framing is lost) also close the connection, so the next request starts on a clean stream.
A late reply to a request that already timed out is recognised by its transaction id and
dropped.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Callable

log = logging.getLogger("recp.modbus.tcp")

READ_FUNCTION_CODES = frozenset({1, 2, 3, 4})
EXCEPTION_NAMES = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value",
    4: "device failure", 5: "acknowledge", 6: "device busy", 7: "negative acknowledge",
    8: "memory parity error", 10: "gateway path unavailable",
    11: "gateway target failed to respond",
}
MAX_FRAME_LENGTH = 254  # MBAP length field: unit id + PDU (at most 253 bytes)

_REQUEST = struct.Struct(">HHHBBHH")  # MBAP (tid, protocol 0, length 6, unit) + fc, addr, count
_HEADER = struct.Struct(">HHHBB")  # MBAP + function code of a reply


class ReplyError(Exception):
    """The device answered with a Modbus exception code."""

    def __init__(self, code: int):
        self.code = code
        super().__init__(f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})")


class NoAnswer(Exception):
    """Nothing (usable) came back within the timeout."""


class LinkDown(Exception):
    """The connection itself failed."""


class BadResponse(Exception):
    """Something came back that is not a valid answer to the request."""


def registers(data: bytes) -> tuple[int, ...]:
    """Register bytes as :meth:`ModbusTcpClient.read` returns them -> register values."""
    return struct.unpack(f">{len(data) // 2}H", data)


def _bits(data: bytes, start: int, count: int) -> list[bool]:
    """Coils or discrete inputs, LSB of the first byte first (Modbus spec 6.1)."""
    return [bool(data[start + (i >> 3)] >> (i & 7) & 1) for i in range(count)]


# (registers as bytes or bits, None) or (None, the exception): a request's outcome
Done = Callable[["bytes | list[bool] | None", "Exception | None"], None]


class _Pending:
    __slots__ = ("count", "deadline", "done", "fc", "future", "tid", "timeout_s", "unit")

    def __init__(self, future: asyncio.Future[bytes | list[bool]] | None, done: Done | None,
                 tid: int, unit: int, fc: int, count: int, timeout_s: float, deadline: float):
        self.future = future  # read(): the awaiting coroutine's
        self.done = done  # send(): called once with the outcome instead
        self.tid = tid
        self.unit = unit
        self.fc = fc
        self.count = count
        self.timeout_s = timeout_s
        self.deadline = deadline  # loop.time() by which the reply must be in


class ModbusTcpClient(asyncio.Protocol):
    """One Modbus TCP connection. ``await ModbusTcpClient.open(host, port, timeout)``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self._buf = b""
        self._tid = 0
        self._pending: _Pending | None = None
        self._abandoned: deque[int] = deque(maxlen=16)  # tids of requests that timed out
        self.closed_reason = ""
        # one timer per connection, not per request: it fires at the earliest deadline it
        # was armed for and re-arms itself for the pending request's own deadline if that
        # is later, so a request answered in time costs no timer at all
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    @classmethod
    async def open(cls, host: str, port: int, timeout_s: float) -> ModbusTcpClient:
        """Connect (within ``timeout_s``); raise OSError or asyncio.TimeoutError."""
        loop = asyncio.get_running_loop()
        _, protocol = await asyncio.wait_for(
            loop.create_connection(cls, host, port), timeout_s)
        return protocol

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.closed_reason = self.closed_reason or (
            f"connection lost: {type(exc).__name__}: {exc}" if exc
            else "connection closed by the device")
        self._fail(LinkDown(self.closed_reason))

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        while len(buf) >= 8:
            tid, protocol, length, unit, fc = _HEADER.unpack_from(buf)
            if protocol != 0 or not 2 <= length <= MAX_FRAME_LENGTH:
                self._garbage(f"not a Modbus TCP frame (protocol id {protocol}, "
                              f"length {length}): {bytes(buf[:12]).hex(' ')}")
                return
            end = 6 + length
            if len(buf) < end:
                break
            self._frame(tid, unit, fc, buf, end)
            buf = buf[end:]
        self._buf = buf

    # -- requests ---------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    async def read(self, fc: int, address: int, count: int, unit: int, timeout_s: float
                   ) -> bytes | list[bool]:
        """Registers (fc 3, 4) as their bytes off the wire (big-endian, two per register:
        decoders unpack them in place, :func:`registers` gives the values), or bits (fc 1,
        2); raise ReplyError, NoAnswer, LinkDown or BadResponse."""
        fut: asyncio.Future[bytes | list[bool]] = self.loop.create_future()
        p = self._start(fut, None, fc, address, count, unit, timeout_s)
        try:
            return await fut
        finally:
            if self._pending is p:
                self._pending = None

    def send(self, fc: int, address: int, count: int, unit: int, timeout_s: float,
             done: Done) -> None:
        """:meth:`read` without a coroutine or future: ``done(value, None)`` or ``done(None,
        exc)`` is called once, from the event loop (inside ``data_received`` for a reply),
        and may send the next request. Raises at once what ``read`` would raise before
        sending (not connected, a request already pending, not a read)."""
        self._start(None, done, fc, address, count, unit, timeout_s)

    def _start(self, fut: asyncio.Future[bytes | list[bool]] | None, done: Done | None,
               fc: int, address: int, count: int, unit: int, timeout_s: float) -> _Pending:
        """Send a request, after the checks :meth:`read` and :meth:`send` share."""
        if fc not in READ_FUNCTION_CODES:  # belt and braces: this client never writes
            raise ValueError(f"refusing to send function code {fc}")
        transport = self.transport
        if transport is None or transport.is_closing():
            raise LinkDown(self.closed_reason or "not connected")
        if self._pending is not None:
            raise RuntimeError("one request at a time on a Modbus TCP link")
        self._tid = tid = (self._tid + 1) & 0xFFFF
        deadline = self.loop.time() + timeout_s
        p = self._pending = _Pending(fut, done, tid, unit, fc, count, timeout_s, deadline)
        transport.write(_REQUEST.pack(tid, 0, 6, unit, fc, address, count))
        if self._timer is None or self._timer_at > deadline:
            self._arm(deadline)
        return p

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.closed_reason = self.closed_reason or "closed"
            self.transport.close()
            self.transport = None
        self._fail(LinkDown(self.closed_reason or "closed"))

    # -- internals --------------------------------------------------------------------
    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._on_timer)
        self._timer_at = when

    def _on_timer(self) -> None:
        self._timer = None
        p = self._pending
        if p is None:
            return  # nothing waits; the next request arms the timer again
        if self.loop.time() >= p.deadline:
            self._expire(p, p.timeout_s)
        else:
            self._arm(p.deadline)

    @staticmethod
    def _ok(p: _Pending, value: bytes | list[bool]) -> None:
        if p.done is not None:
            done, p.done = p.done, None
            done(value, None)
        elif p.future is not None and not p.future.done():
            p.future.set_result(value)

    @staticmethod
    def _err(p: _Pending, exc: Exception) -> None:
        if p.done is not None:
            done, p.done = p.done, None
            done(None, exc)
        elif p.future is not None and not p.future.done():
            p.future.set_exception(exc)

    @staticmethod
    def _open(p: _Pending) -> bool:
        return p.done is not None or (p.future is not None and not p.future.done())

    def _expire(self, p: _Pending, timeout_s: float) -> None:
        if self._pending is p and self._open(p):
            self._abandoned.append(p.tid)
            self._pending = None
            if self._buf:  # a reply cut short: its tail would shift every later frame
                log.debug("dropping %d bytes of an incomplete reply", len(self._buf))
                self._buf = b""
            self._err(p, NoAnswer(f"no answer within {timeout_s:g} s"))

    def _fail(self, exc: Exception) -> None:
        p, self._pending = self._pending, None
        if p is not None:
            self._err(p, exc)

    def _garbage(self, why: str) -> None:
        """Framing lost: fail the request and close, so the next one starts clean."""
        self._buf = b""
        self.closed_reason = f"bad response: {why}"
        self._fail(BadResponse(why))
        if self.transport is not None:
            self.transport.abort()

    def _frame(self, tid: int, unit: int, fc: int, buf: bytes, end: int) -> None:
        p = self._pending
        if p is None or tid != p.tid:
            if tid in self._abandoned or p is None:
                log.debug("dropping a reply nobody waits for (transaction id %d)", tid)
                return
            self._pending = None
            self._abandoned.append(p.tid)  # its own reply may still come: drop it then
            self._err(p, BadResponse(f"reply has transaction id {tid}, expected {p.tid}"))
            return
        self._pending = None
        if not self._open(p):
            return
        if unit != p.unit:
            self._err(p, BadResponse(f"reply from unit {unit}, asked unit {p.unit}"))
        elif fc == p.fc | 0x80:
            if end < 9:
                self._err(p, BadResponse("exception reply without an exception code"))
            else:
                self._err(p, ReplyError(buf[8]))
        elif fc != p.fc:
            self._err(p, BadResponse(
                f"reply has function code {fc}, asked function code {p.fc}"))
        elif end < 9 or (nbytes := buf[8]) != end - 9:
            self._err(p, BadResponse(
                f"byte count {buf[8] if end >= 9 else 'missing'} does not match the frame "
                f"length ({end - 9} data bytes)"))
        elif fc >= 3:
            if nbytes != 2 * p.count:
                self._err(p, BadResponse(
                    f"{nbytes // 2} registers in the answer, asked for {p.count}"))
            else:
                self._ok(p, buf[9:end])
        elif nbytes != (p.count + 7) >> 3:
            self._err(p, BadResponse(
                f"{nbytes} bytes of bits in the answer, asked for {p.count} bits"))
        else:
            self._ok(p, _bits(buf, 9, p.count))
