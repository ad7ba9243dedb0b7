"""A small, fast Modbus TCP server for benchmarks: every unit id answers reads from one fixed
register image, in a process of its own so its CPU is not charged to the client measured.

    python -m benchmarks.modbus_server PORTS   # prints {"ports": [...]} and serves until killed

Read function codes only (1-4); anything else gets exception 1, like a meter. It answers
pipelined requests in order and costs a few microseconds per request, so clients, not the
server, set the pace (pymodbus' own server costs more per request than its client).
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys

_MBAP = struct.Struct(">HHHBB")
# registers: 230.5 as float32 ABCD at every even address, a counter-like pattern otherwise
_REGS = bytearray()
for a in range(0, 65536, 2):
    _REGS += struct.pack(">f", 230.5 + (a % 100) / 10)
_BITS = bytes(8192)


class _Handler(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        out = []
        while len(buf) >= 8:
            tid, _pid, length, unit, fc = _MBAP.unpack_from(buf, 0)
            if len(buf) < 6 + length:
                break
            if fc in (3, 4) and length >= 6:
                addr, count = struct.unpack_from(">HH", buf, 8)
                if 1 <= count <= 125 and addr + count <= 65536:
                    pdu = bytes((fc, 2 * count)) + _REGS[2 * addr : 2 * (addr + count)]
                else:
                    pdu = bytes((fc | 0x80, 2))
            elif fc in (1, 2) and length >= 6:
                addr, count = struct.unpack_from(">HH", buf, 8)
                n = (count + 7) // 8
                pdu = bytes((fc, n)) + _BITS[:n] if 1 <= count <= 2000 else bytes((fc | 0x80, 2))
            else:
                pdu = bytes((fc | 0x80, 1))  # illegal function: this server never writes
            out.append(struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu)
            buf = buf[6 + length :]
        self.buf = buf
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


async def serve(n_ports: int) -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(_Handler, "127.0.0.1", 0) for _ in range(n_ports)]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    print(json.dumps({"ports": ports}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]) if len(sys.argv) > 1 else 1))
