"""The local validator: runs a rule's ACR task file with podman (or docker) on this machine.

The same ``acr-task.yaml`` an ACR quick run executes in Azure (``az acr run -f acr-task.yaml
--set IMAGE=... <folder>``) runs here, step by step, against the digest-pinned candidate image:

1. a run ID is made (:mod:`gate.runid`), the file is rendered and checked whole
   (:mod:`gate.acr_task`); anything the local runner cannot do is refused before anything runs;
2. ``on_started(run_id)`` is called;
3. every step image is pulled (``--tls-verify=false`` for the configured insecure registries);
4. the steps run one at a time in dependency order, each as
   ``<engine> run --rm --pull=never --name <run-id>-<step> --network <network>
   -v <copy of the folder>:/workspace:Z -w <workdir> --env-file <env> [--entrypoint E] IMAGE
   ARGS...``. The folder is copied first, as ACR uploads it: steps may write to /workspace
   (later steps see it) without touching the rule's folder, and two runs of one rule (two
   digests at once) never see each other's files.

Outcomes: every step passing (or failing with ``ignoreErrors``) is PASSED. A step that exits
non-zero or outlives its timeout is REJECTED (the image failed its validation) and the run stops
there, as in ACR Tasks. Anything that keeps us from telling is FAILED: no engine, a pull that
fails, the engine itself failing, the total timeout (the request's ``timeout_seconds``) passing.
The engine failed when ``run`` exits 125 (podman-run(1) and docker run's reference, "Exit
Status": the error is with the engine itself), or exits 126/127 ("the contained command cannot
be invoked / found") with the OCI runtime's own error line (``Error: … OCI …``), which podman
prints when the runtime could not start the step's process (a missing command, ``permission
denied``, an rlimit the runtime may not set): the step never ran in the candidate, so there is no
verdict. A step whose own process exits 126 or 127 prints no such line and is a rejection.

The log interleaves stdout and stderr of every step under a header per step, keeps the last
``max_log_bytes`` (and says what was cut), and has every secret value replaced by ``***``.
Secret values reach containers through an env file, not the engine's command line (but a
secret rendered into ``cmd`` arguments is on that command line, as it is in ACR).
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from gate.acr_task import WORKSPACE, AcrTask, CmdStep, RunContext, load_task
from gate.errors import ConfigError
from gate.model import Outcome, ValidationResult
from gate.ports import Resume, ValidationRequest
from gate.ref import ImageRef
from gate.runid import DEFAULT_PREFIX, new_run_id

MAX_LOG_BYTES = 1 << 20
"""The log keeps this many bytes, the last ones."""

ENGINE_ERROR_EXIT = 125
"""The exit code podman and docker use when they, not the container, failed."""

_RUNTIME_EXITS = frozenset({126, 127})
# podman's own error line when the OCI runtime (runc, crun) could not start the step's process
_RUNTIME_REFUSED = re.compile(r"^Error: .*\bOCI\b", re.MULTILINE)

MASK = "***"

_TAIL_BYTES = 16 << 10
_REASON_LINES = 3
_REASON_CHARS = 400
_KILL_WAIT_SECONDS = 10.0
_ENGINE_CALL_SECONDS = 60.0
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]")
_GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def host_architecture() -> str:
    """This machine's architecture as Go (and so ACR's ``{{.Run.Architecture}}``) names it."""
    machine = platform.machine().lower()
    return _GOARCH.get(machine, machine)


class _Masker:
    """Replaces secret values by ``***``; longest first, so a secret inside another goes too."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text


class _Capped:
    """A byte buffer that keeps only its last ``cap`` bytes and counts what it dropped."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.dropped = 0
        self._data = bytearray()
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            self._data += data
            # Trimmed in batches (at twice the cap) so a chatty step is not O(n^2).
            if len(self._data) > 2 * self.cap:
                cut = len(self._data) - self.cap
                del self._data[:cut]
                self.dropped += cut

    def text(self, mask: Callable[[str], str]) -> tuple[str, int]:
        """The kept bytes decoded and masked, and how many bytes were dropped in all.

        After a cut the first, partial line is dropped too, so no secret can survive as a
        fragment that the mask does not recognise.
        """
        with self._lock:
            data = bytes(self._data)
            dropped = self.dropped
        if len(data) > self.cap:
            dropped += len(data) - self.cap
            data = data[-self.cap :]
        text = data.decode("utf-8", "replace")
        if dropped:
            newline = text.find("\n")
            cut = len(text) if newline == -1 else newline + 1
            dropped += len(text[:cut].encode("utf-8", "replace"))
            text = text[cut:]
        return mask(text), dropped


@dataclass(frozen=True)
class _StepRun:
    """How one step ended: ``status`` is ok, exit, timeout, engine (error) or deadline."""

    status: str
    code: int | None
    seconds: float
    tail: str


class LocalValidator:
    """Runs ACR task files locally with podman or docker; see the module documentation.

    ``engine`` is a command name or path (None: ``podman``, else ``docker``, from PATH).
    ``insecure_registries`` are pulled from without TLS verification (podman only; docker
    reads its daemon configuration). ``network`` is what every step container is attached to.
    ``extra_env`` is added to the engine's own environment (e.g. ``CONTAINERS_CONF``), never to
    the containers'. ``work_dir`` is where each run's copy of the folder is made (default: the
    system temporary folder).
    """

    def __init__(
        self,
        engine: str | None = None,
        *,
        insecure_registries: frozenset[str] = frozenset(),
        network: str = "none",
        extra_env: Mapping[str, str] | None = None,
        max_log_bytes: int = MAX_LOG_BYTES,
        work_dir: Path | None = None,
        run_id_prefix: str = DEFAULT_PREFIX,
    ) -> None:
        self._engine = engine
        self.insecure_registries = frozenset(insecure_registries)
        self.network = network
        self._extra_env = dict(extra_env or {})
        self.max_log_bytes = max_log_bytes
        self._work_dir = work_dir
        self._prefix = run_id_prefix

    def engine_path(self) -> str | None:
        """The engine executable that would run now, or None if there is none."""
        if self._engine is not None:
            return shutil.which(self._engine, path=self._search_path())
        for name in ("podman", "docker"):
            found = shutil.which(name, path=self._search_path())
            if found:
                return found
        return None

    def _search_path(self) -> str | None:
        return self._extra_env.get("PATH", os.environ.get("PATH"))

    def validate(
        self,
        request: ValidationRequest,
        on_started: Callable[[str], None],
        resume: Resume | None = None,
    ) -> ValidationResult:
        """Check the task file, call ``on_started(run_id)``, pull, run the steps, report.

        ``resume`` is ignored: local containers die with the process that started them, so an
        interrupted validation is simply run again, under a new run ID.

        Raises UnsupportedTask or ConfigError (nothing ran, ``on_started`` not called) for a
        task file the local runner cannot run, InvalidReference for an image without digest.
        """
        began = time.monotonic()
        deadline = began + request.timeout_seconds
        run_id = new_run_id(self._prefix)
        pinned = request.image.pinned()
        values = {"IMAGE": str(pinned), **request.values}
        context = RunContext(
            run_id=run_id,
            date=datetime.now(UTC),
            values=values,
            registry=request.run_registry,
            architecture=host_architecture(),
        )
        folder = Path(request.folder)
        if not folder.is_dir():
            raise ConfigError(
                f"validation folder {folder} does not exist; create it, or fix the rule's "
                "validation folder"
            )
        task = load_task(folder / request.task_file, context)
        mask = _Masker(values[name] for name in request.secret_values if name in values)
        on_started(run_id)
        run = _Run(
            engine=self.engine_path(),
            wanted=self._engine,
            env={**os.environ, **self._extra_env},
            network=self.network,
            insecure=self.insecure_registries,
            log=_Capped(self.max_log_bytes),
            work_dir=self._work_dir,
            request=request,
            task=task,
            run_id=run_id,
            deadline=deadline,
            mask=mask,
        )
        outcome, reason = run.execute(folder)
        elapsed = time.monotonic() - began
        verdict = "was successful" if outcome is Outcome.PASSED else f"{outcome.value}"
        run.log_line(f"Run ID: {run_id} {verdict} after {elapsed:.1f} s: {reason}")
        log, dropped = run.log.text(mask)
        if dropped:
            log = (
                f"[log cut: the first {dropped} bytes were dropped to keep the log within "
                f"{self.max_log_bytes} bytes]\n" + log
            )
        return ValidationResult(outcome=outcome, run_id=run_id, reason=mask(reason), log=log)


class _Run:
    """One validation run: pulls, steps, the log; ``execute`` returns (outcome, reason)."""

    def __init__(
        self,
        *,
        engine: str | None,
        wanted: str | None,
        env: dict[str, str],
        network: str,
        insecure: frozenset[str],
        log: _Capped,
        work_dir: Path | None,
        request: ValidationRequest,
        task: AcrTask,
        run_id: str,
        deadline: float,
        mask: _Masker,
    ) -> None:
        self.engine = engine
        self.wanted = wanted
        self.env = env
        self.network = network
        self.insecure = insecure
        self.log = log
        self.work_dir = work_dir
        self.request = request
        self.task = task
        self.run_id = run_id
        self.deadline = deadline
        self.mask = mask

    def log_line(self, text: str) -> None:
        self.log.write((text + "\n").encode("utf-8", "replace"))

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def total_timeout(self, doing: str) -> tuple[Outcome, str]:
        seconds = self.request.timeout_seconds
        return (
            Outcome.FAILED,
            f"the run passed its total timeout of {seconds:g} s while {doing}; raise the "
            "rule's validation timeout_seconds, or make the steps faster",
        )

    def execute(self, folder: Path) -> tuple[Outcome, str]:
        task = self.task
        self.log_line(
            f"Run ID: {self.run_id}: {task.source} (version {task.version}), "
            f"{len(task.steps)} step(s), engine {self.engine or 'none'}, "
            f"network {self.network}"
        )
        if self.engine is None:
            wanted = self.wanted or "podman or docker"
            return (
                Outcome.FAILED,
                f"no container engine: {wanted} is not on PATH; install podman (or docker), or "
                "set the validator's engine to its path",
            )
        scratch = Path(tempfile.mkdtemp(prefix=f"gate-{self.run_id}-", dir=self.work_dir))
        try:
            workspace = scratch / "workspace"
            try:
                shutil.copytree(folder, workspace, symlinks=True)
            except OSError as exc:
                return Outcome.FAILED, f"could not copy the validation folder {folder}: {exc}"
            for image in task.images:
                failure = self.pull(image)
                if failure is not None:
                    return failure
            return self.steps(workspace, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def pull(self, image: str) -> tuple[Outcome, str] | None:
        assert self.engine is not None
        self.log_line(f"----- pull: {image} -----")
        args = [self.engine, "pull", "-q"]
        podman = Path(self.engine).name.startswith("podman")
        if podman and ImageRef.parse(image).registry in self.insecure:
            args.append("--tls-verify=false")
        remaining = self.remaining()
        if remaining <= 0:
            return self.total_timeout(f"pulling {image}")
        try:
            done = subprocess.run(
                [*args, image],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=remaining,
                env=self.env,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return self.total_timeout(f"pulling {image}")
        except OSError as exc:
            return Outcome.FAILED, f"could not start the container engine {self.engine}: {exc}"
        self.log.write(done.stdout + done.stderr)
        if done.returncode != 0:
            detail = _last_lines(done.stderr.decode("utf-8", "replace") or "", self.mask)
            role = "the candidate image" if image == str(self.request.image.pinned()) else "image"
            return (
                Outcome.FAILED,
                f"could not pull {role} {image} (exit code {done.returncode}): {detail}; check "
                "that the registry is reachable and the image exists, then retry",
            )
        return None

    def steps(self, workspace: Path, scratch: Path) -> tuple[Outcome, str]:
        names: set[str] = set()
        ignored: list[str] = []
        steps = self.task.steps
        for position, step in enumerate(steps):
            name = _container_name(self.run_id, step.id, names)
            env_file = None
            if step.env:
                env_file = scratch / f"step-{step.index}.env"
                env_file.write_text("".join(f"{entry}\n" for entry in step.env), encoding="utf-8")
                env_file.chmod(0o600)
            result = self.step(step, name, workspace, env_file)
            if result.status == "ok":
                continue
            if result.status == "deadline":
                self.skip(steps[position + 1 :], step.id)
                return self.total_timeout(f"step '{step.id}' was running")
            what = self.describe(step, result)
            if step.ignore_errors:
                self.log_line(f"{what}; ignored (ignoreErrors)")
                ignored.append(step.id)
                continue
            self.skip(steps[position + 1 :], step.id)
            if result.status == "engine":
                return Outcome.FAILED, what
            return Outcome.REJECTED, what
        passed = "its step passed" if len(steps) == 1 else f"all {len(steps)} steps passed"
        if ignored:
            passed += f" (errors ignored in: {', '.join(ignored)})"
        return Outcome.PASSED, passed

    def describe(self, step: CmdStep, result: _StepRun) -> str:
        detail = f": {result.tail}" if result.tail else ""
        if result.status == "timeout":
            return f"step '{step.id}' timed out after {step.timeout} s{detail}"
        if result.status == "engine":
            return (
                f"the container engine could not run step '{step.id}' (exit code "
                f"{result.code}), so the image was not judged{detail}"
            )
        return f"step '{step.id}' exited with code {result.code}{detail}"

    def skip(self, rest: Iterable[CmdStep], failed: str) -> None:
        for step in rest:
            self.log_line(f"step {step.id}: skipped, the run stopped at step {failed}")

    def step(self, step: CmdStep, name: str, workspace: Path, env_file: Path | None) -> _StepRun:
        assert self.engine is not None
        args = [self.engine, "run", "--rm", "--pull=never", "--name", name]
        args += ["--network", self.network]
        args += ["-v", f"{workspace}:{WORKSPACE}:Z"]
        if step.working_directory is not None:
            args += ["-w", step.working_directory]
        if env_file is not None:
            args += ["--env-file", str(env_file)]
        if step.entry_point is not None:
            args += ["--entrypoint", step.entry_point]
        args += [step.image, *step.args]

        self.log_line(f"----- step: {step.id} (image {step.image}) -----")
        shown = [
            f"entrypoint: {step.entry_point}" if step.entry_point else "entrypoint: (image's)",
            f"args: {shlex.join(step.args)}" if step.args else "args: (image's)",
            f"workdir: {step.working_directory or '(image)'}",
            f"env: {', '.join(e.partition('=')[0] for e in step.env) or '-'}",
            f"timeout: {step.timeout} s",
        ]
        self.log_line("; ".join(shown))
        remaining = self.remaining()
        if remaining <= 0:
            return _StepRun("deadline", None, 0.0, "")
        limit = min(float(step.timeout), remaining)
        tail = _Capped(_TAIL_BYTES)
        began = time.monotonic()
        try:
            process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        except OSError as exc:
            self.log_line(f"could not start {self.engine}: {exc}")
            return _StepRun("engine", None, 0.0, str(exc))
        assert process.stdout is not None
        reader = threading.Thread(
            target=_pump, args=(process.stdout, (self.log, tail)), daemon=True
        )
        reader.start()
        status = ""
        try:
            code: int | None = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self.stop(name, process)
            code = None
            status = "timeout" if step.timeout <= remaining else "deadline"
        except BaseException:
            self.stop(name, process)
            raise
        finally:
            reader.join(timeout=_KILL_WAIT_SECONDS)
        seconds = time.monotonic() - began
        text, _ = tail.text(self.mask)
        if not status:
            engine_failed = code == ENGINE_ERROR_EXIT or (
                code in _RUNTIME_EXITS and _RUNTIME_REFUSED.search(text) is not None
            )
            status = "ok" if code == 0 else "engine" if engine_failed else "exit"
        if code is not None:
            ending = f"exit code {code}"
        elif status == "timeout":
            ending = f"timed out after {step.timeout} s, stopped"
        else:
            ending = "stopped at the run's total timeout"
        self.log_line(f"----- step: {step.id}: {ending} after {seconds:.1f} s -----")
        return _StepRun(status, code, seconds, _last_lines(text, self.mask))

    def stop(self, name: str, process: subprocess.Popen[bytes]) -> None:
        """Kill the step's container (the client alone would leave it running), then reap."""
        assert self.engine is not None
        for _ in range(3):
            self.engine_quietly("kill", name)
            try:
                process.wait(timeout=_KILL_WAIT_SECONDS)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            process.kill()
            process.wait()
        self.engine_quietly("rm", "-f", name)

    def engine_quietly(self, *args: str) -> None:
        assert self.engine is not None
        # Best effort: the container may be gone already, which is what we want anyway.
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(
                [self.engine, *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=_ENGINE_CALL_SECONDS,
                env=self.env,
                check=False,
            )


def _pump(stream: IO[bytes], sinks: tuple[_Capped, ...]) -> None:
    """Copy the engine's output into the sinks as it comes, until the engine closes it."""
    try:
        while chunk := os.read(stream.fileno(), 65536):
            for sink in sinks:
                sink.write(chunk)
    finally:
        stream.close()


def _last_lines(text: str, mask: Callable[[str], str]) -> str:
    """The last few non-blank lines of ``text``, without colour codes, on one line."""
    lines = [line.strip() for line in _ANSI.sub("", mask(text)).splitlines()]
    meaningful = [line for line in lines if line][-_REASON_LINES:]
    joined = " / ".join(meaningful)
    if len(joined) > _REASON_CHARS:
        joined = "..." + joined[-_REASON_CHARS:]
    return joined


def _container_name(run_id: str, step_id: str, taken: set[str]) -> str:
    base = f"{run_id}-{_NAME_UNSAFE.sub('-', step_id)}"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name
