"""The one interface every streaming detector has, after river's anomaly detectors.

A detector is built from a config, then fed one interval at a time: ``score_one(x)`` says
how anomalous ``x`` is given what was learned so far (higher is more anomalous, 0 during
warm-up) without changing anything, and ``learn_one(x)`` learns it. Feeding
``score_one`` then ``learn_one`` for each interval gives exactly the batch kernel's scores.
``snapshot()`` returns a JSON-able dict and ``restore(dict)`` rebuilds the detector, so the
service can keep per-meter state across restarts. Thresholds and "do not learn from
anomalies" are wrappers around detectors, not options of each one.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np

from .arrays import FloatArray, IntArray, as_timestamps, optional_values
from .kernels import anomaly as kernels

D = TypeVar("D", bound="StreamingDetector")


class Point(NamedTuple):
    """One interval of one meter, as the detectors see it."""

    t_s: int  # interval start, UTC epoch seconds
    value: float  # consumption in the interval, counter units; NaN when unknown
    active: float = math.nan  # share of the interval production ran (0..1); NaN unknown
    production: float = math.nan  # units produced in the interval; NaN unknown
    temperature: float = math.nan  # mean outdoor temperature in the interval, degC; NaN unknown


class StreamingDetector(ABC):
    """learn_one / score_one / snapshot / restore."""

    name: ClassVar[str]

    @abstractmethod
    def learn_one(self, x: Point) -> None:
        """Update the state with one interval."""

    @abstractmethod
    def score_one(self, x: Point) -> float:
        """Anomaly score of one interval given the state; does not change the state."""

    @abstractmethod
    def snapshot(self) -> dict[str, Any]:
        """The whole state as a JSON-able dict."""

    @classmethod
    @abstractmethod
    def restore(cls: type[D], state: Mapping[str, Any]) -> D:
        """A detector continuing exactly where :meth:`snapshot` left off."""

    @property
    @abstractmethod
    def warmup(self) -> int:
        """A number of intervals from the start that always score 0."""


Batch = Callable[..., tuple[FloatArray, FloatArray]]


class KernelDetector(StreamingDetector):
    """A streaming detector whose state is three float arrays stepped by a numba kernel.

    Subclasses set ``name``, ``_kind``, ``_batch``, ``n_out`` and build the parameter vector
    and initial state from their config in ``__init__`` (calling :meth:`_setup`). One
    streaming step is ``_step(_kind, ...)``; its input and output buffers are allocated
    once per detector, not per call.
    """

    version: ClassVar[int] = 1
    n_out: ClassVar[int]
    _kind: ClassVar[int]
    _batch: ClassVar[Batch]

    _p: FloatArray
    _fs: FloatArray
    _ra: FloatArray
    _rb: FloatArray
    _out: FloatArray
    _out_row: FloatArray
    _work: FloatArray
    _io_t: IntArray
    _io: FloatArray

    def _setup(self, p: FloatArray, fs: FloatArray, ra: FloatArray, rb: FloatArray) -> None:
        self._p = np.ascontiguousarray(p, dtype=np.float64)
        self._fs = np.ascontiguousarray(fs, dtype=np.float64)
        self._ra = np.ascontiguousarray(ra, dtype=np.float64)
        self._rb = np.ascontiguousarray(rb, dtype=np.float64)
        self._out_row = np.full((1, self.n_out), np.nan)
        self._out = self._out_row[0]  # the last step's diagnostics (a view of the row)
        self._work = np.empty(max(self._ra.shape[1], self._rb.shape[1]))
        self._io_t = np.zeros(1, dtype=np.int64)
        self._io = np.zeros(kernels.IO_SIZE)

    @abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """The constructor's arguments, JSON-able."""

    def _run_step(self, x: Point, fs: FloatArray, ra: FloatArray, rb: FloatArray) -> float:
        return kernels._step(
            self._kind, self._p, fs, ra, rb, int(x.t_s), float(x.value), float(x.active),
            float(x.production), float(x.temperature), self._io_t, self._io, self._out_row,
            self._work,
        )  # fmt: skip

    def learn_one(self, x: Point) -> None:
        self._run_step(x, self._fs, self._ra, self._rb)

    def score_one(self, x: Point) -> float:
        return self._run_step(x, self._fs.copy(), self._ra.copy(), self._rb.copy())

    def update_one(self, x: Point) -> float:
        """score_one and learn_one in one step (half the work)."""
        return self._run_step(x, self._fs, self._ra, self._rb)

    @property
    def diagnostics(self) -> FloatArray:
        """The kernel's diagnostic outputs of the last step (see the subclass)."""
        return self._out.copy()

    def process(
        self,
        t_s: Any,
        values: Any,
        active: Any | None = None,
        production: Any | None = None,
        temperature: Any | None = None,
    ) -> tuple[FloatArray, FloatArray]:
        """Score and learn a batch of consecutive intervals: (scores, diagnostics per row)."""
        ts: IntArray = as_timestamps("t_s", t_s)
        n = ts.shape[0]
        x = optional_values("values", values, n)
        act = optional_values("active", active, n)
        prod = optional_values("production", production, n)
        temp = optional_values("temperature", temperature, n)
        batch = type(self)._batch
        scores, outs = batch(self._p, self._fs, self._ra, self._rb, ts, x, act, prod, temp)
        return scores, outs

    def snapshot(self) -> dict[str, Any]:
        return {
            "detector": self.name,
            "version": self.version,
            "config": self.config_dict(),
            "state": {
                "fs": _encode(self._fs),
                "ra": _encode(self._ra),
                "rb": _encode(self._rb),
            },
        }

    @classmethod
    def restore(cls: type[K], state: Mapping[str, Any]) -> K:
        if state.get("detector") != cls.name or state.get("version") != cls.version:
            raise ValueError(
                f"not a {cls.name} detector snapshot of version {cls.version} (got "
                f"{state.get('detector')!r} version {state.get('version')!r}); "
                "start a fresh detector"
            )
        obj = cls(**state["config"])
        arrays = state["state"]
        for key, current in (("fs", obj._fs), ("ra", obj._ra), ("rb", obj._rb)):
            value = _decode(arrays[key])
            if value.shape != current.shape:
                raise ValueError(
                    f"{cls.name} snapshot: state {key} has shape {value.shape}, the config "
                    f"needs {current.shape}; the snapshot does not match its config"
                )
            current[...] = value
        return obj


K = TypeVar("K", bound=KernelDetector)


def _encode(arr: FloatArray) -> Any:
    """Nested lists with None for NaN (JSON has no NaN)."""
    obj = arr.astype(object)
    obj[np.isnan(arr)] = None
    return obj.tolist()


def _decode(value: Any) -> FloatArray:
    arr = np.array(value, dtype=object)
    arr[arr == None] = np.nan  # noqa: E711 - elementwise comparison
    return arr.astype(np.float64)
