"""The emulated ACR agent: reads an ACR task file and runs its steps with podman.

Written from the "ACR Tasks reference: YAML" (Microsoft Learn), not from the gate's own task
runner, so that a bug there cannot hide in the fake the gate is tested against. What it knows:

* the file: comment lines dropped, then ``{{.Values.NAME}}`` and ``{{.Run.NAME}}`` rendered (a
  value nobody set renders empty, as ACR's templates do), and from ``version: v1.1.0`` on the
  Run aliases ``$ID``, ``$Registry``, ``$RegistryName``, ``$Date``, ``$OS``, ``$Architecture``
  (``$$`` is a literal ``$``); task properties ``version``, ``stepTimeout`` (default 600 s),
  ``workingDirectory``, ``env`` (entries split at commas); other properties are ignored, as
  ACR ignores them;
* steps: ``cmd`` (``IMAGE [ARGS...]``, the arguments going to the image's entry point), ``build``
  (the arguments of ``docker build``, run in the step's working directory) and ``push`` (a list
  of images); ``id`` (default ``acb_step_<index>``), ``when`` (absent: after the step above;
  ``["-"]``: at once; ids: after those), ``env`` (over the task's), ``entryPoint``,
  ``workingDirectory`` (relative ones under ``/workspace``, the source context),
  ``disableWorkingDirectoryOverride``, ``timeout``, ``ignoreErrors``.

Steps run one at a time in an order ``when`` allows (ACR may run independent steps at once; the
outcome is the same for the files the tests run). A ``push`` only checks that the image was
built in the run: the emulated agent has no route to the emulated registries' TLS data planes,
and what a validation builds must never reach them anyway.
"""

from __future__ import annotations

import platform
import posixpath
import re
import shlex
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

WORKSPACE = "/workspace"
DEFAULT_STEP_TIMEOUT = 600
ALIASES_FROM = (1, 1, 0)
_RUN_VARIABLES = ("ID", "Registry", "RegistryName", "Date", "OS", "Architecture")
_ACTION = re.compile(r"\{\{-?\s*\.(Values|Run)\.([A-Za-z_][A-Za-z0-9_]*)\s*-?\}\}")
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]")
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "i686": "386"}
_KILL_WAIT = 10.0


class TaskError(Exception):
    """The task file cannot run; ``message`` says why (what ACR's parser would report)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def host_architecture() -> str:
    """This machine's architecture as Go names it (``amd64``, ``arm64``…)."""
    machine = platform.machine().lower()
    return _GOARCH.get(machine, machine)


@dataclass(frozen=True)
class RunVariables:
    """The ``{{.Run.X}}`` variables of one run."""

    run_id: str
    registry: str
    date: datetime
    os: str = "linux"
    architecture: str = field(default_factory=host_architecture)

    def get(self, name: str) -> str | None:
        """The value of ``{{.Run.<name>}}``, None for one the agent does not have."""
        return {
            "ID": self.run_id,
            "Registry": self.registry,
            "RegistryName": self.registry.split(".", 1)[0],
            "Date": self.date.strftime("%Y%m%d-%H%M%Sz"),
            "OS": self.os,
            "Architecture": self.architecture,
        }.get(name)


@dataclass(frozen=True)
class Step:
    """One step, resolved. ``kind`` is cmd, build or push; ``words`` its arguments.

    cmd: ``image`` and the arguments after it; build: the ``docker build`` arguments and the
    tags among them (``images``); push: the images to push (``images``).
    """

    id: str
    kind: str
    image: str
    words: tuple[str, ...]
    images: tuple[str, ...]
    env: tuple[str, ...]
    entry_point: str | None
    working_directory: str | None
    after: tuple[str, ...]
    timeout: int
    ignore_errors: bool


@dataclass(frozen=True)
class Task:
    """A task file's steps in the order they run."""

    version: str
    steps: tuple[Step, ...]

    @property
    def built(self) -> frozenset[str]:
        """Images a build step of the file tags."""
        return frozenset(i for s in self.steps if s.kind == "build" for i in s.images)

    @property
    def images(self) -> tuple[str, ...]:
        """Images the cmd steps run that no build step makes, once each, in order of use."""
        return tuple(
            dict.fromkeys(
                s.image for s in self.steps if s.kind == "cmd" and s.image not in self.built
            )
        )


# ---------------------------------------------------------------------------------------------
# reading the file


def _version_tuple(text: str) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", text)
    return tuple(int(n) for n in numbers[:3]) if numbers else ()


def _first_version(lines: list[str]) -> str:
    for line in lines:
        if line.strip():
            key, colon, value = line.partition(":")
            return value.strip().strip("'\"") if colon and key.strip() == "version" else ""
    return ""


def _expand_aliases(text: str) -> str:
    def alias(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return "{{.Run." + name + "}}" if name in _RUN_VARIABLES else m.group(0)

    return re.sub(r"\$\$|\$([A-Za-z][A-Za-z0-9]*)", alias, text)


def render(text: str, values: Mapping[str, str], run: RunVariables) -> str:
    """The task file as ACR runs it: comments dropped, aliases and template actions replaced."""
    lines = [line for line in text.split("\n") if not line.strip().startswith("#")]
    rendered = "\n".join(lines)
    if _version_tuple(_first_version(lines)) >= ALIASES_FROM:
        rendered = _expand_aliases(rendered)

    def action(m: re.Match[str]) -> str:
        if m.group(1) == "Values":
            return values.get(m.group(2), "")
        value = run.get(m.group(2))
        if value is None:
            raise TaskError(f"the emulated agent has no value for {{{{.Run.{m.group(2)}}}}}")
        return value

    rendered = _ACTION.sub(action, rendered)
    if "{{" in rendered:
        raise TaskError("the task file has a template action the emulated agent cannot render")
    return rendered


def _seconds(raw: Mapping[str, Any], key: str, default: int) -> int:
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise TaskError(f"'{key}' must be a whole number of seconds, not {value!r}")
    return value if value > 0 else default


def _env(value: object, where: str, *, split: bool) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TaskError(f"{where}: 'env' must be a list of KEY=value strings")
    entries = [p for item in value for p in (item.split(",") if split else [item])]
    for entry in entries:
        if "=" not in entry:
            raise TaskError(f"{where}: env entry {entry!r} is not KEY=value")
    return entries


def _workdir(value: object, task_default: str) -> str:
    path = value if isinstance(value, str) and value else task_default
    return posixpath.normpath(posixpath.join(WORKSPACE, path))


def _tags(words: list[str]) -> tuple[str, ...]:
    tags: list[str] = []
    for i, word in enumerate(words):
        if word in ("-t", "--tag") and i + 1 < len(words):
            tags.append(words[i + 1])
        elif word.startswith(("--tag=", "-t=")):
            tags.append(word.partition("=")[2])
    return tuple(dict.fromkeys(tags))


def parse_task(text: str, values: Mapping[str, str], run: RunVariables) -> Task:
    """Render and read a task file; TaskError for one ACR would refuse to run."""
    try:
        raw = yaml.safe_load(render(text, values, run))
    except yaml.YAMLError as exc:
        raise TaskError(f"the task file is not YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise TaskError("the task file must be a mapping with 'steps'")
    version = str(raw.get("version") or "v1.0.0")
    step_timeout = _seconds(raw, "stepTimeout", DEFAULT_STEP_TIMEOUT)
    task_workdir = raw.get("workingDirectory")
    task_env = _env(raw.get("env"), "task", split=True)
    listed = raw.get("steps")
    if listed is None:
        listed = []
    if not isinstance(listed, list):
        raise TaskError("'steps' must be a list")
    steps: list[Step] = []
    for index, item in enumerate(listed):
        if not isinstance(item, dict):
            raise TaskError(f"step {index + 1} must be a mapping")
        steps.append(_step(item, index, steps, step_timeout, task_workdir, task_env))
    return Task(version, _ordered(steps))


def _step(
    raw: dict[str, Any],
    index: int,
    before: list[Step],
    step_timeout: int,
    task_workdir: object,
    task_env: list[str],
) -> Step:
    step_id = str(raw.get("id") or f"acb_step_{index}")
    kinds = [k for k in ("cmd", "build", "push") if raw.get(k) not in (None, "", [])]
    if len(kinds) != 1:
        raise TaskError(f"step '{step_id}' must have exactly one of cmd, build, push")
    kind = kinds[0]
    when = raw.get("when")
    if when is None or when == []:
        after: tuple[str, ...] = (before[-1].id,) if before else ()
    elif isinstance(when, list) and all(isinstance(w, str) for w in when):
        after = () if "-" in when else tuple(when)
    else:
        raise TaskError(f"step '{step_id}': 'when' must be a list of step ids, or [\"-\"]")
    default_workdir = task_workdir if isinstance(task_workdir, str) else ""
    own_env = _env(raw.get("env"), f"step '{step_id}'", split=False)
    keys = {entry.partition("=")[0] for entry in own_env}
    env = (*own_env, *(e for e in task_env if e.partition("=")[0] not in keys))
    common: dict[str, Any] = {
        "id": step_id,
        "kind": kind,
        "after": after,
        "timeout": _seconds(raw, "timeout", step_timeout),
        "ignore_errors": bool(raw.get("ignoreErrors", False)),
        "env": env,
    }
    value = raw[kind]
    if kind == "push":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TaskError(f"step '{step_id}': 'push' must be a list of images")
        return Step(
            image=value[0],
            words=(),
            images=tuple(value),
            entry_point=None,
            working_directory=None,
            **common,
        )
    if not isinstance(value, str):
        raise TaskError(f"step '{step_id}': '{kind}' must be a string")
    try:
        words = shlex.split(value)
    except ValueError as exc:
        raise TaskError(f"step '{step_id}': '{kind}' cannot be split into words ({exc})") from None
    if not words:
        raise TaskError(f"step '{step_id}': '{kind}' is empty")
    workdir: str | None = _workdir(raw.get("workingDirectory"), default_workdir)
    if kind == "build":
        tags = _tags(words)
        return Step(
            image=tags[0] if tags else "",
            words=tuple(words),
            images=tags,
            entry_point=None,
            working_directory=workdir,
            **common,
        )
    if raw.get("disableWorkingDirectoryOverride"):
        workdir = None
    entry = raw.get("entryPoint")
    return Step(
        image=words[0],
        words=tuple(words[1:]),
        images=(),
        entry_point=str(entry) if entry else None,
        working_directory=workdir,
        **common,
    )


def _ordered(steps: list[Step]) -> tuple[Step, ...]:
    ids = [s.id for s in steps]
    if len(set(ids)) != len(ids):
        raise TaskError(f"step ids must be unique: {', '.join(ids)}")
    for step in steps:
        for dependency in step.after:
            if dependency not in ids or dependency == step.id:
                raise TaskError(f"step '{step.id}' waits for an unknown step '{dependency}'")
    order: list[Step] = []
    done: set[str] = set()
    pending = list(steps)
    while pending:
        ready = next((s for s in pending if set(s.after) <= done), None)
        if ready is None:
            raise TaskError(f"the 'when' of steps {', '.join(s.id for s in pending)} form a cycle")
        order.append(ready)
        done.add(ready.id)
        pending.remove(ready)
    return tuple(order)


# ---------------------------------------------------------------------------------------------
# running it


@dataclass(frozen=True)
class Ending:
    """How a run ended: its ``status``, the runner's closing words, and its ``runErrorMessage``."""

    status: str
    closing: str = ""
    error: str | None = None


@dataclass(frozen=True)
class _Exit:
    code: int | None  # None: timed out
    seconds: float


def _stamp() -> str:
    """The runner's log-line prefix (Go's ``log`` package: ``2006/01/02 15:04:05``)."""
    return datetime.now(UTC).strftime("%Y/%m/%d %H:%M:%S")


class Agent:
    """Runs a :class:`Task` with podman, writing ACR's log lines through ``write``.

    ``insecure``: registries pulled from over plain HTTP (the backing registries); ``platform``:
    podman's ``os/arch[/variant]`` for every pull, container and build ('' for this host's);
    ``scratch``: a folder of the run's own (env files).
    """

    def __init__(
        self,
        write: Callable[[str], None],
        *,
        insecure: frozenset[str],
        platform: str,
        scratch: Path,
        cancel: threading.Event,
        network: str = "none",
    ) -> None:
        self._write = write
        self._insecure = insecure
        self._platform = ["--platform", platform] if platform else []
        self._scratch = scratch
        self._cancel = cancel
        self._network = network
        self._token = uuid.uuid4().hex[:8]
        self._created: list[str] = []

    def runner(self, text: str) -> None:
        """One line of the runner's own, time-stamped."""
        self._write(f"{_stamp()} {text}\n")

    def run(self, task: Task, source: Path, timeout: float) -> Ending:
        """Pull, run the steps in order, clean up; how the run ended."""
        deadline = time.monotonic() + timeout
        try:
            for image in task.images:
                failed = self._pull(image, deadline)
                if failed is not None:
                    return failed
            return self._steps(task, source, deadline)
        finally:
            for image in reversed(self._created):
                self._quietly("rmi", image)

    def _tls(self, image: str) -> list[str]:
        host = image.split("/", 1)[0] if "/" in image else ""
        return ["--tls-verify=false"] if host in self._insecure else []

    def _pull(self, image: str, deadline: float) -> Ending | None:
        existed = self._quietly("image", "exists", image) == 0
        args = ["podman", "pull", "-q", *self._platform, *self._tls(image), image]
        try:
            done = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Ending("Timeout", "context deadline exceeded")
        if done.returncode != 0:
            detail = done.stderr.decode("utf-8", "replace").strip().splitlines()
            reason = f"failed to pull image {image}: {detail[-1] if detail else 'exit status'}"
            reason += f" (exit status {done.returncode})"
            self._write(reason + "\n")
            return Ending("Error", reason, reason)
        if not existed:
            self._created.append(image)
        return None

    def _steps(self, task: Task, source: Path, deadline: float) -> Ending:
        elapsed: list[tuple[str, float]] = []
        for step in task.steps:
            if self._cancel.is_set():
                return Ending("Canceled", "canceled")
            if time.monotonic() >= deadline:
                return Ending("Timeout", "context deadline exceeded")
            self.runner(
                f"Executing step ID: {step.id}. Timeout(sec): {step.timeout}, Working "
                f"directory: '{step.working_directory or ''}', Network: 'acb_default_network'"
            )
            self.runner(f"Launching container with name: {step.id}")
            if step.kind == "push":
                ended = self._push(step, task)
            elif step.kind == "build":
                ended = self._build(step, source, deadline)
            else:
                ended = self._cmd(step, source, deadline)
            if ended.code == 0:
                self.runner(f"Successfully executed container: {step.id}")
                elapsed.append((step.id, ended.seconds))
                continue
            if ended.code is None and time.monotonic() >= deadline:
                return Ending("Timeout", "context deadline exceeded")
            self.runner(f"Container failed during run: {step.id}. No retries remaining.")
            error = (
                "context deadline exceeded" if ended.code is None else f"exit status {ended.code}"
            )
            if step.ignore_errors:
                self.runner(
                    f"Step ID: {step.id} encountered an error: {error}, but is set to ignore "
                    "errors. Continuing..."
                )
                continue
            self._write(f"failed to run step ID: {step.id}: {error}\n")
            return Ending("Failed", "failed during run, err: exit status 1")
        for step_id, seconds in elapsed:
            self.runner(
                f"Step ID: {step_id} marked as successful (elapsed time in seconds: {seconds:f})"
            )
        return Ending("Succeeded")

    def _host_path(self, source: Path, path: str) -> Path:
        relative = posixpath.relpath(path, WORKSPACE)
        if relative == ".." or relative.startswith("../"):
            raise TaskError(f"{path} is outside the source context {WORKSPACE}")
        return source / relative

    def _cmd(self, step: Step, source: Path, deadline: float) -> _Exit:
        name = _NAME_UNSAFE.sub("-", f"acb-{self._token}-{step.id}")
        args = ["podman", "run", "--rm", "--pull=never", "--name", name, *self._platform]
        args += ["--network", self._network, "-v", f"{source}:{WORKSPACE}:Z"]
        if step.working_directory is not None:
            args += ["-w", step.working_directory]
        if step.env:
            env_file = self._scratch / f"{name}.env"
            env_file.write_text("".join(f"{e}\n" for e in step.env), encoding="utf-8")
            env_file.chmod(0o600)
            args += ["--env-file", str(env_file)]
        if step.entry_point is not None:
            args += ["--entrypoint", step.entry_point]
        return self._process(step, [*args, step.image, *step.words], deadline, container=name)

    def _build(self, step: Step, source: Path, deadline: float) -> _Exit:
        assert step.working_directory is not None
        where = self._host_path(source, step.working_directory)
        args = ["podman", "build", "--network", self._network, "--layers=false"]
        # the FROM images are the backing registries' (plain HTTP), like every pull here
        args += ["--tls-verify=false"] if self._insecure else []
        if "--platform" not in step.words and not any(
            w.startswith("--platform=") for w in step.words
        ):
            args += self._platform
        for tag in step.images:
            if tag not in self._created and self._quietly("image", "exists", tag) != 0:
                self._created.append(tag)
        return self._process(step, [*args, *step.words], deadline, cwd=where)

    def _push(self, step: Step, task: Task) -> _Exit:
        missing = [image for image in step.images if image not in task.built]
        for image in missing:
            self._write(f"An image does not exist locally with the tag: {image}\n")
        return _Exit(1 if missing else 0, 0.0)

    def _process(
        self,
        step: Step,
        args: list[str],
        deadline: float,
        *,
        container: str | None = None,
        cwd: Path | None = None,
    ) -> _Exit:
        began = time.monotonic()
        limit = max(0.1, min(float(step.timeout), deadline - began))
        try:
            process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=cwd,
            )
        except OSError as exc:
            self._write(f"failed to start podman: {exc}\n")
            return _Exit(125, 0.0)
        assert process.stdout is not None
        reader = threading.Thread(target=self._pump, args=(process.stdout,), daemon=True)
        reader.start()
        code: int | None
        try:
            code = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            if container is not None:
                self._quietly("kill", container)
                self._quietly("rm", "-f", container)
            process.kill()
            process.wait()
            code = None
        reader.join(timeout=_KILL_WAIT)
        return _Exit(code, time.monotonic() - began)

    def _pump(self, stream: Any) -> None:
        # line by line, so the log grows while the step runs, as ACR's does
        try:
            for line in iter(stream.readline, b""):
                self._write(line.decode("utf-8", "replace"))
        finally:
            stream.close()

    def _quietly(self, *args: str) -> int:
        try:
            return subprocess.run(
                ["podman", *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=60,
                check=False,
            ).returncode
        except (OSError, subprocess.TimeoutExpired):
            return -1
