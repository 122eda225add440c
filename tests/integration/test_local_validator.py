"""The local validator against a real registry and real podman containers.

The candidate images are busybox images built and pushed to a docker-registry process; the task
files are ACR task files, the seed's own among them (a build step FROM the candidate, then a cmd
step running what it built).
"""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devstack.images import build_image
from devstack.registry import RegistryProcess, free_port
from gate.adapters.validation.local import LocalValidator
from gate.domain.records import Outcome, ValidationResult
from gate.domain.ref import ImageRef
from gate.errors import ConfigError, InvalidReference, UnsupportedTask
from gate.ports import ValidationRequest

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed" / "validation"


RUN_REGISTRY = "127.0.0.1:9"
"""{{.Run.Registry}} of the runs here: a registry nothing listens on, so nothing can reach it."""


@dataclass(frozen=True)
class Images:
    """Pushed candidates: ``green`` and ``red`` (BACKGROUND_COLOR), one registry, repo node."""

    registry: str
    green: ImageRef
    red: ImageRef


def seed_values(image: ImageRef) -> dict[str, str]:
    """The values the gate gives every validation run that the seed's task file uses."""
    return {"REGISTRY_FROM_URL": f"{image.registry}/", "SOURCE_DIGEST": str(image.digest)}


def store() -> set[str]:
    """Every image (id and names) in podman's store (the test session's own)."""
    listing = subprocess.run(
        ["podman", "images", "-a", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(listing.stdout.split())


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    """One registry with the walkthrough's two candidates, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("validator-images")
    with RegistryProcess(root / "registry") as registry:
        # the seed's Dockerfile builds FROM <registry>/node:15-alpine@<digest>
        pushed = {
            color: build_image(
                root, f"{registry.host}/node:{color.lower()}", env={"BACKGROUND_COLOR": color}
            )
            for color in ("Green", "Red")
        }
        yield Images(
            registry=registry.host,
            green=ImageRef.parse(f"{registry.host}/node@{pushed['Green']}"),
            red=ImageRef.parse(f"{registry.host}/node@{pushed['Red']}"),
        )


@pytest.fixture
def validator(podman_env: dict[str, str], images: Images) -> LocalValidator:
    return LocalValidator("podman", insecure_registries=frozenset({images.registry}))


def folder_with(tmp_path: Path, task: str, **files: str) -> Path:
    folder = tmp_path / "validation"
    folder.mkdir()
    (folder / "acr-task.yaml").write_text(textwrap.dedent(task))
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return folder


def run(
    validator: LocalValidator,
    image: ImageRef,
    folder: Path,
    started: list[str] | None = None,
    **options: object,
) -> ValidationResult:
    request = ValidationRequest(
        image=image,
        folder=folder,
        task_file="acr-task.yaml",
        **options,  # type: ignore[arg-type]
    )
    calls: list[str] = [] if started is None else started
    return validator.validate(request, calls.append)


def containers_named(run_id: str) -> str:
    listing = subprocess.run(
        ["podman", "ps", "-a", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return "\n".join(name for name in listing.stdout.split() if run_id in name)


@pytest.mark.podman
def test_seed_validation_builds_from_the_green_candidate_runs_it_and_passes(
    validator: LocalValidator, images: Images
) -> None:
    before = store()
    started: list[str] = []

    result = run(
        validator,
        images.green,
        SEED,
        started,
        values=seed_values(images.green),
        run_registry=RUN_REGISTRY,
    )

    assert result.outcome is Outcome.PASSED, result.log
    assert result.reason == "all 2 steps passed"
    assert started == [result.run_id]
    assert f"STEP 1/4: FROM {images.registry}/node:15-alpine@{images.green.digest}" in result.log
    assert f"----- step: validate-base-image (image {RUN_REGISTRY}/node-import:test" in result.log
    assert "Validation Complete - No Known Errors" in result.log
    assert store() == before  # the candidate and the test image are gone again


@pytest.mark.podman
def test_seed_validation_rejects_the_red_image_naming_step_code_and_message(
    validator: LocalValidator, images: Images
) -> None:
    result = run(
        validator, images.red, SEED, values=seed_values(images.red), run_registry=RUN_REGISTRY
    )
    assert result.outcome is Outcome.REJECTED, result.log
    assert result.reason == (
        "step 'validate-base-image' exited with code 1: ERROR: Invalid Color: Red"
    )
    assert "\x1b[31mERROR: Invalid Color:\x1b[0m Red" in result.log


@pytest.mark.podman
def test_seed_folder_is_not_modified_by_steps_that_write_to_the_workspace(
    validator: LocalValidator, images: Images, tmp_path: Path
) -> None:
    folder = folder_with(
        tmp_path,
        """\
        version: v1.1.0
        steps:
          - id: write
            cmd: "{{.Values.IMAGE}} sh -c 'echo changed > data.txt; echo new > new.txt'"
          - id: read
            cmd: "{{.Values.IMAGE}} sh -c 'echo read: $(cat data.txt) $(cat new.txt)'"
        """,
        **{"data.txt": "original\n"},
    )
    result = run(validator, images.green, folder)
    assert result.outcome is Outcome.PASSED, result.log
    assert "read: changed new" in result.log
    assert (folder / "data.txt").read_text() == "original\n"
    assert not (folder / "new.txt").exists()


@pytest.mark.podman
def test_ignore_errors_lets_the_run_pass_and_continue(
    validator: LocalValidator, images: Images, tmp_path: Path
) -> None:
    folder = folder_with(
        tmp_path,
        """\
        version: v1.1.0
        steps:
          - id: flaky
            cmd: "{{.Values.IMAGE}} sh -c 'echo flaky ran; exit 7'"
            ignoreErrors: true
          - id: after
            cmd: "{{.Values.IMAGE}} echo after ran"
        """,
    )
    result = run(validator, images.green, folder)
    assert result.outcome is Outcome.PASSED, result.log
    assert "flaky" in result.reason
    assert "flaky ran" in result.log
    assert "step 'flaky' exited with code 7: flaky ran; ignored (ignoreErrors)" in result.log
    assert "after ran" in result.log


@pytest.mark.podman
def test_steps_run_in_when_order_not_file_order(
    validator: LocalValidator, images: Images, tmp_path: Path
) -> None:
    folder = folder_with(
        tmp_path,
        """\
        version: v1.1.0
        steps:
          - id: last
            cmd: "{{.Values.IMAGE}} sh -c 'echo last >> order.txt; echo order: $(cat order.txt)'"
            when: [second]
          - id: second
            cmd: "{{.Values.IMAGE}} sh -c 'echo second >> order.txt'"
            when: [first]
          - id: first
            cmd: "{{.Values.IMAGE}} sh -c 'echo first >> order.txt'"
            when: ["-"]
        """,
    )
    result = run(validator, images.green, folder)
    assert result.outcome is Outcome.PASSED, result.log
    assert "order: first second last" in result.log
    headers = [line for line in result.log.splitlines() if line.startswith("----- step: ")]
    assert [h.split()[2] for h in headers if "(image" in h] == ["first", "second", "last"]


@pytest.mark.podman
def test_a_failing_step_rejects_and_the_steps_after_it_do_not_run(
    validator: LocalValidator, images: Images, tmp_path: Path
) -> None:
    folder = folder_with(
        tmp_path,
        """\
        version: v1.1.0
        steps:
          - id: test
            cmd: "{{.Values.IMAGE}} sh -c 'echo one; echo; echo two; echo three; exit 4'"
          - id: publish
            cmd: "{{.Values.IMAGE}} echo publish ran"
        """,
    )
    result = run(validator, images.green, folder)
    assert result.outcome is Outcome.REJECTED
    assert result.reason == "step 'test' exited with code 4: one / two / three"
    assert "publish ran" not in result.log
    assert "step publish: skipped, the run stopped at step test" in result.log


@pytest.mark.podman
@pytest.mark.parametrize(
    ("command", "outcome", "says"),
    [
        # the OCI runtime could not start the step's process: no verdict on the image
        ("nosuchcommand", Outcome.FAILED, "executable file not found"),
        ("/etc/passwd", Outcome.FAILED, "permission denied"),
        # the step's own process exited 126/127: a verdict
        ("sh -c 'exit 127'", Outcome.REJECTED, "exited with code 127"),
        ("sh -c 'exit 126'", Outcome.REJECTED, "exited with code 126"),
    ],
)
def test_a_step_the_runtime_cannot_start_fails_the_run_but_its_own_exit_code_rejects(
    validator: LocalValidator,
    images: Images,
    tmp_path: Path,
    command: str,
    outcome: Outcome,
    says: str,
) -> None:
    folder = folder_with(
        tmp_path,
        f"""\
        version: v1.1.0
        steps:
          - id: test
            cmd: "{{{{.Values.IMAGE}}}} {command}"
        """,
    )

    result = run(validator, images.green, folder)

    assert result.outcome is outcome, result.reason
    assert says in result.reason
    if outcome is Outcome.FAILED:
        assert "not judged" in result.reason


@pytest.mark.podman
def test_env_entry_point_and_working_directories_are_honoured(
    validator: LocalValidator, images: Images, tmp_path: Path
) -> None:
    folder = folder_with(
        tmp_path,
        """\
        version: v1.1.0
        env: ["SHARED=task", "OVERRIDDEN=task"]
        workingDirectory: sub
        steps:
          - id: show
            cmd: >-
              {{.Values.IMAGE}}
              -c 'echo env: $SHARED $OVERRIDDEN $COLOR; echo pwd: $(pwd); cat here.txt'
            entryPoint: sh
            env: ["OVERRIDDEN=step", "COLOR=$BACKGROUND_COLOR"]
          - id: absolute
            cmd: "{{.Values.IMAGE}} sh -c 'echo pwd: $(pwd)'"
            workingDirectory: /tmp
          - id: image-own
            cmd: "{{.Values.IMAGE}} sh -c 'echo pwd: $(pwd)'"
            disableWorkingDirectoryOverride: true
        """,
        **{"sub/here.txt": "in the sub folder\n"},
    )
    result = run(validator, images.green, folder)
    assert result.outcome is Outcome.PASSED, result.log
    # env entries are not expanded (ACR passes them literally); the image's env is kept
    assert "env: task step $BACKGROUND_COLOR" in result.log
    assert "pwd: /workspace/sub" in result.log
    assert "in the sub folder" in result.log
    assert "pwd: /tmp" in result.log
    assert "pwd: /\n" in result.log


@pytest.mark.podman
def test_run_variables_reach_the_steps(
    validator: LocalValidator, images: Images, tmp_path: Path
) -> None:
    folder = folder_with(
        tmp_path,
        """\
        version: v1.1.0
        steps:
          - cmd: >-
              {{.Values.IMAGE}} echo id={{.Run.ID}} alias=$ID
              registry=$Registry name=$RegistryName
        """,
    )
    result = run(validator, images.green, folder, run_registry="gate.azurecr.io")
    assert result.outcome is Outcome.PASSED, result.log
    expected = f"id={result.run_id} alias={result.run_id} registry=gate.azurecr.io name=gate"
    assert expected in result.log


@pytest.mark.podman
def test_step_timeout_rejects_and_removes_the_container(
    validator: LocalValidator, images: Images, tmp_path: Path
) -> None:
    folder = folder_with(
        tmp_path,
        """\
        version: v1.1.0
        steps:
          - id: slow
            cmd: "{{.Values.IMAGE}} sh -c 'echo sleeping; sleep 120'"
            timeout: 2
        """,
    )
    result = run(validator, images.green, folder)
    assert result.outcome is Outcome.REJECTED, result.log
    assert result.reason.startswith("step 'slow' timed out after 2 s")
    assert "sleeping" in result.log
    assert containers_named(result.run_id) == ""


@pytest.mark.podman
def test_total_timeout_fails_the_run_instead_of_rejecting_the_image(
    validator: LocalValidator, images: Images, tmp_path: Path
) -> None:
    folder = folder_with(
        tmp_path,
        """\
        version: v1.1.0
        steps:
          - id: endless
            cmd: "{{.Values.IMAGE}} sleep 120"
        """,
    )
    result = run(validator, images.green, folder, timeout_seconds=3.0)
    assert result.outcome is Outcome.FAILED, result.log
    assert "total timeout of 3 s" in result.reason
    assert containers_named(result.run_id) == ""


@pytest.mark.podman
def test_unreachable_registry_fails_the_run_never_rejects(
    validator: LocalValidator, images: Images
) -> None:
    nowhere = ImageRef.parse(f"127.0.0.1:{free_port()}/node@{images.green.digest}")
    insecure = LocalValidator("podman", insecure_registries=frozenset({nowhere.registry}))
    result = run(insecure, nowhere, SEED, values=seed_values(nowhere), run_registry=RUN_REGISTRY)
    assert result.outcome is Outcome.FAILED
    assert result.reason.startswith(
        f"could not pull the candidate image {nowhere.registry}/node:15-alpine@"
    )
    assert "step: validate-base-image" not in result.log


@pytest.mark.podman
def test_missing_digest_fails_the_run_never_rejects(
    validator: LocalValidator, images: Images
) -> None:
    missing = images.green.with_digest("sha256:" + "0" * 64)
    result = run(validator, missing, SEED, values=seed_values(missing), run_registry=RUN_REGISTRY)
    assert result.outcome is Outcome.FAILED
    assert "could not pull the candidate image" in result.reason


@pytest.mark.podman
def test_secret_values_are_masked_in_log_and_reason(
    validator: LocalValidator, images: Images, tmp_path: Path
) -> None:
    secret = "s3cr3t-Value-42"
    folder = folder_with(
        tmp_path,
        """\
        version: v1.1.0
        steps:
          - id: leak
            cmd: "{{.Values.IMAGE}} sh -c 'echo token is $TOKEN; echo $TOKEN >&2; exit 3'"
            env: ["TOKEN={{.Values.TOKEN}}"]
        """,
    )
    result = run(
        validator,
        images.green,
        folder,
        values={"TOKEN": secret},
        secret_values=frozenset({"TOKEN"}),
    )
    assert result.outcome is Outcome.REJECTED
    assert secret not in result.log
    assert secret not in result.reason
    assert "token is ***" in result.log
    assert result.reason == "step 'leak' exited with code 3: token is *** / ***"


@pytest.mark.podman
def test_log_keeps_its_last_bytes_and_says_it_was_cut(
    podman_env: dict[str, str], images: Images, tmp_path: Path
) -> None:
    folder = folder_with(
        tmp_path,
        """\
        version: v1.1.0
        steps:
          - id: chatty
            cmd: "{{.Values.IMAGE}} sh -c 'seq 1 20000; echo the end'"
        """,
    )
    small = LocalValidator(
        "podman", insecure_registries=frozenset({images.registry}), max_log_bytes=4096
    )
    result = run(small, images.green, folder)
    assert result.outcome is Outcome.PASSED
    first, rest = result.log.split("\n", 1)
    assert first.startswith("[log cut: the first ")
    assert first.endswith("bytes were dropped to keep the log within 4096 bytes]")
    assert len(rest.encode()) <= 4096
    assert "\n20000\nthe end\n" in rest
    assert "\n1\n" not in rest
    assert f"Run ID: {result.run_id} was successful" in rest.splitlines()[-1]


def test_missing_engine_fails_the_run(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, "steps:\n  - cmd: '{{.Values.IMAGE}} true'\n")
    image = ImageRef.parse("127.0.0.1:5000/seed/app@sha256:" + "1" * 64)
    started: list[str] = []
    result = run(LocalValidator(str(tmp_path / "no-such-engine")), image, folder, started)
    assert result.outcome is Outcome.FAILED
    assert started == [result.run_id]
    assert "no container engine" in result.reason
    assert "no-such-engine" in result.reason


def test_engine_is_found_on_path_podman_first(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("docker", "podman"):
        tool = bin_dir / name
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755)
    validator = LocalValidator(extra_env={"PATH": str(bin_dir)})
    assert validator.engine_path() == str(bin_dir / "podman")
    (bin_dir / "podman").unlink()
    assert validator.engine_path() == str(bin_dir / "docker")


@pytest.mark.parametrize(
    ("task", "error", "says"),
    [
        (
            'steps:\n  - {id: make, build: "--secret id=x -t a/b:1 ."}\n',
            UnsupportedTask,
            r"step 'make'.*build flag '--secret'",
        ),
        (
            'steps:\n  - {id: make, build: "-t a/b:1 -f Dockerfile.test ."}\n',
            ConfigError,
            r"step 'make'.*Dockerfile.test does not exist",
        ),
        (
            'steps:\n  - {id: publish, push: ["docker.io/library/node:15"]}\n',
            UnsupportedTask,
            r"step 'publish' pushes .* no earlier build step",
        ),
    ],
)
def test_task_the_local_runner_cannot_run_is_refused_before_anything_runs(
    tmp_path: Path, task: str, error: type[Exception], says: str
) -> None:
    folder = folder_with(tmp_path, "version: v1.1.0\n" + task)
    image = ImageRef.parse("127.0.0.1:5000/seed/app@sha256:" + "1" * 64)
    started: list[str] = []
    # an engine that does not exist: reaching it would fail differently
    with pytest.raises(error, match=says):
        run(LocalValidator(str(tmp_path / "no-such-engine")), image, folder, started)
    assert started == []


def test_image_without_digest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidReference, match="no digest"):
        run(LocalValidator(), ImageRef.parse("127.0.0.1:5000/seed/app:1"), SEED)


BUILD_CMD_PUSH = """\
    version: v1.1.0
    steps:
      - id: make
        build: >
          --build-arg BASE={{.Values.IMAGE}} -t {{.Run.Registry}}/app:{{.Run.ID}}
          -t {{.Run.Registry}}/app:latest -f docker/Dockerfile .
      - id: test
        cmd: "{{.Run.Registry}}/app:{{.Run.ID}}"
      - id: ship
        push: ["{{.Run.Registry}}/app:{{.Run.ID}}", "{{.Run.Registry}}/app:latest"]
    """
APP_DOCKERFILE = """\
ARG BASE
FROM ${BASE}
COPY hello.txt /hello.txt
CMD ["sh", "-c", "cat /hello.txt; echo colour=$BACKGROUND_COLOR"]
"""


def repositories(registry: RegistryProcess) -> list[str]:
    answer = httpx.get(f"{registry.url}/v2/_catalog")
    answer.raise_for_status()
    return list(answer.json()["repositories"] or [])


@pytest.mark.podman
def test_build_cmd_push_runs_the_built_image_and_pushes_only_to_the_scratch_store(
    validator: LocalValidator, images: Images, tmp_path: Path, registry: RegistryProcess
) -> None:
    folder = folder_with(
        tmp_path,
        BUILD_CMD_PUSH,
        **{"docker/Dockerfile": APP_DOCKERFILE, "hello.txt": "built in this run\n"},
    )
    before = store()

    # {{.Run.Registry}} is a real, running registry: the push must still not reach it
    result = run(validator, images.green, folder, run_registry=registry.host)

    assert result.outcome is Outcome.PASSED, result.log
    assert "built in this run\ncolour=Green" in result.log  # the next step ran the build
    built = f"{registry.host}/app:{result.run_id}"
    assert f"pushed {built} to the scratch store" in result.log
    assert f"pushed {registry.host}/app:latest to the scratch store" in result.log
    assert repositories(registry) == []
    assert store() == before
    assert f"removed from the engine's store: {images.green}" in result.log


@pytest.mark.podman
def test_keep_images_leaves_the_pulled_candidate_and_the_built_image(
    podman_env: dict[str, str], images: Images, tmp_path: Path
) -> None:
    folder = folder_with(
        tmp_path,
        BUILD_CMD_PUSH,
        **{"docker/Dockerfile": APP_DOCKERFILE, "hello.txt": "kept\n"},
    )
    keeper = LocalValidator(
        "podman", insecure_registries=frozenset({images.registry}), keep_images=True
    )
    before = store()

    result = run(keeper, images.red, folder, run_registry=RUN_REGISTRY)

    try:
        assert result.outcome is Outcome.PASSED, result.log
        added = store() - before
        assert f"{RUN_REGISTRY}/app:{result.run_id}" in added
        assert f"{RUN_REGISTRY}/app:latest" in added
        assert f"{images.registry}/node:<none>" in added  # the candidate, pulled by digest
    finally:
        subprocess.run(
            ["podman", "rmi", "-f", f"{RUN_REGISTRY}/app:latest", str(images.red)],
            capture_output=True,
            check=False,
        )


@pytest.mark.podman
def test_an_image_in_the_store_before_the_run_is_left_there(
    validator: LocalValidator, images: Images
) -> None:
    subprocess.run(
        ["podman", "pull", "-q", "--tls-verify=false", str(images.green)],
        capture_output=True,
        check=True,
    )
    try:
        result = run(
            validator,
            images.green,
            SEED,
            values=seed_values(images.green),
            run_registry=RUN_REGISTRY,
        )

        assert result.outcome is Outcome.PASSED, result.log
        assert subprocess.run(["podman", "image", "exists", str(images.green)]).returncode == 0
        assert f"removed from the engine's store: {RUN_REGISTRY}/node-import:test" in result.log
    finally:
        subprocess.run(["podman", "rmi", str(images.green)], capture_output=True, check=False)


@pytest.mark.podman
@pytest.mark.parametrize(
    ("instruction", "outcome", "says"),
    [
        ("RUN exit 3", Outcome.REJECTED, "step 'make' exited with code 3"),
        ("COPY nothere /x", Outcome.FAILED, "could not run step 'make' (exit code 125)"),
    ],
)
def test_a_failing_run_instruction_rejects_but_a_build_the_engine_cannot_do_fails(
    validator: LocalValidator,
    images: Images,
    tmp_path: Path,
    instruction: str,
    outcome: Outcome,
    says: str,
) -> None:
    folder = folder_with(
        tmp_path,
        """\
        steps:
          - id: make
            build: --build-arg BASE={{.Values.IMAGE}} -t 127.0.0.1:9/app:1 .
          - id: never
            cmd: 127.0.0.1:9/app:1
        """,
        Dockerfile=f"ARG BASE\nFROM ${{BASE}}\n{instruction}\n",
    )
    before = store()

    result = run(validator, images.green, folder)

    assert result.outcome is outcome, result.log
    assert says in result.reason
    assert "step never: skipped" in result.log
    assert store() == before
