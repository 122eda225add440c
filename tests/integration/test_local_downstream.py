"""The local downstream runner's edges (its runs end to end are in test_end_to_end.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gate.adapters.downstream.local import LocalTaskDownstream
from gate.adapters.validation.local import LocalValidator, last_step_output
from gate.config.model import DownstreamTask
from gate.domain.ref import ImageRef
from gate.errors import ConfigError, UnsupportedTask

PROMOTED = ImageRef.parse("127.0.0.1:5002/node:15-alpine@sha256:" + "ab" * 32)


def test_an_acr_task_entry_is_refused_by_the_local_runner(tmp_path: Path) -> None:
    runner = LocalTaskDownstream(LocalValidator(str(tmp_path / "no-such-engine")))
    with pytest.raises(ConfigError, match="'hello-world' is an ACR task"):
        runner.start(DownstreamTask(task="hello-world", registry="base"), PROMOTED)


def test_a_task_file_the_local_runner_cannot_run_is_refused_before_anything_runs(
    tmp_path: Path,
) -> None:
    (tmp_path / "acr-task.yaml").write_text(
        'version: v1.1.0\nsteps:\n  - {id: deploy, cmd: "az container create", detach: true}\n'
    )
    task = DownstreamTask(task="app", registry="local", file=tmp_path / "acr-task.yaml")
    runner = LocalTaskDownstream(LocalValidator(str(tmp_path / "no-such-engine")))
    with pytest.raises(UnsupportedTask, match="step 'deploy': property 'detach'"):
        runner.start(task, PROMOTED)


def test_last_step_output_is_the_last_line_the_last_step_printed() -> None:
    log = (
        "Run ID: r1: acr-task.yaml (version v1.1.0), 2 step(s), engine podman, network none\n"
        "----- step: build (image a/b:1) -----\n"
        "build: -f /workspace/Dockerfile; tags: a/b:1\n"
        "STEP 1/1: FROM x\n"
        "----- step: build: exit code 0 after 0.5 s -----\n"
        "----- step: run (image a/b:1) -----\n"
        "entrypoint: (image's); args: (image's)\n"
        "\x1b[32mserves Green\x1b[0m\n"
        "\n"
        "----- step: run: exit code 0 after 0.2 s -----\n"
        "removed from the engine's store: a/b:1\n"
        "Run ID: r1 was successful after 1.0 s: all 2 steps passed\n"
    )

    assert last_step_output(log) == "serves Green"
    assert last_step_output("Run ID: r1: nothing ran\n") == ""
