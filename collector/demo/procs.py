"""The demo's child processes: started in their own session, stopped in order, never left.

Children run in a new session, so a Ctrl-C in the terminal reaches only the demo, which
stops them in the right order (agent before broker, service after the agent has drained).
On Linux each child also gets SIGTERM from the kernel if the demo dies without stopping it
(``PR_SET_PDEATHSIG``), so no process is left behind even after a SIGKILL of the demo.
"""

from __future__ import annotations

import asyncio
import ctypes
import signal
import subprocess
import sys
from pathlib import Path

_PR_SET_PDEATHSIG = 1
try:
    _LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except OSError:  # pragma: no cover
    _LIBC = None


def child_preexec() -> None:
    """In the child before exec: die with the parent (Linux)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """One ``python -m collector ...`` child with its log file."""

    def __init__(self, name: str, args: list[str], log: Path, env: dict[str, str] | None = None
                 ) -> None:
        self.name = name
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "collector", *args], stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                preexec_fn=child_preexec, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 15) -> str:
        try:
            lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    async def stop(self, timeout_s: float) -> int:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL; returns the exit status."""
        p = self.proc
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(p.wait, timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
        return await asyncio.to_thread(p.wait)

    async def wait(self, timeout_s: float | None = None) -> int | None:
        try:
            return await asyncio.to_thread(self.proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            return None
