"""``recp detect``: the wiring of subscriber, validation, spool, sink, pipelines and alerts.

Start order: the spool and its sink first, then the MQTT session (the source); stop in
reverse: stop taking messages, finish the batch in hand, checkpoint, then keep writing the
spool for up to ``drain_timeout_s``. The MQTT session is persistent (fixed client id,
``clean_start=False``, session expiry), every subscription QoS 1 and acknowledged by hand:
a message is PUBACKed only after its points are committed to the on-disk spool, so a
crash at any point makes the broker deliver it again, and :class:`~.dedup.SeqTracker`
drops what was already stored.

Per batch of messages (up to ``processing.batch``, waiting at most ``batch_wait_s``):
validate (dead letters out), dedup, render ``reading`` points, commit them to the spool,
then run the meters' pipelines in a worker thread (numba), commit their ``consumption``,
``anomaly`` and ``event`` points, commit the alerts of events that opened or closed to the
spool (keyed by event id and open/close: a replay after a crash derives them again and adds
nothing) and queue them, and PUBACK the batch. An alert is marked sent after the broker's
PUBACK and sent again after a restart until then: at least once, the same payload each
time, so a consumer tells a redelivery by its ``id`` and ``event``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from collector import contract
from collector.aio import wait_event
from collector.quantities import QUANTITIES

from . import checkpoint, mqttfast
from .alerts import AlertSettings, Transition
from .annotations import Annotator, make_api
from .config import AnalyticsSpec
from .dedup import SeqTracker
from .dedup import State as DedupState
from .fastcheck import Item, Rows
from .inputs import inputs_from_config
from .lines import QUALITY_CODES, line, series
from .lines import _tag as _key
from .pipeline import Interval, MeterPipeline, Settings, warm_up
from .sink import InfluxWriter, SpoolSink
from .spool import INPUT, PIPELINE, Replay, Spool
from .validate import (
    ALERTS_ROOT,
    DETECT_ROOT,
    DeadLetter,
    Limits,
    fast_rows,
    parse_message,
    parse_oldest,
    split_topic,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
MeterKey = tuple[str, str]
DKey = tuple[str, str, str]  # site, meter, stream


def owns(site: str, meter: str, index: int, count: int) -> bool:
    """Whether partition ``index`` of ``count`` handles this meter (crc32 of site/meter)."""
    return count <= 1 or zlib.crc32(f"{site}/{meter}".encode()) % count == index


def _ms(ts: float) -> int:
    return round(ts * 1000.0)


def item_line(r: Item) -> str | None:
    """The ``reading`` point of a validated reading (what :func:`reading_line` makes of the
    model; its values are quantity names and finite, validation saw to that)."""
    return _reading_text(_reading_head(r.site, r.meter, r.resource), r.seq, r.ts_s,
                         r.quality, r.values)  # fmt: skip


def _reading_head(site: str, meter: str, resource: str) -> str:
    """The ``reading`` series text of a meter (measurement and tags), kept per meter."""
    head = _READING_SERIES.get((site, meter, resource))
    if head is None:
        head = series("reading", (("site", site), ("meter", meter), ("resource", resource)))
        if len(_READING_SERIES) < 100_000:
            _READING_SERIES[(site, meter, resource)] = head
    return head


def _reading_text(head: str, seq: int, ts_s: float, quality: str,
                  values: dict[str, Any]) -> str:  # fmt: skip
    """One reading's point: the series text, its finite values, quality, seq and time."""
    fields = ",".join([f"{_FIELD[k]}{v!r}" for k, v in values.items() if v is not None])
    sep = "," if fields else ""
    return (f"{head} {fields}{sep}quality={QUALITY_CODES[quality]}i,seq={seq}i "
            f"{round(ts_s * 1000.0)}")


_READING_SERIES: dict[tuple[str, str, str], str] = {}


_FIELD = {name: f"{_key(name)}=" for name in QUANTITIES}


def reading_line(r: contract.Reading, ts: float | None = None) -> str | None:
    fields: dict[str, float | int | None] = dict(r.values)
    fields["quality"] = QUALITY_CODES[r.quality.value]
    fields["seq"] = r.seq
    return line("reading", {"site": r.site, "meter": r.meter, "resource": r.resource.value},
                fields, _ms(r.ts.timestamp() if ts is None else ts))


def agent_line(h: contract.Health) -> str | None:
    """``agent``: an edge agent's own health (devices, outbox, clock), at its report time."""
    states = [d.state for d in h.devices.values()]
    fields: dict[str, float | int | None] = {
        "devices_up": states.count("up"),
        "devices_down": states.count("down") + states.count("offline"),
        "outbox_depth": h.outbox.depth,
        "outbox_held": h.outbox.held,
        "outbox_dropped": sum(h.outbox.dropped.values()),
        "uptime_s": float(h.uptime_s),
        "clock_synced": 1 if h.clock is contract.ClockState.SYNCED else 0,
    }
    return line("agent", {"site": h.site}, fields, _ms(h.ts.timestamp()))



def dropped_line(d: contract.Dropped, missing: int) -> str | None:
    """``dropped``: readings an agent's outbox dropped, at the time of its latest drop.

    ``reason`` is a tag, not a string field: a string field has no place in Prometheus-style
    stores (VictoriaMetrics shows a meaningless ``dropped_reason``), a tag labels the counts."""
    return line("dropped", {"site": d.site, "meter": d.meter, "stream": d.stream,
                            "reason": d.reason},
                {"count": d.count, "through_seq": d.through_seq, "missing": missing},
                _ms(d.ts.timestamp()))


def interval_lines(p: MeterPipeline, iv: Interval, band_sigma: float = 2.0) -> list[str]:
    out = []
    t_ms = iv.t_s * 1000
    x = iv.actual
    e, band = iv.expected, band_sigma * iv.std
    used = x if math.isfinite(x) else iv.gap_estimate  # cost: measured, or a gap's share
    cons = line("consumption",
                {"site": p.site, "meter": p.meter, "resource": p.resource, "unit": p.info.unit},
                {"actual": x, "gap_estimate": iv.gap_estimate, "expected": e, "lower": e - band,
                 "upper": e + band, "flags": iv.flags, "cost": p.info.cost(used),
                 "co2_kg": p.info.co2_kg(used)},
                t_ms)  # fmt: skip
    if cons:
        out.append(cons)
    for kind, score in iv.scores.items():
        fields: dict[str, float | None] = {"score": score}
        if kind == "level_shift":
            fields["step_per_h"] = iv.diagnostics[kind][2]
        elif kind == "overspend":
            fields["cusum"] = iv.diagnostics[kind][0]
        a = line("anomaly", {"site": p.site, "meter": p.meter, "detector": kind}, fields, t_ms)
        if a:
            out.append(a)
    return out


def event_line(t: Transition) -> str | None:
    e = t.event
    return line(
        "event",
        {"site": t.site, "meter": e.meter, "resource": t.resource, "type": e.type.value,
         "severity": e.severity.value, "unit": e.unit, "event_id": t.event_id},
        {"excess": e.excess, "cost": e.cost, "co2_kg": e.co2_kg, "open": int(e.end is None),
         "end_ts": e.end.timestamp() if e.end else 0.0, "score": e.score,
         "explanation": e.explanation},
        _ms(e.start.timestamp()),
    )  # fmt: skip


def alert_payload(t: Transition, currency: str, now_s: float) -> bytes:
    e = t.event
    return contract.dumps({
        "v": 1, "event": "open" if t.kind == "open" else "close", "id": t.event_id,
        "site": t.site, "meter": e.meter, "resource": t.resource, "type": e.type.value,
        "severity": e.severity.value, "start": contract.format_ts(e.start.timestamp()),
        "end": contract.format_ts(e.end.timestamp()) if e.end else None,
        "excess": round(e.excess, 6), "unit": e.unit,
        "cost": None if e.cost is None else round(e.cost, 4), "currency": currency,
        "co2_kg": None if e.co2_kg is None else round(e.co2_kg, 4),
        "score": round(e.score, 4), "explanation": e.explanation,
        "published": contract.format_ts(now_s),
    })  # fmt: skip


def make_writer(spec: AnalyticsSpec) -> Any:
    """The database writer: InfluxDB (or anything speaking /api/v2/write), or the embedded
    store for ``sqlite:FILE`` (relative to the analytics file)."""
    from ..store import StoreWriter, store_path

    cfg = spec.config.influx
    path = store_path(spec.influx_url)
    if path is not None:
        return StoreWriter(spec.path(path))
    return InfluxWriter(spec.influx_url, spec.influx_token, cfg.org, cfg.bucket,
                        cfg.timeout_s, cfg.gzip)


@dataclass
class Stats:
    started_s: float = field(default_factory=time.time)
    readings_in: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    not_ours: int = 0
    points_spooled: int = 0
    alerts: int = 0
    batches: int = 0
    newest_ts: float = 0.0
    checkpoints: int = 0
    checkpoint_errors: int = 0
    pipeline_errors: int = 0
    drops_announced: int = 0


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    alert: int = 0  # an alert's row in the spool: marked sent after the broker's PUBACK


class DetectService:
    """One instance of the detector service (one partition of the meters)."""

    def __init__(self, spec: AnalyticsSpec, *, writer: Any = None) -> None:
        self.spec = spec
        cfg = spec.config
        self.cfg = cfg
        self.spool = Spool(spec.spool_path, cfg.spool.cap, cfg.spool.synchronous)
        if writer is None:
            writer = make_writer(spec)
        self.writer = writer
        self.sink = SpoolSink(self.spool, writer, batch=cfg.influx.batch,
                              retry_delay_s=cfg.influx.retry_delay_s,
                              retry_delay_max_s=cfg.influx.retry_delay_max_s)
        p = cfg.processing
        self.limits = Limits(p.max_payload_bytes, p.max_future_s, parse_oldest(p.oldest_ts),
                             p.max_batch_payload_bytes)
        a = cfg.alerts
        self.alert_settings = AlertSettings(a.spike_open, a.spike_close, a.spike_min_rel,
                                            a.stuck_hours, a.close_after)
        self.stats = Stats()
        self.dedup = SeqTracker()
        self.meters: dict[MeterKey, MeterPipeline] = {}
        self.metas: dict[MeterKey, contract.MeterMeta] = {}
        self.last_seen: dict[MeterKey, float] = {}
        self.pending_acks: dict[MeterKey, tuple[str, int]] = {}
        self.outgoing: deque[Outgoing] = deque()
        self.outgoing_dropped = 0
        self._events_changed = False  # an event opened or closed since the last checkpoint
        self.connected = False
        self._state_lock = asyncio.Lock()
        self._save_lock = asyncio.Lock()
        self.inputs = inputs_from_config(spec.config)
        self.replay: list[list[Replay]] = []  # batches to feed again on start (SIGKILL)
        self.annotator: Annotator | None = None
        g = cfg.grafana
        if g is not None and spec.grafana_token:
            self.annotator = Annotator(
                make_api(g.url, spec.grafana_token, g.timeout_s), cap=g.queue,
                retry_delay_s=g.retry_delay_s, retry_delay_max_s=g.retry_delay_max_s,
                dashboard_uid=g.dashboard_uid, tags=tuple(g.tags))
        self._restore()

    # ------------------------------------------------------------------ state

    def settings_for(self, site: str) -> Settings:
        p = self.cfg.processing
        s = self.spec.site(site)
        return Settings(p.interval_s, p.utc_offset_s if s.utc_offset_s is None else
                        s.utc_offset_s, p.night_hours_utc, self.alert_settings,
                        p.clock_step_hold_s)

    def _restore(self) -> None:
        state = checkpoint.load(self.spec.checkpoint_path)
        # the spool's dedup marks are committed with every batch, never older than the
        # checkpoint's: after SIGKILL they hold what was stored (and PUBACKed) since
        self.dedup = SeqTracker.restore((state or {}).get("dedup", []))
        self.dedup.update(self.spool.marks())
        # readings fed to the detectors after the checkpoint (none after a clean stop)
        through = int((state or {}).get("replay_through", 0))
        if through > self.spool.replay_last:
            log.warning("the spool %s is not the one the checkpoint knew (a new file?): "
                        "feeding the detectors all %d of its readings kept for a restart",
                        self.spool.path, len(self.spool.replay_rows(0)))
            self.spool.replay_ids_above(through)
            through = 0
        self.replay = self.spool.replay_rows(through)
        for alert_id, topic, payload, qos in self.spool.unsent_alerts():  # before a crash
            self._queue_out(Outgoing(topic, payload, qos, alert=alert_id))
        if state is None:
            return
        if self.annotator is not None:
            self.annotator.restore(state.get("grafana") or {})
        self.inputs.restore(state.get("inputs") or [])
        for m in state.get("metas") or []:  # a meter first seen in the replay knows its meta
            with contextlib.suppress(ValueError):
                meta = contract.MeterMeta.model_validate(m)
                self.metas[(meta.site, meta.meter)] = meta
        for snap in state.get("meters", []):
            try:
                pipe = MeterPipeline.restore(snap, self.settings_for(snap["site"]))
            except (KeyError, TypeError, ValueError) as exc:
                log.error("checkpoint entry for %s/%s unusable (%s); starting it fresh",
                          snap.get("site"), snap.get("meter"), exc)
                continue
            pipe.set_baseline(self.load_baseline(pipe.site, pipe.meter))
            self._wire_inputs(pipe)
            self.meters[(pipe.site, pipe.meter)] = pipe
        log.info("restored %d meters from %s (saved %.0f s ago)", len(self.meters),
                 self.spec.checkpoint_path, time.time() - float(state.get("saved_at", 0)))

    def snapshot(self) -> dict[str, Any]:
        state: dict[str, Any] = {"dedup": self.dedup.snapshot(),
                                 "meters": [p.snapshot() for p in self.meters.values()],
                                 "replay_through": self.spool.replay_last,
                                 "metas": [m.model_dump(mode="json")
                                           for m in self.metas.values()]}
        if self.annotator is not None:
            state["grafana"] = self.annotator.snapshot()
        if self.inputs:
            state["inputs"] = self.inputs.snapshot()
        return state

    async def save_checkpoint(self) -> None:
        # one save at a time: the periodic one and the final one must not share the temp file
        async with self._save_lock:
            state = await self._locked_in_thread(self.snapshot)
            await asyncio.to_thread(checkpoint.save, self.spec.checkpoint_path, state)
            await asyncio.to_thread(self.spool.forget_replay, state["replay_through"])
        self.stats.checkpoints += 1

    async def _locked_in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread under the state lock, held until the thread is
        done even when the caller is cancelled (a lost broker cancels the session's tasks
        mid-batch): a thread cannot be stopped, and the next batch (a new session's, often
        the same messages delivered again) must never run beside it on the same dedup
        marks, pipelines and spool."""
        async with self._state_lock:
            work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                while not work.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait([work])
                if not work.cancelled() and work.exception() is not None:
                    log.warning("a batch cancelled mid-way failed in its thread: %s",
                                _describe(work.exception()))  # type: ignore[arg-type]
                raise

    def pipeline(self, site: str, meter: str, resource: str) -> MeterPipeline:
        key = (site, meter)
        pipe = self.meters.get(key)
        if pipe is None:
            s = self.spec.site(site)
            pipe = MeterPipeline(site, meter, resource, self.settings_for(site), s.currency)
            meta = self.metas.get(key)
            if meta is not None:
                pipe.set_meta(meta, s.price_per_unit, s.co2_kg_per_unit)
            pipe.set_baseline(self.load_baseline(site, meter))
            self._wire_inputs(pipe)
            self.meters[key] = pipe
        return pipe

    def _wire_inputs(self, pipe: MeterPipeline) -> None:
        """Give a meter its outdoor temperature and production, when the file names them."""
        links = self.inputs.of(pipe.site, pipe.meter)
        if links is None:
            return
        inputs, site = self.inputs, pipe.site

        def of_intervals(starts: list[int], interval_s: int
                         ) -> tuple[list[float] | None, list[float] | None]:
            return inputs.for_intervals(site, links, starts, interval_s)

        pipe.inputs = of_intervals

    def load_baseline(self, site: str, meter: str) -> Any:
        """The meter's fitted baseline from ``baselines.dir``, or None (logged, not fatal)."""
        folder = self.cfg.baselines.dir
        if folder is None:
            return None
        path = self.spec.path(folder) / site / f"{meter}.json"
        if not path.exists():
            return None
        try:
            from ..baseline import BaselineModel

            return BaselineModel.from_json(path.read_text(encoding="utf-8"))
        except Exception as exc:  # a bad file must not stop the meter's other work
            log.error("baseline %s not usable: %s", path, exc)
            return None

    # ------------------------------------------------------------------ one batch

    def _dead(self, dl: DeadLetter, now: float) -> None:
        self.stats.dead_letters += 1
        log.info("dead letter from %s: %s", dl.topic, dl.reason)
        self._queue_out(Outgoing(dl.out_topic, dl.to_json(now)))

    def _queue_out(self, msg: Outgoing) -> None:
        if len(self.outgoing) >= 100_000:  # the oldest that is no alert (alerts are few)
            for i, old in enumerate(self.outgoing):
                if not old.alert:
                    del self.outgoing[i]
                    self.outgoing_dropped += 1
                    break
        self.outgoing.append(msg)

    def _record_alerts(self, transitions: list[Transition], now: float) -> None:
        """Commit the alerts of events that opened or closed, then queue them (batch
        thread). One already in the spool (a replay derived it again) is not queued.

        Their Grafana annotations are handed to the annotator here, in the batch thread
        under the state lock, and only here: a checkpoint's snapshot (taken under the same
        lock) holds the jobs of every batch it covers, also of a batch whose session was
        cancelled mid-way (the annotator finds an annotation already posted, so a replayed
        one adds nothing)."""
        alerts = [t for t in transitions if t.kind in ("open", "close")]
        if not alerts:
            return
        self._events_changed = True
        rows = []
        currencies = []
        for t in alerts:
            cur = self.meters[(t.site, t.event.meter)].currency
            currencies.append(cur)
            rows.append((f"{t.event_id}/{t.kind}", f"{ALERTS_ROOT}/{t.site}/{t.event.meter}",
                         alert_payload(t, cur, now), self.cfg.alerts.qos))
        for (_, topic, payload, qos), alert_id in zip(rows, self.spool.add_alerts(rows),
                                                      strict=True):
            if alert_id is not None:
                self._queue_out(Outgoing(topic, payload, qos, alert=alert_id))
        if self.annotator is not None:
            for t, cur in zip(alerts, currencies, strict=True):
                self.annotator.submit(t, cur)

    async def _checkpoint_after_events(self) -> None:
        """Save a checkpoint when an event opened or closed: a restart then replays less.
        Nothing depends on it (the alerts are in the spool already): a failed or cancelled
        save loses nothing and raises nothing twice."""
        if not self._events_changed:
            return
        self._events_changed = False
        try:
            await self.save_checkpoint()
        except Exception:
            self.stats.checkpoint_errors += 1
            log.exception("checkpoint after an event's opening or closing not saved")

    def _run_pipelines(
        self, batch: dict[MeterKey, list[tuple[float, dict[str, Any], str]]]
    ) -> tuple[list[str], list[Transition]]:
        lines: list[str] = []
        transitions: list[Transition] = []
        for (site, meter), readings in batch.items():
            pipe = self.pipeline(site, meter, readings[0][2])
            try:
                for ts, values, _ in readings:
                    pipe.add(ts, values)
                intervals, trans = pipe.complete()
            except Exception:
                # the readings are stored; one meter's analysis failing stops nothing else
                self.stats.pipeline_errors += 1
                log.exception("pipeline of %s/%s failed on this batch", site, meter)
                continue
            for iv in intervals:
                lines += interval_lines(pipe, iv, self.cfg.baselines.band_sigma)
            transitions += trans
        for t in transitions:
            ev = event_line(t)
            if ev:
                lines.append(ev)
        return lines, transitions

    def _take(self, item: Item, topic: str, payload: bytes, now: float, lines: list[str],
              by_meter: dict[MeterKey, list[tuple[float, dict[str, Any], str]]],
              touched: set[DKey], before: dict[DKey, DedupState],
              replay: list[Replay]) -> None:
        """One valid reading: inputs, partition, dedup, its ``reading`` point."""
        key = (item.site, item.meter)
        inputs = self.inputs
        if inputs and inputs.is_input(*key):
            # every partition keeps the inputs its meters' baselines need
            inputs.feed(item.site, item.meter, item.ts_s, item.values)
            replay.append((item.site, item.meter, item.resource, item.ts_s, item.values,
                           INPUT))
        part = self.cfg.processing.partition
        if part.count > 1 and not owns(item.site, item.meter, part.index, part.count):
            self.stats.not_ours += 1
            return
        if self.cfg.processing.require_meta and key not in self.metas:
            self._dead(DeadLetter(topic, payload, f"unknown meter {item.site}/{item.meter} "
                                  "(no meta message)", item.site), now)
            return
        dkey = (item.site, item.meter, item.stream)
        if dkey not in touched:
            touched.add(dkey)
            before[dkey] = self.dedup.state_of(dkey)
        if not self.dedup.accept(dkey, item.seq):
            self.stats.duplicates += 1
            return
        self.stats.readings_in += 1
        ts = item.ts_s
        if ts > self.stats.newest_ts:
            self.stats.newest_ts = ts
        if ts > self.last_seen.get(key, 0.0):
            self.last_seen[key] = ts
        text = item_line(item)
        if text:
            lines.append(text)
        got = by_meter.get(key)
        if got is None:
            got = by_meter[key] = []
        got.append((ts, item.values, item.resource))
        replay.append((item.site, item.meter, item.resource, ts, item.values, PIPELINE))

    def _take_rows(self, rows: Rows, topic: str, payload: bytes, now: float, lines: list[str],
                   by_meter: dict[MeterKey, list[tuple[float, dict[str, Any], str]]],
                   touched: set[DKey], before: dict[DKey, DedupState],
                   replay: list[Replay]) -> None:
        """A ``readings`` message's valid readings: what :meth:`_take` does for each, once
        per message where it can (dedup of a run of seqs, the series text)."""
        site, meter, resource = rows.site, rows.meter, rows.resource
        key = (site, meter)
        if (self.inputs and self.inputs.is_input(*key)) or (
                self.cfg.processing.require_meta and key not in self.metas):
            for item in rows.items():  # inputs and dead letters go reading by reading
                self._take(item, topic, payload, now, lines, by_meter, touched, before,
                           replay)
            return
        # another partition's meter never gets here: _handle_sync asked _ours() first
        dkey = (site, meter, rows.stream)
        if dkey not in touched:
            touched.add(dkey)
            before[dkey] = self.dedup.state_of(dkey)
        new = self.dedup.accept_many(dkey, rows.seqs)
        seqs, times, qualities, values = rows.seqs, rows.ts_s, rows.qualities, rows.values
        if new is not None:  # some were stored before: keep the others
            self.stats.duplicates += new.count(False)
            keep = [i for i, fresh in enumerate(new) if fresh]
            if not keep:
                return
            seqs = [seqs[i] for i in keep]
            times = [times[i] for i in keep]
            qualities = [qualities[i] for i in keep]
            values = [values[i] for i in keep]
        self.stats.readings_in += len(seqs)
        newest = max(times)
        if newest > self.stats.newest_ts:
            self.stats.newest_ts = newest
        if newest > self.last_seen.get(key, 0.0):
            self.last_seen[key] = newest
        head = _reading_head(site, meter, resource)
        lines += [_reading_text(head, seq, ts, quality, vals)
                  for seq, ts, quality, vals in zip(seqs, times, qualities, values, strict=True)]
        got = by_meter.get(key)
        if got is None:
            got = by_meter[key] = []
        got += [(ts, vals, resource) for ts, vals in zip(times, values, strict=True)]
        replay += [(site, meter, resource, ts, vals, PIPELINE)
                   for ts, vals in zip(times, values, strict=True)]

    def _ours(self, topic: str) -> bool:
        """Whether this partition takes a ``reading``/``readings`` message, by its topic
        (before validating it): its meter is ours, or an input our meters' baselines
        need. Other topics: decided after validation."""
        if not topic.endswith(("/reading", "/readings")):
            return True
        where = split_topic(topic)
        if where is None or where[1] == contract.AGENT:
            return True
        site, meter = where[0], where[1]
        part = self.cfg.processing.partition
        return (owns(site, meter, part.index, part.count)
                or bool(self.inputs and self.inputs.is_input(site, meter)))

    def _dropped(self, res: contract.Dropped, lines: list[str], touched: set[DKey],
                 before: dict[DKey, DedupState]) -> None:
        """The agent's announcement of readings its outbox dropped: dedup moves past them."""
        dkey = (res.site, res.meter, res.stream)
        if dkey not in touched:
            touched.add(dkey)
            before[dkey] = self.dedup.state_of(dkey)
        missing = self.dedup.skip_to(dkey, res.through_seq)
        if missing is not None:  # not a repeat: stored where users see it
            self.stats.drops_announced += 1
            log.warning("%s/%s: the agent dropped %d readings so far (%s); %d of "
                        "them up to seq %d never arrived", res.site, res.meter,
                        res.count, res.reason, missing, res.through_seq)
            text = dropped_line(res, missing)
            if text:
                lines.append(text)

    def _handle_sync(
        self, messages: list[tuple[str, bytes]], now: float
    ) -> set[tuple[str, str, str]]:
        """The work of :meth:`handle`, in one worker thread (one GIL hand-over per batch)."""
        part = self.cfg.processing.partition
        lines: list[str] = []
        by_meter: dict[MeterKey, list[tuple[float, dict[str, Any], str]]] = {}
        touched: set[DKey] = set()
        before: dict[DKey, DedupState] = {}
        replay: list[Replay] = []  # what the detectors are fed, kept until a checkpoint
        for topic, payload in messages:
            if part.count > 1 and not self._ours(topic):
                self.stats.not_ours += 1  # another partition validates and stores it
                continue
            several = topic.endswith("/readings")
            rows = fast_rows(topic, payload, now, self.limits) if several else None
            if rows is not None:
                self._take_rows(rows, topic, payload, now, lines, by_meter, touched, before,
                                replay)
                continue
            for res in parse_message(topic, payload, now, self.limits, fast_tried=several):
                if type(res) is Item:
                    self._take(res, topic, payload, now, lines, by_meter, touched, before,
                               replay)
                elif isinstance(res, DeadLetter):
                    self._dead(res, now)
                elif isinstance(res, contract.Health):  # one instance writes each agent
                    if owns(res.site, contract.AGENT, part.index, part.count):
                        text = agent_line(res)
                        if text:
                            lines.append(text)
                elif not owns(res.site, res.meter, part.index, part.count):
                    self.stats.not_ours += 1
                elif isinstance(res, contract.Dropped):
                    self._dropped(res, lines, touched, before)
                elif isinstance(res, contract.MeterMeta):
                    key = (res.site, res.meter)
                    self.metas[key] = res
                    pipe = self.meters.get(key)
                    if pipe is not None:
                        s = self.spec.site(res.site)
                        pipe.set_meta(res, s.price_per_unit, s.co2_kg_per_unit)
        # the readings are safe on disk before anything derived from them is computed
        try:  # with the touched streams' dedup marks: a PUBACKed reading stays seen
            self.spool.append(lines, self.dedup.marks(touched), replay)
        except BaseException:
            # not stored, so not acknowledged: the broker delivers them again, and they
            # must not be taken for duplicates then
            for dkey, state in before.items():
                self.dedup.put_back(dkey, state)
            raise
        self.stats.points_spooled += len(lines)
        derived, transitions = self._run_pipelines(by_meter)
        self.spool.append(derived)
        self.stats.points_spooled += len(derived)
        self._record_alerts(transitions, now)
        return touched

    async def handle(self, messages: Iterable[tuple[str, bytes]]) -> None:
        """Validate, store and analyse one batch of (topic, payload); raises on disk errors.

        Everything runs in a worker thread (numba and SQLite off the event loop) under the
        state lock, so checkpoints see a consistent state between batches.
        """
        now = time.time()
        batch = list(messages)
        touched = await self._locked_in_thread(self._handle_sync, batch, now)
        self.stats.batches += 1
        for dkey in touched:
            self.pending_acks[(dkey[0], dkey[1])] = (dkey[2], self.dedup.done(dkey))
        self.sink.wake.set()
        await self._checkpoint_after_events()

    def _replay_sync(self) -> None:
        """Feed the detectors, batch by batch, what they had after the last checkpoint."""
        n = 0
        now = time.time()
        for rows in self.replay:
            by_meter: dict[MeterKey, list[tuple[float, dict[str, Any], str]]] = {}
            for site, meter, resource, ts, values, feed in rows:
                if feed & INPUT:
                    self.inputs.feed(site, meter, ts, values)
                if feed & PIPELINE:
                    by_meter.setdefault((site, meter), []).append((ts, values, resource))
                    n += 1
            # derived points are stamped with their interval: rewritten, not doubled
            derived, trans = self._run_pipelines(by_meter)
            self.spool.append(derived)
            self.stats.points_spooled += len(derived)
            self._record_alerts(trans, now)  # those committed before the crash: not again
        if self.replay:
            log.info("fed the detectors again %d readings (%d batches) stored after the "
                     "last checkpoint", n, len(self.replay))
        self.replay = []

    async def replay_after_checkpoint(self) -> None:
        """After SIGKILL: the readings stored since the last checkpoint, to the detectors
        (before any new message). An alert they raise again was committed before the crash
        (sent or not): its key is in the spool, so it is not queued twice."""
        if not self.replay:
            return
        await self._locked_in_thread(self._replay_sync)
        self.sink.wake.set()
        await self._checkpoint_after_events()

    # ------------------------------------------------------------------ self-metrics

    def health(self, now: float, rates: dict[str, float]) -> dict[str, Any]:
        s = self.stats
        return {
            "v": 1, "instance": self.spec.instance, "ts": contract.format_ts(now),
            "uptime_s": round(now - s.started_s, 1), "connected": self.connected,
            "partition": self.cfg.processing.partition.model_dump(),
            "readings_in": s.readings_in, "batches": s.batches, "duplicates": s.duplicates,
            "dead_letters": s.dead_letters, "alerts": s.alerts,
            "alerts_waiting": sum(1 for o in self.outgoing if o.alert),
            "pipeline_errors": s.pipeline_errors, "checkpoint_errors": s.checkpoint_errors,
            "drops_announced": s.drops_announced,
            "points_written": self.sink.stats.written, "points_rejected":
            self.sink.stats.rejected, "spool_depth": self.spool.depth,
            "spool_dropped": self.spool.dropped, "db_healthy": self.sink.healthy,
            "db_last_error": self.sink.stats.last_error, "meters": len(self.meters),
            "open_events": sum(len(p.tracker.open) for p in self.meters.values()),
            "lag_s": round(now - s.newest_ts, 3) if s.newest_ts else None,
            **{k: round(v, 2) for k, v in rates.items()},
            **(self.annotator.health() if self.annotator is not None else {}),
        }  # fmt: skip

    def metric_lines(self, now: float, health: dict[str, Any]) -> list[str]:
        out = []
        svc = line("service", {"instance": self.spec.instance}, {
            "readings_in_per_s": health["readings_in_per_s"],
            "points_out_per_s": health["points_out_per_s"],
            "lag_s": health["lag_s"], "spool_depth": health["spool_depth"],
            "dead_letters": health["dead_letters"], "open_events": health["open_events"],
            "annotations_queued": health.get("annotations_queued", 0),
            "annotation_failures": health.get("annotation_failures", 0),
        }, _ms(now))  # fmt: skip
        if svc:
            out.append(svc)
        for (site, meter), seen in self.last_seen.items():
            m = line("meter_seen", {"site": site, "meter": meter},
                     {"last_seen_s": seen, "age_s": now - seen}, _ms(now))
            if m:
                out.append(m)
        return out

    async def _metrics(self, stop: asyncio.Event) -> None:
        interval = self.cfg.metrics_interval_s
        last_t, last_in, last_out = time.time(), self.stats.readings_in, self.sink.stats.written
        topic = f"{DETECT_ROOT}/{self.spec.instance}/health"
        while not stop.is_set():
            await wait_event(stop, interval)
            now = time.time()
            dt_s = max(now - last_t, 1e-6)
            rates = {"readings_in_per_s": (self.stats.readings_in - last_in) / dt_s,
                     "points_out_per_s": (self.sink.stats.written - last_out) / dt_s}
            last_t, last_in, last_out = now, self.stats.readings_in, self.sink.stats.written
            health = self.health(now, rates)
            await asyncio.to_thread(self.spool.append, self.metric_lines(now, health))
            self._queue_out(Outgoing(topic, contract.dumps(health), 1, True))

    async def _checkpoints(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await wait_event(stop, self.cfg.checkpoint.interval_s)
            if not stop.is_set():
                try:
                    await self.save_checkpoint()
                except Exception:  # a full or failing disk must not stop the service
                    self.stats.checkpoint_errors += 1
                    log.exception("periodic checkpoint not saved")

    # ------------------------------------------------------------------ MQTT

    def _status(self, state: str, reason: str = "") -> bytes:
        return contract.dumps({"v": 1, "instance": self.spec.instance, "state": state,
                               "ts": contract.format_ts(time.time()), "reason": reason})

    def filters(self) -> list[str]:
        m = self.cfg.mqtt
        prefix = f"$share/{m.shared_group}/" if m.shared_group else ""
        sites = m.sites or ["+"]
        return [f"{prefix}{contract.subscription(s, kind)}" for s in sites
                for kind in ("reading", "readings", "meta", "dropped")] + [
            f"{prefix}{contract.health_topic(s)}" for s in sites]

    def _client(self) -> Any:
        import aiomqtt

        from collector.publisher import persistent_session, tls_context

        if not mqttfast.install():
            log.info("paho-mqtt's Properties not as expected; decoding without the shortcut")
        m = self.cfg.mqtt
        session = persistent_session(m.protocol, m.session_expiry_s, m.receive_maximum)
        status = f"{DETECT_ROOT}/{self.spec.instance}/status"
        client = aiomqtt.Client(
            m.host or "127.0.0.1", m.port,
            identifier=self.spec.client_id, keepalive=m.keepalive_s, **session,
            timeout=m.publish_timeout_s, username=self.spec.mqtt_username,
            password=self.spec.mqtt_password, tls_context=tls_context(m),
            will=aiomqtt.Will(status, self._status("offline", "connection lost"), 1, True),
            max_queued_incoming_messages=0,
        )  # fmt: skip
        # PUBACK only after the points are in the spool (paho sends it on ack())
        client._client.manual_ack_set(True)
        return client

    async def _mqtt_loop(self, stop: asyncio.Event) -> None:
        m = self.cfg.mqtt
        delay = m.reconnect_delay_s
        while not stop.is_set():
            began = time.monotonic()
            try:
                await self._session(stop)
            except Exception as exc:  # aiomqtt.MqttError, OSError, timeouts
                self.connected = False
                log.warning("MQTT session ended: %s; reconnecting in %.1f s", _describe(exc),
                            delay)
            self.connected = False
            if stop.is_set():
                return
            if time.monotonic() - began > 30:
                delay = m.reconnect_delay_s
            await wait_event(stop, delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, m.reconnect_delay_max_s)

    async def _session(self, stop: asyncio.Event) -> None:
        from paho.mqtt.subscribeoptions import SubscribeOptions

        m = self.cfg.mqtt
        client = self._client()
        inbox = Inbox()
        # paho hands each decoded message straight to the inbox (aiomqtt's per-message
        # Message objects and queue are bypassed; see docs/detector-service.md)
        client._client.on_message = inbox.on_message
        session = _SessionPresent(client._client)
        await asyncio.wait_for(client.__aenter__(), m.connect_timeout_s)
        try:
            _read_many(client)
            self.connected = True
            log.info("connected to %s as %s", self.spec.mqtt_url, self.spec.client_id)
            done = asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                # the persistent session's queued messages arrive before the SUBACK: they
                # are taken in meanwhile, and a slow SUBACK behind them is no dead broker
                tg.create_task(self._consume(client, inbox, stop, done), name="consume")
                tg.create_task(self._publish(client, inbox, done), name="publish")
                tg.create_task(self._acks(done), name="acks")
                filters = self.filters()
                # the spool's lock may be held by a batch's commit: not on the event loop
                kept = session.present and await asyncio.to_thread(
                    self.spool.subscribed, self.spec.client_id) == filters
                if kept:
                    # the broker kept our session, and with it these subscriptions: no
                    # SUBSCRIBE, whose SUBACK Mosquitto sends only after the whole backlog
                    log.info("the broker kept our session and its subscriptions")
                else:
                    await _while_alive(client.subscribe(
                        [(f, SubscribeOptions(qos=1) if m.protocol == "5" else 1)
                         for f in filters], timeout=math.inf),
                        inbox, m.connect_timeout_s, "no SUBACK from the broker")
                    await asyncio.to_thread(self.spool.set_subscribed, self.spec.client_id,
                                            filters)
                self._queue_out(Outgoing(f"{DETECT_ROOT}/{self.spec.instance}/status",
                                         self._status("online"), 1, True))
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.publish(
                    f"{DETECT_ROOT}/{self.spec.instance}/status",
                    self._status("offline", "stopped" if stop.is_set() else "reconnecting"),
                    qos=1, retain=True), 2.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.__aexit__(None, None, None), 5.0)

    async def _consume(self, client: Any, inbox: Inbox, stop: asyncio.Event,
                       done: asyncio.Event) -> None:
        """Take the inbox's messages in batches; PUBACK each batch once it is stored."""
        p = self.cfg.processing
        disconnected = client._disconnected  # aiomqtt's: set when the connection drops
        try:
            while not stop.is_set():
                if not inbox.items:
                    inbox.arrived.clear()
                    waits = [asyncio.ensure_future(inbox.arrived.wait()),
                             asyncio.ensure_future(stop.wait())]
                    try:
                        await asyncio.wait([*waits, disconnected],
                                           return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for w in waits:
                            w.cancel()
                    if disconnected.done():
                        raise ConnectionError(f"message stream ended: "
                                              f"{disconnected.exception() or 'disconnected'}")
                    if stop.is_set():
                        break
                    if len(inbox.items) < p.batch and p.batch_wait_s > 0:
                        await asyncio.sleep(p.batch_wait_s)  # let a batch gather
                items = inbox.items
                batch: list[tuple[str, bytes, int, int]] = []
                size = 0
                while items and len(batch) < p.batch and size < p.batch_bytes:
                    msg = items.popleft()
                    batch.append(msg)
                    size += len(msg[1])
                # a `readings` message carries many: room for about one per 64 bytes
                await self._backpressure(stop, max(len(batch), size // 64))
                await self.handle([(topic, payload) for topic, payload, _, _ in batch])
                ack = client._client.ack
                for _, _, mid, qos in batch:
                    if qos > 0:
                        ack(mid, qos)
        finally:
            done.set()

    async def _backpressure(self, stop: asyncio.Event, n: int) -> None:
        # room for the points of a few batches (a reading gives 1 point, intervals more)
        high = max(self.spool.cap // 2, self.spool.cap - 16 * max(n, 1))
        if self.spool.depth <= high:
            return
        log.warning("spool holds %d points (cap %d): pausing intake until the database "
                    "catches up", self.spool.depth, self.spool.cap)
        while self.spool.depth > high and not stop.is_set():
            await asyncio.sleep(0.2)

    async def _publish(self, client: Any, inbox: Inbox, done: asyncio.Event) -> None:
        timeout = self.cfg.mqtt.publish_timeout_s
        while True:
            while self.outgoing:
                msg = self.outgoing[0]
                await _while_alive(client.publish(msg.topic, msg.payload, qos=msg.qos,
                                                  retain=msg.retain, timeout=math.inf),
                                   inbox, timeout, f"no PUBACK from the broker for {msg.topic}")
                if msg.alert:  # cancelled before this: sent again (at least once)
                    await asyncio.to_thread(self.spool.alert_sent, msg.alert)
                    self.stats.alerts += 1
                if self.outgoing and self.outgoing[0] is msg:
                    self.outgoing.popleft()
            if done.is_set():
                return
            await wait_event(done, 0.05)

    async def _acks(self, done: asyncio.Event) -> None:
        while not done.is_set():
            await wait_event(done, self.cfg.ack_interval_s)
            self.flush_acks()

    def flush_acks(self) -> None:
        pending, self.pending_acks = self.pending_acks, {}
        for (site, meter), (stream, seq) in pending.items():
            payload = contract.dumps({"v": 1, "stream": stream, "seq": seq})
            self._queue_out(Outgoing(contract.ack_topic(site, meter), payload, 1, True))

    # ------------------------------------------------------------------ run

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then checkpoint and drain the spool (bounded)."""
        sink_stop = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as tg:
                sink = tg.create_task(self.sink.run(sink_stop), name="sink")
                tg.create_task(self._metrics(stop), name="metrics")
                tg.create_task(self._checkpoints(stop), name="checkpoints")
                if self.annotator is not None:
                    tg.create_task(self.annotator.run(stop), name="grafana-annotations")
                await asyncio.to_thread(warm_up, self.settings_for(""))
                await self.replay_after_checkpoint()
                await self._mqtt_loop(stop)
                await self.save_checkpoint()
                log.info("stopped taking messages; writing the spool (%d points) for up to "
                         "%.0f s", self.spool.depth, self.cfg.drain_timeout_s)
                sink_stop.set()
                self.sink.wake.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(sink), self.cfg.drain_timeout_s)
                sink.cancel()
        finally:
            with contextlib.suppress(Exception):
                self.writer.close()
            self.spool.close()
        log.info("stopped: %s", json.dumps(self.health(time.time(), {})))


class Inbox:
    """Messages as paho decodes them, ``(topic, payload, mid, qos)``, in arrival order.

    The broker sends at most ``mqtt.receive_maximum`` unacknowledged messages, so this
    holds no more than that.
    """

    def __init__(self) -> None:
        self.items: deque[tuple[str, bytes, int, int]] = deque()
        self.arrived = asyncio.Event()
        self.count = 0  # messages received (progress while waiting for a SUBACK)

    def on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.items.append((msg.topic, _payload(msg.payload), msg.mid, msg.qos))
        self.count += 1
        self.arrived.set()


async def _while_alive(call: Any, inbox: Inbox, timeout: float, what: str, *,
                       most_s: float | None = None) -> Any:
    """Await a broker's answer (SUBACK, PUBACK) for as long as messages keep arriving,
    within a bound in time.

    The broker queues its answer behind the messages it is sending us: Mosquitto 2.0 sends
    a SUBACK, or the PUBACK of our publish, only after the whole backlog queued for our
    session (measured: after all of 30,000 queued messages, with a Receive Maximum of
    4,000), which a loaded machine may take longer than ``timeout`` to read; giving up
    then reconnected into the same backlog, again and again. So ``timeout`` seconds
    without a message arriving count as a dead broker, and so does ``most_s`` seconds in
    all (default ``max(6 * timeout, 60)``): an answer that never comes (a request never
    written, a lost PUBACK) must not hold the session forever while messages keep coming
    in (TimeoutError naming ``what``). No bound in messages: the backlog ahead of the
    answer can be any length (before, 2 x ``receive_maximum`` + 1,000 messages without
    the answer ended the session, and ``--workers 2`` stalled on it).
    """
    task = asyncio.ensure_future(call)
    first = seen = inbox.count
    began = time.monotonic()
    deadline = began + (max(6.0 * timeout, 60.0) if most_s is None else most_s)
    try:
        while True:
            left = deadline - time.monotonic()
            finished, _ = await asyncio.wait([task], timeout=max(min(timeout, left), 0.0))
            if finished:
                return task.result()
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{what} ({inbox.count - first} messages arrived in "
                                   f"{time.monotonic() - began:.0f} s without it)")
            if inbox.count == seen:  # nothing arrived meanwhile either
                raise TimeoutError(what)
            seen = inbox.count
    finally:
        task.cancel()


class _SessionPresent:
    """Whether the broker's CONNACK said it kept our session (and its subscriptions):
    paho's ``on_connect`` is wrapped to note the flag, aiomqtt's own handler still runs."""

    def __init__(self, paho: Any) -> None:
        self.present = False
        inner = paho.on_connect

        def on_connect(client: Any, userdata: Any, flags: Any, *rest: Any) -> None:
            self.present = bool(getattr(flags, "session_present", False))
            inner(client, userdata, flags, *rest)

        paho.on_connect = on_connect


def _read_many(client: Any) -> None:
    """Let one socket-readable event decode every packet waiting, not just one.

    aiomqtt registers ``paho.Client.loop_read`` as the socket's reader, and paho decodes
    one packet per call for QoS 1 traffic: one message per event-loop iteration, which
    caps intake at a few thousand messages per second. This reader keeps decoding until
    the socket would block (at most 4096 packets, then yields to the loop; a TLS socket's
    bytes already decrypted, which its file descriptor does not signal, are read on the
    next loop turn). It relies on paho internals (``_sock``, ``_packet_read``,
    ``_loop_rc_handle``) and falls back to aiomqtt's own reader when they are missing.

    An unexpected error (a bug, a broken socket) is logged once with its traceback, the
    reader removed and the socket closed, and aiomqtt's ``_disconnected`` future failed
    with it: the session's consumer sees the connection ended and the service reconnects
    with back-off, instead of stalling on a socket nobody reads.
    """
    import paho.mqtt.client as mqtt

    paho = client._client
    sock = paho.socket()
    if sock is None or not all(hasattr(paho, a) for a in ("_packet_read", "_loop_rc_handle")):
        return
    loop = asyncio.get_running_loop()

    def read() -> None:
        try:
            for _ in range(4096):
                if paho._sock is None:
                    return
                rc = paho._packet_read()
                if rc == mqtt.MQTT_ERR_AGAIN:
                    return
                if rc > 0:
                    paho._loop_rc_handle(rc)
                    return
            pending = getattr(paho._sock, "pending", None)  # ssl.SSLSocket's
            if pending is not None and pending() > 0:
                loop.call_soon(read)
        except Exception as exc:
            broken(exc)

    def broken(exc: Exception) -> None:
        log.error("MQTT socket reader failed (%s); ending the session, reconnecting with "
                  "back-off", _describe(exc), exc_info=exc)
        with contextlib.suppress(Exception):
            loop.remove_reader(fd)
        with contextlib.suppress(Exception):
            paho._sock_close()
        disconnected = getattr(client, "_disconnected", None)
        if disconnected is not None and not disconnected.done():
            err = ConnectionError(f"MQTT socket reader failed: {_describe(exc)}")
            err.__cause__ = exc
            disconnected.set_exception(err)

    fd = sock.fileno()
    loop.remove_reader(fd)
    loop.add_reader(fd, read)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):  # noqa: F821 (Python 3.11)
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _payload(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    return str(payload).encode()
