"""Coverage-guided fuzzing with atheris (libFuzzer) of the parsers that take raw bytes.

``python -m benchmarks.fuzz_atheris TARGET -runs=N`` runs one target in this process;
``python -m benchmarks.fuzz --atheris N`` runs each target in a child process and reads the
run count from libFuzzer's summary. An unhandled exception makes atheris print the input
and the traceback and exit non-zero. Needs ``pip install '.[fuzz]'`` (Linux, CPython 3.11).

Targets (outside input as raw bytes, instrumented so new branches guide the mutations):

- ``mqtt``: topic and payload for the detector service's validation (never raises).
- ``config``: a YAML file for ``recp config check`` (ConfigError only).
- ``csv``: a meter CSV for ``recp scan``'s reader (CsvInputError only).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["collector", "detectors"]):
    from collector.commands.config import check_file
    from collector.configfile import ConfigError
    from detectors.csvinput import CsvInputError
    from detectors.scan import ScanOptions, read_table
    from detectors.service.validate import Limits, parse

NOW = 1_790_000_000.0
LIMITS = Limits()
WORK = Path(tempfile.mkdtemp(prefix="recp-atheris-"))
TOPICS = ["recp/v1/demo/m1/reading", "recp/v1/demo/m1/meta", "recp/v1/demo/_agent/health",
          "recp/v1/demo/m1/ack", "recp/v1/x"]
SEED_READING = (b'{"v":1,"site":"demo","meter":"m1","resource":"water","stream":"s","seq":1,'
                b'"ts":"2026-09-21T13:33:20.123Z","quality":"ok","values":{"volume_m3":1.5}}')


def mqtt(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    topic = TOPICS[fdp.ConsumeIntInRange(0, len(TOPICS) - 1)]
    parse(topic, fdp.ConsumeBytes(fdp.remaining_bytes()), NOW, LIMITS)


def config(data: bytes) -> None:
    path = WORK / "case.yaml"
    path.write_bytes(data)
    with contextlib.suppress(ConfigError):
        check_file(path)


def csv(data: bytes) -> None:
    path = WORK / "case.csv"
    path.write_bytes(data)
    with contextlib.suppress(CsvInputError):
        read_table(path, ScanOptions())


TARGETS = {"mqtt": mqtt, "config": config, "csv": csv}
SEEDS = {
    "mqtt": [b"\x00" + SEED_READING],
    "config": [p.read_bytes() for p in sorted(
        (Path(__file__).resolve().parents[1] / "edge_config").rglob("*.yaml"))][:6],
    "csv": [b"timestamp_utc,energy_kwh\n2026-01-05T00:00:00Z,1.5\n2026-01-05T00:15:00Z,2\n"],
}


def main() -> None:
    name = sys.argv[1]
    corpus = WORK / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(SEEDS[name]):
        (corpus / f"seed{i}").write_bytes(seed)
    atheris.Setup([sys.argv[0], *sys.argv[2:], str(corpus)], TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
