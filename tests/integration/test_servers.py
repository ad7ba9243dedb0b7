"""The real-server fixtures work with the real clients the project uses.

Mosquitto with paho-mqtt 2.x (MQTT v5), VictoriaMetrics with influxdb-client, and mbpoll
against a pymodbus 3.16 simulator device.
"""

from __future__ import annotations

import asyncio
import queue
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
import pytest
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

if TYPE_CHECKING:
    from conftest import MosquittoServer, VictoriaMetricsServer

pytestmark = pytest.mark.integration

TIMEOUT = 10.0


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- MQTT


class MqttClient:
    """A connected paho client (MQTT v5) whose received messages land in a queue."""

    def __init__(self, broker: MosquittoServer) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=_unique("recp-test"),
            protocol=mqtt.MQTTv5,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(TIMEOUT):
            self.close()
            pytest.fail(f"no CONNACK from {broker.url}")

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason_code: Any, _p: Any) -> None:
        if not reason_code.is_failure:
            self._connected.set()

    def _on_subscribe(self, _c: Any, _u: Any, _mid: Any, codes: Any, _p: Any) -> None:
        if all(not code.is_failure for code in codes):
            self._subscribed.set()

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self._subscribed.clear()
        self.client.subscribe(topic, qos=qos)
        assert self._subscribed.wait(TIMEOUT), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published()

    def next_message(self) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=TIMEOUT)
        except queue.Empty:
            pytest.fail(f"no message within {TIMEOUT} s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def mqtt_client(broker: MosquittoServer) -> Iterator[MqttClient]:
    client = MqttClient(broker)
    try:
        yield client
    finally:
        client.close()


def test_mqtt_publish_subscribe_round_trip(mosquitto: MosquittoServer) -> None:
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    assert mosquitto.port != 1883
    topic = f"recp/test/{_unique('roundtrip')}"
    with mqtt_client(mosquitto) as sub, mqtt_client(mosquitto) as pub:
        sub.subscribe(topic)
        pub.publish(topic, b"hello", qos=1)
        msg = sub.next_message()
    assert (msg.topic, msg.payload, msg.qos) == (topic, b"hello", 1)


def test_mqtt_retained_message_survives_broker_kill(mosquitto: MosquittoServer) -> None:
    topic = f"recp/test/{_unique('retained')}"
    port = mosquitto.port
    with mqtt_client(mosquitto) as pub:
        pub.publish(topic, b"kept", qos=1, retain=True)
    # Saved after every change; once the file exists the message is on disk.
    deadline = time.monotonic() + TIMEOUT
    while not mosquitto.db_path.exists():
        assert time.monotonic() < deadline, f"{mosquitto.db_path} was never written"
        time.sleep(0.01)

    mosquitto.kill()
    assert not mosquitto.running
    mosquitto.start()
    assert mosquitto.running and mosquitto.port == port

    with mqtt_client(mosquitto) as sub:
        sub.subscribe(topic)
        msg = sub.next_message()
    assert (msg.topic, msg.payload, msg.retain) == (topic, b"kept", True)


# --------------------------------------------------------------------------- VictoriaMetrics

T0_NS = 1_704_067_200_123_000_000  # 2024-01-01T00:00:00.123Z, whole milliseconds


def _write(vm: VictoriaMetricsServer, *points: Point) -> None:
    with InfluxDBClient(url=vm.url, token="", org="") as client:
        client.write_api(write_options=SYNCHRONOUS).write(
            bucket="recp", record=list(points), write_precision=WritePrecision.NS
        )


def _point(measurement: str, value: float, ts_ns: int) -> Point:
    return (
        Point(measurement)
        .tag("meter", "m1")
        .field("p_w", value)
        .time(ts_ns, write_precision=WritePrecision.NS)
    )


def test_victoria_metrics_influx_write_and_export_exact(
    victoria_metrics: VictoriaMetricsServer,
) -> None:
    vm = victoria_metrics
    assert vm.url == f"http://127.0.0.1:{vm.port}"
    measurement = _unique("recp_test")
    _write(vm, _point(measurement, 230.5, T0_NS), _point(measurement, -1.25, T0_NS + 1_000_000))
    vm.flush()

    series = vm.query_export(f'{{__name__="{measurement}_p_w"}}')
    assert len(series) == 1
    assert series[0]["metric"] == {"__name__": f"{measurement}_p_w", "meter": "m1"}
    assert series[0]["values"] == [230.5, -1.25]
    assert [ms * 1_000_000 for ms in series[0]["timestamps"]] == [T0_NS, T0_NS + 1_000_000]


def test_victoria_metrics_same_point_twice_is_one_sample(
    victoria_metrics: VictoriaMetricsServer,
) -> None:
    vm = victoria_metrics
    measurement = _unique("recp_test")
    for _ in range(2):  # e.g. a retried upload after a lost acknowledgement
        _write(vm, _point(measurement, 42.0, T0_NS))
        vm.flush()

    series = vm.query_export(f'{{__name__="{measurement}_p_w"}}')
    assert len(series) == 1
    assert series[0]["values"] == [42.0]
    assert series[0]["timestamps"] == [T0_NS // 1_000_000]


# --------------------------------------------------------------------------- mbpoll / Modbus

FLOAT_VALUE = 230.5  # exact in float32
UINT32_VALUE = 3_000_000_000  # > 2**31: high word matters, and mbpoll prints it signed
REGISTERS = [1234, 65535]


@contextmanager
def modbus_server(devices: list[SimDevice], port: int) -> Iterator[None]:
    """A pymodbus TCP server on 127.0.0.1:port, run by a background event loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="modbus-server", daemon=True)
    thread.start()

    async def start() -> ModbusTcpServer:
        server = ModbusTcpServer(context=devices, address=("127.0.0.1", port))
        await server.serve_forever(background=True)
        return server

    try:
        server = asyncio.run_coroutine_threadsafe(start(), loop).result(TIMEOUT)
        try:
            yield
        finally:
            asyncio.run_coroutine_threadsafe(server.shutdown(), loop).result(TIMEOUT)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(TIMEOUT)
        loop.close()


def test_mbpoll_reads_pymodbus_holding_registers(
    mbpoll: Callable[[list[str]], list[int | float | str]], free_tcp_port: int
) -> None:
    device = SimDevice(
        id=1,
        simdata=[
            SimData(address=0, values=FLOAT_VALUE, datatype=DataType.FLOAT32),
            SimData(address=2, values=UINT32_VALUE, datatype=DataType.UINT32),
            SimData(address=4, values=REGISTERS, datatype=DataType.REGISTERS),
        ],
    )
    with modbus_server([device], free_tcp_port):
        common = ["-m", "tcp", "-p", str(free_tcp_port), "-a", "1"]
        # 1-based references (mbpoll's default): register 0 is reference 1.
        as_float = mbpoll([*common, "-t", "4:float", "-B", "-r", "1", "127.0.0.1"])
        as_int = mbpoll([*common, "-t", "4:int", "-B", "-r", "3", "127.0.0.1"])
        plain = mbpoll([*common, "-t", "4", "-r", "5", "-c", "2", "127.0.0.1"])
        # -0: PDU (0-based) addressing, hex display of the raw words.
        raw = mbpoll([*common, "-0", "-t", "4:hex", "-r", "0", "-c", "4", "127.0.0.1"])

    assert as_float == [FLOAT_VALUE]
    assert len(as_int) == 1 and isinstance(as_int[0], int)
    assert as_int[0] & 0xFFFFFFFF == UINT32_VALUE
    assert plain == REGISTERS
    expected_words = list(struct.unpack(">4H", struct.pack(">fI", FLOAT_VALUE, UINT32_VALUE)))
    assert raw == expected_words
