"""Events as Grafana region annotations (grafana-client), posted once and updated on close.

Each event opening or closing becomes a job in a bounded queue, worked off by one task
(the HTTP calls run in a worker thread, each with the client's timeout), so Grafana being
slow, down or refusing the token never blocks or stops the service: a failed job stays at
the head of the queue and is retried with a jittered, doubling backoff; when the queue is
full the oldest job is dropped and counted. A job Grafana refuses as malformed (HTTP 400)
is dropped and counted rather than blocking the queue.

Every annotation carries the tag ``event:<event id>`` (the event's stable id
``site/meter/type/start``). To post a job the annotator looks the id up in what it has
posted, else asks Grafana for an annotation with that tag, and updates the one it finds
(PUT) instead of adding a second; so a restart, a replay or a crash between posting and
saving the checkpoint never posts an event twice. The map of event ids to annotation ids
and the jobs not yet posted are part of the service's checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass
from typing import Any

from collector.aio import wait_event

from .alerts import Transition

log = logging.getLogger(__name__)
KEEP_IDS = 20_000  # event id -> annotation id entries remembered (oldest forgotten first)


@dataclass(frozen=True)
class Job:
    """One annotation to post or update: a region ``start_ms`` .. ``end_ms``."""

    event_id: str
    closed: bool
    start_ms: int
    end_ms: int
    tags: tuple[str, ...]
    text: str


def event_tag(event_id: str) -> str:
    return f"event:{event_id}"


def job_for(t: Transition, currency: str, extra_tags: tuple[str, ...] = ("recp",)) -> Job:
    """The annotation of an event's opening (a point at its start) or closing (a region)."""
    e = t.event
    start_ms = round(e.start.timestamp() * 1000)
    end_ms = round(e.end.timestamp() * 1000) if e.end is not None else start_ms
    tags = (*extra_tags, f"site:{t.site}", f"meter:{e.meter}", f"resource:{t.resource}",
            f"type:{e.type.value}", f"severity:{e.severity.value}", event_tag(t.event_id))
    money = f", cost {e.cost:.2f} {currency}" if e.cost is not None else ""
    co2 = f", {e.co2_kg:.1f} kg CO2" if e.co2_kg is not None else ""
    state = "closed" if e.end is not None else "open"
    text = (f"{e.type.value} on {t.site}/{e.meter} ({state}): excess {e.excess:.4g} "
            f"{e.unit}{money}{co2}. {e.explanation}")
    return Job(t.event_id, e.end is not None, start_ms, end_ms, tags, text)


@dataclass
class AnnotatorStats:
    posted: int = 0  # annotations added
    updated: int = 0  # annotations updated (closing, or found again after a restart)
    failures: int = 0  # failed attempts (Grafana down, timeout, 401/403, 5xx)
    dropped: int = 0  # jobs dropped because the queue was full
    rejected: int = 0  # jobs Grafana refused as malformed (400)
    last_error: str = ""


class Annotator:
    """A bounded queue of annotation jobs and the task that posts them in order.

    ``api`` is a ``grafana_client.GrafanaApi`` (or anything with its ``annotations``
    element); the calls are synchronous and run in a worker thread.
    """

    def __init__(self, api: Any, *, cap: int = 10_000, retry_delay_s: float = 1.0,
                 retry_delay_max_s: float = 60.0, dashboard_uid: str | None = None,
                 tags: tuple[str, ...] = ("recp",)) -> None:
        self.api = api
        self.cap = cap
        self.retry_delay_s = retry_delay_s
        self.retry_delay_max_s = retry_delay_max_s
        self.dashboard_uid = dashboard_uid
        self.tags = tags
        self.stats = AnnotatorStats()
        self.healthy = True
        self.wake = asyncio.Event()
        self._queue: deque[Job] = deque()
        self._ids: OrderedDict[str, tuple[int, bool]] = OrderedDict()  # -> (id, closed)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop running ``run``

    @property
    def depth(self) -> int:
        return len(self._queue)

    def submit(self, t: Transition, currency: str) -> None:
        """Queue the annotation of an opening or closing (never blocks; any thread: the
        service's batch thread submits under its state lock, so a checkpoint's snapshot
        holds every job of the batches it covers)."""
        job = job_for(t, currency, self.tags)
        with self._lock:
            if len(self._queue) >= self.cap:
                self._queue.popleft()
                self.stats.dropped += 1
            self._queue.append(job)
        loop = self._loop
        if loop is not None:  # before run() starts, run() finds the queue as it is
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self.wake.set)

    # ------------------------------------------------------------------ one job

    def _find(self, event_id: str) -> tuple[int, bool] | None:
        with self._lock:
            known = self._ids.get(event_id)
        if known is not None:
            return known
        found = self.api.annotations.find_annotations(
            tags=[event_tag(event_id)], ann_type="annotation", limit=1)
        if isinstance(found, list) and found and isinstance(found[0], dict):
            ann = found[0]
            closed = int(ann.get("timeEnd") or 0) > int(ann.get("time") or 0)
            return int(ann["id"]), closed
        return None

    def _remember(self, event_id: str, ann_id: int, closed: bool) -> None:
        with self._lock:
            self._ids[event_id] = (ann_id, closed)
            self._ids.move_to_end(event_id)
            while len(self._ids) > KEEP_IDS:
                self._ids.popitem(last=False)

    def send(self, job: Job) -> str:
        """Post or update one job (synchronous); returns what was done."""
        known = self._find(job.event_id)
        if known is not None:
            ann_id, closed = known
            if closed and not job.closed:
                self._remember(job.event_id, ann_id, closed)
                return "skipped"  # a replayed opening must not reopen a closed event
            self.api.annotations.update_annotation(
                ann_id, time_from=job.start_ms, time_to=job.end_ms, tags=list(job.tags),
                text=job.text)
            self._remember(job.event_id, ann_id, job.closed)
            return "updated"
        answer = self.api.annotations.add_annotation(
            dashboard_uid=self.dashboard_uid, time_from=job.start_ms, time_to=job.end_ms,
            tags=list(job.tags), text=job.text)
        new_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(new_id, int):
            raise ValueError(f"Grafana answered without an annotation id: {answer!r:.200}")
        self._remember(job.event_id, new_id, job.closed)
        return "posted"

    # ------------------------------------------------------------------ the task

    async def run(self, stop: asyncio.Event) -> None:
        """Post queued jobs in order until ``stop``; failures back off, never raise."""
        self._loop = asyncio.get_running_loop()
        try:
            await self._run(stop)
        finally:
            self._loop = None

    async def _run(self, stop: asyncio.Event) -> None:
        delay = self.retry_delay_s
        while not stop.is_set():
            if not self._queue:
                self.wake.clear()
                await wait_event(self.wake, 1.0, also=stop)
                continue
            job = self._queue[0]
            try:
                done = await asyncio.to_thread(self.send, job)
            except Exception as exc:
                if _status(exc) == 400:
                    self.stats.rejected += 1
                    log.error("Grafana refused the annotation of %s (%s); dropped",
                              job.event_id, _describe(exc))
                    self._pop(job)
                    continue
                self.healthy = False
                self.stats.failures += 1
                self.stats.last_error = _describe(exc)
                if self.stats.failures == 1 or self.stats.failures % 20 == 0:
                    log.warning("Grafana annotation failed (%s); %d waiting, retrying in "
                                "%.1f s", self.stats.last_error, len(self._queue), delay)
                await wait_event(stop, delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.retry_delay_max_s)
                continue
            if not self.healthy:
                log.warning("Grafana annotations resumed")
            self.healthy = True
            delay = self.retry_delay_s
            if done == "posted":
                self.stats.posted += 1
            elif done == "updated":
                self.stats.updated += 1
            self._pop(job)

    def _pop(self, job: Job) -> None:
        with self._lock:
            if self._queue and self._queue[0] is job:
                self._queue.popleft()

    # ------------------------------------------------------------------ checkpoints

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"ids": [[k, i, c] for k, (i, c) in self._ids.items()],
                    "pending": [asdict(j) for j in self._queue]}

    def restore(self, state: dict[str, Any]) -> None:
        with self._lock:
            for key, ann_id, closed in state.get("ids", []):
                self._ids[str(key)] = (int(ann_id), bool(closed))
            for j in state.get("pending", []):
                self._queue.append(Job(j["event_id"], bool(j["closed"]), int(j["start_ms"]),
                                       int(j["end_ms"]), tuple(j["tags"]), str(j["text"])))

    def health(self) -> dict[str, Any]:
        s = self.stats
        return {"annotations_queued": len(self._queue), "annotations_posted": s.posted,
                "annotations_updated": s.updated, "annotation_failures": s.failures,
                "annotations_dropped": s.dropped, "annotations_rejected": s.rejected,
                "grafana_healthy": self.healthy, "grafana_last_error": s.last_error}


def make_api(url: str, token: str, timeout_s: float) -> Any:
    """A grafana-client API for ``url`` (a path prefix keeps its place, as in grafana push)."""
    from grafana_client import GrafanaApi

    return GrafanaApi.from_url(url.rstrip("/") + "/", credential=token, timeout=timeout_s)


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return int(status) if isinstance(status, int) else None


def _describe(exc: BaseException) -> str:
    status = _status(exc)
    if status == 401:
        return "401 Unauthorized: Grafana refused the token"
    if status == 403:
        return "403 Forbidden: the token lacks the Editor role"
    text = str(getattr(exc, "message", "") or exc)
    return f"{type(exc).__name__}: {text[:200]}"
