"""The publisher against a real Mosquitto: TLS verified by default, a refused publish kept.

Certificates come from deploy/make-certs.sh (the ones a site would use); the broker is the
conftest fixture with a TLS listener or an ACL added to its configuration.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from collector import contract
from collector.contract import Quality
from collector.outbox import Entry, Outbox
from collector.publisher import Publisher
from collector.site import Credentials, Mqtt, Tls

if TYPE_CHECKING:
    from conftest import MosquittoServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def reading(meter: str) -> Entry:
    def render(seq: int) -> tuple[str, bytes]:
        return contract.reading_topic("s", meter), contract.dumps(contract.reading_payload(
            site="s", meter=meter, resource="water", stream="x", seq=seq, ts=time.time(),
            quality=Quality.OK, values={"volume_m3": float(seq)}))

    return Entry(meter, render)


def run_publisher(settings: Mqtt, box: Outbox, until: Callable[[Publisher], bool],
                  timeout: float = 10.0) -> Publisher:
    async def main() -> Publisher:
        pub = Publisher(settings, "s", box, Credentials(None, None))
        stop = asyncio.Event()
        task = asyncio.create_task(pub.run(stop))
        deadline = time.monotonic() + timeout
        while not until(pub) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 15)
        return pub

    return asyncio.run(main())


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs") / "tls"
    subprocess.run(["bash", str(REPO / "deploy" / "make-certs.sh"), str(d)], check=True,
                   capture_output=True, timeout=60)
    return d


@pytest.fixture
def tls_broker(mosquitto_factory: Callable[..., MosquittoServer], certs: Path
               ) -> MosquittoServer:
    return mosquitto_factory(
        f"cafile {certs / 'ca.crt'}\ncertfile {certs / 'server.crt'}\n"
        f"keyfile {certs / 'server.key'}\n")


def test_tls_with_the_sites_ca_publishes(tls_broker: MosquittoServer, certs: Path,
                                         tmp_path: Path):
    box = Outbox(tmp_path / "o.db")
    box.append([reading("m1"), reading("m1")])
    settings = Mqtt(url=f"mqtts://127.0.0.1:{tls_broker.port}",
                    tls=Tls(ca_file=certs / "ca.crt"), reconnect_delay_s=0.1)
    pub = run_publisher(settings, box, lambda p: box.depth == 0)
    assert box.depth == 0 and pub.stats.published == 2 and pub.stats.sessions == 1


def test_tls_refuses_a_broker_it_cannot_verify(tls_broker: MosquittoServer, tmp_path: Path):
    """Verification is on by default: without the site's CA the system CAs do not vouch for
    the broker, so nothing is sent and the readings stay."""
    box = Outbox(tmp_path / "o.db")
    box.append([reading("m1")])
    settings = Mqtt(url=f"mqtts://127.0.0.1:{tls_broker.port}", reconnect_delay_s=0.1,
                    connect_timeout_s=3)
    pub = run_publisher(settings, box, lambda p: p.stats.failures >= 2, timeout=8)
    assert pub.stats.sessions == 0 and box.depth == 1
    assert "CERTIFICATE_VERIFY_FAILED" in pub.stats.last_error


def test_insecure_skip_verify_is_possible_but_explicit(tls_broker: MosquittoServer,
                                                       tmp_path: Path):
    box = Outbox(tmp_path / "o.db")
    box.append([reading("m1")])
    settings = Mqtt(url=f"mqtts://127.0.0.1:{tls_broker.port}",
                    tls=Tls(insecure_skip_verify=True))
    run_publisher(settings, box, lambda p: box.depth == 0)
    assert box.depth == 0


def test_a_publish_the_broker_refuses_stays_in_the_outbox(
        mosquitto_factory: Callable[..., MosquittoServer], tmp_path: Path):
    """Mosquitto answers a publish its ACL denies with PUBACK 0x87 (not authorized);
    aiomqtt alone would report success and the reading would be deleted."""
    acl = tmp_path / "acl"
    acl.write_text("topic write recp/v1/s/_agent/#\ntopic write recp/v1/s/+/meta\n"
                   "topic write recp/v1/s/allowed/reading\n")
    broker = mosquitto_factory(f"acl_file {acl}\n")
    box = Outbox(tmp_path / "o.db")
    box.append([reading("allowed")])
    box.append([reading("denied")])
    settings = Mqtt(url=broker.url, reconnect_delay_s=0.1, reconnect_delay_max_s=0.2)
    pub = run_publisher(settings, box, lambda p: p.stats.rejected >= 2)
    assert pub.stats.rejected >= 2  # refused, and refused again after reconnecting
    assert [r.meter for r in box.peek()] == ["denied"]
    assert "Not authorized" in pub.stats.last_error


class Collector:
    """A paho subscriber that keeps (topic, payload) of every message, in order."""

    def __init__(self, broker: MosquittoServer) -> None:
        import threading

        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes]] = []
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="collector",
                                  protocol=mqtt.MQTTv5)
        self.client.on_subscribe = lambda *_a: self.ready.set()
        self.client.on_message = lambda _c, _u, m: self.messages.append(
            (m.topic, bytes(m.payload)))
        self.client.connect(broker.host, broker.port)
        self.client.subscribe([(contract.subscription("s", "reading"), 1),
                               (contract.subscription("s", "readings"), 1)])
        self.client.loop_start()
        assert self.ready.wait(10)

    def readings(self) -> list[tuple[str, int]]:
        out = []
        for topic, payload in list(self.messages):
            if topic.endswith("/reading"):
                r = contract.Reading.model_validate_json(payload)
                out.append((r.meter, r.seq))
            else:
                out += [(r.meter, r.seq) for r in
                        contract.Readings.model_validate_json(payload).expand()]
        return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.parametrize("batch", [1, 50])
def test_a_backlog_with_batching_goes_out_in_few_messages(mosquitto: MosquittoServer,
                                                          tmp_path: Path, batch: int):
    """300 readings of 3 meters waiting: without batching 300 reading messages; with
    max_readings 50, six readings messages (a meter's 100 readings in two), all deleted
    from the outbox on their PUBACKs. Every reading arrives, in order."""
    sub = Collector(mosquitto)
    box = Outbox(tmp_path / "o.db")
    box.append([reading(m) for _ in range(100) for m in ("a", "b", "c")])
    settings = Mqtt(url=mosquitto.url, batch={"max_readings": batch})
    pub = run_publisher(settings, box, lambda p: box.depth == 0)
    deadline = time.monotonic() + 10
    while len(sub.readings()) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    got = sub.readings()
    sub.close()
    assert box.depth == 0 and pub.stats.published == 300
    for m in "abc":
        assert [s for meter, s in got if meter == m] == list(range(1, 101))
    topics = {t.rsplit("/", 1)[1] for t, _ in sub.messages}
    if batch == 1:
        assert topics == {"reading"} and pub.stats.messages == 300
    else:
        assert topics == {"readings"} and pub.stats.messages == 6


def _denying(deny: list[bool]) -> Callable[..., int]:
    """An authorizer refusing deletes from cycles while ``deny[0]``: a full disk."""
    import sqlite3

    def authorize(action: int, arg1: str | None, *_: object) -> int:
        refused = deny[0] and action == sqlite3.SQLITE_DELETE and arg1 == "cycles"
        return sqlite3.SQLITE_DENY if refused else sqlite3.SQLITE_OK

    return authorize


def test_a_failed_outbox_delete_keeps_the_session_and_is_retried(
        mosquitto: MosquittoServer, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """A deletion of PUBACKed readings that fails (disk full) ended the session: logged as
    'mqtt disconnected error=OperationalError...' (the broker was fine), a reconnect, and
    everything sent again. Now the failure is logged once as what it is, the session goes
    on and the deletion is tried again until it works."""
    import logging

    box = Outbox(tmp_path / "o.db")
    box.append([reading("m1"), reading("m1"), reading("m2")])
    deny = [True]
    box._db.set_authorizer(_denying(deny))
    started = time.monotonic()

    def until(pub: Publisher) -> bool:
        if pub.stats.published >= 3 and time.monotonic() - started > 2.0:
            deny[0] = False  # space again, after a few tries (one every 0.5 s)
        return not deny[0] and box.depth == 0

    with caplog.at_level(logging.INFO):
        pub = run_publisher(Mqtt(url=mosquitto.url, reconnect_delay_s=0.1), box, until)
    box.close()
    assert box.depth == 0 and not deny[0]
    assert pub.stats.sessions == 1 and pub.stats.failures == 0 and pub.stats.published == 3
    text = caplog.text
    assert "mqtt disconnected" not in text
    assert text.count("outbox delete failed count=3 error=not authorized") == 1
    assert text.count("outbox delete works again count=3") == 1


def test_a_delete_failing_at_stop_leaves_the_readings_for_the_next_start(
        mosquitto: MosquittoServer, tmp_path: Path):
    """Stopping while deletions fail ends at once (the readings stay, sent again after the
    restart) instead of retrying the deletion until the disk has room."""
    box = Outbox(tmp_path / "o.db")
    box.append([reading("m1"), reading("m2")])
    box._db.set_authorizer(_denying([True]))
    t0 = time.monotonic()
    pub = run_publisher(Mqtt(url=mosquitto.url), box, lambda p: p.stats.published >= 2)
    assert time.monotonic() - t0 < 8 and pub.stats.failures == 0
    assert box.depth == 2 and [r.meter for r in box.peek()] == ["m1", "m2"]
    box.close()


def test_a_failed_consumer_confirmation_keeps_the_session(
        mosquitto: MosquittoServer, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """confirm: consumer. A consumer's ack whose deletion fails (disk full) ended the
    session (and the retained ack, delivered again on each subscribe, ended the next one
    too). Now it is logged once, the session goes on, and a later ack deletes them."""
    import json
    import logging

    import paho.mqtt.publish as publish

    box = Outbox(tmp_path / "o.db")
    box.append([reading("m1"), reading("m1")])
    deny = [True]
    box._db.set_authorizer(_denying(deny))

    def ack() -> None:
        publish.single(contract.ack_topic("s", "m1"),
                       json.dumps({"v": 1, "stream": box.stream, "seq": 2}), qos=1,
                       retain=True, hostname=mosquitto.host, port=mosquitto.port)

    ack()  # retained: delivered when the publisher subscribes
    started = time.monotonic()

    def until(pub: Publisher) -> bool:
        if deny[0] and pub.stats.published >= 2 and time.monotonic() - started > 1.5:
            deny[0] = False
            ack()  # the consumer's next ack (the same mark again)
        return not deny[0] and box.depth == 0

    with caplog.at_level(logging.INFO):
        pub = run_publisher(Mqtt(url=mosquitto.url, confirm="consumer",
                                 reconnect_delay_s=0.1), box, until)
    box.close()
    assert box.depth == 0 and pub.stats.sessions == 1 and pub.stats.failures == 0
    text = caplog.text
    assert "mqtt disconnected" not in text
    assert text.count("outbox delete failed (consumer confirmation) meter=m1") == 1
    assert text.count("outbox delete works again (consumer confirmation)") == 1
