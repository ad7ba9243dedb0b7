"""The agent stamps readings with the virtual plant's simulated clock (``clock.source: device``).

The plant runs a day per 10 s and serves its clock as a ``recp_clock`` device behind the
meters' gateway port; the agent polls it like a meter. Readings taken before the clock was
first read are held and re-timed at the clock's rate, the others are stamped directly; either
way their timestamps are simulated time, a poll interval times the speed apart, and the
clock device itself is not published. The plant's record of every read it served (`--record`)
holds each published reading's values at nearly its timestamp.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
import pytest

from collector.agent import Agent
from collector.plant import Engine, load_plant
from collector.plant.server import PlantServer
from collector.site import load_site

if TYPE_CHECKING:
    from conftest import MosquittoServer

pytestmark = pytest.mark.integration

SPEED = 8640.0  # a simulated day per 10 s
START = "2026-02-02T00:00:00Z"
PLANT = f"""kind: plant
name: clock_test
start: {START}
days: 5
speed: {SPEED}
meters:
  - {{id: el_main, profile: eastron_sdm120, port: 5020, unit_id: 1, load: {{base: 40}}}}
  - {{id: water, profile: endress_hauser_promag_w400, port: 5020, unit_id: 3,
     load: {{base: 2}}}}
clock: {{port: 5020, unit_id: 9}}
"""


def site(ports: dict[int, int], broker: MosquittoServer, outbox: Path) -> str:
    port = ports[5020]
    return f"""kind: site
site: clock_test
mqtt: {{url: "{broker.url}", reconnect_delay_s: 0.1, publish_timeout_s: 3}}
outbox: {{path: {outbox}}}
polling: {{interval_s: 0.2, timeout_s: 1}}
clock: {{source: device, device: plc_clock}}
meters:
  - {{id: el_main, profile: eastron_sdm120, unit_id: 1,
     connection: {{type: tcp, host: 127.0.0.1, port: {port}}}}}
  - {{id: water, profile: endress_hauser_promag_w400, unit_id: 3,
     connection: {{type: tcp, host: 127.0.0.1, port: {port}}}}}
  - {{id: plc_clock, profile: recp_clock, unit_id: 9, interval_s: 1,
     connection: {{type: tcp, host: 127.0.0.1, port: {port}}}}}
"""


class Collect:
    def __init__(self, broker: MosquittoServer) -> None:
        self.got: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.on_message = lambda _c, _u, m: self._add(m.topic, m.payload)
        self.c.on_subscribe = lambda *_a: ready.set()
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        self.c.subscribe("recp/v1/#", qos=1)
        assert ready.wait(10)

    def _add(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self.got.append((topic, json.loads(payload) if payload.startswith(b"{") else {}))

    def readings(self) -> list[dict[str, Any]]:
        with self._lock:
            return [p for t, p in self.got if t.endswith("/reading")]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def ts(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_readings_are_stamped_with_the_plants_simulated_time(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    (tmp_path / "plant.yaml").write_text(PLANT)
    spec = load_plant(tmp_path / "plant.yaml")
    record = tmp_path / "served.jsonl"
    sub = Collect(mosquitto)

    async def main() -> tuple[float, Agent]:
        engine = Engine(spec.plant, spec.profiles, file=spec.file)
        async with PlantServer(engine, spec, port_base=0, record_path=record) as plant:
            (tmp_path / "site.yaml").write_text(site(plant.ports, mosquitto,
                                                     tmp_path / "outbox.sqlite"))
            stop_plant, stop_agent = asyncio.Event(), asyncio.Event()
            clock = asyncio.create_task(plant.run(stop_plant))
            agent = Agent(load_site(tmp_path / "site.yaml"), drain_timeout_s=10)
            task = asyncio.create_task(agent.run(stop_agent))
            await asyncio.sleep(3.0)
            stop_agent.set()
            await asyncio.wait_for(task, 20)
            sim_end = plant.sim_now()
            stop_plant.set()
            await clock
            return sim_end, agent

    sim_end, agent = asyncio.run(main())
    time.sleep(0.5)  # let the last acknowledged messages reach the subscriber
    sub.close()
    readings = sub.readings()
    assert {r["meter"] for r in readings} == {"el_main", "water"}  # the clock is not published
    assert agent.clock.device is not None and agent.clock.device.reads >= 2
    start = ts(START)
    for meter in ("el_main", "water"):
        mine = sorted((r for r in readings if r["meter"] == meter), key=lambda r: r["seq"])
        assert len(mine) >= 8, (meter, len(mine))
        stamps = [ts(r["ts"]) for r in mine]
        # simulated time: after the scenario start, before the plant's clock at the end
        assert start - 600 < stamps[0] < start + 2 * 86400 and stamps[-1] <= sim_end + 60
        # a poll every 0.2 s is 1728 simulated seconds (generous bounds for a loaded box)
        steps = [b - a for a, b in itertools.pairwise(stamps)]
        assert all(s > 0 for s in steps), steps
        assert 0.5 * 0.2 * SPEED < sorted(steps)[len(steps) // 2] < 2.0 * 0.2 * SPEED, steps
        # the first poll came before the clock's first read (it is polled last): held,
        # then re-timed at the clock's rate; later ones stamped directly
        assert mine[0].get("clock") == "corrected"
        assert {r.get("clock", "synced") for r in mine[2:]} == {"synced"}
    # the plant's record of what it served: one counter read per published reading, with
    # the same value, at (nearly) the same simulated time
    served = [json.loads(line) for line in record.read_text().splitlines()]
    for meter, counter in (("el_main", "energy_kwh"), ("water", "volume_m3")):
        reads = [r for r in served if r["meter"] == meter and counter in r.get("values", {})]
        mine = [r for r in readings if r["meter"] == meter]
        assert len(reads) == len(mine)
        for reading in mine:
            when = ts(reading["ts"])
            near = [r["t"] for r in reads if r["values"][counter] == reading["values"][counter]]
            assert near and min(abs(t - when) for t in near) < 1.0 * SPEED, (reading, near)
