"""Device profiles: a meter model's register map, so nobody maps registers by hand.

A profile is a YAML file in ``edge_config/profiles/`` (``kind: profile``). Each point names
a quantity from :mod:`collector.quantities`, where its registers are, how to decode them,
and how raw numbers scale into the quantity's unit. The edge agent reads meters through
profiles and the virtual plant serves meters through the same profiles, so the two agree.

Addresses are protocol addresses, counted from 0 (register "30001" or "40001" in a
manual is address 0 of the input or holding table).
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from . import quantities
from .configfile import ConfigError, Problem, Strict, load
from .modbus.decode import DataType, WordOrder
from .quantities import Kind, Resource


class Table(str, Enum):
    """The four Modbus data tables (read function codes 3, 4, 1, 2)."""

    HOLDING = "holding"
    INPUT = "input"
    COIL = "coil"
    DISCRETE = "discrete"

    @property
    def is_bits(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE)

    @property
    def function_code(self) -> int:
        return {"holding": 3, "input": 4, "coil": 1, "discrete": 2}[self.value]


PointType = DataType | Literal["bool"]


class PointDefaults(Strict):
    """Values a point takes when it does not say otherwise."""

    table: Table = Table.HOLDING
    type: PointType = DataType.FLOAT32
    order: WordOrder = WordOrder.ABCD


class Point(Strict):
    """One value of a device: where it lives and how to read it."""

    name: str = Field(description="quantity name with its unit, e.g. energy_kwh")
    address: int = Field(ge=0, le=65535, description="protocol address, counted from 0")
    table: Table | None = None
    type: PointType | None = None
    order: WordOrder | None = None
    scale: float = Field(1.0, description="value = raw * scale + offset")
    offset: float = 0.0
    counter_max: float | None = Field(
        None, gt=0, description="value at which a counter rolls over to 0 (default: its type)"
    )
    description: str = ""

    @field_validator("name")
    @classmethod
    def _known_quantity(cls, name: str) -> str:
        try:
            quantities.get(name)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        return name

    @field_validator("scale")
    @classmethod
    def _nonzero_scale(cls, scale: float) -> float:
        if scale == 0:
            raise ValueError("scale must not be 0")
        return scale

    @property
    def quantity(self) -> quantities.Quantity:
        return quantities.get(self.name)

    @property
    def kind(self) -> Kind:
        return self.quantity.kind

    @property
    def unit(self) -> str:
        return self.quantity.unit


class ResolvedPoint(Strict):
    """A point with the profile's defaults filled in: what poller and plant use."""

    name: str
    address: int
    table: Table
    type: PointType
    order: WordOrder
    scale: float
    offset: float
    counter_max: float | None

    @property
    def registers(self) -> int:
        """Registers (or bits, for coils and discrete inputs) the point occupies."""
        return 1 if self.type == "bool" else DataType(self.type).registers

    @property
    def kind(self) -> Kind:
        return quantities.get(self.name).kind

    @property
    def unit(self) -> str:
        return quantities.get(self.name).unit

    @property
    def rollover(self) -> float | None:
        """Value at which the counter wraps to zero, in the point's unit (None: never)."""
        if self.kind is not Kind.COUNTER:
            return None
        if self.counter_max is not None:
            return self.counter_max
        if self.type == "bool" or DataType(self.type).is_float:
            return None
        lo, hi = DataType(self.type).raw_range
        if lo < 0:  # a signed counter wraps to negative numbers; treat the span as its range
            return None
        return (hi + 1) * abs(self.scale)

    def to_value(self, raw: int | float) -> float:
        """Raw register number -> value in the point's unit."""
        return raw * self.scale + self.offset

    def to_raw(self, value: float) -> int | float:
        """Value in the point's unit -> the raw number a device would store."""
        raw = (value - self.offset) / self.scale
        if self.type == "bool" or not DataType(self.type).is_float:
            return round(raw)
        return raw


class Profile(Strict):
    """A meter model's register map (``kind: profile``)."""

    kind: Literal["profile"]
    manufacturer: str
    model: str
    resource: Resource
    description: str = ""
    source: str = Field(description="the public register map this profile was laid out from")
    defaults: PointDefaults = PointDefaults()
    max_registers_per_request: int = Field(125, ge=1, le=125)
    points: list[Point] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_points(self) -> Profile:
        seen: set[str] = set()
        used: dict[tuple[Table, int], str] = {}
        for i, point in enumerate(self.resolved()):
            if point.name in seen:
                raise ValueError(f"points[{i}]: {point.name!r} appears twice")
            seen.add(point.name)
            if point.address + point.registers - 1 > 65535:
                raise ValueError(f"points[{i}] ({point.name}) runs past address 65535")
            if point.table.is_bits != (point.type == "bool"):
                want = "bool" if point.table.is_bits else "a register type such as float32"
                raise ValueError(
                    f"points[{i}] ({point.name}): the {point.table.value} table holds {want}, "
                    f"not {point.type}"
                )
            for reg in range(point.address, point.address + point.registers):
                other = used.get((point.table, reg))
                if other:
                    raise ValueError(
                        f"points[{i}] ({point.name}) overlaps {other} at {point.table.value} "
                        f"address {reg}"
                    )
                used[(point.table, reg)] = point.name
        return self

    def resolved(self) -> list[ResolvedPoint]:
        """Every point with defaults applied."""
        d = self.defaults
        return [
            ResolvedPoint(
                name=p.name,
                address=p.address,
                table=p.table or d.table,
                type=p.type or d.type,
                order=p.order or d.order,
                scale=p.scale,
                offset=p.offset,
                counter_max=p.counter_max,
            )
            for p in self.points
        ]


def _parse_path(key: str) -> tuple[int | str, ...]:
    """``meters[3]`` -> ``("meters", 3)`` (the inverse of configfile.format_path)."""
    parts: list[int | str] = []
    for piece in key.replace("]", "").split("."):
        name, *indices = piece.split("[")
        if name:
            parts.append(name)
        parts.extend(int(i) for i in indices)
    return tuple(parts)


def profile_dirs(config_file: Path | None = None) -> list[Path]:
    """Where profiles are looked up, in order.

    ``$RECP_PROFILES`` (``:``-separated), then ``profiles/`` beside and one level above the
    configuration file, then the shipped ones: ``edge_config/profiles``, which an installed
    package carries as ``collector/shipped_profiles`` (in the source tree a link to it).
    """
    dirs: list[Path] = []
    env = os.environ.get("RECP_PROFILES")
    if env:
        dirs.extend(Path(p) for p in env.split(os.pathsep) if p)
    if config_file is not None:
        here = config_file.resolve().parent
        dirs += [here / "profiles", here.parent / "profiles"]
    dirs.append((Path(__file__).resolve().parent / "shipped_profiles").resolve())
    unique: list[Path] = []
    for d in dirs:
        if d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


def find_profile(name: str, config_file: Path | None = None) -> Path:
    """Path of the profile called ``name`` (a file stem) or an explicit path."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml"):
        base = config_file.resolve().parent if config_file else Path.cwd()
        path = candidate if candidate.is_absolute() else base / candidate
        if path.is_file():
            return path
    for d in profile_dirs(config_file):
        for suffix in (".yaml", ".yml"):
            path = d / f"{name}{suffix}"
            if path.is_file():
                return path
    searched = ", ".join(str(d) for d in profile_dirs(config_file))
    raise FileNotFoundError(f"no profile named {name!r} (searched {searched})")


def load_profile(path: str | Path) -> Profile:
    """Read and validate one profile file."""
    return load(Profile, path)


def available_profiles(config_file: Path | None = None) -> dict[str, Path]:
    """Every profile name that can be found, with its file."""
    found: dict[str, Path] = {}
    for d in reversed(profile_dirs(config_file)):
        if d.is_dir():
            for path in sorted(d.glob("*.y*ml")):
                found[path.stem] = path
    return dict(sorted(found.items()))


def resolve_profiles(
    names: dict[str, str], config_file: Path, field: str = "profile", index: dict | None = None
) -> dict[str, Profile]:
    """Load the profile each key refers to; report every missing or bad one at once.

    Keys are field paths such as ``meters[3]``; with the file's line ``index`` the problems
    name the line of ``meters[3].profile``.
    """
    problems: list[Problem] = []
    loaded: dict[str, Profile] = {}
    cache: dict[Path, Profile] = {}
    for key, name in names.items():
        try:
            path = find_profile(name, config_file)
        except FileNotFoundError as exc:
            known = ", ".join(available_profiles(config_file)) or "none"
            line = (index or {}).get((*_parse_path(key), field))
            problems.append(
                Problem(str(config_file), line, f"{key}.{field}", f"{exc}; known: {known}")
            )
            continue
        if path not in cache:
            try:
                cache[path] = load_profile(path)
            except ConfigError as exc:
                problems.extend(exc.problems)
                continue
        loaded[key] = cache[path]
    if problems:
        raise ConfigError(problems)
    return loaded
