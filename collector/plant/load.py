"""Read a plant file and the profiles it names, checking what only the pair can tell."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..configfile import ConfigError, Problem, load_indexed
from ..profiles import Profile, ResolvedPoint, resolve_profiles
from ..quantities import Resource
from ..site import CLOCK_POINTS
from .config import LossType, Plant
from .meters import primary_counter


@dataclass(frozen=True)
class PlantSpec:
    """A validated plant with the profile of every meter."""

    plant: Plant
    profiles: dict[str, Profile]  # by meter id
    file: str
    clock_profile: Profile | None = None  # the time source's, when the plant serves one


CONSUMING = (Resource.ELECTRICITY, Resource.WATER, Resource.STEAM)


def check_plant(plant: Plant, profiles: dict[str, Profile], file: str, index: dict) -> None:
    """Cross-checks between the plant file and its profiles."""
    problems: list[Problem] = []
    by_id = {m.id: m for m in plant.meters}
    primaries: dict[str, ResolvedPoint | None] = {}
    for i, m in enumerate(plant.meters):
        try:
            primaries[m.id] = primary_counter(m, profiles[m.id], file)
        except ConfigError as exc:
            primaries[m.id] = None
            for p in exc.problems:
                problems.append(Problem(file, index.get(("meters", i, "profile")),
                                        f"meters[{i}].profile", p.message))
    for i, loss in enumerate(plant.losses):
        meter = by_id[loss.meter]
        profile = profiles[meter.id]
        line = index.get(("losses", i))
        if loss.type not in (LossType.DROPOUT, LossType.EXCEPTION, LossType.STUCK) and (
            profile.resource not in CONSUMING
            and not (profile.resource is Resource.PRODUCTION and loss.type in
                     (LossType.ROLLOVER, LossType.RESET))
        ):
            problems.append(Problem(file, line, f"losses[{i}].type",
                                    f"{loss.type.value} cannot apply to {meter.id}, a "
                                    f"{profile.resource.value} meter"))
        if loss.type is LossType.ROLLOVER:
            point = primaries[meter.id]
            if point is None or point.rollover is None:
                stored = getattr(point.type, "value", point.type) if point else "nothing"
                problems.append(Problem(
                    file, line, f"losses[{i}]",
                    f"the counter of {meter.id} ({profile.model}) is stored as "
                    f"{stored} and never rolls over; "
                    "pick a meter whose profile has an unsigned integer counter"))
        if loss.type is LossType.DRIFT and loss.end is None:
            problems.append(Problem(file, line, f"losses[{i}].end",
                                    "drift needs an end (when the extra reaches its fraction)"))
    if problems:
        raise ConfigError(problems)


def load_plant(path: str | Path) -> PlantSpec:
    """Read, validate and cross-check a plant file; raise ConfigError listing every problem."""
    path = Path(path)
    plant, index = load_indexed(Plant, path)
    profiles = resolve_profiles(
        {f"meters[{i}]": m.profile for i, m in enumerate(plant.meters)}, path, index=index
    )
    by_meter = {m.id: profiles[f"meters[{i}]"] for i, m in enumerate(plant.meters)}
    check_plant(plant, by_meter, str(path), index)
    clock = None
    if plant.clock is not None:
        clock = resolve_profiles({"clock": plant.clock.profile}, path, index=index)["clock"]
        missing = CLOCK_POINTS - {p.name for p in clock.points}
        if missing:
            raise ConfigError([Problem(str(path), index.get(("clock", "profile")),
                                       "clock.profile",
                                       f"{plant.clock.profile} has no {', '.join(sorted(missing))}"
                                       ": use a time source profile such as recp_clock")])
    return PlantSpec(plant, by_meter, str(path), clock)
