"""Security checks against the real processes (issue 9): what can leave the edge agent.

- Only read function codes reach a meter: Modbus servers on loopback (Modbus TCP and RTU
  over TCP) record every request's unit, function code and address while the real
  ``recp agent`` polls one meter per shipped profile plus a profile using every table and
  type; a site file asking for a write never starts an agent.
- Secrets never leave: the broker passwords (agent from the environment, service from a
  file) and the InfluxDB token appear neither in the agent's nor the service's debug log,
  nor in any message on the broker (retained metadata, status and health included).
- TLS verification is on by default: a broker with a self-signed certificate is refused
  with a clear error until the site names the certificate as its CA.

The broker ACL rules are tested in test_broker_security.py (shipped config, real broker).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import socketserver
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
import pytest
import yaml

from collector.modbus.poller import plan_device
from collector.site import load_site

if TYPE_CHECKING:
    from conftest import MosquittoServer, VictoriaMetricsServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROFILES = sorted((REPO / "edge_config" / "profiles").glob("*.yaml"))
TIMEOUT = 20.0

EVERY_TABLE_AND_TYPE = """\
kind: profile
manufacturer: Test
model: every table, type and word order
resource: electricity
source: tests/integration/test_security.py
points:
  - {name: energy_kwh, address: 0, table: holding, type: uint64, order: DCBA}
  - {name: energy_export_kwh, address: 4, table: holding, type: int64, order: CDAB}
  - {name: power_kw, address: 8, table: holding, type: float64, order: BADC}
  - {name: voltage_l1_v, address: 12, table: holding, type: float32, order: ABCD}
  - {name: current_l1_a, address: 200, table: holding, type: uint32, order: CDAB}
  - {name: power_factor, address: 0, table: input, type: int16, scale: 0.001}
  - {name: frequency_hz, address: 1, table: input, type: uint16, scale: 0.1}
  - {name: reactive_energy_kvarh, address: 2, table: input, type: int32, order: BADC}
  - {name: status_code, address: 7, table: coil, type: bool}
  - {name: line_running, address: 3, table: discrete, type: bool}
"""


def _crc16(data: bytes) -> bytes:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return struct.pack("<H", crc)


class RecordingModbusServer:
    """A Modbus server on loopback that records every request: (unit, fc, address, count).

    Reads (function codes 1-4) of any address are answered with zeros; any other function
    code is recorded too (address None) and answered with exception 1 (illegal function).
    ``framing`` is "tcp" (MBAP header) or "rtu" (RTU frames with CRC over TCP).
    """

    def __init__(self, framing: str) -> None:
        self.framing = framing
        self.requests: list[tuple[int, int, int | None, int | None]] = []
        self.connections = 0
        lock = threading.Lock()
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with lock:
                    owner.connections += 1
                sock: socket.socket = self.request
                f = sock.makefile("rb")
                while True:
                    try:
                        reply = owner._serve_one(f, lock)
                    except (OSError, struct.error, EOFError):
                        return
                    if reply is None:
                        return
                    sock.sendall(reply)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _read(self, f: Any, n: int) -> bytes:
        data = f.read(n)
        if len(data) < n:
            raise EOFError
        return bytes(data)

    def _serve_one(self, f: Any, lock: threading.Lock) -> bytes | None:
        if self.framing == "tcp":
            tid, _proto, length, unit = struct.unpack(">HHHB", self._read(f, 7))
            pdu = self._read(f, length - 1)
        else:
            head = self._read(f, 2)
            unit = head[0]
            rest = self._read(f, 6) if head[1] in (1, 2, 3, 4) else b""
            pdu = head[1:] + rest[:4]
        fc = pdu[0]
        if fc in (1, 2, 3, 4) and len(pdu) >= 5:
            address, count = struct.unpack(">HH", pdu[1:5])
            with lock:
                self.requests.append((unit, fc, address, count))
            nbytes = 2 * count if fc in (3, 4) else (count + 7) // 8
            answer = bytes([fc, nbytes]) + bytes(nbytes)
        else:
            with lock:
                self.requests.append((unit, fc, None, None))
            answer = bytes([fc | 0x80, 1])
        if self.framing == "tcp":
            return struct.pack(">HHHB", tid, 0, len(answer) + 1, unit) + answer
        frame = bytes([unit]) + answer
        return frame + _crc16(frame)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorders() -> Iterator[dict[str, RecordingModbusServer]]:
    servers = {"tcp": RecordingModbusServer("tcp"), "rtu": RecordingModbusServer("rtu")}
    try:
        yield servers
    finally:
        for s in servers.values():
            s.close()


def run_agent(site: Path, env: dict[str, str], log: Path,
              until: Callable[[], bool] | None = None, seconds: float = 2.0) -> int:
    """``recp agent -vv`` (debug) as a process: run until ``until()`` or ``seconds``, SIGTERM."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "collector", "agent", "-vv", "-c", str(site)],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=REPO)
        deadline = time.monotonic() + (TIMEOUT if until else seconds)
        while proc.poll() is None and time.monotonic() < deadline:
            if until is not None and until():
                break
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    return proc.returncode


# --------------------------------------------------------------------------- read only


def test_only_read_function_codes_reach_the_meters(
        recorders: dict[str, RecordingModbusServer], mosquitto: MosquittoServer,
        tmp_path: Path) -> None:
    """Every shipped profile and one with every table, type and word order, over Modbus TCP
    (our own client) and RTU over TCP (pymodbus): the servers see only function codes 1-4,
    at exactly the addresses the read plan names, and every table is read."""
    profile = tmp_path / "every_table.yaml"
    profile.write_text(EVERY_TABLE_AND_TYPE)
    profiles = [str(p) for p in PROFILES] + [str(profile)]
    meters = []
    for framing, server in recorders.items():
        conn_type = "tcp" if framing == "tcp" else "rtu_over_tcp"
        for i, name in enumerate(profiles):
            meters.append({"id": f"{framing}{i}", "profile": name, "unit_id": i + 1,
                           "connection": {"type": conn_type, "host": "127.0.0.1",
                                          "port": server.port}})
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({
        "kind": "site", "site": "readonly",
        "mqtt": {"url": mosquitto.url, "reconnect_delay_s": 0.1},
        "outbox": {"path": str(tmp_path / "outbox.sqlite")},
        "polling": {"interval_s": 0.5, "timeout_s": 0.5, "retries": 0},
        "clock": {"require": "none"},
        "meters": meters,
    }, sort_keys=False))
    spec = load_site(site)
    planned = {(m.meter.unit_id, r.function_code, r.address, r.count)
               for m in spec.meters for r in plan_device(m)}

    def everything_read() -> bool:
        return all(planned <= set(s.requests) for s in recorders.values())

    code = run_agent(site, {}, tmp_path / "agent.log", until=everything_read)
    assert code == 0, (tmp_path / "agent.log").read_text()[-3000:]
    for framing, server in recorders.items():
        seen = set(server.requests)
        codes = {fc for _, fc, _, _ in seen}
        assert codes <= {1, 2, 3, 4}, (framing, sorted(codes))
        assert codes == {1, 2, 3, 4}, (framing, sorted(codes))  # every table was read
        assert seen <= planned, (framing, sorted(seen - planned)[:5])
        assert planned <= seen, (framing, sorted(planned - seen)[:5])
        assert len(server.requests) >= len(planned)


def test_a_site_asking_for_a_write_never_starts(
        recorders: dict[str, RecordingModbusServer], tmp_path: Path) -> None:
    """``function_code: 6`` in a site file: exit status 2 naming the line; no connection."""
    site = tmp_path / "site.yaml"
    site.write_text(f"""kind: site
site: writer
meters:
  - id: m1
    profile: eastron_sdm120
    connection: {{type: tcp, host: 127.0.0.1, port: {recorders['tcp'].port}}}
    function_code: 6
""")
    log = tmp_path / "agent.log"
    code = run_agent(site, {}, log, seconds=TIMEOUT)
    text = log.read_text()
    assert code == 2, text
    assert f"{site}:7: meters[0].function_code: the agent only reads" in text
    assert "Traceback" not in text
    assert recorders["tcp"].connections == 0 and recorders["tcp"].requests == []


# --------------------------------------------------------------------------- secrets


def _passwd(tmp: Path, users: dict[str, str]) -> Path:
    path = tmp / "passwd"
    path.touch()
    binary = "/usr/bin/mosquitto_passwd"
    for user, password in users.items():
        subprocess.run([binary, "-b", str(path), user, password], check=True,
                       capture_output=True, timeout=30)
    return path


class Everything:
    """A paho client subscribed to '#' (retained messages included), keeping all payloads."""

    def __init__(self, broker: MosquittoServer, user: str, password: str) -> None:
        self.got: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"all-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
        self.c.username_pw_set(user, password)
        self.c.on_message = self._on
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        self.c.subscribe("#", qos=1)

    def _on(self, _c: Any, _u: Any, msg: Any) -> None:
        with self.lock:
            self.got.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def topics(self) -> set[str]:
        with self.lock:
            return {t for t, _, _ in self.got}

    def blob(self) -> bytes:
        with self.lock:
            return b"\n".join(t.encode() + b" " + p for t, p, _ in self.got)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_secrets_never_in_logs_or_messages(
        recorders: dict[str, RecordingModbusServer],
        mosquitto_factory: Callable[..., MosquittoServer],
        victoria_metrics: VictoriaMetricsServer, tmp_path: Path) -> None:
    """Agent and service at debug level against a broker that requires passwords: neither
    password nor the InfluxDB token is in a log, a retained message or any other message."""
    agent_pw = "agent-" + secrets.token_urlsafe(18)
    detect_pw = "detect-" + secrets.token_urlsafe(18)
    watcher_pw = "watcher-" + secrets.token_urlsafe(18)
    token = "influx-token-" + secrets.token_urlsafe(24)
    passwd = _passwd(tmp_path, {"agent-sec": agent_pw, "recp-detect": detect_pw,
                                "watcher": watcher_pw})
    broker = mosquitto_factory(f"allow_anonymous false\npassword_file {passwd}\n")
    watcher = Everything(broker, "watcher", watcher_pw)

    pw_file = tmp_path / "detect.password"
    pw_file.write_text(detect_pw + "\n")
    pw_file.chmod(0o600)
    analytics = tmp_path / "analytics.yaml"
    analytics.write_text(f"""kind: analytics
instance: detect
mqtt: {{url: "{broker.url}", username: recp-detect, password_file: {pw_file},
        reconnect_delay_s: 0.2, reconnect_delay_max_s: 1}}
influx: {{url: "{victoria_metrics.url}", token_env: SEC_INFLUX_TOKEN, timeout_s: 2,
          retry_delay_s: 0.1, retry_delay_max_s: 0.5}}
spool: {{path: spool.sqlite}}
checkpoint: {{path: state.json, interval_s: 1}}
processing: {{batch: 200, batch_wait_s: 0.05}}
metrics_interval_s: 0.5
ack_interval_s: 0.2
""")
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({
        "kind": "site", "site": "sec",
        "mqtt": {"url": broker.url, "username": "agent-sec", "password_env": "SEC_AGENT_PW",
                 "health_interval_s": 1, "reconnect_delay_s": 0.1, "confirm": "consumer"},
        "outbox": {"path": str(tmp_path / "outbox.sqlite")},
        "polling": {"interval_s": 0.2, "timeout_s": 0.5},
        "clock": {"require": "none"},
        "meters": [{"id": "m1", "profile": "eastron_sdm120", "unit_id": 1,
                    "connection": {"type": "tcp", "host": "127.0.0.1",
                                   "port": recorders["tcp"].port}}],
    }, sort_keys=False))
    detect_log = tmp_path / "detect.log"
    env = {**os.environ, "SEC_INFLUX_TOKEN": token}
    with detect_log.open("ab") as out:
        detect = subprocess.Popen(
            [sys.executable, "-m", "collector", "-vv", "detect", "-c", str(analytics)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        def stored_and_acked() -> bool:
            topics = watcher.topics()
            return ({"recp/v1/sec/m1/ack", "recp/v1/sec/_agent/health",
                     "recp/v1/sec/m1/meta"} <= topics
                    and any(t.startswith("recp/v1/_detect/") for t in topics))

        agent_log = tmp_path / "agent.log"
        code = run_agent(site, {"SEC_AGENT_PW": agent_pw}, agent_log, until=stored_and_acked)
        assert code == 0, agent_log.read_text()[-3000:]
        assert stored_and_acked(), (sorted(watcher.topics()), agent_log.read_text()[-2000:])
    finally:
        detect.send_signal(signal.SIGTERM)
        try:
            detect.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            detect.kill()
            detect.wait(5)
    # a late subscriber gets every retained message: the metadata, status and health
    late = Everything(broker, "watcher", watcher_pw)
    time.sleep(1.0)
    retained = [t for t, _, r in late.got if r]
    late.close()
    watcher.close()
    assert {"recp/v1/sec/m1/meta", "recp/v1/sec/_agent/status",
            "recp/v1/sec/_agent/health"} <= set(retained), retained

    agent_text = agent_log.read_text()
    detect_text = detect_log.read_text()
    assert "DEBUG" in agent_text and "DEBUG" in detect_text  # really at debug level
    assert "Traceback" not in agent_text + detect_text
    db = sqlite3.connect(tmp_path / "outbox.sqlite")
    outbox_rows = "\n".join(str(r) for r in db.execute("SELECT * FROM outbox"))
    db.close()
    places = {"agent log": agent_text, "service log": detect_text,
              "messages": watcher.blob().decode(errors="replace"),
              "outbox": outbox_rows}
    for secret in (agent_pw, detect_pw, token):
        for where, text in places.items():
            assert secret not in text, f"a secret ({secret[:6]}...) is in the {where}"
    # and what was published is real: readings stored, metadata describes the meter
    meta = json.loads(dict((t, p) for t, p, _ in late.got)["recp/v1/sec/m1/meta"])
    assert meta["profile"] == "eastron_sdm120" and meta["site"] == "sec"


# --------------------------------------------------------------------------- TLS


@pytest.fixture
def self_signed(tmp_path: Path) -> Path:
    """A self-signed server certificate for 127.0.0.1 (in no trust store)."""
    d = tmp_path / "tls"
    d.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-keyout", str(d / "server.key"), "-out", str(d / "server.crt")],
        check=True, capture_output=True, timeout=60)
    return d


def test_tls_verifies_the_broker_by_default(
        recorders: dict[str, RecordingModbusServer],
        mosquitto_factory: Callable[..., MosquittoServer], self_signed: Path,
        tmp_path: Path) -> None:
    """mqtts:// to a broker whose self-signed certificate no CA vouches for: the agent
    refuses the connection and says why; with the certificate as its ca_file it publishes."""
    broker = mosquitto_factory(
        f"cafile {self_signed / 'server.crt'}\ncertfile {self_signed / 'server.crt'}\n"
        f"keyfile {self_signed / 'server.key'}\n")

    def site(tls: dict[str, Any] | None) -> Path:
        path = tmp_path / f"site-{'ca' if tls else 'default'}.yaml"
        mqtt_cfg: dict[str, Any] = {"url": f"mqtts://127.0.0.1:{broker.port}",
                                    "reconnect_delay_s": 0.2, "connect_timeout_s": 3}
        if tls:
            mqtt_cfg["tls"] = tls
        path.write_text(yaml.safe_dump({
            "kind": "site", "site": "tls", "mqtt": mqtt_cfg,
            "outbox": {"path": str(tmp_path / f"{path.stem}.sqlite")},
            "polling": {"interval_s": 0.2, "timeout_s": 0.5}, "clock": {"require": "none"},
            "meters": [{"id": "m1", "profile": "eastron_sdm120",
                        "connection": {"type": "tcp", "host": "127.0.0.1",
                                       "port": recorders["tcp"].port}}],
        }, sort_keys=False))
        return path

    refused_log = tmp_path / "refused.log"
    run_agent(site(None), {}, refused_log,
              until=lambda: refused_log.read_text().count("mqtt connect failed") >= 2)
    refused = refused_log.read_text()
    assert "CERTIFICATE_VERIFY_FAILED" in refused, refused[-3000:]
    assert "self-signed certificate" in refused or "self signed certificate" in refused
    assert "mqtt connected" not in refused

    accepted_log = tmp_path / "accepted.log"
    outbox = tmp_path / "site-ca.sqlite"

    def published() -> bool:
        try:
            db = sqlite3.connect(outbox)
            try:
                return bool(db.execute("SELECT COUNT(*) FROM sequences").fetchone()[0]) and \
                    "mqtt connected" in accepted_log.read_text()
            finally:
                db.close()
        except sqlite3.Error:
            return False

    code = run_agent(site({"ca_file": str(self_signed / "server.crt")}), {}, accepted_log,
                     until=published)
    accepted = accepted_log.read_text()
    assert code == 0, accepted[-3000:]
    assert "CERTIFICATE_VERIFY_FAILED" not in accepted
    assert published(), accepted[-3000:]
