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
