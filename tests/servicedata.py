"""Synthetic readings for the detector service's tests: two electricity meters of site dairy.

``m1`` and ``m2`` draw a base load plus 60 kW from 06:00 to 18:00 UTC; ``m1`` has one
half-hour spike of 400 kW on the fourth day at 10:00. Readings every five minutes from
2026-01-01, as the agent would publish them (contract v1, one stream).
"""

from __future__ import annotations

from collector import contract

T0 = 1767225600  # 2026-01-01T00:00Z
STEP = 300
DAY = 86400
# the service's session may queue a backlog; no database save after every message
BROKER_CONF = "max_queued_messages 0\nautosave_on_changes false\nautosave_interval 30\n"


def rate_kw(meter: str, t: int) -> float:
    """The load of ``meter`` at epoch second ``t``."""
    h = (t % DAY) / 3600
    base = (20.0 if meter == "m1" else 5.0) + (60.0 if 6 <= h < 18 else 0.0)
    if meter == "m1" and 3 * DAY + 10 * 3600 <= t - T0 < 3 * DAY + 10 * 3600 + 1800:
        base += 400.0
    return base


def readings(meter: str, days: float) -> list[tuple[str, bytes]]:
    """(topic, payload) of every reading of ``meter`` over ``days`` from T0."""
    out, e, t, seq = [], 1000.0, T0, 1
    while t < T0 + days * DAY:
        payload = contract.reading_payload(
            site="dairy", meter=meter, resource="electricity", stream="st1", seq=seq, ts=t,
            quality=contract.Quality.OK,
            values={"energy_kwh": round(e, 3), "power_kw": rate_kw(meter, t)},
        )
        out.append((contract.reading_topic("dairy", meter), contract.dumps(payload)))
        e += rate_kw(meter, t) * STEP / 3600
        t += STEP
        seq += 1
    return out
