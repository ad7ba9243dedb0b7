"""README.md and docs/*.md describe what is built: the commands, files and keys they name exist.

Cheap checks of what a plant engineer copies from the docs: every ``recp`` command line in a
``sh`` block parses, every ``recp ...`` mentioned in the text names a real subcommand and
real options, every ``make`` target, ``python -m`` module and repository path named exists,
the shipped configuration files validate, every ``yaml`` snippet is a valid part of a site
or analytics file, the key tables of the configuration references name real keys, and the
points the detector service writes use only the measurements, tags and fields of
docs/influx-schema.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import importlib.util
import io
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from collector.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# --------------------------------------------------------------------------- reading the docs


def fenced(text: str) -> Iterator[tuple[int, str, str]]:
    """(line number, language, line) of every line inside a fenced code block."""
    lang: str | None = None
    for n, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```(\w*)", line)
        if fence:
            lang = fence.group(1) if lang is None else None
            continue
        if lang is not None:
            yield n, lang, line


def shell_commands(text: str) -> Iterator[tuple[int, str]]:
    """Commands of ``sh`` blocks: comments cut, continuation lines joined."""
    buf, start = "", 0
    for n, lang, line in fenced(text):
        if lang != "sh":
            continue
        code = "" if line.lstrip().startswith("#") else re.split(r"\s#\s", line)[0].rstrip()
        if not buf:
            start = n
        code = f"{buf} {code.strip()}" if buf else code
        if code.endswith("\\"):
            buf = code[:-1]
            continue
        buf = ""
        if code.strip():
            yield start, code.strip()


def recp_commands() -> Iterator[tuple[str, bool, list[str]]]:
    """(place, from an sh block, argv after ``recp``) of every recp command in the docs.

    In an ``sh`` block a line that runs recp (a path before it, a variable assignment, a
    trailing ``&`` or a pipe allowed); in the text every inline code span ``recp ...``."""
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for n, code in shell_commands(text):
            m = re.match(r"^(?:\w+=\S*\s+)*(?:\S*/)?recp\s+(.*)$", code)
            if m:
                cmd = re.split(r"\s(?:\||&&|;|>|2>)\s|\s&$", m.group(1))[0]
                yield f"{rel(path)}:{n}", True, shlex.split(cmd)
        in_code = {n for n, _, _ in fenced(text)}
        for n, line in enumerate(text.splitlines(), 1):
            if n in in_code:
                continue
            for span in re.findall(r"`(recp [^`]+)`", line):
                yield f"{rel(path)}:{n}", False, shlex.split(span)[1:]


@functools.cache
def parser() -> argparse.ArgumentParser:
    return build_parser()


def subparser(argv: list[str]) -> tuple[argparse.ArgumentParser, list[str], list[str]]:
    """The (sub)parser the leading words of ``argv`` select, the words, and the rest."""
    parser_, words, rest = parser(), [], list(argv)
    while rest:
        subs = [a for a in parser_._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or rest[0] not in subs[0].choices:
            break
        words.append(rest.pop(0))
        parser_ = subs[0].choices[words[-1]]
    return parser_, words, rest


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


PLACEHOLDERS = {"COMMAND"}  # `recp COMMAND --help` in the README's table


def test_the_docs_name_recp_commands() -> None:
    found = list(recp_commands())
    assert sum(block for _, block, _ in found) >= 20, "the sh blocks were not read"
    assert len(found) >= 100


def test_every_recp_command_named_in_the_docs_exists_with_its_options() -> None:
    problems = []
    for place, _, argv in recp_commands():
        if argv and argv[0] in PLACEHOLDERS:
            continue
        sub, words, rest = subparser(argv)
        if not words and argv and not argv[0].startswith("-"):
            problems.append(f"{place}: recp has no command {argv[0]!r}")
            continue
        known = option_strings(sub)
        for token in rest:
            name = token.split("=")[0]
            if re.fullmatch(r"-[a-zA-Z]+", name) and all(f"-{c}" in known for c in name[1:]):
                continue  # short flags combine (-vv)
            if re.match(r"^--?[a-zA-Z]", name) and name not in known:
                problems.append(f"{place}: recp {' '.join(words)} has no option {name}")
    assert not problems, "\n".join(problems)


def test_every_recp_command_in_a_shell_block_parses() -> None:
    problems = []
    for place, block, argv in recp_commands():
        if not block:
            continue
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                build_parser().parse_args(argv)
        except SystemExit as exc:
            if exc.code:
                problems.append(f"{place}: recp {shlex.join(argv)}: "
                                f"{err.getvalue().strip().splitlines()[-1]}")
    assert not problems, "\n".join(problems)


def nested_commands() -> list[list[str]]:
    out = []

    def walk(parser: argparse.ArgumentParser, words: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out.append([*words, name])
                    walk(sub, [*words, name])

    walk(build_parser(), [])
    return out


@pytest.mark.parametrize("words", nested_commands(), ids=" ".join)
def test_every_command_and_subcommand_help_exits_0(
        words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*words, "--help"])
    assert info.value.code == 0
    assert f"usage: recp {' '.join(words)}" in capsys.readouterr().out


def test_every_option_of_every_command_is_named_in_the_docs() -> None:
    """The other way round: no option only --help knows (-h, -v and --version aside)."""
    text = "".join(path.read_text(encoding="utf-8") for path in DOCS)
    named = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", text))
    missing = []
    for words in nested_commands():
        sub, _, _ = subparser(words)
        for action in sub._actions:
            longs = [s for s in action.option_strings if s.startswith("--")]
            if not longs or set(longs) & {"--help", "--verbose", "--version"}:
                continue
            shorts = [s for s in action.option_strings if not s.startswith("--")]
            if not set(longs) & named and not any(
                    re.search(rf"recp {words[0]}\b[^`\n]* {s}\b", text) for s in shorts):
                missing.append(f"recp {' '.join(words)} {longs[0]}")
    assert not missing, missing


def test_every_command_is_in_the_readme_table() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = {m.group(1) for m in re.finditer(r"^\| `recp (\w+)", readme, re.M)}
    top = {words[0] for words in nested_commands()}
    assert table == top


# --------------------------------------------------------------------------- make, modules, paths


def test_every_make_target_named_exists() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))
    named = set()
    for path in DOCS:
        named |= set(re.findall(r"`make ([a-z][\w-]*)`", path.read_text(encoding="utf-8")))
        for _, code in shell_commands(path.read_text(encoding="utf-8")):
            named |= set(re.findall(r"^make ([a-z][\w-]*)", code))
    assert {"test", "demo", "bench"} <= named
    assert named <= targets, f"not in the Makefile: {sorted(named - targets)}"


def test_every_python_module_named_exists() -> None:
    problems = []
    for path in DOCS:
        for module in re.findall(r"python -m ([\w.]+)", path.read_text(encoding="utf-8")):
            module = module.rstrip(".")
            if importlib.util.find_spec(module) is None:
                problems.append(f"{rel(path)}: python -m {module}")
    assert not problems, "\n".join(problems)


def test_every_repository_path_named_exists() -> None:
    problems = []
    pattern = r"`((?:collector|detectors|deploy|edge_config|tests|benchmarks|docs)/[\w./*-]*)"
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        in_shell = [tok for _, code in shell_commands(text) for tok in code.split()
                    if re.fullmatch(r"(?:collector|detectors|deploy|edge_config|tests|benchmarks"
                                    r"|docs)/[\w./*-]*", tok)]
        for name in re.findall(pattern, text) + in_shell:
            name = name.rstrip(".")
            if "*" in name:
                if not list(REPO.glob(name)):
                    problems.append(f"{rel(path)}: {name} matches nothing")
                continue
            if re.search(r"\.\w+\(?$", name) and not (REPO / name).exists():
                # module.function: the module must exist
                module = name.rsplit(".", 1)[0]
                if (REPO / f"{module}.py").exists():
                    continue
            if not (REPO / name).exists():
                problems.append(f"{rel(path)}: {name}")
    assert not problems, "\n".join(problems)


def test_the_readme_installs_every_package_ci_installs() -> None:
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    needed = set(re.findall(r"missing\+=\(([\w.-]+)\)", ci))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    listed = {tok for _, code in shell_commands(readme) if "apt-get install" in code
              for tok in code.split("apt-get install", 1)[1].split()}
    assert len(needed) > 5 and needed <= listed, sorted(needed - listed)


# --------------------------------------------------------------------------- configuration


SHIPPED = [*sorted((REPO / "edge_config").rglob("*.yaml")),
           REPO / "deploy" / "config" / "analytics.yaml"]


def test_every_shipped_configuration_file_validates(capsys: pytest.CaptureFixture[str]) -> None:
    assert len(SHIPPED) > 20
    assert main(["config", "check", *map(str, SHIPPED)]) == 0
    out = capsys.readouterr().out
    assert out.count("ok ") == len(SHIPPED), out


def _site(fragment: dict[str, Any]) -> None:
    from collector.site import Site

    meter = {"id": "m", "profile": "eastron_sdm120",
             "connection": {"type": "tcp", "host": "127.0.0.1"}}
    Site.model_validate({"kind": "site", "site": "s", "meters": [meter], **fragment})


def _analytics(fragment: dict[str, Any]) -> None:
    from detectors.service.config import Analytics

    Analytics.model_validate({"kind": "analytics", **fragment})


def yaml_snippets() -> Iterator[tuple[str, str]]:
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        block: list[str] = []
        start = 0
        lines = [*fenced(text), (-1, "", "")]
        for i, (n, lang, line) in enumerate(lines):
            if lang == "yaml":
                if not block:
                    start = n
                block.append(line)
            if block and (lang != "yaml" or lines[i + 1][0] != n + 1):
                yield f"{rel(path)}:{start}", "\n".join(block)
                block = []


def test_every_yaml_snippet_is_part_of_a_valid_site_or_analytics_file() -> None:
    snippets = list(yaml_snippets())
    assert len(snippets) >= 5
    problems = []
    for place, text in snippets:
        fragment = yaml.safe_load(text)
        errors = []
        for check in (_site, _analytics):
            try:
                check(fragment)
                break
            except ValidationError as exc:
                errors.append(f"{check.__name__[1:]}: {exc.errors()[0]['loc']} "
                              f"{exc.errors()[0]['msg']}")
        else:
            problems.append(f"{place}: {'; '.join(errors)}")
    assert not problems, "\n".join(problems)


def field_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every dotted key of a model and its nested models (lists and dicts walked through)."""
    import typing

    def models(tp: Any) -> list[type[BaseModel]]:
        if typing.get_origin(tp) is not None:
            return [m for arg in typing.get_args(tp) for m in models(arg)]
        return [tp] if isinstance(tp, type) and issubclass(tp, BaseModel) else []

    out = set()
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        out.add(key)
        for sub in models(field.annotation):
            out |= field_paths(sub, key + ".")
    return out


def table_keys(doc: str, heading: str) -> list[str]:
    """The backticked keys in the first column of the table under ``heading``; a row's
    further names (``spool.path``, ``cap``) take the first one's section."""
    text = (REPO / "docs" / doc).read_text(encoding="utf-8")
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    keys = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        names = [n.replace("[]", "") for n in re.findall(r"`([\w.<>*\[\]]+)`",
                                                         line.split("|")[1])]
        section_of = names[0].rsplit(".", 1)[0] + "." if "." in names[0] else ""
        keys += [names[0]] + [n if "." in n else section_of + n for n in names[1:]]
    return keys


def test_analytics_reference_table_names_real_keys() -> None:
    from detectors.service.config import Analytics

    keys = table_keys("detector-service.md", "## Configuration (`kind: analytics`)")
    assert len(keys) > 40
    real = field_paths(Analytics)
    norm = [re.sub(r"\.<\w+>", "", k).replace(".*", "") for k in keys]
    missing = [k for k, n in zip(keys, norm, strict=True) if n not in real]
    assert not missing, missing
    # and every key of the file is in the table (a key as a whole: its parts too), but for
    # the inline secrets that are refused
    refused = {"mqtt.password", "influx.token", "grafana.token"}
    leaves = {k for k in real if not any(o.startswith(k + ".") for o in real)}
    undocumented = sorted(
        k for k in leaves - refused - {"kind"}
        if not any(k == n or k.startswith(n + ".") for n in norm))
    assert not undocumented, undocumented


def test_plant_reference_table_names_real_keys() -> None:
    from collector.plant.config import Plant

    keys = table_keys("virtual-plant.md", "## Plant file (`kind: plant`)")
    real = field_paths(Plant)
    assert keys and not [k for k in keys if k not in real]
    top = {k for k in real if "." not in k} - {"kind", "description"}
    assert top <= set(keys), sorted(top - set(keys))


def test_profile_reference_table_names_real_keys() -> None:
    from collector.profiles import Profile

    keys = table_keys("edge-agent.md", "## Device profiles (`kind: profile`)")
    real = field_paths(Profile)
    assert keys and not [k for k in keys if k not in real]
    top = {k for k in real if "." not in k} - {"kind"}
    assert top <= set(keys), sorted(top - set(keys))
    section = (REPO / "docs" / "edge-agent.md").read_text(encoding="utf-8").split(
        "## Device profiles", 1)[1].split("\n## ", 1)[0]
    points = {k.split(".", 1)[1] for k in real if k.startswith("points.")}
    assert not [k for k in points if f"`{k}`" not in section]


# --------------------------------------------------------------------------- the InfluxDB schema


def parse_line(text: str) -> tuple[str, set[str], set[str]]:
    """(measurement, tag keys, field keys) of one line-protocol point."""
    series, rest = re.split(r"(?<!\\) ", text, maxsplit=1)
    fields = rest.rsplit(" ", 1)[0]  # the time follows the last space
    measurement, *tags = re.split(r"(?<!\\),", series)
    keys = re.findall(r'(?:^|,)([^=,"]+)=(?:"(?:[^"\\]|\\.)*"|[^,]*)', fields)
    return measurement, {tag.split("=", 1)[0] for tag in tags}, set(keys)


def test_the_service_writes_only_what_the_schema_doc_names() -> None:
    from collector import contract
    from detectors.dashboards import INFLUX_SCHEMA
    from detectors.events import Event, EventType, Severity
    from detectors.service.alerts import Transition
    from detectors.service.pipeline import Interval, MeterPipeline, Settings
    from detectors.service.service import (
        agent_line,
        dropped_line,
        event_line,
        interval_lines,
        reading_line,
    )

    pipe = MeterPipeline("dairy", "el_main", "electricity", Settings())
    kinds = ("spike", "stuck", "level_shift", "drift", "overspend")
    iv = Interval(t_s=1_767_225_600, actual=12.5, flags=0, scores=dict.fromkeys(kinds, 1.5),
                  diagnostics={k: [1.0] * 10 for k in kinds}, expected=11.0, std=0.5)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    event = Event("el_main", EventType.OVERSPEND, start, start + dt.timedelta(hours=2),
                  Severity.WARNING,
                  3.0, "kWh", cost=0.6, co2_kg=0.8, explanation="more than expected", score=2.0)
    ts = "2026-01-01T00:00:00.000Z"
    reading = contract.Reading.model_validate({
        "v": 1, "site": "dairy", "meter": "el_main", "resource": "electricity", "stream": "s",
        "seq": 1, "ts": ts, "quality": "ok", "values": {"energy_kwh": 1.0, "power_kw": 2.0}})
    health = contract.Health.model_validate({
        "v": 1, "site": "dairy", "ts": ts, "uptime_s": 1.0, "clock": "synced",
        "outbox": {"depth": 0, "cap": 100}, "devices": {"el_main": {"state": "up"}}})
    dropped = contract.Dropped.model_validate({
        "v": 1, "site": "dairy", "meter": "el_main", "stream": "s", "through_seq": 3,
        "count": 3, "reason": "outbox full", "ts": ts})
    lines = [*interval_lines(pipe, iv),
             event_line(Transition("open", "dairy", "el_main/overspend/1", event, "electricity")),
             reading_line(reading), agent_line(health), dropped_line(dropped, 2)]
    seen: dict[str, set[str]] = {}
    problems = []
    for text in lines:
        assert text is not None
        measurement, tags, fields = parse_line(text)
        schema = INFLUX_SCHEMA.get(measurement)
        if schema is None:
            problems.append(f"measurement {measurement} is not in docs/influx-schema.md")
            continue
        seen.setdefault(measurement, set()).update(fields)
        if measurement == "reading":
            fields -= {"energy_kwh", "power_kw"}  # any value name of a reading
        problems += [f"{measurement}: tag {t}" for t in tags - set(schema["tags"])]
        problems += [f"{measurement}: field {f}" for f in fields - set(schema["fields"])]
    assert not problems, problems
    assert {"score", "cusum", "step_per_h"} <= seen["anomaly"]
    assert {"actual", "expected", "lower", "upper", "flags"} <= seen["consumption"]


def test_every_test_named_in_the_docs_exists() -> None:
    """``tests/x.py::test_name`` and, later on the same line, ``::test_other`` of that file."""
    problems, named = [], 0
    for path in DOCS:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            current: Path | None = None
            for file, name in re.findall(r"(?:(tests/[\w/]+\.py)|\b(?:test_\w+\.py))?::(\w+)",
                                         line):
                if file:
                    current = REPO / file
                else:
                    short = re.findall(r"\b(test_\w+\.py)::" + name, line)
                    if short:
                        found = sorted(REPO.glob(f"tests/**/{short[0]}"))
                        current = found[0] if found else None
                named += 1
                if current is None or not re.search(
                        rf"^(?:async )?def {name}\(", current.read_text(encoding="utf-8"), re.M):
                    problems.append(f"{rel(path)}:{n}: {name} not in {current}")
    assert named >= 10 and not problems, "\n".join(problems)


def test_every_test_function_and_file_named_in_backticks_exists() -> None:
    code = "\n".join(p.read_text(encoding="utf-8") for p in REPO.glob("tests/**/*.py"))
    files = {p.name for p in REPO.glob("tests/**/*.py")}
    problems = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for name in set(re.findall(r"`(test_\w+)`", text)):
            if not re.search(rf"^(?:async )?def {name}\(", code, re.M):
                problems.append(f"{rel(path)}: {name}")
        for name in set(re.findall(r"`(?:[\w/]+/)?(test_\w+\.py)", text)):
            if name not in files:
                problems.append(f"{rel(path)}: {name}")
    assert not problems, "\n".join(problems)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but '-' and '_' dropped,
    spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_link_between_the_docs_points_at_a_file_and_heading() -> None:
    problems, links = [], 0
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+://|^mailto:", target):
                continue
            links += 1
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                problems.append(f"{rel(path)}: {target}: no such file")
                continue
            if anchor and dest.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", dest.read_text(encoding="utf-8"), re.M)
                if anchor not in {slug(h) for h in headings}:
                    problems.append(f"{rel(path)}: {target}: no such heading")
    assert links >= 20 and not problems, "\n".join(problems)
