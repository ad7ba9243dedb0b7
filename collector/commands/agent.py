"""``recp agent -c SITE``: poll the site's meters and publish their readings over MQTT."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "agent"
HELP = "run the edge agent: poll Modbus meters, publish readings over MQTT"
DESCRIPTION = """\
Poll every meter of a site file (kind: site) through its device profile and publish each
reading to the MQTT broker (contract v1, see docs/mqtt-contract.md). Every reading is
committed to a local SQLite outbox first and deleted only once the broker acknowledged it,
so a broker outage, a network cut or a restart of the agent loses nothing.

--once polls every meter once and prints what it read: the first thing to run when
commissioning a site (no broker needed). Exit status 1 if any meter did not answer fully.

The broker URL comes from --broker, else $RECP_MQTT_URL, else the site file; the
password from $RECP_MQTT_PASSWORD, else mqtt.password_env or mqtt.password_file.
SIGTERM or Ctrl-C stops polling, drains the outbox (up to --drain-timeout) and exits.

examples:
  recp agent -c edge_config/sites/demo.yaml --once
  recp agent -c edge_config/sites/demo.yaml -v
  RECP_MQTT_PASSWORD=... recp agent -c /etc/recp/site.yaml --broker mqtts://broker:8883
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", type=Path, required=True, metavar="SITE",
                   help="site file, e.g. edge_config/sites/demo.yaml")
    p.add_argument("--once", action="store_true",
                   help="poll every meter once, print the values and exit")
    p.add_argument("--broker", metavar="URL", help="override the broker URL (mqtt:// or mqtts://)")
    p.add_argument("--outbox", type=Path, metavar="FILE", help="override the outbox file")
    p.add_argument("--drain-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="on shutdown, wait this long for the outbox to drain (default 10)")


def run(args: argparse.Namespace) -> int:
    import asyncio
    import faulthandler
    import signal

    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 PID` prints every thread's stack to stderr
        faulthandler.register(signal.SIGUSR1, all_threads=True)

    from ..site import load_site

    spec = load_site(args.config)
    if args.once:
        from ..agent import format_once, poll_once
        from ..contract import Quality

        results = asyncio.run(poll_once(spec))
        print(format_once(spec, results))
        return 0 if all(r.quality is Quality.OK for r in results) else 1

    from ..agent import Agent

    async def main() -> int:
        agent = Agent(spec, outbox_path=args.outbox, broker=args.broker,
                      drain_timeout_s=args.drain_timeout)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await agent.run(stop)
        return 0

    from ..aio import run as run_loop

    return run_loop(main())
