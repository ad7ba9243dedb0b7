"""``recp profiles``: list the device profiles shipped, or show one's register map."""

from __future__ import annotations

import argparse

NAME = "profiles"
HELP = "list device profiles or show one's register map"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="profile to show (omit to list them all)")


def run(args: argparse.Namespace) -> int:
    from ..profiles import available_profiles, find_profile, load_profile  # pydantic: lazily

    if not args.name:
        for name, path in available_profiles().items():
            prof = load_profile(path)
            print(f"{name:40s} {prof.resource.value:12s} {prof.manufacturer} {prof.model}")
        return 0
    try:
        path = find_profile(args.name)
    except FileNotFoundError as exc:
        print(f"error: {exc}")
        return 2
    prof = load_profile(path)
    print(f"{prof.manufacturer} {prof.model} ({prof.resource.value})\nsource: {prof.source}\n")
    print(f"{'point':28s} {'table':9s} {'addr':>6s} {'type':8s} {'order':5s} {'scale':>8s} unit")
    for pt in prof.resolved():
        ptype = getattr(pt.type, "value", pt.type)
        print(
            f"{pt.name:28s} {pt.table.value:9s} {pt.address:6d} {ptype:8s} "
            f"{pt.order.value:5s} {pt.scale:8g} {pt.unit}"
        )
    return 0
