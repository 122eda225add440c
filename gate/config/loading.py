"""Loading the gate configuration: read the YAML, substitute, decode, word the problems.

:mod:`gate.config.model` holds the types, which check their own fields; this module reads the
file (its parse cached by :mod:`gate.config.parse_cache`), substitutes ``${NAME}`` /
``${NAME:-default}``, decodes it into a :class:`~gate.config.model.ConfigFile` within the file's
folder (relative paths), places it (:class:`~gate.config.model.GateConfig`), and turns every
problem into a :class:`~gate.errors.ConfigError` that names the file, the rule and the field, and
says what a valid value looks like.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from gate.config.model import (
    ConfigFile,
    GateConfig,
    Refusal,
    relative_to,
)
from gate.errors import ConfigError

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """The configuration file to use: ``explicit``, else ``$GATE_CONFIG``, else ``gate.yaml``."""
    chosen = explicit or os.environ.get("GATE_CONFIG") or "gate.yaml"
    return Path(chosen).expanduser().resolve()


def load_config(
    path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    *,
    parse_cache: Path | None = None,
) -> GateConfig:
    """Read and check the configuration at ``path``; :class:`ConfigError` on any problem.

    ``parse_cache``: a folder that keeps the file's YAML parse (:mod:`gate.config.parse_cache`; the
    command line's, so each command need not import PyYAML); None parses every time.
    """
    from gate.config.parse_cache import NotYaml, cached_parse

    file = Path(path).expanduser().resolve()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"configuration file {file} does not exist; pass --config or set GATE_CONFIG "
            "(see examples/seed/gate.yaml)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {file}: {exc.strerror}") from None
    try:
        raw = cached_parse(file, text, parse_cache)
    except NotYaml as exc:
        where = f" at line {exc.line}, column {exc.column}" if exc.line else ""
        raise ConfigError(f"{file}{where}: not valid YAML ({exc.problem})") from None
    try:
        with relative_to(file.parent):
            checked = check(substitute(raw, os.environ if env is None else env))
    except SchemaError as exc:
        raise ConfigError(
            f"{file}: {_label(exc.problem.path, raw)}: {exc.problem.message}"
        ) from None
    return _placed(file, checked)


def _label(path: tuple[str | int, ...], raw: Any) -> str:
    """``('rules', 0, 'tags')`` as the file's reader says it: ``rule 'node'.tags``."""
    if not path:
        return "top level"
    text = ""
    steps = list(path)
    if len(steps) >= 2 and steps[0] == "rules" and isinstance(steps[1], int):
        try:
            name = raw["rules"][steps[1]]["name"]
        except (KeyError, IndexError, TypeError):
            name = None
        if isinstance(name, str):
            text, steps = f"rule '{name}'", steps[2:]
    for step in steps:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else step)
    return text


def _placed(file: Path, top: ConfigFile) -> GateConfig:
    """The decoded file in its place: its folders resolved against it, registries by host."""

    def path(value: str) -> Path:
        return (file.parent / Path(value).expanduser()).resolve()

    return GateConfig(
        path=file,
        data_dir=path(top.data_dir or os.environ.get("GATE_DATA_DIR") or ".gate"),
        registries=top.registries_by_host,
        rules=tuple(top.rules),
        file=top,
        secrets_dir=path(top.secrets_dir) if top.secrets_dir else None,
    )


class SchemaProblem(msgspec.Struct, frozen=True):
    """One problem in a file: where (a path of keys and indexes) and what."""

    path: tuple[str | int, ...]
    message: str


class SchemaError(Exception):
    """The file does not fit the schema; :attr:`problem` says where and why."""

    def __init__(self, problem: SchemaProblem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def substitute(raw: Any, env: Mapping[str, str]) -> Any:
    """``raw`` with ``${NAME}`` / ``${NAME:-default}`` replaced and numbers turned into text.

    Keys become text too (a YAML ``15:`` key is the string ``"15"``). A variable that is unset
    or empty and has no default raises :class:`SchemaError` at its path.
    """

    def walk(value: Any, path: tuple[str | int, ...]) -> Any:
        if isinstance(value, str):
            return _ENV_PATTERN.sub(lambda m: _lookup(m, env, path), value)
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, int | float):
            return str(value)
        if isinstance(value, list):
            return [walk(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {str(k): walk(v, (*path, str(k))) for k, v in value.items()}
        return value

    return walk(raw, ())


def _lookup(match: re.Match[str], env: Mapping[str, str], path: tuple[str | int, ...]) -> str:
    name, default = match.group(1), match.group(2)
    if env.get(name):
        return env[name]
    if default is not None:
        return default
    raise SchemaError(
        SchemaProblem(
            path, f"environment variable {name} is not set; set it or write ${{{name}:-default}}"
        )
    )


def check(data: Any) -> ConfigFile:
    """``data`` (substituted) as a :class:`ConfigFile`; :class:`SchemaError` if it does not fit."""
    if not isinstance(data, dict):
        got = "nothing" if data is None else _kind(data)
        raise SchemaError(
            SchemaProblem((), f"expected a mapping with at least 'rules:', got {got}")
        )
    try:
        return msgspec.convert(data, ConfigFile, strict=False)
    except msgspec.ValidationError as exc:
        raise SchemaError(_explain(str(exc), data, exc.__cause__)) from None


# -- msgspec's messages in the file's own terms ---------------------------------------------------

# fields that earlier versions of the file had, and what to write instead
_MOVED: dict[tuple[str | int, ...], str] = {
    ("azure", "identity"): (
        "no longer read: a quick run cannot use the registry's identity. Name the "
        "user-assigned identity validation runs carry under azure.runner.identity "
        "{resource_id, client_id} and remove azure.identity"
    ),
}
_AT = re.compile(r"^(?P<what>.*?) - at `(?P<path>\$[^`]*)`$", re.DOTALL)
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")
_NUMBER = re.compile(r"[-+]?[0-9][0-9_.eE+-]*")
_KIND = {
    "str": "a string",
    "bool": "true or false",
    "int": "a whole number",
    "float": "a number",
    "array": "a list",
    "object": "a mapping",
    "null": "nothing",
}


def _explain(text: str, data: Any, cause: BaseException | None = None) -> SchemaProblem:
    # msgspec.inspect is imported where a problem is explained: a check that passes needs none
    import msgspec.inspect as mi

    matched = _AT.match(text)
    # "[...]" (a mapping's value) is dropped: the path then names the mapping
    path = tuple(int(i) if i else k for k, i in _STEP.findall(matched["path"])) if matched else ()
    if isinstance(cause, Refusal):
        # a __post_init__'s own words: msgspec knows the struct's path, the refusal the rest
        return SchemaProblem((*path, *cause.at), cause.message)
    if matched is None:
        return SchemaProblem((), text)
    what = matched["what"]
    if unknown := re.search(r"unknown field `([^`]*)`", what):
        if moved := _MOVED.get((*path, unknown[1])):
            return SchemaProblem((*path, unknown[1]), moved)
        node = _node(path, _value_at(data, path))
        allowed = (
            sorted(f.encode_name for f in node.fields) if isinstance(node, mi.StructType) else []
        )
        return SchemaProblem(path, f"unknown field(s) {unknown[1]}; allowed: {', '.join(allowed)}")
    if missing := re.search(r"missing required field `([^`]*)`", what):
        hint = _description((*path, missing[1]))
        return SchemaProblem(
            (*path, missing[1]), f"required but missing ({hint.rstrip('.')})" if hint else "missing"
        )
    value = _value_at(data, path)
    return SchemaProblem(path, _reword(what, value, _node(path, value)))


def _reword(what: str, value: Any, node: object) -> str:
    import msgspec.inspect as mi

    if isinstance(node, mi.LiteralType):
        return f"{_kind(value)} is not one of: {', '.join(map(str, node.values))}"
    if isinstance(node, mi.BoolType):
        return f"expected true or false, got {_kind(value)}"
    if isinstance(node, mi.FloatType | mi.IntType) and node.gt == 0:
        return f"expected a positive number, got {_kind(value)}"
    if isinstance(node, mi.StrType) and node.pattern and isinstance(value, str):
        return f"'{value}' does not match {node.pattern}"
    if "of length >= 1" in what:
        return "must not be empty"
    expected = re.match(r"Expected `([^`]*)`", what)
    if expected:
        wanted = " or ".join(_KIND.get(k.strip(), k.strip()) for k in expected[1].split("|"))
        return f"expected {wanted}, got {_kind(value)}"
    return what


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        return value  # a number of the file, turned into text by substitute()
    return repr(value)


def _value_at(data: Any, path: tuple[str | int, ...]) -> Any:
    for step in path:
        try:
            data = data[step]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _field(path: tuple[str | int, ...]) -> object:
    """The schema node of ``path`` with its annotations (descriptions) still attached."""
    import msgspec.inspect as mi

    node: object = mi.type_info(ConfigFile)
    for step in path:
        node = _bare(node, step)
        if isinstance(node, mi.StructType) and isinstance(step, str):
            node = next((f.type for f in node.fields if f.encode_name == step), None)
        elif isinstance(node, mi.ListType) and isinstance(step, int):
            node = node.item_type
        elif isinstance(node, mi.DictType) and isinstance(step, str):
            node = node.value_type
        else:
            return None
    return node


def _node(path: tuple[str | int, ...], value: Any = None) -> object:
    """The schema node of ``path``: annotations stripped, a union resolved by ``value``'s kind."""
    import msgspec.inspect as mi

    node = _bare(_field(path), None)
    if isinstance(node, mi.UnionType):
        kinds: dict[type, type] = {dict: mi.StructType, list: mi.ListType, str: mi.StrType}
        kind = kinds.get(type(value))
        fitting = [_bare(t, None) for t in node.types]
        return next((t for t in fitting if kind and isinstance(t, kind)), node)
    return node


def _bare(node: object, step: str | int | None) -> object:
    """``node`` without annotations; of a union, the member ``step`` can descend into."""
    import msgspec.inspect as mi

    while isinstance(node, mi.Metadata):
        node = node.type
    if not isinstance(node, mi.UnionType):
        return node
    members = [t for t in node.types if not isinstance(t, mi.NoneType)]
    if isinstance(step, int):
        members = [t for t in members if isinstance(t, mi.ListType)] or members
    elif isinstance(step, str):
        members = [t for t in members if isinstance(t, mi.StructType | mi.DictType)] or members
    return _bare(members[0], step) if len(members) == 1 else node


def _description(path: tuple[str | int, ...]) -> str | None:
    import msgspec.inspect as mi

    node = _field(path)
    if isinstance(node, mi.Metadata) and node.extra_json_schema:
        description = node.extra_json_schema.get("description")
        return str(description) if description else None
    return None
