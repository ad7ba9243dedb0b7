"""Spool -> InfluxDB: the oldest points first, through influxdb-client's WriteApi.

influxdb-client's batching write mode keeps its batches in memory and drops one after its
last retry, so the spool is the batch buffer instead: the writer takes up to ``batch``
points from the spool, writes them with one synchronous ``WriteApi.write`` call (in a
worker thread, with the client's request timeout) to ``/api/v2/write``, and deletes them
from the spool only when the write succeeded. On failure it backs off (jittered, capped)
and retries the same points, so an outage delays writes but never reorders or loses them.
A batch the database refuses as malformed (HTTP 400/422) would block forever; it is
dropped and counted in ``rejected`` instead.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from collector.aio import wait_event

from .spool import Spool

log = logging.getLogger(__name__)


@dataclass
class SinkStats:
    written: int = 0
    rejected: int = 0
    failures: int = 0
    last_error: str = ""
    last_write_s: float = 0.0


class InfluxWriter:
    """Synchronous writes of line-protocol batches (runs in a worker thread)."""

    def __init__(self, url: str, token: str | None, org: str, bucket: str,
                 timeout_s: float, gzip: bool = False) -> None:
        from influxdb_client import InfluxDBClient, WritePrecision
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.bucket = bucket
        self.org = org
        self._precision: Any = WritePrecision.MS
        # retries=False: the spool and our backoff retry, not urllib3 inside the call
        self._client = InfluxDBClient(url=url, token=token or "", org=org,
                                      timeout=int(timeout_s * 1000), enable_gzip=gzip,
                                      retries=False)
        self._api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, lines: list[str]) -> None:
        self._api.write(bucket=self.bucket, org=self.org, record="\n".join(lines),
                        write_precision=self._precision)

    def close(self) -> None:
        self._api.close()
        self._client.close()


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return int(status) if isinstance(status, int) else None


class SpoolSink:
    """Drains a :class:`Spool` into a writer, in order, until stopped."""

    def __init__(self, spool: Spool, writer: Any, *, batch: int, retry_delay_s: float,
                 retry_delay_max_s: float) -> None:
        self.spool = spool
        self.writer = writer
        self.batch = batch
        self.retry_delay_s = retry_delay_s
        self.retry_delay_max_s = retry_delay_max_s
        self.stats = SinkStats()
        self.wake = asyncio.Event()
        self.healthy = True

    async def drain_once(self) -> bool:
        """Write one batch; True when something was written (or rejected)."""
        last, lines = await asyncio.to_thread(self.spool.take, self.batch)
        if not lines:
            return False
        try:
            await asyncio.to_thread(self.writer.write, lines)
        except Exception as exc:
            status = _status(exc)
            if status in (400, 422):
                log.error("database refused %d points (HTTP %s): %s; dropped", len(lines),
                          status, str(exc)[:300])
                self.stats.rejected += len(lines)
            else:
                raise
        else:
            self.stats.written += len(lines)
            self.stats.last_write_s = time.time()
        await asyncio.to_thread(self.spool.delete_through, last)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Write until ``stop`` is set and (then) the spool is empty or writing fails."""
        delay = self.retry_delay_s
        while True:
            try:
                wrote = await self.drain_once()
            except Exception as exc:
                self.healthy = False
                self.stats.failures += 1
                self.stats.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                if self.stats.failures == 1 or self.stats.failures % 20 == 0:
                    log.warning("database write failed (%s); %d points wait in the spool, "
                                "retrying in %.1f s", self.stats.last_error,
                                self.spool.depth, delay)
                if stop.is_set():
                    return
                await wait_event(stop, delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.retry_delay_max_s)
                continue
            if not self.healthy:
                log.warning("database writes resumed")
            self.healthy = True
            delay = self.retry_delay_s
            if wrote:
                continue
            if stop.is_set():
                return
            self.wake.clear()
            await wait_event(self.wake, 0.2, also=stop)
