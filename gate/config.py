"""The gate configuration: a YAML file of registries, a validator section and rules.

A rule maps an upstream repository and tag selector to a target repository, tag templates and a
validation folder. Values may reference environment variables as ``${NAME}`` or
``${NAME:-default}``; relative paths resolve against the file's folder. Every error names the
file, the rule and the field, and says what a valid value looks like.
"""

from __future__ import annotations

import fnmatch
import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gate.errors import ConfigError, InvalidReference, NoMatchingRule, UsageError
from gate.ref import ImageRef, is_loopback_registry

DEFAULT_STABLE_TAG = "{tag}"
DEFAULT_UNIQUE_TAG = "{tag}-{run_id}"
TEMPLATE_FIELDS = frozenset({"tag", "run_id", "date"})
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_TAG_PATTERN = re.compile(r"^[\w][\w.-]{0,127}$")
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class RegistrySettings:
    """How to reach one registry host: plain HTTP (loopback only) and credential references."""

    host: str
    insecure: bool = False
    username: str | None = None
    username_secret: str | None = None
    password_secret: str | None = None
    resource_id: str | None = None


@dataclass(frozen=True)
class ValidationSettings:
    """A rule's validation: the folder sent as context, its task file, values and timeout."""

    folder: Path
    task: str = "acr-task.yaml"
    timeout_seconds: float = 600.0
    values: Mapping[str, str] = field(default_factory=dict)
    secret_values: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    """One watched upstream repository: which tags, where they go, how they are validated."""

    name: str
    source: ImageRef
    tags: tuple[str, ...]
    target: ImageRef
    validation: ValidationSettings
    stable_tag: str = DEFAULT_STABLE_TAG
    unique_tag: str = DEFAULT_UNIQUE_TAG
    untagged: bool = False

    @property
    def exact_tags(self) -> tuple[str, ...]:
        """The selectors that are plain tags (no glob characters)."""
        return tuple(t for t in self.tags if not _GLOB_CHARS & set(t))

    def watches(self, ref: ImageRef) -> bool:
        """True when ``ref`` is in this rule's upstream repository and, if tagged, its tag matches."""
        if (ref.registry, ref.repository) != (self.source.registry, self.source.repository):
            return False
        return ref.tag is None or self.selects(ref.tag)

    def selects(self, tag: str) -> bool:
        """True when ``tag`` matches one of the rule's exact tags or glob patterns."""
        return any(fnmatch.fnmatchcase(tag, pattern) for pattern in self.tags)

    def gated_tag(self, ref: ImageRef) -> str:
        """The upstream tag a request stands for: its own, or the rule's only exact tag."""
        if ref.tag is not None:
            return ref.tag
        if len(self.tags) == 1 and self.exact_tags:
            return self.tags[0]
        raise UsageError(
            f"'{ref}' names no tag and rule '{self.name}' watches several "
            f"({', '.join(self.tags)}): say which, e.g. '{ref.with_tag(self.exact_tags[0] if self.exact_tags else 'TAG')}'"
        )

    def render(self, template: str, *, tag: str, run_id: str, date: str) -> str:
        """Render a tag template; the result is checked against the tag grammar."""
        rendered = template.format(tag=tag, run_id=run_id, date=date)
        if not _TAG_PATTERN.match(rendered):
            raise UsageError(
                f"rule '{self.name}': template '{template}' renders the invalid tag '{rendered}' "
                f"for upstream tag '{tag}'; shorten the template or the tag"
            )
        return rendered


@dataclass(frozen=True)
class ValidatorSettings:
    """The local validator: which container engine and which network its steps get."""

    engine: str | None = None
    network: str = "none"


@dataclass(frozen=True)
class AzureRegistry:
    """An Azure Container Registry by ARM coordinates."""

    name: str
    resource_group: str
    login_server: str


@dataclass(frozen=True)
class AzureLedger:
    """Where records live in Azure: Table Storage (and a blob container for validation logs)."""

    table_endpoint: str | None = None
    connection_string: str | None = field(default=None, repr=False)
    table: str = "gaterecords"
    log_container: str = "gatelogs"


@dataclass(frozen=True)
class AzureSettings:
    """The Azure side: where promotions are imported, where quick runs run, secrets, records."""

    subscription_id: str
    registry: AzureRegistry
    runner: AzureRegistry
    arm_endpoint: str = "https://management.azure.com"
    key_vault_url: str | None = None
    ledger: AzureLedger | None = None
    identity: str = "[system]"


@dataclass(frozen=True)
class GateConfig:
    """A loaded, checked gate configuration."""

    path: Path
    data_dir: Path
    registries: Mapping[str, RegistrySettings]
    rules: tuple[Rule, ...]
    validator: ValidatorSettings = ValidatorSettings()
    secrets_dir: Path | None = None
    azure: AzureSettings | None = None

    def match(self, ref: ImageRef) -> Rule:
        """The first rule that watches ``ref``; :class:`NoMatchingRule` (nothing happens) if none."""
        for rule in self.rules:
            if rule.watches(ref):
                return rule
        watched = ", ".join(f"{r.source.name} [{', '.join(r.tags)}]" for r in self.rules)
        raise NoMatchingRule(
            f"no rule in {self.path} watches '{ref}'; watched: {watched or 'nothing'}. "
            "Add a rule for it or check the registry, repository and tag"
        )

    def rules_for_target(self, target: ImageRef) -> list[Rule]:
        """Rules that promote into ``target``'s repository."""
        return [r for r in self.rules if r.target.name == target.name]

    def registry(self, host: str) -> RegistrySettings:
        """Settings of ``host`` (defaults when the file does not list it)."""
        return self.registries.get(host, RegistrySettings(host=host))


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """The configuration file to use: ``explicit``, else ``$GATE_CONFIG``, else ``gate.yaml``."""
    chosen = explicit or os.environ.get("GATE_CONFIG") or "gate.yaml"
    return Path(chosen).expanduser().resolve()


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> GateConfig:
    """Read and check the configuration at ``path``; :class:`ConfigError` on any problem."""
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
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{file}{where}: not valid YAML ({getattr(exc, 'problem', exc)})"
        ) from None
    return _Loader(file, os.environ if env is None else env).load(raw)


class _Loader:
    """Turns the parsed YAML into a GateConfig, naming file, rule and field in every error."""

    def __init__(self, file: Path, env: Mapping[str, str]) -> None:
        self.file = file
        self.base = file.parent
        self.env = env

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.file}: {where}: {message}")

    def expand(self, value: Any, where: str) -> Any:
        """Substitute ${NAME} / ${NAME:-default} in strings (recursively)."""
        if isinstance(value, str):

            def sub(match: re.Match[str]) -> str:
                name, default = match.group(1), match.group(2)
                if name in self.env and self.env[name] != "":
                    return self.env[name]
                if default is not None:
                    return default
                raise self.fail(
                    where,
                    f"environment variable {name} is not set; set it or write ${{{name}:-default}}",
                )

            return _ENV_PATTERN.sub(sub, value)
        if isinstance(value, list):
            return [self.expand(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self.expand(v, f"{where}.{k}") for k, v in value.items()}
        return value

    def mapping(self, value: Any, where: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, got {type(value).__name__}")
        unknown = sorted(set(map(str, value)) - allowed)
        if unknown:
            raise self.fail(
                where,
                f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}",
            )
        return {str(k): v for k, v in value.items()}

    def text(self, value: Any, where: str) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(where, "expected a string")
        result = str(self.expand(str(value), where))
        if not result:
            raise self.fail(where, "must not be empty")
        return result

    def path(self, value: Any, where: str) -> Path:
        return (self.base / Path(self.text(value, where)).expanduser()).resolve()

    def ref(self, value: Any, where: str, *, repository_only: bool) -> ImageRef:
        text = self.text(value, where)
        try:
            ref = ImageRef.parse(text)
        except InvalidReference as exc:
            raise self.fail(where, exc.message) from None
        if repository_only and (ref.tag or ref.digest):
            raise self.fail(where, f"'{text}' must name a repository only, without tag or digest")
        return ref

    def number(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self.fail(where, f"expected a positive number of seconds, got {value!r}")
        return float(value)

    def load(self, raw: Any) -> GateConfig:
        if raw is None:
            raise self.fail("top level", "the file is empty; it needs at least 'rules:'")
        top = self.mapping(
            raw,
            "top level",
            {"version", "data_dir", "secrets_dir", "registries", "validator", "rules", "azure"},
        )
        if top.get("version", 1) != 1:
            raise self.fail("version", f"unsupported version {top['version']!r}; this gate reads 1")
        data_dir = self.path(
            top.get("data_dir", os.environ.get("GATE_DATA_DIR", ".gate")), "data_dir"
        )
        secrets_dir = self.path(top["secrets_dir"], "secrets_dir") if "secrets_dir" in top else None
        registries = self.registries(top.get("registries", []))
        validator = self.validator(top.get("validator", {}))
        rules_raw = top.get("rules")
        if not isinstance(rules_raw, list) or not rules_raw:
            raise self.fail("rules", "expected a non-empty list of rules")
        rules = tuple(self.rule(r, i) for i, r in enumerate(rules_raw))
        names = [r.name for r in rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise self.fail(
                "rules", f"rule names must be unique; repeated: {', '.join(duplicates)}"
            )
        azure = self.azure(top["azure"]) if "azure" in top else None
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
        return GateConfig(
            path=self.file,
            data_dir=data_dir,
            registries=registries,
            rules=rules,
            validator=validator,
            secrets_dir=secrets_dir,
            azure=azure,
        )

    def azure(self, raw: Any) -> AzureSettings:
        entry = self.mapping(
            raw,
            "azure",
            {
                "subscription_id",
                "arm_endpoint",
                "registry",
                "runner",
                "key_vault_url",
                "ledger",
                "identity",
            },
        )
        registry = self.acr(entry.get("registry"), "azure.registry")
        runner = self.acr(entry["runner"], "azure.runner") if "runner" in entry else registry
        ledger = None
        if "ledger" in entry:
            led = self.mapping(
                entry["ledger"],
                "azure.ledger",
                {"table_endpoint", "connection_string", "table", "log_container"},
            )
            endpoint = led.get("table_endpoint")
            connection = led.get("connection_string")
            if (endpoint is None) == (connection is None):
                raise self.fail(
                    "azure.ledger",
                    "give exactly one of table_endpoint (identity-based, for Azure) or "
                    "connection_string (for Azurite)",
                )
            ledger = AzureLedger(
                table_endpoint=self.url(endpoint, "azure.ledger.table_endpoint")
                if endpoint
                else None,
                connection_string=(
                    self.text(connection, "azure.ledger.connection_string") if connection else None
                ),
                table=self.text(led.get("table", "gaterecords"), "azure.ledger.table"),
                log_container=self.text(
                    led.get("log_container", "gatelogs"), "azure.ledger.log_container"
                ),
            )
        vault = entry.get("key_vault_url")
        return AzureSettings(
            subscription_id=self.text(entry.get("subscription_id"), "azure.subscription_id"),
            registry=registry,
            runner=runner,
            arm_endpoint=self.url(
                entry.get("arm_endpoint", "https://management.azure.com"), "azure.arm_endpoint"
            ),
            key_vault_url=self.url(vault, "azure.key_vault_url") if vault is not None else None,
            ledger=ledger,
            identity=self.text(entry.get("identity", "[system]"), "azure.identity"),
        )

    def acr(self, raw: Any, where: str) -> AzureRegistry:
        entry = self.mapping(raw, where, {"name", "resource_group", "login_server"})
        name = self.text(entry.get("name"), f"{where}.name")
        if not re.fullmatch(r"[A-Za-z0-9]{5,50}", name):
            raise self.fail(
                f"{where}.name", f"'{name}' is not a registry name (5-50 letters and digits)"
            )
        login = self.text(
            entry.get("login_server", f"{name.lower()}.azurecr.io"), f"{where}.login_server"
        )
        return AzureRegistry(
            name=name,
            resource_group=self.text(entry.get("resource_group"), f"{where}.resource_group"),
            login_server=login,
        )

    def url(self, raw: Any, where: str) -> str:
        text = self.text(raw, where).rstrip("/")
        if not text.startswith("https://"):
            raise self.fail(where, f"'{text}' must be an https:// URL")
        return text

    def registries(self, raw: Any) -> dict[str, RegistrySettings]:
        if not isinstance(raw, list):
            raise self.fail(
                "registries",
                "expected a list of {host, insecure, username, password_secret, resource_id}",
            )
        result: dict[str, RegistrySettings] = {}
        for i, item in enumerate(raw):
            where = f"registries[{i}]"
            entry = self.mapping(
                item,
                where,
                {
                    "host",
                    "insecure",
                    "username",
                    "username_secret",
                    "password_secret",
                    "resource_id",
                },
            )
            host = self.text(entry.get("host"), f"{where}.host")
            try:
                probe = ImageRef.parse(f"{host}/probe")
            except InvalidReference:
                probe = None
            # a name without '.' or ':port' (and not localhost) would read as a Docker Hub path
            if probe is None or probe.repository not in ("probe", "library/probe"):
                raise self.fail(
                    f"{where}.host",
                    f"'{host}' is not a registry host[:port]; write e.g. registry.example.com "
                    "or 127.0.0.1:5000",
                )
            host = probe.registry
            insecure = entry.get("insecure", False)
            if not isinstance(insecure, bool):
                raise self.fail(f"{where}.insecure", "expected true or false")
            if insecure and not is_loopback_registry(host):
                raise self.fail(
                    f"{where}.insecure",
                    f"plain HTTP is allowed for loopback registries only, not '{host}'; "
                    "serve it over TLS",
                )
            optional = {
                key: self.text(entry[key], f"{where}.{key}") if entry.get(key) is not None else None
                for key in ("username", "username_secret", "password_secret", "resource_id")
            }
            if optional["username"] and optional["username_secret"]:
                raise self.fail(where, "give username or username_secret, not both")
            if (optional["username"] or optional["username_secret"]) and not optional[
                "password_secret"
            ]:
                raise self.fail(f"{where}.password_secret", "a username needs a password_secret")
            resource_id = optional["resource_id"]
            if resource_id and not re.fullmatch(
                r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
                r"Microsoft\.ContainerRegistry/registries/[A-Za-z0-9]+",
                resource_id,
                flags=re.IGNORECASE,
            ):
                raise self.fail(
                    f"{where}.resource_id",
                    "expected /subscriptions/…/resourceGroups/…/providers/"
                    "Microsoft.ContainerRegistry/registries/NAME",
                )
            result[host] = RegistrySettings(host=host, insecure=insecure, **optional)
        return result

    def validator(self, raw: Any) -> ValidatorSettings:
        entry = self.mapping(raw, "validator", {"engine", "network"})
        engine = entry.get("engine", "auto")
        engine_text = self.text(engine, "validator.engine")
        network = self.text(entry.get("network", "none"), "validator.network")
        return ValidatorSettings(
            engine=None if engine_text == "auto" else engine_text, network=network
        )

    def rule(self, raw: Any, index: int) -> Rule:
        label = f"rules[{index}]"
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            label = f"rule '{raw['name']}'"
        entry = self.mapping(
            raw,
            label,
            {
                "name",
                "source",
                "tags",
                "target",
                "stable_tag",
                "unique_tag",
                "validation",
                "untagged",
            },
        )
        name = self.text(entry.get("name"), f"{label}.name")
        source = self.ref(entry.get("source"), f"{label}.source", repository_only=True)
        tags_raw = entry.get("tags")
        if isinstance(tags_raw, str):
            tags_raw = [tags_raw]
        if not isinstance(tags_raw, list) or not tags_raw:
            raise self.fail(
                f"{label}.tags",
                "expected a list of tags or glob patterns, e.g. ['15-alpine', '16-*']",
            )
        tags = tuple(self.text(t, f"{label}.tags[{i}]") for i, t in enumerate(tags_raw))
        target = self.ref(entry.get("target"), f"{label}.target", repository_only=True)
        stable = self.template(entry.get("stable_tag", DEFAULT_STABLE_TAG), f"{label}.stable_tag")
        unique = self.template(entry.get("unique_tag", DEFAULT_UNIQUE_TAG), f"{label}.unique_tag")
        if "{run_id}" not in unique:
            raise self.fail(
                f"{label}.unique_tag",
                f"'{unique}' must contain {{run_id}} so every promotion gets its own tag",
            )
        if stable == unique:
            raise self.fail(f"{label}.stable_tag", "must differ from unique_tag")
        validation = self.validation(entry.get("validation"), f"{label}.validation")
        untagged = entry.get("untagged", False)
        if not isinstance(untagged, bool):
            raise self.fail(f"{label}.untagged", "expected true or false")
        if untagged and (len(tags) != 1 or set(tags[0]) & _GLOB_CHARS):
            raise self.fail(
                f"{label}.untagged",
                "gating untagged pushes needs exactly one exact tag in 'tags' (it names the stable tag)",
            )
        return Rule(
            name=name,
            source=source,
            tags=tags,
            target=target,
            validation=validation,
            stable_tag=stable,
            unique_tag=unique,
            untagged=untagged,
        )

    def template(self, raw: Any, where: str) -> str:
        text = self.text(raw, where)
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
        except ValueError as exc:
            raise self.fail(where, f"'{text}' is not a valid template ({exc})") from None
        unknown = sorted(fields - TEMPLATE_FIELDS)
        if unknown:
            raise self.fail(
                where,
                f"unknown placeholder(s) {', '.join('{' + f + '}' for f in unknown)}; "
                f"use {', '.join('{' + f + '}' for f in sorted(TEMPLATE_FIELDS))}",
            )
        return text

    def validation(self, raw: Any, where: str) -> ValidationSettings:
        if raw is None:
            raise self.fail(where, "missing; every rule needs a validation folder")
        entry = self.mapping(raw, where, {"folder", "task", "timeout", "values", "secret_values"})
        folder = self.path(entry.get("folder"), f"{where}.folder")
        if not folder.is_dir():
            raise self.fail(f"{where}.folder", f"{folder} is not a directory")
        task = self.text(entry.get("task", "acr-task.yaml"), f"{where}.task")
        if not (folder / task).is_file():
            raise self.fail(f"{where}.task", f"{folder / task} does not exist")
        timeout = self.number(entry.get("timeout", 600), f"{where}.timeout")
        values = self.string_map(entry.get("values", {}), f"{where}.values")
        secret_values = self.string_map(entry.get("secret_values", {}), f"{where}.secret_values")
        clash = sorted(set(values) & set(secret_values))
        if clash:
            raise self.fail(where, f"{', '.join(clash)} given in both values and secret_values")
        return ValidationSettings(
            folder=folder,
            task=task,
            timeout_seconds=timeout,
            values=values,
            secret_values=secret_values,
        )

    def string_map(self, raw: Any, where: str) -> dict[str, str]:
        if not isinstance(raw, dict):
            raise self.fail(where, "expected a mapping of NAME: value")
        return {str(k): self.text(v, f"{where}.{k}") for k, v in raw.items()}
