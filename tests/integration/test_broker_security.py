"""The shipped broker security (deploy/mosquitto) holds against a real Mosquitto.

One broker per module runs the SHIPPED deploy/mosquitto/mosquitto.conf and acl.example with
certificates from deploy/make-certs.sh and users made by deploy/mosquitto/add-user.sh (test
passwords). Only the listener port (bound to loopback), file paths and the user to run as are
rewritten; test_running_config_is_the_shipped_one checks that every other line is unchanged.
Clients are paho-mqtt over TLS verifying the test CA, the way the edge agent verifies
(ssl.create_default_context, plus VERIFY_X509_STRICT as Python 3.13 sets it).

What Mosquitto 2 does on a denial, as observed here and asserted:
  - publish outside the ACL: MQTT 5 PUBACK reason 135 "Not authorized"; MQTT 3.1.1 gets a
    plain PUBACK (silent drop). Either way no subscriber receives it.
  - subscribe outside the ACL: the SUBACK GRANTS it (Mosquitto's acl_file does not check
    subscriptions), but every message, retained ones included, is checked against "read" on
    delivery: nothing of another site or of the alerts reaches the agent, even through "#".
  - a last will outside the ACL: the CONNECT is accepted, the will is dropped when it fires.
  - anonymous, unknown user or wrong password: CONNACK refused, not authorised (MQTT 5 reason
    135; MQTT 3.1.1 return code 5, which paho reports as the same reason code).
"""

from __future__ import annotations

import os
import pwd
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from collector import contract

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SHIPPED_CONF = DEPLOY / "mosquitto" / "mosquitto.conf"
SHIPPED_ACL = DEPLOY / "mosquitto" / "acl.example"
MAKE_CERTS = DEPLOY / "make-certs.sh"
ADD_USER = DEPLOY / "mosquitto" / "add-user.sh"

HOST = "127.0.0.1"  # in the server certificate's subjectAltName (make-certs default)
TIMEOUT = 5.0  # seconds for anything that should happen
QUIET = 0.2  # seconds to wait for something that must NOT happen, after a marker arrived
NOT_AUTHORIZED = 135  # MQTT 5 reason code (CONNACK, PUBACK, SUBACK)
ACCEPTED = {0, 16}  # PUBACK: success, or "no matching subscribers" (3.1.1: always 0)

# Test-only passwords (add-user.sh wants at least 12 characters).
USERS = {
    "agent-dairy": "dairy-test-password",
    "agent-textile": "textile-test-password",
    "recp-detect": "detect-test-password",
    "grafana": "grafana-test-password",
}

# Directives the test may change (paths, port, run-as user); everything else must match.
PATH_KEYS = {
    "cafile", "certfile", "keyfile", "password_file", "acl_file",
    "persistence_location", "pid_file", "log_dest",
}
REWRITTEN = {*PATH_KEYS, "listener"}
ADDED = {"user"}


def _require(name: str, default: str) -> str:
    path = default if os.access(default, os.X_OK) else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found (Debian package: mosquitto / openssl)", pytrace=False)
    return path


def directives(text: str) -> list[tuple[str, str]]:
    """(keyword, rest) of every non-comment line of a mosquitto.conf, in order."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, rest = line.partition(" ")
            out.append((key, rest.strip()))
    return out


def config_for_test(shipped: str, port: int, files: dict[str, Path], run_as: str) -> str:
    """The shipped conf with the port, paths and user replaced; nothing else touched."""
    lines = []
    for line in shipped.splitlines():
        stripped = line.strip()
        key = stripped.partition(" ")[0] if stripped and not stripped.startswith("#") else ""
        if key == "listener":
            line = f"listener {port} {HOST}"
        elif key == "log_dest":
            line = f"log_dest file {files['log']}"
        elif key in PATH_KEYS:
            line = f"{key} {files[key]}"
        lines.append(line)
    lines.append(f"user {run_as}")  # as root, Mosquitto would switch to 'mosquitto'
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the broker


@dataclass
class Broker:
    port: int
    conf: Path
    ca: Path
    log: Path
    workdir: Path

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _port_accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, **kwargs)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    mosquitto = _require("mosquitto", "/usr/sbin/mosquitto")
    _require("mosquitto_passwd", "/usr/bin/mosquitto_passwd")
    _require("openssl", "/usr/bin/openssl")
    work = tmp_path_factory.mktemp("secure-broker")
    certs = work / "certs"
    _run(["bash", str(MAKE_CERTS), str(certs)])
    passwd = work / "passwd"
    for user, password in USERS.items():
        env = {**os.environ, "RECP_MQTT_PASSWORD": password}
        _run(["bash", str(ADD_USER), "-f", str(passwd), user], env=env)
    acl = work / "acl"
    shutil.copyfile(SHIPPED_ACL, acl)
    (work / "data").mkdir()
    files = {
        "cafile": certs / "ca.crt", "certfile": certs / "server.crt",
        "keyfile": certs / "server.key", "password_file": passwd, "acl_file": acl,
        "persistence_location": Path(f"{work / 'data'}/"), "pid_file": work / "mosquitto.pid",
        "log": work / "mosquitto.log",
    }
    run_as = pwd.getpwuid(os.geteuid()).pw_name
    for _attempt in range(3):  # another process may take the free port before we do
        port = _free_port()
        conf = work / "mosquitto.conf"
        conf.write_text(config_for_test(SHIPPED_CONF.read_text(), port, files, run_as))
        out = open(work / "stdout.log", "ab")  # noqa: SIM115  # closed below
        proc = subprocess.Popen([mosquitto, "-c", str(conf)], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
        out.close()
        b = Broker(port, conf, certs / "ca.crt", files["log"], work)
        deadline = time.monotonic() + 10
        while proc.poll() is None and not _port_accepts(port) and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is None and _port_accepts(port):
            break
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        if "address already in use" not in b.log_tail().lower():
            pytest.fail(f"mosquitto did not start:\n{b.log_tail()}\n"
                        f"{(work / 'stdout.log').read_text()}", pytrace=False)
    else:
        pytest.fail("mosquitto: no free port after 3 attempts", pytrace=False)
    try:
        yield b
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# --------------------------------------------------------------------------- clients


def strict_context(ca: Path | None) -> ssl.SSLContext:
    """What the agent uses (collector.publisher.tls_context), with Python 3.13's strictness."""
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    return ctx


def _code(rc: Any) -> int:
    return rc.value if isinstance(rc, ReasonCode) else int(rc)


class Client:
    """A paho client over TLS; records CONNACK, PUBACK and SUBACK codes and messages."""

    def __init__(
        self, broker: Broker, user: str | None, password: str | None = None, *,
        protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5, tls: ssl.SSLContext | bool = True,
        will: str | None = None, will_payload: bytes = b'{"v":1}',
    ) -> None:
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:10]}",
            protocol=protocol, reconnect_on_failure=False,
        )
        self.connack: queue.Queue[int] = queue.Queue()
        self.closed = threading.Event()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.pubacks: dict[int, int] = {}
        self.subacks: dict[int, list[int]] = {}
        self._acked = threading.Condition()
        if user is None and password is not None:
            raise ValueError("password without user")
        if user is not None:
            self.client.username_pw_set(user, password if password is not None else USERS[user])
        if tls is True:
            tls = strict_context(broker.ca)
        if tls:
            self.client.tls_set_context(tls)
        if will:
            self.client.will_set(will, will_payload, qos=1, retain=False)
        c = self.client
        c.on_connect = lambda _c, _u, _f, rc, _p: self.connack.put(_code(rc))
        c.on_disconnect = lambda *_a: self.closed.set()
        c.on_message = lambda _c, _u, msg: self.messages.put(msg)
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        self.broker = broker

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self._acked:
            self.pubacks[mid] = _code(rc)
            self._acked.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: list[Any], _p: Any) -> None:
        with self._acked:
            self.subacks[mid] = [_code(rc) for rc in rcs]
            self._acked.notify_all()

    def open(self) -> int:
        """Connect and return the CONNACK code (0: accepted); fails the test on no CONNACK."""
        props = None
        if self.client.protocol == mqtt.MQTTv5:
            props = Properties(mqtt.PacketTypes.CONNECT)
            props.SessionExpiryInterval = 0
        self.client.connect(HOST, self.broker.port, keepalive=10, properties=props)
        self.client.loop_start()
        try:
            return self.connack.get(timeout=TIMEOUT)
        except queue.Empty:
            pytest.fail(f"no CONNACK within {TIMEOUT} s\n{self.broker.log_tail()}")

    def drop(self) -> None:
        """Lose the connection without DISCONNECT, so the broker publishes the last will."""
        sock = self.client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)  # no DISCONNECT packet: the will fires
        self.client.loop_stop()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _wait(self, table: dict[int, Any], mid: int, what: str) -> Any:
        with self._acked:
            if not self._acked.wait_for(lambda: mid in table, TIMEOUT):
                pytest.fail(f"no {what} for mid {mid}\n{self.broker.log_tail()}")
            return table[mid]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """Publish at QoS 1 and return the PUBACK reason code (3.1.1: always 0)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        return int(self._wait(self.pubacks, info.mid, "PUBACK"))

    def subscribe(self, *filters: str) -> list[int]:
        """Subscribe at QoS 1 and return the SUBACK codes (granted QoS, or >= 0x80)."""
        rc, mid = self.client.subscribe([(f, 1) for f in filters])
        assert rc == mqtt.MQTT_ERR_SUCCESS and mid is not None
        return list(self._wait(self.subacks, mid, "SUBACK"))

    def receive_until(self, topic: str, payload: bytes) -> list[mqtt.MQTTMessage]:
        """Every message received up to and including (topic, payload); fail if it never
        comes. Later messages of one publisher arrive in order, so anything it published
        before the marker has arrived by then."""
        got: list[mqtt.MQTTMessage] = []
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                msg = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"{topic} {payload!r} not received; got "
                            f"{[(m.topic, m.payload) for m in got]}")
            got.append(msg)
            if msg.topic == topic and msg.payload == payload:
                return got

    def drain(self, seconds: float = QUIET) -> list[mqtt.MQTTMessage]:
        time.sleep(seconds)
        out = []
        while not self.messages.empty():
            out.append(self.messages.get_nowait())
        return out


@pytest.fixture
def connect(broker: Broker) -> Iterator[Any]:
    """connect(user, ...) -> Client, connected and accepted; all closed at teardown."""
    opened: list[Client] = []

    def make(user: str, **kwargs: Any) -> Client:
        c = Client(broker, user, **kwargs)
        opened.append(c)
        code = c.open()
        assert code == 0, f"{user}: CONNACK {code}\n{broker.log_tail()}"
        return c

    yield make
    for c in opened:
        c.close()


def reading(site: str, meter: str, seq: int) -> bytes:
    payload = contract.reading_payload(
        site=site, meter=meter, resource="electricity", stream="s-test", seq=seq,
        ts=time.time(), quality=contract.Quality.OK, values={},
    )
    contract.Reading.model_validate(payload)
    return contract.dumps(payload)


def _topics(messages: list[mqtt.MQTTMessage]) -> list[str]:
    return [m.topic for m in messages]


# --------------------------------------------------------------------------- the config


def test_running_config_is_the_shipped_one(broker: Broker) -> None:
    shipped = directives(SHIPPED_CONF.read_text())
    running = directives(broker.conf.read_text())
    # Apart from the rewritten paths/port and the added run-as user, identical line by line.
    assert [d for d in running if d[0] not in REWRITTEN | ADDED] == [
        d for d in shipped if d[0] not in REWRITTEN
    ]
    assert [k for k, _ in running if k in REWRITTEN] == [k for k, _ in shipped if k in REWRITTEN]
    settings = dict(shipped)
    assert settings["per_listener_settings"] == "false"
    assert settings["allow_anonymous"] == "false"
    assert settings["require_certificate"] == "false"
    assert settings["tls_version"] == "tlsv1.2"
    assert settings["persistence"] == "true"
    assert settings["password_file"] and settings["acl_file"]
    assert "include_dir" not in settings
    # Exactly one listener, the TLS one, with its certificate settings.
    assert [v for k, v in shipped if k == "listener"] == ["8883"]
    assert {"cafile", "certfile", "keyfile"} <= settings.keys()
    # The only plain listener is a commented-out, loopback-only one.
    plain = [ln for ln in SHIPPED_CONF.read_text().splitlines() if "listener 1883" in ln]
    assert plain == ["#listener 1883 127.0.0.1"]


def test_make_certs_is_idempotent_and_keys_private(tmp_path: Path) -> None:
    _require("openssl", "/usr/bin/openssl")
    d = tmp_path / "certs"
    _run(["bash", str(MAKE_CERTS), str(d), "broker.example", "192.0.2.7"])
    for key in ("ca.key", "server.key"):
        assert (d / key).stat().st_mode & 0o777 == 0o600
    first = {f: (d / f).read_bytes() for f in ("ca.key", "ca.crt", "server.key", "server.crt")}
    _run(["bash", str(MAKE_CERTS), str(d), "broker.example", "192.0.2.7"])
    assert {f: (d / f).read_bytes() for f in first} == first  # nothing overwritten
    san = _run(["openssl", "x509", "-in", str(d / "server.crt"), "-noout", "-ext",
                "subjectAltName"]).stdout
    assert "DNS:broker.example" in san and "IP Address:192.0.2.7" in san
    _run(["openssl", "verify", "-CAfile", str(d / "ca.crt"), str(d / "server.crt")])
    # Other names: new server certificate from the same CA.
    _run(["bash", str(MAKE_CERTS), str(d), "localhost"])
    assert (d / "ca.crt").read_bytes() == first["ca.crt"]
    assert (d / "server.crt").read_bytes() != first["server.crt"]
    # --force replaces the CA.
    _run(["bash", str(MAKE_CERTS), "--force", str(d)])
    assert (d / "ca.key").read_bytes() != first["ca.key"]


def test_add_user_writes_the_acl_block_the_shipped_acl_has(tmp_path: Path) -> None:
    _require("mosquitto_passwd", "/usr/bin/mosquitto_passwd")
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    acl.write_text("# empty\n")
    env = {**os.environ, "RECP_MQTT_PASSWORD": USERS["agent-dairy"]}
    _run(["bash", str(ADD_USER), "-f", str(passwd), "--acl", str(acl), "agent-dairy"], env=env)
    block = acl.read_text().removeprefix("# empty\n").strip()
    assert block.startswith("user agent-dairy\n")
    assert block + "\n\n" in SHIPPED_ACL.read_text()  # same rules as the example's block
    _run(["bash", str(ADD_USER), "-f", str(passwd), "--acl", str(acl), "agent-dairy"], env=env)
    assert acl.read_text().count("user agent-dairy") == 1  # not appended twice
    assert passwd.read_text().startswith("agent-dairy:$7$")  # a PBKDF2-SHA512 hash
    assert passwd.stat().st_mode & 0o007 == 0  # not world-readable
    short = subprocess.run(["bash", str(ADD_USER), "-f", str(passwd), "x"], input="short\n",
                           capture_output=True, text=True, timeout=30)
    assert short.returncode != 0 and "at least 12" in short.stderr


# --------------------------------------------------------------------------- allowed


def test_agent_publishes_its_site_and_the_detector_receives_all(connect: Any) -> None:
    detect = connect("recp-detect")
    assert detect.subscribe(
        "recp/v1/+/+/reading", "recp/v1/+/+/meta", "recp/v1/+/_agent/status",
        "recp/v1/+/_agent/health",
    ) == [1, 1, 1, 1]
    # The agent's last will is on its own status topic (a will outside the ACL is refused).
    dairy = connect("agent-dairy", will=contract.status_topic("dairy"))
    textile = connect("agent-textile", will=contract.status_topic("textile"))
    sent = {
        contract.reading_topic("dairy", "m1"): reading("dairy", "m1", 1),
        contract.meta_topic("dairy", "m1"): b'{"v":1,"meta":"test"}',
        contract.status_topic("dairy"): b'{"v":1,"state":"online"}',
        contract.health_topic("dairy"): b'{"v":1,"health":"test"}',
    }
    for topic, payload in sent.items():
        assert dairy.publish(topic, payload, retain=not topic.endswith("reading")) in ACCEPTED
    marker = (contract.reading_topic("textile", "dye1"), reading("textile", "dye1", 1))
    assert textile.publish(*marker) in ACCEPTED
    got = detect.receive_until(contract.reading_topic("dairy", "m1"), sent[
        contract.reading_topic("dairy", "m1")])
    got += detect.receive_until(*marker)
    received = {m.topic: m.payload for m in got}
    for topic, payload in sent.items():
        assert received[topic] == payload
    first = next(m for m in got if m.topic == contract.reading_topic("dairy", "m1"))
    assert first.qos == 1


def test_agent_reads_acks_for_its_site_only(connect: Any) -> None:
    dairy = connect("agent-dairy")
    assert dairy.subscribe(contract.subscription("dairy", "ack")) == [1]
    detect = connect("recp-detect")
    other = contract.ack_topic("textile", "dye1")
    mine = contract.ack_topic("dairy", "m1")
    assert detect.publish(other, b'{"v":1,"stream":"s","seq":1}') in ACCEPTED
    assert detect.publish(mine, b'{"v":1,"stream":"s","seq":2}') in ACCEPTED
    got = dairy.receive_until(mine, b'{"v":1,"stream":"s","seq":2}')
    assert other not in _topics(got + dairy.drain())


def test_viewer_reads_alerts_and_cannot_publish(connect: Any) -> None:
    viewer = connect("grafana")
    assert viewer.subscribe("recp/v1/_alerts/#") == [1]
    detect = connect("recp-detect")
    alert = ("recp/v1/_alerts/dairy/m1", b'{"v":1,"event":"overspend"}')
    assert detect.publish(*alert) in ACCEPTED
    viewer.receive_until(*alert)
    assert viewer.publish("recp/v1/_alerts/dairy/m1", b"forged") == NOT_AUTHORIZED
    assert viewer.publish(contract.reading_topic("dairy", "m1"), b"forged") == NOT_AUTHORIZED


# --------------------------------------------------------------------------- denied


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311], ids=["mqtt5", "mqtt311"])
def test_agent_cannot_publish_outside_its_site(
    connect: Any, protocol: mqtt.MQTTProtocolVersion
) -> None:
    detect = connect("recp-detect")
    assert detect.subscribe("recp/v1/#") == [1]  # the detector may subscribe broadly...
    viewer = connect("grafana")
    assert viewer.subscribe("recp/v1/_alerts/#") == [1]
    dairy = connect("agent-dairy", protocol=protocol)
    forged = [
        contract.reading_topic("textile", "dye1"),  # another site's readings
        contract.meta_topic("textile", "dye1"),
        contract.status_topic("textile"),  # another site's status
        contract.ack_topic("dairy", "m1"),  # acks are the consumer's
        "recp/v1/_alerts/dairy/m1",  # alerts are the detector's
        "recp/v1/_deadletter/dairy",
        "recp/v2/dairy/m1/reading",
        "elsewhere",
    ]
    expected = NOT_AUTHORIZED if protocol == mqtt.MQTTv5 else 0  # 3.1.1: silently dropped
    for topic in forged:
        assert dairy.publish(topic, b"forged") == expected, topic
    marker = (contract.reading_topic("dairy", "m1"), reading("dairy", "m1", 99))
    assert dairy.publish(*marker) in ACCEPTED
    got = detect.receive_until(*marker) + detect.drain()
    assert not [m for m in got if m.payload == b"forged"]
    assert not viewer.drain(0)


def test_agent_last_will_only_on_its_own_status(connect: Any) -> None:
    detect = connect("recp-detect")
    assert detect.subscribe("recp/v1/+/_agent/status") == [1]
    tag = uuid.uuid4().hex.encode()
    # Mosquitto accepts the CONNECT and checks the will's topic when the will fires.
    forged = connect("agent-dairy", will=contract.status_topic("textile"),
                     will_payload=b"forged-will-" + tag)
    own = connect("agent-dairy", will=contract.status_topic("dairy"),
                  will_payload=b"own-will-" + tag)
    forged.drop()
    time.sleep(QUIET)  # the broker handles the first lost connection first
    own.drop()
    got = detect.receive_until(contract.status_topic("dairy"), b"own-will-" + tag)
    got += detect.drain()
    assert not [m for m in got if m.payload == b"forged-will-" + tag]


def test_agent_cannot_read_alerts_or_other_sites(connect: Any) -> None:
    textile = connect("agent-textile")
    retained = (contract.status_topic("textile"), b'{"v":1,"state":"online","t":"retained"}')
    assert textile.publish(*retained, retain=True) in ACCEPTED
    dairy = connect("agent-dairy")
    # Mosquitto's acl_file grants every SUBSCRIBE (it checks "read" per message instead), so
    # the SUBACK proves nothing; what counts is that none of these messages arrives.
    dairy.subscribe("#", "recp/v1/#", "recp/v1/_alerts/#", "recp/v1/textile/+/ack",
                    "recp/v1/+/+/reading", "recp/v1/dairy/+/reading", "recp/v1/+/_agent/+")
    detect = connect("recp-detect")
    assert detect.publish("recp/v1/_alerts/dairy/m1", b'{"v":1,"event":"x"}') in ACCEPTED
    assert detect.publish("recp/v1/_alerts/textile/dye1", b'{"v":1,"event":"y"}') in ACCEPTED
    assert detect.publish(contract.ack_topic("textile", "dye1"), b"{}") in ACCEPTED
    assert textile.publish(contract.reading_topic("textile", "dye1"),
                           reading("textile", "dye1", 7)) in ACCEPTED
    assert dairy.publish(contract.reading_topic("dairy", "m1"),
                         reading("dairy", "m1", 7)) in ACCEPTED  # not even its own back
    marker = (contract.ack_topic("dairy", "m9"), b'{"v":1,"stream":"s","seq":9}')
    assert detect.publish(*marker) in ACCEPTED
    got = _topics(dairy.receive_until(*marker) + dairy.drain())
    assert got and all(re.fullmatch(r"recp/v1/dairy/[^/]+/ack", t) for t in got), got


@pytest.mark.parametrize(
    ("user", "password"),
    [(None, None), ("agent-dairy", "wrong-password"), ("nobody", "some-password"),
     ("agent-dairy", "")],
    ids=["anonymous", "wrong-password", "unknown-user", "empty-password"],
)
@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311], ids=["mqtt5", "mqtt311"])
def test_unauthenticated_clients_are_refused(
    broker: Broker, user: str | None, password: str | None,
    protocol: mqtt.MQTTProtocolVersion,
) -> None:
    c = Client(broker, user, password, protocol=protocol)
    try:
        code = c.open()
    finally:
        c.close()
    # MQTT 5: reason 135 Not authorized; MQTT 3.1.1: return code 5 "not authorised", which
    # paho's VERSION2 callbacks report as the same reason code 135.
    assert code == NOT_AUTHORIZED


def test_plain_tcp_to_the_tls_port_gets_no_session(broker: Broker) -> None:
    c = Client(broker, "agent-dairy", tls=False)
    try:
        c.client.connect(HOST, broker.port, keepalive=10)
        c.client.loop_start()
        assert c.closed.wait(TIMEOUT), "the broker kept a plain-TCP connection open"
        assert c.connack.empty(), "the broker answered a plain-TCP CONNECT"
    finally:
        c.close()
    # The same at the byte level: a valid CONNECT with a valid password gets no CONNACK.
    user, password = b"agent-dairy", USERS["agent-dairy"].encode()
    body = (b"\x00\x04MQTT\x04\xc2\x00\x0a" + b"\x00\x04test"
            + len(user).to_bytes(2, "big") + user + len(password).to_bytes(2, "big") + password)
    with socket.create_connection((HOST, broker.port), timeout=TIMEOUT) as s:
        s.sendall(bytes([0x10, len(body)]) + body)
        try:
            answer = s.recv(64)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"\x20"), answer  # 0x20: CONNACK


def test_clients_that_do_not_trust_the_ca_fail(broker: Broker, tmp_path: Path) -> None:
    _run(["bash", str(MAKE_CERTS), str(tmp_path / "other")])
    for ctx in (strict_context(tmp_path / "other" / "ca.crt"), strict_context(None)):
        c = Client(broker, "agent-dairy", tls=ctx)
        with pytest.raises(ssl.SSLCertVerificationError):
            c.client.connect(HOST, broker.port, keepalive=10)
    # paho's own tls_set with the right CA works (and checks the host name).
    c = Client(broker, "agent-dairy", tls=False)
    c.client.tls_set(ca_certs=str(broker.ca))
    try:
        assert c.open() == 0
    finally:
        c.close()


def test_tls_1_2_and_1_3_accepted_older_refused(broker: Broker) -> None:
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = strict_context(broker.ca)
        ctx.minimum_version = ctx.maximum_version = version
        with socket.create_connection((HOST, broker.port), timeout=TIMEOUT) as raw, \
                ctx.wrap_socket(raw, server_hostname=HOST) as tls:
            assert tls.version() == version.name.replace("_", ".")
    old = strict_context(broker.ca)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1, TLSv1_1
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # so that this client really offers TLS 1.1
    with socket.create_connection((HOST, broker.port), timeout=TIMEOUT) as raw, \
            pytest.raises(ssl.SSLError) as err:
        old.wrap_socket(raw, server_hostname=HOST)
    # The broker's alert, not a local refusal. (OpenSSL 3's default security level would
    # refuse TLS 1.1 even without "tls_version tlsv1.2"; the line makes the minimum explicit
    # and independent of the OpenSSL build, and test_running_config_is_the_shipped_one
    # checks it is there.)
    assert err.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", err.value
