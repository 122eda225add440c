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
import fnmatch
import re
import string
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec.structs import force_setattr

from gate.domain.durations import CONFIG, DurationError, parse_duration
from gate.domain.platforms import PLATFORM_PATTERN, Platform, PlatformError
from gate.domain.ref import ImageRef, is_loopback_registry
from gate.errors import ConfigError, InvalidReference, NoMatchingRule, UsageError

Text = Annotated[str, msgspec.Meta(min_length=1)]
_REGISTRY_NAME = "^[A-Za-z0-9]{5,50}$"
_TASK_NAME = "^[A-Za-z0-9_-]{5,50}$"
DURATION_PATTERN = CONFIG.pattern
Duration = Annotated[
    str,
    msgspec.Meta(
        pattern=DURATION_PATTERN,
        description="A duration: a whole number and a unit, s, m, h or d (e.g. 30m, 6h, 2d).",
        examples=["30m", "6h", "2d"],
    ),
]


_FOLDER: ContextVar[Path | None] = ContextVar("gate_config_folder", default=None)


@contextmanager
def relative_to(folder: Path) -> Iterator[None]:
    """Within: relative paths in the file being checked are relative to ``folder`` (its own)."""
    token = _FOLDER.set(folder)
    try:
        yield
    finally:
        _FOLDER.reset(token)


def resolve(text: str) -> Path:
    """``text`` as an absolute path, relative to the configuration file's folder (else cwd)."""
    return ((_FOLDER.get() or Path()) / Path(text).expanduser()).resolve()


def _seconds(text: str, key: str) -> int:
    """Seconds in a :data:`Duration` field; its pattern lets a trailing newline through."""
    try:
        return parse_duration(text, CONFIG)
    except DurationError as exc:
        raise Refusal(exc.message, key) from None


def _url(text: str, key: str, *within: str) -> str:
    if not text.startswith("https://"):
        raise Refusal(f"'{text}' must be an https:// URL", *within, key)
    return text.rstrip("/")


_IDENTITY_ID = re.compile(
    r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
    r"Microsoft\.ManagedIdentity/userAssignedIdentities/[^/]+",
    flags=re.IGNORECASE,
)
# a Key Vault key URI: https://{vault host}/keys/{name}[/{version}] (names: 1-127 of [0-9a-zA-Z-])
_KEY_VAULT_KEY = re.compile(
    r"https://[A-Za-z0-9.-]+(?::[0-9]+)?/keys/[0-9A-Za-z-]{1,127}(?:/[0-9A-Za-z]+)?"
)
_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_ACR_ID = re.compile(
    r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
    r"Microsoft\.ContainerRegistry/registries/[A-Za-z0-9]+",
    flags=re.IGNORECASE,
)


def _doc(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)


class Refusal(ConfigError, ValueError):
    """A problem a ``__post_init__`` finds: its message, and the keys below the struct it is in.

    While a file is decoded, msgspec reports it (a ValueError) as a
    :class:`msgspec.ValidationError` at the struct's path, with this exception as its cause; the
    loader reads both to say where. A struct built in code raises it as it is.
    """

    def __init__(self, message: str, *at: str | int) -> None:
        super().__init__(message)
        self.at = at


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

    def __post_init__(self) -> None:
        try:
            probe = ImageRef.parse(f"{self.host}/probe")
        except InvalidReference:
            probe = None
        # a name without '.' or ':port' (and not localhost) would read as a Docker Hub path
        if probe is None or probe.repository not in ("probe", "library/probe"):
            raise Refusal(
                f"'{self.host}' is not a registry host[:port]; write e.g. "
                "registry.example.com or 127.0.0.1:5000",
                "host",
            )
        host = probe.registry
        if self.insecure and not is_loopback_registry(host):
            raise Refusal(
                f"plain HTTP is allowed for loopback registries only, not '{host}'; "
                "serve it over TLS",
                "insecure",
            )
        if self.username and self.username_secret:
            raise Refusal("give username or username_secret, not both")
        if (self.username or self.username_secret) and not self.password_secret:
            raise Refusal("a username needs a password_secret", "password_secret")
        if self.resource_id and not _ACR_ID.fullmatch(self.resource_id):
            raise Refusal(
                "expected /subscriptions/…/resourceGroups/…/providers/"
                "Microsoft.ContainerRegistry/registries/NAME",
                "resource_id",
            )
        # the settings name the host as references do, and an empty value is no value
        force_setattr(self, "host", host)
        for name in ("username", "username_secret", "password_secret", "resource_id"):
            if getattr(self, name) == "":
                force_setattr(self, name, None)


RegistrySettings = RegistryEntry
"""How to reach one registry host, as the use cases read it (the same struct)."""


class ValidatorSection(_Section, frozen=True, kw_only=True):
    """The local validator: the container engine and the network its steps get."""

    engine_choice: Annotated[Text, _doc("podman, docker or auto (the first found).")] = (
        msgspec.field(default="auto", name="engine")
    )
    network: Annotated[Text, _doc("Network of the steps' containers (none by default).")] = "none"
    keep_images: Annotated[
        bool, _doc("Keep the images a run pulled or built in the engine's store (debugging).")
    ] = False

    @property
    def engine(self) -> str | None:
        """The engine to use; None: the first found (``auto``)."""
        return None if self.engine_choice == "auto" else self.engine_choice


ValidatorSettings = ValidatorSection


class ValidationEntry(_Section, frozen=True, kw_only=True):
    """A rule's validation: the folder sent as context, its ACR task file, values, timeout."""

    folder_text: Annotated[Text, _doc("Folder with the task file, relative to this file.")] = (
        msgspec.field(name="folder")
    )
    task: Annotated[Text, _doc("Task file inside the folder.")] = "acr-task.yaml"
    timeout_seconds: Annotated[
        float, msgspec.Meta(gt=0, description="Seconds the validation may take.")
    ] = msgspec.field(default=600.0, name="timeout")
    values: Annotated[
        dict[str, str], _doc("Task values ({{.Values.NAME}}); IMAGE is set by the gate.")
    ] = {}
    secret_values: Annotated[
        dict[str, str], _doc("Task values read from secrets: NAME: secret name.")
    ] = {}

    def __post_init__(self) -> None:
        folder = resolve(self.folder_text)
        if not folder.is_dir():
            raise Refusal(f"{folder} is not a directory", "folder")
        if not (folder / self.task).is_file():
            raise Refusal(f"{folder / self.task} does not exist", "task")
        clash = sorted(set(self.values) & set(self.secret_values))
        if clash:
            raise Refusal(f"{', '.join(clash)} given in both values and secret_values")
        force_setattr(self, "folder_text", str(folder))

    @property
    def folder(self) -> Path:
        """The folder sent as the validation's context (absolute)."""
        return Path(self.folder_text)


ValidationSettings = ValidationEntry


DEFAULT_STABLE_TAG = "{tag}"
DEFAULT_UNIQUE_TAG = "{tag}-{run_id}"
TEMPLATE_FIELDS = frozenset({"tag", "run_id", "date"})
_TAG_PATTERN = re.compile(r"^[\w][\w.-]{0,127}$")
_GLOB_CHARS = frozenset("*?[")


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


class DownstreamEntry(_Section, frozen=True, kw_only=True, dict=True):
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

    def __post_init__(self) -> None:
        if (self.task is None) == (self.file is None):
            raise Refusal(
                "give either task (an ACR task, Azure) or file (a local task file), not "
                f"{'both' if self.task else 'neither'}"
            )
        if self.task is not None:
            if self.values or self.timeout != 600.0:
                raise Refusal(
                    "values and timeout are for local task files (file:); an ACR task has its "
                    "own values and timeout in Azure"
                )
            return
        if self.registry or self.resource_group:
            raise Refusal("registry and resource_group are for ACR tasks (task:), not for file:")
        path = self.path
        if path is None or not path.is_file():
            raise Refusal(
                f"{path} does not exist; write the task file, or point file at it (or at the "
                "folder that holds its acr-task.yaml)",
                "file",
            )
        reserved = sorted(set(self.values) & set(DOWNSTREAM_VALUES))
        if reserved:
            raise Refusal(f"{', '.join(reserved)} are set by the gate; rename them", "values")

    @cached_property
    def path(self) -> Path | None:
        """The local task file (absolute; a folder's acr-task.yaml); None for an ACR task."""
        if self.file is None:
            return None
        path = resolve(self.file)
        return path / "acr-task.yaml" if path.is_dir() else path

    def as_task(self) -> DownstreamTask:
        """The task the gate runs (an ACR task's registry still empty when it is the default)."""
        if self.task is None:
            assert self.file is not None  # __post_init__: one of them
            return DownstreamTask(
                task=self.file,
                registry=LOCAL_DOWNSTREAM,
                file=self.path,
                values=dict(self.values),
                timeout_seconds=self.timeout,
            )
        return DownstreamTask(
            task=self.task, registry=self.registry or "", resource_group=self.resource_group or ""
        )


class RequireSignatureEntry(_Section, frozen=True, kw_only=True):
    """Candidates must carry a cosign key-based signature by one of these keys."""

    keys: Annotated[
        list[Text],
        msgspec.Meta(
            min_length=1,
            description="PEM public key files (ECDSA P-256), relative to this file.",
        ),
    ]

    def __post_init__(self) -> None:
        keys = []
        for i, text in enumerate(self.keys):
            if text.startswith("https://"):
                if not _KEY_VAULT_KEY.fullmatch(text):
                    raise Refusal(
                        f"'{text}' is not a Key Vault key URI "
                        "(https://VAULT.vault.azure.net/keys/NAME[/VERSION])",
                        "keys",
                        i,
                    )
                keys.append(text)
                continue
            path = resolve(text)
            if not path.is_file():
                raise Refusal(f"{path} does not exist; name the signer's PEM public key", "keys", i)
            keys.append(str(path))
        force_setattr(self, "keys", keys)


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

    def __post_init__(self) -> None:
        _seconds(self.every, "every")

    @property
    def every_seconds(self) -> float:
        """Seconds between re-validations."""
        return float(parse_duration(self.every, CONFIG))


Revalidation = RevalidateEntry


class RuleEntry(_Section, frozen=True, kw_only=True, dict=True):
    """One watched upstream repository: which tags, where they go, how they are validated."""

    name: Annotated[Text, _doc("Unique rule name.")]
    source_text: Annotated[
        Text, _doc("Upstream repository, without tag, e.g. docker.io/library/node.")
    ] = msgspec.field(name="source")
    tags_given: Annotated[
        Text | Annotated[list[Text], msgspec.Meta(min_length=1)],
        _doc("Upstream tags or glob patterns, e.g. ['15-alpine', '16-*']."),
    ] = msgspec.field(name="tags")
    target_text: Annotated[Text, _doc("Target repository, without tag.")] = msgspec.field(
        name="target"
    )
    validation: Annotated[ValidationEntry, _doc("How a candidate is validated.")]
    stable_tag: Annotated[Text, _doc("Template of the moving tag: {tag}, {run_id}, {date}.")] = (
        "{tag}"
    )
    unique_tag: Annotated[Text, _doc("Template of the immutable tag; must hold {run_id}.")] = (
        "{tag}-{run_id}"
    )
    untagged: Annotated[bool, _doc("Also gate untagged pushes (needs one exact tag).")] = False
    downstream_entries: Annotated[
        list[Annotated[str, msgspec.Meta(pattern=_TASK_NAME)] | DownstreamEntry],
        _doc(
            "Tasks to run after each promotion: ACR task names or {task, registry, ...} "
            "(Azure), or {file: local task file or folder} (local)."
        ),
    ] = msgspec.field(default=[], name="downstream")
    fresh_for_given: Annotated[
        Annotated[float, msgspec.Meta(ge=0)] | None,
        _doc(
            "Seconds a passing validation whose promotion did not finish stays good for "
            "promoting without validating again (default: the top-level setting)."
        ),
    ] = msgspec.field(default=None, name="validation_fresh_for")
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
    platform_texts: Annotated[
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
    ] = msgspec.field(default=[], name="platforms")

    def __post_init__(self) -> None:
        stable = _template(self.stable_tag, "stable_tag")
        unique = _template(self.unique_tag, "unique_tag")
        if "{run_id}" not in unique:
            raise Refusal(
                f"'{unique}' must contain {{run_id}} so every promotion gets its own tag",
                "unique_tag",
            )
        if stable == unique:
            raise Refusal("must differ from unique_tag", "stable_tag")
        tags = self.tags
        if self.untagged and (len(tags) != 1 or set(tags[0]) & _GLOB_CHARS):
            raise Refusal(
                "gating untagged pushes needs exactly one exact tag in 'tags' (it names the "
                "stable tag)",
                "untagged",
            )
        # parsed now, so that a bad value is the file's error, not a later command's
        _ = self.source, self.target, self.platforms, self.cooldown_seconds
        keys = [(t.registry.lower(), t.task.lower()) for t in self.downstream]
        if len(set(keys)) != len(keys):
            raise Refusal(
                "lists the same task twice; each task runs once per promotion", "downstream"
            )

    @cached_property
    def source(self) -> ImageRef:
        """The upstream repository (no tag)."""
        return _repository(self.source_text, "source")

    @cached_property
    def target(self) -> ImageRef:
        """The repository promotions go to (no tag)."""
        return _repository(self.target_text, "target")

    @cached_property
    def tags(self) -> tuple[str, ...]:
        """The upstream tags and glob patterns."""
        given = self.tags_given
        return (given,) if isinstance(given, str) else tuple(given)

    @cached_property
    def downstream(self) -> tuple[DownstreamTask, ...]:
        """The tasks run after each promotion (ACR tasks' registry filled by the loader)."""
        return tuple(
            DownstreamTask(task=e) if isinstance(e, str) else e.as_task()
            for e in self.downstream_entries
        )

    @property
    def validation_fresh_for(self) -> float:
        """Seconds a passing validation stays good (the loader fills the file's default)."""
        return 86400.0 if self.fresh_for_given is None else self.fresh_for_given

    @cached_property
    def signature_keys(self) -> tuple[str, ...]:
        """Public key files (absolute) or Key Vault key URIs a candidate's signature must match."""
        return () if self.require_signature is None else tuple(self.require_signature.keys)

    @cached_property
    def cooldown_seconds(self) -> float:
        """Minimum age (seconds since the gate first saw a digest) before a promotion; 0: none."""
        return 0.0 if not self.cooldown else float(_seconds(self.cooldown, "cooldown"))

    @cached_property
    def platforms(self) -> tuple[Platform, ...]:
        """Validated one by one, each on its child manifest of the upstream index; (): one run
        on the runtime's default platform."""
        parsed: list[Platform] = []
        for i, text in enumerate(self.platform_texts):
            try:
                platform = Platform.parse(text)
            except PlatformError as exc:
                raise Refusal(str(exc), "platforms", i) from None
            if platform in parsed:
                raise Refusal(f"lists {text} twice; list each platform once", "platforms", i)
            parsed.append(platform)
        return tuple(parsed)

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


Rule = RuleEntry
"""A rule, as the use cases read it (the same struct)."""


def _repository(text: str, key: str) -> ImageRef:
    try:
        ref = ImageRef.parse(text)
    except InvalidReference as exc:
        raise Refusal(exc.message, key) from None
    if ref.tag or ref.digest:
        raise Refusal(f"'{text}' must name a repository only, without tag or digest", key)
    return ref


def _template(text: str, key: str) -> str:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as exc:
        raise Refusal(f"'{text}' is not a valid template ({exc})", key) from None
    unknown = sorted(fields - TEMPLATE_FIELDS)
    if unknown:
        raise Refusal(
            f"unknown placeholder(s) {', '.join('{' + f + '}' for f in unknown)}; "
            f"use {', '.join('{' + f + '}' for f in sorted(TEMPLATE_FIELDS))}",
            key,
        )
    return text


class AcrEntry(_Section, frozen=True, kw_only=True):
    """An Azure Container Registry by ARM coordinates."""

    name: Annotated[
        str,
        msgspec.Meta(
            pattern="^[A-Za-z0-9]{5,50}$", description="Registry name (5-50 letters and digits)."
        ),
    ]
    resource_group: Annotated[Text, _doc("Resource group of the registry.")]
    login_server_given: Annotated[str | None, _doc("Login server (default NAME.azurecr.io).")] = (
        msgspec.field(default=None, name="login_server")
    )

    @property
    def login_server(self) -> str:
        """The registry's login server: as given, else ``NAME.azurecr.io``."""
        return self.login_server_given or f"{self.name.lower()}.azurecr.io"


AzureRegistry = AcrEntry
"""An Azure Container Registry by ARM coordinates, as the use cases read it."""


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

    def __post_init__(self) -> None:
        if not _IDENTITY_ID.fullmatch(self.resource_id):
            raise Refusal(
                f"'{self.resource_id}' is not the ARM id of a user-assigned identity "
                "(/subscriptions/<sub>/resourceGroups/<rg>/providers/"
                "Microsoft.ManagedIdentity/userAssignedIdentities/<name>); ACR task runs take "
                "user-assigned identities only",
                "resource_id",
            )
        if not _GUID.fullmatch(self.client_id):
            raise Refusal(
                f"'{self.client_id}' is not a client id (a GUID); copy it from "
                "'az identity show --query clientId'",
                "client_id",
            )


RunnerIdentity = RunnerIdentityEntry
"""The user-assigned identity attached to every validation run (ACR task run)."""


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

    def __post_init__(self) -> None:
        # "exactly one of" is the azure section's rule: AzureLedger() names the defaults
        if self.table_endpoint:
            force_setattr(self, "table_endpoint", _url(self.table_endpoint, "table_endpoint"))
        else:
            force_setattr(self, "table_endpoint", None)
        if not self.connection_string:
            force_setattr(self, "connection_string", None)

    def __repr__(self) -> str:  # a connection string holds the account key: never in a repr
        return (
            f"AzureLedger(table_endpoint={self.table_endpoint!r}, table={self.table!r}, "
            f"log_container={self.log_container!r})"
        )


AzureLedger = LedgerEntry


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
    heartbeat_seconds: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            description="Seconds between lease renewals while a worker works (at most half of "
            "seconds).",
        ),
    ] = msgspec.field(default=10.0, name="heartbeat")

    def __post_init__(self) -> None:
        if self.heartbeat_seconds * 2 > self.seconds:
            raise Refusal(
                f"{self.heartbeat_seconds:g} s is more than half of lease.seconds "
                f"({self.seconds:g} s): one late renewal would lose the lease; renew at "
                "least twice per lease",
                "heartbeat",
            )


LeaseSettings = LeaseSection


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
    budget_seconds: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            description="Seconds a poll pass may take (keep it under the timer's interval); tags "
            "not reached in time are polled first by the next pass.",
        ),
    ] = msgspec.field(default=240.0, name="budget")


PollSettings = PollSection


class LedgerSection(_Section, frozen=True, kw_only=True):
    """How long the ledger keeps records (wherever it lives: SQLite or Table Storage)."""

    keep: Annotated[
        Duration | None,
        _doc(
            "Delete final records older than this (daily); records behind a current stable or "
            "run-ID tag are kept whatever their age. null keeps every record."
        ),
    ] = "400d"

    def __post_init__(self) -> None:
        # records are the audit trail: a typo like 40s must not empty it overnight
        if self.keep is not None and _seconds(self.keep, "keep") < 86400:
            raise Refusal(f"is {self.keep}: keep records at least 1d (or null)", "keep")

    @property
    def keep_seconds(self) -> int | None:
        """Seconds the ledger keeps final records; None: forever."""
        return None if self.keep is None else parse_duration(self.keep, CONFIG)


RetentionSettings = LedgerSection


class AzureSection(_Section, frozen=True, kw_only=True):
    """The Azure side: where promotions go, where validations run, secrets and records."""

    subscription_id: Annotated[Text, _doc("Subscription of the registries.")]
    registry: Annotated[TargetRegistryEntry, _doc("The base-artifacts registry.")]
    runner_entry: Annotated[
        RunnerEntry | None, _doc("Registry of validation runs (default registry).")
    ] = msgspec.field(default=None, name="runner")
    arm_endpoint: Annotated[Text, _doc("ARM endpoint.")] = "https://management.azure.com"
    key_vault_url: Annotated[str | None, _doc("Key Vault of registry credentials.")] = None
    ledger: Annotated[LedgerEntry | None, _doc("Table Storage ledger (else local SQLite).")] = None

    def __post_init__(self) -> None:
        ledger = self.ledger
        if ledger is not None and (ledger.table_endpoint is None) == (
            ledger.connection_string is None
        ):
            raise Refusal(
                "give exactly one of table_endpoint (identity-based, for Azure) or "
                "connection_string (for Azurite)",
                "ledger",
            )
        force_setattr(self, "arm_endpoint", _url(self.arm_endpoint, "arm_endpoint"))
        if self.key_vault_url:
            force_setattr(self, "key_vault_url", _url(self.key_vault_url, "key_vault_url"))
        else:
            force_setattr(self, "key_vault_url", None)

    @property
    def runner(self) -> AcrEntry:
        """The registry validation runs execute in: ``runner``, else ``registry``."""
        return self.runner_entry if self.runner_entry is not None else self.registry

    @property
    def runner_identity(self) -> RunnerIdentityEntry | None:
        """The user-assigned identity validation runs carry (``runner.identity``)."""
        return self.runner_entry.identity if self.runner_entry is not None else None


AzureSettings = AzureSection


class AttestationSection(_Section, frozen=True, kw_only=True, dict=True):
    """Signed evidence on every promoted digest (an in-toto attestation, DSSE, ECDSA P-256)."""

    key_text: Annotated[
        Text | None,
        _doc("PEM private key file (ECDSA P-256) that signs; 'gate keygen' writes one (local)."),
    ] = msgspec.field(default=None, name="key")
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

    def __post_init__(self) -> None:
        # the checks need the azure section, so the whole file's (ConfigFile); the key
        # is resolved now, while the file's folder is known, and kept as written for messages
        _ = self.key
        if self.key_vault_key is not None and self.key_vault_key.startswith("https://"):
            force_setattr(self, "key_vault_key", self.key_vault_key.rstrip("/"))

    @cached_property
    def key(self) -> Path | None:
        """The signing key file (absolute), for the local gate; None: a Key Vault key signs."""
        return None if self.key_text is None else resolve(self.key_text)


AttestationSettings = AttestationSection


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
        _url(entry.key_vault_key, "key_vault_key", "attestation")
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
        return self.registries.get(host, RegistrySettings(host=host))
