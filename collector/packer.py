"""Outbox rows -> MQTT messages: one reading per message, or several of a meter packed.

With ``mqtt.batch.max_readings`` 1 (the default) every row is its own message on the
``reading`` topic. Above 1, the rows of each meter are packed, in order, into ``readings``
messages (all of them, even one reading alone) of at most ``max_readings``
(:func:`collector.contract.pack_readings`):

- a full pack goes at once;
- the rest of a meter's rows (a partial pack) goes when it has waited ``max_wait_s`` since
  the publisher first saw its oldest row (0: at once), unless more rows are known to be
  waiting in the outbox (a backlog being read), in which case it waits for them;
- when ``limit`` rows are pending, the largest partial packs go so that reading on can
  continue; when stopping, everything goes.

A message remembers its rows, so one PUBACK deletes all of them from the outbox.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from . import contract
from .outbox import Row


@dataclass(frozen=True)
class Message:
    """One MQTT publish and the outbox rows it carries."""

    topic: str
    payload: bytes
    rows: tuple[Row, ...]


class Packer:
    """Pending rows per meter, and the messages that are ready (see the module docstring)."""

    def __init__(self, site: str, max_readings: int = 1, max_wait_s: float = 0.0, *,
                 clock: Callable[[], float] = time.monotonic):
        if not 1 <= max_readings <= contract.MAX_BATCH:
            raise ValueError(f"max_readings must be 1 to {contract.MAX_BATCH}")
        self.site = site
        self.max_readings = max_readings
        self.max_wait_s = max_wait_s
        self.clock = clock
        self._single: list[Row] = []  # max_readings 1: rows in order
        self._pending: dict[str, list[tuple[Row, float]]] = {}  # meter -> (row, first seen)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, rows: Iterable[Row]) -> None:
        """Rows read from the outbox, in commit order."""
        if self.max_readings == 1:
            before = len(self._single)
            self._single.extend(rows)
            self._count += len(self._single) - before
            return
        now = self.clock()
        for row in rows:
            self._pending.setdefault(row.meter, []).append((row, now))
            self._count += 1

    def take(self, *, more_waiting: bool = False, limit: int = 0, force: bool = False
             ) -> list[Message]:
        """The messages ready now, oldest first row first.

        ``more_waiting``: the outbox holds more rows than were read (do not send partial
        packs yet); ``limit``: pending rows at most (0: no limit); ``force``: send all.
        """
        if self.max_readings == 1:
            rows, self._single, self._count = self._single, [], 0
            return [Message(r.topic, r.payload, (r,)) for r in rows]
        now = self.clock()
        out: list[Message] = []
        for meter in list(self._pending):
            items = self._pending[meter]
            while len(items) >= self.max_readings:
                out.append(self._pack(items[:self.max_readings]))
                del items[:self.max_readings]
            if items and (force or (not more_waiting
                                    and now - items[0][1] >= self.max_wait_s)):
                out.append(self._pack(items))
                items = []
            if items:
                self._pending[meter] = items
            else:
                del self._pending[meter]
        self._count = sum(len(v) for v in self._pending.values())
        while limit and self._count >= limit and self._pending:
            meter = max(self._pending, key=lambda m: len(self._pending[m]))
            items = self._pending.pop(meter)
            out.append(self._pack(items))
            self._count -= len(items)
        out.sort(key=lambda m: m.rows[0].id)
        return out

    def next_due(self) -> float | None:
        """Monotonic time at which the oldest partial pack may go; None: nothing pending."""
        if not self._pending:
            return None
        return min(items[0][1] for items in self._pending.values()) + self.max_wait_s

    def _pack(self, items: list[tuple[Row, float]]) -> Message:
        # even a single reading goes on the readings topic: one topic per meter, so a
        # consumer gets its messages in the order they were sent
        rows = tuple(r for r, _ in items)
        return Message(contract.readings_topic(self.site, rows[0].meter),
                       contract.pack_readings([r.payload for r in rows]), rows)
