"""``recp detect -c analytics.yaml``: the detector service (needs the analytics extra)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "detect"
HELP = "run the detector service: MQTT readings -> detectors -> InfluxDB and alerts"
DESCRIPTION = """\
Subscribe to every agent's readings (MQTT contract v1, persistent session, QoS 1), run the
streaming detectors per meter and write readings, interval consumption, anomaly scores,
events and self-metrics to InfluxDB (docs/influx-schema.md). Alerts open and close on
recp/v1/_alerts/{site}/{meter}; malformed payloads go to recp/v1/_deadletter/{site}.
Points wait in an on-disk spool while the database is away; a message is acknowledged to
the broker only once its points are in the spool. Detector state is checkpointed
periodically and on SIGTERM, and restored on start.

The broker URL comes from --broker, else $RECP_MQTT_URL, else the file; the InfluxDB URL
from --influx, else $RECP_INFLUX_URL, else the file; secrets from $RECP_MQTT_PASSWORD and
$RECP_INFLUX_TOKEN or the file's *_env / *_file settings. See docs/detector-service.md.

examples:
  recp detect -c edge_config/analytics.yaml -v
  recp config check edge_config/analytics.yaml
"""


def _partition(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected INDEX/COUNT such as 0/2, got {text!r}") \
            from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"INDEX must be in 0..COUNT-1, got {text!r}")
    return index, count


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", type=Path, required=True, metavar="FILE",
                   help="analytics file (kind: analytics)")
    p.add_argument("--broker", metavar="URL", help="override the broker URL")
    p.add_argument("--influx", metavar="URL", help="override the InfluxDB URL")
    p.add_argument("--partition", type=_partition, metavar="I/N",
                   help="handle partition I of N of the meters (overrides the file)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run N processes, one per partition I/N (one per CPU core)")


def _run_workers(args: argparse.Namespace) -> int:
    """``--workers N``: N child processes ``--partition i/N``; signals are passed on."""
    import signal
    import subprocess
    import sys

    base = [sys.executable, "-m", "collector", "detect", "-c", str(args.config)]
    base += ["-v"] * getattr(args, "verbose", 0)
    for flag, value in (("--broker", args.broker), ("--influx", args.influx)):
        if value:
            base += [flag, value]
    n = args.workers
    children = [subprocess.Popen([*base, "--partition", f"{i}/{n}"]) for i in range(n)]

    def forward(signum: int, frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    return max(child.wait() for child in children)


def run(args: argparse.Namespace) -> int:
    if args.workers > 1:
        if args.partition is not None:
            raise SystemExit("error: --workers and --partition exclude each other")
        return _run_workers(args)
    import asyncio
    import logging
    import signal
    from typing import Any

    # a SIGTERM during start-up (numba imports take a moment) still means a clean stop
    early: list[int] = []

    def remember(signum: int, frame: Any) -> None:
        early.append(signum)

    previous = {sig: signal.signal(sig, remember) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        from detectors.service.config import load_analytics
        from detectors.service.service import DetectService

        spec = load_analytics(args.config, mqtt_url=args.broker, influx_url=args.influx,
                              partition=args.partition)
    except BaseException:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        raise

    async def main() -> int:
        service = DetectService(spec)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if early:
            stop.set()
        await service.run(stop)
        return 0

    from collector.aio import event_loop_name
    from collector.aio import run as run_loop

    log = logging.getLogger(__name__)
    log.info("event loop: %s", event_loop_name())
    log.debug("analytics file %s: instance %s, client id %s, partition %s", args.config,
              spec.instance, spec.client_id, spec.config.processing.partition)
    # uvloop when installed (RECP_EVENT_LOOP=asyncio turns it off), as for the agent
    return run_loop(main())
