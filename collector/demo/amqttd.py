"""amqtt, the demo's fallback MQTT broker, as a process of its own.

``python -m collector.demo.amqttd --port N`` serves MQTT 3.1.1 on 127.0.0.1:N with anonymous
access until SIGTERM or SIGINT. The demo starts it as a child when no Mosquitto is found;
in a process of its own, a broker that gets stuck cannot stall the demo or its Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys


async def serve(host: str, port: int) -> None:
    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                    {"allow_anonymous": True}},
    }
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    broker = Broker(config)
    await broker.start()
    print(f"amqtt listening on {host}:{port}", flush=True)
    await stop.wait()
    await asyncio.wait_for(broker.shutdown(), 5.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m collector.demo.amqttd")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        asyncio.run(serve(args.host, args.port))
    except asyncio.TimeoutError:
        print("amqtt did not shut down within 5 s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
