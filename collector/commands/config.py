"""``recp config check FILE...``: validate any recp-monitor configuration file."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..configfile import Problem

NAME = "config"
HELP = "check configuration files (plants, profiles, sites, ...)"
DESCRIPTION = """\
Validate configuration files without starting anything. Every file says what it is in its
first key, kind: (plant, profile, ...). Each problem is printed as FILE:LINE: field: what was
expected; the exit status is 2 when any file has a problem.

example:
  recp config check edge_config/plants/demo.yaml edge_config/profiles/*.yaml
"""

# kind -> "module:function" taking a path and returning the loaded object; imported lazily
LOADERS: dict[str, str] = {
    "analytics": "detectors.service.config:check_analytics",
    "plant": "collector.plant.load:load_plant",
    "profile": "collector.profiles:load_profile",
    "site": "collector.site:load_site",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="validate files and report every problem")
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")


def loader_for(kind: str) -> Callable[[Path], Any]:
    module, func = LOADERS[kind].split(":")
    loader: Callable[[Path], Any] = getattr(importlib.import_module(module), func)
    return loader


def check_file(path: Path) -> Any:
    """Load ``path`` with the loader its ``kind`` names; raise ConfigError otherwise."""
    from ..configfile import ConfigError, Problem, load_yaml  # pydantic: not for --help

    data, index = load_yaml(path)
    kinds = ", ".join(sorted(LOADERS))
    if not isinstance(data, dict) or "kind" not in data:
        raise ConfigError(
            [Problem(str(path), 1, "kind", f"required field is missing (one of: {kinds})")]
        )
    kind = data["kind"]
    if not isinstance(kind, str) or kind not in LOADERS:
        raise ConfigError(
            [Problem(str(path), index.get(("kind",)), "kind", f"unknown kind {kind!r}; "
                     f"expected one of: {kinds}")]
        )
    return loader_for(kind)(path)


def summary(obj: Any) -> str:
    plant = getattr(obj, "plant", None)
    if plant is not None:
        return f"plant {plant.name}: {len(plant.meters)} meters, {len(plant.losses)} losses"
    if getattr(obj, "kind", None) == "profile":
        return f"profile {obj.manufacturer} {obj.model}: {len(obj.points)} points"
    return type(obj).__name__


def run(args: argparse.Namespace) -> int:
    from ..configfile import ConfigError

    problems: list[Problem] = []
    for path in args.files:
        try:
            obj = check_file(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        print(f"ok    {path}  ({summary(obj)})")
    if problems:
        raise ConfigError(problems)
    return 0
