"""``recp demo``: start the chain, run the scenario, show progress, write the results.

Order of start: broker, detector service (it must be subscribed before anything is
published), the history (baselines fitted, readings replayed and digested), the plant
(clock held), the agent; the plant's clock starts when the agent is online. Order of
stop, at the scenario's end or on Ctrl-C: agent (its outbox drains to the broker), plant,
the service once it has digested every reading (it checkpoints and writes its spool to
the store), broker. Then the summary, events, report. A second Ctrl-C skips the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .broker import Broker, start_broker
from .live import LiveState, Recorder, client, history_messages, publish_all, watch
from .procs import Child
from .scenario import Split, analytics_file, fit_baselines, site_file, split_plant
from .summary import events_from_alerts, format_verdict, judge

DEFAULT_PLANT = Path(__file__).resolve().parents[2] / "edge_config" / "plants" / "demo_small.yaml"


@dataclass
class Options:
    plant: Path = DEFAULT_PLANT
    out: Path = Path("recp-demo")
    history_days: float = 28.0
    live_days: float | None = None
    speed: float | None = None
    poll_s: float = 0.05
    mqtt_url: str | None = None
    mqtt_protocol: str = "5"
    broker: str | None = None  # force "mosquitto" or "amqtt"
    influx_url: str | None = None
    influx_org: str = "recp"
    influx_bucket: str = "recp"
    influx_token_file: Path | None = None
    report: bool = True
    plain: bool | None = None  # None: plain lines unless stdout is a terminal


class Screen:
    """Live progress: one redrawn status line on a terminal, plain lines otherwise."""

    def __init__(self, plain: bool | None) -> None:
        self.tty = sys.stdout.isatty() if plain is None else not plain
        self._status = ""
        self._last_plain = 0.0

    def line(self, text: str) -> None:
        if self.tty and self._status:
            sys.stdout.write("\r\x1b[2K")
        sys.stdout.write(text + "\n")
        if self.tty and self._status:
            sys.stdout.write(self._status)
        sys.stdout.flush()

    def status(self, text: str, *, every_s: float = 10.0) -> None:
        if self.tty:
            self._status = text
            sys.stdout.write("\r\x1b[2K" + text)
            sys.stdout.flush()
        elif time.monotonic() - self._last_plain >= every_s:
            self._last_plain = time.monotonic()
            self.line(text)

    def done(self) -> None:
        if self.tty and self._status:
            sys.stdout.write("\n")
            sys.stdout.flush()
        self._status = ""


def _utc(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


@dataclass
class Demo:
    opts: Options
    screen: Screen
    interrupted: asyncio.Event = field(default_factory=asyncio.Event)
    hard_stop: bool = False
    state: LiveState = field(default_factory=LiveState)
    broker: Broker | None = None
    children: dict[str, Child] = field(default_factory=dict)
    split: Split | None = None
    recorder: Recorder | None = None
    phase: str = "starting"
    started: float = field(default_factory=time.monotonic)
    live_started: float | None = None
    history_published: int = 0

    @property
    def out(self) -> Path:
        return self.opts.out

    @property
    def work(self) -> Path:
        return self.opts.out / "work"

    @property
    def logs(self) -> Path:
        return self.opts.out / "logs"

    @property
    def store(self) -> Path | None:
        return None if self.opts.influx_url else (self.out / "store.sqlite").resolve()

    # ---------------------------------------------------------------- helpers

    def say(self, text: str) -> None:
        self.screen.line(f"[{time.monotonic() - self.started:4.0f}s] {text}" if text else "")

    async def until(self, check: Callable[[], bool], timeout_s: float, what: str,
                    child: Child | None = None) -> None:
        """Wait for ``check``; stop early on Ctrl-C or when ``child`` died."""
        deadline = time.monotonic() + timeout_s
        while not check():
            if self.interrupted.is_set():
                raise Interrupted
            if child is not None and not child.running():
                raise DemoError(f"{child.name} stopped while {what}:\n{child.tail()}")
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {timeout_s:.0f} s {what}"
                                + (f"; its log:\n{child.tail()}" if child else ""))
            await asyncio.sleep(0.05)

    def start_child(self, name: str, args: list[str]) -> Child:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        child = Child(name, args, self.logs / f"{name}.log", env)
        self.children[name] = child
        return child

    # ---------------------------------------------------------------- phases

    async def prepare(self) -> Split:
        o = self.opts
        self.phase = "history"
        self.say(f"writing {o.history_days:g} days of loss-free history of {o.plant.name} "
                 "as CSV ...")
        split = await asyncio.to_thread(split_plant, o.plant, self.work,
                                        history_days=o.history_days, live_days=o.live_days,
                                        speed=o.speed)
        self.split = split
        self.say("fitting each meter's baseline on the history "
                 "(the first run compiles the detectors: up to a minute) ...")
        fitted = await asyncio.to_thread(fit_baselines, split, self.work / "baselines")
        for meter, text in fitted.items():
            self.say(f"  baseline {meter}: {text.split(': ', 1)[-1]}")
        data = self.out / "data"
        if data.exists():
            shutil.rmtree(data)
        shutil.copytree(split.history_dir, data)
        (data / "truth.json").unlink(missing_ok=True)
        self.recorder = Recorder(data)
        return split

    async def start_service(self, split: Split, url: str, protocol: str) -> None:
        o = self.opts
        influx = o.influx_url or f"sqlite:{self.store}"
        cfg = analytics_file(split, self.work / "analytics.yaml", mqtt_url=url,
                             protocol=protocol, influx_url=influx, org=o.influx_org,
                             bucket=o.influx_bucket, token_file=o.influx_token_file,
                             workdir=self.work)
        self.say(f"store: {self.store}" if self.store else
                 f"store: {o.influx_url} (org {o.influx_org}, bucket {o.influx_bucket})")
        self.phase = "service"
        self.say("starting the detector service (recp detect) ...")
        svc = self.start_child("detect", ["detect", "-c", str(cfg), "-v"])
        await self.until(lambda: self.state.detect_status == "online", 180,
                         "waiting for the detector service to connect", svc)

    async def replay(self, split: Split, c: Any, url: str, protocol: str) -> None:
        from ..agent import Agent
        from ..site import load_site

        self.phase = "replay"
        # the meters' meta as the agent publishes it (a site file with the plant's ports)
        sf = site_file(split, self.work / "site.yaml", mqtt_url=url, protocol=protocol,
                       ports={}, poll_s=self.opts.poll_s, outbox=self.work / "outbox.sqlite",
                       clock_device=False)
        meta = Agent(load_site(sf)).meta_messages()
        messages = await asyncio.to_thread(history_messages, split.history_dir, split.site, meta)
        n = sum(1 for t, _ in messages if t.endswith("/reading"))
        self.history_published = n
        self.say(f"replaying the history to the detector service: {n:,} readings ...")
        task = asyncio.create_task(publish_all(c, messages, self.state))
        svc = self.children["detect"]
        try:
            while not task.done():
                self.screen.status(f"  history: {self.state.history_published:,} of {n:,} "
                                   "readings published", every_s=5)
                await asyncio.wait({task}, timeout=0.25)
                if self.interrupted.is_set():
                    raise Interrupted
            task.result()

            def digested() -> bool:
                h = self.state.detect_health
                self.screen.status(f"  history: {h.get('readings_in', 0):,} of {n:,} readings "
                                   "digested by the service", every_s=5)
                return int(h.get("readings_in", 0)) >= n

            await self.until(digested, 600, "waiting for the service to digest the history",
                             svc)
        finally:
            task.cancel()
            self.screen.done()

    async def live(self, split: Split, url: str, protocol: str) -> None:
        o = self.opts
        self.phase = "live"
        status = self.work / "plant-status.json"
        hold = self.work / "plant-go"
        hold.unlink(missing_ok=True)
        status.unlink(missing_ok=True)
        truth = self.out / "truth.json"
        plant = self.start_child("plant", [
            "simulate", "-c", str(split.live_plant), "--port-base", "0",
            "--status", str(status), "--truth", str(truth), "--hold", str(hold)])
        await self.until(status.exists, 60, "waiting for the virtual plant to listen", plant)
        ports = {int(k): int(v) for k, v in
                 json.loads(status.read_text(encoding="utf-8"))["ports"].items()}
        device_clock = split.spec.plant.clock is not None
        if not device_clock:
            raise DemoError(f"{o.plant}: the plant serves no clock (clock: {{port, unit_id}}); "
                            "the agent needs it to stamp readings in simulated time")
        sf = site_file(split, self.work / "site.yaml", mqtt_url=url, protocol=protocol,
                       ports=ports, poll_s=o.poll_s, outbox=self.work / "outbox.sqlite",
                       clock_device=device_clock)
        (self.work / "outbox.sqlite").unlink(missing_ok=True)
        self.say(f"virtual plant {split.site}: {len(split.spec.plant.meters)} meters on "
                 f"127.0.0.1 ports {', '.join(str(p) for p in sorted(ports.values()))}")
        agent = self.start_child("agent", ["agent", "-c", str(sf), "--broker", url, "-v"])
        await self.until(lambda: self.state.agent_status == "online", 60,
                         "waiting for the edge agent to connect", agent)
        hold.write_text("go\n", encoding="utf-8")
        self.live_started = time.monotonic()
        speed = split.spec.plant.speed if o.speed is None else o.speed
        self.say(f"live: {split.live_days:g} simulated days from "
                 f"{_utc(split.live_start.timestamp())} at {speed:g}x (one day every "
                 f"{86400 / speed:.1f} s); Ctrl-C stops early")
        start_s, end_s = split.live_start.timestamp(), split.live_end.timestamp()
        n_meters = len(split.spec.plant.meters)
        while plant.running():
            if self.interrupted.is_set():
                raise Interrupted
            for name in ("agent", "detect"):
                if not self.children[name].running():
                    raise DemoError(f"the {name} process stopped:\n{self.children[name].tail()}")
            now = self.state.last_ts or start_s
            day = (now - start_s) / 86400.0
            frac = min(1.0, max(0.0, (now - start_s) / (end_s - start_s)))
            bar = "#" * int(frac * 20)
            self.screen.status(
                f"  [{bar:<20}] day {day:4.1f}/{split.live_days:g}  {_utc(now)}  "
                f"{len(self.state.meters_seen)}/{n_meters} meters  "
                f"{self.state.rate():5.0f} readings/s  {self.state.readings:,} readings  "
                f"{len(self.state.open_alerts())} alerts open", every_s=10)
            await asyncio.sleep(0.2)
        self.screen.done()
        self.say(f"scenario complete: {self.state.readings:,} live readings in "
                 f"{time.monotonic() - self.live_started:.0f} s")

    def on_alert(self, a: dict[str, Any]) -> None:
        from .summary import LOSS_EVENT_TYPES

        cost = a.get("cost")
        money = "" if cost is None else f", {cost:,.0f} {a.get('currency', '')}"
        when = (a.get("start") or "")[:16].replace("T", " ")
        if a.get("type") not in LOSS_EVENT_TYPES:  # stuck meter, gap: data quality
            if a.get("event") == "open":
                self.say(f"  note   {a.get('meter')}: {a.get('type')} since {when} "
                         "(data quality, not a loss)")
        elif a.get("resource") in ("production", "weather"):
            if a.get("event") == "open":
                self.say(f"  note   {a.get('meter')}: {a.get('type')} since {when} "
                         f"(a {a.get('resource')} meter: not a loss)")
        elif a.get("event") == "open":
            # a base-load step is seen at night only: its start is a range (detect's alerts)
            seen = re.search(r"began between (\S+ \S+) and (\S+ \S+) UTC",
                             str(a.get("explanation") or ""))
            since = f"began between {seen[1]} and {seen[2]}" if seen else f"since {when}"
            self.say(f"  ALERT  {a.get('meter')}: {a.get('type')} {since} "
                     f"({a.get('excess', 0):,.4g} {a.get('unit', '')}{money} so far)")
        else:
            end = (a.get("end") or "")[:16].replace("T", " ")
            self.say(f"  closed {a.get('meter')}: {a.get('type')} {when} .. {end} "
                     f"({a.get('excess', 0):,.4g} {a.get('unit', '')}{money})")

    # ---------------------------------------------------------------- stop and results

    async def stop_chain(self) -> None:
        """Stop in order; the service only once it has every reading the agent sent."""
        agent = self.children.get("agent")
        if agent is not None:
            await agent.stop(15.0 if not self.hard_stop else 3.0)
        plant = self.children.get("plant")
        if plant is not None:
            await plant.stop(5.0)
        svc = self.children.get("detect")
        if svc is not None and svc.running() and not self.hard_stop:
            expected = self.state.readings + self.history_published
            deadline = time.monotonic() + 60
            while svc.running() and time.monotonic() < deadline and not self.hard_stop:
                h = self.state.detect_health
                if int(h.get("readings_in", 0)) >= expected and not h.get("spool_depth"):
                    break
                await asyncio.sleep(0.2)
        if svc is not None:
            await svc.stop(40.0 if not self.hard_stop else 5.0)

    def events(self) -> list[dict[str, Any]]:
        """The service's events: from the store (their final excess and cost), and from
        the alerts seen for any the store does not have (an external database, or a
        spool not yet written when the demo was stopped)."""
        found: dict[str, dict[str, Any]] = {}
        for e in events_from_alerts([a.payload for a in self.state.alerts.values()]):
            found[e["id"]] = e
        if self.store is not None and self.store.exists():
            from detectors.store import Store, events

            with Store(self.store) as s:
                for e in events(s):
                    found[e["id"]] = e
        for e in found.values():
            e["raised_s"] = self.state.raised.get(e["id"])
        return sorted(found.values(), key=lambda e: (e["start_s"], e["id"]))

    def results(self) -> int:
        """Summary, events and report in the output folder; exit status 0 when all found."""
        split = self.split
        if split is None:
            return 1
        found = self.events()
        (self.out / "events.json").write_text(json.dumps(found, indent=2) + "\n",
                                              encoding="utf-8")
        truth_file = self.out / "truth.json"
        truth = []
        if truth_file.exists():
            truth = json.loads(truth_file.read_text(encoding="utf-8")).get("events", [])
            now_s = dt.datetime.fromisoformat(json.loads(truth_file.read_text())["now"]
                                              .replace("Z", "+00:00")).timestamp()
        else:
            now_s = split.live_start.timestamp()
        days = max(0.0, (now_s - split.live_start.timestamp()) / 86400.0)
        consumption = [m for m in split.spec.plant.meters
                       if m.profile and m.price_per_unit is not None]
        verdict = judge(truth, found, now_s=now_s, meters=len(consumption), days=days,
                        since_s=split.live_start.timestamp(),
                        consumption={m.id for m in consumption})
        (self.out / "summary.json").write_text(json.dumps(verdict.as_dict(), indent=2,
                                                          default=str) + "\n", encoding="utf-8")
        self.say("")
        for text in format_verdict(verdict):
            self.say(text)
        if self.opts.report and not self.hard_stop:
            self.report()
        self.say("")
        self.say(f"output: {self.out.resolve()}")
        for name, what in (("report.html", "the assessment report (open it in a browser)"),
                           ("summary.json", "found vs injected"),
                           ("events.json", "every event the service raised"),
                           ("truth.json", "what the plant injected"),
                           ("data", "every reading, as CSV (recp report --site-dir)"),
                           ("store.sqlite", "the embedded store (recp report --store)"),
                           ("logs", "the logs of plant, agent and service")):
            if (self.out / name).exists():
                self.say(f"  {name:<14} {what}")
        return 0 if verdict.ok else 1

    def report(self) -> None:
        from detectors.report.assessment import assess, assessment_dict, assessment_html

        assert self.split is not None
        self.say("writing the assessment report ...")
        try:
            end = self.state.last_ts or self.split.live_start.timestamp()
            a = assess(self.out / "data", int(self.split.history_start.timestamp()),
                       int(end), timezone=self.split.spec.plant.timezone)
            (self.out / "report.html").write_text(assessment_html(a), encoding="utf-8")
            (self.out / "assessment.json").write_text(
                json.dumps(assessment_dict(a), indent=2, allow_nan=False) + "\n",
                encoding="utf-8")
        except Exception as exc:  # the report must not hide the summary
            self.say(f"no report: {type(exc).__name__}: {exc}")
            return
        self.say(f"report: {len(a.events)} loss events, savings potential "
                 f"{a.potential_cost:,.0f} {a.currency} "
                 f"({a.annualised_cost():,.0f} {a.currency}/year if the open losses continue)")

    # ---------------------------------------------------------------- main

    async def run(self) -> int:
        o = self.opts
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if self.interrupted.is_set():
                self.hard_stop = True
            self.interrupted.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        o.out = o.out.resolve()  # the children's files name their paths absolutely
        o.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        for stale in ("report.html", "assessment.json", "summary.json", "events.json",
                      "truth.json", "store.sqlite", "store.sqlite-wal", "store.sqlite-shm"):
            (o.out / stale).unlink(missing_ok=True)
        for stale in ("spool.sqlite", "spool.sqlite-wal", "spool.sqlite-shm",
                      "detect-state.json"):
            (self.work / stale).unlink(missing_ok=True)
        outcome = "done"
        try:
            split = await self.prepare()
            self.broker = await start_broker(o.mqtt_url, self.work / "broker",
                                             force=o.broker, protocol=o.mqtt_protocol)
            self.say(f"broker: {self.broker.describe}")
            url, protocol = self.broker.url, self.broker.protocol
            await self.chain(split, url, protocol)
        except Interrupted:
            outcome = "interrupted"
        except DemoError as exc:
            outcome = "failed"
            self.screen.done()
            self.say(f"error: {exc}")
        finally:
            self.screen.done()
            await self.stop_chain()
            if self.broker is not None:
                await self.broker.stop()
            if self.recorder is not None:
                self.recorder.close()
        code = self.results() if self.split is not None else 1
        if outcome == "interrupted":
            self.say("stopped early: the output holds what was found until then")
            code = 130
        elif outcome == "failed":
            code = 1
        self.say(f"demo took {time.monotonic() - self.started:.0f} s")
        return code

    async def chain(self, split: Split, url: str, protocol: str) -> None:
        """The service, the history, the live part; stopped in order before returning."""
        import aiomqtt

        try:
            async with client(url, protocol, f"recp-demo-{os.getpid()}") as c:
                watcher = asyncio.create_task(watch(c, split.site, self.state, self.recorder,
                                                    self.on_alert))
                try:
                    await self.start_service(split, url, protocol)
                    await self.replay(split, c, url, protocol)
                    await self.live(split, url, protocol)
                    await asyncio.sleep(0.5)  # the last readings and alerts
                finally:
                    if self.interrupted.is_set():
                        self.screen.done()
                        self.say("stopping agent, plant and service ...")
                    await self.stop_chain()  # still watching: the service reports progress
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await watcher
        except aiomqtt.MqttError as exc:
            raise DemoError(f"MQTT: {exc}") from None


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) during the demo."""


class DemoError(Exception):
    """Something of the chain failed; the message says what."""


def run_demo(opts: Options) -> int:
    screen = Screen(opts.plain)
    return asyncio.run(Demo(opts, screen).run())
