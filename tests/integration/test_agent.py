"""The edge agent against the virtual plant and a real Mosquitto on loopback.

Each test serves the demo plant (in-process, or as ``recp simulate``), writes a site file
pointing at its ports, runs the agent, and checks what arrived at a subscriber with a
persistent MQTT 5 session: values equal to what the plant serves, every sequence number
from 1 to the agent's last, nothing written to a meter, silent units not stalling others.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector import contract
from collector.agent import Agent
from collector.plant import Engine, load_plant
from collector.plant.load import PlantSpec
from collector.plant.server import PlantServer
from collector.site import load_site

if TYPE_CHECKING:
    from conftest import MosquittoServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEMO_PLANT = REPO / "edge_config" / "plants" / "demo.yaml"
DEMO_SITE = REPO / "edge_config" / "sites" / "demo.yaml"
TIMEOUT = 15.0


# --------------------------------------------------------------------------- helpers


class Subscriber:
    """A paho client with a persistent session, collecting every message it receives.

    It reconnects by itself when the broker goes away, and the broker keeps its session
    and subscription (and queues QoS 1 messages for it) while it is disconnected.
    """

    def __init__(self, broker: MosquittoServer, topic: str = "recp/v1/#") -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.topic = topic
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"test-sub-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect(broker.host, broker.port, keepalive=10, clean_start=False,
                            properties=props)
        self.client.loop_start()
        assert self._subscribed.wait(TIMEOUT), "subscriber did not subscribe"

    def _on_connect(self, client: Any, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure and not flags.session_present:
            client.subscribe(self.topic, qos=1)
        elif not rc.is_failure:
            self._subscribed.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def readings(self) -> list[dict]:
        """Every reading received, in arrival order; a batch counts as its readings."""
        out = []
        with self._lock:
            messages = list(self.messages)
        for t, p, _ in messages:
            if t.endswith("/reading"):
                out.append(json.loads(p))
            elif t.endswith("/readings"):
                contract.Readings.model_validate_json(p)
                data = json.loads(p)
                items = data.pop("readings")
                out.extend(data | item for item in items)
        return out

    def batches(self) -> list[int]:
        """The number of readings in each batch message received."""
        with self._lock:
            return [len(json.loads(p)["readings"]) for t, p, _ in self.messages
                    if t.endswith("/readings")]

    def last(self, topic: str) -> Any:
        with self._lock:
            found = [p for t, p, _ in self.messages if t == topic]
        return json.loads(found[-1]) if found else None

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = TIMEOUT):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.05)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def demo_plant(start: str | None = None, losses: list[dict] | None = None,
               tmp_path: Path | None = None) -> PlantSpec:
    """The demo plant, frozen (speed 0), optionally from another start or other losses."""
    if losses is not None:
        assert tmp_path is not None
        data = yaml.safe_load(DEMO_PLANT.read_text())
        data["losses"] = losses
        path = tmp_path / "plant.yaml"
        path.write_text(yaml.safe_dump(data))
        spec = load_plant(path)
    else:
        spec = load_plant(DEMO_PLANT)
    changes: dict[str, Any] = {"speed": 0.0, "days": 1.0}
    if start:
        changes["start"] = dt.datetime.fromisoformat(start.replace("Z", "+00:00"))
    plant = type(spec.plant).model_validate(spec.plant.model_dump() | changes)
    return PlantSpec(plant, spec.profiles, spec.file)


def engine(spec: PlantSpec) -> Engine:
    """The plant's engine; the demo's own losses are left out (placing its rollover means
    simulating three weeks first), losses given to demo_plant() are kept."""
    return Engine(spec.plant, spec.profiles, file=spec.file,
                  losses=spec.file != str(DEMO_PLANT))


def write_site(tmp_path: Path, ports: dict[int, int], broker: MosquittoServer, *,
               polling: dict | None = None, mqtt_extra: dict | None = None,
               meters: list[str] | None = None) -> Path:
    """The demo site file, pointed at the plant's actual ports and the test broker."""
    data = yaml.safe_load(DEMO_SITE.read_text())
    data["mqtt"] = {"url": broker.url, "reconnect_delay_s": 0.1, "reconnect_delay_max_s": 0.5,
                    "publish_timeout_s": 3, "connect_timeout_s": 3, **(mqtt_extra or {})}
    data["outbox"] = {"path": str(tmp_path / "outbox.sqlite")}
    data["polling"] = {"interval_s": 0.2, "timeout_s": 0.3, "retries": 1,
                       "reconnect_delay_s": 0.1, "reconnect_delay_max_s": 0.5, **(polling or {})}
    kept = []
    for m in data["meters"]:
        if meters is not None and m["id"] not in meters:
            continue
        m["connection"]["port"] = ports[m["connection"]["port"]]
        m.pop("interval_s", None)
        kept.append(m)
    data["meters"] = kept
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


async def run_agent(site: Path, seconds: float, during: Callable[[], Any] | None = None,
                    **agent_kw: Any) -> Agent:
    """Run the agent for ``seconds`` (calling ``during`` in a thread meanwhile), then stop."""
    agent = Agent(load_site(site), **({"drain_timeout_s": TIMEOUT} | agent_kw))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    if during is not None:
        await asyncio.to_thread(during)
    else:
        await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(task, TIMEOUT + 5)
    return agent


def last_seqs(outbox: Path) -> dict[str, int]:
    db = sqlite3.connect(outbox)
    try:
        return dict(db.execute("SELECT meter, last_seq FROM sequences"))
    finally:
        db.close()


def outbox_rows(outbox: Path) -> set[tuple[str, int]]:
    """(meter, seq) of the readings still in the outbox (not yet acknowledged)."""
    db = sqlite3.connect(outbox)
    try:
        return set(db.execute("SELECT meter, seq FROM outbox"))
    finally:
        db.close()


def readings_made(outbox: Path) -> dict[str, int]:
    """``last_seqs`` while the agent runs: {} until its outbox exists."""
    try:
        return last_seqs(outbox)
    except sqlite3.Error:
        return {}


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Wait for progress, not for a time: on the shared machine at load 10 to 20 the agent
    polls a fraction as often as it does idle. The bound only ends a broken run."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


class LoopStalls:
    """When the test's event loop (the agent's and the in-process plant's) did not run.

    A beat every ``beat_s``; a beat more than ``slack_s`` late means nothing on the loop
    ran meanwhile: the machine's other jobs had the CPU (at load 8 on two cores, stalls of
    0.1-0.4 s). Schedule checks take the stalled time out of the gaps they measure, so they
    still fail when a unit holds the others up by waiting (a silent unit's timeouts are
    awaited, they stall nothing); on an idle machine there are no stalls to take out.
    """

    def __init__(self, beat_s: float = 0.01, slack_s: float = 0.02) -> None:
        self.beat_s, self.slack_s = beat_s, slack_s
        self.stalls: list[tuple[float, float]] = []  # (from, to), time.time()

    async def run(self) -> None:
        before = time.time()
        while True:
            await asyncio.sleep(self.beat_s)
            now = time.time()
            if now - before > self.beat_s + self.slack_s:
                self.stalls.append((before + self.beat_s, now))
            before = now

    def within(self, a: float, b: float) -> float:
        """Seconds of stall between times ``a`` and ``b``."""
        return sum(max(0.0, min(b, t1) - max(a, t0)) for t0, t1 in self.stalls)

    def gaps(self, ts: list[float]) -> list[float]:
        """The gaps between successive timestamps, less the stalls within each."""
        return [b - a - self.within(a, b) for a, b in itertools.pairwise(ts)]

    def __str__(self) -> str:
        worst = sorted((round(t1 - t0, 3) for t0, t1 in self.stalls), reverse=True)
        return f"loop stalls: {len(worst)}, {sum(worst):.2f} s in all, longest {worst[:5]} s"


async def run_agent_polling(site: Path, seconds: float, stalls: LoopStalls
                            ) -> tuple[Agent, float, float]:
    """Run the agent for ``seconds`` from its first poll (at load its start, an outbox
    opened in a thread, takes a while) with ``stalls`` watching the loop; returns the agent
    and the wall-clock times polling was watched from and stopping began."""
    watch = asyncio.create_task(stalls.run())
    agent = Agent(load_site(site), drain_timeout_s=TIMEOUT)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.wait_for(agent.polling.wait(), 60)
        began = time.time()
        await asyncio.sleep(seconds)
        ended = time.time()
        stop.set()
        await asyncio.wait_for(task, TIMEOUT + 5)
    finally:
        watch.cancel()
    return agent, began, ended


def on_schedule(interval: float, stalls: LoopStalls, began: float, ended: float) -> int:
    """Polls a meter kept on schedule should have made from ``began`` to ``ended``: one per
    interval of the time the loop ran. All stalled time comes off, not only stalls of a
    whole interval: on a starved loop the polls themselves take longer (the plant answers
    on the same loop), and a poll that ends an interval after its due time skips a slot
    (at load 12, 54 stalls of at most 0.12 s cost el_main 4 of 19 slots)."""
    return int((ended - began - stalls.within(began, ended)) / interval)


def check_complete(readings: list[dict], last: dict[str, int]) -> dict[str, int]:
    """Every seq 1..last per meter arrived, repeats are identical, first arrivals in order.

    Returns the number of repeated deliveries per meter (at-least-once delivery).
    """
    by_meter: dict[str, dict[int, dict]] = defaultdict(dict)
    order: dict[str, list[int]] = defaultdict(list)
    repeats: dict[str, int] = defaultdict(int)
    for r in readings:
        contract.Reading.model_validate(r)
        seen = by_meter[r["meter"]]
        if r["seq"] in seen:
            assert seen[r["seq"]] == r, f"seq {r['seq']} of {r['meter']} changed on repeat"
            repeats[r["meter"]] += 1
            continue
        seen[r["seq"]] = r
        order[r["meter"]].append(r["seq"])
    assert set(by_meter) == set(last)
    for meter, n in last.items():
        missing = sorted(set(range(1, n + 1)) - set(by_meter[meter]))
        assert not missing, f"{meter}: {len(missing)} of {n} readings missing: {missing[:10]}"
        assert max(by_meter[meter]) == n
        assert order[meter] == sorted(order[meter]), f"{meter} arrived out of order"
    return dict(repeats)


# mqtt.batch for the loss tests: off (one reading per message), and packing a backlog and
# live readings (up to 0.3 s) into readings messages
BATCHES = [pytest.param(None, id="single"),
           pytest.param({"max_readings": 50, "max_wait_ms": 300}, id="batch")]


def check_batches(sub: Subscriber, batch: dict | None) -> None:
    """With batching on every reading came in a readings message, some of them packed."""
    with sub._lock:
        singles = sum(t.endswith("/reading") for t, _, _ in sub.messages)
    sizes = sub.batches()
    if batch is None:
        assert not sizes and singles
    else:
        assert not singles and sizes and max(sizes) > 1 and max(sizes) <= batch["max_readings"]
        print(f"batches={len(sizes)} largest={max(sizes)}")


# --------------------------------------------------------------------------- tests


def test_values_arrive_decoded_with_units_and_metadata(mosquitto: MosquittoServer,
                                                       tmp_path: Path):
    """Frozen plant: every configured value arrives on its topic, equal to what is served."""
    sub = Subscriber(mosquitto)
    spec = demo_plant()

    async def main() -> tuple[dict, Agent]:
        async with PlantServer(engine(spec), spec,
                               port_base=0) as plant:
            site = write_site(tmp_path, plant.ports, mosquitto,
                              mqtt_extra={"health_interval_s": 1})
            agent = await run_agent(site, 1.3)
            return plant.status(), agent

    status, agent = asyncio.run(main())
    sub.wait_for(lambda: sub.last(contract.status_topic("demo_dairy")) is not None
                 and sub.last(contract.status_topic("demo_dairy"))["state"] == "offline",
                 "the agent's goodbye")
    readings = sub.readings()
    sub.close()
    check_complete(readings, last_seqs(tmp_path / "outbox.sqlite"))
    served = status["meters"]
    assert {r["meter"] for r in readings} == set(served)
    for r in readings:
        assert r["quality"] == "ok", r
        assert r["values"] == served[r["meter"]]["values"]  # exact: same decoding, JSON floats
        assert r["site"] == "demo_dairy" and r["ts"].endswith("Z")
    per_meter: dict[str, int] = defaultdict(int)
    for r in readings:
        per_meter[r["meter"]] += 1
    assert min(per_meter.values()) >= 3  # 0.2 s interval for 1 s
    for meter in served:
        meta = sub.last(contract.meta_topic("demo_dairy", meter))
        assert meta is not None
        m = contract.MeterMeta.model_validate(meta)
        assert set(m.points) == set(served[meter]["values"])
    el = contract.MeterMeta.model_validate(sub.last(contract.meta_topic("demo_dairy", "el_main")))
    assert el.points["energy_kwh"].unit == "kWh" and el.points["energy_kwh"].kind == "counter"
    assert el.tags["price_per_unit"] == 0.21 and el.profile == "schneider_pm5560"
    assert agent.publisher is not None and agent.publisher.stats.sessions == 1
    health = contract.Health.model_validate(sub.last(contract.health_topic("demo_dairy")))
    assert set(health.devices) == set(served)
    assert all(d.state == "up" and d.polls >= 3 for d in health.devices.values())
    assert health.outbox.cap == 500000 and health.clock is contract.ClockState.SYNCED


@pytest.mark.parametrize("batch", BATCHES)
def test_broker_killed_and_restarted_loses_nothing(mosquitto: MosquittoServer, tmp_path: Path,
                                                   batch: dict | None):
    """SIGKILL the broker mid-run; afterwards every reading is there, in order, once each
    after de-duplication by (meter, seq), and repeats are byte-identical.

    The agent runs ``confirm: consumer`` (the subscriber acks what it has), the setting
    the docs give for a broker that may crash: Mosquitto sends its PUBACK before it saves
    its database (once per loop, after every packet the loop read; mosquitto#1855), so a
    SIGKILL can lose messages it acknowledged. Issue 5: with ``confirm: puback`` this test
    failed under load (1 run in 20, two at once beside a busy loop): the broker's log
    showed four PUBLISHes PUBACKed to the agent, the database save after them cut short by
    the kill, and the restarted broker without them; the agent had deleted them."""
    sub = AckingConsumer(mosquitto, topic="recp/v1/#")
    spec = demo_plant()
    made: dict[str, int] = {}
    outbox = tmp_path / "outbox.sqlite"

    def total_made() -> int:
        return sum(readings_made(outbox).values())

    def outage() -> None:
        # each phase lasts until enough readings were made in it (at load the agent polls
        # a fraction as often: fixed sleeps made too few, and the count below flaked)
        wait_until(lambda: total_made() >= 100, "100 readings before the outage")
        mosquitto.kill()
        made["killed"] = total_made()
        time.sleep(1.0)  # the agent notices the broker gone
        wait_until(lambda: total_made() >= made["killed"] + 50,
                   "50 readings made while the broker is down")
        mosquitto.start()
        made["restarted"] = total_made()
        wait_until(lambda: total_made() >= made["restarted"] + 150
                   and len(sub.readings()) > made["restarted"],
                   "150 readings after the restart, and readings arriving again")

    async def main() -> Agent:
        async with PlantServer(engine(spec), spec,
                               port_base=0) as plant:
            site = write_site(tmp_path, plant.ports, mosquitto, polling={"interval_s": 0.1},
                              mqtt_extra={"confirm": "consumer",
                                          **({"batch": batch} if batch else {})})
            # the outbox drains for as long as it takes at load (bounded), not 15 s
            return await run_agent(site, 0, during=outage, drain_timeout_s=60.0)

    agent = asyncio.run(main())
    last = last_seqs(tmp_path / "outbox.sqlite")
    total = sum(last.values())
    assert total >= 300  # 100 before, 50 during, 150 after the outage
    # issue 5: this failed once under load ("not all 369 readings at the subscriber"),
    # not reproduced since; say which way it failed: readings never sent (still in the
    # outbox when the agent stopped) or sent and lost by the broker's crash
    left = outbox_rows(outbox)
    sub.wait_for(lambda: len({(r["meter"], r["seq"]) for r in sub.readings()}) >= total,
                 f"all {total} readings at the subscriber ({len(left)} still in the agent's "
                 f"outbox when it stopped: {sorted(left)[:5]})", timeout=60.0)
    repeats = check_complete(sub.readings(), last)
    check_batches(sub, batch)
    sub.close()
    assert agent.publisher is not None
    assert agent.publisher.stats.sessions >= 2
    # the outage was real: readings were made while the broker was down
    assert made["restarted"] - made["killed"] >= 50
    print(f"readings={total} repeats={sum(repeats.values())} "
          f"sessions={agent.publisher.stats.sessions}")


@pytest.mark.parametrize("batch", BATCHES)
def test_agent_killed_and_restarted_loses_nothing(mosquitto: MosquittoServer, tmp_path: Path,
                                                  batch: dict | None):
    """SIGKILL the agent process twice; the restarted agent sends what the dead one stored."""
    status = tmp_path / "status.json"
    plant = subprocess.Popen(
        [sys.executable, "-m", "collector", "simulate", "-c", str(DEMO_PLANT), "--port-base",
         "0", "--speed", "0", "--status", str(status), "--no-losses", "--days", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sub = Subscriber(mosquitto)
    try:
        # (recp simulate took 7.8 s to start at load 7.5)
        wait_until(status.exists, "the plant's status file")
        ports = {int(k): v for k, v in json.loads(status.read_text())["ports"].items()}
        site = write_site(tmp_path, ports, mosquitto, polling={"interval_s": 0.1},
                          mqtt_extra={"batch": batch} if batch else None)
        meters = [m["id"] for m in yaml.safe_load(site.read_text())["meters"]]
        argv = [sys.executable, "-m", "collector", "agent", "-v", "-c", str(site)]
        env = os.environ | {"PYTHONUNBUFFERED": "1"}

        def newest() -> dict[str, int]:
            out: dict[str, int] = defaultdict(int)
            for r in sub.readings():
                out[r["meter"]] = max(out[r["meter"]], r["seq"])
            return out

        def some_more_readings() -> None:
            """The agent is up and publishing: 30 more readings, and two more of every
            meter (at load the four units behind one gateway, polled in turn, got 4 of
            30-odd in a run, and the check of five per meter below failed)."""
            n, before = len(sub.readings()), newest()
            wait_until(lambda: len(sub.readings()) >= n + 30 and all(
                newest()[m] >= before[m] + 2 for m in meters),
                "30 more readings, two more of every meter")

        for _ in range(2):
            agent = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
            some_more_readings()
            time.sleep(0.3)  # and committing some that are not published yet
            agent.send_signal(signal.SIGKILL)
            agent.wait(5)
        sub.wait_for(lambda: sub.last(contract.status_topic("demo_dairy")) is not None
                     and "will" in sub.last(contract.status_topic("demo_dairy"))["reason"],
                     "the last will after SIGKILL")
        log = tmp_path / "agent.log"
        with log.open("w") as out:
            agent = subprocess.Popen(argv, env=env, stdout=out, stderr=out)
            some_more_readings()
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(TIMEOUT + 30)  # drains for up to 10 s (--drain-timeout), then exits
            except subprocess.TimeoutExpired:
                for _ in range(3):
                    agent.send_signal(signal.SIGUSR1)
                    time.sleep(0.5)
                agent.kill()
                pytest.fail(f"agent did not stop on SIGTERM:\n{log.read_text()[-3000:]}")
        assert agent.returncode == 0, log.read_text()[-3000:]
    finally:
        plant.terminate()
        plant.wait(5)
    last = last_seqs(tmp_path / "outbox.sqlite")
    total = sum(last.values())
    sub.wait_for(lambda: len({(r["meter"], r["seq"]) for r in sub.readings()}) >= total,
                 f"all {total} readings at the subscriber", timeout=60.0)
    check_complete(sub.readings(), last)
    check_batches(sub, batch)
    sub.close()
    assert min(last.values()) >= 5


def test_silent_and_failing_units_do_not_hold_up_the_others(mosquitto: MosquittoServer,
                                                             tmp_path: Path):
    """A unit in a dropout (silent) and one answering exceptions: both report bad quality,
    the others keep their schedule; the silent unit's neighbour on the same gateway is
    delayed by at most one timeout once the silent unit is backed off."""
    losses: list[dict[str, Any]] = [
        {"meter": "steam_pasteuriser", "type": "dropout", "start": "2026-01-05T00:00:00Z",
         "end": "2026-01-06T00:00:00Z"},
        {"meter": "el_packaging", "type": "exception", "start": "2026-01-05T00:00:00Z",
         "end": "2026-01-06T00:00:00Z", "code": 4, "probability": 1.0},
    ]
    spec = demo_plant(losses=losses, tmp_path=tmp_path)
    sub = Subscriber(mosquitto)
    interval, timeout = 0.2, 0.25
    stalls = LoopStalls()

    async def main() -> tuple[Agent, float, float]:
        async with PlantServer(engine(spec), spec,
                               port_base=0) as plant:
            site = write_site(tmp_path, plant.ports, mosquitto, polling={
                "interval_s": interval, "timeout_s": timeout, "retries": 1,
                "offline_after": 2, "offline_backoff_max_s": 1.0})
            return await run_agent_polling(site, 4.0, stalls)

    agent, began, ended = asyncio.run(main())
    last = last_seqs(tmp_path / "outbox.sqlite")
    sub.wait_for(lambda: len(sub.readings()) >= sum(last.values()), "all readings")
    readings = sub.readings()
    sub.close()
    check_complete(readings, last)
    by_meter: dict[str, list[dict]] = defaultdict(list)
    for r in readings:
        by_meter[r["meter"]].append(r)

    silent = by_meter["steam_pasteuriser"]
    assert all(r["quality"] == "error" for r in silent)
    assert any("offline" in r["errors"].get("*", "") for r in silent)
    assert any("no answer" in e for r in silent for e in r["errors"].values())
    failing = by_meter["el_packaging"]
    assert all(r["quality"] == "error" for r in failing)
    assert all("exception 4 (device failure)" in r["errors"].values() for r in failing
               if "*" not in r["errors"])
    devices = {d.id: d for d in agent.poller.devices}
    assert devices["steam_pasteuriser"].state == "offline"
    assert devices["el_packaging"].state != "offline"  # it answers: no backoff

    def times(meter: str) -> list[float]:
        return [dt.datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp()
                for r in by_meter[meter]]

    # gaps and counts less the stalls of the loop (the machine busy with other jobs)
    slots = on_schedule(interval, stalls, began, ended)
    print(f"{stalls}; slots={slots}")
    for meter in ("el_main", "water_main", "prod_line", "outdoor"):  # other gateways
        assert all(r["quality"] == "ok" for r in by_meter[meter])
        gaps = stalls.gaps(times(meter))
        assert max(gaps) < interval + 0.15, (meter, max(gaps), str(stalls))
        assert len(by_meter[meter]) >= slots - 2, (meter, slots, str(stalls))
    # same gateway as the silent unit: at worst one try (with retries) per poll until it is
    # backed off, then one probe timeout at most
    neighbour = stalls.gaps(times("steam_main"))
    assert all(r["quality"] == "ok" for r in by_meter["steam_main"])
    assert max(neighbour) < interval + 2 * timeout + 0.05 + 0.1, (neighbour, str(stalls))
    settled = neighbour[len(neighbour) // 2 :]
    assert max(settled) < interval + timeout + 0.1, (settled, str(stalls))
    assert len(by_meter["steam_main"]) >= slots * 0.6, (slots, str(stalls))


class GarbageMeter:
    """A TCP server on loopback that answers every Modbus request wrongly, in turn: bytes
    that are no Modbus frame, a frame cut short, a wrong transaction id, a wrong function
    code, too few registers, a reset connection."""

    def __init__(self) -> None:
        self.requests = 0
        self.connections = 0
        self.port = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> GarbageMeter:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                tid, _p, _n, unit, fc, _a, count = struct.unpack(">HHHBBHH",
                                                                  await r.readexactly(12))
                data = bytes(2 * count)
                good = struct.pack(">HHHBBB", tid, 0, 3 + len(data), unit, fc, len(data)) + data
                kind = self.requests % 6
                self.requests += 1
                if kind == 0:
                    w.write(b"\xde\xad\xbe\xef garbage \x00\xff" * 3)
                elif kind == 1:
                    w.write(good[: len(good) // 2])  # and nothing more
                elif kind == 2:
                    w.write(struct.pack(">H", tid ^ 0x5A5A) + good[2:])
                elif kind == 3:
                    w.write(good[:7] + bytes([fc ^ 0x06]) + good[8:])
                elif kind == 4:
                    short = bytes(2)
                    w.write(struct.pack(">HHHBBB", tid, 0, 5, unit, fc, 2) + short)
                else:
                    w.transport.abort()
                    return
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()


def test_garbage_answering_meter_leaves_the_others_on_schedule(mosquitto: MosquittoServer,
                                                               tmp_path: Path):
    """A real TCP server answering garbage, truncated and wrong frames: its readings say
    what was wrong, the agent runs on, and the plant's meters keep their schedule."""
    spec = demo_plant()
    sub = Subscriber(mosquitto)
    interval, timeout = 0.2, 0.25
    stalls = LoopStalls()

    async def main() -> tuple[tuple[Agent, float, float], GarbageMeter]:
        async with PlantServer(engine(spec), spec, port_base=0) as plant, \
                GarbageMeter() as bad:
            site = write_site(tmp_path, plant.ports, mosquitto, polling={
                "interval_s": interval, "timeout_s": timeout, "retries": 0,
                "offline_after": 1000}, meters=["el_main", "water_main", "prod_line"])
            data = yaml.safe_load(site.read_text())
            data["meters"].append({"id": "garbage", "profile": "eastron_sdm630", "unit_id": 1,
                                   "connection": {"type": "tcp", "host": "127.0.0.1",
                                                  "port": bad.port}})
            site.write_text(yaml.safe_dump(data, sort_keys=False))
            return await run_agent_polling(site, 4.0, stalls), bad

    (agent, began, ended), bad = asyncio.run(main())
    last = last_seqs(tmp_path / "outbox.sqlite")
    sub.wait_for(lambda: len(sub.readings()) >= sum(last.values()), "all readings")
    readings = sub.readings()
    sub.close()
    check_complete(readings, last)
    by_meter: dict[str, list[dict]] = defaultdict(list)
    for r in readings:
        by_meter[r["meter"]].append(r)
    garbage = by_meter["garbage"]
    assert all(r["quality"] != "ok" for r in garbage)
    said = " | ".join(e for r in garbage for e in r["errors"].values())
    for text in ("not a Modbus TCP frame", "no answer within 0.25 s", "transaction id",
                 "function code", "registers in the answer", "connection"):
        assert text in said, (text, said[:2000])
    assert bad.requests >= 12 and bad.connections >= 3  # reconnected after losing framing
    # gaps and counts less the stalls of the loop (the machine busy with other jobs)
    slots = on_schedule(interval, stalls, began, ended)
    print(f"{stalls}; slots={slots}")
    assert len(garbage) >= slots * 0.5, (slots, str(stalls))
    for meter in ("el_main", "water_main", "prod_line"):
        assert all(r["quality"] == "ok" for r in by_meter[meter]), meter
        ts = [dt.datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp()
              for r in by_meter[meter]]
        assert max(stalls.gaps(ts)) < interval + 0.15, (meter, str(stalls))
        assert len(ts) >= slots - 2, (meter, slots, str(stalls))
    devices = {d.id: d for d in agent.poller.devices}
    assert devices["garbage"].failures >= 10 and devices["el_main"].failures == 0


def test_agent_never_sends_a_write_function_code(mosquitto: MosquittoServer, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch):
    """The plant's servers record every request's function code: only 1-4 ever arrive."""
    from pymodbus.server import ModbusTcpServer

    import collector.plant.server as plant_server

    seen: list[int] = []

    def trace(sending: bool, pdu: Any) -> Any:
        if not sending:
            seen.append(pdu.function_code)
        return pdu

    def traced_server(*args: Any, **kwargs: Any) -> ModbusTcpServer:
        return ModbusTcpServer(*args, trace_pdu=trace, **kwargs)

    monkeypatch.setattr(plant_server, "ModbusTcpServer", traced_server)
    spec = demo_plant()

    async def main() -> None:
        async with PlantServer(engine(spec), spec,
                               port_base=0) as plant:
            site = write_site(tmp_path, plant.ports, mosquitto)

            def until_polled() -> None:  # not a fixed time: a loaded machine starts slowly
                deadline = time.monotonic() + TIMEOUT
                while len(seen) <= 50 and time.monotonic() < deadline:
                    time.sleep(0.05)

            await run_agent(site, 0, during=until_polled)

    asyncio.run(main())
    assert len(seen) > 50
    assert set(seen) <= {1, 2, 3, 4}, sorted(set(seen))
    assert {2, 3, 4} <= set(seen)  # discrete inputs, holding and input registers all read


class AckingConsumer(Subscriber):
    """A consumer that confirms readings: per meter, the highest seq with none missing
    before it, published retained on the ack topic (contract v1)."""

    def __init__(self, broker: MosquittoServer, acking: bool = True,
                 topic: str = "recp/v1/+/+/reading") -> None:
        self.acking = acking
        self.seen: dict[tuple[str, str], set[int]] = defaultdict(set)
        self.mark: dict[tuple[str, str], int] = defaultdict(int)
        super().__init__(broker, topic)

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        super()._on_message(client, userdata, msg)
        if not self.acking or not msg.topic.endswith(("/reading", "/readings")):
            return
        r = json.loads(msg.payload)
        items = r.pop("readings") if msg.topic.endswith("/readings") else [r]
        key = (r["meter"], r["stream"])
        self.seen[key].update(item["seq"] for item in items)
        mark = self.mark[key]
        while mark + 1 in self.seen[key]:
            mark += 1
        # acked again on every reading: an ack the broker lost in a crash is sent anew
        # when the agent sends the unconfirmed readings again
        self.mark[key] = mark
        if mark:
            client.publish(contract.ack_topic(r["site"], r["meter"]),
                           json.dumps({"v": 1, "stream": r["stream"], "seq": mark}),
                           qos=1, retain=True)


def test_readings_held_until_the_clock_is_trusted_then_retimed(mosquitto: MosquittoServer,
                                                               tmp_path: Path):
    """clock require: ntp with an unsynchronised kernel clock: readings wait in the outbox;
    once synchronised they go out first, re-timed from the monotonic clock."""
    from collector.agent import ClockGuard
    from collector.site import ClockSettings

    synced = [False]
    guard = ClockGuard(ClockSettings(require="ntp"), kernel=lambda: synced[0])
    sub = Subscriber(mosquitto)
    spec = demo_plant()
    seen_while_held: list[int] = []
    outbox = tmp_path / "outbox.sqlite"
    meters = ["el_main", "water_main", "outdoor"]

    def later() -> None:
        # unsynchronised for at least 1 s and until every meter has 3 readings held (at
        # load 10 to 20 the agent made fewer than that in a fixed second, and the count of
        # corrected readings below flaked)
        time.sleep(1.0)
        wait_until(lambda: (lambda m: len(m) == 3 and min(m.values()) >= 3)(
            readings_made(outbox)), "3 readings held per meter")
        seen_while_held.append(len(sub.readings()))
        synced[0] = True
        # the next poll releases them (a loaded machine may take a while to poll again)
        sub.wait_for(lambda: len(sub.readings()) > 0, "the held readings, released",
                     timeout=60.0)
        time.sleep(0.3)

    async def main() -> Agent:
        async with PlantServer(engine(spec), spec,
                               port_base=0) as plant:
            site = write_site(tmp_path, plant.ports, mosquitto, meters=meters)
            return await run_agent(site, 0, during=later, clock=guard)

    asyncio.run(main())
    last = last_seqs(tmp_path / "outbox.sqlite")
    sub.wait_for(lambda: len(sub.readings()) >= sum(last.values()), "all readings",
                 timeout=60.0)
    readings = sub.readings()
    sub.close()
    assert seen_while_held == [0]
    check_complete(readings, last)
    corrected = [r for r in readings if r.get("clock") == "corrected"]
    for meter in meters:  # every meter's held readings (3 or more each), re-timed
        assert sum(r["meter"] == meter for r in corrected) >= 3, meter
    assert all("clock" not in r for r in readings if r not in corrected)
    # nothing stepped the wall clock here, so the correction must be within milliseconds
    for r in corrected:
        assert r["latency_ms"] is not None


def test_consumer_confirmation_keeps_readings_until_acknowledged(mosquitto: MosquittoServer,
                                                                 tmp_path: Path):
    """confirm: consumer. Without acks nothing leaves the outbox, even though the broker
    took every message; with a consumer acking, a broker SIGKILL still loses nothing and
    the outbox empties."""
    spec = demo_plant()
    meters = ["el_main", "water_main", "steam_main", "outdoor"]

    async def phase(consumer: AckingConsumer, during: Callable[[], Any], drain: float) -> Agent:
        async with PlantServer(engine(spec), spec,
                               port_base=0) as plant:
            site = write_site(tmp_path, plant.ports, mosquitto, meters=meters,
                              mqtt_extra={"confirm": "consumer"},
                              polling={"interval_s": 0.1})
            return await run_agent(site, 0, during=during, drain_timeout_s=drain)

    silent = AckingConsumer(mosquitto, acking=False)
    agent = asyncio.run(phase(silent, lambda: time.sleep(1.0), drain=1.0))
    silent.close()
    assert agent.outbox is not None and agent.publisher is not None
    kept = agent.outbox.depth
    assert kept == agent.publisher.stats.published > 0  # published, but not confirmed

    consumer = AckingConsumer(mosquitto)
    box: dict[str, Agent] = {}

    def outage() -> None:
        time.sleep(0.8)
        mosquitto.kill()
        time.sleep(1.0)
        mosquitto.start()
        time.sleep(0.5)

    box["agent"] = asyncio.run(phase(consumer, outage, drain=TIMEOUT))
    last = last_seqs(tmp_path / "outbox.sqlite")
    consumer.wait_for(lambda: len({(r["meter"], r["seq"]) for r in consumer.readings()})
                      >= sum(last.values()), "every reading at the consumer")
    readings = consumer.readings()
    consumer.close()
    check_complete(readings, last)
    db = sqlite3.connect(tmp_path / "outbox.sqlite")
    left = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    db.close()
    assert left == 0  # on stop the agent waited for the consumer's acks


def test_rtu_over_tcp_gateway_reads_the_same_values(tmp_path: Path):
    """A transparent serial gateway: RTU frames (unit id + CRC, no MBAP header) over TCP."""
    from collector.agent import poll_once

    base = demo_plant()
    data = base.plant.model_dump()
    for m in data["meters"]:
        m["framing"] = "rtu"
    spec = PlantSpec(type(base.plant).model_validate(data), base.profiles, base.file)

    async def main() -> tuple[dict, list]:
        async with PlantServer(engine(spec), spec, port_base=0) as plant:
            site = yaml.safe_load(DEMO_SITE.read_text())
            for m in site["meters"]:
                m["connection"] = {"type": "rtu_over_tcp", "host": "127.0.0.1",
                                   "port": plant.ports[m["connection"]["port"]]}
            path = tmp_path / "site.yaml"
            path.write_text(yaml.safe_dump(site, sort_keys=False))
            results = await poll_once(load_site(path))
            return plant.status(), results

    status, results = asyncio.run(main())
    assert len(results) == 10
    for r in results:
        assert r.quality.value == "ok", (r.meter, r.errors)
        assert r.values == status["meters"][r.meter]["values"]
