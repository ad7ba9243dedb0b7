"""systemd notify protocol: messages reach the socket; nothing happens outside systemd."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from collector import sdnotify


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> socket.socket:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_notify_sends_lines(notify_socket: socket.socket) -> None:
    assert sdnotify.notify("READY=1", "STATUS=polling 3 meters")
    assert notify_socket.recv(1024) == b"READY=1\nSTATUS=polling 3 meters"


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"recp-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("WATCHDOG=1")
        assert sock.recv(64) == b"WATCHDOG=1"


def test_outside_systemd_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.watchdog_interval_s() is None
    asyncio.run(asyncio.wait_for(sdnotify.watchdog(), 1))  # returns at once


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert sdnotify.watchdog_interval_s() is None


def test_watchdog_pings_only_while_alive(notify_socket: socket.socket,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # a ping every 50 ms
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notify_socket.setblocking(False)

    async def scenario() -> tuple[int, int]:
        alive = asyncio.Event()
        task = asyncio.create_task(sdnotify.watchdog(alive))
        for _ in range(6):  # progress every 50 ms: pings
            alive.set()
            await asyncio.sleep(0.05)
        pinged = drain()
        await asyncio.sleep(0.3)  # no progress: no pings
        stalled = drain()
        task.cancel()
        return pinged, stalled

    def drain() -> int:
        n = 0
        while True:
            try:
                assert notify_socket.recv(64) == b"WATCHDOG=1"
            except BlockingIOError:
                return n
            n += 1

    pinged, stalled = asyncio.run(scenario())
    assert pinged >= 3 and stalled <= 1
