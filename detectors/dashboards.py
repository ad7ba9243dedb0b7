"""Grafana dashboards as code: plain dicts in Grafana's dashboard JSON model.

Four dashboards read what ``recp detect`` writes to InfluxDB (``docs/influx-schema.md``):

- ``recp-site-overview``: consumption per resource against the baseline, cost today against
  the baseline's cost, open alerts;
- ``recp-meter-detail``: one meter's consumption with the baseline's band, its anomaly scores,
  and its events as annotations;
- ``recp-losses``: events in the time range ranked by cost;
- ``recp-health``: the detector service's own metrics (``service``) and when each meter last
  reported (``meter_seen``).

Queries are Flux, for Grafana's InfluxDB datasource in Flux mode against InfluxDB 2 (the
compose stack's database); see ``docs/deploy.md`` for why, and for InfluxDB 3 and
VictoriaMetrics. :data:`INFLUX_SCHEMA` is the schema the queries may use; a test checks it
against the tables of ``docs/influx-schema.md`` and every query against it.

Plain dicts rather than grafana-foundation-sdk (still marked experimental): the JSON model is
what Grafana stores and what file provisioning loads, so the generated files are exactly what
``recp grafana export`` writes to ``deploy/grafana/dashboards/`` and a test keeps the committed
files equal to this module's output. Nothing here imports anything outside the standard
library.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

Json = dict[str, Any]

#: The measurements of ``docs/influx-schema.md``: tags and fields each may use. ``reading``'s
#: fields are every value name of a reading; the ones listed are the doc's examples.
INFLUX_SCHEMA: dict[str, dict[str, tuple[str, ...]]] = {
    "reading": {
        "tags": ("site", "meter", "resource"),
        "fields": ("energy_kwh", "power_kw", "flow_m3_h", "quality", "seq"),
    },
    "consumption": {
        "tags": ("site", "meter", "resource", "unit"),
        "fields": ("actual", "gap_estimate", "expected", "lower", "upper", "flags", "cost",
                   "co2_kg"),
    },
    "anomaly": {
        "tags": ("site", "meter", "detector"),
        "fields": ("score", "cusum", "step_per_h"),
    },
    "event": {
        "tags": ("site", "meter", "resource", "type", "severity", "unit", "event_id"),
        "fields": ("excess", "cost", "co2_kg", "open", "end_ts", "score", "explanation"),
    },
    "service": {
        "tags": ("instance",),
        "fields": ("readings_in_per_s", "points_out_per_s", "lag_s", "spool_depth",
                   "dead_letters", "open_events", "annotations_queued",
                   "annotation_failures"),
    },
    "meter_seen": {
        "tags": ("site", "meter"),
        "fields": ("last_seen_s", "age_s"),
    },
    "agent": {
        "tags": ("site",),
        "fields": ("devices_up", "devices_down", "outbox_depth", "outbox_held",
                   "outbox_dropped", "uptime_s", "clock_synced"),
    },
    "dropped": {
        "tags": ("site", "meter", "stream", "reason"),
        "fields": ("count", "through_seq", "missing"),
    },
}

#: The uid of the provisioned datasource (deploy/grafana/provisioning/datasources/recp.yaml);
#: ``recp grafana push --datasource-uid`` points the dashboards at another one.
DATASOURCE_UID = "recp-influxdb"
DEFAULT_BUCKET = "recp"
SCHEMA_VERSION = 39  # Grafana 10.4 / 11
TAGS = ["recp"]
FOLDER_TITLE = "RECP"
FOLDER_UID = "recp"

# events start at most this long before the range of an "open now" query
OPEN_EVENT_LOOKBACK = "-90d"
STALE_AFTER_S = 300  # a meter silent this long is shown red
INTERVAL = "15m"  # the detector service's default consumption interval


def datasource(uid: str = DATASOURCE_UID) -> Json:
    return {"type": "influxdb", "uid": uid}


# --------------------------------------------------------------------------- Flux


def _or(column: str, values: Sequence[str]) -> str:
    return " or ".join(f'r.{column} == "{v}"' for v in values)


def flux_from(measurement: str, fields: Sequence[str], *, where: Iterable[str] = (),
              start: str = "v.timeRangeStart", stop: str | None = "v.timeRangeStop") -> str:
    """The opening lines of every query: one bucket, one measurement, named fields.

    ``where`` are tag names compared with the dashboard variable of the same name
    (``r.site == "${site}"``).
    """
    if measurement not in INFLUX_SCHEMA:
        raise ValueError(f"unknown measurement {measurement!r}")
    known = INFLUX_SCHEMA[measurement]
    for f in fields:
        if f not in known["fields"]:
            raise ValueError(f"{measurement} has no field {f!r}")
    rng = f"start: {start}" + (f", stop: {stop}" if stop else "")
    lines = [
        'from(bucket: "${bucket}")',
        f"  |> range({rng})",
        f'  |> filter(fn: (r) => r._measurement == "{measurement}")',
    ]
    for tag in where:
        if tag not in known["tags"]:
            raise ValueError(f"{measurement} has no tag {tag!r}")
        lines.append(f'  |> filter(fn: (r) => r.{tag} == "${{{tag}}}")')
    lines.append(f"  |> filter(fn: (r) => {_or('_field', fields)})")
    return "\n".join(lines)


def pipe(*stages: str) -> str:
    return "".join(f"\n  |> {s}" for s in stages)


TODAY = "date.truncate(t: now(), unit: 1d)"
TODAY_IMPORTS = (
    'import "date"\nimport "timezone"\noption location = timezone.location(name: "${tz}")\n'
)
PIVOT = 'pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")'


def tag_values(tag: str, measurement: str, *, where: Iterable[str] = ()) -> str:
    """A variable's query: the values of ``tag`` in ``measurement`` over the last 30 days."""
    cond = [f'r._measurement == "{measurement}"'] + [f'r.{t} == "${{{t}}}"' for t in where]
    return (
        'import "influxdata/influxdb/schema"\n'
        f'schema.tagValues(bucket: "${{bucket}}", tag: "{tag}", '
        f"predicate: (r) => {' and '.join(cond)}, start: -30d)"
    )


# --------------------------------------------------------------------------- variables


def var_bucket() -> Json:
    return {"type": "constant", "name": "bucket", "label": "bucket", "hide": 2,
            "query": DEFAULT_BUCKET, "skipUrlSync": False}


def var_tz() -> Json:
    return {"type": "textbox", "name": "tz", "label": "time zone (IANA) for 'today'",
            "hide": 0, "query": "UTC",
            "current": {"selected": False, "text": "UTC", "value": "UTC"},
            "options": [{"selected": True, "text": "UTC", "value": "UTC"}]}


def var_query(name: str, query: str, *, label: str, multi: bool = False,
              include_all: bool = False) -> Json:
    return {
        "type": "query", "name": name, "label": label, "hide": 0,
        "datasource": datasource(), "query": query, "definition": query,
        "refresh": 2,  # on time range change
        "sort": 1, "multi": multi, "includeAll": include_all,
        "current": {}, "options": [], "regex": "", "skipUrlSync": False,
    }


def var_site() -> Json:
    return var_query("site", tag_values("site", "consumption"), label="site")


def var_meter() -> Json:
    return var_query("meter", tag_values("meter", "consumption", where=["site"]),
                     label="meter")


def var_resource() -> Json:
    v = var_query("resource", tag_values("resource", "consumption", where=["site"]),
                  label="resource", multi=True, include_all=True)
    v["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}  # a panel each
    return v


# --------------------------------------------------------------------------- panels


def target(query: str, ref: str = "A") -> Json:
    return {"refId": ref, "datasource": datasource(), "query": query}


def panel(kind: str, title: str, queries: Sequence[str], *, w: int, h: int,
          description: str = "", unit: str | None = None, decimals: int | None = None,
          thresholds: list[Json] | None = None, overrides: list[Json] | None = None,
          options: Json | None = None, custom: Json | None = None,
          no_value: str | None = None, extra: Json | None = None) -> Json:
    """A panel without ``id`` and ``gridPos`` (:func:`layout` sets them)."""
    defaults: Json = {"thresholds": {"mode": "absolute", "steps": thresholds or [
        {"color": "green", "value": None}]}}
    if unit:
        defaults["unit"] = unit
    if decimals is not None:
        defaults["decimals"] = decimals
    if custom:
        defaults["custom"] = custom
    if no_value is not None:
        defaults["noValue"] = no_value
    p: Json = {
        "type": kind, "title": title, "description": description,
        "datasource": datasource(),
        "targets": [target(q, chr(ord("A") + i)) for i, q in enumerate(queries)],
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": options or {},
        "_size": (w, h),
    }
    if extra:
        p.update(extra)
    return p


def stat(title: str, query: str, *, unit: str | None = None, description: str = "",
         w: int = 6, h: int = 4, thresholds: list[Json] | None = None,
         decimals: int | None = None, no_value: str = "0") -> Json:
    return panel("stat", title, [query], w=w, h=h, unit=unit, description=description,
                 thresholds=thresholds, decimals=decimals, no_value=no_value, options={
                     "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                     "colorMode": "value", "graphMode": "none", "textMode": "auto",
                     "justifyMode": "auto", "orientation": "auto"})


def timeseries(title: str, queries: Sequence[str], *, unit: str | None = None,
               description: str = "", w: int = 24, h: int = 8,
               overrides: list[Json] | None = None, draw: str = "line",
               min_interval: str | None = None, extra: Json | None = None) -> Json:
    if min_interval:  # the smallest v.windowPeriod Grafana may choose
        extra = {**(extra or {}), "interval": min_interval}
    custom = {"drawStyle": draw, "lineWidth": 1, "fillOpacity": 0, "showPoints": "never",
              "spanNulls": False, "axisPlacement": "auto"}
    return panel("timeseries", title, queries, w=w, h=h, unit=unit, description=description,
                 overrides=overrides, custom=custom, extra=extra, options={
                     "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                     "tooltip": {"mode": "multi", "sort": "none"}})


def table(title: str, query: str, *, description: str = "", w: int = 24, h: int = 8,
          overrides: list[Json] | None = None, sort_by: str | None = None,
          thresholds: list[Json] | None = None) -> Json:
    options: Json = {"showHeader": True, "cellHeight": "sm",
                     "footer": {"show": False, "reducer": ["sum"], "fields": ""}}
    if sort_by:
        options["sortBy"] = [{"displayName": sort_by, "desc": True}]
    return panel("table", title, [query], w=w, h=h, description=description,
                 overrides=overrides, thresholds=thresholds, options=options)


def bargauge(title: str, query: str, *, unit: str | None = None, description: str = "",
             w: int = 12, h: int = 8) -> Json:
    return panel("bargauge", title, [query], w=w, h=h, unit=unit, description=description,
                 options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                            "values": True},
                          "orientation": "horizontal", "displayMode": "gradient",
                          "showUnfilled": True})


def override(name: str, **props: Any) -> Json:
    return {"matcher": {"id": "byName", "options": name},
            "properties": [{"id": k.replace("__", "."), "value": v} for k, v in props.items()]}


def layout(panels: Sequence[Json]) -> list[Json]:
    """Number the panels and place them left to right, wrapping at Grafana's 24 columns."""
    out: list[Json] = []
    x = y = row_h = 0
    for i, p in enumerate(panels, start=1):
        q = {k: v for k, v in p.items() if k != "_size"}
        w, h = p["_size"]
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        q["id"] = i
        q["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        out.append(q)
        x += w
        row_h = max(row_h, h)
    return out


def dashboard(uid: str, title: str, description: str, panels: Sequence[Json],
              variables: Sequence[Json], *, annotations: Sequence[Json] = (),
              time_from: str = "now-7d", refresh: str = "1m") -> Json:
    builtin = {
        "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts", "type": "dashboard",
    }
    return {
        "uid": uid, "title": title, "description": description, "tags": list(TAGS),
        "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True,
        "timezone": "browser", "graphTooltip": 1, "refresh": refresh,
        "time": {"from": time_from, "to": "now"}, "timepicker": {},
        "fiscalYearStartMonth": 0, "liveNow": False,
        "links": [{"type": "dashboards", "tags": list(TAGS), "asDropdown": True,
                   "title": "RECP dashboards", "includeVars": True, "keepTime": True}],
        "annotations": {"list": [builtin, *annotations]},
        "templating": {"list": list(variables)},
        "panels": layout(panels),
    }


# --------------------------------------------------------------------------- site overview

_COST_NOTE = ("In the site's currency (the meters' price_per_unit). ")


def site_overview() -> Json:
    cost_today = (
        TODAY_IMPORTS
        + flux_from("consumption", ["cost"], where=["site"], start=TODAY, stop=None)
        + pipe("group()", "sum()")
    )
    baseline_cost_today = (
        TODAY_IMPORTS
        + flux_from("consumption", ["actual", "expected", "cost"], where=["site"],
                    start=TODAY, stop=None)
        + pipe(PIVOT,
               "filter(fn: (r) => exists r.actual and exists r.expected and exists r.cost"
               " and r.actual > 0.0)",
               "map(fn: (r) => ({r with _value: r.expected * r.cost / r.actual}))",
               "group()", 'sum(column: "_value")')
    )
    open_events = (
        flux_from("event", ["open", "cost"], where=["site"], start=OPEN_EVENT_LOOKBACK,
                  stop=None)
        + pipe("last()", PIVOT, "filter(fn: (r) => float(v: r.open) > 0.5)")
    )
    open_count = open_events + pipe("group()", 'count(column: "open")',
                                    'rename(columns: {open: "_value"})')
    open_cost = open_events + pipe("group()", 'sum(column: "cost")',
                                   'rename(columns: {cost: "_value"})')
    per_resource = (
        flux_from("consumption", ["actual", "expected"], where=["site", "resource"])
        + pipe('group(columns: ["_field", "unit"])',
               "aggregateWindow(every: v.windowPeriod, fn: sum, createEmpty: false)")
    )
    cost_by_resource = (
        TODAY_IMPORTS
        + flux_from("consumption", ["cost"], where=["site"], start=TODAY, stop=None)
        + pipe('group(columns: ["resource"])', "sum()",
               'keep(columns: ["resource", "_value"])', "group()")
    )
    open_table = (
        flux_from("event", ["open", "excess", "cost", "co2_kg"], where=["site"],
                  start=OPEN_EVENT_LOOKBACK, stop=None)
        + pipe("last()", PIVOT, "filter(fn: (r) => float(v: r.open) > 0.5)", "group()",
               'keep(columns: ["_time", "meter", "resource", "type", "severity", "excess",'
               ' "unit", "cost", "co2_kg"])',
               'sort(columns: ["cost"], desc: true)')
    )
    warn: list[Json] = [{"color": "green", "value": None}, {"color": "orange", "value": 1}]
    panels = [
        stat("Cost today", cost_today, unit="none", decimals=2,
             description=_COST_NOTE + "Sum of every meter's cost since midnight (${tz})."),
        stat("Baseline cost today", baseline_cost_today, unit="none", decimals=2,
             description=_COST_NOTE + "What the baselines expected since midnight, priced "
             "like the actual consumption (intervals with no consumption count as 0)."),
        stat("Open alerts", open_count, unit="none", decimals=0, thresholds=warn,
             description="Events still open (event.open = 1) that started within 90 days."),
        stat("Cost of open alerts", open_cost, unit="none", decimals=2,
             description=_COST_NOTE + "Excess cost of the open events so far."),
        timeseries(
            "Consumption: ${resource}", [per_resource], w=24, h=8,
            description="Actual consumption per interval against what the baselines "
            "expected, summed over the site's meters of this resource.",
            overrides=[override("expected", custom__lineStyle={"fill": "dash",
                                                               "dash": [10, 10]})],
            min_interval=INTERVAL,
            extra={"repeat": "resource", "repeatDirection": "h", "maxPerRow": 2},
        ),
        bargauge("Cost today by resource", cost_by_resource, unit="none", w=12),
        table("Open alerts", open_table, sort_by="cost", w=12,
              description="Open events, most expensive first. Details on the meter and "
              "losses dashboards.",
              overrides=[override("_time", displayName="start"),
                         override("cost", decimals=2), override("co2_kg", decimals=1),
                         override("excess", decimals=2)]),
    ]
    return dashboard(
        "recp-site-overview", "RECP · Site overview",
        "Consumption per resource against the baseline, cost today, open alerts.",
        panels, [var_bucket(), var_site(), var_resource(), var_tz()], time_from="now-2d")


# --------------------------------------------------------------------------- meter detail


def meter_detail() -> Json:
    band = (
        flux_from("consumption", ["actual", "expected", "lower", "upper"],
                  where=["site", "meter"])
        + pipe('keep(columns: ["_time", "_value", "_field"])')
    )
    cost = (
        flux_from("consumption", ["cost"], where=["site", "meter"])
        + pipe('keep(columns: ["_time", "_value", "_field"])',
               "aggregateWindow(every: v.windowPeriod, fn: sum, createEmpty: false)")
    )
    excess = (
        flux_from("consumption", ["actual", "expected"], where=["site", "meter"])
        + pipe(PIVOT, "filter(fn: (r) => exists r.actual and exists r.expected)",
               "map(fn: (r) => ({r with _value: r.actual - r.expected}))", "group()",
               'sum(column: "_value")')
    )
    scores = (
        flux_from("anomaly", ["score"], where=["site", "meter"])
        + pipe('group(columns: ["detector"])',
               "aggregateWindow(every: v.windowPeriod, fn: max, createEmpty: false)")
    )
    events = (
        flux_from("event", ["excess", "cost", "co2_kg", "open", "score"],
                  where=["site", "meter"])
        + pipe("last()", PIVOT, "group()",
               'keep(columns: ["_time", "type", "severity", "excess", "unit", "cost",'
               ' "co2_kg", "open", "score"])',
               'sort(columns: ["_time"], desc: true)')
    )
    annotation_query = (
        'import "math"\n'
        + flux_from("event", ["excess", "cost", "end_ts"], where=["site", "meter"])
        + pipe("last()", PIVOT,
               # cost and unit may be absent (no price; no unit): text then says less
               "map(fn: (r) => ({r with text: r[\"type\"] + \" (\" + r.severity + \"): excess \""
               " + string(v: math.round(x: float(v: r.excess) * 100.0) / 100.0)"
               " + (if exists r.unit then \" \" + r.unit else \"\")"
               " + (if exists r.cost then \", cost \""
               " + string(v: math.round(x: float(v: r.cost) * 100.0) / 100.0) else \"\")}))",
               "map(fn: (r) => ({r with timeEnd: if float(v: r.end_ts) > 0.0 then"
               " time(v: int(v: float(v: r.end_ts) * 1000000000.0)) else now()}))",
               'keep(columns: ["_time", "timeEnd", "text", "type", "severity"])')
    )
    annotation = {
        "name": "Events", "enable": True, "hide": False, "iconColor": "red",
        "datasource": datasource(), "target": {"refId": "Anno", "query": annotation_query},
        "mappings": {
            "time": {"source": "field", "value": "_time"},
            "timeEnd": {"source": "field", "value": "timeEnd"},
            "text": {"source": "field", "value": "text"},
            "tags": {"source": "field", "value": "type"},
        },
    }
    hidden_band = {"legend": False, "tooltip": False, "viz": False}
    panels = [
        timeseries(
            "Consumption of ${meter}: actual, expected and the anomaly band", [band], h=10,
            min_interval=INTERVAL,
            description="Per interval, in the meter's unit. The shaded band is the "
            "baseline's lower..upper; events are annotations (red).",
            overrides=[
                override("upper", custom__fillBelowTo="lower", custom__lineWidth=0,
                         custom__fillOpacity=20, color={"mode": "fixed",
                                                        "fixedColor": "#8AB8FF"}),
                override("lower", custom__lineWidth=0, custom__hideFrom=hidden_band,
                         color={"mode": "fixed", "fixedColor": "#8AB8FF"}),
                override("expected", custom__lineStyle={"fill": "dash", "dash": [10, 10]},
                         color={"mode": "fixed", "fixedColor": "blue"}),
                override("actual", custom__lineWidth=2,
                         color={"mode": "fixed", "fixedColor": "orange"}),
            ]),
        stat("Actual minus expected in range", excess, unit="none", decimals=2, w=6,
             no_value="no baseline yet",
             description="Sum over the time range, in the meter's unit (intervals with a "
             "baseline only)."),
        timeseries("Cost per interval", [cost], unit="none", w=18, h=4, draw="bars",
                   min_interval=INTERVAL),
        timeseries("Anomaly scores by detector", [scores], w=24, h=7, min_interval=INTERVAL,
                   description="Higher is more anomalous; 0 during warm-up."),
        table("Events of ${meter}", events, h=7,
              overrides=[override("_time", displayName="start"),
                         override("cost", decimals=2), override("excess", decimals=2)]),
    ]
    return dashboard(
        "recp-meter-detail", "RECP · Meter detail",
        "One meter: actual against expected with the anomaly band, detector scores, events.",
        panels, [var_bucket(), var_site(), var_meter()], annotations=[annotation],
        time_from="now-7d")


# --------------------------------------------------------------------------- losses


def losses() -> Json:
    events = (
        flux_from("event", ["excess", "cost", "co2_kg", "open", "end_ts", "score"],
                  where=["site"])
        + pipe("last()", PIVOT)
    )
    ranked = events + pipe(
        "map(fn: (r) => ({r with end: if float(v: r.end_ts) > 0.0 then"
        " float(v: r.end_ts) * 1000.0 else 0.0}))",
        "group()",
        'keep(columns: ["_time", "end", "meter", "resource", "type", "severity", "excess",'
        ' "unit", "cost", "co2_kg", "open", "score"])',
        'sort(columns: ["cost"], desc: true)')
    by_type = events + pipe('group(columns: ["type"])', 'sum(column: "cost")',
                            'rename(columns: {cost: "_value"})',
                            'keep(columns: ["type", "_value"])', "group()",
                            'sort(columns: ["_value"], desc: true)')
    by_meter = events + pipe('group(columns: ["meter"])', 'sum(column: "cost")',
                             'rename(columns: {cost: "_value"})',
                             'keep(columns: ["meter", "_value"])', "group()",
                             'sort(columns: ["_value"], desc: true)')
    total_cost = events + pipe("group()", 'sum(column: "cost")',
                               'rename(columns: {cost: "_value"})')
    total_co2 = events + pipe("group()", 'sum(column: "co2_kg")',
                              'rename(columns: {co2_kg: "_value"})')
    panels = [
        stat("Cost of losses in range", total_cost, unit="none", decimals=2, w=12,
             description=_COST_NOTE + "Events that started within the time range."),
        stat("CO2 of losses in range", total_co2, unit="masskg", decimals=0, w=12),
        table("Losses ranked by cost", ranked, sort_by="cost", h=12,
              description="Every event that started in the time range, most expensive "
              "first; open = 1 while it lasts.",
              overrides=[override("_time", displayName="start"),
                         override("end", unit="dateTimeAsIso", mappings=[
                             {"type": "value", "options": {"0": {"text": "open"}}}]),
                         override("cost", decimals=2), override("co2_kg", decimals=1),
                         override("excess", decimals=2), override("score", decimals=2)]),
        panel("barchart", "Cost by type", [by_type], w=12, h=8, unit="none",
              options={"orientation": "horizontal", "xField": "type",
                       "showValue": "auto", "legend": {"showLegend": False,
                                                       "displayMode": "list",
                                                       "placement": "bottom"}}),
        panel("barchart", "Cost by meter", [by_meter], w=12, h=8, unit="none",
              options={"orientation": "horizontal", "xField": "meter",
                       "showValue": "auto", "legend": {"showLegend": False,
                                                       "displayMode": "list",
                                                       "placement": "bottom"}}),
    ]
    return dashboard(
        "recp-losses", "RECP · Losses ranked by cost",
        "Leaks, steam traps, base-load rises, overspend: every event in the time range, "
        "by cost.", panels, [var_bucket(), var_site()], time_from="now-30d", refresh="5m")


# --------------------------------------------------------------------------- health


def health() -> Json:
    def agent(fields: Sequence[str], last: bool = False) -> str:
        query = flux_from("agent", fields, where=["site"])
        if last:
            return query + pipe('group(columns: ["_field"])', "last()")
        return query + pipe('group(columns: ["_field"])',
                            "aggregateWindow(every: v.windowPeriod, fn: max, createEmpty: false)")

    def service(fields: Sequence[str], fn: str = "mean") -> str:
        return flux_from("service", fields) + pipe(
            'group(columns: ["instance", "_field"])',
            f"aggregateWindow(every: v.windowPeriod, fn: {fn}, createEmpty: false)")

    last_report = (
        flux_from("service", ["dead_letters"], start="-1d", stop=None)  # always written
        + pipe('group(columns: ["instance"])', "last()",
               "map(fn: (r) => ({r with _value: float(v: int(v: now()) - int(v: r._time))"
               " / 1000000000.0}))",
               'keep(columns: ["instance", "_value"])')
    )
    seen = (
        flux_from("meter_seen", ["last_seen_s"], where=["site"], start="-30d", stop=None)
        + pipe("last()",
               "map(fn: (r) => ({r with age: float(v: int(v: now())) / 1000000000.0"
               " - float(v: r.last_seen_s)}))",
               "map(fn: (r) => ({r with last_seen: float(v: r.last_seen_s) * 1000.0}))",
               "group()", 'keep(columns: ["site", "meter", "last_seen", "age"])',
               'sort(columns: ["age"], desc: true)')
    )
    stale = (
        flux_from("meter_seen", ["last_seen_s"], where=["site"], start="-30d", stop=None)
        + pipe("last()",
               "map(fn: (r) => ({r with _value: float(v: int(v: now())) / 1000000000.0"
               " - float(v: r.last_seen_s)}))",
               f"filter(fn: (r) => r._value > {float(STALE_AFTER_S)})", "group()",
               "count()")
    )
    ages = (
        flux_from("meter_seen", ["age_s"], where=["site"])
        + pipe('group(columns: ["meter"])',
               "aggregateWindow(every: v.windowPeriod, fn: max, createEmpty: false)")
    )
    dropped = (
        flux_from("dropped", ["count"], where=["site"])
        + pipe('group(columns: ["meter", "reason"])',
               "aggregateWindow(every: v.windowPeriod, fn: max, createEmpty: false)")
    )
    never = (
        flux_from("dropped", ["missing"], where=["site"], start="-30d", stop=None)
        + pipe('group(columns: ["meter", "stream"])', "last()", "group()",
               'keep(columns: ["meter", "stream", "_value"])',
               'rename(columns: {_value: "never_arrived"})')
    )
    age_steps: list[Json] = [{"color": "green", "value": None},
                 {"color": "orange", "value": STALE_AFTER_S / 5},
                 {"color": "red", "value": STALE_AFTER_S}]
    panels = [
        stat("Detector service: seconds since last report", last_report, unit="s",
             decimals=0, no_value="none for a day", w=8,
             thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 60}],
             description="The service writes its metrics every 10 s; red after a minute."),
        stat(f"Meters silent > {STALE_AFTER_S} s", stale, unit="none", decimals=0, w=8,
             thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}],
             description="Meters of ${site} whose newest reading is older than "
             f"{STALE_AFTER_S} s: an agent, a bus or a meter is down."),
        stat("Open events", flux_from("service", ["open_events"], start="-1d", stop=None)
             + pipe('group(columns: ["instance"])', "last()"), unit="none", decimals=0,
             w=8),
        timeseries("Readings in and points out per second",
                   [service(["readings_in_per_s", "points_out_per_s"])], unit="reqps", w=12),
        timeseries("Lag (now minus newest reading)", [service(["lag_s"], "max")], unit="s",
                   w=12),
        timeseries("Spool depth (points waiting for the database)",
                   [service(["spool_depth"], "max")], unit="none", w=12),
        timeseries("Dead letters since start", [service(["dead_letters"], "max")],
                   unit="none", w=12,
                   description="Malformed messages (a counter; a rise means an agent or "
                   "another publisher sends payloads that fail validation)."),
        timeseries("Grafana annotations waiting and failed attempts",
                   [service(["annotations_queued", "annotation_failures"], "max")],
                   unit="none", w=12,
                   description="Only with grafana: in the analytics file. Failed attempts "
                   "rising: Grafana is down or refuses the token; events wait (bounded) and "
                   "are posted when it answers."),
        table(f"Meters of ${{site}}: last reading (red after {STALE_AFTER_S} s)", seen,
              sort_by="age", w=12, h=10, thresholds=age_steps,
              overrides=[override("age", unit="s", decimals=0,
                                  custom__cellOptions={"type": "color-background"}),
                         override("last_seen", unit="dateTimeAsIso")]),
        timeseries("Age of each meter's newest reading", [ages], unit="s", w=12, h=10),
        stat("Agent of ${site}: meters down", agent(["devices_down"], last=True),
             unit="none", decimals=0, w=8, no_value="no agent report",
             thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}],
             description="Meters the edge agent cannot read (timeouts, exceptions, backed "
             "off), from its health report every 30 s."),
        stat("Agent of ${site}: readings waiting in its outbox",
             agent(["outbox_depth"], last=True), unit="none", decimals=0, w=8,
             thresholds=[{"color": "green", "value": None},
                         {"color": "orange", "value": 1000}],
             description="Readings kept on the edge box until the broker has them: grows "
             "while the network or the broker is away, drains after."),
        stat("Agent of ${site}: clock synchronised", agent(["clock_synced"], last=True),
             unit="none", decimals=0, w=8,
             thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}],
             description="1 when the agent's clock is synchronised (NTP); readings taken "
             "before are held and re-timed."),
        timeseries("Agent of ${site}: meters up and down, outbox depth",
                   [agent(["devices_up", "devices_down", "outbox_depth", "outbox_dropped"])],
                   unit="none", w=24),
        timeseries("Agent of ${site}: readings dropped from its outbox, per meter",
                   [dropped], unit="none", w=16, draw="line",
                   description="Readings the edge agent dropped (cumulative per meter, by "
                   "reason: its outbox cap, or a failed disk write). Nothing shown: nothing "
                   "was dropped. A rise means the broker or the network was away longer "
                   "than the outbox holds."),
        table("Agent of ${site}: dropped readings that never arrived (last 30 days)", never,
              w=8, sort_by="never_arrived",
              description="Per meter, of the readings the agent says it dropped, how many "
              "this detector service never received: holes in the stored data."),
    ]
    return dashboard(
        "recp-health", "RECP · Service and agent health",
        "The detector service's own metrics, each site's edge agent, and when each meter "
        "last reported.",
        panels, [var_bucket(), var_site()], time_from="now-6h", refresh="30s")


# --------------------------------------------------------------------------- all


def dashboards() -> dict[str, Json]:
    """Every dashboard by file name (``<uid>.json``)."""
    out = {}
    for make in (site_overview, meter_detail, losses, health):
        d = make()
        out[f"{d['uid']}.json"] = d
    return out


def with_datasource(dash: Json, uid: str) -> Json:
    """A copy of ``dash`` whose InfluxDB datasource references name ``uid``."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("type") == "influxdb" and set(node) == {"type", "uid"}:
                return {"type": "influxdb", "uid": uid}
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    result: Json = walk(dash)
    return result


def render(dash: Json) -> str:
    """The file text: stable key order and indentation, one trailing newline."""
    return json.dumps(dash, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def export(directory: Path) -> list[Path]:
    """Write every dashboard into ``directory`` (created); return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, dash in dashboards().items():
        path = directory / name
        path.write_text(render(dash), encoding="utf-8")
        written.append(path)
    return written
