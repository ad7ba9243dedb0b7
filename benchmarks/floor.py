"""The I/O floor of a Modbus poll in Python: the least any asyncio client can spend per request.

A minimal client, the baseline the agent's CPU per request is divided by: one
``asyncio.Protocol`` per connection; every ``interval_s`` one callback writes the same read
request (fc 3, 20 registers from 0, unit 1) on every connection in one burst (or back to
back: each reply sends the next request), and ``data_received`` only unpacks the ten
float32 values. No checks, no decoding into names,
no timestamps, no storing, no publishing. CPU is this process's ``getrusage`` around the
measured window only (after a warm-up), user and kernel apart. Its figure is what the
event loop, the sockets and the kernel cost; what the agent spends above it is its own.
"""

from __future__ import annotations

import asyncio
import resource
import struct
from dataclasses import dataclass

REQUEST = struct.pack(">HHHBBHH", 1, 0, 6, 1, 3, 0, 20)  # tid 1, fc 3, 20 registers from 0
_VALUES = struct.Struct(">10f")


@dataclass(frozen=True)
class Floor:
    requests: int  # replies received in the measured window
    user_s: float
    sys_s: float

    @property
    def ms_per_request(self) -> float:
        return (self.user_s + self.sys_s) / max(self.requests, 1) * 1e3

    def describe(self) -> str:
        n = max(self.requests, 1)
        return (f"{self.ms_per_request:.3f} ms CPU per request (user "
                f"{self.user_s / n * 1e3:.3f}, sys {self.sys_s / n * 1e3:.3f})")


class _Conn(asyncio.Protocol):
    replies = 0  # all connections together (class attributes: one counter, one mode)
    back_to_back = False  # each reply sends the next request at once

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        _VALUES.unpack_from(data, 9)
        _Conn.replies += 1
        if _Conn.back_to_back:
            self.transport.write(REQUEST)


async def _run(ports: list[int], interval_s: float, warmup_s: float, measure_s: float
               ) -> Floor:
    loop = asyncio.get_running_loop()
    conns = [(await loop.create_connection(_Conn, "127.0.0.1", p))[1] for p in ports]
    writes = [c.transport.write for c in conns]
    done = loop.create_future()
    start = loop.time()
    marks: list[tuple[int, resource.struct_rusage]] = []

    def tick(k: int) -> None:
        for write in writes:
            write(REQUEST)
        if interval_s:
            loop.call_at(start + (k + 1) * interval_s, tick, k + 1)

    def mark() -> None:
        marks.append((_Conn.replies, resource.getrusage(resource.RUSAGE_SELF)))
        if len(marks) == 2:
            done.set_result(None)

    tick(0)
    # the window's ends half-way between ticks: no burst is cut in two
    loop.call_at(start + warmup_s + interval_s / 2, mark)
    loop.call_at(start + warmup_s + measure_s + interval_s / 2, mark)
    await done
    _Conn.back_to_back = False
    for c in conns:
        c.transport.close()
    (n0, r0), (n1, r1) = marks
    return Floor(n1 - n0, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime)


def measure(ports: list[int], interval_s: float, warmup_s: float, measure_s: float,
            loop: str = "asyncio") -> Floor:
    """The minimal client on ``ports``, a burst every ``interval_s`` (0: back to back, each
    reply sending the next request), on asyncio's loop or uvloop."""
    _Conn.replies, _Conn.back_to_back = 0, not interval_s
    coro = _run(ports, interval_s, warmup_s, measure_s)
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)
