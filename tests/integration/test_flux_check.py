"""Every dashboard query is valid Flux: parsed and type-checked by InfluxData's own checker.

No InfluxDB 2 can be installed here, so the queries cannot run; but InfluxData's Flux
language server, compiled to WebAssembly (npm ``@influxdata/flux-lsp-browser``), parses a
script and checks it semantically (types, builtin functions and their arguments). Node runs
it. Grafana's variables are replaced by values first, as Grafana does before sending a
query. The package is installed once per machine into ~/.cache (npm registry); without node
and npm the test is skipped (test_dashboards.py's lexical checks still run).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from detectors import dashboards as dash

pytestmark = pytest.mark.integration

PACKAGE = "@influxdata/flux-lsp-browser"
VERSION = "0.8.40"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "recp-flux-lsp"

# Grafana's substitutions: dashboard variables, and the v record of Grafana's Flux datasource
SUBSTITUTE = {
    "${bucket}": "recp", "${site}": "dairy", "${meter}": "el_main",
    "${resource}": "electricity", "${tz}": "Europe/Vienna",
    "v.timeRangeStart": "2026-01-01T00:00:00Z", "v.timeRangeStop": "2026-01-08T00:00:00Z",
    "v.windowPeriod": "15m",
}

# The package is built for bundlers (it imports its .wasm as an ES module); this loads the
# wasm by hand and hands it to the JavaScript glue instead.
CHECK_JS = r"""
import { readFileSync } from "fs";
import * as glue from "./glue.mjs";
const bytes = readFileSync(process.argv[2]);
const { instance } = await WebAssembly.instantiate(bytes, { "./flux-lsp-browser_bg.js": glue });
glue.__setWasm(instance.exports);
const out = [];
for (const q of JSON.parse(readFileSync(0, "utf8"))) {
  let syntax = false, semantic = false, error = "";
  try { syntax = glue.is_valid_flux(q); } catch (e) { error += String(e); }
  try { semantic = new glue.Flux(q).is_valid(); } catch (e) { error += String(e); }
  out.push({ syntax, semantic, error });
}
console.log(JSON.stringify(out));
"""


@pytest.fixture(scope="module")
def flux_checker() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for InfluxData's Flux checker")
    pkg = CACHE / VERSION / "node_modules" / PACKAGE
    if not (pkg / "flux-lsp-browser_bg.wasm").exists():
        (CACHE / VERSION).mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--no-save", "--prefix",
             str(CACHE / VERSION), f"{PACKAGE}@{VERSION}"],
            capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    glue = (pkg / "flux-lsp-browser_bg.js").read_text()
    wasm_import = "import * as wasm from './flux-lsp-browser_bg.wasm';"
    memory_init = ("cachedInt32Memory0 = new Int32Array(wasm.memory.buffer);\n"
                   "cachedUint8Memory0 = new Uint8Array(wasm.memory.buffer);\n")
    assert wasm_import in glue and memory_init in glue, "unexpected glue code: pin VERSION"
    glue = glue.replace(memory_init, "").replace(wasm_import, (
        "let wasm;\nexport function __setWasm(w) { wasm = w; "
        "cachedInt32Memory0 = new Int32Array(wasm.memory.buffer); "
        "cachedUint8Memory0 = new Uint8Array(wasm.memory.buffer); }"))
    work = CACHE / VERSION / "check"
    work.mkdir(exist_ok=True)
    (work / "glue.mjs").write_text(glue)
    (work / "check.mjs").write_text(CHECK_JS)
    return work


def check(work: Path, queries: list[str]) -> list[dict[str, object]]:
    proc = subprocess.run(
        ["node", str(work / "check.mjs"),
         str(work.parent / "node_modules" / PACKAGE / "flux-lsp-browser_bg.wasm")],
        input=json.dumps(queries), capture_output=True, text=True, timeout=120, cwd=work)
    assert proc.returncode == 0, proc.stderr
    result: list[dict[str, object]] = json.loads(proc.stdout)
    return result


def grafana_substitute(query: str) -> str:
    for key, value in SUBSTITUTE.items():
        query = query.replace(key, value)
    return query


def test_checker_rejects_what_flux_rejects(flux_checker: Path) -> None:
    results = check(flux_checker, [
        'from(bucket: "b") |> range(start: -1h)',
        'from(bucket: "b") |> range(start: -1h',                          # syntax
        'from(bucket: "b") |> range(start: -1h) |> sum(columnz: "x")',    # argument
        'from(bucket: "b") |> range(start: -1h) |> rnge(start: -1h)',     # function
        'x = if true then "a" else 1',                                     # types
    ])
    assert [r["semantic"] for r in results] == [True, False, False, False, False]


def test_every_dashboard_query_is_valid_flux(flux_checker: Path) -> None:
    where, queries = [], []
    for name, board in dash.dashboards().items():
        for p in board["panels"]:
            for t in p["targets"]:
                where.append(f"{name}: panel {p['title']!r}")
                queries.append(t["query"])
        for v in board["templating"]["list"]:
            if v["type"] == "query":
                where.append(f"{name}: variable {v['name']}")
                queries.append(v["query"])
        for a in board["annotations"]["list"]:
            if "target" in a:
                where.append(f"{name}: annotation {a['name']}")
                queries.append(a["target"]["query"])
    results = check(flux_checker, [grafana_substitute(q) for q in queries])
    bad = [f"{w}: {r}" for w, r in zip(where, results, strict=True)
           if not (r["syntax"] and r["semantic"])]
    assert not bad, "\n".join(bad)
    assert len(results) > 30
