"""The ``recp`` command line: one entry point, one module per subcommand.

Each module in :mod:`collector.commands` exposes ``NAME``, ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int``, and imports anything heavy inside ``run`` so that ``recp --help``
stays fast and the edge install never touches numba. Only this module turns errors into
exit codes: 2 for bad configuration or usage, 3 for a missing optional dependency, 141
when the reader of its output went away (``recp profiles | head``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from . import __version__

# subcommand modules, in the order `recp --help` lists them
COMMANDS = (
    "demo",
    "simulate",
    "agent",
    "detect",
    "baseline",
    "config",
    "profiles",
    "savings",
    "report",
    "scan",
    "grafana",
)

EXTRAS_HINT = {
    "numba": "analytics",
    "numpy": "analytics",
    "influxdb_client": "analytics",
    "grafana_client": "analytics",
    "matplotlib": "analytics",
    "pymodbus": "edge",
    "aiomqtt": "edge",
    "paho": "edge",
    "amqtt": "demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recp",
        description=(
            "recp-monitor: meter collection and loss detection for Resource-Efficient and "
            "Cleaner Production. Poll Modbus meters, publish readings over MQTT, find losses "
            "(leaks, steam traps, base-load rise, overspend) and put a price on them."
        ),
        epilog="Run 'recp COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"recp-monitor {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (repeat for debug)"
    )
    # -v works before or after the subcommand
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log output"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in COMMANDS:
        module = importlib.import_module(f"collector.commands.{name}")
        p = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common],
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args._run(args)
        sys.stdout.flush()  # here, so that a reader gone away is caught below
        return code
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        extra = EXTRAS_HINT.get(top)
        if extra is None:
            raise
        print(
            f"error: this command needs {top}, part of the '{extra}' extra: "
            f"pip install 'recp-monitor[{extra}]'",
            file=sys.stderr,
        )
        return 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `recp profiles | head`: the reader left; no traceback, and none at exit either
        # when Python flushes stdout (the standard library's documented recipe)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command its pipe ended
    except Exception as exc:
        # configfile (pydantic, yaml) is not imported up front: `recp agent --help` stays
        # fast; a ConfigError can only come from a command that imported it
        configfile = sys.modules.get("collector.configfile")
        if configfile is None or not isinstance(exc, configfile.ConfigError):
            raise
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        n = len(exc.problems)
        print(f"{n} problem{'s' if n != 1 else ''} found; nothing was started.", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
