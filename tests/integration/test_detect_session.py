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
    svc = DetectService(load_analytics(cfg), writer=Discard())
    clients: list[Any] = []
    make = svc._client

    def recording_client() -> Any:
        c = make()
        clients.append(c)
        return c

    svc._client = recording_client  # type: ignore[method-assign]
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
