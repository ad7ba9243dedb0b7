"""The demo's own MQTT client: replays the history, watches the chain, records readings.

It subscribes to every reading (counted for readings/s, and appended to the CSV copy in
the output folder, so the report is made from exactly what the agent published), to the
alerts the detector service raises, and to the service's and the agent's status and
health. It also publishes the history (the meters' meta first, as the agent does, then
every history reading at QoS 1) before the live part starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .. import contract

REPLAY_STREAM = "history"
ALERTS = "recp/v1/_alerts/#"
DETECT = "recp/v1/_detect/+/+"


@dataclass
class Alert:
    """The last alert message of one event (open, then close)."""

    id: str
    payload: dict[str, Any]


@dataclass
class LiveState:
    """What the demo's client has seen so far."""

    readings: int = 0
    history_published: int = 0
    last_ts: float | None = None  # newest reading time (simulated, as stamped by the agent)
    meters_seen: set[str] = field(default_factory=set)
    values: dict[str, dict[str, float | None]] = field(default_factory=dict)
    alerts: dict[str, Alert] = field(default_factory=dict)
    raised: dict[str, float | None] = field(default_factory=dict)  # event id -> sim time
    detect_status: str = ""
    detect_health: dict[str, Any] = field(default_factory=dict)
    agent_status: str = ""
    _window: deque[tuple[float, int]] = field(default_factory=deque)

    def rate(self) -> float:
        """Readings per wall second over the last few seconds."""
        now = time.monotonic()
        self._window.append((now, self.readings))
        while len(self._window) > 2 and now - self._window[0][0] > 3.0:
            self._window.popleft()
        t0, n0 = self._window[0]
        return (self.readings - n0) / (now - t0) if now > t0 else 0.0

    def open_alerts(self) -> list[Alert]:
        return [a for a in self.alerts.values() if a.payload.get("event") == "open"]


class Recorder:
    """Appends live readings to ``<meter>.csv`` in the history's column layout."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.columns: dict[str, list[str]] = {}
        self.files: dict[str, Any] = {}
        self.writers: dict[str, Any] = {}
        for path in sorted(folder.glob("*.csv")):
            with path.open(newline="", encoding="utf-8") as f:
                head = next(csv.reader(f), None)
            if head:
                self.columns[path.stem] = head[1:]

    def add(self, r: contract.Reading) -> None:
        cols = self.columns.get(r.meter)
        if cols is None or r.quality is contract.Quality.ERROR:
            return
        w = self.writers.get(r.meter)
        if w is None:
            f = (self.folder / f"{r.meter}.csv").open("a", newline="", encoding="utf-8")
            self.files[r.meter] = f
            w = self.writers[r.meter] = csv.writer(f, lineterminator="\n")
        ts = contract.format_ts(r.ts.timestamp())
        w.writerow([ts, *("" if r.values.get(c) is None else repr(r.values[c]) for c in cols)])

    def close(self) -> None:
        for f in self.files.values():
            with contextlib.suppress(OSError):
                f.close()
        self.files.clear()
        self.writers.clear()


def client(url: str, protocol: str, identifier: str) -> Any:
    """An aiomqtt client for the demo's own use (credentials from the environment)."""
    import os

    import aiomqtt

    u = urlsplit(url)
    tls = None
    if u.scheme == "mqtts":
        import ssl

        tls = ssl.create_default_context()
    return aiomqtt.Client(
        u.hostname or "127.0.0.1", u.port or (8883 if tls else 1883), identifier=identifier,
        protocol=(aiomqtt.ProtocolVersion.V311 if protocol == "3.1.1"
                  else aiomqtt.ProtocolVersion.V5),
        username=os.environ.get("RECP_MQTT_USERNAME"),
        password=os.environ.get("RECP_MQTT_PASSWORD"), tls_context=tls, timeout=10,
        max_inflight_messages=500, logger=_quiet(),
    )  # fmt: skip


def _quiet() -> Any:
    import logging

    log = logging.getLogger("recp.demo.mqtt")
    log.setLevel(logging.ERROR)  # aiomqtt warns about every queued publish otherwise
    return log


async def watch(c: Any, site: str, state: LiveState, recorder: Recorder | None,
                on_alert: Callable[[dict[str, Any]], None]) -> None:
    """Consume what the chain publishes until cancelled."""
    await c.subscribe([(contract.subscription(site, "reading"), 0), (ALERTS, 0), (DETECT, 0),
                       (contract.status_topic(site), 0)])
    async for msg in c.messages:
        topic = str(msg.topic)
        payload = bytes(msg.payload) if not isinstance(msg.payload, bytes) else msg.payload
        try:
            if topic.endswith("/reading"):
                r = contract.Reading.model_validate_json(payload)
                if r.stream == REPLAY_STREAM:
                    continue
                state.readings += 1
                state.meters_seen.add(r.meter)
                state.values[r.meter] = r.values
                ts = r.ts.timestamp()
                if state.last_ts is None or ts > state.last_ts:
                    state.last_ts = ts
                if recorder is not None:
                    recorder.add(r)
            elif topic.startswith("recp/v1/_alerts/"):
                data = json.loads(payload)
                state.alerts[data["id"]] = Alert(data["id"], data)
                if data.get("event") == "open":  # when it was raised, in simulated time
                    state.raised.setdefault(data["id"], state.last_ts)
                on_alert(data)
            elif topic.startswith("recp/v1/_detect/"):
                if topic.endswith("/status"):
                    state.detect_status = json.loads(payload).get("state", "")
                elif topic.endswith("/health"):
                    state.detect_health = json.loads(payload)
            elif topic.endswith("/_agent/status"):
                state.agent_status = json.loads(payload).get("state", "")
        except (ValueError, KeyError, TypeError):
            continue  # not ours to judge: the service dead-letters malformed readings


def history_messages(history_dir: Path, site: str, meta: list[tuple[str, bytes]], *,
                     spacing_s: tuple[float, float] = (300.0, 600.0),
                     jitter_s: float = 120.0) -> list[tuple[str, bytes]]:
    """The history as the agent would have published it, in time order.

    Rows are kept at random spacings in ``spacing_s`` and stamped up to ``jitter_s`` off
    (seeded per meter), as an agent polling the accelerated plant reads them: at 4320x
    the 10 to 30 ms between the clock's read and a meter's answer on a busy machine are
    one or two simulated minutes. The detectors so learn from data as irregular as the
    live part's, not from readings exact to the second.
    """
    import random

    from ..quantities import QUANTITIES

    manifest = json.loads((history_dir / "meters.json").read_text(encoding="utf-8"))["meters"]
    rows: list[tuple[float, str, list[str], list[str]]] = []
    for mid in manifest:
        rng = random.Random(f"demo-history/{mid}")
        next_t = -1.0
        with (history_dir / f"{mid}.csv").open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            head = next(reader)
            for row in reader:
                t = _epoch(row[0])
                if t >= next_t:
                    stamp = t + rng.uniform(-jitter_s, jitter_s)
                    rows.append((stamp, mid, head, row))
                    next_t = t + rng.uniform(*spacing_s)
    rows.sort(key=lambda r: r[0])
    seqs: dict[str, int] = {}
    out = list(meta)
    for stamp, mid, head, row in rows:
        seqs[mid] = seqs.get(mid, 0) + 1
        values = {h: (float(v) if v != "" else None) for h, v in zip(head[1:], row[1:],
                                                                      strict=True)
                  if h in QUANTITIES}
        resource = manifest[mid]["resource"]
        ts = stamp
        payload = contract.reading_payload(
            site=site, meter=mid, resource=resource, stream=REPLAY_STREAM, seq=seqs[mid],
            ts=ts, quality=contract.Quality.OK, values=values)
        out.append((contract.reading_topic(site, mid), contract.dumps(payload)))
    return out


def _epoch(stamp: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def publish_all(c: Any, messages: list[tuple[str, bytes]], state: LiveState,
                      window: int = 2000) -> None:
    """Publish at QoS 1, ``window`` at a time, each window acknowledged before the next.

    Straight through paho (under aiomqtt), which keeps ``max_inflight_messages`` in flight
    and queues the rest: about ten times aiomqtt's one-future-per-publish pace.
    """
    import paho.mqtt.client as paho

    inner = c._client
    for i in range(0, len(messages), window):
        chunk = messages[i : i + window]
        infos = []
        for topic, payload in chunk:
            info = inner.publish(topic, payload, qos=1, retain=topic.endswith("/meta"))
            if info.rc != paho.MQTT_ERR_SUCCESS:
                why = paho.error_string(info.rc)
                raise ConnectionError(f"could not publish the history ({why})")
            infos.append(info)
        while not all(x.is_published() for x in infos):
            await asyncio.sleep(0.01)
        state.history_published += sum(1 for t, _ in chunk if t.endswith("/reading"))
