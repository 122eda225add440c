"""The configuration file's schema: its shape as typed records, checked by msgspec.

This module says what the YAML may contain (fields, types, required keys, simple bounds) and
nothing else; :mod:`gate.config.model` turns a checked :class:`ConfigFile` into the domain's frozen
settings and adds the checks that need more than one field or the file system. The same records
give the JSON Schema that ``gate config schema`` prints for editors.

Values reach the schema after ``${NAME}`` / ``${NAME:-default}`` substitution, so every scalar
may come from the environment as text: numbers are turned into text before conversion and the
conversion is lax (``"true"`` is a boolean, ``"120"`` a number), as a value from an app setting
must be. :mod:`gate.config.model` imports this module when it loads a file, so importing the
Functions app does not pay for building these records.
"""

# no ``from __future__ import annotations``: msgspec reads these classes' annotations on the
# first check, and text annotations would have it compile each one then (a third of the check)
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

from gate.domain.platforms import PLATFORM_PATTERN

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

Text = Annotated[str, msgspec.Meta(min_length=1)]
_REGISTRY_NAME = "^[A-Za-z0-9]{5,50}$"
_TASK_NAME = "^[A-Za-z0-9_-]{5,50}$"
DURATION_PATTERN = "^[0-9]{1,9}(s|m|h|d)$"
Duration = Annotated[
    str,
    msgspec.Meta(
        pattern=DURATION_PATTERN,
        description="A duration: a whole number and a unit, s, m, h or d (e.g. 30m, 6h, 2d).",
        examples=["30m", "6h", "2d"],
    ),
]
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(text: str) -> int:
    """Seconds in a :data:`Duration` the schema has checked (``6h`` is 21600)."""
    return int(text[:-1]) * _DURATION_UNITS[text[-1]]


def _doc(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)


class _Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base of every mapping in the file: unknown keys are errors, not silently ignored."""


class RegistryEntry(_Section, frozen=True, kw_only=True):
    """How to reach one registry host, and which secrets hold its credentials."""

    host: Annotated[
        Text, _doc("Registry host[:port], e.g. registry-1.docker.io or 127.0.0.1:5000.")
    ]
    insecure: Annotated[bool, _doc("Plain HTTP; allowed for loopback registries only.")] = False
    username: Annotated[
        str | None, _doc("User name in clear (local runs only; with azure: use username_secret).")
    ] = None
    username_secret: Annotated[str | None, _doc("Name of the secret that holds the user name.")] = (
        None
    )
    password_secret: Annotated[
        str | None, _doc("Name of the secret that holds the password or token.")
    ] = None
    resource_id: Annotated[
        str | None,
        _doc("ARM id of an Azure Container Registry upstream (pulled by identity, no secret)."),
    ] = None
    token_realms: Annotated[
        list[Text],
        _doc(
            "Token realm hosts (host[:port]) on another host that may receive this registry's "
            "credentials, beyond its own host and the known ones (auth.docker.io for Docker Hub)."
        ),
    ] = []


class ValidatorSection(_Section, frozen=True, kw_only=True):
    """The local validator: the container engine and the network its steps get."""

    engine: Annotated[Text, _doc("podman, docker or auto (the first found).")] = "auto"
    network: Annotated[Text, _doc("Network of the steps' containers (none by default).")] = "none"
    keep_images: Annotated[
        bool, _doc("Keep the images a run pulled or built in the engine's store (debugging).")
    ] = False


class ValidationEntry(_Section, frozen=True, kw_only=True):
    """A rule's validation: the folder sent as context, its ACR task file, values, timeout."""

    folder: Annotated[Text, _doc("Folder with the task file, relative to this file.")]
    task: Annotated[Text, _doc("Task file inside the folder.")] = "acr-task.yaml"
    timeout: Annotated[
        float, msgspec.Meta(gt=0, description="Seconds the validation may take.")
    ] = 600.0
    values: Annotated[
        dict[str, str], _doc("Task values ({{.Values.NAME}}); IMAGE is set by the gate.")
    ] = {}
    secret_values: Annotated[
        dict[str, str], _doc("Task values read from secrets: NAME: secret name.")
    ] = {}


class DownstreamEntry(_Section, frozen=True, kw_only=True):
    """A task the gate runs itself after a promotion (e.g. an application's rebuild).

    Either an ACR task (``task``, Azure) or a local ACR task file (``file``, the local gate).
    """

    task: Annotated[
        Annotated[str, msgspec.Meta(pattern=_TASK_NAME)] | None,
        _doc("ACR task name (Azure)."),
    ] = None
    file: Annotated[
        Text | None,
        _doc("Local task file, or a folder holding acr-task.yaml, relative to this file."),
    ] = None
    values: Annotated[dict[str, str], _doc("Values of a local task file ({{.Values.NAME}}).")] = {}
    timeout: Annotated[
        float, msgspec.Meta(gt=0, description="Seconds a local task file may run.")
    ] = 600.0
    registry: Annotated[
        Annotated[str, msgspec.Meta(pattern=_REGISTRY_NAME)] | None,
        _doc("Registry of the task (default azure.registry)."),
    ] = None
    resource_group: Annotated[
        str | None, _doc("Resource group of that registry (default azure.registry's).")
    ] = None


class RequireSignatureEntry(_Section, frozen=True, kw_only=True):
    """Candidates must carry a cosign key-based signature by one of these keys."""

    keys: Annotated[
        list[Text],
        msgspec.Meta(
            min_length=1,
            description="PEM public key files (ECDSA P-256), relative to this file.",
        ),
    ]


class RevalidateEntry(_Section, frozen=True, kw_only=True):
    """Re-run the rule's current validation on the promoted digest on a schedule."""

    every: Annotated[
        Duration,
        _doc("How often the digest the stable tag points at is validated again (e.g. 24h)."),
    ]
    on_failure: Annotated[
        Literal["demote", "alert"],
        _doc(
            "demote: move the stable tag back to the newest earlier promoted digest that passes "
            "now (else mark the rule broken); alert: move nothing, report the failure."
        ),
    ] = "demote"
    candidates: Annotated[
        int,
        msgspec.Meta(
            ge=1,
            le=50,
            description="Earlier promoted digests re-validated at most, newest first, when "
            "looking for one to demote to.",
        ),
    ] = 5


class RuleEntry(_Section, frozen=True, kw_only=True):
    """One watched upstream repository: which tags, where they go, how they are validated."""

    name: Annotated[Text, _doc("Unique rule name.")]
    source: Annotated[Text, _doc("Upstream repository, without tag, e.g. docker.io/library/node.")]
    tags: Annotated[
        Text | Annotated[list[Text], msgspec.Meta(min_length=1)],
        _doc("Upstream tags or glob patterns, e.g. ['15-alpine', '16-*']."),
    ]
    target: Annotated[Text, _doc("Target repository, without tag.")]
    validation: Annotated[ValidationEntry, _doc("How a candidate is validated.")]
    stable_tag: Annotated[Text, _doc("Template of the moving tag: {tag}, {run_id}, {date}.")] = (
        "{tag}"
    )
    unique_tag: Annotated[Text, _doc("Template of the immutable tag; must hold {run_id}.")] = (
        "{tag}-{run_id}"
    )
    untagged: Annotated[bool, _doc("Also gate untagged pushes (needs one exact tag).")] = False
    downstream: Annotated[
        list[Annotated[str, msgspec.Meta(pattern=_TASK_NAME)] | DownstreamEntry],
        _doc(
            "Tasks to run after each promotion: ACR task names or {task, registry, ...} "
            "(Azure), or {file: local task file or folder} (local)."
        ),
    ] = []
    validation_fresh_for: Annotated[
        Annotated[float, msgspec.Meta(ge=0)] | None,
        _doc(
            "Seconds a passing validation whose promotion did not finish stays good for "
            "promoting without validating again (default: the top-level setting)."
        ),
    ] = None
    require_signature: Annotated[
        RequireSignatureEntry | None,
        _doc("Reject candidates without a valid cosign signature, before validating."),
    ] = None
    cooldown: Annotated[
        Duration | None,
        _doc(
            "Minimum age of an upstream digest before it is promoted, counted from when the "
            "gate first saw it (e.g. 6h). A younger digest is validated at once, then waits; "
            "it is promoted once old enough only if the tag still points at it upstream. "
            "Default: none."
        ),
    ] = None
    revalidate: Annotated[
        RevalidateEntry | None,
        _doc("Validate the promoted digest again on a schedule; demote or alert on failure."),
    ] = None
    platforms: Annotated[
        list[
            Annotated[
                str,
                msgspec.Meta(
                    pattern=PLATFORM_PATTERN,
                    description="os/arch[/variant] in Go's names, as image indexes name them.",
                    examples=["linux/amd64", "linux/arm64", "linux/arm/v7"],
                ),
            ]
        ],
        _doc(
            "Platforms validated, each on its own manifest of the upstream image index; the "
            "index is promoted whole only when every one passes, and a listed platform the "
            "index lacks is a rejection. Default: empty, one run on the runtime's default "
            "platform."
        ),
    ] = []


class AcrEntry(_Section, frozen=True, kw_only=True):
    """An Azure Container Registry by ARM coordinates."""

    name: Annotated[
        str,
        msgspec.Meta(
            pattern="^[A-Za-z0-9]{5,50}$", description="Registry name (5-50 letters and digits)."
        ),
    ]
    resource_group: Annotated[Text, _doc("Resource group of the registry.")]
    login_server: Annotated[str | None, _doc("Login server (default NAME.azurecr.io).")] = None


class TargetRegistryEntry(AcrEntry, frozen=True, kw_only=True):
    """The base-artifacts registry promotions go to."""

    promote: Annotated[
        Literal["import", "push"],
        _doc("import: server-side ACR import; push: the gate pushes over the data plane."),
    ] = "import"


class RunnerIdentityEntry(_Section, frozen=True, kw_only=True):
    """The user-assigned identity validation runs carry (pulls upstreams, reads Key Vault)."""

    resource_id: Annotated[Text, _doc("ARM id of the user-assigned identity.")]
    client_id: Annotated[Text, _doc("Client id of that identity.")]


class RunnerEntry(AcrEntry, frozen=True, kw_only=True):
    """The registry validation runs execute in, and the identity they carry."""

    identity: Annotated[RunnerIdentityEntry | None, _doc("The runs' user-assigned identity.")] = (
        None
    )


class LedgerEntry(_Section, frozen=True, kw_only=True):
    """Where records live in Azure: Table Storage and a blob container for validation logs."""

    table_endpoint: Annotated[str | None, _doc("Table endpoint (identity-based access).")] = None
    connection_string: Annotated[str | None, _doc("Storage connection string (Azurite).")] = None
    table: Annotated[Text, _doc("Table name.")] = "gaterecords"
    log_container: Annotated[Text, _doc("Blob container of validation logs.")] = "gatelogs"


class LeaseSection(_Section, frozen=True, kw_only=True):
    """How a worker holds a record while it validates or promotes it."""

    seconds: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            description="Seconds a lease lasts past its last renewal; a worker silent that long "
            "(it died) is taken over by the next attempt.",
        ),
    ] = 60.0
    heartbeat: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            description="Seconds between lease renewals while a worker works (at most half of "
            "seconds).",
        ),
    ] = 10.0


class PollSection(_Section, frozen=True, kw_only=True):
    """How a watch pass polls the upstream registries (HEAD requests, tag lists)."""

    concurrency_per_registry: Annotated[
        int,
        msgspec.Meta(
            ge=1,
            le=64,
            description="Requests in flight at once to one registry host during a poll pass.",
        ),
    ] = 8
    budget: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            description="Seconds a poll pass may take (keep it under the timer's interval); tags "
            "not reached in time are polled first by the next pass.",
        ),
    ] = 240.0


class LedgerSection(_Section, frozen=True, kw_only=True):
    """How long the ledger keeps records (wherever it lives: SQLite or Table Storage)."""

    keep: Annotated[
        Duration | None,
        _doc(
            "Delete final records older than this (daily); records behind a current stable or "
            "run-ID tag are kept whatever their age. null keeps every record."
        ),
    ] = "400d"


class AzureSection(_Section, frozen=True, kw_only=True):
    """The Azure side: where promotions go, where validations run, secrets and records."""

    subscription_id: Annotated[Text, _doc("Subscription of the registries.")]
    registry: Annotated[TargetRegistryEntry, _doc("The base-artifacts registry.")]
    runner: Annotated[
        RunnerEntry | None, _doc("Registry of validation runs (default registry).")
    ] = None
    arm_endpoint: Annotated[Text, _doc("ARM endpoint.")] = "https://management.azure.com"
    key_vault_url: Annotated[str | None, _doc("Key Vault of registry credentials.")] = None
    ledger: Annotated[LedgerEntry | None, _doc("Table Storage ledger (else local SQLite).")] = None


class AttestationSection(_Section, frozen=True, kw_only=True):
    """Signed evidence on every promoted digest (an in-toto attestation, DSSE, ECDSA P-256)."""

    key: Annotated[
        Text | None,
        _doc("PEM private key file (ECDSA P-256) that signs; 'gate keygen' writes one (local)."),
    ] = None
    key_vault_key: Annotated[
        Text | None,
        _doc("Key Vault EC P-256 key URI that signs instead (with azure:, promote: push)."),
    ] = None
    verifier_id: Annotated[
        Text, _doc("Who verified, as the attestation names it (a URI identifying this gate).")
    ] = "urn:gated-import-gate"
    referrers_api: Annotated[
        bool, _doc("Use the registry's OCI referrers API when it has one (else the tag schema).")
    ] = True


class ConfigFile(_Section, frozen=True, kw_only=True):
    """A gate configuration file (gate.yaml)."""

    version: Annotated[Literal[1], _doc("Format version.")] = 1
    data_dir: Annotated[str | None, _doc("Local state (default $GATE_DATA_DIR or .gate).")] = None
    secrets_dir: Annotated[str | None, _doc("Folder of local secret files.")] = None
    registries: Annotated[list[RegistryEntry], _doc("Registry hosts and credentials.")] = []
    validator: Annotated[ValidatorSection, _doc("The local validator.")] = ValidatorSection()
    rules: Annotated[
        list[RuleEntry], msgspec.Meta(min_length=1, description="The gated repositories.")
    ]
    azure: Annotated[AzureSection | None, _doc("The Azure side (absent: all local).")] = None
    attestation: Annotated[
        AttestationSection | None, _doc("Sign and attach evidence to each promotion.")
    ] = None
    lease: Annotated[LeaseSection, _doc("Leases on records in progress.")] = LeaseSection()
    poll: Annotated[PollSection, _doc("How watch passes poll upstreams.")] = PollSection()
    ledger: Annotated[LedgerSection, _doc("Record retention.")] = LedgerSection()
    validation_fresh_for: Annotated[
        float,
        msgspec.Meta(
            ge=0,
            description="Seconds a passing validation whose promotion did not finish stays good "
            "for promoting without validating again (a rule may set its own).",
        ),
    ] = 86400.0


class SchemaProblem(msgspec.Struct, frozen=True):
    """One problem in a file: where (a path of keys and indexes) and what."""

    path: tuple[str | int, ...]
    message: str


class SchemaError(Exception):
    """The file does not fit the schema; :attr:`problem` says where and why."""

    def __init__(self, problem: SchemaProblem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the configuration file (for editors: completion and checking)."""
    body: dict[str, Any] = msgspec.json.schema(ConfigFile)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "gate.yaml",
        **_allow_substitution(body),
    }


_SUBSTITUTION = {"type": "string", "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}"}


def _allow_substitution(node: Any) -> Any:
    """A field whose JSON type or form ``${NAME}`` text would not fit also accepts that text.

    Booleans, numbers, choices (``promote``) and patterned names (a registry's) are read from
    the environment as often as written out; the loader substitutes before it checks.
    """
    if isinstance(node, list):
        return [_allow_substitution(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _allow_substitution(v) for k, v in node.items()}
    constrained = node.get("type") in ("boolean", "number", "integer") or "enum" in node
    if constrained or (node.get("type") == "string" and "pattern" in node):
        kept = {k: v for k, v in node.items() if k in ("default", "description")}
        typed = {k: v for k, v in node.items() if k not in kept}
        return {**kept, "anyOf": [typed, _SUBSTITUTION]}
    return node


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
        raise SchemaError(_explain(str(exc), data)) from None


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


def _explain(text: str, data: Any) -> SchemaProblem:
    # msgspec.inspect is imported where a problem is explained: a check that passes needs none
    import msgspec.inspect as mi

    matched = _AT.match(text)
    if matched is None:
        return SchemaProblem((), text)
    what = matched["what"]
    # "[...]" (a mapping's value) is dropped: the path then names the mapping
    path = tuple(int(i) if i else k for k, i in _STEP.findall(matched["path"]))
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
