"""The dashboards' queries name what ``recp detect`` really writes: a real run into VictoriaMetrics.

``recp detect`` runs as a subprocess against the real Mosquitto and VictoriaMetrics; two
synthetic meters publish four days of readings (one with a 30-minute spike, so an event
opens and closes). VictoriaMetrics stores each field as the metric ``<measurement>_<field>``
with the tags as labels, so its metric and label names show exactly what the service wrote.
Both meters have a baseline fitted beforehand (``detectors.baseline``, as ``recp`` does from
history), so the service writes the expected consumption and its band too. Every field and
tag the dashboards' Flux queries use must be among the names stored.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
import pytest
from servicedata import BROKER_CONF, DAY, STEP, T0, rate_kw, readings

from collector import contract
from detectors import dashboards as dash

if TYPE_CHECKING:
    from tests.conftest import VictoriaMetricsServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def write_baselines(directory: Path) -> None:
    """Hourly baselines of both meters, fitted on the two weeks before the live data."""
    from detectors.baseline import BaselineConfig, fit_baseline

    hours = [T0 - 14 * DAY + 3600 * i for i in range(14 * 24)]
    (directory / "dairy").mkdir(parents=True)
    for meter in ("m1", "m2"):
        hourly = [sum(rate_kw(meter, t + 60 * k) / 60 for k in range(60)) for t in hours]
        model = fit_baseline(hours, hourly, meter=meter, unit="kWh",
                             config=BaselineConfig(interval_s=3600))
        (directory / "dairy" / f"{meter}.json").write_text(model.to_json())


def meta(meter: str) -> tuple[str, bytes]:
    return contract.meta_topic("dairy", meter), contract.dumps({
        "v": 1, "site": "dairy", "meter": meter, "resource": "electricity",
        "profile": "sdm120", "manufacturer": "Eastron", "model": "SDM120",
        "interval_s": STEP,
        "points": {"energy_kwh": {"unit": "kWh", "kind": "counter"},
                   "power_kw": {"unit": "kW", "kind": "gauge"}},
        "tags": {"price_per_unit": 0.25, "co2_kg_per_unit": 0.4, "currency": "EUR"},
    })


def agent_health() -> tuple[str, bytes]:
    """The site's agent reporting one meter up, one down and a short outbox."""
    return contract.health_topic("dairy"), contract.dumps({
        "v": 1, "site": "dairy", "ts": contract.format_ts(T0 + 4 * DAY), "uptime_s": 345600.0,
        "clock": "synced", "outbox": {"depth": 3, "held": 0, "cap": 100000},
        "devices": {"m1": {"state": "up"}, "m2": {"state": "down"}},
    })


def dropped_announcement(meter: str) -> tuple[str, bytes]:
    """The agent's retained word that its outbox cap dropped readings of ``meter``."""
    return contract.dropped_topic("dairy", meter), contract.dumps({
        "v": 1, "site": "dairy", "meter": meter, "stream": "s1", "through_seq": 3,
        "count": 3, "reason": "outbox full (cap 100000), oldest dropped",
        "ts": contract.format_ts(T0 + DAY),
    })


def dashboard_references() -> dict[str, tuple[set[str], set[str]]]:
    """measurement -> (fields, tags) that the dashboards' queries use."""
    out: dict[str, tuple[set[str], set[str]]] = {}
    for board in dash.dashboards().values():
        queries = [t["query"] for p in board["panels"] for t in p["targets"]]
        queries += [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]
        queries += [a["target"]["query"] for a in board["annotations"]["list"] if "target" in a]
        for q in queries:
            (m,) = set(re.findall(r'r\._measurement == "(\w+)"', q))
            schema = dash.INFLUX_SCHEMA[m]
            names = set(re.findall(r'r\._field == "(\w+)"', q)) | set(
                re.findall(r"\br\.(\w+)", q)) | set(re.findall(r'\btag: "(\w+)"', q))
            for group in re.findall(r"\b(?:columns|rowKey|columnKey): \[([^\]]*)\]", q):
                names |= set(re.findall(r'"(\w+)"', group))
            fields, tags = out.setdefault(m, (set(), set()))
            fields |= names & set(schema["fields"])
            tags |= names & set(schema["tags"])
    return out


def series_labels(vm: VictoriaMetricsServer) -> dict[str, set[str]]:
    """metric name -> label names, over everything stored."""
    vm.flush()
    body = vm.get("/api/v1/series", [("match[]", '{__name__=~".+"}'),
                                     ("start", "2025-12-01T00:00:00Z")])
    out: dict[str, set[str]] = {}
    for s in json.loads(body)["data"]:
        out.setdefault(s["__name__"], set()).update(k for k in s if k != "__name__")
    return out


@pytest.fixture
def detect_run(tmp_path: Path, mosquitto_factory: Any, victoria_metrics: Any) -> Any:
    broker = mosquitto_factory(BROKER_CONF)
    cfg = tmp_path / "analytics.yaml"
    write_baselines(tmp_path / "baselines")
    cfg.write_text(f"""kind: analytics
instance: detect
mqtt: {{url: "{broker.url}", reconnect_delay_s: 0.2, reconnect_delay_max_s: 1}}
influx: {{url: "{victoria_metrics.url}", retry_delay_s: 0.1, retry_delay_max_s: 0.5}}
spool: {{path: spool.sqlite}}
checkpoint: {{path: state.json, interval_s: 5}}
baselines: {{dir: baselines}}
metrics_interval_s: 0.5
""")
    log = (tmp_path / "detect.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector", "detect", "-c", str(cfg)],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-dash",
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    health: list[dict[str, Any]] = []
    client.on_message = lambda _c, _u, msg: health.append(json.loads(msg.payload))
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.subscribe("recp/v1/_detect/detect/health", qos=1)
    try:
        # publish only once the service has subscribed (its session then queues for it)
        end = time.monotonic() + 60
        while not (health and health[-1].get("connected") is True):
            assert proc.poll() is None and time.monotonic() < end, "recp detect did not connect"
            time.sleep(0.1)
        yield client, victoria_metrics, proc, tmp_path / "detect.log"
    finally:
        client.loop_stop()
        client.disconnect()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def test_every_field_and_tag_the_dashboards_use_is_written(detect_run: Any) -> None:
    client, vm, proc, log = detect_run
    for topic, payload in (meta("m1"), meta("m2"), agent_health(),
                           dropped_announcement("m2")):
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    m1, m2 = readings("m1", 4), readings("m2", 4)
    infos = [client.publish(t, p, qos=1) for pair in zip(m1, m2, strict=True) for t, p in pair]
    for info in infos:
        info.wait_for_publish(30)

    wanted = dashboard_references()

    def missing() -> list[str]:
        assert proc.poll() is None, log.read_text()[-3000:]
        names = series_labels(vm)
        return sorted(f"{m}_{f}" for m, (fields, _) in wanted.items() for f in fields
                      if f"{m}_{f}" not in names)

    end = time.monotonic() + 120
    while missing():
        if time.monotonic() > end:
            pytest.fail(f"not written after 120 s: {missing()}\n{log.read_text()[-3000:]}",
                        pytrace=False)
        time.sleep(0.5)
    names = series_labels(vm)
    problems = []
    for m, (fields, tags) in sorted(wanted.items()):
        written = {n[len(m) + 1:] for n in names if n.startswith(f"{m}_")}
        for f in sorted(fields - written):
            problems.append(f"{m}.{f} is used by a dashboard but was not written")
        labels = set().union(*(names[f"{m}_{f}"] for f in fields & written))
        for t in sorted(tags - labels):
            problems.append(f"{m}: tag {t!r} is used by a dashboard but was not written")
    assert not problems, "\n".join(problems)
    # the dashboards cover the baseline's band and the events' state
    assert {"actual", "expected", "lower", "upper", "cost"} <= wanted["consumption"][0]
    assert {"excess", "cost", "open", "end_ts"} <= wanted["event"][0]
    assert {"open", "end_ts"} <= {n[len("event_"):] for n in names if n.startswith("event_")}
    # the agent's dropped readings: counts labelled with their reason, no string field
    assert "reason" in names["dropped_count"] and "dropped_reason" not in names
