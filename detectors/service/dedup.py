"""Exactly-once per reading on top of at-least-once delivery.

A reading is identified by (site, meter, stream, seq); ``seq`` grows by one per reading.
Per stream we keep ``done``, the highest seq below which every reading was seen, and the
seqs seen above it (bounded: when more than ``window`` pile up, the hole below them is
given up as a gap the agent made, e.g. readings its capped outbox dropped). ``done`` is
also the consumer's high-water mark published on the ack topic.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

Key = tuple[str, str, str]  # site, meter, stream


class SeqTracker:
    def __init__(self, window: int = 4096) -> None:
        self.window = window
        self._done: dict[Key, int] = {}
        self._above: dict[Key, set[int]] = {}

    def seen(self, key: Key, seq: int) -> bool:
        """Whether ``seq`` was already accepted (without recording it)."""
        done = self._done.get(key)
        if done is None:
            return False
        return seq <= done or seq in self._above.get(key, ())

    def accept(self, key: Key, seq: int) -> bool:
        """Record ``seq``; False if it is a duplicate."""
        done = self._done.get(key)
        if done is None:
            # first reading of a stream seen: everything before it is another consumer's
            self._done[key] = seq
            return True
        if seq <= done:
            return False
        above = self._above.setdefault(key, set())
        if seq in above:
            return False
        if seq == done + 1:
            done = seq
            while done + 1 in above:
                done += 1
                above.discard(done)
        else:
            above.add(seq)
            if len(above) > self.window:
                done = min(above)
                above.discard(done)
                while done + 1 in above:
                    done += 1
                    above.discard(done)
        self._done[key] = done
        return True

    def state_of(self, key: Key) -> tuple[int | None, set[int]]:
        """A copy of one stream's marks, for :meth:`put_back`."""
        return self._done.get(key), set(self._above.get(key, ()))

    def put_back(self, key: Key, state: tuple[int | None, set[int]]) -> None:
        """Undo what was accepted since :meth:`state_of` (the batch was not stored)."""
        done, above = state
        if done is None:
            self._done.pop(key, None)
            self._above.pop(key, None)
            return
        self._done[key] = done
        if above:
            self._above[key] = set(above)
        else:
            self._above.pop(key, None)

    def marks(self, keys: Iterable[Key]) -> list[tuple[str, str, str, int, list[int]]]:
        """The marks of those of ``keys`` seen so far, to store with their points."""
        return [(*k, d, sorted(self._above.get(k, ()))) for k in keys
                if (d := self._done.get(k)) is not None]

    def done(self, key: Key) -> int:
        return self._done.get(key, 0)

    def snapshot(self) -> list[list[Any]]:
        return [[*k, d, sorted(self._above.get(k, ()))] for k, d in self._done.items()]

    def update(self, rows: Iterable[Sequence[Any]]) -> None:
        """Take these streams' marks (snapshot rows) over the ones held."""
        for site, meter, stream, done, above in rows:
            key = (str(site), str(meter), str(stream))
            self.put_back(key, (int(done), {int(s) for s in above}))

    @classmethod
    def restore(cls, rows: list[list[Any]], window: int = 4096) -> SeqTracker:
        obj = cls(window)
        obj.update(rows)
        return obj
