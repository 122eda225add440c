"""The emulated ACR agent's reading of task files (devstack.acr.runner), without podman."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime

import pytest

from devstack.acr.runner import RunVariables, TaskError, parse_task, render

RUN = RunVariables(
    run_id="ca7",
    registry="myacr.azurecr.io",
    date=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    architecture="arm64",
)


def test_values_run_variables_and_aliases_are_rendered_after_comments_go() -> None:
    text = textwrap.dedent(
        """\
        version: v1.1.0
        # {{.Values.NOT_RENDERED}} $ID
        steps:
          - cmd: "{{ .Values.IMAGE }} echo $ID {{.Run.RegistryName}} $Date $Architecture $$HOME $HOME"
        """
    )
    rendered = render(text, {"IMAGE": "a.io/b@sha256:" + "1" * 64}, RUN)
    assert "NOT_RENDERED" not in rendered
    assert f"a.io/b@sha256:{'1' * 64} echo ca7 myacr 20260102-030405z arm64 $HOME $HOME" in rendered


def test_aliases_wait_for_version_1_1_0_and_missing_values_render_empty() -> None:
    text = 'version: v1.0.0\nsteps:\n  - cmd: "busybox echo $ID [{{.Values.NONE}}]"\n'
    assert 'busybox echo $ID []"' in render(text, {}, RUN)


def test_steps_are_ordered_by_when_with_their_defaults_applied() -> None:
    task = parse_task(
        textwrap.dedent(
            """\
            version: v1.1.0
            stepTimeout: 90
            workingDirectory: src
            env: ["A=task,B=task"]
            steps:
              - id: test
                cmd: busybox sh -c 'echo ok'
                when: ["build"]
                env: ["B=step"]
                timeout: 30
              - id: build
                build: -t {{.Run.Registry}}/app:{{.Run.ID}} -f Dockerfile .
                when: ["-"]
              - cmd: "{{.Run.Registry}}/app:{{.Run.ID}}"
                disableWorkingDirectoryOverride: true
                ignoreErrors: true
            """
        ),
        {},
        RUN,
    )
    assert [s.id for s in task.steps] == ["build", "test", "acb_step_2"]
    build, test, last = task.steps
    assert build.images == ("myacr.azurecr.io/app:ca7",) and build.timeout == 90
    assert build.working_directory == "/workspace/src"
    assert (test.image, test.words, test.timeout) == ("busybox", ("sh", "-c", "echo ok"), 30)
    assert test.env == ("B=step", "A=task")
    assert last.after == ("build",) and last.working_directory is None and last.ignore_errors
    assert task.images == ("busybox",)  # the built image is not pulled


@pytest.mark.parametrize(
    ("steps", "says"),
    [
        ("  - id: a\n    cmd: x\n    when: [b]\n", "unknown step 'b'"),
        ("  - id: a\n    cmd: x\n    build: .\n", "exactly one of cmd, build, push"),
        ("  - id: a\n    cmd: x\n  - id: a\n    cmd: y\n", "unique"),
    ],
)
def test_task_files_acr_would_refuse_are_refused(steps: str, says: str) -> None:
    with pytest.raises(TaskError, match=says):
        parse_task("version: v1.1.0\nsteps:\n" + steps, {}, RUN)
