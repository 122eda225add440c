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

This module reads the file's structure (properties, steps, dependencies) and is the import path
of everything the validators use. The values it builds (run context, steps, the task) and the
constants of the reference are in :mod:`~gate.adapters.validation.taskfile_model`; the text
stages before YAML (comments, version, aliases, templates) in
:mod:`~gate.adapters.validation.taskfile_render`; ``build`` and ``push`` values and the
``FROM`` images of a Dockerfile in :mod:`~gate.adapters.validation.taskfile_build`.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from gate.adapters.validation.taskfile_build import (
    base_images,
    parse_build_step,
    parse_push_step,
)
from gate.adapters.validation.taskfile_model import (
    ALIAS_VERSION,
    DATE_FORMAT,
    DEFAULT_STEP_TIMEOUT,
    DEFAULT_VERSION,
    ENV_KEY,
    IMAGE_ALIASES,
    IMMEDIATE,
    RUN_VARIABLES,
    SUPPORTED_VERSIONS,
    WORKSPACE,
    AcrTask,
    BuildStep,
    CmdStep,
    PushStep,
    RunContext,
    Step,
)
from gate.adapters.validation.taskfile_model import LOCAL_FIX as _FIX
from gate.adapters.validation.taskfile_render import (
    expand_aliases,
    find_version,
    render,
    strip_comment_lines,
)
from gate.domain.ref import ImageRef
from gate.errors import ConfigError, InvalidReference, UnsupportedTask

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
    if not equals or not ENV_KEY.fullmatch(key):
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
        return parse_build_step(raw["build"], where, build_dir, common)
    if kind == "push":
        return parse_push_step(raw["push"], where, common)

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


__all__ = [
    "ALIAS_VERSION",
    "DATE_FORMAT",
    "DEFAULT_STEP_TIMEOUT",
    "DEFAULT_VERSION",
    "IMAGE_ALIASES",
    "IMMEDIATE",
    "RUN_VARIABLES",
    "SUPPORTED_VERSIONS",
    "WORKSPACE",
    "AcrTask",
    "BuildStep",
    "CmdStep",
    "PushStep",
    "RunContext",
    "Step",
    "base_images",
    "check_sources",
    "expand_aliases",
    "find_version",
    "load_task",
    "parse_task",
    "render",
    "strip_comment_lines",
]
