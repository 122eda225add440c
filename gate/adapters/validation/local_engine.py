"""The container-engine side of a local validation run: every podman or docker command it runs.

:class:`EngineRun` pulls, builds, pushes into the run's scratch store, runs step containers,
kills what outlives its timeout and removes what the run put into the engine's store; each
command is logged, bounded by the step's and the run's timeouts, and classified (a step that
failed, or the engine that failed: see :mod:`gate.adapters.validation.local`).
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from gate.adapters.validation.masking import ANSI, Masker
from gate.adapters.validation.taskfile import (
    WORKSPACE,
    AcrTask,
    BuildStep,
    CmdStep,
    PushStep,
    Step,
)
from gate.domain.records import Outcome
from gate.domain.ref import ImageRef
from gate.errors import GateError
from gate.ports import ValidationRequest

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


class Capped:
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
class StepRun:
    """How one step ended: ``status`` is ok, exit, timeout, engine (error) or deadline."""

    status: str
    code: int | None
    seconds: float
    tail: str


class EngineRun:
    """The engine calls of one validation run, with its log, mask and deadline.

    The run itself (what is pulled, in which order the steps go, the verdict) is the subclass
    in :mod:`gate.adapters.validation.local`.
    """

    def __init__(
        self,
        *,
        engine: str | None,
        wanted: str | None,
        env: dict[str, str],
        network: str,
        insecure: frozenset[str],
        log: Capped,
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
        # set once the steps passed: a candidate handed over (request.hand_over) then stays
        self.passed = False
        # (the name the candidate was pulled by, its image id) when it stays for a downstream run
        self.handed: tuple[str, str] | None = None

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

    @property
    def podman(self) -> bool:
        return self.engine is not None and Path(self.engine).name.startswith("podman")

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

    def inspect(self, image: str, template: str) -> str | None:
        """``<engine> image inspect --format TEMPLATE IMAGE``, None when it is not there."""
        assert self.engine is not None
        return inspect_image(self.engine, self.env, image, template)

    def is_candidate(self, image: str) -> bool:
        """Whether ``image`` names the request's own image (repository and digest)."""
        ref, candidate = ImageRef.parse(image), self.request.image
        return candidate.digest is not None and (ref.registry, ref.repository, ref.digest) == (
            candidate.registry,
            candidate.repository,
            candidate.digest,
        )

    def present(self, image: str) -> str:
        """The digest at which the engine's store holds ``image`` already ('' if it does not).

        Only a name that cannot be stale counts: one pinned by digest, or a tag of the
        request's own repository whose image the store records at the request's digest (its
        ``RepoDigests`` name that repository at that digest). Any other name is pulled, so a
        tag left in the store from an earlier digest never stands in for the one asked for.
        """
        ref, request = ImageRef.parse(image), self.request.image
        wanted = ref.digest
        if wanted is None and (ref.registry, ref.repository) == (
            request.registry,
            request.repository,
        ):
            wanted = request.digest
        if wanted is None:
            return ""
        listed = self.inspect(image, "{{json .RepoDigests}}")
        try:
            names = json.loads(listed or "[]")
        except ValueError:
            return ""
        for name in names if isinstance(names, list) else []:
            try:
                held = ImageRef.parse(str(name))
            except GateError:
                continue
            if (held.registry, held.repository, held.digest) == (
                ref.registry,
                ref.repository,
                wanted,
            ):
                return wanted
        return ""

    def remove_images(self) -> None:
        """Remove what the run pulled or built (unless keep_images); never what was there.

        A passed candidate the request hands over stays for the downstream runs (its name and
        image id in :attr:`handed`): :class:`~gate.adapters.validation.local.LocalValidator`
        removes it after the last of them.
        """
        if not self.created or self.engine is None:
            return
        if self.keep_images:
            self.log_line(f"kept in the engine's store (keep_images): {', '.join(self.created)}")
            return
        removing = list(self.created)
        if self.passed and self.request.hand_over > 0:
            for image in [i for i in removing if self.is_candidate(i)]:
                image_id = self.inspect(image, "{{.Id}}")
                if image_id and self.handed is None:
                    self.handed = (image, image_id)
                    removing.remove(image)
                    self.log_line(f"kept in the engine's store for the downstream run: {image}")
        if removing:
            # one call, newest first (built images before the bases they were built from):
            # podman and docker remove every name they can and report the others
            self.engine_quietly("rmi", *reversed(removing))
            self.log_line(f"removed from the engine's store: {', '.join(removing)}")

    def pull(self, image: str) -> tuple[Outcome, str] | None:
        assert self.engine is not None
        self.log_line(f"----- pull: {image} -----")
        held = self.present(image)
        if held:
            # what the store holds at this digest is what a pull would fetch: no download
            self.log_line(f"in the engine's store at {held} already: not pulled")
            return None
        if not self.exists(image):
            self.created.append(image)
        args = [self.engine, "pull", "-q", *self.platform_args]
        if self.podman and ImageRef.parse(image).registry in self.insecure:
            args.append("--tls-verify=false")
        remaining = self.remaining()
        if remaining <= 0:
            return self.total_timeout(f"pulling {image}")
        began = time.monotonic()
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
            detail = last_lines(done.stderr.decode("utf-8", "replace") or "", self.mask)
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
        self.log_line(f"pulled {image} in {time.monotonic() - began:.1f} s")
        return None

    def build(self, step: BuildStep, workspace: Path, scratch: Path) -> StepRun:
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
        args += ["-f", str(host_path(workspace, step.dockerfile))]
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
        args.append(str(host_path(workspace, step.context)))
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
            result = StepRun("engine", result.code, result.seconds, result.tail)
        return result

    def build_step_failed(self, result: StepRun) -> bool:
        """True when a failed build failed in the image (a RUN instruction), not in the engine.

        podman build exits with the RUN instruction's own code, and 125 for its own errors
        (a missing COPY source, an unknown base image: seen with podman 4.3); docker's classic
        builder exits 1 and says "returned a non-zero code" for a failed RUN.
        """
        if self.podman:
            return result.code != ENGINE_ERROR_EXIT
        return "returned a non-zero code" in result.tail

    def push(self, step: PushStep, scratch: Path) -> StepRun:
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
                    result = StepRun("engine", result.code, result.seconds, result.tail)
                return result
            self.log_line(f"pushed {image} to the scratch store")
        seconds = time.monotonic() - began
        self.log_line(f"----- step: {step.id}: exit code 0 after {seconds:.1f} s -----")
        return StepRun("ok", 0, seconds, "")

    def step(self, step: CmdStep, name: str, workspace: Path, env_file: Path | None) -> StepRun:
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
    ) -> StepRun:
        """Run one engine command of ``step`` within its timeout; log and classify its end.

        ``name`` is the container to kill on a timeout (None: kill the engine process itself).
        """
        remaining = self.remaining()
        if remaining <= 0:
            return StepRun("deadline", None, 0.0, "")
        limit = min(float(step.timeout), remaining)
        tail = Capped(_TAIL_BYTES)
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
            return StepRun("engine", None, 0.0, str(exc))
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
        return StepRun(status, code, seconds, last_lines(text, self.mask))

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


def inspect_image(engine: str, env: dict[str, str], image: str, template: str) -> str | None:
    """``<engine> image inspect --format TEMPLATE IMAGE`` (podman-image-inspect(1), docker
    image inspect: Go templates over the image's fields), None when it is not there."""
    try:
        done = subprocess.run(
            [engine, "image", "inspect", "--format", template, image],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_ENGINE_CALL_SECONDS,
            env=env,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.decode("utf-8", "replace").strip()


def _pump(stream: IO[bytes], sinks: tuple[Capped, ...]) -> None:
    """Copy the engine's output into the sinks as it comes, until the engine closes it."""
    try:
        while chunk := os.read(stream.fileno(), 65536):
            for sink in sinks:
                sink.write(chunk)
    finally:
        stream.close()


def last_lines(text: str, mask: Callable[[str], str]) -> str:
    """The last few non-blank lines of ``text``, without colour codes, on one line."""
    lines = [line.strip() for line in ANSI.sub("", mask(text)).splitlines()]
    meaningful = [line for line in lines if line][-_REASON_LINES:]
    joined = " / ".join(meaningful)
    if len(joined) > _REASON_CHARS:
        joined = "..." + joined[-_REASON_CHARS:]
    return joined


def host_path(workspace: Path, path: str) -> Path:
    """Where a /workspace path of the task file is in the run's copy of the folder."""
    return workspace / posixpath.relpath(path, WORKSPACE)


def _layout_name(image: str) -> str:
    """An OCI layout reference for ``image`` (letters, digits and ``._-`` only)."""
    return _NAME_UNSAFE.sub("_", image.replace(":", "_").replace("/", "_"))


def container_name(run_id: str, step_id: str, taken: set[str]) -> str:
    """``<run-id>-<step>``, made safe and unique among ``taken`` (which it joins)."""
    base = f"{run_id}-{_NAME_UNSAFE.sub('-', step_id)}"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name
