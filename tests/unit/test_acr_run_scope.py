"""Which registries a validation task run carries, and whether it logs in to the runner."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gate.adapters.validation.acr_run_scope import (
    LOGIN_DEFAULT,
    LOGIN_NONE,
    run_registries,
    runner_login_mode,
)

RUNNER = "gaterunner.azurecr.io"
IMAGE = "upstream.example.io/base/node@sha256:" + "a" * 64
CONFIGURED: dict[str, tuple[str, str] | None] = {
    "upstream.example.io": ("https://kv/secrets/u", "https://kv/secrets/p"),
    "registry.example.io": ("https://kv/secrets/ru", "https://kv/secrets/rp"),
    "baseimages.azurecr.io": None,
}


def folder_with(tmp_path: Path, task: str, **files: str) -> Path:
    folder = tmp_path / "validation"
    folder.mkdir()
    (folder / "acr-task.yaml").write_text(textwrap.dedent(task))
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


CMD_ONLY = """\
    version: v1.1.0
    steps:
      - cmd: "{{.Values.IMAGE}} ./test.sh"
    """


def test_a_run_carries_only_its_candidates_registry(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, CMD_ONLY)
    chosen = run_registries(
        CONFIGURED, candidate_host="Upstream.Example.io", folder=folder, values={"IMAGE": IMAGE}
    )
    assert chosen == {"upstream.example.io": CONFIGURED["upstream.example.io"]}


def test_a_registry_the_rule_names_is_carried_too(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, CMD_ONLY, Dockerfile="FROM baseimages.azurecr.io/node:20\n")
    chosen = run_registries(
        CONFIGURED,
        candidate_host="upstream.example.io",
        folder=folder,
        values={"TOOLS": "registry.example.io/tools/check:1"},
    )
    assert set(chosen) == set(CONFIGURED)


@pytest.mark.parametrize(
    "value", ["example.io/x", "myregistry.example.io/x", "registry.example.io.evil/x"]
)
def test_a_name_that_only_contains_a_registry_does_not_carry_it(tmp_path: Path, value: str) -> None:
    folder = folder_with(tmp_path, CMD_ONLY)
    chosen = run_registries(
        CONFIGURED, candidate_host="upstream.example.io", folder=folder, values={"X": value}
    )
    assert set(chosen) == {"upstream.example.io"}


def test_no_configured_registry_carries_nothing(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, CMD_ONLY)
    assert run_registries({}, candidate_host="upstream.example.io", folder=folder, values={}) == {}


def login(tmp_path: Path, task: str, server: str | None = RUNNER, **files: str) -> str:
    folder = folder_with(tmp_path, task, **files)
    return runner_login_mode(folder, "acr-task.yaml", {"IMAGE": IMAGE}, server)


def test_a_task_file_that_never_uses_the_runner_registry_gets_no_login(tmp_path: Path) -> None:
    assert login(tmp_path, CMD_ONLY) == LOGIN_NONE


def test_building_and_running_an_image_tagged_in_the_runner_needs_no_login(
    tmp_path: Path,
) -> None:
    task = """\
        version: v1.1.0
        steps:
          - build: -t $Registry/checked:$ID --build-arg BASE={{.Values.IMAGE}} .
          - cmd: $Registry/checked:$ID true
        """
    assert login(tmp_path, task, Dockerfile="ARG BASE\nFROM $BASE\n") == LOGIN_NONE


@pytest.mark.parametrize("server", [RUNNER, None])
def test_a_push_to_the_runner_registry_keeps_the_login(tmp_path: Path, server: str | None) -> None:
    task = """\
        version: v1.1.0
        steps:
          - build: -t {{.Run.Registry}}/app:1 .
          - push: ["{{.Run.Registry}}/app:1"]
        """
    assert login(tmp_path, task, server, Dockerfile="FROM busybox\n") == LOGIN_DEFAULT


def test_a_push_elsewhere_needs_no_runner_login(tmp_path: Path) -> None:
    task = """\
        version: v1.1.0
        steps:
          - build: -t registry.example.io/app:1 .
          - push: ["registry.example.io/app:1"]
        """
    assert login(tmp_path, task, Dockerfile="FROM busybox\n") == LOGIN_NONE


@pytest.mark.parametrize(
    ("task", "dockerfile"),
    [
        # a tool image kept in the runner registry, named literally
        (f"steps:\n  - cmd: {RUNNER}/tools/check:1 true\n", ""),
        # a build FROM an image of the runner registry
        ("steps:\n  - build: -t app:1 .\n", f"FROM {RUNNER}/base/node:20\n"),
        # a FROM that cannot be resolved before the run
        ("steps:\n  - build: -t app:1 .\n", "ARG BASE\nFROM $BASE\n"),
        # a feature the local parser does not model
        ("version: v1.1.0\nalias:\n  values: {x: y}\nsteps:\n  - cmd: busybox true\n", ""),
        # no task file to read
        (None, ""),
    ],
)
def test_a_task_file_that_may_use_the_runner_registry_keeps_the_login(
    tmp_path: Path, task: str | None, dockerfile: str
) -> None:
    files = {"Dockerfile": dockerfile} if dockerfile else {}
    if task is None:
        folder = tmp_path / "empty"
        folder.mkdir()
        assert runner_login_mode(folder, "acr-task.yaml", {}, RUNNER) == LOGIN_DEFAULT
        return
    assert login(tmp_path, task, **files) == LOGIN_DEFAULT
