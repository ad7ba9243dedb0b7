"""Events as Grafana annotations, against a loopback HTTP server that records what
grafana-client sends (no Grafana can be installed here; see test_grafana_push.py).

The server answers Grafana's annotation endpoints (add, update, find by tag) and can
refuse the token (401); "down" is a port nobody listens on. Checked: an event's opening
is posted once and its closing updates the same annotation; a restart (from the
checkpoint, or after a crash with no checkpoint) never posts it again; a refused token or
an absent Grafana neither blocks nor stops anything, is counted, and the annotations go
out once Grafana answers again; the queue is bounded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from collector import contract
from collector.configfile import ConfigError
from detectors.events import Event, EventType, Severity
from detectors.service.alerts import Transition
from detectors.service.annotations import Annotator, make_api
from detectors.service.config import load_analytics
from detectors.service.service import DetectService

pytestmark = pytest.mark.integration

TOKEN = "glsa_annotations_0123456789"
T0 = 1767225600  # 2026-01-01T00:00Z
EVENT_ID = f"dairy/m1/spike/{T0 + 3 * 86400 + 36000}"


@dataclass
class Req:
    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None
    body: Any


@dataclass
class FakeGrafana:
    """Grafana's annotation API in memory; ``mode`` ok or unauthorized."""

    mode: str = "ok"
    requests: list[Req] = field(default_factory=list)
    annotations: dict[int, dict[str, Any]] = field(default_factory=dict)
    url: str = ""
    port: int = 0

    def answer(self, r: Req) -> tuple[int, Any]:
        if self.mode == "unauthorized" or r.authorization != f"Bearer {TOKEN}":
            return 401, {"message": "invalid API key"}
        if r.method == "POST" and r.path == "/api/annotations":
            if not isinstance(r.body.get("time"), int) or not r.body.get("tags"):
                return 400, {"message": "bad annotation"}
            new = max(self.annotations, default=0) + 1
            self.annotations[new] = {"id": new, **r.body}
            return 200, {"message": "Annotation added", "id": new}
        if r.method == "PUT" and r.path.startswith("/api/annotations/"):
            ann_id = int(r.path.rsplit("/", 1)[1])
            if ann_id not in self.annotations:
                return 404, {"message": "Annotation not found"}
            self.annotations[ann_id].update(r.body)
            return 200, {"message": "Annotation updated"}
        if r.method == "GET" and r.path == "/api/annotations":
            want = set(r.query.get("tags", []))
            hits = [a for a in self.annotations.values() if want <= set(a.get("tags", []))]
            return 200, hits[: int(r.query.get("limit", ["100"])[0])]
        return 404, {"message": "Not found"}

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests]


def _serve(fake: FakeGrafana, port: int = 0) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            req = Req(self.command, parts.path, parse_qs(parts.query),
                      self.headers.get("Authorization"), json.loads(raw) if raw else None)
            fake.requests.append(req)
            status, body = fake.answer(req)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, name="fake-grafana", daemon=True).start()
    fake.port = server.server_address[1]
    fake.url = f"http://127.0.0.1:{fake.port}"
    return server


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    fake = FakeGrafana()
    server = _serve(fake)
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def transition(kind: str, excess: float = 120.0) -> Transition:
    start = dt.datetime.fromtimestamp(T0 + 3 * 86400 + 36000, dt.timezone.utc)
    end = start + dt.timedelta(minutes=45) if kind == "close" else None
    ev = Event(meter="m1", type=EventType.SPIKE, start=start, end=end,
               severity=Severity.WARNING, excess=excess, unit="kWh", cost=0.25 * excess,
               co2_kg=0.4 * excess, explanation="spike on m1: 500 kWh against 80 usual",
               score=42.0)
    return Transition(kind, "dairy", EVENT_ID, ev, "electricity")


def annotator(url: str, **kw: Any) -> Annotator:
    opts = {"retry_delay_s": 0.05, "retry_delay_max_s": 0.2, **kw}
    return Annotator(make_api(url, TOKEN, 2.0), **opts)


async def work_off(a: Annotator, until: Any, timeout: float = 10.0) -> None:
    """Run the annotator until ``until()`` holds (or fail after ``timeout``)."""
    stop = asyncio.Event()
    task = asyncio.create_task(a.run(stop))
    end = time.monotonic() + timeout
    try:
        while not until():
            assert time.monotonic() < end, "annotator did not get there in time"
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def test_open_posted_once_close_updates_it_and_restarts_never_post_twice(
    grafana: FakeGrafana,
) -> None:
    a = annotator(grafana.url)
    a.submit(transition("open"), "EUR")
    asyncio.run(work_off(a, lambda: a.depth == 0))
    assert grafana.calls() == [("GET", "/api/annotations"), ("POST", "/api/annotations")]
    post = grafana.requests[1]
    assert post.authorization == f"Bearer {TOKEN}"
    assert grafana.requests[0].query["tags"] == [f"event:{EVENT_ID}"]
    start_ms = (T0 + 3 * 86400 + 36000) * 1000
    assert post.body["time"] == post.body["timeEnd"] == start_ms  # open: a point at start
    assert set(post.body["tags"]) == {"recp", "site:dairy", "meter:m1", "resource:electricity",
                                      "type:spike", "severity:warning", f"event:{EVENT_ID}"}
    assert "(open)" in post.body["text"] and "cost 30.00 EUR" in post.body["text"]
    assert "spike on m1: 500 kWh" in post.body["text"]  # the explanation
    a.submit(transition("close", excess=150.0), "EUR")
    asyncio.run(work_off(a, lambda: a.depth == 0))
    assert grafana.calls()[2:] == [("PUT", "/api/annotations/1")]  # known id: no lookup
    closed = grafana.annotations[1]
    assert closed["timeEnd"] - closed["time"] == 45 * 60 * 1000  # a region now
    assert "(closed)" in closed["text"] and "excess 150 kWh" in closed["text"]
    assert a.stats.posted == 1 and a.stats.updated == 1 and a.stats.failures == 0

    # restart from the checkpoint, and the broker replays the opening: nothing reopened
    b = annotator(grafana.url)
    b.restore(json.loads(json.dumps(a.snapshot())))
    b.submit(transition("open"), "EUR")
    asyncio.run(work_off(b, lambda: b.depth == 0))
    assert len(grafana.requests) == 3 and b.stats.posted == b.stats.updated == 0
    # a crash before the checkpoint: no memory of the id, found again by its tag
    c = annotator(grafana.url)
    c.submit(transition("open"), "EUR")
    c.submit(transition("close", excess=150.0), "EUR")
    asyncio.run(work_off(c, lambda: c.depth == 0))
    assert grafana.calls()[3:] == [("GET", "/api/annotations"), ("PUT", "/api/annotations/1")]
    assert [m for m, _ in grafana.calls()].count("POST") == 1
    assert list(grafana.annotations) == [1]


def test_refused_token_is_counted_retried_and_never_blocks(grafana: FakeGrafana) -> None:
    grafana.mode = "unauthorized"
    a = annotator(grafana.url)
    ticks = 0

    async def go() -> None:
        nonlocal ticks
        stop = asyncio.Event()
        task = asyncio.create_task(a.run(stop))
        a.submit(transition("open"), "EUR")
        began = time.monotonic()
        while time.monotonic() - began < 1.0:  # the loop keeps turning meanwhile
            ticks += 1
            await asyncio.sleep(0.01)
        assert a.depth == 1 and a.stats.failures >= 2 and not a.healthy
        assert "401" in a.health()["grafana_last_error"]
        grafana.mode = "ok"  # the token was fixed on Grafana's side
        end = time.monotonic() + 10
        while a.depth and time.monotonic() < end:
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(go())
    assert ticks > 50
    assert a.depth == 0 and a.healthy and a.stats.posted == 1
    assert len(grafana.annotations) == 1
    assert len([r for r in grafana.requests if r.method == "GET"]) >= 3  # retried


def test_grafana_down_then_up_queue_bounded_nothing_posted_twice() -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    a = annotator(url, cap=10)
    for i in range(15):  # 15 events while Grafana is down: the oldest 5 are dropped
        t = transition("open")
        a.submit(Transition("open", t.site, f"{EVENT_ID}{i}", t.event, t.resource), "EUR")
    assert a.depth == 10 and a.stats.dropped == 5

    async def down() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(a.run(stop))
        await asyncio.sleep(0.8)
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(down())
    assert a.stats.failures >= 2 and a.depth == 10 and not a.healthy
    assert "ConnectionError" in a.stats.last_error or "Connect" in a.stats.last_error
    fake = FakeGrafana()
    server = _serve(fake, port)  # Grafana comes up on its address
    try:
        asyncio.run(work_off(a, lambda: a.depth == 0))
    finally:
        server.shutdown()
        server.server_close()
    assert a.stats.posted == 10 and len(fake.annotations) == 10
    tags = sorted(t for ann in fake.annotations.values() for t in ann["tags"]
                  if t.startswith("event:"))
    assert tags == sorted(f"event:{EVENT_ID}{i}" for i in range(5, 15))


# ------------------------------------------------------------------ in the service


def _reading(seq: int, ts: int, energy: float) -> tuple[str, bytes]:
    return contract.reading_topic("dairy", "m1"), contract.dumps(contract.reading_payload(
        site="dairy", meter="m1", resource="electricity", stream="s1", seq=seq, ts=ts,
        quality=contract.Quality.OK, values={"energy_kwh": energy}))  # fmt: skip


def _series(days: int) -> list[tuple[str, bytes]]:
    out, e = [], 1000.0
    for i, t in enumerate(range(T0, T0 + days * 86400, 300)):
        out.append(_reading(i + 1, t, round(e, 3)))
        h = (t % 86400) / 3600
        kw = 20.0 + (60.0 if 6 <= h < 18 else 0.0)
        if 3 * 86400 + 36000 <= t - T0 < 3 * 86400 + 37800:
            kw += 400.0  # the spike of day 4, 10:00-10:30
        e += kw * 300 / 3600
    return out


def _config(tmp_path: Path, url: str, token_line: str) -> Path:
    cfg = tmp_path / "analytics.yaml"
    cfg.write_text(
        "kind: analytics\nspool: {path: spool.sqlite}\ncheckpoint: {path: state.json}\n"
        f"grafana:\n  url: {url}\n  {token_line}\n  retry_delay_s: 0.05\n"
        "  retry_delay_max_s: 0.2\n  timeout_s: 2\n"
    )
    return cfg


class Discard:
    def write(self, lines: list[str]) -> None:
        pass

    def close(self) -> None:
        pass


def test_service_posts_its_events_and_a_dead_grafana_costs_it_nothing(
    tmp_path: Path, grafana: FakeGrafana
) -> None:
    (tmp_path / "grafana.token").write_text(TOKEN + "\n")
    # first with Grafana down: handling is not slowed, the jobs wait (and are checkpointed)
    dead = f"http://127.0.0.1:{_free_port()}"
    svc = DetectService(load_analytics(_config(tmp_path, dead, "token_file: grafana.token")),
                        writer=Discard())
    assert svc.annotator is not None
    msgs = _series(5)

    async def first() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(svc.annotator.run(stop))  # type: ignore[union-attr]
        await svc.handle(msgs)  # only queues annotations: no HTTP call in the batch's path
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.wait_for(task, 10)
        await svc.save_checkpoint()

    asyncio.run(first())
    spikes = [o for o in svc.outgoing if o.topic.startswith("recp/v1/_alerts/")
              and json.loads(o.payload)["type"] == "spike"]
    assert [json.loads(o.payload)["event"] for o in spikes] == ["open", "close"]
    health = svc.health(time.time(), {})
    assert health["annotations_queued"] >= 2 and health["annotation_failures"] >= 1
    assert health["grafana_healthy"] is False
    lines = svc.metric_lines(time.time(), {**health, "readings_in_per_s": 0.0,
                                           "points_out_per_s": 0.0})
    assert "annotations_queued=" in lines[0] and "annotation_failures=" in lines[0]
    queued = health["annotations_queued"]
    svc.spool.close()

    # restart pointing at a working Grafana: the checkpointed jobs go out, each event once
    again = DetectService(load_analytics(_config(tmp_path, grafana.url,
                                                 "token_file: grafana.token")),
                          writer=Discard())
    assert again.annotator is not None and again.annotator.depth == queued
    asyncio.run(work_off(again.annotator, lambda: again.annotator.depth == 0))
    posted = {a["id"]: a for a in grafana.annotations.values()}
    spike = [a for a in posted.values() if f"event:{EVENT_ID}" in a["tags"]]
    assert len(spike) == 1
    assert spike[0]["timeEnd"] > spike[0]["time"] == (T0 + 3 * 86400 + 36000) * 1000
    assert "(closed)" in spike[0]["text"]
    assert math.isclose(again.annotator.stats.posted, len(posted))
    # a replay of every reading raises nothing again
    asyncio.run(again.handle(msgs))
    asyncio.run(work_off(again.annotator, lambda: again.annotator.depth == 0))
    assert [m for m, _ in grafana.calls()].count("POST") == len(posted)
    again.spool.close()


def test_config_takes_the_token_from_env_or_file_never_inline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RECP_GRAFANA_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="token"):
        load_analytics(_config(tmp_path, "http://127.0.0.1:3000", "token: glsa_inline"))
    with pytest.raises(ConfigError, match="no token"):
        load_analytics(_config(tmp_path, "http://127.0.0.1:3000", "tags: [recp]"))
    with pytest.raises(ConfigError, match="credentials"):
        load_analytics(_config(tmp_path, "http://admin:pw@127.0.0.1:3000", "tags: [recp]"))
    monkeypatch.setenv("GRAFANA_TOKEN_FOR_TEST", TOKEN)
    spec = load_analytics(_config(tmp_path, "http://127.0.0.1:3000",
                                  "token_env: GRAFANA_TOKEN_FOR_TEST"))
    assert spec.grafana_token == TOKEN
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.yaml").write_text("kind: analytics\n")
    assert load_analytics(plain / "a.yaml").config.grafana is None  # off by default
