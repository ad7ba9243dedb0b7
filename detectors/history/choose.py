"""Pick the history backend the analytics file names (``influx.flavor``)."""

from __future__ import annotations

from typing import Any

from .base import History


def open_history(spec: Any) -> History:
    """The reader of ``spec`` (an ``AnalyticsSpec``): Flux for InfluxDB 2, the export API
    for VictoriaMetrics; read from ``influx.query_url`` or else the write URL (an
    ``sqlite:FILE`` URL: the embedded store)."""
    cfg = spec.config.influx
    if spec.influx_url.startswith("sqlite:") and cfg.query_url is None:
        from ..store import store_path
        from .store import StoreHistory

        path = store_path(spec.influx_url)
        assert path is not None
        return StoreHistory(spec.path(path))  # relative to the analytics file, as written
    url = spec.history_url.rstrip("/")
    if cfg.flavor == "victoriametrics":
        from .victoria import VictoriaHistory

        return VictoriaHistory(url, spec.influx_token, cfg.timeout_s)
    from .flux import FluxHistory

    return FluxHistory(url, spec.influx_token, cfg.org, cfg.bucket, cfg.timeout_s)
