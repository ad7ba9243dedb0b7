"""Store points into a real VictoriaMetrics as ``recp detect`` does: the service's own line
protocol (``detectors.service.lines``) through its writer (``InfluxWriter``, influxdb-client's
``/api/v2/write``), then flushed so that the export sees them at once."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from detectors.service.lines import line
from detectors.service.sink import InfluxWriter


def store(vm: Any, points: Iterable[Any], batch: int = 5000) -> int:
    """Write ``fluxserver.Point``-like points (measurement, tags, field, t_s, value)."""
    writer = InfluxWriter(vm.url, None, "recp", "recp", timeout_s=60)
    lines = [text for p in points
             if (text := line(p.measurement, p.tags, {p.field: float(p.value)},
                              int(p.t_s) * 1000)) is not None]  # fmt: skip
    try:
        for i in range(0, len(lines), batch):
            writer.write(lines[i:i + batch])
    finally:
        writer.close()
    vm.flush()
    return len(lines)
