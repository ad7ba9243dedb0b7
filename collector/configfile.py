"""Read YAML configuration files into pydantic models, with errors a person can act on.

Every problem becomes one line ``FILE:LINE: field.path: what was expected (got ...)``.
Library code raises :class:`ConfigError`; only the CLI turns it into exit status 2.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base of every configuration model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Problem:
    """One thing wrong in one file."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """A configuration file (or several) cannot be used; ``problems`` lists why."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def no_inline_secret(value: Any, what: str) -> None:
    """Refuse a secret written into a configuration file (files end up in git and logs)."""
    if value is not None:
        raise ValueError(
            f"inline {what}s are not accepted; use {what}_env (an environment variable) or "
            f"{what}_file"
        )


def mqtt_url(url: str) -> str:
    """Check ``mqtt://host[:port]`` or ``mqtts://host[:port]``, with no credentials in it."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError("expected mqtt://host[:port] or mqtts://host[:port]")
    if parts.username or parts.password:
        raise ValueError("put no credentials in the URL; use username and password_env")
    try:
        _ = parts.port
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    return url


def mqtt_protocol(value: Any) -> str:
    """``5`` (MQTT 5, the default) or ``3.1.1`` (for brokers without MQTT 5, e.g. amqtt)."""
    text = str(value).strip()
    if text in ("5", "5.0"):
        return "5"
    if text in ("3.1.1", "311"):
        return "3.1.1"
    raise ValueError("expected 5 (MQTT 5, the default) or 3.1.1 (brokers without MQTT 5)")


def format_path(loc: Sequence[int | str]) -> str:
    """``("meters", 2, "model", "base")`` -> ``meters[2].model.base``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _line_index(node: yaml.Node, path: tuple[int | str, ...], index: dict) -> None:
    """Record the 1-based line of every key and item below ``node``."""
    index[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            index[(*path, key)] = key_node.start_mark.line + 1
            _line_index(value_node, (*path, key), index)
            index[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, (*path, i), index)


def _nearest_line(loc: tuple[int | str, ...], index: dict) -> int | None:
    """Line of the deepest part of ``loc`` that exists in the file."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in index:
            line: int = index[loc[:n]]
            return line
    return None


# libyaml's parser when PyYAML was built with it (ten times faster; same safe constructor)
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """SafeLoader that refuses duplicate keys (YAML silently keeps the last one)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {seen[key]})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def _parse(text: str) -> tuple[yaml.Node | None, Any]:
    """The document's node tree (for line numbers) and its data, from one parse."""
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return node, data


def load_yaml(path: str | Path) -> tuple[Any, dict]:
    """Parse a YAML file; return its data and a map from field path to line number."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(name, None, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(name, None, "", f"cannot read file: {exc}")]) from None
    try:
        node, data = _parse(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        msg = f"not valid YAML: {exc.problem or exc}"
        if exc.context:
            msg += f" ({exc.context})"
        raise ConfigError([Problem(name, line, "", msg)]) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        msg = f"not valid YAML: character U+{char:04X} is not allowed ({exc.reason})"
        raise ConfigError([Problem(name, line, "", msg)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(name, None, "", f"not valid YAML: {exc}")]) from None
    index: dict = {}
    if node is not None:
        _line_index(node, (), index)
    return data, index


def _describe(value: Any) -> str:
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validation_problems(
    exc: ValidationError, file: str, index: dict, prefix: tuple[int | str, ...] = ()
) -> Iterator[Problem]:
    """One :class:`Problem` per pydantic error, located in the file where possible."""
    for err in exc.errors(include_url=False):
        # pydantic puts the tag of a discriminated union or a validator name into loc;
        # drop parts that are not keys of the data so the path reads like the file
        loc = tuple(err["loc"])
        loc = tuple(p for p in loc if isinstance(p, int) or not str(p).startswith("function-"))
        full = prefix + loc
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see the configuration reference)"
        elif "input" in err and not isinstance(err["input"], (dict, list)):
            msg += f" (got {_describe(err['input'])})"
        yield Problem(file, _nearest_line(full, index), format_path(full), msg)


def validate(model: type[M], data: Any, file: str, index: dict) -> M:
    """Validate parsed YAML against ``model`` or raise :class:`ConfigError`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(list(validation_problems(exc, file, index))) from None


def load_indexed(model: type[M], path: str | Path) -> tuple[M, dict]:
    """Read and validate one YAML mapping; also return its field-path -> line index."""
    data, index = load_yaml(path)
    if data is None:
        raise ConfigError([Problem(str(path), None, "", "file is empty")])
    if not isinstance(data, dict):
        msg = f"expected a mapping of keys (kind: ...), got {_describe(data)}"
        raise ConfigError([Problem(str(path), 1, "", msg)])
    return validate(model, data, str(path), index), index


def load(model: type[M], path: str | Path) -> M:
    """Read and validate one YAML file."""
    return load_indexed(model, path)[0]
