"""A progress bar on stderr, drawn only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``with Progress(total, "fitting") as bar: bar.step("meter x")``; silent off a TTY."""

    def __init__(self, total: int, label: str = "", stream: TextIO | None = None):
        self.total = max(total, 1)
        self.label = label
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self._t0 = time.monotonic()

    def __enter__(self) -> Progress:
        self._draw("")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def step(self, what: str = "") -> None:
        """Mark one unit of work done; ``what`` names the next one."""
        self.done = min(self.done + 1, self.total)
        self._draw(what)

    def note(self, what: str) -> None:
        """Show what is being done without advancing."""
        self._draw(what)

    def _draw(self, what: str) -> None:
        if not self.enabled:
            return
        width = 28
        filled = int(width * self.done / self.total)
        bar = "#" * filled + "-" * (width - filled)
        secs = time.monotonic() - self._t0
        text = f"\r{self.label} [{bar}] {self.done}/{self.total} {secs:4.0f} s {what}"[:118]
        self.stream.write(text + "\033[K")
        self.stream.flush()
