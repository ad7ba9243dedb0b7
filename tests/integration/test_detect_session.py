"""recp detect's MQTT session against a real Mosquitto, in process: what its socket reader
does when decoding fails unexpectedly (issue 5: it swallowed the error without a word)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from collector import contract
from detectors.service.config import load_analytics
from detectors.service.service import DetectService

pytestmark = pytest.mark.integration

T0 = 1767225600  # 2026-01-01T00:00Z


class Discard:
    def write(self, lines: list[str]) -> None:
        pass

    def close(self) -> None:
        pass


def _reading(seq: int) -> tuple[str, bytes]:
    return contract.reading_topic("dairy", "m1"), contract.dumps(contract.reading_payload(
        site="dairy", meter="m1", resource="electricity", stream="s1", seq=seq,
        ts=T0 + 60 * seq, quality=contract.Quality.OK, values={"energy_kwh": float(seq)}))


async def _until(cond: Any, what: str, timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s  # generous: a loaded, shared machine
    while not cond():
        assert time.monotonic() < end, what
        await asyncio.sleep(0.05)


def _recording_service(cfg: Path) -> tuple[DetectService, list[Any]]:
    """A service whose MQTT clients are kept in the list returned with it, one per session."""
    svc = DetectService(load_analytics(cfg), writer=Discard())
    clients: list[Any] = []
    make = svc._client

    def recording_client() -> Any:
        c = make()
        clients.append(c)
        return c

    svc._client = recording_client  # type: ignore[method-assign]
    return svc, clients


def test_socket_reader_error_is_logged_once_and_ends_in_a_reconnect(
    tmp_path: Path, mosquitto: Any, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tmp_path / "analytics.yaml"
    cfg.write_text(f"""kind: analytics
mqtt: {{url: "{mosquitto.url}", reconnect_delay_s: 0.2, reconnect_delay_max_s: 0.5}}
spool: {{path: spool.sqlite}}
checkpoint: {{path: state.json}}
processing: {{batch_wait_s: 0}}
""")
    svc, clients = _recording_service(cfg)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-pub",
                      protocol=mqtt.MQTTv5)
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()

    def send(seq: int) -> None:
        pub.publish(*_reading(seq), qos=1).wait_for_publish(10)

    async def main() -> None:
        stop = asyncio.Event()
        run = asyncio.create_task(svc.run(stop))
        try:
            await _until(lambda: svc.connected and svc.stats.batches == 0 and clients,
                         "recp detect did not connect")
            await asyncio.sleep(0.3)  # the SUBACK
            send(1)
            await _until(lambda: svc.stats.readings_in == 1, "reading 1 not taken")
            paho = clients[0]._client
            real = paho._packet_read

            def boom() -> int:
                paho._packet_read = real
                raise RuntimeError("decoder bug")

            paho._packet_read = boom  # the next packet read fails, unexpectedly
            send(2)
            # the session ends and a new one is made (with back-off), and it takes readings
            await _until(lambda: len(clients) >= 2 and svc.connected, "no reconnect")
            await asyncio.sleep(0.3)
            send(3)
            await _until(lambda: svc.stats.readings_in == 3,
                         f"readings after the error not taken: {svc.stats.readings_in}")
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(run, 30)

    with caplog.at_level(logging.INFO, logger="detectors.service.service"):
        asyncio.run(main())
    pub.loop_stop()
    pub.disconnect()
    failed = [r for r in caplog.records if "socket reader failed" in r.getMessage()
              and r.levelno == logging.ERROR]
    assert len(failed) == 1, [r.getMessage() for r in caplog.records]
    assert "decoder bug" in failed[0].getMessage() and failed[0].exc_info is not None
    ended = [r.getMessage() for r in caplog.records if "MQTT session ended" in r.getMessage()]
    assert ended and "decoder bug" in ended[0]


def test_a_backlog_longer_than_the_old_answer_bound_is_taken_in_one_session(
    tmp_path: Path, mosquitto_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Mosquitto sends its SUBACK and the PUBACKs of our publishes only after the whole
    backlog queued for our session. With 3,000 readings queued and receive_maximum 20,
    the bound of before (2 x 20 + 1,000 messages without the answer) ended the session
    and reconnected into the same backlog (issue 5, --workers 2); now the session the
    broker kept needs no SUBSCRIBE, a PUBACK is waited for behind any backlog, and
    everything is taken in one session, nothing twice."""
    # the whole backlog kept; no database save after every PUBACK (the fixture's
    # autosave_on_changes makes Mosquitto read about 120 PUBACKs a second here: a request
    # of ours then waits behind thousands of our own PUBACKs with no message arriving)
    mosquitto = mosquitto_factory(extra_conf="max_queued_messages 0\nautosave_on_changes false\n"
                                  "autosave_interval 60")
    cfg = tmp_path / "analytics.yaml"
    cfg.write_text(f"""kind: analytics
mqtt: {{url: "{mosquitto.url}", receive_maximum: 20, reconnect_delay_s: 0.2}}
spool: {{path: spool.sqlite}}
checkpoint: {{path: state.json}}
metrics_interval_s: 0.5
processing: {{batch_wait_s: 0}}
""")
    n = 3000

    def service() -> tuple[DetectService, list[Any]]:
        return _recording_service(cfg)

    async def run(svc: DetectService, until: Any, what: str, settle_s: float = 0.0) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(svc.run(stop))
        try:
            await _until(until, what, 120.0)
            await asyncio.sleep(settle_s)
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)

    first, _ = service()  # creates the session and its subscriptions
    asyncio.run(run(first, lambda: first.connected, "first start did not connect", 2.0))
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-pub",
                      protocol=mqtt.MQTTv5)
    pub.max_inflight_messages_set(1000)
    pub.max_queued_messages_set(0)
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    for info in [pub.publish(*_reading(seq), qos=1) for seq in range(1, n + 1)]:
        info.wait_for_publish(60)
    pub.loop_stop()
    pub.disconnect()
    svc, clients = service()
    with caplog.at_level(logging.INFO, logger="detectors.service.service"):
        # until the health message (published at the start, PUBACKed after the backlog)
        # and a later one went out: the session survived waiting for their PUBACKs
        asyncio.run(run(svc, lambda: svc.stats.readings_in == n and not svc.outgoing
                        and svc.stats.batches > 0, "backlog not taken in time"))
    ended = [r.getMessage() for r in caplog.records if "MQTT session ended" in r.getMessage()]
    assert ended == [] and len(clients) == 1
    assert svc.stats.duplicates == 0 and svc.stats.readings_in == n
    assert any("kept our session" in r.getMessage() for r in caplog.records)
