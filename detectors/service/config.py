"""The detector service's configuration file (``kind: analytics``).

Validated once at start-up without any network call. Secrets (the broker password, the
InfluxDB token) come from an environment variable or a file, never inline. Precedence,
highest first: command-line flags, environment (``RECP_MQTT_URL``, ``RECP_MQTT_USERNAME``,
``RECP_MQTT_PASSWORD``, ``RECP_INFLUX_URL``, ``RECP_INFLUX_TOKEN``, ``RECP_GRAFANA_TOKEN``),
the file, the defaults.
Relative paths (spool, checkpoint) are taken from the file's directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from collector.configfile import (
    ConfigError,
    Problem,
    Strict,
    load_indexed,
    no_inline_secret,
)
from collector.contract import check_id
from collector.quantities import QUANTITIES, Kind
from collector.site import Broker

from ..store import store_path


def _secret(env: str | None, file: Path | None, base: Path) -> str | None:
    if env:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError([Problem(str(base), None, "", f"environment variable {env} is "
                                       "not set")])
        return value
    if file is not None:
        path = file if file.is_absolute() else base.parent / file
        try:
            return path.read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise ConfigError([Problem(str(base), None, "", f"cannot read {path}: {exc}")]) \
                from None
    return None


class Mqtt(Broker):
    """The broker the agents publish to."""

    url: str = Field("mqtt://127.0.0.1:1883", description="mqtt://host[:port] or mqtts://")
    client_id: str | None = Field(None, description="fixed id (persistent session); default "
                                  "recp-detect-<instance>-p<partition>")
    session_expiry_s: int = Field(7 * 86400, ge=60, description="broker keeps our session "
                                  "(and queues readings for us) this long while we are away")
    receive_maximum: int = Field(4000, ge=1, le=65535, description="unacknowledged messages "
                                 "the broker may send us at once; above processing.batch, "
                                 "so the next batch arrives while one is processed")
    sites: list[str] = Field(default_factory=list, description="subscribe to these sites "
                             "only (default: every site)")
    shared_group: str | None = Field(None, description="subscribe as $share/<group>/... "
                                     "(only for stateless fan-out; see docs)")

    @field_validator("sites")
    @classmethod
    def _sites(cls, sites: list[str]) -> list[str]:
        return [check_id(s, "site id") for s in sites]


class Influx(Strict):
    """Where points are written (InfluxDB 2/3 or VictoriaMetrics, /api/v2/write)."""

    url: str = Field("http://127.0.0.1:8086")
    org: str = "recp"
    bucket: str = "recp"
    token: str | None = Field(None, description="not accepted: use token_env or token_file")
    token_env: str | None = None
    token_file: Path | None = None
    timeout_s: float = Field(10.0, gt=0, description="per write request")
    batch: int = Field(5000, ge=1, le=100_000, description="points per write request")
    retry_delay_s: float = Field(0.5, gt=0)
    retry_delay_max_s: float = Field(30.0, gt=0)
    gzip: bool = False
    flavor: Literal["influxdb2", "victoriametrics"] = Field(
        "influxdb2", description="the database, for reading history back (recp savings "
        "influx:..., recp baseline fit): influxdb2 (Flux) or victoriametrics (/api/v1/export)")
    query_url: str | None = Field(None, description="where history is read from (default: "
                                  "url); a VictoriaMetrics cluster's vmselect, e.g. "
                                  "http://vmselect:8481/select/0/prometheus")

    @field_validator("query_url")
    @classmethod
    def _query_url(cls, url: str | None) -> str | None:
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("expected http://host:port/... or https://host:port/...")
        return url

    @field_validator("token", mode="before")
    @classmethod
    def _no_token(cls, value: Any) -> None:
        no_inline_secret(value, "token")
        return None

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        if url.startswith("sqlite:"):  # the embedded store (detectors.store)
            if not url[len("sqlite:"):].strip("/"):
                raise ValueError("sqlite: needs a file name, e.g. sqlite:recp-store.sqlite")
            return url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected http://host:port, https://host:port or sqlite:FILE "
                             "(the embedded store)")
        return url


class Spool(Strict):
    path: Path = Field(Path("recp-detect-spool.sqlite"), description="SQLite file")
    cap: int = Field(2_000_000, ge=1000, description="points kept at most; intake pauses "
                     "before this is reached")
    synchronous: Literal["FULL", "NORMAL"] = "FULL"


class Checkpoint(Strict):
    path: Path = Field(Path("recp-detect-state.json"))
    interval_s: float = Field(60.0, ge=1.0, description="save detector state this often")


class Partition(Strict):
    """This instance handles the meters with crc32("site/meter") % count == index."""

    index: int = Field(0, ge=0)
    count: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _range(self) -> Partition:
        if self.index >= self.count:
            raise ValueError(f"index must be below count ({self.count})")
        return self


class Processing(Strict):
    interval_s: int = Field(900, ge=60, le=86400, description="consumption interval (UTC "
                            "aligned); must divide a day")
    batch: int = Field(1000, ge=1, le=100_000, description="messages handled at once")
    batch_bytes: int = Field(1 << 20, ge=1024, description="payload bytes handled at once "
                             "(bounds a batch of `readings` messages)")
    batch_wait_s: float = Field(0.05, ge=0, le=5, description="wait to fill a batch")
    max_payload_bytes: int = Field(65536, ge=256)
    max_batch_payload_bytes: int = Field(1 << 20, ge=1024, description="largest `readings` "
                                         "message (several readings)")
    max_future_s: float = Field(300.0, ge=0, description="readings further ahead of our "
                                "clock are dead letters")
    oldest_ts: str = Field("2000-01-01T00:00:00Z", description="older readings are dead "
                           "letters")
    require_meta: bool = Field(False, description="dead-letter readings of meters without "
                               "a retained meta message")
    utc_offset_s: int = Field(0, description="local time for time-of-week slots")
    night_hours_utc: tuple[float, float] = (0.0, 4.0)
    clock_step_hold_s: float = Field(86400.0, ge=0, description="after a meter's clock "
                                     "stepped by an hour (and an interval) or more, its "
                                     "intervals are stored but not scored for this long "
                                     "(0: off)")
    partition: Partition = Partition()

    @field_validator("interval_s")
    @classmethod
    def _divides_day(cls, value: int) -> int:
        if 86400 % value:
            raise ValueError("must divide a day (86400 s), e.g. 300, 900 or 3600")
        return value


class Baselines(Strict):
    """Baselines fitted by the core (``detectors.baseline``, JSON ``recp-baseline/1``)."""

    dir: Path | None = Field(None, description="<dir>/<site>/<meter>.json, read when a meter "
                             "is first seen and at start")
    band_sigma: float = Field(2.0, gt=0, description="lower/upper = expected -/+ this many "
                              "prediction standard deviations")
    input_max_age_s: float = Field(1800.0, gt=0, description="a temperature or production "
                                   "reading older than this is not carried forward")


class Alerts(Strict):
    """When events open and close (hysteresis) and how they are published."""

    spike_open: float = Field(6.0, gt=0, description="robust z that opens a spike")
    spike_close: float = Field(3.0, ge=0, description="robust z below which it may close")
    spike_min_rel: float = Field(0.4, ge=0, description="and this much above usual")
    stuck_hours: float = Field(2.0, gt=0)
    close_after: int = Field(2, ge=1, description="quiet intervals before an event closes")
    qos: Literal[0, 1] = 1

    @model_validator(mode="after")
    def _order(self) -> Alerts:
        if self.spike_close > self.spike_open:
            raise ValueError("spike_close must not exceed spike_open (hysteresis)")
        return self


class Grafana(Strict):
    """Events as Grafana annotations (off unless this section is present)."""

    url: str = Field(description="Grafana's base URL, e.g. https://grafana.plant.lan:3000")
    token: str | None = Field(None, description="not accepted: use token_env or token_file")
    token_env: str | None = Field(None, description="environment variable holding a service "
                                  "account token (Editor role)")
    token_file: Path | None = Field(None, description="file whose first line is the token")
    dashboard_uid: str | None = Field(None, description="pin annotations to this dashboard "
                                      "(default: organisation-wide, shown by tag)")
    tags: list[str] = Field(default_factory=lambda: ["recp"], description="added to every "
                            "annotation besides site, meter, resource, type, severity, event")
    timeout_s: float = Field(5.0, gt=0, le=120, description="per HTTP request")
    queue: int = Field(10_000, ge=10, description="annotations waiting at most; the oldest "
                       "is dropped (counted) beyond")
    retry_delay_s: float = Field(1.0, gt=0)
    retry_delay_max_s: float = Field(60.0, gt=0)

    @field_validator("token", mode="before")
    @classmethod
    def _no_token(cls, value: Any) -> None:
        no_inline_secret(value, "token")
        return None

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected http://host[:port][/path] or https://...")
        if parts.username or parts.password:
            raise ValueError("put no credentials in the URL; use token_env or token_file")
        return url


def _input_value(name: str, kind: Kind) -> str:
    q = QUANTITIES.get(name)
    if q is None or q.kind is not kind:
        raise ValueError(f"{name!r} is not a {kind.value} quantity (e.g. "
                         f"{'outdoor_temperature_c' if kind is Kind.GAUGE else 'produced_units'})")
    return name


class MeterInputs(Strict):
    """The meters whose readings a baseline with temperature or production terms needs."""

    temperature_meter: str | None = Field(None, description="meter of the same site giving "
                                          "the outdoor temperature")
    temperature_value: str = Field("outdoor_temperature_c", description="its value name")
    production_meter: str | None = Field(None, description="meter of the same site counting "
                                         "production")
    production_value: str = Field("produced_units", description="its counter name")

    @field_validator("temperature_meter", "production_meter")
    @classmethod
    def _meter(cls, value: str | None) -> str | None:
        return None if value is None else check_id(value, "meter id")

    @field_validator("temperature_value")
    @classmethod
    def _temperature(cls, value: str) -> str:
        return _input_value(value, Kind.GAUGE)

    @field_validator("production_value")
    @classmethod
    def _production(cls, value: str) -> str:
        return _input_value(value, Kind.COUNTER)


class SiteSettings(MeterInputs):
    """Per site: money, local time, and baseline inputs (for every meter, or per meter)."""

    currency: str = "EUR"
    utc_offset_s: int | None = None
    price_per_unit: dict[str, float] = Field(default_factory=dict, description="unit -> "
                                             "price, when a meter's meta has none")
    co2_kg_per_unit: dict[str, float] = Field(default_factory=dict)
    meters: dict[str, MeterInputs] = Field(default_factory=dict, description="meter id -> "
                                           "its own baseline inputs (replacing the site's)")

    @field_validator("meters")
    @classmethod
    def _meter_ids(cls, value: dict[str, MeterInputs]) -> dict[str, MeterInputs]:
        for key in value:
            check_id(key, "meter id")
        return value


class Analytics(Strict):
    """An analytics file (``kind: analytics``)."""

    kind: Literal["analytics"]
    instance: str = Field("detect", description="name in self-metrics and status topics")
    mqtt: Mqtt = Mqtt()
    influx: Influx = Influx()
    spool: Spool = Spool()
    checkpoint: Checkpoint = Checkpoint()
    processing: Processing = Processing()
    alerts: Alerts = Alerts()
    baselines: Baselines = Baselines()
    grafana: Grafana | None = Field(None, description="post events as Grafana annotations")
    sites: dict[str, SiteSettings] = Field(default_factory=dict)
    metrics_interval_s: float = Field(10.0, ge=0.5)
    ack_interval_s: float = Field(1.0, ge=0.05, description="publish consumer acks this often")
    drain_timeout_s: float = Field(10.0, ge=0, description="on shutdown, keep writing the "
                                   "spool this long")

    @field_validator("instance")
    @classmethod
    def _instance(cls, value: str) -> str:
        return check_id(value, "instance")

    @field_validator("sites")
    @classmethod
    def _site_ids(cls, value: dict[str, SiteSettings]) -> dict[str, SiteSettings]:
        for key in value:
            check_id(key, "site id")
        return value


@dataclass(frozen=True)
class AnalyticsSpec:
    """A validated analytics file with secrets and paths resolved."""

    config: Analytics
    file: str
    mqtt_url: str
    mqtt_username: str | None
    mqtt_password: str | None
    influx_url: str
    influx_token: str | None
    grafana_token: str | None = None

    def path(self, p: Path) -> Path:
        return p if p.is_absolute() else Path(self.file).resolve().parent / p

    @property
    def instance(self) -> str:
        """The instance name in topics and metrics: ``detect-1``, or ``detect-1-p0of2``."""
        suffix = self.part_suffix
        return f"{self.config.instance}-{suffix}" if suffix else self.config.instance

    @property
    def history_url(self) -> str:
        """Where stored history is read: ``influx.query_url`` (a cluster's vmselect), else
        the database ``recp detect`` writes to."""
        return self.config.influx.query_url or self.influx_url

    @property
    def part_suffix(self) -> str:
        """``p0of2`` when the meters are partitioned, else empty."""
        part = self.config.processing.partition
        return f"p{part.index}of{part.count}" if part.count > 1 else ""

    def _per_partition(self, p: Path) -> Path:
        path = self.path(p)
        if not self.part_suffix:
            return path
        return path.with_name(f"{path.stem}.{self.part_suffix}{path.suffix}")

    @property
    def spool_path(self) -> Path:
        """The spool file; ``name.p0of2.sqlite`` per partition, so instances never share."""
        return self._per_partition(self.config.spool.path)

    @property
    def checkpoint_path(self) -> Path:
        return self._per_partition(self.config.checkpoint.path)

    @property
    def client_id(self) -> str:
        c = self.config
        part = c.processing.partition
        if c.mqtt.client_id:
            return f"{c.mqtt.client_id}-{self.part_suffix}" if self.part_suffix \
                else c.mqtt.client_id
        return f"recp-detect-{c.instance}-p{part.index}of{part.count}"

    def site(self, site: str) -> SiteSettings:
        return self.config.sites.get(site) or SiteSettings()


def check_analytics(path: str | Path) -> Analytics:
    """Validate an analytics file without touching secrets or the network (config check)."""
    return load_indexed(Analytics, path)[0]


def load_analytics(path: str | Path, *, mqtt_url: str | None = None,
                   influx_url: str | None = None,
                   partition: tuple[int, int] | None = None) -> AnalyticsSpec:
    """Read and validate an analytics file; resolve environment and secrets.

    ``partition`` (index, count) overrides ``processing.partition`` (``--partition``).
    """
    cfg, _ = load_indexed(Analytics, path)
    file = Path(path)
    if partition is not None:
        index, count = partition
        if not 0 <= index < count:
            raise ConfigError([Problem(str(file), None, "processing.partition",
                                       f"partition {index}/{count}: index must be in "
                                       f"0..{count - 1}")])
        proc = cfg.processing.model_copy(update={"partition": Partition(index=index,
                                                                         count=count)})
        cfg = cfg.model_copy(update={"processing": proc})
    m, i = cfg.mqtt, cfg.influx
    if influx_url or os.environ.get("RECP_INFLUX_URL"):
        try:
            Influx._url(influx_url or os.environ.get("RECP_INFLUX_URL", ""))
        except ValueError as exc:
            raise ConfigError([Problem("--influx" if influx_url else "RECP_INFLUX_URL", None,
                                       "", str(exc))]) from None
        given = influx_url or os.environ.get("RECP_INFLUX_URL", "")
        store = store_path(given)
        if store is not None and not store.is_absolute():
            # a store named on the command line or in the environment is relative to the
            # working directory (one in the file, to the file)
            given = f"sqlite:{Path.cwd() / store}"
        influx_url = given
    url = mqtt_url or os.environ.get("RECP_MQTT_URL") or m.url
    if mqtt_url or os.environ.get("RECP_MQTT_URL"):
        Mqtt._url(url)  # same check as the file's
        # the model then names the broker actually used (host, port, TLS)
        cfg = cfg.model_copy(update={"mqtt": m.model_copy(update={"url": url})})
    password = os.environ.get("RECP_MQTT_PASSWORD") or _secret(m.password_env,
                                                               m.password_file, file)
    token = os.environ.get("RECP_INFLUX_TOKEN") or _secret(i.token_env, i.token_file, file)
    g = cfg.grafana
    grafana_token = None
    if g is not None:
        grafana_token = os.environ.get("RECP_GRAFANA_TOKEN") or _secret(
            g.token_env, g.token_file, file)
        if not grafana_token:
            raise ConfigError([Problem(str(file), None, "grafana", "no token: set "
                                       "grafana.token_env or grafana.token_file (or "
                                       "RECP_GRAFANA_TOKEN)")])
    return AnalyticsSpec(
        config=cfg,
        file=str(file),
        mqtt_url=url,
        mqtt_username=os.environ.get("RECP_MQTT_USERNAME") or m.username,
        mqtt_password=password,
        influx_url=influx_url or os.environ.get("RECP_INFLUX_URL") or i.url,
        influx_token=token,
        grafana_token=grafana_token,
    )
