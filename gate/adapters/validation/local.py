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
the kernel must have registered in binfmt_misc (``scripts/setup`` does; see docs/guide/configuration.md, "Multi-platform images").

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

This module decides what a run does and what its verdict is; the engine commands themselves
(pull, build, push, run, kill, remove) are in :mod:`gate.adapters.validation.local_engine`.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from gate.adapters.validation.local_engine import (
    ENGINE_ERROR_EXIT,
    Capped,
    EngineRun,
    StepRun,
    container_name,
    host_path,
    inspect_image,
)
from gate.adapters.validation.masking import ANSI, Masker
from gate.adapters.validation.taskfile import (
    BuildStep,
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
from gate.ports import OnStarted, Resume, ValidationRequest

MAX_LOG_BYTES = 1 << 20
"""The log keeps this many bytes, the last ones."""
_QUICK_CALL_SECONDS = 60.0

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
        # passed candidates kept for the downstream runs to come, by digest
        self._handed: dict[str, _Handed] = {}
        self._handed_lock = threading.Lock()

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
        self, request: ValidationRequest, on_started: OnStarted, resume: Resume | None = None
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
            log=Capped(self.max_log_bytes),
            work_dir=self._work_dir,
            request=request,
            task=task,
            run_id=run_id,
            deadline=deadline,
            mask=mask,
            keep_images=self.keep_images,
        )
        outcome, reason = run.execute(folder)
        if run.handed is not None and pinned.digest is not None:
            with self._handed_lock:
                name, image_id = run.handed
                self._handed[pinned.digest] = _Handed(image_id, request.hand_over, [name])
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

    def _engine_call(self, engine: str, *args: str) -> bool:
        """One quick engine command (tag, rmi); whether it succeeded."""
        try:
            done = subprocess.run(
                [engine, *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=_QUICK_CALL_SECONDS,
                env={**os.environ, **self._extra_env},
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0

    def adopt(self, digest: str, name: ImageRef) -> bool:
        """Name a handed-over candidate of ``digest`` ``name`` (the promoted stable reference)
        in the engine's store, so that a downstream run's ``FROM name`` needs no pull.

        Only when the store records that image at ``digest`` (its ``.Digest``: the manifest
        digest it was pulled at, the digest just promoted). The run then checks the name as it
        checks every base (``RepoDigests`` must list ``name``'s repository at the promoted
        digest) before it skips the pull. A name the store held before at another digest is
        moved, as a pull of the promoted tag would move it, and stays after the runs; a name
        made here leaves with the candidate. False when nothing was handed over for
        ``digest``: the run pulls as it always did. Give it back with :meth:`release`.
        """
        engine = self.engine_path()
        with self._handed_lock:
            handed = self._handed.get(digest)
        if handed is None or engine is None:
            return False
        env = {**os.environ, **self._extra_env}
        if inspect_image(engine, env, handed.image_id, "{{.Digest}}") != digest:
            return False
        existed = inspect_image(engine, env, str(name), "{{.Id}}") is not None
        if not self._engine_call(engine, "tag", handed.image_id, str(name)):
            return False
        if not existed:
            with self._handed_lock:
                if str(name) not in handed.names:
                    handed.names.append(str(name))
        return True

    def release(self, digest: str) -> None:
        """A downstream run of ``digest`` is done with the handed-over candidate: after the
        last one, the names it was kept by leave the engine's store (unless ``keep_images``)."""
        with self._handed_lock:
            handed = self._handed.get(digest)
            if handed is None:
                return
            handed.runs -= 1
            if handed.runs > 0:
                return
            del self._handed[digest]
        engine = self.engine_path()
        if engine is None or self.keep_images:
            return
        if handed.names:
            # the stable name first, then the candidate's: one call removes both
            self._engine_call(engine, "rmi", *reversed(handed.names))


@dataclass
class _Handed:
    """A passed candidate kept in the engine's store for the downstream runs still to come."""

    image_id: str
    runs: int
    names: list[str] = field(default_factory=list)


class _Run(EngineRun):
    """One validation run: pulls, steps, the log; ``execute`` returns (outcome, reason)."""

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
            outcome, reason = self.steps(workspace, scratch)
            self.passed = outcome is Outcome.PASSED
            return outcome, reason
        finally:
            self.remove_images()
            shutil.rmtree(scratch, ignore_errors=True)

    def build_bases(self, workspace: Path) -> list[str]:
        """The FROM images of the build steps, pulled up front like the cmd steps' images.

        Pulled here, they get the insecure-registry handling of every pull and are removed
        after the run like the rest; a FROM that cannot be resolved is left to the engine.
        """
        bases: list[str] = []
        for step in self.task.steps:
            if isinstance(step, BuildStep):
                text = host_path(workspace, step.dockerfile).read_text("utf-8", "replace")
                images, complete = base_images(text, step.build_args)
                built = set(self.task.built)
                bases += [image for image in images if image not in built]
                if not complete:
                    self.unresolved.add(step.id)
        return list(dict.fromkeys(image for image in bases if image not in self.task.images))

    def steps(self, workspace: Path, scratch: Path) -> tuple[Outcome, str]:
        names: set[str] = set()
        ignored: list[str] = []
        steps = self.task.steps
        for position, step in enumerate(steps):
            name = container_name(self.run_id, step.id, names)
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

    def describe(self, step: Step, result: StepRun) -> str:
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


def _architecture_of(platform: str) -> str:
    """The architecture part of ``os/arch[/variant]`` ('' for no platform)."""
    parts = platform.split("/")
    return parts[1] if len(parts) >= 2 else ""


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


__all__ = [
    "ENGINE_ERROR_EXIT",
    "MAX_LOG_BYTES",
    "LocalValidator",
    "host_architecture",
    "last_step_output",
]
