"""``recp demo``: the whole chain on one machine, an accelerated scenario, a report."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "demo"
HELP = "run the whole chain on this machine: virtual plant, agent, broker, detectors, report"
DESCRIPTION = """\
Start a virtual plant, an edge agent, an MQTT broker, the detector service and a store,
and run an accelerated scenario: by default a small dairy whose last two weeks (about
two minutes) hold a water leak, a failed steam trap and a rise of the electric base load.
Before the live part, four weeks of loss-free history are written as CSV, each meter's
baseline is fitted on them and they are replayed to the detector service.

The terminal shows the live progress (simulated day, meters, readings per second) and
every alert as it fires. At the end it prints each injected loss beside what was found,
with its cost, and writes to --out: report.html (the assessment report), summary.json,
events.json, truth.json, data/ (every reading as CSV), store.sqlite and logs/.

Without --mqtt-url it starts the Mosquitto it finds on this machine (temporary
configuration, free loopback port), else an in-process amqtt broker (MQTT 3.1.1).
Without --influx-url it stores into OUT/store.sqlite, which recp report --store and
recp savings --store read. Ctrl-C stops everything cleanly and still writes what was found.

examples:
  recp demo
  recp demo --out /tmp/demo --live-days 7
  recp demo --mqtt-url mqtt://127.0.0.1:1883 --influx-url http://127.0.0.1:8086 \\
      --influx-org recp --influx-bucket recp        # token from $RECP_INFLUX_TOKEN
"""


DEFAULT_PLANT = Path(__file__).resolve().parents[2] / "edge_config" / "plants" / "demo_small.yaml"


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("recp-demo"), metavar="DIR",
                   help="output folder (default ./recp-demo)")
    p.add_argument("--plant", type=Path, default=DEFAULT_PLANT, metavar="PLANT",
                   help="plant file (default edge_config/plants/demo_small.yaml)")
    p.add_argument("--history-days", type=_positive, default=28.0, metavar="DAYS",
                   help="loss-free days before the live part, for baselines (default 28)")
    p.add_argument("--live-days", type=_positive, metavar="DAYS",
                   help="simulated days served live (default: the rest of the plant's days)")
    p.add_argument("--speed", type=_positive, metavar="X",
                   help="simulated seconds per second (default: the plant file's)")
    p.add_argument("--poll", type=_positive, default=0.05, metavar="SECONDS",
                   help="the agent's polling interval, wall-clock seconds (default 0.05)")
    net = p.add_argument_group("using your own broker and database")
    net.add_argument("--mqtt-url", metavar="URL",
                     help="broker to use (mqtt:// or mqtts://; credentials from "
                     "$RECP_MQTT_USERNAME and $RECP_MQTT_PASSWORD) instead of starting one")
    net.add_argument("--mqtt-protocol", choices=("5", "3.1.1"), default="5",
                     help="MQTT protocol of --mqtt-url (default 5)")
    net.add_argument("--broker", choices=("mosquitto", "amqtt"),
                     help="which embedded broker to start (default: Mosquitto if found)")
    net.add_argument("--influx-url", metavar="URL",
                     help="InfluxDB 2/3 or VictoriaMetrics to write to (token from "
                     "$RECP_INFLUX_TOKEN or --influx-token-file) instead of OUT/store.sqlite")
    net.add_argument("--influx-org", default="recp", help="organisation (default recp)")
    net.add_argument("--influx-bucket", default="recp", help="bucket (default recp)")
    net.add_argument("--influx-token-file", type=Path, metavar="FILE",
                     help="file whose first line is the InfluxDB token")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.add_argument("--plain", action="store_true",
                   help="plain progress lines even on a terminal")


def run(args: argparse.Namespace) -> int:
    from ..configfile import ConfigError, Problem
    from ..demo.run import Options, run_demo

    if args.mqtt_url:
        from ..configfile import mqtt_url

        try:
            mqtt_url(args.mqtt_url)
        except ValueError as exc:
            raise ConfigError([Problem("--mqtt-url", None, "", str(exc))]) from None
    if args.mqtt_url and args.broker:
        raise ConfigError([Problem("--broker", None, "", "--broker starts a broker; "
                                   "--mqtt-url uses yours: give one of them")])
    if not args.plant.exists():
        raise ConfigError([Problem(str(args.plant), None, "", "plant file not found")])
    opts = Options(
        plant=args.plant, out=args.out, history_days=args.history_days,
        live_days=args.live_days, speed=args.speed, poll_s=args.poll,
        mqtt_url=args.mqtt_url, mqtt_protocol=args.mqtt_protocol, broker=args.broker,
        influx_url=args.influx_url, influx_org=args.influx_org,
        influx_bucket=args.influx_bucket, influx_token_file=args.influx_token_file,
        report=not args.no_report, plain=True if args.plain else None,
    )  # fmt: skip
    return run_demo(opts)
