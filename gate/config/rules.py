"""The ``rules:`` section: one watched repository each, with its validation, required
signature and downstream tasks.

:class:`RuleEntry` (:data:`Rule`) is what the use cases read: the file's keys, and properties
that give them parsed (:attr:`RuleEntry.source`, :attr:`RuleEntry.platforms`). A downstream entry
becomes a :class:`DownstreamTask`, what the downstream adapters run; the file-level checks
(:mod:`gate.config.model`) fill in what a rule takes from the rest of the file.
"""

# no ``from __future__ import annotations``: msgspec reads these classes' annotations on the
# first check, and text annotations would have it compile each one then (a third of the check)
# RUF012 is silenced on empty [] / {} defaults: msgspec copies them for each instance, but ruff
# sees the Struct base only within one module (a default_factory would drop the schema's default)
import fnmatch
import re
import string
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec.structs import force_setattr

from gate.config.common import Duration, Refusal, Section, Text, doc, duration_seconds, resolve
from gate.config.sections import RevalidateEntry
from gate.domain.platforms import PLATFORM_PATTERN, Platform, PlatformError
from gate.domain.ref import ImageRef
from gate.errors import InvalidReference, UsageError

_REGISTRY_NAME = "^[A-Za-z0-9]{5,50}$"
_TASK_NAME = "^[A-Za-z0-9_-]{5,50}$"
# a Key Vault key URI: https://{vault host}/keys/{name}[/{version}] (names: 1-127 of [0-9a-zA-Z-])
_KEY_VAULT_KEY = re.compile(
    r"https://[A-Za-z0-9.-]+(?::[0-9]+)?/keys/[0-9A-Za-z-]{1,127}(?:/[0-9A-Za-z]+)?"
)


class ValidationEntry(Section, frozen=True, kw_only=True):
    """A rule's validation: the folder sent as context, its ACR task file, values, timeout."""

    folder_text: Annotated[Text, doc("Folder with the task file, relative to this file.")] = (
        msgspec.field(name="folder")
    )
    task: Annotated[Text, doc("Task file inside the folder.")] = "acr-task.yaml"
    timeout_seconds: Annotated[
        float, msgspec.Meta(gt=0, description="Seconds the validation may take.")
    ] = msgspec.field(default=600.0, name="timeout")
    values: Annotated[
        dict[str, str], doc("Task values ({{.Values.NAME}}); IMAGE is set by the gate.")
    ] = {}  # noqa: RUF012 (see the note at the top)
    secret_values: Annotated[
        dict[str, str], doc("Task values read from secrets: NAME: secret name.")
    ] = {}  # noqa: RUF012 (see the note at the top)

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


class DownstreamEntry(Section, frozen=True, kw_only=True, dict=True):
    """A task the gate runs itself after a promotion (e.g. an application's rebuild).

    Either an ACR task (``task``, Azure) or a local ACR task file (``file``, the local gate).
    """

    task: Annotated[
        Annotated[str, msgspec.Meta(pattern=_TASK_NAME)] | None,
        doc("ACR task name (Azure)."),
    ] = None
    file: Annotated[
        Text | None,
        doc("Local task file, or a folder holding acr-task.yaml, relative to this file."),
    ] = None
    values: Annotated[dict[str, str], doc("Values of a local task file ({{.Values.NAME}}).")] = {}  # noqa: RUF012 (see the note at the top)
    timeout: Annotated[
        float, msgspec.Meta(gt=0, description="Seconds a local task file may run.")
    ] = 600.0
    registry: Annotated[
        Annotated[str, msgspec.Meta(pattern=_REGISTRY_NAME)] | None,
        doc("Registry of the task (default azure.registry)."),
    ] = None
    resource_group: Annotated[
        str | None, doc("Resource group of that registry (default azure.registry's).")
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


class RequireSignatureEntry(Section, frozen=True, kw_only=True):
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


class RuleEntry(Section, frozen=True, kw_only=True, dict=True):
    """One watched upstream repository: which tags, where they go, how they are validated."""

    name: Annotated[Text, doc("Unique rule name.")]
    source_text: Annotated[
        Text, doc("Upstream repository, without tag, e.g. docker.io/library/node.")
    ] = msgspec.field(name="source")
    tags_given: Annotated[
        Text | Annotated[list[Text], msgspec.Meta(min_length=1)],
        doc("Upstream tags or glob patterns, e.g. ['15-alpine', '16-*']."),
    ] = msgspec.field(name="tags")
    target_text: Annotated[Text, doc("Target repository, without tag.")] = msgspec.field(
        name="target"
    )
    validation: Annotated[ValidationEntry, doc("How a candidate is validated.")]
    stable_tag: Annotated[Text, doc("Template of the moving tag: {tag}, {run_id}, {date}.")] = (
        "{tag}"
    )
    unique_tag: Annotated[Text, doc("Template of the immutable tag; must hold {run_id}.")] = (
        "{tag}-{run_id}"
    )
    untagged: Annotated[bool, doc("Also gate untagged pushes (needs one exact tag).")] = False
    downstream_entries: Annotated[
        list[Annotated[str, msgspec.Meta(pattern=_TASK_NAME)] | DownstreamEntry],
        doc(
            "Tasks to run after each promotion: ACR task names or {task, registry, ...} "
            "(Azure), or {file: local task file or folder} (local)."
        ),
    ] = msgspec.field(default=[], name="downstream")
    fresh_for_given: Annotated[
        Annotated[float, msgspec.Meta(ge=0)] | None,
        doc(
            "Seconds a passing validation whose promotion did not finish stays good for "
            "promoting without validating again (default: the top-level setting)."
        ),
    ] = msgspec.field(default=None, name="validation_fresh_for")
    require_signature: Annotated[
        RequireSignatureEntry | None,
        doc("Reject candidates without a valid cosign signature, before validating."),
    ] = None
    cooldown: Annotated[
        Duration | None,
        doc(
            "Minimum age of an upstream digest before it is promoted, counted from when the "
            "gate first saw it (e.g. 6h). A younger digest is validated at once, then waits; "
            "it is promoted once old enough only if the tag still points at it upstream. "
            "Default: none."
        ),
    ] = None
    revalidate: Annotated[
        RevalidateEntry | None,
        doc("Validate the promoted digest again on a schedule; demote or alert on failure."),
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
        doc(
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
        return 0.0 if not self.cooldown else float(duration_seconds(self.cooldown, "cooldown"))

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
