"""Exactly-once per reading on top of at-least-once delivery.

A reading is identified by (site, meter, stream, seq); ``seq`` grows by one per reading.
Per stream we keep ``done``, the highest seq below which every reading was seen, and the
seqs seen above it (bounded: when more than ``window`` pile up, the hole below them is
given up as a gap the agent made, e.g. readings its capped outbox dropped). ``done`` is
also the consumer's high-water mark published on the ack topic.

When the agent announces what its outbox dropped (``.../dropped``, :meth:`skip_to`),
``done`` moves past the hole at once. The seqs given up that way are remembered as
ranges (a few per stream): one of them still arriving (sent before it was dropped, and
overtaken by the announcement) is a new reading, not a duplicate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

Key = tuple[str, str, str]  # site, meter, stream
State = tuple[int | None, set[int], list[list[int]]]  # done, seqs above, given-up ranges
MAX_GAPS = 16  # given-up ranges kept per stream (the oldest forgotten first)


class SeqTracker:
    def __init__(self, window: int = 4096) -> None:
        self.window = window
        self._done: dict[Key, int] = {}
        self._above: dict[Key, set[int]] = {}
        self._gaps: dict[Key, list[list[int]]] = {}  # [lo, hi] given up by skip_to

    def seen(self, key: Key, seq: int) -> bool:
        """Whether ``seq`` was already accepted (without recording it)."""
        done = self._done.get(key)
        if done is None:
            return False
        if seq <= done:
            return not any(lo <= seq <= hi for lo, hi in self._gaps.get(key, ()))
        return seq in self._above.get(key, ())

    def accept(self, key: Key, seq: int) -> bool:
        """Record ``seq``; False if it is a duplicate."""
        done = self._done.get(key)
        if done is None:
            # first reading of a stream seen: everything before it is another consumer's
            self._done[key] = seq
            return True
        if seq <= done:
            return self._fill(key, seq)
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

    def accept_many(self, key: Key, seqs: list[int]) -> list[bool] | None:
        """:meth:`accept` each of ``seqs`` (strictly increasing, as a ``readings`` message
        has them) in order; None when all were new, else whether each was.

        The usual case, the stream's next seqs without a hole, is one step."""
        done = self._done.get(key)
        first, last = seqs[0], seqs[-1]
        if (last - first == len(seqs) - 1 and not self._above.get(key)
                and (done is None or first == done + 1)):
            self._done[key] = last
            return None
        got = [self.accept(key, s) for s in seqs]
        return None if all(got) else got

    def _fill(self, key: Key, seq: int) -> bool:
        """A seq at or below ``done``: new only if it lies in a given-up range."""
        gaps = self._gaps.get(key)
        if not gaps:
            return False
        for i, (lo, hi) in enumerate(gaps):
            if lo <= seq <= hi:
                parts = [[lo, seq - 1]] if lo < seq else []
                parts += [[seq + 1, hi]] if seq < hi else []
                gaps[i : i + 1] = parts
                if not gaps:
                    del self._gaps[key]
                return True
        return False

    def skip_to(self, key: Key, through: int) -> int | None:
        """The agent will send no seq <= ``through`` again: move ``done`` past it.

        Returns how many seqs in the hole were never seen (None if ``done`` was already
        there: a repeated announcement)."""
        done = self._done.get(key)
        if done is not None and through <= done:
            return None
        above = self._above.get(key, set())
        gaps = self._gaps.setdefault(key, [])
        missing = 0
        if done is not None:
            lo = done + 1
            for s in [*sorted(x for x in above if x <= through), through + 1]:
                if s > lo:
                    gaps.append([lo, s - 1])
                    missing += s - lo
                lo = s + 1
        del gaps[:-MAX_GAPS]
        if not gaps:
            del self._gaps[key]
        rest = {s for s in above if s > through}
        done = through
        while done + 1 in rest:
            done += 1
            rest.discard(done)
        self._done[key] = done
        if rest:
            self._above[key] = rest
        else:
            self._above.pop(key, None)
        return missing

    def state_of(self, key: Key) -> State:
        """A copy of one stream's marks, for :meth:`put_back`."""
        return (self._done.get(key), set(self._above.get(key, ())),
                [list(g) for g in self._gaps.get(key, ())])

    def put_back(self, key: Key, state: tuple[Any, ...]) -> None:
        """Undo what was accepted since :meth:`state_of` (the batch was not stored)."""
        done, above = state[0], state[1]
        gaps = state[2] if len(state) > 2 else []
        if done is None:
            self._done.pop(key, None)
            self._above.pop(key, None)
            self._gaps.pop(key, None)
            return
        self._done[key] = done
        if above:
            self._above[key] = set(above)
        else:
            self._above.pop(key, None)
        if gaps:
            self._gaps[key] = [[int(lo), int(hi)] for lo, hi in gaps]
        else:
            self._gaps.pop(key, None)

    def marks(self, keys: Iterable[Key]) -> list[tuple[str, str, str, int, list[int],
                                                       list[list[int]]]]:
        """The marks of those of ``keys`` seen so far, to store with their points."""
        return [(*k, d, sorted(self._above.get(k, ())), self._gaps.get(k, []))
                for k in keys if (d := self._done.get(k)) is not None]

    def done(self, key: Key) -> int:
        return self._done.get(key, 0)

    def snapshot(self) -> list[list[Any]]:
        return [[*k, d, sorted(self._above.get(k, ())), self._gaps.get(k, [])]
                for k, d in self._done.items()]

    def update(self, rows: Iterable[Sequence[Any]]) -> None:
        """Take these streams' marks (snapshot rows; older ones without gaps) over."""
        for site, meter, stream, done, above, *gaps in rows:
            key = (str(site), str(meter), str(stream))
            self.put_back(key, (int(done), {int(s) for s in above},
                                gaps[0] if gaps else []))

    @classmethod
    def restore(cls, rows: list[list[Any]], window: int = 4096) -> SeqTracker:
        obj = cls(window)
        obj.update(rows)
        return obj
