"""paho-mqtt's MQTT 5 ``Properties`` built from shared lookup tables.

paho builds, in every ``Properties.__init__``, its three lookup tables (7 type names, 27
property names, 27 property ids with their type and packet kinds) afresh, each attribute
through its own checking ``__setattr__``: once per PUBLISH decoded and once per
acknowledgement. Profiled under ``benchmarks/bench_detect.py`` that was a quarter of
``recp detect``'s CPU per reading (docs/detector-service.md, Performance). The tables are
constants that paho only reads, so :func:`install` makes every instance share one copy.

It touches paho internals, so it checks them first: if a ``Properties`` instance holds
anything but ``packetType``, ``types``, ``names`` and ``properties`` (another paho
version), it leaves paho alone and returns False.
"""

from __future__ import annotations

from typing import Any

_EXPECTED = {"packetType", "types", "names", "properties"}


def install() -> bool:
    """Make paho's ``Properties.__init__`` share its tables; True when in place."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    if getattr(Properties.__init__, "_recp_shared", False):
        return True
    probe = Properties(PacketTypes.PUBLISH)
    if set(vars(probe)) != _EXPECTED:
        return False
    types, names, table = probe.types, probe.names, probe.properties
    setter = object.__setattr__

    def __init__(self: Any, packetType: int) -> None:
        setter(self, "packetType", packetType)
        setter(self, "types", types)
        setter(self, "names", names)
        setter(self, "properties", table)

    __init__._recp_shared = True  # type: ignore[attr-defined]
    Properties.__init__ = __init__  # type: ignore[method-assign]
    return True
