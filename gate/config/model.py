"""The gate configuration: one set of frozen msgspec Structs, the file's schema and its settings.

The same types say what ``gate.yaml`` may contain (fields, types, required keys, bounds: the JSON
Schema ``gate config schema`` prints comes from them) and are what the use cases read. Where the
use cases want a value in another form than the file writes it, the field keeps the file's key
(``msgspec.field(name=...)``) and a property gives the other form (``heartbeat_seconds`` is the
file's ``heartbeat``, :attr:`Rule.source` the parsed ``source``); the model's older names are
aliases (:data:`LeaseSettings` is :class:`LeaseSection`). A struct checks what spans its own
fields in ``__post_init__`` and raises :class:`Refusal`, which the decoder reports at the struct's
path (:class:`ConfigFile` checks what spans sections); :mod:`gate.config.loading` reads the file,
decodes it and words the problems.

This module holds the file-level types, :class:`ConfigFile` with its cross-section checks and
:class:`GateConfig`, and re-exports every section's names, so that code imports them all from
here. The sections live by concern: :mod:`gate.config.common` (field types, :class:`Refusal`,
path and duration hooks), :mod:`gate.config.registries`, :mod:`gate.config.rules` (validation,
required signature, downstream tasks), :mod:`gate.config.azure` and :mod:`gate.config.sections`
(validator, lease, poll, retention, revalidate, attestation); none of them imports this one.

Values reach the types after ``${NAME}`` / ``${NAME:-default}`` substitution, so every scalar
may come from the environment as text: numbers are turned into text before conversion and the
conversion is lax (``"true"`` is a boolean, ``"120"`` a number), as a value from an app setting
must be.

The types are Structs rather than dataclasses: every command loads them, and creating a
dataclass compiles its generated methods (about half a millisecond a class) where a Struct's
are built in C.
"""

# no ``from __future__ import annotations``: msgspec reads these classes' annotations on the
# first check, and text annotations would have it compile each one then (a third of the check)
# RUF012 is silenced on empty [] / {} defaults: msgspec copies them for each instance, but ruff
# sees the Struct base only within one module (a default_factory would drop the schema's default)
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec.structs import force_setattr

from gate.config.azure import (
    PROMOTE_MODES,
    AcrEntry,
    AzureLedger,
    AzureRegistry,
    AzureSection,
    AzureSettings,
    LedgerEntry,
    RunnerEntry,
    RunnerIdentity,
    RunnerIdentityEntry,
    TargetRegistryEntry,
)
from gate.config.common import (
    DURATION_PATTERN,
    Duration,
    Refusal,
    Section,
    Text,
    doc,
    https_url,
    relative_to,
    resolve,
)
from gate.config.registries import RegistryEntry, RegistrySettings
from gate.config.rules import (
    DEFAULT_STABLE_TAG,
    DEFAULT_UNIQUE_TAG,
    DOWNSTREAM_VALUES,
    LOCAL_DOWNSTREAM,
    TEMPLATE_FIELDS,
    DownstreamEntry,
    DownstreamTask,
    RequireSignatureEntry,
    Rule,
    RuleEntry,
    ValidationEntry,
    ValidationSettings,
)
from gate.config.sections import (
    AttestationSection,
    AttestationSettings,
    LeaseSection,
    LeaseSettings,
    LedgerSection,
    PollSection,
    PollSettings,
    RetentionSettings,
    RevalidateEntry,
    Revalidation,
    ValidatorSection,
    ValidatorSettings,
)
from gate.domain.ref import ImageRef
from gate.errors import NoMatchingRule

__all__ = [
    "DEFAULT_STABLE_TAG",
    "DEFAULT_UNIQUE_TAG",
    "DOWNSTREAM_VALUES",
    "DURATION_PATTERN",
    "LOCAL_DOWNSTREAM",
    "PROMOTE_MODES",
    "TEMPLATE_FIELDS",
    "AcrEntry",
    "AttestationSection",
    "AttestationSettings",
    "AzureLedger",
    "AzureRegistry",
    "AzureSection",
    "AzureSettings",
    "ConfigFile",
    "DownstreamEntry",
    "DownstreamTask",
    "Duration",
    "GateConfig",
    "LeaseSection",
    "LeaseSettings",
    "LedgerEntry",
    "LedgerSection",
    "PollSection",
    "PollSettings",
    "Refusal",
    "RegistryEntry",
    "RegistrySettings",
    "RequireSignatureEntry",
    "RetentionSettings",
    "RevalidateEntry",
    "Revalidation",
    "Rule",
    "RuleEntry",
    "RunnerEntry",
    "RunnerIdentity",
    "RunnerIdentityEntry",
    "TargetRegistryEntry",
    "Text",
    "ValidationEntry",
    "ValidationSettings",
    "ValidatorSection",
    "ValidatorSettings",
    "relative_to",
    "resolve",
]


class ConfigFile(Section, frozen=True, kw_only=True):
    """A gate configuration file (gate.yaml)."""

    version: Annotated[Literal[1], doc("Format version.")] = 1
    data_dir: Annotated[str | None, doc("Local state (default $GATE_DATA_DIR or .gate).")] = None
    secrets_dir: Annotated[str | None, doc("Folder of local secret files.")] = None
    registries: Annotated[list[RegistryEntry], doc("Registry hosts and credentials.")] = []  # noqa: RUF012 (see the note at the top)
    validator: Annotated[ValidatorSection, doc("The local validator.")] = ValidatorSection()
    rules: Annotated[
        list[RuleEntry], msgspec.Meta(min_length=1, description="The gated repositories.")
    ]
    azure: Annotated[AzureSection | None, doc("The Azure side (absent: all local).")] = None
    attestation: Annotated[
        AttestationSection | None, doc("Sign and attach evidence to each promotion.")
    ] = None
    lease: Annotated[LeaseSection, doc("Leases on records in progress.")] = LeaseSection()
    poll: Annotated[PollSection, doc("How watch passes poll upstreams.")] = PollSection()
    ledger: Annotated[LedgerSection, doc("Record retention.")] = LedgerSection()
    validation_fresh_for: Annotated[
        float,
        msgspec.Meta(
            ge=0,
            description="Seconds a passing validation whose promotion did not finish stays good "
            "for promoting without validating again (a rule may set its own).",
        ),
    ] = 86400.0

    def __post_init__(self) -> None:
        names = [r.name for r in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise Refusal(f"rule names must be unique; repeated: {', '.join(duplicates)}", "rules")
        azure = self.azure
        # a rule takes what it does not say from the file: validation_fresh_for, and its ACR
        # tasks' registry from azure.registry
        rules = [
            _placed(i, rule, self.validation_fresh_for, azure) for i, rule in enumerate(self.rules)
        ]
        force_setattr(self, "rules", rules)
        if azure is not None:
            for i, settings in enumerate(self.registries_by_host.values()):
                if settings.username is not None:
                    raise Refusal(
                        "with azure:, name the username by secret (username_secret): ACR "
                        "import and quick runs take credentials from Key Vault only",
                        "registries",
                        i,
                        "username",
                    )
            for i, rule in enumerate(rules):
                if rule.target.registry != azure.registry.login_server:
                    raise Refusal(
                        f"'{rule.target.registry}' is not the Azure registry "
                        f"{azure.registry.login_server} (azure.registry) the gate imports into",
                        "rules",
                        i,
                        "target",
                    )
            _need_runner_identity(self.registries_by_host, azure)
        if self.attestation is not None:
            _check_attestation(self.attestation, azure)

    @property
    def registries_by_host(self) -> dict[str, RegistryEntry]:
        """The registries by (normalised) host; of a host listed twice, the last."""
        return {entry.host: entry for entry in self.registries}


def _placed(i: int, rule: RuleEntry, fresh_for: float, azure: AzureSection | None) -> RuleEntry:
    """``rule`` with the file's validation_fresh_for and azure.registry where it says neither.

    ACR tasks run only with azure:, local task files only without it (a Function app has no
    container engine).
    """
    filled: list[str | DownstreamEntry] = []
    for j, (entry, task) in enumerate(zip(rule.downstream_entries, rule.downstream, strict=True)):
        at = ("rules", i, "downstream", j)
        if task.local:
            if azure is not None:
                raise Refusal(
                    "local task files run downstream in the local gate only; with azure:, "
                    "name an ACR task (task:) instead",
                    *at,
                    "file",
                )
            filled.append(entry)
            continue
        if azure is None:
            raise Refusal(
                f"'{task.task}' is an ACR task, and ACR tasks need the azure: section; "
                "locally, name a task file instead ({file: path/to/acr-task.yaml}), or add "
                "azure:",
                *at,
            )
        home = azure.registry
        registry = task.registry or home.name
        group = task.resource_group
        if not group:
            if registry.lower() != home.name.lower():
                raise Refusal(
                    f"task '{task.task}' lives in registry '{registry}', not in "
                    f"azure.registry: say its resource_group",
                    *at,
                    "resource_group",
                )
            group = home.resource_group
        filled.append(DownstreamEntry(task=task.task, registry=registry, resource_group=group))
    if rule.fresh_for_given is not None and not filled:
        return rule
    return msgspec.structs.replace(
        rule,
        downstream_entries=filled,
        fresh_for_given=fresh_for if rule.fresh_for_given is None else rule.fresh_for_given,
    )


def _need_runner_identity(registries: Mapping[str, RegistryEntry], azure: AzureSection) -> None:
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
        raise Refusal(
            f"validation runs log in to {', '.join(logins)}, and ACR task runs do that only "
            "as a user-assigned identity: add azure.runner.identity: {resource_id: <ARM id "
            "of the identity>, client_id: <its client id>} (with azure.runner's name and "
            "resource_group), and grant it AcrPull on those registries and read access to "
            "their Key Vault secrets",
            "azure",
            "runner",
            "identity",
        )


def _check_attestation(entry: AttestationSection, azure: AzureSection | None) -> None:
    """The attestation's checks that need the azure section."""
    if (entry.key_text is None) == (entry.key_vault_key is None):
        raise Refusal(
            "name exactly one signing key: key (a PEM file, local gate) or key_vault_key "
            "(a Key Vault key URI, with azure:)",
            "attestation",
        )
    if entry.key_vault_key is not None:
        if azure is None:
            raise Refusal(
                "a Key Vault key signs for the Azure gate (azure:); locally use key: with "
                "a file from 'gate keygen'",
                "attestation",
                "key_vault_key",
            )
        if azure.registry.promote != "push":
            # the attestation is an artifact pushed into the target repository: import
            # mode's role has no push right there (docs/deploy.md, "Roles, and why each is needed")
            raise Refusal(
                "attestations need azure.registry.promote: push (the gate pushes the "
                "attestation artifact; import mode's role cannot push)",
                "attestation",
            )
        https_url(entry.key_vault_key, "key_vault_key", "attestation")
        _check_signature_key(entry, azure)
        return
    assert entry.key is not None
    if azure is not None:
        # a private key file must not be shipped to a Function app: Key Vault signs there
        raise Refusal(
            "with azure:, sign with a Key Vault key (key_vault_key: its URI) instead of a key file",
            "attestation",
            "key",
        )
    if not entry.key.is_file():
        raise Refusal(
            f"{entry.key} does not exist; create a key pair with 'gate keygen {entry.key_text}'",
            "attestation",
            "key",
        )
    _check_signature_key(entry, azure)


# why the promotion signature needs a key of its own, said wherever one key is refused for both
_ONE_KEY = (
    "cosign 3's 'verify --key' accepts any Sigstore bundle signed by the key whose subject is "
    "the digest, whatever its predicate type, so with one key every attestation, a FAILED "
    "demotion too, would count as an approval"
)


def _check_signature_key(entry: AttestationSection, azure: AzureSection | None) -> None:
    """The promotion signature's key: optional, of the attestation key's kind, never that key."""
    if entry.signature_key_text is not None and entry.signature_key_vault_key is not None:
        raise Refusal(
            "name at most one signature key: signature_key (a PEM file, local gate) or "
            "signature_key_vault_key (a Key Vault key URI, with azure:)",
            "attestation",
        )
    if entry.signature_key_vault_key is not None:
        if entry.key_vault_key is None:
            raise Refusal(
                "a Key Vault key signs for the Azure gate (azure:, with key_vault_key); locally "
                "use signature_key: with a file from 'gate keygen'",
                "attestation",
                "signature_key_vault_key",
            )
        https_url(entry.signature_key_vault_key, "signature_key_vault_key", "attestation")
        if _vault_key_name(entry.signature_key_vault_key) == _vault_key_name(entry.key_vault_key):
            raise Refusal(
                f"is the attestation key ({entry.key_vault_key}): the signature needs a key of "
                f"its own, because {_ONE_KEY}; create a second EC P-256 key "
                "(infra/ creates gate-signature)",
                "attestation",
                "signature_key_vault_key",
            )
        return
    if entry.signature_key is None:
        return
    if azure is not None or entry.key is None:
        raise Refusal(
            "with azure:, sign with a Key Vault key (signature_key_vault_key: its URI) instead "
            "of a key file",
            "attestation",
            "signature_key",
        )
    if not entry.signature_key.is_file():
        raise Refusal(
            f"{entry.signature_key} does not exist; create a key pair with "
            f"'gate keygen {entry.signature_key_text}'",
            "attestation",
            "signature_key",
        )
    same = entry.signature_key.resolve() == entry.key.resolve()
    if not same:
        try:
            same = entry.signature_key.read_bytes() == entry.key.read_bytes()
        except OSError:
            same = False  # unreadable: the signer says so when it loads the key
    if same:
        raise Refusal(
            f"is the attestation key ({entry.key_text}): the signature needs a key of its own, "
            f"because {_ONE_KEY}; create one with 'gate keygen {entry.signature_key_text}.new' "
            "and name it here",
            "attestation",
            "signature_key",
        )


def _vault_key_name(uri: str) -> tuple[str, str]:
    """(vault host, key name) of a Key Vault key URI, any version: one key, however written."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    segments = [x for x in parts.path.split("/") if x]
    name = segments[1] if len(segments) > 1 else ""
    return parts.netloc.lower(), name.lower()


@cache
def _unlisted(host: str) -> RegistrySettings:
    """The default settings of a host the file does not list, made once per host: settings
    check their host as they are made, microseconds the Event Grid trigger would otherwise pay
    for every event."""
    return RegistrySettings(host=host)


class GateConfig(msgspec.Struct, frozen=True):
    """A loaded, checked gate configuration: the file's sections, and what only its place says.

    ``path`` is the file, ``data_dir`` and ``secrets_dir`` its folders resolved against it (and
    ``$GATE_DATA_DIR``); ``registries`` are the file's by host; ``rules`` the file's with the
    defaults other sections give them. The other sections are the decoded file's own.
    """

    path: Path
    data_dir: Path
    registries: Mapping[str, RegistrySettings]
    rules: tuple[Rule, ...]
    file: ConfigFile
    secrets_dir: Path | None = None

    @property
    def validator(self) -> ValidatorSettings:
        """The local validator."""
        return self.file.validator

    @property
    def azure(self) -> AzureSettings | None:
        """The Azure side; None: all local."""
        return self.file.azure

    @property
    def attestation(self) -> AttestationSettings | None:
        """How promotions are attested; None: not at all."""
        return self.file.attestation

    @property
    def lease(self) -> LeaseSettings:
        """Leases on records in progress."""
        return self.file.lease

    @property
    def poll(self) -> PollSettings:
        """How watch passes poll upstreams."""
        return self.file.poll

    @property
    def retention(self) -> RetentionSettings:
        """How long the ledger keeps records (the file's ``ledger:``)."""
        return self.file.ledger

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
        found = self.registries.get(host)
        return found if found is not None else _unlisted(host)
