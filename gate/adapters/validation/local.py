"""The local validator: runs a rule's ACR task file with podman (or docker) on this machine.

The same ``acr-task.yaml`` an ACR task run executes in Azure (``az acr run -f acr-task.yaml
--set IMAGE=... <folder>``) runs here, step by step, against the digest-pinned candidate image:

1. a run ID is made (:mod:`gate.domain.runid`), the file is rendered and checked whole
   (:mod:`gate.adapters.validation.taskfile`), and the Dockerfiles and contexts of its build steps must exist;
   anything the local runner cannot do is refused before anything runs;
2. ``on_started(run_id)`` is called;
3. every image a cmd step runs (unless a build step of the file makes it) and every ``FROM``
   image of a build step is pulled (``--tls-verify=false`` for the configured insecure
   registries);
4. the steps run one at a time in dependency order. A cmd step runs as
   ``<engine> run --rm --pull=never --name <run-id>-<step> --network <network>
   -v <copy of the folder>:/workspace:Z -w <workdir> --env-file <env> [--entrypoint E] IMAGE
   ARGS...``. The folder is copied first, as ACR uploads it: steps may write to /workspace
   (later steps see it) without touching the rule's folder, and two runs of one rule (two
   digests at once) never see each other's files. A build step runs ``<engine> build`` on that
   copy and tags the image in the engine's own store, where later cmd steps run it by name. A
   push step pushes into the run's scratch store (an OCI layout in the run's temporary folder),
   never to a registry: promotion is the gate's job;
5. what the run pulled or built is removed from the engine's store (unless ``keep_images``);
   an image that was there before the run stays.

A request with a ``platform`` (``os/arch[/variant]``) runs as on an agent of that platform: every
pull and every cmd step gets ``--platform`` (podman-run(1), podman-pull(1)), and so does a build
step without a platform of its own; ``{{.Run.Architecture}}`` is that architecture. On a host of
another architecture the engine runs the image's binaries through QEMU user emulation, which
the kernel must have registered in binfmt_misc (``scripts/setup`` does; see the README).

Outcomes: every step passing (or failing with ``ignoreErrors``) is PASSED. A step that exits
non-zero or outlives its timeout is REJECTED (the image failed its validation) and the run stops
there, as in ACR Tasks; for a build step that means a failing ``RUN`` instruction, while a build
the engine itself cannot do (podman's exit 125: a missing ``COPY`` source, say) is FAILED, as is
a push the engine cannot write. Anything that keeps us from telling is FAILED: no engine, a pull that
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
import posixpath
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

from gate.adapters.validation.masking import ANSI, Masker
from gate.adapters.validation.taskfile import (
    WORKSPACE,
    AcrTask,
    BuildStep,
    CmdStep,
    PushStep,
    RunContext,
    Step,
    base_images,
    check_sources,
    load_task,
)
from gate.domain.records import Outcome, ValidationResult
from gate.domain.ref import ImageRef
from gate.domain.runid import DEFAULT_PREFIX, new_run_id
from gate.errors import ConfigError
from gate.ports import Resume, ValidationRequest

MAX_LOG_BYTES = 1 << 20
"""The log keeps this many bytes, the last ones."""

ENGINE_ERROR_EXIT = 125
"""The exit code podman and docker use when they, not the container, failed."""

_RUNTIME_EXITS = frozenset({126, 127})
# podman's own error line when the OCI runtime (runc, crun) could not start the step's process
_RUNTIME_REFUSED = re.compile(r"^Error: .*\bOCI\b", re.MULTILINE)

_TAIL_BYTES = 16 << 10
_REASON_LINES = 3
_REASON_CHARS = 400
_KILL_WAIT_SECONDS = 10.0
_ENGINE_CALL_SECONDS = 60.0
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]")
_STEP_START = re.compile(r"^----- step: .+ \(image .*\) -----$")
_STEP_END = re.compile(r"^----- step: .+: .+ after [\d.]+ s -----$")
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
    system temporary folder). ``keep_images`` leaves the images a run pulled or built in the
    engine's store (for debugging); by default they are removed when the run ends.
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
        keep_images: bool = False,
    ) -> None:
        self._engine = engine
        self.keep_images = keep_images
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
            os=request.platform.partition("/")[0] or "linux",
            architecture=_architecture_of(request.platform) or host_architecture(),
        )
        folder = Path(request.folder)
        if not folder.is_dir():
            raise ConfigError(
                f"validation folder {folder} does not exist; create it, or fix the rule's "
                "validation folder"
            )
        task = load_task(folder / request.task_file, context)
        check_sources(task, folder)
        mask = Masker(values[name] for name in request.secret_values if name in values)
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
            keep_images=self.keep_images,
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
        mask: Masker,
        keep_images: bool = False,
    ) -> None:
        self.engine = engine
        self.keep_images = keep_images
        # images this run put into the engine's store (pulled or built): removed at the end
        self.created: list[str] = []
        # build steps with a FROM the run could not resolve: the engine pulls those itself
        self.unresolved: set[str] = set()
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

    @property
    def platform_args(self) -> list[str]:
        """``--platform os/arch[/variant]`` when the request names a platform (podman and docker
        take the same flag on pull, run and build)."""
        return ["--platform", self.request.platform] if self.request.platform else []

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
            + (f", platform {self.request.platform}" if self.request.platform else "")
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
            for image in (*task.images, *self.build_bases(workspace)):
                failure = self.pull(image)
                if failure is not None:
                    return failure
            return self.steps(workspace, scratch)
        finally:
            self.remove_images()
            shutil.rmtree(scratch, ignore_errors=True)

    @property
    def podman(self) -> bool:
        return self.engine is not None and Path(self.engine).name.startswith("podman")

    def build_bases(self, workspace: Path) -> list[str]:
        """The FROM images of the build steps, pulled up front like the cmd steps' images.

        Pulled here, they get the insecure-registry handling of every pull and are removed
        after the run like the rest; a FROM that cannot be resolved is left to the engine.
        """
        bases: list[str] = []
        for step in self.task.steps:
            if isinstance(step, BuildStep):
                text = _host_path(workspace, step.dockerfile).read_text("utf-8", "replace")
                images, complete = base_images(text, step.build_args)
                built = set(self.task.built)
                bases += [image for image in images if image not in built]
                if not complete:
                    self.unresolved.add(step.id)
        return list(dict.fromkeys(image for image in bases if image not in self.task.images))

    def exists(self, image: str) -> bool:
        assert self.engine is not None
        args = ["image", "exists", image] if self.podman else ["image", "inspect", image]
        try:
            done = subprocess.run(
                [self.engine, *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=_ENGINE_CALL_SECONDS,
                env=self.env,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return True  # unknown: treat it as the user's, never remove it
        return done.returncode == 0

    def remove_images(self) -> None:
        """Remove what the run pulled or built (unless keep_images); never what was there."""
        if not self.created or self.engine is None:
            return
        if self.keep_images:
            self.log_line(f"kept in the engine's store (keep_images): {', '.join(self.created)}")
            return
        # newest first: built images before the bases they were built from
        for image in reversed(self.created):
            self.engine_quietly("rmi", image)
        self.log_line(f"removed from the engine's store: {', '.join(self.created)}")

    def pull(self, image: str) -> tuple[Outcome, str] | None:
        assert self.engine is not None
        self.log_line(f"----- pull: {image} -----")
        if not self.exists(image):
            self.created.append(image)
        args = [self.engine, "pull", "-q", *self.platform_args]
        if self.podman and ImageRef.parse(image).registry in self.insecure:
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
            ref, candidate = ImageRef.parse(image), self.request.image
            same = (ref.registry, ref.repository, ref.digest) == (
                candidate.registry,
                candidate.repository,
                candidate.digest,
            )
            role = "the candidate image" if same else "image"
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
            if isinstance(step, BuildStep):
                result = self.build(step, workspace, scratch)
            elif isinstance(step, PushStep):
                result = self.push(step, scratch)
            else:
                env_file = None
                if step.env:
                    env_file = scratch / f"step-{step.index}.env"
                    env_file.write_text(
                        "".join(f"{entry}\n" for entry in step.env), encoding="utf-8"
                    )
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

    def describe(self, step: Step, result: _StepRun) -> str:
        detail = f": {result.tail}" if result.tail else ""
        if result.status == "timeout":
            return f"step '{step.id}' timed out after {step.timeout} s{detail}"
        if result.status == "engine":
            return (
                f"the container engine could not run step '{step.id}' (exit code "
                f"{result.code}), so the image was not judged{detail}"
            )
        return f"step '{step.id}' exited with code {result.code}{detail}"

    def skip(self, rest: Iterable[Step], failed: str) -> None:
        for step in rest:
            self.log_line(f"step {step.id}: skipped, the run stopped at step {failed}")

    def build(self, step: BuildStep, workspace: Path, scratch: Path) -> _StepRun:
        """``<engine> build`` of the step, tagged in the engine's store for the later steps.

        The engine's own store serves best: a later cmd step runs the image by the name it was
        tagged with (``--pull=never``) with no registry in between, and the run removes the
        tags when it ends. RUN instructions get the validator's network.
        """
        assert self.engine is not None
        args = [self.engine, "build", "--network", self.network]
        if self.podman:
            # one image, no intermediate layer images left behind; bases were pulled already
            args.append("--layers=false")
            if step.id not in self.unresolved:
                args.append("--pull=never")
        args += ["-f", str(_host_path(workspace, step.dockerfile))]
        for tag in step.tags:
            args += ["-t", tag]
        for build_arg in step.build_args:
            args += ["--build-arg", build_arg]
        if step.target:
            args += ["--target", step.target]
        if step.no_cache:
            args.append("--no-cache")
        if step.platform:
            args += ["--platform", step.platform]
        else:
            args += self.platform_args
        args.append(str(_host_path(workspace, step.context)))
        self.log_line(f"----- step: {step.id} (image {step.image or 'untagged'}) -----")
        shown = [
            f"build: -f {step.dockerfile}",
            f"tags: {', '.join(step.tags) or '-'}",
            f"build args: {', '.join(a.partition('=')[0] for a in step.build_args) or '-'}",
            f"context: {step.context}",
            f"timeout: {step.timeout} s",
        ]
        self.log_line("; ".join(shown))
        for tag in step.tags:
            # a name that was in the store before the run is the user's: it is left there
            if tag not in self.created and not self.exists(tag):
                self.created.append(tag)
        result = self.process(step, args, name=None)
        if result.status == "exit" and not self.build_step_failed(result):
            result = _StepRun("engine", result.code, result.seconds, result.tail)
        return result

    def build_step_failed(self, result: _StepRun) -> bool:
        """True when a failed build failed in the image (a RUN instruction), not in the engine.

        podman build exits with the RUN instruction's own code, and 125 for its own errors
        (a missing COPY source, an unknown base image: seen with podman 4.3); docker's classic
        builder exits 1 and says "returned a non-zero code" for a failed RUN.
        """
        if self.podman:
            return result.code != ENGINE_ERROR_EXIT
        return "returned a non-zero code" in result.tail

    def push(self, step: PushStep, scratch: Path) -> _StepRun:
        """Push into the run's scratch store (an OCI layout removed with the run), never out.

        Promotion is the gate's job: an image a validation pushes can never reach a registry,
        let alone the gated target.
        """
        assert self.engine is not None
        self.log_line(f"----- step: {step.id} (image {step.image}) -----")
        self.log_line(
            f"push: {', '.join(step.images)} to the run's scratch store (not to a registry); "
            f"timeout: {step.timeout} s"
        )
        store = scratch / "pushed"
        store.mkdir(exist_ok=True)
        began = time.monotonic()
        for n, image in enumerate(step.images):
            if self.podman:
                args = [self.engine, "push", "-q", image, f"oci:{store}:{_layout_name(image)}"]
            else:
                args = [self.engine, "save", "-o", str(store / f"{step.index}-{n}.tar"), image]
            result = self.process(step, args, name=None, header=False)
            if result.status != "ok":
                if result.status == "exit":
                    result = _StepRun("engine", result.code, result.seconds, result.tail)
                return result
            self.log_line(f"pushed {image} to the scratch store")
        seconds = time.monotonic() - began
        self.log_line(f"----- step: {step.id}: exit code 0 after {seconds:.1f} s -----")
        return _StepRun("ok", 0, seconds, "")

    def step(self, step: CmdStep, name: str, workspace: Path, env_file: Path | None) -> _StepRun:
        assert self.engine is not None
        args = [self.engine, "run", "--rm", "--pull=never", "--name", name, *self.platform_args]
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
        return self.process(step, args, name=name)

    def process(
        self, step: Step, args: list[str], *, name: str | None, header: bool = True
    ) -> _StepRun:
        """Run one engine command of ``step`` within its timeout; log and classify its end.

        ``name`` is the container to kill on a timeout (None: kill the engine process itself).
        """
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
        if header or status != "ok":
            self.log_line(f"----- step: {step.id}: {ending} after {seconds:.1f} s -----")
        return _StepRun(status, code, seconds, _last_lines(text, self.mask))

    def stop(self, name: str | None, process: subprocess.Popen[bytes]) -> None:
        """Kill the step's container (the client alone would leave it running), then reap.

        Without a container name (a build or a push), the engine process itself is stopped.
        """
        assert self.engine is not None
        if name is None:
            process.terminate()
            try:
                process.wait(timeout=_KILL_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            return
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


def _architecture_of(platform: str) -> str:
    """The architecture part of ``os/arch[/variant]`` ('' for no platform)."""
    parts = platform.split("/")
    return parts[1] if len(parts) >= 2 else ""


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
    lines = [line.strip() for line in ANSI.sub("", mask(text)).splitlines()]
    meaningful = [line for line in lines if line][-_REASON_LINES:]
    joined = " / ".join(meaningful)
    if len(joined) > _REASON_CHARS:
        joined = "..." + joined[-_REASON_CHARS:]
    return joined


def _host_path(workspace: Path, path: str) -> Path:
    """Where a /workspace path of the task file is in the run's copy of the folder."""
    return workspace / posixpath.relpath(path, WORKSPACE)


def _layout_name(image: str) -> str:
    """An OCI layout reference for ``image`` (letters, digits and ``._-`` only)."""
    return _NAME_UNSAFE.sub("_", image.replace(":", "_").replace("/", "_"))


def last_step_output(log: str) -> str:
    """The last non-blank line the last step of a run printed (read from a run's log)."""
    lines = log.splitlines()
    ends = [i for i, line in enumerate(lines) if _STEP_END.match(line)]
    if not ends:
        return ""
    end = ends[-1]
    start = max((i for i, line in enumerate(lines[:end]) if _STEP_START.match(line)), default=0)
    # the line after the header is the step's settings, not its output
    output = [line.strip() for line in lines[start + 2 : end] if line.strip()]
    return ANSI.sub("", output[-1]) if output else ""


def _container_name(run_id: str, step_id: str, taken: set[str]) -> str:
    base = f"{run_id}-{_NAME_UNSAFE.sub('-', step_id)}"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name
