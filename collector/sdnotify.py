"""systemd's notify protocol: tell the service manager we are ready, alive, or stopping.

A unit with ``Type=notify`` waits for ``READY=1``; with ``WatchdogSec=`` it restarts the
service when ``WATCHDOG=1`` stops arriving (a hung event loop stops sending it). Outside
systemd (no ``$NOTIFY_SOCKET``) every call does nothing, so the code needs no switch.
"""

from __future__ import annotations

import asyncio
import os
import socket


def notify(*states: str) -> bool:
    """Send ``KEY=value`` lines to ``$NOTIFY_SOCKET``; False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
    except OSError:
        return False
    return True


def watchdog_interval_s() -> float | None:
    """How often to send ``WATCHDOG=1`` (half of ``WatchdogSec``), None without a watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        return max(0.05, int(usec) / 2e6)
    except ValueError:
        return None


async def watchdog(alive: asyncio.Event | None = None) -> None:
    """Ping the watchdog from the event loop until cancelled (a blocked loop stops pinging).

    With ``alive``, a ping is only sent after the event was set since the last one, so work
    that stopped making progress (not just the loop) is noticed too.
    """
    interval = watchdog_interval_s()
    if interval is None:
        return
    while True:
        await asyncio.sleep(interval)
        if alive is None or alive.is_set():
            notify("WATCHDOG=1")
            if alive is not None:
                alive.clear()
