"""``recp detect`` against the real Mosquitto and VictoriaMetrics, as a subprocess.

Synthetic meters (a day/night load, and a 30-minute spike on day 4 on m1) are published
as an agent would; the tests check the database holds every reading exactly once and the
consumption intervals, that malformed payloads are dead-lettered, that a database outage
loses nothing, and that SIGKILL/SIGTERM restarts neither lose data nor raise an alert twice.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from servicedata import BROKER_CONF, DAY, STEP, T0, readings

from collector import contract

if TYPE_CHECKING:
    from tests.conftest import MosquittoServer, VictoriaMetricsServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def meta(meter: str) -> tuple[str, bytes]:
    return contract.meta_topic("dairy", meter), contract.dumps({
        "v": 1, "site": "dairy", "meter": meter, "resource": "electricity",
        "profile": "sdm120", "manufacturer": "Eastron", "model": "SDM120",
        "interval_s": STEP,
        "points": {"energy_kwh": {"unit": "kWh", "kind": "counter"},
                   "power_kw": {"unit": "kW", "kind": "gauge"}},
        "tags": {"price_per_unit": 0.25, "co2_kg_per_unit": 0.4, "currency": "EUR"},
    })  # fmt: skip


def interleave(*series: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    out = []
    for i in range(max(len(s) for s in series)):
        out += [s[i] for s in series if i < len(s)]
    return out


class Bus:
    """A plain paho client: publishes like an agent and records what the service sends."""

    def __init__(self, broker: MosquittoServer) -> None:
        self.got: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-bus",
                             protocol=mqtt.MQTTv5)
        self.c.on_message = self._on_message
        self.c.max_inflight_messages_set(1000)
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        for f in ("recp/v1/_alerts/#", "recp/v1/_deadletter/#", "recp/v1/_detect/#",
                  "recp/v1/+/+/ack", "recp/v1/+/+/dropped"):
            self.c.subscribe(f, qos=1)
        time.sleep(0.2)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.got.append((msg.topic, bytes(msg.payload)))

    def publish(self, msgs: list[tuple[str, bytes]], retain: bool = False) -> None:
        infos = [self.c.publish(t, p, qos=1, retain=retain) for t, p in msgs]
        for info in infos:
            info.wait_for_publish(10)

    def messages(self, prefix: str) -> list[tuple[str, bytes]]:
        with self._lock:
            return [m for m in self.got if m[0].startswith(prefix)]

    def alerts(self) -> list[dict[str, Any]]:
        return [json.loads(p) for _, p in self.messages("recp/v1/_alerts/")]

    def health(self, since: int = 0, instance: str = "detect") -> dict[str, Any]:
        """The newest health message, if it is the since-th or later."""
        h = self.messages(f"recp/v1/_detect/{instance}/health")
        return json.loads(h[-1][1]) if len(h) > since else {}

    def n_health(self) -> int:
        return len(self.messages("recp/v1/_detect/detect/health"))

    def close(self) -> None:
        if self.c.is_connected():
            self.c.disconnect()
        self.c.loop_stop()


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout} s waiting for {what}", pytrace=False)
        time.sleep(0.1)


class Detect:
    """``recp detect`` as a subprocess."""

    def __init__(self, tmp: Path, broker: MosquittoServer, vm: VictoriaMetricsServer,
                 instance: str = "detect", partition: str = "{index: 0, count: 1}",
                 checkpoint_s: float = 1):
        tmp = tmp / instance
        tmp.mkdir(exist_ok=True)
        self.cfg = tmp / "analytics.yaml"
        self.cfg.write_text(f"""kind: analytics
instance: {instance}
mqtt: {{url: "{broker.url}", reconnect_delay_s: 0.2, reconnect_delay_max_s: 1}}
influx: {{url: "{vm.url}", retry_delay_s: 0.1, retry_delay_max_s: 0.5, timeout_s: 2}}
spool: {{path: spool.sqlite}}
checkpoint: {{path: state.json, interval_s: {checkpoint_s}}}
processing: {{batch: 2000, batch_wait_s: 0.02, partition: {partition}}}
metrics_interval_s: 0.5
ack_interval_s: 0.2
""")
        self.log = tmp / "detect.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "collector", "detect", "-c", str(self.cfg), "-v",
                 *extra],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                start_new_session=True,  # its own process group: --workers children too
            )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if sig == signal.SIGKILL:  # the whole group: a killed --workers parent forwards nothing
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        code = self.proc.wait(30)
        self.proc = None
        return code

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def setup(tmp_path: Path, mosquitto_factory: Any, victoria_metrics: Any) -> Any:
    broker = mosquitto_factory(BROKER_CONF)
    detect = Detect(tmp_path, broker, victoria_metrics)
    detect.start()
    bus = Bus(broker)
    bus.publish([meta("m1"), meta("m2")], retain=True)
    wait_until(lambda: bus.health().get("connected") is True, 30, "the service to connect")
    yield broker, victoria_metrics, detect, bus
    bus.close()
    if detect.alive():
        detect.stop(signal.SIGKILL)


def samples(vm: VictoriaMetricsServer, metric: str) -> dict[str, list[int]]:
    vm.flush()
    out: dict[str, list[int]] = {}
    for series in vm.query_export(metric, start="2025-12-01T00:00:00Z"):
        out.setdefault(series["metric"].get("meter", ""), []).extend(series["timestamps"])
    return out


def all_stored(vm: VictoriaMetricsServer, n: int, meters: tuple[str, ...] = ("m1", "m2")
               ) -> bool:
    got = samples(vm, "reading_energy_kwh")
    return all(len(got.get(m, [])) >= n for m in meters)


def check_exactly_once(vm: VictoriaMetricsServer, n: int) -> None:
    got = samples(vm, "reading_energy_kwh")
    for m in ("m1", "m2"):
        ts = got[m]
        assert len(ts) == n == len(set(ts)), (m, len(ts), len(set(ts)))
        assert ts == sorted(ts) and ts[0] == T0 * 1000 and ts[-1] == (T0 + (n - 1) * STEP) * 1000


def test_end_to_end_exactly_once_consumption_alerts_dead_letters(setup: Any) -> None:
    _, vm, detect, bus = setup
    m1, m2 = readings("m1", 4), readings("m2", 4)
    bus.publish(interleave(m1, m2))
    good = m1[0][1]
    corpus = [
        (m1[0][0], good[:20]),  # truncated JSON
        (m1[0][0], good.replace(b'"seq":1', b'"seq":"x"')),  # wrong type
        ("recp/v1/dairy/Unknown_Meter/reading", good),  # not a meter id
        (m1[0][0], good.replace(b'"power_kw":20.0', b'"power_kw":NaN')),
        (m1[0][0], good[:-1] + b',"pad":"' + b"x" * 100_000 + b'"}'),  # huge
        (m1[0][0], contract.dumps(contract.reading_payload(
            site="dairy", meter="m1", resource="electricity", stream="st1", seq=99999,
            ts=time.time() + 30 * DAY, quality=contract.Quality.OK,
            values={"energy_kwh": 1.0}))),  # far future
    ]  # fmt: skip
    bus.publish(corpus)
    bus.publish(m1[:300] + m2[-300:])  # a replay
    n = len(m1)
    wait_until(lambda: all_stored(vm, n), 30, "every reading in the database")
    wait_until(lambda: len(bus.messages("recp/v1/_deadletter/")) >= len(corpus), 10,
               "dead letters")
    assert detect.alive()
    check_exactly_once(vm, n)
    dead = [json.loads(p) for _, p in bus.messages("recp/v1/_deadletter/")]
    assert len(dead) == len(corpus) and all(d["reason"] for d in dead)
    wait_until(lambda: bus.health().get("duplicates", 0) >= 600, 10, "duplicates counted")
    assert bus.health()["dead_letters"] == len(corpus)
    # consumption: every completed 15-minute interval once, summing to the counter's rise
    # (a batch's derived points are spooled after its readings, so the sink may have
    # written the last batch's readings and not yet its intervals: wait for them)
    want = {"m1": 4 * 96 - 1, "m2": 4 * 96 - 1}

    def intervals() -> dict[str, int]:
        return {m: len(v) for m, v in samples(vm, "consumption_actual").items()}

    wait_until(lambda: all(intervals().get(m, 0) >= k for m, k in want.items()), 30,
               f"every interval's consumption (have {intervals()})")
    cons = samples(vm, "consumption_actual")
    assert {m: len(v) for m, v in cons.items()} == want
    # read back as recp baseline fit / recp savings do (influx.flavor: victoriametrics):
    # the service's naming is the reader's; the intervals sum to the counter's rise
    from detectors.history.victoria import VictoriaHistory

    history = VictoriaHistory(vm.url, None, timeout_s=30)
    start, end = (dt.datetime.fromtimestamp(t, dt.timezone.utc) for t in (T0, T0 + 5 * DAY))
    rows = history.consumption("dairy", start, end, ["m1"])
    assert [r.t_s * 1000 for r in rows] == sorted(cons["m1"]) and {r.unit for r in rows} == {
        "kWh"}
    rise = json.loads(m1[-1][1])["values"]["energy_kwh"] - json.loads(m1[0][1])["values"][
        "energy_kwh"]
    assert sum(r.value for r in rows) == pytest.approx(rise, rel=0.01)
    hours, means = history.hourly_means("dairy", "power_kw", start, end, ["m2"])
    assert hours.size == 4 * 24 and np.isfinite(means).all()
    # the spike on m1 came out as one alert opening and one closing, and in the database
    wait_until(lambda: len([a for a in bus.alerts() if a["type"] == "spike"]) >= 2, 10,
               "the spike's alerts")
    alerts = bus.alerts()
    spikes = [a for a in alerts if a["type"] == "spike"]
    assert [a["event"] for a in spikes] == ["open", "close"], alerts
    assert spikes[0]["id"] == spikes[1]["id"] == f"dairy/m1/spike/{T0 + 3 * DAY + 36000}"
    assert spikes[1]["excess"] > 100 and spikes[1]["cost"] == pytest.approx(
        0.25 * spikes[1]["excess"], rel=1e-3)
    wait_until(lambda: bool(samples(vm, "event_excess").get("m1")), 10, "m1's event point")
    assert samples(vm, "anomaly_score").get("m2")
    assert samples(vm, 'service_readings_in_per_s{instance="detect"}')
    # the first batch may have held m1 alone; later meter_seen points may still be spooled
    wait_until(lambda: samples(vm, "meter_seen_last_seen_s").keys() == {"m1", "m2"}, 10,
               "meter_seen of both meters")
    # the consumer's high-water mark for confirm: consumer agents
    acks = [json.loads(p) for t, p in bus.got if t.endswith("/m1/ack")]
    assert acks == [] or acks[-1]["seq"] <= n  # (we are not subscribed to acks)
    assert detect.stop() == 0


def test_database_outage_and_broker_restart_lose_nothing(setup: Any) -> None:
    broker, vm, detect, bus = setup
    m1, m2 = readings("m1", 2), readings("m2", 2)
    both = interleave(m1, m2)
    half = len(both) // 2
    vm.stop()
    bus.publish(both[:half])
    # (the health message right after the batch may precede the sink's first failed write)
    wait_until(lambda: bus.health().get("readings_in", 0) >= half
               and bus.health().get("db_healthy") is False, 20,
               "readings taken in while the database is down, and the outage seen")
    h = bus.health()
    assert h["spool_depth"] >= half and h["db_healthy"] is False
    # the broker restarts too (graceful: it saves the service's session)
    bus.close()
    broker.stop()
    broker.start()
    bus = Bus(broker)
    k = bus.n_health()
    wait_until(lambda: bus.health(k).get("connected") is True, 30, "the service to reconnect")
    bus.publish(both[half:])
    wait_until(lambda: bus.health(k).get("readings_in", 0) >= len(both), 20,
               "the rest taken in")
    vm.start()
    wait_until(lambda: all_stored(vm, len(m1)), 30, "the spool written after the outage")
    check_exactly_once(vm, len(m1))
    wait_until(lambda: bus.health().get("spool_depth", 1) < 50, 10, "spool drained")
    assert detect.alive()
    bus.close()


def packed(msgs: list[tuple[str, bytes]], size: int) -> list[tuple[str, bytes]]:
    """One meter's readings as ``readings`` messages of ``size`` (as the agent packs them)."""
    topic = msgs[0][0] + "s"
    return [(topic, contract.pack_readings([p for _, p in msgs[i:i + size]]))
            for i in range(0, len(msgs), size)]


def test_readings_messages_stored_exactly_once_across_sigkill(setup: Any) -> None:
    """m1 in batches of 50, m2 one by one; a SIGKILL halfway; then the rest and a replay
    packed differently (batches of 30) and a batch whose last item is bad."""
    _, vm, detect, bus = setup
    m1, m2 = readings("m1", 4), readings("m2", 4)
    half = len(m1) // 2
    bus.publish(interleave(packed(m1[:half], 50), m2[:half]))
    wait_until(lambda: all_stored(vm, half), 30, "the first half in the database")
    detect.stop(signal.SIGKILL)
    detect.start()
    k = bus.n_health()
    wait_until(lambda: bus.health(k).get("connected") is True, 30, "the service to restart")
    bad = json.loads(m1[3][1])
    bad.update(seq=10**6, values={"energy_kwh": "lots"})
    tail = contract.pack_readings([m1[1][1], m1[2][1], contract.dumps(bad)])
    bus.publish(interleave(packed(m1[half:], 50), m2[half:]) + packed(m1[:half + 60], 30)
                + [(m1[0][0] + "s", tail)])
    n = len(m1)
    wait_until(lambda: all_stored(vm, n), 30, "every reading in the database")
    wait_until(lambda: len(bus.messages("recp/v1/_deadletter/")) >= 1, 10, "the dead letter")
    check_exactly_once(vm, n)
    (dead,) = [json.loads(p) for _, p in bus.messages("recp/v1/_deadletter/")]
    assert dead["topic"] == "recp/v1/dairy/m1/readings"
    assert dead["reason"].startswith("readings[2] (seq 1000000): values.energy_kwh")
    def intervals() -> dict[str, int]:
        return {m: len(set(v)) for m, v in samples(vm, "consumption_actual").items()}

    # every completed 15-minute interval, once (derived points follow the readings)
    wait_until(lambda: intervals() == {"m1": 4 * 96 - 1, "m2": 4 * 96 - 1}, 30,
               f"every interval's consumption (have {intervals()})")
    assert all(len(v) == len(set(v)) for v in samples(vm, "consumption_actual").values())
    def spikes() -> list[tuple[str, str]]:
        return [(a["meter"], a["event"]) for a in bus.alerts() if a["type"] == "spike"]

    wait_until(lambda: len(spikes()) >= 2, 10, "the spike's alerts")
    assert spikes() == [("m1", "open"), ("m1", "close")]
    assert detect.stop() == 0


def test_restarts_keep_state_and_raise_no_alert_twice(setup: Any) -> None:
    _, vm, detect, bus = setup
    m1, m2 = readings("m1", 5), readings("m2", 5)
    both = interleave(m1, m2)
    # up to day 4 10:20: the spike has opened
    cut = 2 * ((3 * DAY + 10 * 3600 + 1200) // STEP)
    bus.publish(both[:cut])
    wait_until(lambda: any(a["event"] == "open" for a in bus.alerts()), 30, "spike opened")
    # the service marks an alert sent once the broker's PUBACK is back, and sends an
    # unmarked one again after a restart (at least once): the crash comes after the mark,
    # as the health's count of alerts sent says (else a loaded machine got two opens)
    wait_until(lambda: bus.health().get("alerts", 0) >= 1, 30, "the open marked sent")
    # a crash: no shutdown checkpoint (the transition saved one)
    detect.stop(signal.SIGKILL)
    bus.publish(both[cut : cut + 400])  # queued by the broker for the persistent session
    k = bus.n_health()
    detect.start()
    wait_until(lambda: bus.health(k).get("readings_in", 0) >= 400, 30, "restart after SIGKILL")
    # a clean stop and start, then the rest and a full replay
    assert detect.stop() == 0
    assert json.loads((detect.cfg.parent / "state.json").read_text())["meters"]
    bus.publish(both[cut + 400 :])
    detect.start()
    bus.publish(both[:500])
    wait_until(lambda: all_stored(vm, len(m1)), 40, "every reading after restarts")
    check_exactly_once(vm, len(m1))
    wait_until(lambda: any(a["event"] == "close" for a in bus.alerts()), 20, "spike closed")
    # an alert raised twice would be queued before the health messages that follow it:
    # wait for one saying none is left to send (and every reading taken in), not a time
    k = bus.n_health()
    wait_until(lambda: bus.health(k).get("alerts_waiting") == 0
               and bus.health(k).get("readings_in", 0) >= len(both) - cut - 400, 30,
               "a health message after the close with no alert waiting")
    spikes = [(a["event"], a["id"]) for a in bus.alerts() if a["type"] == "spike"]
    assert [e for e, _ in spikes] == ["open", "close"], spikes
    assert len({i for _, i in spikes}) == 1
    # (a batch's intervals are spooled after its readings: they may follow them)
    def intervals() -> list[int]:
        return samples(vm, "consumption_actual").get("m1", [])

    wait_until(lambda: len(intervals()) >= 5 * 96 - 1 - 2, 30,
               f"m1's intervals (have {len(intervals())})")
    cons = intervals()
    assert len(cons) == len(set(cons)) >= 5 * 96 - 1 - 2


def test_sigkill_after_checkpoint_consumer_ack_reaches_newest(
    tmp_path: Path, mosquitto_factory: Any, victoria_metrics: Any
) -> None:
    """Issue 5: readings stored and PUBACKed after the last checkpoint are never delivered
    again; the restarted service must still know them (the spool's dedup marks), or its
    consumer ack stops below them for good."""
    broker = mosquitto_factory(BROKER_CONF)
    vm = victoria_metrics
    detect = Detect(tmp_path, broker, vm, checkpoint_s=3600)  # no periodic checkpoint
    state = detect.cfg.parent / "state.json"
    bus = Bus(broker)
    m1, m2 = readings("m1", 1), readings("m2", 1)
    n = len(m1)
    both = interleave(m1, m2)

    def acked() -> dict[str, int]:
        out: dict[str, int] = {}
        for t, p in bus.messages("recp/v1/dairy/"):
            if t.endswith("/ack"):
                out[t.split("/")[3]] = json.loads(p)["seq"]
        return out

    def online() -> int:  # sent once the subscriptions are acknowledged
        return sum(json.loads(p)["state"] == "online"
                   for _, p in bus.messages("recp/v1/_detect/detect/status"))

    def started() -> None:
        k = online()
        detect.start()
        wait_until(lambda: online() > k, 30, "the service to subscribe")

    try:
        bus.publish([meta("m1"), meta("m2")], retain=True)
        started()
        bus.publish(both[:200])  # seqs 1-100 of each meter, then a clean stop: checkpoint
        wait_until(lambda: acked() == {"m1": 100, "m2": 100}, 20, "acks of the first 100")
        assert detect.stop() == 0
        saved = json.loads(state.read_text())["saved_at"]
        started()
        bus.publish(both[200:400])  # seqs 101-200: stored and PUBACKed, not checkpointed
        wait_until(lambda: acked() == {"m1": 200, "m2": 200}, 20, "acks of 101-200")
        wait_until(lambda: all_stored(vm, 200), 20, "seqs 101-200 in the database")
        detect.stop(signal.SIGKILL)
        assert json.loads(state.read_text())["saved_at"] == saved  # the old checkpoint
        started()
        bus.publish(both[400:])  # seqs 201-n
        wait_until(lambda: all_stored(vm, n), 30, "every reading stored")
        end = time.monotonic() + 10
        while acked() != {"m1": n, "m2": n} and time.monotonic() < end:
            time.sleep(0.1)
        assert acked() == {"m1": n, "m2": n}  # the consumer ack reached the newest seq
        check_exactly_once(vm, n)
        assert bus.health().get("duplicates") == 0
        assert detect.stop() == 0
    finally:
        bus.close()
        if detect.alive():
            detect.stop(signal.SIGKILL)


def test_sigkill_between_checkpoints_detectors_end_as_an_uninterrupted_run(
    tmp_path: Path, mosquitto_factory: Any, victoria_metrics: Any
) -> None:
    """Issue 5: readings stored after the last checkpoint are fed to the restarted
    detectors (the spool's replay table) before new messages. One instance runs straight
    through, the other (its own broker) is SIGKILLed hours of readings after the last
    checkpoint; afterwards both hold the same detector state and sent the same alerts."""
    vm = victoria_metrics
    runs = []
    for name in ("straight", "killed"):
        broker = mosquitto_factory(BROKER_CONF)
        detect = Detect(tmp_path, broker, vm, instance=name, checkpoint_s=3600)
        runs.append((detect, Bus(broker), name))
    m1, m2 = readings("m1", 5), readings("m2", 5)
    both = interleave(m1, m2)
    n = len(m1)
    # up to day 4 13:00 the spike (10:00-10:30) opened and closed, each saving a
    # checkpoint; then, published only once that is stored (a batch must not straddle),
    # hours up to 20:00 holding the evening's load step (a straight line over them, as
    # the counter would be bridged without the replay, is not what happened)
    closed = 2 * ((3 * DAY + 13 * 3600) // STEP)
    kill = 2 * ((3 * DAY + 20 * 3600) // STEP)

    def online(bus: Bus, name: str) -> int:
        return sum(json.loads(p)["state"] == "online"
                   for _, p in bus.messages(f"recp/v1/_detect/{name}/status"))

    def started(detect: Detect, bus: Bus, name: str) -> None:
        k = online(bus, name)
        detect.start()
        wait_until(lambda: online(bus, name) > k, 30, f"{name} to subscribe")

    def acked(bus: Bus) -> dict[str, int]:
        return {t.split("/")[3]: json.loads(p)["seq"]
                for t, p in bus.messages("recp/v1/dairy/") if t.endswith("/ack")}

    try:
        for detect, bus, name in runs:
            bus.publish([meta("m1"), meta("m2")], retain=True)
            started(detect, bus, name)
        for begin, upto in ((0, closed), (closed, kill)):
            for _, bus, _ in runs:
                bus.publish(both[begin:upto])
            half = upto // 2
            for _, bus, name in runs:
                wait_until(lambda b=bus, h=half: acked(b) == {"m1": h, "m2": h}, 60,
                           f"{name}: every reading up to {half} stored")
        detect, bus, name = runs[1]
        state = detect.cfg.parent / "state.json"
        saved = json.loads(state.read_text())
        assert max(m["next_start"] for m in saved["meters"]) <= T0 + 3 * DAY + 13 * 3600
        detect.stop(signal.SIGKILL)
        assert json.loads(state.read_text())["saved_at"] == saved["saved_at"]
        started(detect, bus, name)
        for _, bus, _ in runs:
            bus.publish(both[kill:])
        for detect, bus, name in runs:
            wait_until(lambda b=bus: acked(b) == {"m1": n, "m2": n}, 60,
                       f"{name}: every reading stored")
            assert detect.stop() == 0
        ends = []
        for detect, _, _ in runs:
            meters = json.loads((detect.cfg.parent / "state.json").read_text())["meters"]
            ends.append({f"{m['site']}/{m['meter']}": m for m in meters})
        assert ends[0] == ends[1]  # buffered readings, detector arrays, open events
        alerts = [[(a["event"], a["id"], a["excess"]) for a in bus.alerts()]
                  for _, bus, _ in runs]
        assert alerts[0] == alerts[1]
        assert ("open", f"dairy/m1/spike/{T0 + 3 * DAY + 36000}") in [a[:2] for a in alerts[0]]
        assert len(set(alerts[1])) == len(alerts[1])  # nothing raised twice
        assert "fed the detectors again" in runs[1][0].log.read_text()
    finally:
        for detect, bus, _ in runs:
            bus.close()
            if detect.alive():
                detect.stop(signal.SIGKILL)


def test_capped_outbox_announces_its_drops_and_the_consumer_ack_passes_the_hole(
    tmp_path: Path, mosquitto_factory: Any, victoria_metrics: Any
) -> None:
    """Issue 5: a `confirm: consumer` agent's outbox (the real Outbox and Publisher) drops
    its oldest readings at the cap while the broker is away; it announces the hole
    (retained `.../dropped`), `recp detect` moves its ack past it at once and stores the
    drop, and the outbox empties (before: the ack stayed below the hole until 4,096 newer
    readings arrived, and the agent kept everything meanwhile)."""
    import asyncio

    from collector.outbox import Entry, Outbox
    from collector.publisher import Publisher
    from collector.site import Credentials, Mqtt

    broker = mosquitto_factory(BROKER_CONF)
    vm = victoria_metrics
    detect = Detect(tmp_path, broker, vm)
    bus = Bus(broker)
    box = Outbox(tmp_path / "outbox.sqlite", cap=100)
    mqtt_cfg = Mqtt.model_validate({"url": broker.url, "confirm": "consumer",
                                    "reconnect_delay_s": 0.1, "publish_timeout_s": 5})

    def entry(seq0: int) -> Entry:
        def render(seq: int) -> tuple[str, bytes]:
            return contract.reading_topic("dairy", "m1"), contract.dumps(
                contract.reading_payload(
                    site="dairy", meter="m1", resource="electricity", stream=box.stream,
                    seq=seq, ts=T0 + seq * STEP, quality=contract.Quality.OK,
                    values={"energy_kwh": 1000.0 + seq}))
        return Entry("m1", render)

    def acked() -> int:
        acks = [json.loads(p) for t, p in bus.messages("recp/v1/dairy/m1/ack")]
        return acks[-1]["seq"] if acks else 0

    async def publish_until(cond: Callable[[], bool], what: str) -> None:
        pub = Publisher(mqtt_cfg, "dairy", box, Credentials(None, None), confirm_wait_s=0)
        stop = asyncio.Event()
        task = asyncio.create_task(pub.run(stop))
        end = time.monotonic() + 30
        while not cond():
            assert time.monotonic() < end, f"timed out waiting for {what}"
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(task, 20)

    try:
        bus.publish([meta("m1")], retain=True)
        detect.start()
        wait_until(lambda: bus.health().get("connected") is True, 30, "the service")
        box.append([entry(i) for i in range(50)])
        asyncio.run(publish_until(lambda: box.depth == 0, "seqs 1-50 confirmed"))
        assert acked() == 50
        # the broker is away (no publisher): 250 more, the cap of 100 drops 51-200
        for _ in range(5):
            box.append([entry(i) for i in range(50)])
        assert box.depth == 100 and [(h.through_seq, h.count) for h in box.holes()] == [
            (200, 150)]
        asyncio.run(publish_until(lambda: box.depth == 0, "the outbox confirmed empty"))
        assert acked() == 300
        wait_until(lambda: all_stored(vm, 150, ("m1",)), 20, "the readings kept")
        got = samples(vm, "reading_energy_kwh")["m1"]
        assert len(got) == len(set(got)) == 150  # 1-50 and 201-300

        def drops() -> dict[str, list[float]]:
            vm.flush()
            return {s["metric"]["__name__"]: s["values"] for s in vm.query_export(
                '{__name__=~"dropped_.*"}', start="2025-12-01T00:00:00Z")}

        wait_until(lambda: "dropped_count" in drops(), 20, "the drop stored")
        values = drops()
        assert values["dropped_count"] == [150] and values["dropped_missing"] == [150]
        assert values["dropped_through_seq"] == [200]
        retained = [json.loads(p) for t, p in bus.got if t == "recp/v1/dairy/m1/dropped"]
        assert retained and retained[-1]["reason"] == "outbox full (cap 100), oldest dropped"
        wait_until(lambda: bus.health().get("drops_announced") == 1, 10, "health: 1 drop")
        assert detect.stop() == 0
    finally:
        box.close()
        bus.close()
        if detect.alive():
            detect.stop(signal.SIGKILL)


def test_two_partitions_share_the_meters_exactly_once(
    tmp_path: Path, mosquitto_factory: Any, victoria_metrics: Any
) -> None:
    broker = mosquitto_factory(BROKER_CONF)
    vm = victoria_metrics
    # `recp detect --workers 2`: two processes, partitions 0/2 and 1/2, each with its own
    # client id, spool, checkpoint and instance name
    detect = Detect(tmp_path, broker, vm)
    detect.start("--workers", "2")
    bus = Bus(broker)
    try:
        meters = ["m1", "m4", "m5"]  # crc32: m1 in partition 1, m4 and m5 in 0
        bus.publish([meta(m) for m in meters], retain=True)
        for inst in ("detect-p0of2", "detect-p1of2"):

            def connected(i: str = inst) -> bool:
                return bus.health(instance=i).get("connected") is True

            wait_until(connected, 30, f"{inst} to connect")
        series = [readings(m, 4) for m in meters]
        n = len(series[0])
        bus.publish(interleave(*series))
        wait_until(lambda: all_stored(vm, n, tuple(meters)), 30, "every reading stored")

        def taken() -> tuple[int, int]:
            return (bus.health(instance="detect-p0of2").get("readings_in", 0),
                    bus.health(instance="detect-p1of2").get("readings_in", 0))

        wait_until(lambda: sum(taken()) >= n * len(meters), 10, "both instances' counts")
        time.sleep(1.0)
        ha = bus.health(instance="detect-p0of2")
        hb = bus.health(instance="detect-p1of2")
        # every meter handled by exactly one instance
        assert ha["readings_in"] + hb["readings_in"] == n * len(meters)
        assert ha["meters"] + hb["meters"] == len(meters)
        assert ha["meters"] > 0 and hb["meters"] > 0
        assert ha["readings_in"] == n * ha["meters"]
        # together the same events as one instance: the one spike on m1, opened and closed
        wait_until(lambda: len([x for x in bus.alerts() if x["type"] == "spike"]) >= 2, 10,
                   "the spike's alerts")
        spikes = [(x["event"], x["id"]) for x in bus.alerts() if x["type"] == "spike"]
        assert spikes == [("open", f"dairy/m1/spike/{T0 + 3 * DAY + 36000}"),
                          ("close", f"dairy/m1/spike/{T0 + 3 * DAY + 36000}")]
        cons = samples(vm, "consumption_actual")
        assert {m: len(v) for m, v in cons.items()} == {m: 4 * 96 - 1 for m in meters}
        assert detect.stop() == 0  # SIGTERM reaches both workers, both stop cleanly
        assert {p.name for p in detect.cfg.parent.glob("state.p*of2.json")} == {
            "state.p0of2.json", "state.p1of2.json"}
    finally:
        bus.close()
        if detect.alive():
            detect.stop(signal.SIGKILL)


PLANT = """kind: plant
name: leak_test
timezone: UTC
start: 2026-01-05T00:00:00Z
days: 10
seed: 3
step_s: 300
schedule:
  workdays: [mon, tue, wed, thu, fri]
  shifts: ["06:00-14:00", "14:00-22:00"]
production: {rate_units_h: 1000, noise: 0.05}
meters:
  - id: water_main
    profile: endress_hauser_promag_w400
    port: 5021
    unit_id: 1
    load: {base: 0.4, running: 5.5, noise: 0.05}
    initial: 1000
    price_per_unit: 3.4
  - id: el_main
    profile: schneider_pm5560
    port: 5020
    unit_id: 1
    load: {base: 55, running: 140, noise: 0.04}
    initial: 1843302
    price_per_unit: 0.21
losses:
  - {meter: water_main, type: leak, start: 2026-01-12T22:00:00Z, rate: 0.8}
"""


def plant_messages(outdir: Path) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]],
                                           dict[str, int], dict[str, Any]]:
    """(meta messages, readings interleaved by time, rows per meter, truth) of a CSV run."""
    import csv
    import datetime as dt

    manifest = json.loads((outdir / "meters.json").read_text())["meters"]
    metas, series, rows = [], [], {}
    for mid, m in manifest.items():
        metas.append((contract.meta_topic("plant", mid), contract.dumps({
            "v": 1, "site": "plant", "meter": mid, "resource": m["resource"],
            "profile": m["profile"], "manufacturer": "virtual", "model": m["model"],
            "interval_s": 300,
            "points": {c["name"]: {"unit": c["unit"], "kind": c["kind"],
                                   "rollover": m["rollover"] if c["name"] == m["counter"]
                                   else None} for c in m["columns"]},
            "tags": {"price_per_unit": m["price_per_unit"], "currency": "EUR"},
        })))  # fmt: skip
        out = []
        with open(outdir / f"{mid}.csv", newline="") as f:
            for seq, row in enumerate(csv.DictReader(f), start=1):
                t = dt.datetime.fromisoformat(row.pop("timestamp_utc").replace("Z", "+00:00"))
                out.append((contract.reading_topic("plant", mid), contract.dumps(
                    contract.reading_payload(
                        site="plant", meter=mid, resource=m["resource"], stream="csv",
                        seq=seq, ts=t.timestamp(), quality=contract.Quality.OK,
                        values={k: float(v) for k, v in row.items() if v != ""}))))
        rows[mid] = len(out)
        series.append(out)
    truth = json.loads((outdir / "truth.json").read_text())
    return metas, interleave(*series), rows, truth


def test_virtual_plant_every_reading_once_and_the_leak_alerted(
    tmp_path: Path, mosquitto_factory: Any, victoria_metrics: Any
) -> None:
    from collector.plant.csvout import write_csv
    from collector.plant.engine import Engine
    from collector.plant.load import load_plant

    (tmp_path / "plant.yaml").write_text(PLANT)
    spec = load_plant(tmp_path / "plant.yaml")
    write_csv(Engine(spec.plant, spec.profiles, file=spec.file), tmp_path / "csv")
    metas, msgs, rows, truth = plant_messages(tmp_path / "csv")
    broker = mosquitto_factory(BROKER_CONF)
    vm = victoria_metrics
    detect = Detect(tmp_path, broker, vm)
    detect.start()
    bus = Bus(broker)
    try:
        bus.publish(metas, retain=True)
        wait_until(lambda: bus.health().get("connected") is True, 30, "the service")
        bus.publish(msgs)

        def stored() -> bool:
            got = {**samples(vm, "reading_volume_m3"), **samples(vm, "reading_energy_kwh")}
            return all(len(got.get(m, [])) >= n for m, n in rows.items())

        wait_until(stored, 30, "every plant reading in the database")
        got = {**samples(vm, "reading_volume_m3"), **samples(vm, "reading_energy_kwh")}
        for m, n in rows.items():
            assert len(got[m]) == len(set(got[m])) == n
        # the injected leak came out as one base-load alert on its meter, near its start
        leak = next(e for e in truth["events"] if e["type"] == "leak")
        began = contract.Reading.model_validate({
            "v": 1, "site": "x", "meter": "x", "resource": "water", "stream": "x", "seq": 1,
            "ts": leak["start"], "quality": "ok", "values": {}}).ts.timestamp()  # fmt: skip
        wait_until(lambda: any(a["type"] == "base_load_rise" for a in bus.alerts()), 10,
                   "the leak's alert")
        opened = [a for a in bus.alerts() if a["event"] == "open"]
        assert [(a["meter"], a["type"]) for a in opened] == [("water_main", "base_load_rise")]
        start = opened[0]["id"].rsplit("/", 1)[1]
        assert abs(int(start) - began) <= 6 * 3600
        # the event point is in the spool before the alert goes out, and written soon after
        wait_until(lambda: bool(samples(vm, 'event_excess{type="base_load_rise"}')), 10,
                   "the leak's event point")
        assert samples(vm, 'event_excess{type="base_load_rise"}').keys() == {"water_main"}
    finally:
        bus.close()
        if detect.alive():
            detect.stop()
