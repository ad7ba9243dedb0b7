"""The demo's verdict: the losses the service found against the losses the plant injected.

An event found matches an injected loss when it is on the same meter, of a type that
loss shows as (a leak, a failed steam trap or a base-load rise: any loss type; see
``SHOWN_AS``), and was raised while the loss ran (up to a day after it ended). Loss
events that match nothing are false alarms; stuck meters, gaps and resets are
data-quality events, not alarms.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

SLACK_S = 86400.0
LOSS_EVENT_TYPES = {"spike", "base_load_rise", "level_shift", "drift", "overspend"}
# a lasting extra flow is a loss event of any type (the service names it by the detector
# that saw it first: a step is a level shift, a base-load rise, overspend, or while it is
# new a long "spike"); short bursts and fouling have their own
SHOWN_AS: dict[str, set[str]] = {
    "leak": LOSS_EVENT_TYPES,
    "base_load_rise": LOSS_EVENT_TYPES,
    "steam_trap": LOSS_EVENT_TYPES,
    "drift": {"drift", "overspend"},
    "overspend": {"overspend", "drift"},
    "spikes": {"spike", "overspend"},
}
# the demo's agreed false-alarm rate: at most one false loss event per meter and month
FALSE_PER_METER_MONTH = 1.0


def _t(text: str | None) -> float | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _raised(e: dict[str, Any]) -> float:
    """When the event was raised (simulated time of the newest reading when its alert
    came), or else its start."""
    raised = e.get("raised_s")
    return float(raised) if raised is not None else float(e["start_s"])


def _day(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%m-%d %H:%M")


@dataclass
class Match:
    truth: dict[str, Any]
    found: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best(self) -> dict[str, Any] | None:
        """The matched event that names the most money (or excess)."""
        if not self.found:
            return None
        return max(self.found, key=lambda e: (e.get("cost") or 0.0, e.get("excess") or 0.0))


@dataclass
class Verdict:
    matches: list[Match]
    false_alarms: list[dict[str, Any]]
    meters: int
    days: float

    @property
    def found_all(self) -> bool:
        return all(m.found for m in self.matches)

    @property
    def false_limit(self) -> int:
        return int(FALSE_PER_METER_MONTH * self.meters * max(self.days, 1.0) / 30.0)

    @property
    def ok(self) -> bool:
        return self.found_all and len(self.false_alarms) <= self.false_limit

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "found_all": self.found_all, "meters": self.meters,
            "days": round(self.days, 3), "false_alarms": self.false_alarms,
            "false_alarm_limit": self.false_limit,
            "losses": [{"truth": m.truth, "found": m.found} for m in self.matches],
        }  # fmt: skip


def judge(truth: list[dict[str, Any]], events: list[dict[str, Any]], *, now_s: float,
          meters: int, days: float, since_s: float | None = None,
          consumption: set[str] | None = None) -> Verdict:
    """Match found events (``recp.demo`` event dicts, times in epoch s) with the truth.

    Only events from ``since_s`` on (the live part; before it the detectors learn from
    the history) and on ``consumption`` meters (not the production counter) are judged.
    """
    events = [e for e in events if (since_s is None or _raised(e) >= since_s)
              and (consumption is None or e["meter"] in consumption)]
    used: set[int] = set()
    matches = []
    for t in truth:
        kinds = SHOWN_AS.get(t.get("type", ""))
        if not kinds:
            continue
        # found: raised while the loss ran (or a day after it ended), and still open
        # when it began; the event's own start may lie earlier (a CUSUM dates a step
        # from where it began to climb)
        start = _t(t.get("start")) or now_s
        hi = (_t(t.get("end")) or now_s) + SLACK_S
        m = Match(t)
        for i, e in enumerate(events):
            end = e.get("end_s") or now_s
            if e["meter"] == t["meter"] and e["type"] in kinds \
                    and start <= _raised(e) <= hi and end >= start:
                m.found.append(e)
                used.add(i)
        matches.append(m)
    false = [e for i, e in enumerate(events) if i not in used and e["type"] in LOSS_EVENT_TYPES]
    return Verdict(matches, false, meters, days)


def format_verdict(v: Verdict, currency: str = "EUR") -> list[str]:
    lines = [f"Losses injected into the plant, and what the detector service found "
             f"({v.days:.0f} simulated days, {v.meters} meters):"]
    for m in v.matches:
        t = m.truth
        unit = t.get("unit", "")
        cost = t.get("cost")
        truth_text = (f"{t['meter']:<18} {t['type']:<15} from {_day(_t(t.get('start')))}"
                      f"  injected {t.get('excess', 0):,.4g} {unit}"
                      + ("" if cost is None else f", {cost:,.0f} {currency}"))
        b = m.best
        if b is None:
            lines.append(f"  MISSED {truth_text}")
            continue
        found_cost = b.get("cost")
        lines.append(f"  found  {truth_text}")
        lines.append(f"         as {b['type']} from {_day(b['start_s'])}"
                     + ("" if b.get("end_s") is None else f" to {_day(b['end_s'])}")
                     + ("" if b.get("raised_s") is None else f", raised {_day(b['raised_s'])}")
                     + f": {b.get('excess') or 0:,.4g} {b.get('unit', '')}"
                     + ("" if found_cost is None else f", {found_cost:,.0f} {currency}")
                     + (f"  (+{len(m.found) - 1} more event(s))" if len(m.found) > 1 else ""))
    found = sum(1 for m in v.matches if m.found)
    lines.append(f"Found {found} of {len(v.matches)} injected losses; false alarms: "
                 f"{len(v.false_alarms)} (agreed limit {v.false_limit}: "
                 f"{FALSE_PER_METER_MONTH:g} per meter and month).")
    for e in v.false_alarms:
        lines.append(f"  false alarm: {e['meter']} {e['type']} from {_day(e['start_s'])}, "
                     f"raised {_day(_raised(e))}")
    return lines


def events_from_alerts(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events from the alerts seen on MQTT (their excess as of the last alert)."""
    out = []
    for a in alerts:
        out.append({
            "id": a.get("id", ""), "site": a.get("site", ""), "meter": a.get("meter", ""),
            "resource": a.get("resource", ""), "type": a.get("type", ""),
            "severity": a.get("severity", ""), "unit": a.get("unit", ""),
            "start_s": _t(a.get("start")) or 0.0, "end_s": _t(a.get("end")),
            "open": a.get("event") == "open", "excess": a.get("excess"),
            "cost": a.get("cost"), "co2_kg": a.get("co2_kg"), "score": a.get("score"),
            "explanation": a.get("explanation", ""),
        })  # fmt: skip
    return out
