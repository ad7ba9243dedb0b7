"""The whole chain on loopback, as parts a test can start, stop, SIGKILL and restart.

    virtual plant (recp simulate, its clock served as a time source, --record)
      -> edge agent (recp agent, clock.source: device)
      -> Mosquitto -> recp detect -> VictoriaMetrics

:class:`Chain` writes the plant, site and analytics files into its work folder (every port a
free loopback port, fixed for its life so a restarted part finds the others), starts the
parts in order, follows the simulated time, and :meth:`Chain.reconcile` counts per meter
what the plant served, what the agent published (sequence numbers), what VictoriaMetrics
holds, what was lost or stored twice, and which alerts were raised more than once.

Get one from the ``chain_factory`` fixture (tests/conftest.py): ``chain_factory(plant)``
with the plant file as a dict; the broker and the database are the conftest servers
(``chain.broker``, ``chain.vm``), the rest :class:`ServerProcess` objects from conftest.
A lead-in (``lead_in_days``) is the first days of the scenario written as CSV and used
offline to fit each meter's baseline, which the detector service loads; the plant then
serves from the end of the lead-in on (``recp simulate --from``), continuing its counters.
A restarted plant resumes at the simulated time it had reached (``--from``; its clock
does not run while it is down); the other parts keep their state on disk (outbox,
session, spool, checkpoint, data) across restarts.

``kill_part("agent")`` notes the plant's time of the kill; :meth:`Chain.reconcile` then
counts a meter's unstored reads after its last stored one before a kill as *in memory*
at that kill (polled, never numbered), per kill, instead of as lost. ``site_options``
(like ``analytics``) changes sections of the agent's site file.
"""

from __future__ import annotations

import bisect
import copy
import datetime as dt
import json
import math
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

LOOPBACK = "127.0.0.1"
# the service's session may queue a long backlog; the broker saves its database on changes
BROKER_CONF = "max_queued_messages 0\n"
DETECT_INSTANCE = "chain"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def utc(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def wait_until(cond: Callable[[], bool], timeout: float, what: str,
               tail: Callable[[], str] = lambda: "") -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{tail()}",
                        pytrace=False)
        time.sleep(0.1)


# --------------------------------------------------------------------------- MQTT


class Watcher:
    """A paho client with a persistent session that records everything on ``recp/v1/#``."""

    def __init__(self, host: str, port: int) -> None:
        self._lock = threading.Lock()
        self.readings: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []
        self.dead: list[dict[str, Any]] = []
        self.last: dict[str, bytes] = {}
        self.count: Counter[str] = Counter()
        self._subscribed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"chain-watch-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv5)
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda *_a: self._subscribed.set()
        self.c.on_message = self._on_message
        self.c.max_queued_messages_set(0)
        self.c.reconnect_delay_set(0.2, 1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.c.connect(host, port, keepalive=10, clean_start=False, properties=props)
        self.c.loop_start()
        if not self._subscribed.wait(15):
            pytest.fail("the chain's MQTT watcher could not subscribe", pytrace=False)

    def _on_connect(self, client: Any, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            return
        if flags.session_present:
            self._subscribed.set()
        else:
            client.subscribe("recp/v1/#", qos=1)

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        payload = bytes(msg.payload)
        topic = msg.topic
        with self._lock:
            self.last[topic] = payload
            self.count[topic] += 1
            if topic.endswith("/reading"):
                self.readings.append(json.loads(payload))
            elif topic.startswith("recp/v1/_alerts/"):
                self.alerts.append(json.loads(payload))
            elif topic.startswith("recp/v1/_deadletter/"):
                self.dead.append(json.loads(payload))

    def json(self, topic: str) -> dict[str, Any]:
        with self._lock:
            raw = self.last.get(topic)
        if not raw or not raw.startswith(b"{"):
            return {}
        return dict(json.loads(raw))

    def text(self, topic: str) -> str:
        with self._lock:
            return self.last.get(topic, b"").decode(errors="replace")

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


# --------------------------------------------------------------------------- reconciliation


@dataclass
class MeterCount:
    """One meter's readings along the chain (only readings holding its counter count)."""

    meter: str
    counter: str
    produced: int = 0  # reads of the counter the plant served
    published: int = 0  # distinct sequence numbers seen on the broker with the counter
    stored: int = 0  # samples of reading_<counter> in VictoriaMetrics
    matched: int = 0  # stored samples matched one to one with a served read
    lost: int = 0  # served, never stored
    duplicated: int = 0  # stored samples beyond the matched ones (the same reading again)
    in_memory: int = 0  # served, never numbered: taken, not yet committed at an agent SIGKILL
    in_memory_per_kill: list[int] = field(default_factory=list)  # of them, per agent SIGKILL
    in_memory_age_s: float = 0.0  # most simulated s between such a read and its kill
    last_seq: int = 0  # the agent's last sequence number (outbox)
    seq_missing: list[int] = field(default_factory=list)  # 1..last_seq not in the database
    seq_twice: int = 0  # sequence numbers stored under two timestamps
    max_skew_s: float = 0.0  # largest |reading time - plant time| of a match, simulated s

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and self.duplicated == 0 and not self.seq_missing
                and self.seq_twice == 0 and self.matched == self.stored
                and self.produced == self.matched + self.in_memory
                and all(n <= 1 for n in self.in_memory_per_kill))


@dataclass
class Reconciliation:
    meters: dict[str, MeterCount]
    alerts: list[dict[str, Any]]
    alerts_twice: list[tuple[str, str, int]]  # (event id, open/close, distinct messages)
    events_stored: dict[str, set[str]]  # meter -> event types in the database
    # the same alert message delivered again (QoS 1 is at least once: identical content,
    # its "published" time included), not raised twice
    alerts_redelivered: int = 0

    @property
    def ok(self) -> bool:
        return all(m.ok for m in self.meters.values()) and not self.alerts_twice

    def table(self) -> str:
        kills = any(m.in_memory_per_kill for m in self.meters.values())
        lines = [f"{'meter':18s} {'produced':>8s} {'published':>9s} {'stored':>6s} "
                 f"{'lost':>4s} {'dup':>3s} {'seq':>5s} {'seq gaps':>8s} {'skew s':>7s}"
                 + ("  in memory at agent kills" if kills else "")]
        for m in self.meters.values():
            lines.append(f"{m.meter:18s} {m.produced:8d} {m.published:9d} {m.stored:6d} "
                         f"{m.lost:4d} {m.duplicated:3d} {m.last_seq:5d} "
                         f"{len(m.seq_missing):8d} {m.max_skew_s:7.0f}"
                         + (f"  {m.in_memory} {m.in_memory_per_kill}" if kills else ""))
        opened = [a for a in self.alerts if a.get("event") == "open"]
        lines.append(f"alerts: {len(opened)} opened "
                     f"({', '.join(sorted({a['meter'] + '/' + a['type'] for a in opened}))}); "
                     f"raised twice: {self.alerts_twice or 'none'}; the same message "
                     f"delivered again: {self.alerts_redelivered}")
        return "\n".join(lines)


def match(served: list[tuple[float, float]], stored: list[tuple[float, float]],
          tolerance_s: float) -> tuple[int, float]:
    """Pair stored (t, value) samples one to one with served (t, value) reads.

    A pair has the same value (to 1e-9 relative: the database keeps float64) and times at
    most ``tolerance_s`` apart; among equal values the nearest unused read wins. Returns
    (pairs, largest time difference of a pair).
    """
    used, skew = pair(served, stored, tolerance_s)
    return sum(used), skew


def pair(served: list[tuple[float, float]], stored: list[tuple[float, float]],
         tolerance_s: float) -> tuple[list[bool], float]:
    """:func:`match`, returning which of the served reads (sorted by time) were paired."""
    served = sorted(served)
    times = [t for t, _ in served]
    used = [False] * len(served)
    skew = 0.0
    for t, v in sorted(stored):
        lo = bisect.bisect_left(times, t - tolerance_s)
        hi = bisect.bisect_right(times, t + tolerance_s)
        best = -1
        for i in range(lo, hi):
            if used[i] or not math.isclose(served[i][1], v, rel_tol=1e-9, abs_tol=1e-9):
                continue
            if best < 0 or abs(served[i][0] - t) < abs(served[best][0] - t):
                best = i
        if best >= 0:
            used[best] = True
            skew = max(skew, abs(served[best][0] - t))
    return used, skew


def raised_twice(alerts: list[dict[str, Any]]) -> tuple[list[tuple[str, str, int]], int]:
    """Alerts opened or closed twice: two messages for one (id, open/close) that differ
    (each carries its publish time), as (id, event, messages); and how many messages were
    one already seen delivered again (QoS 1 is at least once), which is no second alert."""
    sent = [a for a in alerts if a.get("event") in ("open", "close")]
    distinct = {(a["id"], a["event"], json.dumps(a, sort_keys=True)) for a in sent}
    times = Counter((i, e) for i, e, _ in distinct)
    return sorted((i, e, n) for (i, e), n in times.items() if n > 1), len(sent) - len(distinct)


def in_memory_at_kills(served: list[tuple[float, float]], used: list[bool],
                       kills: list[float]) -> tuple[list[int], float]:
    """The served reads (sorted, ``used``: stored) the agent took but had not committed
    when it was SIGKILLed at simulated times ``kills``: per kill, the unstored reads after
    the meter's last stored read before it. Anything else unstored is lost. Returns the
    count per kill and the largest time between such a read and its kill."""
    served = sorted(served)
    times = [t for t, _ in served]
    counts, age = [], 0.0
    for kill in sorted(kills):
        i = bisect.bisect_right(times, kill)  # reads before the kill: served[:i]
        n = 0
        while i > 0 and not used[i - 1]:
            i -= 1
            n += 1
            age = max(age, kill - times[i])
        counts.append(n)
    return counts, age


# --------------------------------------------------------------------------- the chain


class Chain:
    """Plant -> agent -> Mosquitto -> recp detect -> VictoriaMetrics, each part restartable."""

    def __init__(
        self,
        workdir: Path,
        plant: dict[str, Any],
        *,
        broker: Any,
        vm: Any,
        process: type,
        site: str = "chain",
        poll_s: float = 0.1,
        clock_poll_s: float = 1.0,
        interval_s: int = 3600,
        lead_in_days: float = 0.0,
        analytics: dict[str, Any] | None = None,
        site_options: dict[str, Any] | None = None,
    ) -> None:
        self.dir = workdir
        self.broker, self.vm, self._process = broker, vm, process
        self.site = site
        self.poll_s = poll_s
        self.interval_s = interval_s
        self.lead_in_days = lead_in_days
        self.plant_data = self._plant_file(plant)
        self.start_s = utc(str(self.plant_data["start"]).replace(" ", "T"))
        self.serve_from = self.start_s + lead_in_days * 86400
        self.paths = {n: workdir / f for n, f in (
            ("plant", "plant.yaml"), ("site", "site.yaml"), ("analytics", "analytics.yaml"),
            ("status", "plant-status.json"), ("truth", "truth.json"),
            ("record", "served.jsonl"), ("outbox", "outbox.sqlite"),
            ("baselines", "baselines"), ("csv", "lead-in"))}
        self.paths["plant"].write_text(yaml.safe_dump(self.plant_data, sort_keys=False))
        self.paths["site"].write_text(yaml.safe_dump(
            merged(self._site_file(clock_poll_s), site_options or {}), sort_keys=False))
        self.paths["analytics"].write_text(yaml.safe_dump(self._analytics_file(analytics or {}),
                                                          sort_keys=False))
        from collector.plant.load import load_plant

        self.spec = load_plant(self.paths["plant"])  # checks the file before anything runs
        self.counters = self._counters()
        self._marks: dict[str, int] = {}  # log markers seen before the last start
        self.agent_kills: list[float] = []  # plant time of each agent SIGKILL
        recp = [sys.executable, "-m", "collector"]
        plant_argv = [*recp, "simulate", "-c", str(self.paths["plant"]),
                      "--status", str(self.paths["status"]), "--truth",
                      str(self.paths["truth"]), "--record", str(self.paths["record"])]
        if lead_in_days:
            plant_argv += ["--from", iso(self.serve_from)]
        self.plant = self._proc("plant", plant_argv, "serving ")
        self.agent = self._proc("agent", [*recp, "agent", "-c", str(self.paths["site"]), "-v"],
                                "agent starting")
        self.detect = self._proc("detect",
                                 [*recp, "detect", "-c", str(self.paths["analytics"]), "-v"],
                                 "connected to")
        self.watch: Watcher | None = None

    # -- files ----------------------------------------------------------------------------
    def _plant_file(self, plant: dict[str, Any]) -> dict[str, Any]:
        """The plant with every port a free one, and its clock on a port of its own."""
        data = copy.deepcopy(plant)
        ports = {m["port"] for m in data["meters"]}
        self.ports = {p: free_port() for p in sorted(ports)}
        for m in data["meters"]:
            m["port"] = self.ports[m["port"]]
        self.clock_port = free_port()
        data["clock"] = {**data.get("clock", {}), "port": self.clock_port, "unit_id": 1}
        data["host"] = LOOPBACK
        return data

    def _site_file(self, clock_poll_s: float) -> dict[str, Any]:
        meters: list[dict[str, Any]] = []
        for m in self.plant_data["meters"]:
            item: dict[str, Any] = {
                "id": m["id"], "profile": m["profile"], "unit_id": m.get("unit_id", 1),
                "connection": {"type": "tcp", "host": LOOPBACK, "port": m["port"]}}
            for key in ("price_per_unit", "co2_kg_per_unit"):
                if m.get(key) is not None:
                    item[key] = m[key]
            meters.append(item)
        meters.append({"id": "plant_clock", "profile": "recp_clock", "unit_id": 1,
                       "interval_s": clock_poll_s,
                       "connection": {"type": "tcp", "host": LOOPBACK, "port": self.clock_port}})
        return {
            "kind": "site", "site": self.site,
            "mqtt": {"url": self.broker.url, "reconnect_delay_s": 0.1,
                     "reconnect_delay_max_s": 0.5, "publish_timeout_s": 5,
                     "connect_timeout_s": 5, "health_interval_s": 2},
            "outbox": {"path": str(self.dir / "outbox.sqlite")},
            "polling": {"interval_s": self.poll_s, "timeout_s": 1.0, "retries": 1,
                        "reconnect_delay_s": 0.1, "reconnect_delay_max_s": 0.5},
            "clock": {"source": "device", "device": "plant_clock"},
            "meters": meters,
        }

    def _analytics_file(self, extra: dict[str, Any]) -> dict[str, Any]:
        return merged(self._analytics_defaults(), extra)

    def _analytics_defaults(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": "analytics", "instance": DETECT_INSTANCE,
            "mqtt": {"url": self.broker.url, "reconnect_delay_s": 0.2,
                     "reconnect_delay_max_s": 1},
            "influx": {"url": self.vm.url, "retry_delay_s": 0.1, "retry_delay_max_s": 0.5,
                       "timeout_s": 2},
            "spool": {"path": "spool.sqlite"},
            "checkpoint": {"path": "state.json", "interval_s": 1},
            "processing": {"interval_s": self.interval_s, "batch": 2000,
                           "batch_wait_s": 0.02},
            "baselines": {"dir": "baselines"},
            "metrics_interval_s": 0.5, "ack_interval_s": 0.2,
        }
        return data

    def _counters(self) -> dict[str, str]:
        """Each consuming meter's main counter (the one the reconciliation follows)."""
        from collector.plant.meters import primary_counter

        out = {}
        for m in self.spec.plant.meters:
            point = primary_counter(m, self.spec.profiles[m.id], self.spec.file)
            if point is not None:
                out[m.id] = point.name
        return out

    # -- processes ------------------------------------------------------------------------
    def _proc(self, name: str, argv: list[str], marker: str) -> Any:
        """A restartable process, ready once its log shows ``marker`` once more."""
        def ready() -> bool:
            return self._log(name).count(marker) > self._marks.get(name, 0)

        self._markers = {**getattr(self, "_markers", {}), name: marker}
        return self._process(name, argv, self.dir / f"{name}.log", is_ready=ready,
                             startup_timeout=60.0)

    def _log(self, name: str) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def tails(self, lines: int = 15) -> str:
        out = []
        for name in ("plant", "agent", "detect"):
            text = self._log(name).splitlines()[-lines:]
            out.append(f"--- {name} log (tail) ---\n" + "\n".join(text))
        return "\n".join(out)

    def part(self, name: str) -> Any:
        return {"plant": self.plant, "agent": self.agent, "detect": self.detect,
                "broker": self.broker, "vm": self.vm}[name]

    def start_part(self, name: str) -> None:
        """Start (or restart) one part and wait until it is up."""
        part = self.part(name)
        if name in ("broker", "vm"):
            part.start()
            return
        if name == "plant" and self.status():
            # a restarted plant resumes where it stopped (its scenario is deterministic, so
            # the counters continue), instead of starting its scenario over
            argv = self.plant.argv
            resume = ["--from", iso(self.sim_time())]
            if "--from" in argv:
                i = argv.index("--from")
                argv[i : i + 2] = resume
            else:
                argv += resume
        self._marks[name] = self._log(name).count(self._markers[name])
        try:
            part.start()
        except Exception as exc:
            pytest.fail(f"{name} did not start: {exc}\n{self.tails()}", pytrace=False)

    def stop_part(self, name: str) -> None:
        """Graceful stop (SIGTERM, wait)."""
        self.part(name).stop(30.0)

    def kill_part(self, name: str) -> None:
        """Crash (SIGKILL, wait). An agent's kill is noted at the plant's time of the kill,
        so :meth:`reconcile` can tell the poll it had taken but not committed from a loss."""
        self.part(name).kill()
        if name == "agent":
            self.agent_kills.append(self.plant_time())

    def plant_time(self) -> float:
        """The plant's simulated time now, read from its clock device (less any clock step
        the plant file injects), or its last status if that cannot be read."""
        from pymodbus.client import ModbusTcpClient

        client = ModbusTcpClient(LOOPBACK, port=self.clock_port, timeout=2, retries=0)
        try:
            if client.connect():
                reply = client.read_holding_registers(0, count=4, device_id=1)
                if not reply.isError():
                    ms = 0
                    for word in reply.registers:
                        ms = (ms << 16) | word
                    t = ms / 1000.0
                    return t - self.spec.plant.clock.offset_s(t) if self.spec.plant.clock else t
        finally:
            client.close()
        return self.sim_time()

    def restart_part(self, name: str, *, kill: bool = False) -> None:
        (self.kill_part if kill else self.stop_part)(name)
        self.start_part(name)

    # -- the run --------------------------------------------------------------------------
    def fit_lead_in(self) -> dict[str, str]:
        """Write the lead-in as CSV and fit every consuming meter's baseline on it
        (offline, as ``recp baseline fit`` would from stored history); meter -> summary."""
        from collector.plant import Engine
        from collector.plant.csvout import write_csv
        from detectors.baseline import BaselineConfig, fit_baseline
        from detectors.clean import clean_counter
        from detectors.csvinput import read_columns

        plant = self.spec.plant.model_copy(update={"days": self.lead_in_days})
        write_csv(Engine(plant, self.spec.profiles, file=self.spec.file), self.paths["csv"])
        truth = json.loads((self.paths["csv"] / "truth.json").read_text())
        out = {}
        folder = self.dir / "baselines" / self.site
        folder.mkdir(parents=True, exist_ok=True)
        config = BaselineConfig(interval_s=self.interval_s)
        for mid, counter in self.counters.items():
            info = truth["meters"][mid]
            if info["resource"] not in ("electricity", "water", "steam"):
                continue
            ts, cols = read_columns(self.paths["csv"] / f"{mid}.csv", [counter])
            cons = clean_counter(ts, cols[counter], interval_s=self.interval_s,
                                 rollover=info["rollover"], start_s=int(self.start_s),
                                 end_s=int(self.serve_from))
            model = fit_baseline(cons.start_s, cons.consumption, meter=mid,
                                 unit=info["counter_unit"], config=config,
                                 resolution=cons.resolution)
            (folder / f"{mid}.json").write_text(model.to_json(indent=1))
            out[mid] = model.describe()
        return out

    def start(self) -> None:
        """Start the parts in order: database and broker (already up), detect, plant, agent."""
        self.watch = Watcher(self.broker.host, self.broker.port)
        self.start_part("detect")
        self.start_part("plant")
        self.start_part("agent")

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.paths["status"].read_text()))
        except (OSError, ValueError):
            return {}

    def sim_time(self) -> float:
        s = self.status().get("sim_time")
        return utc(s) if s else self.serve_from

    def wait_sim(self, t: float, timeout: float = 120.0) -> None:
        """Wait until the plant's simulated time reaches ``t``."""
        wait_until(lambda: self.sim_time() >= t, timeout, f"simulated time {iso(t)}",
                   self.tails)

    def health_count(self) -> int:
        assert self.watch is not None
        with self.watch._lock:
            return self.watch.count[f"recp/v1/_detect/{DETECT_INSTANCE}/health"]

    def detect_health(self) -> dict[str, Any]:
        assert self.watch is not None
        return self.watch.json(f"recp/v1/_detect/{DETECT_INSTANCE}/health")

    def agent_last_seqs(self) -> dict[str, int]:
        db = sqlite3.connect(self.paths["outbox"])
        try:
            return dict(db.execute("SELECT meter, last_seq FROM sequences"))
        finally:
            db.close()

    def finish(self, timeout: float = 180.0) -> None:
        """Stop polling (the agent drains its outbox) and the plant; wait until the database
        holds every sequence number the agent gave out and the service has gone quiet (two
        health messages in a row with the same readings taken in and an empty spool), so
        the alerts of its last batch are out too."""
        self.stop_part("agent")
        self.stop_part("plant")
        last = self.agent_last_seqs()

        def stored() -> bool:
            seqs = self.stored("reading_seq")
            return all(len({v for t, v in seqs.get(m, []) if t >= self.serve_from - 1}) >= n
                       for m, n in last.items())

        wait_until(stored, timeout, f"the database to hold every reading ({last})", self.tails)
        seen: list[tuple[int, int]] = []

        def quiet() -> bool:
            n = self.health_count()
            if not seen or seen[-1][0] != n:
                h = self.detect_health()
                seen.append((n, h.get("readings_in", -1) if h.get("spool_depth") == 0 else -n))
            return len(seen) >= 3 and seen[-1][1] == seen[-2][1] >= 0

        wait_until(quiet, 60, "recp detect to go quiet", self.tails)

    def close(self) -> None:
        for name in ("agent", "plant", "detect"):
            part = self.part(name)
            if part.running:
                part.kill() if name != "detect" else part.stop(30.0)
        if self.watch is not None:
            self.watch.close()

    # -- what happened --------------------------------------------------------------------
    def served(self) -> dict[str, list[tuple[float, float]]]:
        """meter -> (simulated time, counter value) of every counter read the plant served."""
        out: dict[str, list[tuple[float, float]]] = defaultdict(list)
        with open(self.paths["record"], encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # a record cut short by SIGKILL
                r = json.loads(line)
                counter = self.counters.get(r["meter"])
                value = r.get("values", {}).get(counter)
                if value is not None:
                    out[r["meter"]].append((r["t"], value))
        return out

    def stored(self, metric: str) -> dict[str, list[tuple[float, float]]]:
        """meter -> (time s, value) of one metric in VictoriaMetrics, from the scenario on."""
        self.vm.flush()
        out: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for series in self.vm.query_export(metric, start=str(int(self.start_s) - 86400)):
            meter = series["metric"].get("meter", "")
            out[meter] += [(t / 1000, v) for t, v in zip(series["timestamps"], series["values"],
                                                         strict=True)]
        return out

    def reconcile(self, tolerance_s: float | None = None) -> Reconciliation:
        """Count every meter's readings along the chain (see :class:`MeterCount`)."""
        speed = float(self.plant_data.get("speed", 8640))
        tol = tolerance_s if tolerance_s is not None else max(900.0, 2.0 * speed)
        served = self.served()
        last = self.agent_last_seqs()
        assert self.watch is not None
        with self.watch._lock:
            published_msgs = list(self.watch.readings)
            alerts = list(self.watch.alerts)
        seqs_stored = self.stored("reading_seq")
        meters: dict[str, MeterCount] = {}
        for mid, counter in self.counters.items():
            mc = MeterCount(mid, counter)
            values = self.stored(f"reading_{counter}").get(mid, [])
            # the lead-in is not the chain's: count from where the plant began serving
            values = [(t, v) for t, v in values if t >= self.serve_from - 1]
            reads = served.get(mid, [])
            mc.produced, mc.stored = len(reads), len(values)
            mc.published = len({r["seq"] for r in published_msgs
                                if r["meter"] == mid and counter in (r.get("values") or {})})
            used, mc.max_skew_s = pair(reads, values, tol)
            mc.matched = sum(used)
            mc.in_memory_per_kill, mc.in_memory_age_s = in_memory_at_kills(
                reads, used, self.agent_kills)
            mc.in_memory = sum(mc.in_memory_per_kill)
            mc.lost = mc.produced - mc.matched - mc.in_memory
            mc.duplicated = mc.stored - mc.matched
            mc.last_seq = last.get(mid, 0)
            seqs = Counter(int(v) for t, v in seqs_stored.get(mid, []) if t >= self.serve_from - 1)
            mc.seq_missing = sorted(set(range(1, mc.last_seq + 1)) - set(seqs))
            mc.seq_twice = sum(1 for n in seqs.values() if n > 1)
            meters[mid] = mc
        twice, redelivered = raised_twice(alerts)
        events: dict[str, set[str]] = defaultdict(set)
        self.vm.flush()
        for series in self.vm.query_export("event_excess",
                                           start=str(int(self.start_s) - 86400)):
            events[series["metric"].get("meter", "")].add(series["metric"].get("type", ""))
        return Reconciliation(meters, alerts, twice, dict(events),
                              alerts_redelivered=redelivered)

    def truth(self) -> dict[str, Any]:
        return dict(json.loads(self.paths["truth"].read_text()))


def merged(data: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``data`` with ``extra``'s keys; a dict value updates the section it names."""
    out = dict(data)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def send_signal(part: Any, sig: int = signal.SIGTERM) -> None:
    """Send a signal to a running part's process (e.g. SIGSTOP to freeze it)."""
    if part.pid is not None:
        os.kill(part.pid, sig)
