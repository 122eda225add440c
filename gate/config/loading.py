"""Loading the gate configuration: read the YAML, substitute, decode, word the problems.

:mod:`gate.config.model` holds the types, which check their own fields; this module reads the
file (its parse cached by :mod:`gate.config.parse_cache`), substitutes ``${NAME}`` /
``${NAME:-default}``, decodes it into a :class:`~gate.config.model.ConfigFile` within the file's
folder (relative paths), adds the checks that span sections, and turns every problem into a
:class:`~gate.errors.ConfigError` that names the file, the rule and the field, and says what a
valid value looks like.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
from msgspec.structs import replace

from gate.config import model
from gate.config.model import (
    AttestationSettings,
    AzureSettings,
    ConfigFile,
    DownstreamEntry,
    GateConfig,
    Refusal,
    RegistrySettings,
    Rule,
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
    return _Builder(file).build(checked)


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


class _Builder:
    """Turns a decoded file into a GateConfig: the checks that span sections, and the defaults
    a section takes from another (a rule's validation_fresh_for, its ACR tasks' registry)."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.base = file.parent

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.file}: {where}: {message}")

    def path(self, value: str) -> Path:
        return (self.base / Path(value).expanduser()).resolve()

    def url(self, text: str, where: str) -> str:
        if not text.startswith("https://"):
            raise self.fail(where, f"'{text}' must be an https:// URL")
        return text.rstrip("/")

    def build(self, top: model.ConfigFile) -> GateConfig:
        data_dir = self.path(top.data_dir or os.environ.get("GATE_DATA_DIR") or ".gate")
        registries = self.registries(top.registries)
        # a rule without its own validation_fresh_for has the file's
        rules = tuple(
            r
            if r.fresh_for_given is not None
            else replace(r, fresh_for_given=top.validation_fresh_for)
            for r in top.rules
        )
        names = [r.name for r in rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise self.fail(
                "rules", f"rule names must be unique; repeated: {', '.join(duplicates)}"
            )
        azure = top.azure
        rules = tuple(self.downstream_defaults(rule, azure) for rule in rules)
        if azure is not None:
            for i, settings in enumerate(registries.values()):
                if settings.username is not None:
                    raise self.fail(
                        f"registries[{i}].username",
                        "with azure:, name the username by secret (username_secret): ACR "
                        "import and quick runs take credentials from Key Vault only",
                    )
            for rule in rules:
                if rule.target.registry != azure.registry.login_server:
                    raise self.fail(
                        f"rule '{rule.name}'.target",
                        f"'{rule.target.registry}' is not the Azure registry "
                        f"{azure.registry.login_server} (azure.registry) the gate imports into",
                    )
            self.need_runner_identity(registries, azure)
        self.attestation(top.attestation, azure)
        return GateConfig(
            path=self.file,
            data_dir=data_dir,
            registries=registries,
            rules=rules,
            file=top,
            secrets_dir=self.path(top.secrets_dir) if top.secrets_dir else None,
        )

    def attestation(self, entry: AttestationSettings | None, azure: AzureSettings | None) -> None:
        """The attestation's checks that need the azure section."""
        if entry is None:
            return
        if (entry.key_text is None) == (entry.key_vault_key is None):
            raise self.fail(
                "attestation",
                "name exactly one signing key: key (a PEM file, local gate) or key_vault_key "
                "(a Key Vault key URI, with azure:)",
            )
        if entry.key_vault_key is not None:
            if azure is None:
                raise self.fail(
                    "attestation.key_vault_key",
                    "a Key Vault key signs for the Azure gate (azure:); locally use key: with "
                    "a file from 'gate keygen'",
                )
            if azure.registry.promote != "push":
                # the attestation is an artifact pushed into the target repository: import
                # mode's role has no push right there (README, "Roles")
                raise self.fail(
                    "attestation",
                    "attestations need azure.registry.promote: push (the gate pushes the "
                    "attestation artifact; import mode's role cannot push)",
                )
            self.url(entry.key_vault_key, "attestation.key_vault_key")
            return
        assert entry.key is not None
        if azure is not None:
            # a private key file must not be shipped to a Function app: Key Vault signs there
            raise self.fail(
                "attestation.key",
                "with azure:, sign with a Key Vault key (key_vault_key: its URI) instead of a "
                "key file",
            )
        if not entry.key.is_file():
            raise self.fail(
                "attestation.key",
                f"{entry.key} does not exist; create a key pair with 'gate keygen "
                f"{entry.key_text}'",
            )

    @staticmethod
    def registries(entries: list[RegistrySettings]) -> dict[str, RegistrySettings]:
        # the entries have checked and normalised their hosts; a host listed twice: the last
        return {entry.host: entry for entry in entries}

    def downstream_defaults(self, rule: Rule, azure: AzureSettings | None) -> Rule:
        """Fill a rule's ACR downstream tasks from ``azure.registry``; check where each runs.

        ACR tasks run only with azure:, local task files only without it (a Function app has
        no container engine).
        """
        if not rule.downstream:
            return rule
        where = f"rule '{rule.name}'.downstream"
        filled: list[str | DownstreamEntry] = []
        for i, (entry, task) in enumerate(
            zip(rule.downstream_entries, rule.downstream, strict=True)
        ):
            if task.local:
                if azure is not None:
                    raise self.fail(
                        f"{where}[{i}].file",
                        "local task files run downstream in the local gate only; with azure:, "
                        "name an ACR task (task:) instead",
                    )
                filled.append(entry)
                continue
            if azure is None:
                raise self.fail(
                    f"{where}[{i}]",
                    f"'{task.task}' is an ACR task, and ACR tasks need the azure: section; "
                    "locally, name a task file instead ({file: path/to/acr-task.yaml}), or add "
                    "azure:",
                )
            home = azure.registry
            registry = task.registry or home.name
            group = task.resource_group
            if not group:
                if registry.lower() != home.name.lower():
                    raise self.fail(
                        f"{where}[{i}].resource_group",
                        f"task '{task.task}' lives in registry '{registry}', not in "
                        f"azure.registry: say its resource_group",
                    )
                group = home.resource_group
            filled.append(DownstreamEntry(task=task.task, registry=registry, resource_group=group))
        return replace(rule, downstream_entries=filled)

    def need_runner_identity(
        self, registries: Mapping[str, RegistrySettings], azure: AzureSettings
    ) -> None:
        """Validation runs that log in to a registry do it as the runner identity: require it."""
        if azure.runner_identity is not None:
            return
        logins = sorted(
            host
            for host, settings in registries.items()
            if settings.resource_id
            or (azure.key_vault_url and (settings.username_secret or settings.password_secret))
        )
        if logins:
            raise self.fail(
                "azure.runner.identity",
                f"validation runs log in to {', '.join(logins)}, and ACR task runs do that only "
                "as a user-assigned identity: add azure.runner.identity: {resource_id: <ARM id "
                "of the identity>, client_id: <its client id>} (with azure.runner's name and "
                "resource_group), and grant it AcrPull on those registries and read access to "
                "their Key Vault secrets",
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
