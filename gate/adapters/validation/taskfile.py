"""ACR task files (``acr-task.yaml``): load, render and check them the way ACR Tasks does.

The local validator runs the very file an ACR run (the gate's task run, or ``az acr run -f
acr-task.yaml .``) runs in Azure, so this module reproduces what ACR Tasks does to the file
before it runs a step, and refuses, before anything runs, whatever the local runner cannot
reproduce.

What it relies on:

* "ACR Tasks reference: YAML" (Microsoft Learn, container-registry-tasks-reference-yaml):
  task properties ``version`` (default ``v1.0.0``), ``stepTimeout`` (default 600 s),
  ``workingDirectory`` (default ``/workspace`` on Linux), ``env``, ``secrets``, ``networks``,
  ``volumes``; the step types ``build``, ``push``, ``cmd``; the ``cmd`` syntax
  ``[containerImage]:[tag] [cmdParameters to the image]``, where the parameters go to the
  image's ``[ENTRYPOINT]`` (so ``entryPoint: sh`` with ``cmd: IMAGE ./test.sh`` runs
  ``sh ./test.sh``); the step properties (there is no ``args`` property: arguments are part of
  the ``cmd`` string); ``when`` (absent: after the previous step; ``["-"]``: no dependency;
  ``[ids]``: after those steps); Run variables ``{{.Run.ID}}`` and friends; aliases
  (``$ID``, ``$Registry``, ... and image aliases such as ``bash``) from ``v1.1.0`` on. The
  source context of a run is mounted at ``/workspace``. The task file has no total timeout: the
  run timeout is the ``--timeout`` of ``az acr run``; here it is the rule's validation timeout.
* The ACR Tasks runner (the open-source ``acr-builder``, MIT) for what the reference leaves
  open: accepted versions (``v1.0.0``, ``v1.1.0``, ``1.0-preview-1``); comment lines are
  removed before rendering; aliases apply only when the first non-comment line is ``version:``
  with a value ``>= "v1.1.0"``; ``Run.Date`` is formatted ``yyyyMMdd-HHmmssz``;
  ``Run.RegistryName`` is the registry up to its first ``.``; a step's ``env`` overrides the
  task's, and task-level entries are split at commas; a relative ``workingDirectory`` is under
  ``/workspace``; ``disableWorkingDirectoryOverride`` drops ``--workdir``; a step without ``id``
  is ``acb_step_<index>``; ``timeout``/``stepTimeout`` of 0 or less mean the default.

* For ``build`` steps, ``acr-builder``'s ``builder/builder.go`` and ``builder/parse.go``: the
  value is what follows ``docker build`` (split at whitespace, quotes trimmed), run in the step's
  working directory; the context is the one word that is neither a flag nor a flag's value
  (``-f``/``--file``, ``--target``; default ``.``); tags are the words after ``-t``/``--tag``
  and build arguments the words after ``--build-arg`` (``util/parse.go``). A ``push`` step is
  a list of image names (``graph/step.go``).

Deliberate differences, all stricter: a ``{{.Values.X}}`` that no value provides is an error
(ACR renders it empty); a property that is not in the reference is an error (ACR ignores it);
only plain ``{{.Values.X}}`` / ``{{.Run.X}}`` actions are rendered (no functions or pipelines);
a ``build`` value may use only the flags ``-f``, ``-t``, ``--build-arg``, ``--target``,
``--no-cache``, ``--platform`` and a context inside the source context; a ``push`` step may push
only images a ``build`` step of the same file tags (the local runner pushes them to the run's
scratch store, never to a registry).
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from gate.domain.ref import ImageRef
from gate.errors import ConfigError, InvalidReference, UnsupportedTask

SUPPORTED_VERSIONS = ("v1.0.0", "v1.1.0", "1.0-preview-1")
"""The task file versions ACR Tasks accepts (compared case-insensitively, as ACR does)."""

DEFAULT_VERSION = "v1.0.0"
DEFAULT_STEP_TIMEOUT = 600
"""Seconds a step may run unless ``timeout`` or ``stepTimeout`` says otherwise (ACR's default)."""

WORKSPACE = "/workspace"
"""Where the source context (the rule's validation folder) is mounted, and the default workdir."""

IMMEDIATE = "-"
"""The ``when`` token that means "no dependency"."""

ALIAS_VERSION = "v1.1.0"
"""Aliases (``$ID``, ``bash``...) apply from this version on."""

DATE_FORMAT = "%Y%m%d-%H%M%Sz"
"""``{{.Run.Date}}``: the run's start in UTC, as ACR Tasks formats it."""

IMAGE_ALIASES: Mapping[str, str] = {
    "acr": "mcr.microsoft.com/acr/acr-cli:0.14",
    "az": "mcr.microsoft.com/acr/azure-cli:9fb281c",
    "bash": "mcr.microsoft.com/acr/bash:9fb281c",
    "curl": "mcr.microsoft.com/acr/curl:9fb281c",
    "cssc": "mcr.microsoft.com/acr/cssc:9fb281c",
}
"""The image aliases of the reference: a ``cmd`` whose first word is one runs that image."""

RUN_VARIABLES = ("ID", "Registry", "RegistryName", "Date", "OS", "Architecture")
"""The Run variables the local runner provides (``{{.Run.X}}``, and ``$X`` from v1.1.0)."""

_UNSUPPORTED_RUN_VARIABLES = frozenset(
    {"SharedVolume", "Commit", "Branch", "TaskName", "Repository", "GitTag", "TriggeredBy",
     "OSVersion"}
)  # fmt: skip

# The advice of every refusal names ``az acr run`` (which is an ACR quick run) because that is
# what a user can run by hand; the text is part of the messages users and tests see, so it stays.
_FIX = "run it as an ACR quick run (az acr run), or replace it with a cmd step"

_TASK_SUPPORTED = frozenset({"version", "stepTimeout", "workingDirectory", "env", "steps"})
_TASK_UNSUPPORTED = {
    "secrets": "Key Vault secrets are resolved by ACR only; pass the value as a rule "
    "validation value (secret_values) and use {{.Values.NAME}}",
    "networks": "the local runner gives every step the validator's network (default: none)",
    "volumes": "secret volumes are an ACR feature; write the files in the validation folder",
    "alias": "custom aliases are not supported locally; write the values out",
    "totalTimeout": "ACR task files have no totalTimeout; the run's total timeout is the "
    "rule's validation timeout (az acr run --timeout in Azure)",
}
_STEP_SUPPORTED = frozenset(
    {"id", "cmd", "env", "entryPoint", "workingDirectory", "when", "timeout", "ignoreErrors",
     "disableWorkingDirectoryOverride", "pull"}
)  # fmt: skip
# Properties of the reference the local runner cannot honour. They are accepted only with
# their default value, where leaving them out would mean the same.
_STEP_UNSUPPORTED: Mapping[str, object] = {
    "detach": False,
    "keep": False,
    "privileged": False,
    "repeat": 0,
    "retries": 0,
    "retryDelay": 0,
    "startDelay": 0,
    "expose": [],
    "ports": [],
    "isolation": "default",
    "network": None,
    "user": None,
    "secret": None,
    "volumeMounts": None,
    "cache": None,
    "cpus": None,
    "exitedWith": None,
    "exitedWithout": None,
    "retryOnErrors": None,
}
_STEP_TYPES = ("cmd", "build", "push")
# What a build or push step may carry besides its own property (cmd-only properties such as
# entryPoint or env shape a container these steps do not have locally).
_BUILD_SUPPORTED = frozenset({"id", "build", "workingDirectory", "when", "timeout", "ignoreErrors"})
_PUSH_SUPPORTED = frozenset({"id", "push", "when", "timeout", "ignoreErrors"})
# docker build flags the local runner reproduces: the ones that take a value, and switches.
_BUILD_VALUE_FLAGS = {
    "-f": "file",
    "--file": "file",
    "-t": "tag",
    "--tag": "tag",
    "--build-arg": "build-arg",
    "--target": "target",
    "--platform": "platform",
}
_BUILD_SWITCHES = frozenset({"--no-cache"})
_REMOTE_CONTEXT = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|git@)|\.git(?:#.*)?$", re.IGNORECASE)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ACTION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_EXPRESSION = re.compile(r"\.(Values|Run)\.([A-Za-z_][A-Za-z0-9_]*)")
_ENV_KEY = re.compile(r"[^=\s]+")


@dataclass(frozen=True)
class RunContext:
    """What a task file is rendered with: the run's variables and the rule's values.

    ``values`` feed ``{{.Values.NAME}}``; ``registry`` is ``{{.Run.Registry}}`` (the registry the
    run belongs to, the promotion target); ``date`` is the run's start (UTC).
    """

    run_id: str
    date: datetime
    values: Mapping[str, str] = field(default_factory=dict)
    registry: str = ""
    os: str = "linux"
    architecture: str = "amd64"

    def run_variable(self, name: str) -> str | None:
        """The value of ``{{.Run.<name>}}``, or None if the local runner does not provide it."""
        variables = {
            "ID": self.run_id,
            "Registry": self.registry,
            "RegistryName": self.registry.split(".", 1)[0],
            "Date": self.date.strftime(DATE_FORMAT),
            "OS": self.os,
            "Architecture": self.architecture,
        }
        return variables.get(name)


@dataclass(frozen=True)
class CmdStep:
    """One ``cmd`` step, resolved: defaults applied, env merged, dependencies explicit.

    ``working_directory`` is None when ``disableWorkingDirectoryOverride`` leaves the image's
    own; ``after`` holds the ids this step waits for (empty: it may start at once).
    """

    id: str
    image: str
    args: tuple[str, ...]
    env: tuple[str, ...]
    entry_point: str | None
    working_directory: str | None
    after: tuple[str, ...]
    timeout: int
    ignore_errors: bool
    index: int


@dataclass(frozen=True)
class BuildStep:
    """One ``build`` step, resolved: ``docker build`` with the flags the local runner supports.

    ``dockerfile`` and ``context`` are paths inside the source context (``/workspace``), already
    joined with the step's working directory; ``tags`` are the normalized image names it tags
    (``-t``), ``build_args`` the ``KEY=value`` pairs (``--build-arg``).
    """

    id: str
    tags: tuple[str, ...]
    dockerfile: str
    context: str
    build_args: tuple[str, ...]
    target: str | None
    no_cache: bool
    platform: str | None
    working_directory: str
    after: tuple[str, ...]
    timeout: int
    ignore_errors: bool
    index: int

    @property
    def image(self) -> str:
        """The first name the step tags (what a log header shows), or '' when it tags none."""
        return self.tags[0] if self.tags else ""


@dataclass(frozen=True)
class PushStep:
    """One ``push`` step: the image names (built in this run) it pushes."""

    id: str
    images: tuple[str, ...]
    after: tuple[str, ...]
    timeout: int
    ignore_errors: bool
    index: int
    working_directory: str | None = None

    @property
    def image(self) -> str:
        """The first image it pushes."""
        return self.images[0]


Step = CmdStep | BuildStep | PushStep
"""Any step of a task file."""


@dataclass(frozen=True)
class AcrTask:
    """A checked task file: its version and its steps in the order they are to run."""

    version: str
    steps: tuple[Step, ...]
    source: str = "acr-task.yaml"

    @property
    def built(self) -> tuple[str, ...]:
        """Every image name a build step of the file tags, once each."""
        return tuple(
            dict.fromkeys(t for s in self.steps if isinstance(s, BuildStep) for t in s.tags)
        )

    @property
    def images(self) -> tuple[str, ...]:
        """Every image the cmd steps run and no build step makes, once each, in first-use order.

        These are pulled before the first step; images built in the run are not.
        """
        built = set(self.built)
        return tuple(
            dict.fromkeys(
                s.image for s in self.steps if isinstance(s, CmdStep) and s.image not in built
            )
        )


# ---------------------------------------------------------------------------------------------
# text stages: comments, version, aliases, templates


def strip_comment_lines(text: str) -> str:
    """Drop the lines whose first non-blank character is ``#``, as ACR does before rendering."""
    return "\n".join(line for line in text.split("\n") if not line.strip().startswith("#"))


def find_version(text: str) -> str:
    """The version ACR's alias switch sees: the value of a ``version:`` first line, else ''."""
    for line in text.split("\n"):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line.startswith("version"):
            key, colon, value = line.partition(":")
            if colon and key.strip() == "version":
                return value.strip()
        return ""
    return ""


def expand_aliases(text: str, *, source: str) -> str:
    """Replace ``$Name`` Run aliases by their ``{{.Run.Name}}`` and ``$$`` by ``$``.

    An unknown ``$name`` (``$HOME``) is left as it is, as ACR does. A Run alias the local runner
    does not provide raises UnsupportedTask.
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char != "$":
            out.append(char)
            i += 1
            continue
        if i + 1 < n and text[i + 1] == "$":
            out.append("$")
            i += 2
            continue
        j = i + 1
        while j < n and text[j].isascii() and text[j].isalnum():
            j += 1
        name = text[i + 1 : j]
        if name in RUN_VARIABLES:
            out.append("{{.Run." + name + "}}")
        elif name in _UNSUPPORTED_RUN_VARIABLES:
            raise UnsupportedTask(
                f"{source}: the alias ${name} ({{{{.Run.{name}}}}}) has no local value; "
                f"{_FIX}, or write the value out (use $${name} for a literal '${name}')"
            )
        else:
            out.append("$" + name)
        i = j
    return "".join(out)


def render(text: str, context: RunContext, *, source: str = "acr-task.yaml") -> str:
    """Render the Go-template actions ``{{.Values.X}}`` and ``{{.Run.X}}`` of ``text``.

    Whitespace inside the braces and the trim markers ``{{-`` / ``-}}`` are allowed. A value
    that is not given raises ConfigError; any other action raises UnsupportedTask.
    """
    pieces: list[str] = []
    position = 0
    trim_next = False
    for match in _ACTION.finditer(text):
        before = text[position : match.start()]
        if trim_next:
            before = before.lstrip()
        inner = match.group(1)
        if re.match(r"-[ \t\r\n]", inner):
            before = before.rstrip()
            inner = inner[2:]
        trim_next = bool(re.search(r"[ \t\r\n]-$", inner))
        if trim_next:
            inner = inner[:-2]
        pieces.append(before)
        pieces.append(_evaluate(inner.strip(), context, source))
        position = match.end()
    rest = text[position:]
    if "{{" in rest:
        line = text.count("\n", 0, position + rest.index("{{")) + 1
        raise ConfigError(f"{source}, line {line}: '{{{{' opens a template action never closed")
    pieces.append(rest.lstrip() if trim_next else rest)
    return "".join(pieces)


def _evaluate(expression: str, context: RunContext, source: str) -> str:
    match = _EXPRESSION.fullmatch(expression)
    if match is None:
        raise UnsupportedTask(
            f"{source}: the template action {{{{ {expression[:80]} }}}} is not supported locally; "
            "only {{.Values.NAME}} and {{.Run.ID}}, {{.Run.Registry}}, {{.Run.RegistryName}}, "
            "{{.Run.Date}}, {{.Run.OS}}, {{.Run.Architecture}} are; "
            f"{_FIX}, or simplify the template"
        )
    kind, name = match.groups()
    if kind == "Values":
        if name not in context.values:
            known = ", ".join(sorted(context.values)) or "none"
            raise ConfigError(
                f"{source} uses {{{{.Values.{name}}}}} but no value {name} is given (given: "
                f"{known}); add {name} to the rule's validation values, or fix the name"
            )
        return context.values[name]
    value = context.run_variable(name)
    if value is None:
        raise UnsupportedTask(
            f"{source}: {{{{.Run.{name}}}}} has no local value; {_FIX}, or write the value out"
        )
    if name in ("Registry", "RegistryName") and not value:
        raise ConfigError(
            f"{source} uses {{{{.Run.{name}}}}} but the run has no registry; set the rule's "
            "target registry"
        )
    return value


# ---------------------------------------------------------------------------------------------
# structure: properties, steps, dependencies


def parse_task(text: str, context: RunContext, *, source: str = "acr-task.yaml") -> AcrTask:
    """Render ``text`` and check it whole; return the steps in the order they will run.

    Raises ConfigError for a malformed file (YAML, types, ids, ``when``, cycles) and
    UnsupportedTask for a valid ACR feature the local runner cannot run. Nothing runs here.
    """
    text = strip_comment_lines(text)
    version_line = find_version(text)
    aliases = version_line >= ALIAS_VERSION
    if aliases:
        if re.search(r"^alias\s*:", text, re.MULTILINE):
            raise UnsupportedTask(f"{source}: 'alias' is not supported locally; " + _FIX)
        text = expand_aliases(text, source=source)
    rendered = render(text, context, source=source)
    try:
        document = yaml.safe_load(rendered)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML after rendering: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(
            f"{source} must be a mapping with 'version' and 'steps', not {_kind(document)}"
        )
    for key in document:
        if key in _TASK_UNSUPPORTED:
            raise UnsupportedTask(
                f"{source}: task property '{key}' is not supported locally "
                f"({_TASK_UNSUPPORTED[key]}); {_FIX}"
            )
        if key not in _TASK_SUPPORTED:
            raise UnsupportedTask(
                f"{source}: '{key}' is not a task property of the ACR Tasks YAML reference "
                "(version, stepTimeout, workingDirectory, env, secrets, networks, volumes, "
                "steps); ACR would ignore it: fix its spelling or remove it"
            )
    version = document.get("version", DEFAULT_VERSION)
    if not isinstance(version, str) or version.lower() not in SUPPORTED_VERSIONS:
        raise ConfigError(
            f"{source}: version {version!r} is not one ACR Tasks accepts; write "
            f"version: {ALIAS_VERSION} (accepted: {', '.join(SUPPORTED_VERSIONS)})"
        )
    step_timeout = _int(document, "stepTimeout", source, "task") or DEFAULT_STEP_TIMEOUT
    if step_timeout <= 0:
        step_timeout = DEFAULT_STEP_TIMEOUT
    workdir = _str(document, "workingDirectory", source, "task")
    task_env = _task_env(document.get("env"), source)
    raw_steps = document.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ConfigError(f"{source}: 'steps' must be a non-empty list of steps")
    steps = [
        _step(raw, index, source, step_timeout, workdir, task_env, aliases=aliases)
        for index, raw in enumerate(raw_steps)
    ]
    ordered = _ordered(steps, source)
    _check_built_first(ordered, source)
    return AcrTask(version=version, steps=ordered, source=source)


def _check_built_first(steps: Sequence[Step], source: str) -> None:
    """A push (and a cmd running a built image) must come after the build that tags it.

    Locally a push can only push an image of the run (never something pulled), so an image
    no build step tags is refused here, before anything runs.
    """
    built: dict[str, str] = {}
    later = {t for s in steps if isinstance(s, BuildStep) for t in s.tags}
    for step in steps:
        if isinstance(step, BuildStep):
            built.update(dict.fromkeys(step.tags, step.id))
        elif isinstance(step, PushStep):
            for image in step.images:
                if image not in built:
                    raise UnsupportedTask(
                        f"{source}: step '{step.id}' pushes {image}, which no earlier build "
                        "step of this file tags; locally a push step pushes only images "
                        f"built in the run (to the run's scratch store); {_FIX}"
                    )
        elif step.image in later and step.image not in built:
            raise ConfigError(
                f"{source}: step '{step.id}' runs {step.image} before the build step that "
                "tags it; make it wait for that step in 'when'"
            )


def load_task(path: Path, context: RunContext) -> AcrTask:
    """Read the task file at ``path`` and :func:`parse_task` it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"validation task file {path} does not exist; create it, or fix the rule's "
            "validation task/folder"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"validation task file {path} cannot be read: {exc}") from None
    return parse_task(text, context, source=path.name)


def check_sources(task: AcrTask, folder: Path) -> None:
    """Refuse, before anything runs, a build step whose context or Dockerfile is not in ``folder``.

    ``folder`` is what is mounted at /workspace (the validation folder).
    """
    for step in task.steps:
        if not isinstance(step, BuildStep):
            continue
        where = f"{task.source}: step '{step.id}'"
        context = folder / posixpath.relpath(step.context, WORKSPACE)
        dockerfile = folder / posixpath.relpath(step.dockerfile, WORKSPACE)
        if not context.is_dir():
            raise ConfigError(
                f"{where}: the build context {step.context} is not a folder of {folder}; "
                "create it, or fix the context at the end of 'build'"
            )
        if not dockerfile.is_file():
            raise ConfigError(
                f"{where}: the Dockerfile {step.dockerfile} does not exist in {folder}; "
                "create it, or fix the -f of 'build'"
            )


_DOCKERFILE_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def base_images(dockerfile: str, build_args: Sequence[str]) -> tuple[tuple[str, ...], bool]:
    """The images a Dockerfile's ``FROM`` lines name, with ARGs declared before them resolved.

    Returns the normalized names (build stages and ``scratch`` left out) and whether every
    ``FROM`` could be resolved (False when one uses an ARG without value or is not a valid
    reference: the engine then resolves it itself). ACR scans the same lines for the run's
    image dependencies before it builds.
    """
    given = dict(arg.partition("=")[::2] for arg in build_args)
    defaults: dict[str, str] = {}
    stages: set[str] = set()
    images: list[str] = []
    complete = True
    logical = re.sub(r"\\\r?\n", " ", dockerfile)
    seen_from = False
    for line in logical.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        instruction = words[0].upper()
        if instruction == "ARG" and not seen_from:
            for word in words[1:]:
                name, _, default = word.partition("=")
                defaults[name] = default.strip("\"'")
            continue
        if instruction != "FROM":
            continue
        seen_from = True
        rest = [w for w in words[1:] if not w.startswith("--")]
        if not rest:
            complete = False
            continue
        if len(rest) >= 3 and rest[1].upper() == "AS":
            stages.add(rest[2].lower())
        values = {**defaults, **given}
        unresolved = False

        def substitute(match: re.Match[str], values: dict[str, str] = values) -> str:
            nonlocal unresolved
            name = match.group(1) or match.group(2)
            if name not in values:
                unresolved = True
                return ""
            return values[name]

        name = _DOCKERFILE_VARIABLE.sub(substitute, rest[0])
        if unresolved:
            complete = False
            continue
        if name.lower() in stages or name.lower() == "scratch":
            continue
        try:
            images.append(str(ImageRef.parse(name)))
        except InvalidReference:
            complete = False
    return tuple(dict.fromkeys(images)), complete


def _kind(value: object) -> str:
    return "nothing" if value is None else f"a {type(value).__name__}"


def _where(source: str, step: str) -> str:
    return f"{source}: {step}" if step == "task" else f"{source}: step '{step}'"


def _int(raw: Mapping[str, Any], key: str, source: str, step: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{_where(source, step)}: '{key}' must be a whole number of seconds")
    return value


def _str(raw: Mapping[str, Any], key: str, source: str, step: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(
            f"{_where(source, step)}: '{key}' must be a string, not {_kind(value)}; quote it"
        )
    return value


def _bool(raw: Mapping[str, Any], key: str, source: str, step: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{_where(source, step)}: '{key}' must be true or false")
    return value


def _env_list(value: object, source: str, step: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(
            f"{_where(source, step)}: 'env' must be a list of \"KEY=value\" strings "
            '(e.g. env: ["COLOR=red"])'
        )
    return list(value)


def _check_env(entry: str, source: str, step: str) -> tuple[str, str]:
    key, equals, value = entry.partition("=")
    if not equals or not _ENV_KEY.fullmatch(key):
        raise ConfigError(
            f"{_where(source, step)}: env entry {entry.split('=', 1)[0]!r} is not KEY=value"
        )
    if "\n" in value or "\r" in value:
        raise UnsupportedTask(
            f"{_where(source, step)}: the value of env {key} spans lines, which the local "
            "runner cannot pass; keep it on one line"
        )
    return key, value


def _task_env(value: object, source: str) -> list[str]:
    entries = []
    for entry in _env_list(value, source, "task"):
        # ACR splits task-level entries at commas (as it does for "az acr run --env a=1,b=2").
        for piece in entry.split(","):
            _check_env(piece, source, "task")
            entries.append(piece)
    return entries


def _merge_env(step_env: Sequence[str], task_env: Sequence[str]) -> tuple[str, ...]:
    """Step entries first; task entries only for keys the step does not set."""
    keys = {entry.partition("=")[0] for entry in step_env}
    merged = list(step_env)
    for entry in task_env:
        key = entry.partition("=")[0]
        if key not in keys:
            merged.append(entry)
            keys.add(key)
    return tuple(merged)


def _step(
    raw: object,
    index: int,
    source: str,
    step_timeout: int,
    task_workdir: str | None,
    task_env: Sequence[str],
    *,
    aliases: bool,
) -> Step:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: step {index + 1} must be a mapping, not {_kind(raw)}")
    step_id = raw.get("id", f"acb_step_{index}")
    if not isinstance(step_id, str) or not step_id or re.search(r"\s", step_id):
        raise ConfigError(
            f"{source}: step {index + 1} has id {step_id!r}; an id is a string without spaces"
        )
    where = f"{source}: step '{step_id}'"
    types = [name for name in _STEP_TYPES if raw.get(name) not in (None, "", [])]
    if len(types) != 1:
        found = " and ".join(types) if types else "none"
        raise ConfigError(f"{where} must have exactly one of cmd, build, push (found: {found})")
    kind = types[0]
    supported = {"cmd": _STEP_SUPPORTED, "build": _BUILD_SUPPORTED, "push": _PUSH_SUPPORTED}[kind]
    for key, value in raw.items():
        if key in supported or (kind == "cmd" and key in ("build", "push")):
            continue
        if key in _STEP_UNSUPPORTED:
            default = _STEP_UNSUPPORTED[key]
            if value is None or (type(value) is type(default) and value == default):
                continue
            raise UnsupportedTask(
                f"{where}: property '{key}' is not supported locally; {_FIX}, or remove it"
            )
        if key in _STEP_SUPPORTED:
            # a cmd property on a build or push step: ACR gives it to the builder's container
            if value in (None, "", [], False):
                continue
            raise UnsupportedTask(
                f"{where}: property '{key}' of a '{kind}' step is not supported locally (it "
                f"shapes the container ACR runs the {kind} in); {_FIX}, or remove it"
            )
        raise UnsupportedTask(
            f"{where}: '{key}' is not a step property of the ACR Tasks YAML reference; ACR "
            "would ignore it: fix its spelling or remove it"
        )
    timeout = _int(raw, "timeout", source, step_id) or 0
    common: dict[str, Any] = {
        "id": step_id,
        "after": _when(raw.get("when"), where),
        "timeout": timeout if timeout > 0 else step_timeout,
        "ignore_errors": _bool(raw, "ignoreErrors", source, step_id),
        "index": index,
    }
    if kind == "build":
        workdir = _str(raw, "workingDirectory", source, step_id) or task_workdir or ""
        build_dir = posixpath.normpath(posixpath.join(WORKSPACE, workdir))
        return _build(raw["build"], where, build_dir, common)
    if kind == "push":
        return _push(raw["push"], where, common)

    command = raw["cmd"]
    if not isinstance(command, str):
        raise ConfigError(f"{where}: 'cmd' must be a string 'IMAGE [ARGS...]'")
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise ConfigError(f"{where}: 'cmd' cannot be split into words ({exc})") from None
    if not words:
        raise ConfigError(f"{where}: 'cmd' is empty; write 'IMAGE [ARGS...]'")
    image = IMAGE_ALIASES.get(words[0], words[0]) if aliases else words[0]
    try:
        image = str(ImageRef.parse(image))
    except InvalidReference as exc:
        raise ConfigError(f"{where}: the image of 'cmd' is not valid: {exc.message}") from None

    env = [entry for entry in _env_list(raw.get("env"), source, step_id)]
    for entry in env:
        _check_env(entry, source, step_id)
    entry_point = _str(raw, "entryPoint", source, step_id)
    workdir = _str(raw, "workingDirectory", source, step_id) or task_workdir or ""
    working_directory: str | None = posixpath.normpath(posixpath.join(WORKSPACE, workdir))
    if _bool(raw, "disableWorkingDirectoryOverride", source, step_id):
        working_directory = None
    _bool(raw, "pull", source, step_id)  # always true here: every image is pulled first
    return CmdStep(
        image=image,
        args=tuple(words[1:]),
        env=_merge_env(env, task_env),
        entry_point=entry_point or None,
        working_directory=working_directory,
        **common,
    )


def _inside(path: str, where: str, what: str) -> str:
    """``path`` (absolute, under /workspace) normalized; refused when it leaves /workspace."""
    normal = posixpath.normpath(path)
    if normal != WORKSPACE and not normal.startswith(WORKSPACE + "/"):
        raise UnsupportedTask(
            f"{where}: the {what} {normal} is outside the source context ({WORKSPACE}); the "
            "local runner builds only from the validation folder: move the files into it"
        )
    return normal


def _build(value: object, where: str, workdir: str, common: dict[str, Any]) -> BuildStep:
    """Parse a ``build`` value the way ``docker build`` (and so ACR) reads it."""
    if not isinstance(value, str):
        raise ConfigError(f"{where}: 'build' must be a string of docker build arguments")
    try:
        words = shlex.split(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: 'build' cannot be split into words ({exc})") from None
    options: dict[str, list[str]] = {name: [] for name in set(_BUILD_VALUE_FLAGS.values())}
    no_cache = False
    positional: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("-") or word == "-":
            positional.append(word)
            continue
        flag, equals, inline = word.partition("=")
        if flag in _BUILD_SWITCHES:
            if equals and inline.lower() not in ("true", "false"):
                raise ConfigError(f"{where}: '{word}' must be {flag}, {flag}=true or =false")
            no_cache = not equals or inline.lower() == "true"
            continue
        if flag not in _BUILD_VALUE_FLAGS:
            raise UnsupportedTask(
                f"{where}: the build flag '{flag}' is not supported locally (supported: -f, -t, "
                f"--build-arg, --target, --no-cache, --platform); {_FIX}, or remove it"
            )
        if equals:
            argument = inline
        elif i < len(words):
            argument = words[i]
            i += 1
        else:
            raise ConfigError(f"{where}: the build flag '{flag}' needs a value")
        options[_BUILD_VALUE_FLAGS[flag]].append(argument)
    if len(positional) != 1:
        found = ", ".join(repr(p) for p in positional) or "none"
        raise ConfigError(
            f"{where}: 'build' needs exactly one build context (e.g. '.') after its flags "
            f"(found: {found})"
        )
    if _REMOTE_CONTEXT.search(positional[0]) or positional[0] == "-":
        raise UnsupportedTask(
            f"{where}: the build context {positional[0]!r} is not a local folder; the local "
            f"runner builds from the validation folder only; {_FIX}"
        )
    context = _inside(posixpath.join(workdir, positional[0]), where, "build context")
    files = options["file"]
    if len(files) > 1:
        raise ConfigError(f"{where}: 'build' names more than one Dockerfile (-f)")
    # docker build reads a relative -f from its working directory, the default from the context
    dockerfile = posixpath.join(workdir, files[0]) if files else f"{context}/Dockerfile"
    dockerfile = _inside(dockerfile, where, "Dockerfile")
    tags = []
    for tag in options["tag"]:
        try:
            tags.append(str(ImageRef.parse(tag)))
        except InvalidReference as exc:
            raise ConfigError(
                f"{where}: the build tag {tag!r} is not valid: {exc.message}"
            ) from None
    for arg in options["build-arg"]:
        key, equals, rest = arg.partition("=")
        if not equals or not _ENV_KEY.fullmatch(key):
            raise ConfigError(
                f"{where}: --build-arg {key!r} has no value; write --build-arg KEY=value (the "
                "local runner does not read build arguments from its own environment)"
            )
        if "\n" in rest or "\r" in rest:
            raise UnsupportedTask(f"{where}: the value of --build-arg {key} spans lines")
    for name in ("target", "platform"):
        if len(options[name]) > 1:
            raise ConfigError(f"{where}: 'build' gives --{name} more than once")
    return BuildStep(
        tags=tuple(dict.fromkeys(tags)),
        dockerfile=dockerfile,
        context=context,
        build_args=tuple(options["build-arg"]),
        target=options["target"][0] if options["target"] else None,
        no_cache=no_cache,
        platform=options["platform"][0] if options["platform"] else None,
        working_directory=workdir,
        **common,
    )


def _push(value: object, where: str, common: dict[str, Any]) -> PushStep:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: 'push' must be a list of image names (registry/repo:tag)")
    images = []
    for name in value:
        try:
            ref = ImageRef.parse(name)
        except InvalidReference as exc:
            raise ConfigError(
                f"{where}: the image {name!r} to push is not valid: {exc.message}"
            ) from None
        if ref.tag is None:
            raise ConfigError(f"{where}: the image {name!r} to push needs a tag")
        images.append(str(ref))
    return PushStep(images=tuple(dict.fromkeys(images)), **common)


_PREVIOUS = "\0previous"  # placeholder resolved in _ordered: "after the step above"


def _when(value: object, where: str) -> tuple[str, ...]:
    if value is None or value == []:
        return (_PREVIOUS,)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{where}: 'when' must be a list of step ids, or [\"-\"]")
    if IMMEDIATE in value:
        if len(value) > 1:
            raise ConfigError(f"{where}: 'when' cannot mix \"-\" with step ids")
        return ()
    return tuple(dict.fromkeys(value))


def _ordered(steps: list[Step], source: str) -> tuple[Step, ...]:
    """Resolve ``when`` and sort the steps topologically, file order breaking ties."""
    ids = [step.id for step in steps]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"{source}: step ids must be unique; repeated: {', '.join(duplicates)}")
    resolved: list[Step] = []
    for index, step in enumerate(steps):
        after = step.after
        if after == (_PREVIOUS,):
            after = (steps[index - 1].id,) if index > 0 else ()
        for dependency in after:
            if dependency == step.id:
                raise ConfigError(f"{source}: step '{step.id}' waits for itself in 'when'")
            if dependency not in ids:
                raise ConfigError(
                    f"{source}: step '{step.id}' waits for '{dependency}' in 'when', but no "
                    f"step has that id (ids: {', '.join(ids)})"
                )
        resolved.append(replace(step, after=after))
    order: list[Step] = []
    done: set[str] = set()
    pending = list(resolved)
    while pending:
        ready = next((s for s in pending if set(s.after) <= done), None)
        if ready is None:
            cycle = ", ".join(s.id for s in pending)
            raise ConfigError(
                f"{source}: the 'when' dependencies of steps {cycle} form a cycle; "
                "make one of them not wait for the others"
            )
        order.append(ready)
        done.add(ready.id)
        pending.remove(ready)
    return tuple(order)
