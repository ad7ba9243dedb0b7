"""The Grafana dashboards: valid JSON model, queries only what the detector service writes.

``detectors.dashboards.INFLUX_SCHEMA`` must equal the tables of ``docs/influx-schema.md``, and
every Flux query of every dashboard (panels, variables, annotations) may name only the
measurements, fields and tags of that schema, plus Flux's own columns and the columns the
query itself computes. The committed files in deploy/grafana/dashboards/ must be exactly what
``recp grafana export`` writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector import cli
from detectors import dashboards as dash

REPO = Path(__file__).resolve().parents[2]
SCHEMA_DOC = REPO / "docs" / "influx-schema.md"
COMMITTED = REPO / "deploy" / "grafana" / "dashboards"

FLUX_COLUMNS = {"_time", "_value", "_field", "_measurement", "_start", "_stop"}
PANEL_TYPES = {"timeseries", "stat", "table", "bargauge", "barchart"}


# --------------------------------------------------------------------------- the doc


def parse_schema_doc(text: str) -> dict[str, dict[str, set[str]]]:
    """``## `measurement` ...`` sections; tag and field rows of their tables (name column)."""
    out: dict[str, dict[str, set[str]]] = {}
    current: str | None = None
    for line in text.splitlines():
        heading = re.match(r"^## `(\w+)`", line)
        if heading:
            current = heading.group(1)
            out[current] = {"tags": set(), "fields": set()}
            continue
        if current is None or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0] in ("tag", "field"):
            names = set(re.findall(r"`(\w+)`", cells[1]))
            assert names, f"no name in row {line!r}"
            out[current]["tags" if cells[0] == "tag" else "fields"] |= names
    return out


def test_schema_dict_matches_the_doc() -> None:
    doc = parse_schema_doc(SCHEMA_DOC.read_text(encoding="utf-8"))
    code = {m: {k: set(v) for k, v in spec.items()} for m, spec in dash.INFLUX_SCHEMA.items()}
    assert doc == code


def test_doc_parser_reads_tables() -> None:
    text = "## `m`: x\n\n| | name | notes |\n|---|---|---|\n| tag | `a`, `b` | `n` |\n" \
           "| field | `f` | note `g` |\n| time | `ts` | |\n"
    assert parse_schema_doc(text) == {"m": {"tags": {"a", "b"}, "fields": {"f"}}}


# --------------------------------------------------------------------------- the queries


def flux_references(query: str) -> tuple[set[str], set[str], set[str], set[str]]:
    """(measurements, fields, columns used, columns computed) of one of our Flux queries."""
    measurements = set(re.findall(r'r\._measurement == "(\w+)"', query))
    fields = set(re.findall(r'r\._field == "(\w+)"', query))
    used = set(re.findall(r"\br\.(\w+)", query))
    used |= set(re.findall(r'\br\["(\w+)"\]', query))
    used |= set(re.findall(r'\btag: "(\w+)"', query))
    used |= set(re.findall(r'\bcolumn: "(\w+)"', query))
    for group in re.findall(r"\b(?:columns|rowKey|columnKey): \[([^\]]*)\]", query):
        used |= set(re.findall(r'"(\w+)"', group))
    computed = set(re.findall(r"\{r with (\w+):", query))
    for old, new in re.findall(r'rename\(columns: \{(\w+): "(\w+)"\}\)', query):
        used.add(old)
        computed.add(new)
    return measurements, fields, used, computed


def all_queries(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for p in board["panels"]:
        for t in p["targets"]:
            yield f"panel {p['title']!r} {t['refId']}", t["query"]
    for v in board["templating"]["list"]:
        if v["type"] == "query":
            yield f"variable {v['name']}", v["query"]
    for a in board["annotations"]["list"]:
        if "target" in a:
            yield f"annotation {a['name']}", a["target"]["query"]


def check_query(query: str) -> list[str]:
    problems = []
    measurements, fields, used, computed = flux_references(query)
    if len(measurements) != 1:
        return [f"names {len(measurements)} measurements, expected one: {sorted(measurements)}"]
    (m,) = measurements
    if m not in dash.INFLUX_SCHEMA:
        return [f"measurement {m!r} is not in docs/influx-schema.md"]
    spec = dash.INFLUX_SCHEMA[m]
    for f in sorted(fields - set(spec["fields"])):
        problems.append(f"{m} has no field {f!r}")
    allowed = set(spec["tags"]) | set(spec["fields"]) | FLUX_COLUMNS | computed
    for c in sorted(used - allowed):
        problems.append(f"{m} has no tag or field {c!r}")
    if "${bucket}" not in query:
        problems.append("does not read the ${bucket} variable")
    return problems


BOARDS = dash.dashboards()


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_queries_name_only_what_the_service_writes(name: str) -> None:
    problems = [f"{where}: {p}" for where, q in all_queries(BOARDS[name]) for p in check_query(q)]
    assert not problems, "\n".join(problems)


def flux_syntax_problems(query: str) -> list[str]:
    """Cheap lexical checks: brackets balanced outside strings, strings closed, pipes."""
    problems, stack, in_string, i = [], [], False, 0
    pairs = {")": "(", "]": "[", "}": "{"}
    while i < len(query):
        c = query[i]
        if in_string:
            if c == "\\":
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "([{":
            stack.append(c)
        elif c in ")]}" and (not stack or stack.pop() != pairs[c]):
            problems.append(f"unbalanced {c!r} at {i}")
        i += 1
    if in_string:
        problems.append("unterminated string")
    if stack:
        problems.append(f"unclosed {''.join(stack)}")
    lines = query.splitlines()
    for n, line in enumerate(lines):
        if line.startswith("  ") and not line.startswith("  |> "):
            problems.append(f"line {n + 1} continues without |>: {line!r}")
    if "${" in query.replace("${bucket}", "").replace("${site}", "").replace(
            "${meter}", "").replace("${resource}", "").replace("${tz}", ""):
        problems.append("unknown dashboard variable")
    return problems


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_flux_is_lexically_sound(name: str) -> None:
    problems = [f"{where}: {p}" for where, q in all_queries(BOARDS[name])
                for p in flux_syntax_problems(q)]
    assert not problems, "\n".join(problems)
    assert flux_syntax_problems('f(x: [1, "a)"]) |> g(') == ["unclosed ("]
    assert flux_syntax_problems('f("x)') == ["unterminated string", "unclosed ("]


def test_checker_catches_unknown_names() -> None:
    bad = dash.flux_from("consumption", ["actual"]).replace('"actual"', '"actuals"')
    assert check_query(bad) == ["consumption has no field 'actuals'"]
    pivoted = dash.flux_from("consumption", ["actual"]) + dash.pipe(
        dash.PIVOT, "filter(fn: (r) => r.actuals > 0.0)", 'keep(columns: ["_time", "units"])')
    assert check_query(pivoted) == ["consumption has no tag or field 'actuals'",
                                    "consumption has no tag or field 'units'"]
    assert check_query('from(bucket: "${bucket}") |> filter(fn: (r) => '
                       'r._measurement == "event" and r.detector == "x")') == [
        "event has no tag or field 'detector'"]
    assert check_query('r._measurement == "readings" ${bucket}') == [
        "measurement 'readings' is not in docs/influx-schema.md"]
    with pytest.raises(ValueError, match="no field"):
        dash.flux_from("event", ["lag_s"])
    with pytest.raises(ValueError, match="no tag"):
        dash.flux_from("service", ["lag_s"], where=["site"])


def test_every_measurement_of_interest_is_shown() -> None:
    shown: dict[str, set[str]] = {}
    for board in BOARDS.values():
        for _, q in all_queries(board):
            (m,) = flux_references(q)[0]
            shown.setdefault(m, set()).update(flux_references(q)[1])
    assert {"consumption", "event", "anomaly", "service", "meter_seen"} <= set(shown)
    assert {"actual", "expected", "lower", "upper", "cost"} <= shown["consumption"]
    assert set(dash.INFLUX_SCHEMA["service"]["fields"]) <= shown["service"]
    # the agents' dropped readings, per meter (issue 5)
    assert {"count", "missing"} <= shown["dropped"]


# --------------------------------------------------------------------------- JSON model


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_dashboard_json_model(name: str) -> None:
    board = BOARDS[name]
    assert name == f"{board['uid']}.json"
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", board["uid"])
    assert board["schemaVersion"] == dash.SCHEMA_VERSION >= 36
    assert board["title"] and "recp" in board["tags"]
    assert "id" not in board  # Grafana assigns it; provisioning and push must not carry one
    assert board["time"]["from"].startswith("now-") and board["time"]["to"] == "now"
    json.loads(json.dumps(board))  # plain JSON types only

    panels = board["panels"]
    assert panels
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        assert p["type"] in PANEL_TYPES, p["type"]
        assert p["title"]
        assert p["datasource"] == {"type": "influxdb", "uid": dash.DATASOURCE_UID}
        g = p["gridPos"]
        assert set(g) == {"x", "y", "w", "h"}
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0
        for x in range(g["x"], g["x"] + g["w"]):  # panels do not overlap
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps at {(x, y)}"
                cells.add((x, y))
        assert p["targets"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"] and t["query"].strip()
        assert "defaults" in p["fieldConfig"] and "overrides" in p["fieldConfig"]
        for o in p["fieldConfig"]["overrides"]:
            assert o["matcher"]["id"] == "byName" and o["properties"]
        if "repeat" in p:
            assert p["repeat"] in {v["name"] for v in board["templating"]["list"]}

    variables = board["templating"]["list"]
    names = [v["name"] for v in variables]
    assert len(names) == len(set(names)) and "bucket" in names
    used_vars = set()
    for node in walk(board):
        if isinstance(node, str):
            used_vars |= set(re.findall(r"\$\{(\w+)(?::\w+)?\}", node))
    builtin = {"__field"}
    assert used_vars - builtin <= set(names), used_vars - set(names)

    annotations = board["annotations"]["list"]
    assert annotations[0]["builtIn"] == 1
    for a in annotations[1:]:
        assert a["datasource"]["uid"] == dash.DATASOURCE_UID and a["target"]["query"]
        assert {"time", "text"} <= set(a["mappings"])


def test_meter_detail_shows_band_and_events() -> None:
    board = BOARDS["recp-meter-detail.json"]
    band = board["panels"][0]
    upper = next(o for o in band["fieldConfig"]["overrides"]
                 if o["matcher"]["options"] == "upper")
    assert {"id": "custom.fillBelowTo", "value": "lower"} in upper["properties"]
    (events,) = board["annotations"]["list"][1:]
    assert 'r._measurement == "event"' in events["target"]["query"]


def test_losses_are_ranked_by_cost() -> None:
    board = BOARDS["recp-losses.json"]
    ranked = next(p for p in board["panels"] if p["title"] == "Losses ranked by cost")
    assert 'sort(columns: ["cost"], desc: true)' in ranked["targets"][0]["query"]


def test_with_datasource_rewrites_every_reference() -> None:
    board = dash.with_datasource(BOARDS["recp-site-overview.json"], "other")
    refs = [n for n in walk(board) if isinstance(n, dict) and n.get("type") == "influxdb"]
    assert refs and all(r["uid"] == "other" for r in refs)
    assert BOARDS["recp-site-overview.json"]["panels"][0]["datasource"]["uid"] == \
        dash.DATASOURCE_UID  # the original is unchanged


# --------------------------------------------------------------------------- files


def test_committed_files_are_the_generated_ones() -> None:
    committed = {p.name: p.read_text(encoding="utf-8") for p in COMMITTED.glob("*.json")}
    generated = {name: dash.render(board) for name, board in BOARDS.items()}
    assert sorted(committed) == sorted(generated), "run: recp grafana export " \
        "deploy/grafana/dashboards"
    for name in generated:
        assert committed[name] == generated[name], (
            f"{name} is stale: run recp grafana export deploy/grafana/dashboards")


def test_export_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "new" / "dir"
    assert cli.main(["grafana", "export", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(BOARDS)
    assert json.loads((out / "recp-losses.json").read_text())["uid"] == "recp-losses"
    assert str(out / "recp-health.json") in capsys.readouterr().out


def test_provisioning_points_at_the_files_and_the_datasource() -> None:
    import yaml

    prov = REPO / "deploy" / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "recp.yaml").read_text())
    (source,) = ds["datasources"]
    assert source["uid"] == dash.DATASOURCE_UID and source["type"] == "influxdb"
    assert source["jsonData"]["version"] == "Flux"
    assert source["secureJsonData"]["token"].startswith("${")  # from the environment
    boards = yaml.safe_load((prov / "dashboards" / "recp.yaml").read_text())
    (provider,) = boards["providers"]
    assert provider["type"] == "file" and provider["folderUid"] == dash.FOLDER_UID
    assert provider["options"]["path"] == "/etc/grafana/dashboards/recp"
