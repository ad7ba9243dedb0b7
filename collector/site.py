"""Site configuration (``kind: site``): which meters an edge agent polls, and where it publishes.

Validated once at start-up, without any network call; every problem is reported with its
file and line. Secrets are never required inline: the broker password comes from an
environment variable or a file (an inline ``password:`` is refused). Precedence, highest
first: command-line flags, environment (``RECP_MQTT_URL``, ``RECP_MQTT_USERNAME``,
``RECP_MQTT_PASSWORD``), the site file, the defaults below.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from .configfile import (
    ConfigError,
    Problem,
    Strict,
    load_yaml,
    mqtt_protocol,
    mqtt_url,
    no_inline_secret,
    validate,
)
from .contract import check_id
from .profiles import Profile, ResolvedPoint, find_profile, resolve_profiles

CLOCK_POINTS = frozenset({"clock_unix_ms", "clock_rate"})  # what a time source must serve
BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


class TcpConnection(Strict):
    """Modbus TCP: a meter or a gateway port (several unit ids behind one port)."""

    type: Literal["tcp"]
    host: str = Field(min_length=1)
    port: int = Field(502, ge=1, le=65535)

    @property
    def key(self) -> tuple[str, ...]:
        return ("tcp", self.host, str(self.port))

    def __str__(self) -> str:
        return f"tcp://{self.host}:{self.port}"


class RtuOverTcpConnection(Strict):
    """RTU frames (with CRC) tunnelled through a transparent serial-to-Ethernet gateway."""

    type: Literal["rtu_over_tcp"]
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)

    @property
    def key(self) -> tuple[str, ...]:
        return ("rtu_over_tcp", self.host, str(self.port))

    def __str__(self) -> str:
        return f"rtu+tcp://{self.host}:{self.port}"


class RtuConnection(Strict):
    """Modbus RTU on a local serial port (RS485 adapter)."""

    type: Literal["rtu"]
    device: str = Field(min_length=1, description="e.g. /dev/ttyUSB0 or /dev/serial/by-id/...")
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8

    @field_validator("baudrate")
    @classmethod
    def _standard_rate(cls, rate: int) -> int:
        if rate not in BAUDRATES:
            raise ValueError(f"baudrate must be one of {', '.join(map(str, BAUDRATES))}")
        return rate

    @property
    def key(self) -> tuple[str, ...]:
        return ("rtu", self.device)

    @property
    def frame_gap_s(self) -> float:
        """Silent interval between frames: 3.5 characters of 11 bits, 1.75 ms above 19200."""
        return 0.00175 if self.baudrate > 19200 else 3.5 * 11 / self.baudrate

    def __str__(self) -> str:
        return f"rtu://{self.device}@{self.baudrate}{self.parity}{self.stopbits}"


Connection = Annotated[
    TcpConnection | RtuOverTcpConnection | RtuConnection, Field(discriminator="type")
]


class Polling(Strict):
    """How meters are polled; every meter may override the first five."""

    interval_s: float = Field(10.0, ge=0.05, le=86400, description="time between polls")
    timeout_s: float = Field(1.0, gt=0, le=60, description="wait for one answer")
    retries: int = Field(1, ge=0, le=5, description="extra tries of a request that timed out")
    retry_backoff_s: float = Field(0.05, ge=0, le=10, description="pause before a retry")
    max_gap_registers: int = Field(
        10, ge=0, le=124, description="unused registers a request may read through"
    )
    offline_after: int = Field(
        3, ge=1, description="failed polls in a row after which a device is backed off"
    )
    offline_backoff_max_s: float = Field(
        300.0, gt=0, description="longest wait between probes of an offline device"
    )
    reconnect_delay_s: float = Field(0.5, gt=0, description="first wait before reconnecting")
    reconnect_delay_max_s: float = Field(60.0, gt=0, description="longest wait (jittered)")


class Meter(Strict):
    """One metering device."""

    id: str
    name: str = ""
    profile: str = Field(description="a profile name from edge_config/profiles, or a path")
    connection: Connection
    unit_id: int = Field(1, ge=0, le=255, description="Modbus unit (slave) id")
    points: list[str] | None = Field(None, description="publish only these (default: all)")
    interval_s: float | None = Field(None, ge=0.05, le=86400)
    timeout_s: float | None = Field(None, gt=0, le=60)
    retries: int | None = Field(None, ge=0, le=5)
    max_gap_registers: int | None = Field(None, ge=0, le=124)
    price_per_unit: float | None = Field(None, ge=0, description="cost of one unit of the "
                                         "meter's main counter, in currency")
    currency: str | None = None
    co2_kg_per_unit: float | None = Field(None, ge=0)
    tags: dict[str, str | float | int | bool] = Field(default_factory=dict)
    function_code: int | None = Field(
        None, description="not accepted: the agent only reads, with the profile's tables")

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return check_id(value, "meter id")

    @field_validator("function_code", mode="before")
    @classmethod
    def _read_only(cls, value: Any) -> None:
        if value is not None:
            raise ValueError(
                "the agent only reads (function codes 1-4, chosen by the profile's tables); "
                "meters are never written to"
            )
        return None


class Tls(Strict):
    """TLS to the broker. The server certificate is always verified unless told otherwise."""

    ca_file: Path | None = Field(None, description="CA bundle (default: the system's)")
    cert_file: Path | None = Field(None, description="client certificate (mutual TLS)")
    key_file: Path | None = None
    insecure_skip_verify: bool = Field(
        False, description="accept any server certificate (testing only; logged loudly)"
    )

    @model_validator(mode="after")
    def _pair(self) -> Tls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class Broker(Strict):
    """An MQTT broker and how to connect to it: what the agent and the service share."""

    url: str = Field("mqtt://127.0.0.1:1883", description="mqtt://host[:1883] or mqtts://host[:8883]")
    client_id: str | None = None
    username: str | None = None
    password: str | None = Field(None, description="not accepted: use password_env or _file")
    password_env: str | None = Field(None, description="environment variable with the password")
    password_file: Path | None = Field(None, description="file whose first line is the password")
    tls: Tls | None = Field(None, description="TLS settings (mqtts:// turns TLS on)")
    keepalive_s: int = Field(30, ge=5, le=3600)
    publish_timeout_s: float = Field(10.0, gt=0)
    connect_timeout_s: float = Field(10.0, gt=0)
    reconnect_delay_s: float = Field(0.5, gt=0)
    reconnect_delay_max_s: float = Field(30.0, gt=0)
    protocol: str = Field("5", description="MQTT protocol: 5, or 3.1.1 for brokers "
                          "without MQTT 5 (no session expiry or receive maximum then)")

    @field_validator("password", mode="before")
    @classmethod
    def _no_inline_password(cls, value: Any) -> None:
        no_inline_secret(value, "password")
        return None

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        return mqtt_url(url)

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, value: Any) -> str:
        return mqtt_protocol(value)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def use_tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts" or self.tls is not None

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (8883 if self.use_tls else 1883)


class Batch(Strict):
    """Several readings of one meter per MQTT message (the ``readings`` topic)."""

    max_readings: int = Field(1, ge=1, le=500, description=(
        "readings of one meter packed into one message at most; 1: off, one reading per "
        "message on the reading topic"))
    max_wait_ms: float = Field(0, ge=0, le=60_000, description=(
        "how long a live reading may wait to be packed with the next ones; 0: only a "
        "backlog is packed"))

    @property
    def enabled(self) -> bool:
        return self.max_readings > 1


class Mqtt(Broker):
    """The broker and how readings are delivered to it."""

    client_id: str | None = Field(None, description="default: recp-agent-<site>")
    session_expiry_s: int = Field(86400, ge=0, description="broker keeps our session this long")
    confirm: Literal["puback", "consumer"] = Field(
        "puback", description="delete a reading on PUBACK, or on the consumer's ack topic"
    )
    max_inflight: int = Field(100, ge=1, le=65535, description="unacknowledged publishes")
    read_ahead: int = Field(200, ge=1, le=10000,
                            description="readings taken from the outbox at once")
    batch: Batch = Field(default_factory=Batch, description=(
        "several readings per message: {max_readings: 50, max_wait_ms: 1000}; off by default"))
    max_rate_per_s: float = Field(2000.0, gt=0, description="drain rate limit after an outage")
    publish_timeout_s: float = Field(10.0, gt=0, description="wait for a PUBACK")
    health_interval_s: float = Field(30.0, ge=1)

    @field_validator("batch", mode="before")
    @classmethod
    def _batch_was_a_number(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            raise ValueError(
                "is now {max_readings: N, max_wait_ms: MS} (several readings per "
                f"message); the readings taken from the outbox at once ({value}) are "
                "mqtt.read_ahead")
        return value


class OutboxSettings(Strict):
    path: Path = Field(Path("recp-outbox.sqlite"),
                       description="SQLite file (relative: beside the site file)")
    cap: int = Field(500_000, ge=100, description="readings kept at most; oldest dropped first")
    synchronous: Literal["FULL", "NORMAL"] = "FULL"


class ClockSettings(Strict):
    """Where readings' timestamps come from, and when they are trusted.

    ``source: system`` stamps readings with the system clock, trusted per ``require`` (a
    Raspberry Pi has no real-time clock). ``source: device`` stamps them with the time of
    a Modbus time source among the meters (a PLC's real-time clock, the virtual plant's
    clock; profile ``recp_clock``): its last read value plus the monotonic time elapsed
    since, times its rate. Either way a reading taken before the time can be trusted is
    held and re-timed once it can.
    """

    source: Literal["system", "device"] = Field(
        "system", description="system: the system clock; device: the meter named by device")
    device: str | None = Field(
        None, description="source: device: the id of the meter that is the time source")
    publish: bool = Field(
        False, description="also publish the time source's own readings as a meter")
    require: Literal["ntp", "plausible", "none"] = Field(
        "plausible",
        description="system clock: ntp: the kernel says the clock is synchronised; "
        "plausible: it is after not_before; none: always trust it",
    )
    not_before: dt.date = Field(
        dt.date(2025, 1, 1), description="a time before this date is not trusted")

    @model_validator(mode="after")
    def _device(self) -> ClockSettings:
        if self.source == "device" and not self.device:
            raise ValueError("source: device needs device: the id of the clock meter")
        if self.source == "system" and self.device:
            raise ValueError("device is only used with source: device")
        return self


class Site(Strict):
    """A site file (``kind: site``)."""

    kind: Literal["site"]
    site: str = Field(description="site id, used in MQTT topics")
    name: str = ""
    description: str = ""
    mqtt: Mqtt = Mqtt()
    outbox: OutboxSettings = OutboxSettings()
    polling: Polling = Polling()
    clock: ClockSettings = ClockSettings()
    meters: list[Meter] = Field(min_length=1)

    @field_validator("site")
    @classmethod
    def _id(cls, value: str) -> str:
        return check_id(value, "site id")


@dataclass(frozen=True)
class MeterSpec:
    """A meter with its profile resolved and the site's polling defaults applied."""

    meter: Meter
    profile_name: str
    profile: Profile
    points: list[ResolvedPoint]
    interval_s: float
    timeout_s: float
    retries: int
    max_gap_registers: int

    @property
    def id(self) -> str:
        return self.meter.id

    def tags(self) -> dict[str, str | float | int | bool]:
        out: dict[str, str | float | int | bool] = dict(self.meter.tags)
        m = self.meter
        for key, value in (("price_per_unit", m.price_per_unit), ("currency", m.currency),
                           ("co2_kg_per_unit", m.co2_kg_per_unit)):
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True)
class SiteSpec:
    """A validated site: the file's settings and every meter ready to poll."""

    site: Site
    meters: list[MeterSpec]
    file: str

    @property
    def clock_meter(self) -> MeterSpec | None:
        """The meter that is the time source (``clock.source: device``), if any."""
        if self.site.clock.source != "device":
            return None
        return next(m for m in self.meters if m.id == self.site.clock.device)

    @property
    def published(self) -> list[MeterSpec]:
        """The meters whose readings are published (the time source only if asked)."""
        clock = self.clock_meter
        if clock is None or self.site.clock.publish:
            return list(self.meters)
        return [m for m in self.meters if m is not clock]

    @property
    def outbox_path(self) -> Path:
        p = self.site.outbox.path
        return p if p.is_absolute() else Path(self.file).resolve().parent / p

    def __str__(self) -> str:
        return f"site {self.site.site}: {len(self.meters)} meters, broker {self.site.mqtt.url}"


def _cross_check(site: Site, profiles: dict[str, Profile], file: str, index: dict) -> None:
    problems: list[Problem] = []
    seen_ids: dict[str, int] = {}
    buses: dict[tuple[str, ...], tuple[int, Meter]] = {}
    units: dict[tuple[tuple[str, ...], int], int] = {}
    tcp_ports: dict[tuple[str, str], tuple[str, int]] = {}
    for i, m in enumerate(site.meters):
        where = index.get(("meters", i))
        if m.id in seen_ids:
            problems.append(Problem(file, where, f"meters[{i}].id",
                                    f"{m.id!r} is also meters[{seen_ids[m.id]}]"))
        seen_ids.setdefault(m.id, i)
        conn = m.connection
        key = conn.key
        first = buses.get(key)
        if first is not None and first[1].connection != conn:
            problems.append(Problem(
                file, index.get(("meters", i, "connection")), f"meters[{i}].connection",
                f"{conn.key[-1]} is shared with meters[{first[0]}] ({first[1].id}) but with "
                f"different settings ({first[1].connection} vs {conn})"))
        buses.setdefault(key, (i, m))
        if (key, m.unit_id) in units:
            problems.append(Problem(
                file, index.get(("meters", i, "unit_id")), f"meters[{i}].unit_id",
                f"unit id {m.unit_id} on {conn} is also meters[{units[(key, m.unit_id)]}]"))
        units.setdefault((key, m.unit_id), i)
        if not isinstance(conn, RtuConnection):
            other = tcp_ports.setdefault((conn.host, str(conn.port)), (conn.type, i))
            if other[0] != conn.type:
                problems.append(Problem(
                    file, index.get(("meters", i, "connection")), f"meters[{i}].connection",
                    f"{conn.host}:{conn.port} is {other[0]} for meters[{other[1]}]; one port "
                    "speaks one framing"))
        if isinstance(conn, RtuConnection) and not 1 <= m.unit_id <= 247:
            problems.append(Problem(file, index.get(("meters", i, "unit_id")),
                                    f"meters[{i}].unit_id", "RTU unit ids are 1..247"))
        profile = profiles.get(f"meters[{i}]")
        if profile is not None and m.points is not None:
            known = {p.name for p in profile.points}
            for j, name in enumerate(m.points):
                if name not in known:
                    problems.append(Problem(
                        file, index.get(("meters", i, "points", j)), f"meters[{i}].points[{j}]",
                        f"{name!r} is not in profile {m.profile} (it has: "
                        f"{', '.join(sorted(known))})"))
    clock = site.clock
    if clock.source == "device":
        where = index.get(("clock", "device"))
        found = [k for k, m in enumerate(site.meters) if m.id == clock.device]
        if not found:
            problems.append(Problem(file, where, "clock.device",
                                    f"no meter {clock.device!r}; meters: "
                                    f"{', '.join(m.id for m in site.meters)}"))
        else:
            i = found[0]
            profile = profiles.get(f"meters[{i}]")
            names = {p.name for p in profile.points} if profile is not None else set()
            if profile is not None and not names >= CLOCK_POINTS:
                problems.append(Problem(
                    file, where, "clock.device",
                    f"meter {clock.device!r} (profile {site.meters[i].profile}) has no "
                    f"{' and '.join(sorted(CLOCK_POINTS - names))}: use a time source "
                    "profile such as recp_clock"))
            wanted = site.meters[i].points
            if wanted is not None and not set(wanted) >= CLOCK_POINTS:
                problems.append(Problem(
                    file, index.get(("meters", i, "points")), f"meters[{i}].points",
                    f"the clock device must read {' and '.join(sorted(CLOCK_POINTS))}"))
    if problems:
        raise ConfigError(problems)


def load_site(path: str | Path) -> SiteSpec:
    """Read, validate and cross-check a site file and its profiles; raise ConfigError."""
    path = Path(path)
    data, index = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError([Problem(str(path), None, "", "expected a mapping with kind: site")])
    site = validate(Site, data, str(path), index)
    names = {f"meters[{i}]": m.profile for i, m in enumerate(site.meters)}
    profiles = resolve_profiles(names, path, index=index)
    _cross_check(site, profiles, str(path), index)
    polling = site.polling
    meters = []
    for i, m in enumerate(site.meters):
        profile = profiles[f"meters[{i}]"]
        points = profile.resolved()
        if m.points is not None:
            wanted = set(m.points)
            points = [p for p in points if p.name in wanted]
        meters.append(MeterSpec(
            meter=m,
            profile_name=find_profile(m.profile, path).stem,
            profile=profile,
            points=points,
            interval_s=m.interval_s if m.interval_s is not None else polling.interval_s,
            timeout_s=m.timeout_s if m.timeout_s is not None else polling.timeout_s,
            retries=m.retries if m.retries is not None else polling.retries,
            max_gap_registers=(m.max_gap_registers if m.max_gap_registers is not None
                               else polling.max_gap_registers),
        ))
    return SiteSpec(site, meters, str(path))


@dataclass(frozen=True)
class Credentials:
    username: str | None
    password: str | None


def credentials(
    mqtt: Mqtt, base: Path | None = None, environ: Mapping[str, str] | None = None
) -> Credentials:
    """Username and password, environment first, then the site file; raise ConfigError.

    A relative ``password_file`` is taken relative to ``base`` (the site file's folder).
    """
    env = os.environ if environ is None else environ
    username = env.get("RECP_MQTT_USERNAME") or mqtt.username
    password = env.get("RECP_MQTT_PASSWORD")
    if password is None and mqtt.password_env:
        password = env.get(mqtt.password_env)
        if password is None:
            raise ConfigError([Problem("environment", None, "mqtt.password_env",
                                       f"variable {mqtt.password_env} is not set")])
    if password is None and mqtt.password_file:
        pw_file = mqtt.password_file
        if base is not None and not pw_file.is_absolute():
            pw_file = base / pw_file
        try:
            lines = pw_file.read_text().splitlines()
        except OSError as exc:
            raise ConfigError([Problem(str(pw_file), None, "mqtt.password_file",
                                       f"cannot read: {exc.strerror}")]) from None
        password = lines[0] if lines else ""
    if password is not None and username is None:
        raise ConfigError([Problem("site", None, "mqtt.username",
                                   "a password is configured but no username")])
    return Credentials(username, password)


def broker_url(mqtt: Mqtt, flag: str | None = None, environ: Mapping[str, str] | None = None
               ) -> Mqtt:
    """``mqtt`` with its URL replaced by the flag or ``RECP_MQTT_URL`` when given."""
    env = os.environ if environ is None else environ
    url = flag or env.get("RECP_MQTT_URL")
    if not url:
        return mqtt
    try:
        return Mqtt.model_validate({**mqtt.model_dump(exclude_unset=True), "url": url})
    except ValueError as exc:
        raise ConfigError([Problem("command line", None, "mqtt.url", str(exc))]) from None
