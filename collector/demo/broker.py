"""The demo's MQTT broker: one given by URL, a Mosquitto found on the machine, or amqtt.

Mosquitto runs as a child process with a temporary configuration on a free loopback port
(no persistence: the demo's broker lives as long as the demo). Without Mosquitto the demo
starts amqtt (MIT, pure Python) as a child process too (:mod:`.amqttd`), so nothing the
broker does can stall the demo's own event loop or its Ctrl-C; amqtt speaks MQTT 3.1.1
only, so the agent and the service are then configured with ``mqtt.protocol: 3.1.1``
(docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .procs import child_preexec

LOOPBACK = "127.0.0.1"
MOSQUITTO_PATHS = (
    "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_PATHS if os.access(p, os.X_OK)), None)


async def wait_port(host: str, port: int, timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 0.5)
        except (OSError, asyncio.TimeoutError):
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        return True
    return False


@dataclass
class Broker:
    """A running broker: ``url``, what it is (``kind``, ``describe``) and how to stop it."""

    url: str
    kind: str  # "given", "mosquitto" or "amqtt"
    protocol: str = "5"
    describe: str = ""
    process: subprocess.Popen[bytes] | None = None

    async def stop(self) -> None:
        p = self.process
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                await asyncio.to_thread(p.wait, 5.0)
            except subprocess.TimeoutExpired:
                p.kill()
                await asyncio.to_thread(p.wait)


async def start_mosquitto(binary: str, workdir: Path) -> Broker:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = workdir / "mosquitto.conf"
    lines = [f"listener {port} {LOOPBACK}", "allow_anonymous true", "persistence false",
             "max_queued_messages 0", "log_dest stdout", "log_type error",
             "log_type warning"]
    if os.geteuid() == 0:  # as root it would switch to a 'mosquitto' user otherwise
        lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
    conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
    log = (workdir / "mosquitto.log").open("wb")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, preexec_fn=child_preexec,
                            start_new_session=True)
    log.close()
    broker = Broker(f"mqtt://{LOOPBACK}:{port}", "mosquitto", "5",
                    f"Mosquitto ({binary}) on {LOOPBACK}:{port}", process=proc)
    if not await wait_port(LOOPBACK, port, 10.0) or proc.poll() is not None:
        await broker.stop()
        text = (workdir / "mosquitto.log").read_text(errors="replace")[-800:]
        raise RuntimeError(f"Mosquitto did not start on port {port}: {text.strip()}")
    return broker


async def start_amqtt(workdir: Path) -> Broker:
    """amqtt in a child process (``python -m collector.demo.amqttd``) on a free port."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("amqtt")
    except PackageNotFoundError:
        raise ModuleNotFoundError("amqtt") from None
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = (workdir / "amqtt.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector.demo.amqttd", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        preexec_fn=child_preexec, start_new_session=True)
    log.close()
    broker = Broker(f"mqtt://{LOOPBACK}:{port}", "amqtt", "3.1.1",
                    f"amqtt {v} in a child process on {LOOPBACK}:{port} (MQTT 3.1.1)",
                    process=proc)
    if not await wait_port(LOOPBACK, port, 20.0) or proc.poll() is not None:
        await broker.stop()
        text = (workdir / "amqtt.log").read_text(errors="replace")[-800:]
        raise RuntimeError(f"amqtt did not start on port {port}: {text.strip()}")
    return broker


async def start_broker(url: str | None, workdir: Path, *, force: str | None = None,
                       protocol: str = "5") -> Broker:
    """The broker to use: ``url`` if given, else Mosquitto if found, else amqtt.

    ``force`` ("mosquitto" or "amqtt") skips the search (tests, and ``--broker``).
    """
    if url:
        return Broker(url, "given", protocol, f"the broker at {url}")
    binary = find_mosquitto() if force != "amqtt" else None
    if force == "mosquitto" and binary is None:
        raise RuntimeError("no mosquitto found (sudo apt-get install mosquitto)")
    if binary:
        return await start_mosquitto(binary, workdir)
    try:
        return await start_amqtt(workdir)
    except ModuleNotFoundError:
        raise RuntimeError(
            "no MQTT broker: install Mosquitto (sudo apt-get install mosquitto), or amqtt "
            "(pip install 'recp-monitor[demo]'), or give one with --mqtt-url") from None
