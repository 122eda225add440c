"""Crashes and reruns, end to end: a `gate run` SIGKILLed mid-validation or mid-copy, a target
that is down when a validation has passed. Real docker-registry processes, real podman, the real
CLI as a subprocess, the real SQLite ledger; validations are counted from podman's event log.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from devstack.configs import Validation, local_gate_yaml
from devstack.images import ImageBuilder, tag_digests
from devstack.podman import started_containers
from devstack.registry import RegistryProcess, free_port
from gate.adapters.ledger.sqlite import SqliteLedger
from gate.domain.records import GateRecord, State

ROOT = Path(__file__).resolve().parents[2]
STEP = "check-candidate"
LEASE = 2.0  # seconds: short, so that a take-over shows within a test's time

pytestmark = pytest.mark.usefixtures("podman_env")


def write_config(tmp_path: Path, upstream: str, target: str, *, sleep: float) -> Path:
    """A rule whose validation runs the candidate for ``sleep`` seconds, then passes."""
    folder = tmp_path / "validation"
    folder.mkdir(exist_ok=True)
    (folder / "acr-task.yaml").write_text(
        textwrap.dedent(
            f"""\
            version: v1.1.0
            steps:
              - id: {STEP}
                cmd: "{{{{.Values.IMAGE}}}} sh -c 'sleep {sleep:g}; echo candidate ok'"
            """
        )
    )
    return local_gate_yaml(
        tmp_path,
        upstream,
        target,
        validation=Validation(folder, timeout=60),
        top=[f"lease: {{seconds: {LEASE:g}, heartbeat: 0.4}}"],
    )


def gate(*args: str, config: Path) -> list[str]:
    return [sys.executable, "-m", "gate", *args, "--config", str(config)]


def run_gate(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gate(*args, config=config), capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def records(tmp_path: Path) -> list[GateRecord]:
    path = tmp_path / "data" / "gate.db"
    return SqliteLedger(path).history() if path.exists() else []


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def kill_when(
    image: str, config: Path, ready: Callable[[], bool], what: str
) -> subprocess.Popen[str]:
    """Start `gate run IMAGE`, SIGKILL it once ``ready()``: no handler, no last ledger write."""
    process = subprocess.Popen(
        gate("run", image, "--json", config=config),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        wait_for(what, lambda: ready() or process.poll() is not None)
        assert process.poll() is None, process.communicate()
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process


def validations(since: str) -> int:
    return len(started_containers(since, f"-{STEP}"))


def now() -> str:
    return datetime.now(UTC).isoformat()


def push(images: ImageBuilder, upstream: RegistryProcess, **options: object) -> str:
    return images.image(f"{upstream.host}/node:15-alpine", env={"COLOR": "Green"}, **options)


def test_sigkill_mid_validation_is_taken_over_within_the_lease_and_validated_once_more(
    tmp_path: Path,
    registries: tuple[RegistryProcess, RegistryProcess],
    image_builder: ImageBuilder,
) -> None:
    upstream, target = registries
    digest = push(image_builder, upstream)
    config = write_config(tmp_path, upstream.host, target.host, sleep=3)
    since = now()

    def validating() -> bool:
        recorded = any(r.state is State.VALIDATING and r.run_id for r in records(tmp_path))
        return recorded and validations(since) == 1  # its container runs the candidate

    kill_when(f"{upstream.host}/node:15-alpine", config, validating, "the validation to start")
    killed_at = time.monotonic()
    (stuck,) = records(tmp_path)
    assert stuck.state is State.VALIDATING and stuck.lease_holder

    rerun = run_gate("run", f"{upstream.host}/node:15-alpine", "--json", config=config)
    took = time.monotonic() - killed_at

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    outcome = json.loads(rerun.stdout)
    assert outcome["verdict"] == "promoted" and outcome["record_id"] == stuck.id
    (record,) = records(tmp_path)
    assert record.attempts == 2 and record.lease_holder != stuck.lease_holder
    # no passing verdict existed: exactly one more validation, after the lease lapsed (not 17
    # minutes later): lease + a 3 s validation + promotion, with slack for a loaded machine
    assert validations(since) == 2
    assert took < LEASE + 3 + 10
    assert tag_digests(target.host, "node")["15-alpine"] == digest
    assert (
        record.run_id and tag_digests(target.host, "node")[f"15-alpine-{record.run_id}"] == digest
    )


class SlowProxy:
    """A TCP proxy to ``upstream`` that passes client bytes at ``rate`` bytes a second."""

    def __init__(self, upstream: RegistryProcess, rate: int) -> None:
        self.upstream = upstream
        self.rate = rate
        self.server = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.server.getsockname()[1]}"
        self._stop = threading.Event()

    def __enter__(self) -> SlowProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.server.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            backend = socket.create_connection(("127.0.0.1", self.upstream.port))
            threading.Thread(target=self._pipe, args=(client, backend, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(backend, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, slow: bool) -> None:
        chunk = 16 * 1024
        try:
            while data := source.recv(chunk):
                sink.sendall(data)
                if slow:
                    time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()


@pytest.fixture
def slow_target(
    registries: tuple[RegistryProcess, RegistryProcess],
) -> Iterator[SlowProxy]:
    with SlowProxy(registries[1], rate=2 * 1024 * 1024) as proxy:
        yield proxy


def test_sigkill_mid_copy_is_finished_by_the_rerun_without_validating_again(
    tmp_path: Path,
    registries: tuple[RegistryProcess, RegistryProcess],
    slow_target: SlowProxy,
    image_builder: ImageBuilder,
) -> None:
    upstream, target = registries
    # 8 MB at 2 MB/s: the copy takes about 4 s, time enough to be killed in the middle
    digest = push(image_builder, upstream, extra_layer_bytes=8 * 1024 * 1024)
    config = write_config(tmp_path, upstream.host, slow_target.host, sleep=0)
    since = now()

    def copying() -> bool:
        return any(r.state is State.PROMOTING for r in records(tmp_path))

    kill_when(f"{upstream.host}/node:15-alpine", config, copying, "the promotion to start")
    time.sleep(0.5)  # well into the copy
    (stuck,) = records(tmp_path)
    assert stuck.state is State.PROMOTING and stuck.validated_at is not None
    assert "15-alpine" not in tag_digests(target.host, "node")

    rerun = run_gate("run", f"{upstream.host}/node:15-alpine", "--json", config=config)

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    (record,) = records(tmp_path)
    assert record.id == stuck.id and record.state is State.PROMOTED and record.attempts == 2
    assert validations(since) == 1  # the pass was kept: no second validation
    assert record.run_id == stuck.run_id and record.target_tags == stuck.target_tags
    tags = tag_digests(target.host, "node")
    assert tags["15-alpine"] == digest and tags[stuck.target_tags[0]] == digest


def test_failed_promotion_after_a_pass_is_promoted_by_the_rerun_with_no_second_validation(
    tmp_path: Path, registry: RegistryProcess, image_builder: ImageBuilder
) -> None:
    upstream = registry
    with RegistryProcess(tmp_path / "target", port=free_port()) as target:
        digest = push(image_builder, upstream)
        config = write_config(tmp_path, upstream.host, target.host, sleep=1)
        since = now()

        def validating() -> bool:
            return any(r.state is State.VALIDATING and r.run_id for r in records(tmp_path))

        first = subprocess.Popen(
            gate("run", f"{upstream.host}/node:15-alpine", "--json", config=config),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        wait_for("the validation to start", validating)
        target.stop()  # the target goes down while the candidate is being validated
        out, err = first.communicate(timeout=120)

        assert first.returncode == 3, out + err
        assert json.loads(out)["verdict"] == "validated"
        (kept,) = records(tmp_path)
        assert kept.state is State.VALIDATED and "promotion failed" in kept.reason
        assert kept.validated_at is not None and kept.run_id

        target.start()  # the same port and storage: the target is back
        rerun = run_gate("run", f"{upstream.host}/node:15-alpine", "--json", config=config)

        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        (record,) = records(tmp_path)
        assert record.id == kept.id and record.state is State.PROMOTED
        assert validations(since) == 1
        assert record.run_id == kept.run_id and record.digest == digest
        tags = tag_digests(target.host, "node")
        assert tags["15-alpine"] == digest and tags[f"15-alpine-{kept.run_id}"] == digest


def test_show_says_what_a_partial_promotion_left_and_that_the_next_attempt_finishes_it(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, "127.0.0.1:5001", "127.0.0.1:5002", sleep=0)
    ledger = SqliteLedger(tmp_path / "data" / "gate.db")
    partial = GateRecord(
        id="0123456789abcdef0",
        rule="node",
        source="127.0.0.1:5001/node:15-alpine",
        target="127.0.0.1:5002/node",
        digest="sha256:" + "ab" * 32,
        state=State.VALIDATED,
        run_id="run7",
        target_tags=("15-alpine-run7", "15-alpine"),
        promoted_tags=("15-alpine-run7",),
        reason="promotion failed: the target went away",
    )
    ledger.add(partial)

    shown = run_gate("show", partial.id, config=config)

    assert shown.returncode == 0, shown.stderr
    line = next(line for line in shown.stdout.splitlines() if line.strip().startswith("partial"))
    assert "run-ID tag 15-alpine-run7 written" in line
    assert "stable tag 15-alpine not moved" in line
    assert "next attempt finishes" in line
