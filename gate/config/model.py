"""The gate configuration: a YAML file of registries, a validator section and rules.

A rule maps an upstream repository and tag selector to a target repository, tag templates and a
validation folder. Values may reference environment variables as ``${NAME}`` or
``${NAME:-default}``; relative paths resolve against the file's folder. Every error names the
file, the rule and the field, and says what a valid value looks like.

Checking runs in two passes: :mod:`gate.config.schema` checks the file's shape (fields, types,
required keys, bounds) against typed records, and this module builds the domain's frozen
settings from them, adding the checks that span fields or need the file system.

The settings are frozen msgspec Structs rather than dataclasses: every command loads them, and
creating a dataclass compiles its generated methods (about half a millisecond a class, here a
third of reading the file) where a Struct's are built in C.
"""

from __future__ import annotations

import fnmatch
import os
import re
import string
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec.structs import replace

from gate.domain.platforms import Platform, PlatformError
from gate.domain.ref import ImageRef, is_loopback_registry
from gate.errors import ConfigError, InvalidReference, NoMatchingRule, UsageError

if TYPE_CHECKING:
    from gate.config import schema as schema
DEFAULT_STABLE_TAG = "{tag}"
DEFAULT_UNIQUE_TAG = "{tag}-{run_id}"
TEMPLATE_FIELDS = frozenset({"tag", "run_id", "date"})
_TAG_PATTERN = re.compile(r"^[\w][\w.-]{0,127}$")
_GLOB_CHARS = frozenset("*?[")


class RegistrySettings(msgspec.Struct, frozen=True):
    """How to reach one registry host: plain HTTP (loopback only) and credential references."""

    host: str
    insecure: bool = False
    username: str | None = None
    username_secret: str | None = None
    password_secret: str | None = None
    resource_id: str | None = None
    token_realms: tuple[str, ...] = ()


class ValidationSettings(msgspec.Struct, frozen=True):
    """A rule's validation: the folder sent as context, its task file, values and timeout."""

    folder: Path
    task: str = "acr-task.yaml"
    timeout_seconds: float = 600.0
    values: Mapping[str, str] = msgspec.field(default_factory=dict)
    secret_values: Mapping[str, str] = msgspec.field(default_factory=dict)


PROMOTE_MODES = ("import", "push")


DOWNSTREAM_VALUES = ("BASE_IMAGE", "BASE_DIGEST", "BASE_IMAGE_PINNED", "REGISTRY_FROM_URL")
"""Values the gate sets for a local downstream task file (see gate.adapters.downstream.local)."""

LOCAL_DOWNSTREAM = "local"
"""The ``registry`` of a downstream task that is a local task file."""


class DownstreamTask(msgspec.Struct, frozen=True):
    """A task the gate runs after each promotion of a rule (``downstream:``).

    An ACR task: ``registry`` / ``resource_group`` locate the registry the task lives in (by
    default the registry the gate promotes into); ``task`` is the task's name there. A local
    task file: ``file`` is its path, ``registry`` is ``local`` and ``task`` the path as
    written; ``values`` and ``timeout_seconds`` are its run's.
    """

    task: str
    registry: str = ""
    resource_group: str = ""
    file: Path | None = None
    values: Mapping[str, str] = msgspec.field(default_factory=dict)
    timeout_seconds: float = 600.0

    @property
    def local(self) -> bool:
        """True for a local task file, run by the local gate."""
        return self.file is not None

    def task_id(self, subscription_id: str) -> str:
        """The task's ARM id (what a ``TaskRunRequest`` names)."""
        return (
            f"/subscriptions/{subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.ContainerRegistry/registries/{self.registry}/tasks/{self.task}"
        )


class Revalidation(msgspec.Struct, frozen=True):
    """A rule's scheduled re-validation: how often, what a failure does, how far back to look."""

    every_seconds: float
    on_failure: str = "demote"  # or "alert"
    candidates: int = 5


class Rule(msgspec.Struct, frozen=True):
    """One watched upstream repository: which tags, where they go, how they are validated."""

    name: str
    source: ImageRef
    tags: tuple[str, ...]
    target: ImageRef
    validation: ValidationSettings
    stable_tag: str = DEFAULT_STABLE_TAG
    unique_tag: str = DEFAULT_UNIQUE_TAG
    untagged: bool = False
    downstream: tuple[DownstreamTask, ...] = ()
    validation_fresh_for: float = 86400.0
    signature_keys: tuple[str, ...] = ()
    # minimum age (seconds since the gate first saw a digest) before a promotion; 0: none
    cooldown_seconds: float = 0.0
    revalidate: Revalidation | None = None
    # validated one by one, each on its child manifest of the upstream index; (): one run on
    # the runtime's default platform
    platforms: tuple[Platform, ...] = ()

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


class ValidatorSettings(msgspec.Struct, frozen=True):
    """The local validator: which container engine and which network its steps get."""

    engine: str | None = None
    network: str = "none"
    keep_images: bool = False


class AzureRegistry(msgspec.Struct, frozen=True):
    """An Azure Container Registry by ARM coordinates.

    ``promote`` (the target registry only) is how promotions get there: ``import`` (ACR's
    import API) or ``push`` (the gate copies over the data plane, like ``docker push``).
    """

    name: str
    resource_group: str
    login_server: str
    promote: str = "import"


class AzureLedger(msgspec.Struct, frozen=True):
    """Where records live in Azure: Table Storage (and a blob container for validation logs)."""

    table_endpoint: str | None = None
    connection_string: str | None = None
    table: str = "gaterecords"
    log_container: str = "gatelogs"

    def __repr__(self) -> str:  # a connection string holds the account key: never in a repr
        return (
            f"AzureLedger(table_endpoint={self.table_endpoint!r}, table={self.table!r}, "
            f"log_container={self.log_container!r})"
        )


class RunnerIdentity(msgspec.Struct, frozen=True):
    """The user-assigned identity attached to every validation run (ACR task run).

    ``resource_id`` (its ARM id) attaches it to the run; ``client_id`` is how the run's registry
    credentials name it. It pulls upstream ACRs (AcrPull) and reads their Key Vault secrets.
    """

    resource_id: str
    client_id: str


class AzureSettings(msgspec.Struct, frozen=True):
    """The Azure side: where promotions are imported, where quick runs run, secrets, records."""

    subscription_id: str
    registry: AzureRegistry
    runner: AzureRegistry
    arm_endpoint: str = "https://management.azure.com"
    key_vault_url: str | None = None
    ledger: AzureLedger | None = None
    runner_identity: RunnerIdentity | None = None


class LeaseSettings(msgspec.Struct, frozen=True):
    """A lease on a record in progress: how long it lasts, how often its holder renews it."""

    seconds: float = 60.0
    heartbeat_seconds: float = 10.0


class RetentionSettings(msgspec.Struct, frozen=True):
    """Seconds the ledger keeps final records (None: forever); see :mod:`gate.usecases.retention`."""

    keep_seconds: int | None = 400 * 86400


class PollSettings(msgspec.Struct, frozen=True):
    """A watch pass: requests in flight per registry host, and the seconds the pass may take."""

    concurrency_per_registry: int = 8
    budget_seconds: float = 240.0


class AttestationSettings(msgspec.Struct, frozen=True):
    """The promotion attestation: the signing key file, the verifier id, referrers API use."""

    key: Path | None
    verifier_id: str
    referrers_api: bool = True
    key_vault_key: str | None = None


class GateConfig(msgspec.Struct, frozen=True):
    """A loaded, checked gate configuration."""

    path: Path
    data_dir: Path
    registries: Mapping[str, RegistrySettings]
    rules: tuple[Rule, ...]
    validator: ValidatorSettings = ValidatorSettings()
    secrets_dir: Path | None = None
    azure: AzureSettings | None = None
    attestation: AttestationSettings | None = None
    lease: LeaseSettings = LeaseSettings()
    poll: PollSettings = PollSettings()
    retention: RetentionSettings = RetentionSettings()

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
    # the schema is imported here, not with this module: the Functions app's cold start
    # imports gate.config.model but loads a file only on its first invocation
    from gate.config import schema as config_schema
    try:
        checked = config_schema.check(
            config_schema.substitute(raw, os.environ if env is None else env)
        )
    except config_schema.SchemaError as exc:
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
    """Turns a schema-checked file into a GateConfig: the checks that span fields or the disk."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.base = file.parent

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.file}: {where}: {message}")

    def path(self, value: str) -> Path:
        return (self.base / Path(value).expanduser()).resolve()

    def ref(self, text: str, where: str) -> ImageRef:
        try:
            ref = ImageRef.parse(text)
        except InvalidReference as exc:
            raise self.fail(where, exc.message) from None
        if ref.tag or ref.digest:
            raise self.fail(where, f"'{text}' must name a repository only, without tag or digest")
        return ref

    def url(self, text: str, where: str) -> str:
        if not text.startswith("https://"):
            raise self.fail(where, f"'{text}' must be an https:// URL")
        return text.rstrip("/")

    def build(self, top: schema.ConfigFile) -> GateConfig:
        data_dir = self.path(top.data_dir or os.environ.get("GATE_DATA_DIR") or ".gate")
        registries = self.registries(top.registries)
        rules = tuple(self.rule(r, top.validation_fresh_for) for r in top.rules)
        if top.lease.heartbeat * 2 > top.lease.seconds:
            raise self.fail(
                "lease.heartbeat",
                f"{top.lease.heartbeat:g} s is more than half of lease.seconds "
                f"({top.lease.seconds:g} s): one late renewal would lose the lease; renew at "
                "least twice per lease",
            )
        names = [r.name for r in rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise self.fail(
                "rules", f"rule names must be unique; repeated: {', '.join(duplicates)}"
            )
        azure = self.azure(top.azure) if top.azure is not None else None
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
        engine = top.validator.engine
        return GateConfig(
            path=self.file,
            data_dir=data_dir,
            registries=registries,
            rules=rules,
            validator=ValidatorSettings(
                engine=None if engine == "auto" else engine,
                network=top.validator.network,
                keep_images=top.validator.keep_images,
            ),
            secrets_dir=self.path(top.secrets_dir) if top.secrets_dir else None,
            azure=azure,
            lease=LeaseSettings(seconds=top.lease.seconds, heartbeat_seconds=top.lease.heartbeat),
            poll=PollSettings(
                concurrency_per_registry=top.poll.concurrency_per_registry,
                budget_seconds=top.poll.budget,
            ),
            attestation=self.attestation(top.attestation, azure),
            retention=self.retention(top.ledger),
        )

    def retention(self, entry: schema.LedgerSection) -> RetentionSettings:
        from gate.config.schema import duration_seconds

        if entry.keep is None:
            return RetentionSettings(keep_seconds=None)
        seconds = duration_seconds(entry.keep)
        if seconds < 86400:
            # records are the audit trail: a typo like 40s must not empty it overnight
            raise self.fail("ledger.keep", f"is {entry.keep}: keep records at least 1d (or null)")
        return RetentionSettings(keep_seconds=seconds)

    def attestation(
        self, entry: schema.AttestationSection | None, azure: AzureSettings | None
    ) -> AttestationSettings | None:
        if entry is None:
            return None
        if (entry.key is None) == (entry.key_vault_key is None):
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
            return AttestationSettings(
                key=None,
                key_vault_key=self.url(entry.key_vault_key, "attestation.key_vault_key"),
                verifier_id=entry.verifier_id,
                referrers_api=entry.referrers_api,
            )
        assert entry.key is not None
        if azure is not None:
            # a private key file must not be shipped to a Function app: Key Vault signs there
            raise self.fail(
                "attestation.key",
                "with azure:, sign with a Key Vault key (key_vault_key: its URI) instead of a "
                "key file",
            )
        key = self.path(entry.key)
        if not key.is_file():
            raise self.fail(
                "attestation.key",
                f"{key} does not exist; create a key pair with 'gate keygen {entry.key}'",
            )
        return AttestationSettings(
            key=key, verifier_id=entry.verifier_id, referrers_api=entry.referrers_api
        )

    def registries(self, entries: list[schema.RegistryEntry]) -> dict[str, RegistrySettings]:
        result: dict[str, RegistrySettings] = {}
        for i, entry in enumerate(entries):
            where = f"registries[{i}]"
            try:
                probe = ImageRef.parse(f"{entry.host}/probe")
            except InvalidReference:
                probe = None
            # a name without '.' or ':port' (and not localhost) would read as a Docker Hub path
            if probe is None or probe.repository not in ("probe", "library/probe"):
                raise self.fail(
                    f"{where}.host",
                    f"'{entry.host}' is not a registry host[:port]; write e.g. "
                    "registry.example.com or 127.0.0.1:5000",
                )
            host = probe.registry
            if entry.insecure and not is_loopback_registry(host):
                raise self.fail(
                    f"{where}.insecure",
                    f"plain HTTP is allowed for loopback registries only, not '{host}'; "
                    "serve it over TLS",
                )
            if entry.username and entry.username_secret:
                raise self.fail(where, "give username or username_secret, not both")
            if (entry.username or entry.username_secret) and not entry.password_secret:
                raise self.fail(f"{where}.password_secret", "a username needs a password_secret")
            if entry.resource_id and not _ACR_ID.fullmatch(entry.resource_id):
                raise self.fail(
                    f"{where}.resource_id",
                    "expected /subscriptions/…/resourceGroups/…/providers/"
                    "Microsoft.ContainerRegistry/registries/NAME",
                )
            for j, realm in enumerate(entry.token_realms):
                if not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]+)?", realm):
                    raise self.fail(
                        f"{where}.token_realms[{j}]",
                        f"'{realm}' is not a host[:port]; write the realm's host only, e.g. "
                        "auth.example.com (no scheme, no path)",
                    )
            result[host] = RegistrySettings(
                host=host,
                insecure=entry.insecure,
                username=entry.username or None,
                username_secret=entry.username_secret or None,
                password_secret=entry.password_secret or None,
                resource_id=entry.resource_id or None,
                token_realms=tuple(entry.token_realms),
            )
        return result

    def rule(self, entry: schema.RuleEntry, fresh_for: float) -> Rule:
        label = f"rule '{entry.name}'"
        tags = (entry.tags,) if isinstance(entry.tags, str) else tuple(entry.tags)
        stable = self.template(entry.stable_tag, f"{label}.stable_tag")
        unique = self.template(entry.unique_tag, f"{label}.unique_tag")
        if "{run_id}" not in unique:
            raise self.fail(
                f"{label}.unique_tag",
                f"'{unique}' must contain {{run_id}} so every promotion gets its own tag",
            )
        if stable == unique:
            raise self.fail(f"{label}.stable_tag", "must differ from unique_tag")
        if entry.untagged and (len(tags) != 1 or set(tags[0]) & _GLOB_CHARS):
            raise self.fail(
                f"{label}.untagged",
                "gating untagged pushes needs exactly one exact tag in 'tags' (it names the "
                "stable tag)",
            )
        return Rule(
            name=entry.name,
            source=self.ref(entry.source, f"{label}.source"),
            tags=tags,
            target=self.ref(entry.target, f"{label}.target"),
            validation=self.validation(entry.validation, f"{label}.validation"),
            stable_tag=stable,
            unique_tag=unique,
            untagged=entry.untagged,
            downstream=self.downstream(entry.downstream, f"{label}.downstream"),
            validation_fresh_for=(
                entry.validation_fresh_for if entry.validation_fresh_for is not None else fresh_for
            ),
            signature_keys=self.signature_keys(entry.require_signature, label),
            cooldown_seconds=self.cooldown(entry.cooldown),
            revalidate=self.revalidation(entry.revalidate),
            platforms=self.platforms(entry.platforms, f"{label}.platforms"),
        )

    def platforms(self, texts: list[str], where: str) -> tuple[Platform, ...]:
        parsed: list[Platform] = []
        for i, text in enumerate(texts):
            try:
                platform = Platform.parse(text)
            except PlatformError as exc:
                raise self.fail(f"{where}[{i}]", str(exc)) from None
            if platform in parsed:
                raise self.fail(f"{where}[{i}]", f"lists {text} twice; list each platform once")
            parsed.append(platform)
        return tuple(parsed)

    @staticmethod
    def revalidation(entry: schema.RevalidateEntry | None) -> Revalidation | None:
        if entry is None:
            return None
        from gate.config.schema import duration_seconds

        return Revalidation(
            every_seconds=float(duration_seconds(entry.every)),
            on_failure=entry.on_failure,
            candidates=entry.candidates,
        )

    @staticmethod
    def cooldown(text: str | None) -> float:
        from gate.config.schema import duration_seconds

        return float(duration_seconds(text)) if text else 0.0

    def signature_keys(
        self, entry: schema.RequireSignatureEntry | None, label: str
    ) -> tuple[str, ...]:
        if entry is None:
            return ()
        keys = []
        for i, text in enumerate(entry.keys):
            where = f"{label}.require_signature.keys[{i}]"
            if text.startswith("https://"):
                if not _KEY_VAULT_KEY.fullmatch(text):
                    raise self.fail(
                        where,
                        f"'{text}' is not a Key Vault key URI "
                        "(https://VAULT.vault.azure.net/keys/NAME[/VERSION])",
                    )
                keys.append(text)
                continue
            path = self.path(text)
            if not path.is_file():
                raise self.fail(where, f"{path} does not exist; name the signer's PEM public key")
            keys.append(str(path))
        return tuple(keys)

    def downstream(
        self, entries: list[str | schema.DownstreamEntry], where: str
    ) -> tuple[DownstreamTask, ...]:
        """``downstream:`` as written: task names, {task, registry, resource_group}, {file}."""
        tasks = tuple(self.downstream_task(e, f"{where}[{i}]") for i, e in enumerate(entries))
        keys = [(t.registry.lower(), t.task.lower()) for t in tasks]
        if len(set(keys)) != len(keys):
            raise self.fail(where, "lists the same task twice; each task runs once per promotion")
        return tasks

    def downstream_task(self, entry: str | schema.DownstreamEntry, where: str) -> DownstreamTask:
        if isinstance(entry, str):
            return DownstreamTask(task=entry)
        if (entry.task is None) == (entry.file is None):
            raise self.fail(
                where,
                "give either task (an ACR task, Azure) or file (a local task file), not "
                f"{'both' if entry.task else 'neither'}",
            )
        if entry.task is not None:
            if entry.values or entry.timeout != 600.0:
                raise self.fail(
                    where,
                    "values and timeout are for local task files (file:); an ACR task has its "
                    "own values and timeout in Azure",
                )
            return DownstreamTask(
                task=entry.task,
                registry=entry.registry or "",
                resource_group=entry.resource_group or "",
            )
        if entry.registry or entry.resource_group:
            raise self.fail(
                where, "registry and resource_group are for ACR tasks (task:), not for file:"
            )
        assert entry.file is not None
        path = self.path(entry.file)
        if path.is_dir():
            path = path / "acr-task.yaml"
        if not path.is_file():
            raise self.fail(
                f"{where}.file",
                f"{path} does not exist; write the task file, or point file at it (or at the "
                "folder that holds its acr-task.yaml)",
            )
        reserved = sorted(set(entry.values) & set(DOWNSTREAM_VALUES))
        if reserved:
            raise self.fail(
                f"{where}.values", f"{', '.join(reserved)} are set by the gate; rename them"
            )
        return DownstreamTask(
            task=entry.file,
            registry=LOCAL_DOWNSTREAM,
            file=path,
            values=dict(entry.values),
            timeout_seconds=entry.timeout,
        )

    def downstream_defaults(self, rule: Rule, azure: AzureSettings | None) -> Rule:
        """Fill a rule's ACR downstream tasks from ``azure.registry``; check where each runs.

        ACR tasks run only with azure:, local task files only without it (a Function app has
        no container engine).
        """
        if not rule.downstream:
            return rule
        where = f"rule '{rule.name}'.downstream"
        filled = []
        for i, task in enumerate(rule.downstream):
            if task.local:
                if azure is not None:
                    raise self.fail(
                        f"{where}[{i}].file",
                        "local task files run downstream in the local gate only; with azure:, "
                        "name an ACR task (task:) instead",
                    )
                filled.append(task)
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
            filled.append(DownstreamTask(task=task.task, registry=registry, resource_group=group))
        return replace(rule, downstream=tuple(filled))

    def template(self, text: str, where: str) -> str:
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

    def validation(self, entry: schema.ValidationEntry, where: str) -> ValidationSettings:
        folder = self.path(entry.folder)
        if not folder.is_dir():
            raise self.fail(f"{where}.folder", f"{folder} is not a directory")
        if not (folder / entry.task).is_file():
            raise self.fail(f"{where}.task", f"{folder / entry.task} does not exist")
        clash = sorted(set(entry.values) & set(entry.secret_values))
        if clash:
            raise self.fail(where, f"{', '.join(clash)} given in both values and secret_values")
        return ValidationSettings(
            folder=folder,
            task=entry.task,
            timeout_seconds=entry.timeout,
            values=dict(entry.values),
            secret_values=dict(entry.secret_values),
        )

    def azure(self, entry: schema.AzureSection) -> AzureSettings:
        registry = replace(self.acr(entry.registry), promote=entry.registry.promote)
        runner = self.acr(entry.runner) if entry.runner is not None else registry
        ledger = None
        if entry.ledger is not None:
            led = entry.ledger
            if bool(led.table_endpoint) == bool(led.connection_string):
                raise self.fail(
                    "azure.ledger",
                    "give exactly one of table_endpoint (identity-based, for Azure) or "
                    "connection_string (for Azurite)",
                )
            ledger = AzureLedger(
                table_endpoint=self.url(led.table_endpoint, "azure.ledger.table_endpoint")
                if led.table_endpoint
                else None,
                connection_string=led.connection_string or None,
                table=led.table,
                log_container=led.log_container,
            )
        return AzureSettings(
            subscription_id=entry.subscription_id,
            registry=registry,
            runner=runner,
            arm_endpoint=self.url(entry.arm_endpoint, "azure.arm_endpoint"),
            key_vault_url=self.url(entry.key_vault_url, "azure.key_vault_url")
            if entry.key_vault_url
            else None,
            ledger=ledger,
            runner_identity=self.runner_identity(entry.runner),
        )

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

    def runner_identity(self, runner: schema.RunnerEntry | None) -> RunnerIdentity | None:
        """``azure.runner.identity``: a user-assigned identity's ARM id and client id."""
        entry = runner.identity if runner is not None else None
        if entry is None:
            return None
        where = "azure.runner.identity"
        if not _IDENTITY_ID.fullmatch(entry.resource_id):
            raise self.fail(
                f"{where}.resource_id",
                f"'{entry.resource_id}' is not the ARM id of a user-assigned identity "
                "(/subscriptions/<sub>/resourceGroups/<rg>/providers/"
                "Microsoft.ManagedIdentity/userAssignedIdentities/<name>); ACR task runs take "
                "user-assigned identities only",
            )
        if not _GUID.fullmatch(entry.client_id):
            raise self.fail(
                f"{where}.client_id",
                f"'{entry.client_id}' is not a client id (a GUID); copy it from "
                "'az identity show --query clientId'",
            )
        return RunnerIdentity(resource_id=entry.resource_id, client_id=entry.client_id)

    def acr(self, entry: schema.AcrEntry) -> AzureRegistry:
        return AzureRegistry(
            name=entry.name,
            resource_group=entry.resource_group,
            login_server=entry.login_server or f"{entry.name.lower()}.azurecr.io",
        )


_IDENTITY_ID = re.compile(
    r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
    r"Microsoft\.ManagedIdentity/userAssignedIdentities/[^/]+",
    flags=re.IGNORECASE,
)
_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
# a Key Vault key URI: https://{vault host}/keys/{name}[/{version}] (names: 1-127 of [0-9a-zA-Z-])
_KEY_VAULT_KEY = re.compile(r"https://[A-Za-z0-9.-]+(?::[0-9]+)?/keys/[0-9A-Za-z-]{1,127}(?:/[0-9A-Za-z]+)?")
_ACR_ID = re.compile(
    r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
    r"Microsoft\.ContainerRegistry/registries/[A-Za-z0-9]+",
    flags=re.IGNORECASE,
)
