"""The gate end to end: real docker-registry processes, real podman, the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from devstack.configs import Validation, local_gate_yaml
from devstack.images import MANIFEST_ACCEPT, ImageBuilder, tag_digests
from devstack.podman import started_containers
from devstack.registry import RegistryProcess, free_port
from gate.compose import local_gatekeeper
from gate.config.loading import load_config
from gate.domain.records import ValidationResult
from gate.ports import Resume, ValidationRequest
from gate.usecases.gating import gate_image
from gate.usecases.keeper import Gatekeeper

ROOT = Path(__file__).resolve().parents[2]
SEED_VALIDATION = ROOT / "examples" / "seed" / "validation"
SEED_HELLO_WORLD = ROOT / "examples" / "seed" / "hello-world"


def write_config(
    tmp_path: Path,
    upstream: str,
    target: str,
    folder: Path = SEED_VALIDATION,
    downstream: str = "",
    rule: Sequence[str] = (),
) -> Path:
    """Both registries local, the rule validated by ``folder``; ``rule`` adds lines to it."""
    lines = [*([f"downstream: {downstream}"] if downstream else []), *rule]
    validation = Validation(folder, timeout=120)
    return local_gate_yaml(tmp_path, upstream, target, validation=validation, rule=lines)


def validation_starts(since: str) -> list[str]:
    """Names of the validation containers podman started since ``since``."""
    return started_containers(since, "-validate-base-image")


def gate_cli(
    *args: str, config: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gate", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        check=False,
        timeout=300,
    )


def tags_of(registry: RegistryProcess, repo: str = "node") -> dict[str, str]:
    return tag_digests(registry.host, repo)


def push(images: ImageBuilder, upstream: RegistryProcess, color: str) -> str:
    """Upstream pushes node:15-alpine with ``BACKGROUND_COLOR=color``; returns its digest."""
    return images.image(f"{upstream.host}/node:15-alpine", env={"BACKGROUND_COLOR": color})


def has_manifest(registry: RegistryProcess, digest: str, repo: str = "node") -> bool:
    response = httpx.head(
        f"{registry.url}/v2/{repo}/manifests/{digest}", headers={"Accept": MANIFEST_ACCEPT}
    )
    return response.status_code == 200


pytestmark = pytest.mark.usefixtures("podman_env")


def walkthrough(workdir: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "seed" / "walkthrough.py"),
            "--workdir",
            str(workdir),
            *options,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=600,
    )


def test_seed_walkthrough_replays_its_three_acts_and_the_policy_act(tmp_path: Path) -> None:
    result = walkthrough(tmp_path / "w", "--policy")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "[FAIL]" not in result.stdout
    assert result.stdout.count("[ok]") == 12 + 7
    assert result.stdout.count("[ok] policy:") == 7
    assert "superseded: " in result.stdout and "ERROR: Invalid Color: Purple" in result.stdout
    assert "Invalid Color" in result.stdout + result.stderr
    assert "hello-world after Green: hello-world serves background colour: Green" in result.stdout
    # the kept state comes with the settings to use it, gate on PATH among them
    env_file = (tmp_path / "w" / "env.sh").read_text()
    assert f"export GATE_DATA_DIR={tmp_path / 'w' / 'data'}" in env_file
    assert f"export PATH={Path(sys.executable).parent}:$PATH" in env_file
    assert "docker-registry serve" in env_file


def test_walkthrough_refuses_a_non_empty_workdir_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")

    result = walkthrough(tmp_path)

    assert result.returncode != 0
    assert "not empty and was not made by the walkthrough" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_downstream_task_file_rebuilds_the_app_on_each_promotion_only(
    tmp_path: Path,
    registries: tuple[RegistryProcess, RegistryProcess],
    image_builder: ImageBuilder,
) -> None:
    upstream, target = registries
    config = write_config(
        tmp_path, upstream.host, target.host, downstream=f'[{{file: "{SEED_HELLO_WORLD}"}}]'
    )
    push(image_builder, upstream, "Green")
    promoted = gate_cli("run", f"{upstream.host}/node:15-alpine", "--json", config=config)
    push(image_builder, upstream, "Red")
    rejected = gate_cli("run", f"{upstream.host}/node:15-alpine", "--json", config=config)

    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    assert rejected.returncode == 1, rejected.stdout + rejected.stderr
    green, red = (
        json.loads(
            gate_cli("show", json.loads(r.stdout)["record_id"], "--json", config=config).stdout
        )
        for r in (promoted, rejected)
    )
    [run] = green["downstream"]
    assert (run["registry"], run["task"], run["outcome"], run["error"]) == (
        "local",
        str(SEED_HELLO_WORLD),
        "succeeded",
        "",
    )
    assert run["output"] == "hello-world serves background colour: Green"
    assert red["state"] == "rejected" and red["downstream"] == []


def test_failing_downstream_task_file_is_recorded_and_the_promotion_stands(
    tmp_path: Path,
    registries: tuple[RegistryProcess, RegistryProcess],
    image_builder: ImageBuilder,
) -> None:
    upstream, target = registries
    app = tmp_path / "app"
    app.mkdir()
    (app / "acr-task.yaml").write_text(
        "version: v1.1.0\nsteps:\n"
        "  - {id: deploy, cmd: \"{{.Values.BASE_IMAGE_PINNED}} sh -c 'echo no room; exit 4'\"}\n"
    )
    config = write_config(tmp_path, upstream.host, target.host, downstream="[{file: app}]")
    green = push(image_builder, upstream, "Green")

    result = gate_cli("run", f"{upstream.host}/node:15-alpine", "--json", config=config)

    verdict = json.loads(result.stdout)
    record = json.loads(gate_cli("show", verdict["record_id"], "--json", config=config).stdout)
    assert record["state"] == "promoted" and tags_of(target)["15-alpine"] == green
    [run] = record["downstream"]
    assert run["outcome"] == "failed" and run["output"] == "no room"
    assert "step 'deploy' exited with code 4" in run["error"]


def test_cli_gates_green_then_rejects_red_keeping_green(
    tmp_path: Path,
    registries: tuple[RegistryProcess, RegistryProcess],
    image_builder: ImageBuilder,
) -> None:
    upstream, target = registries
    config = write_config(tmp_path, upstream.host, target.host)
    green = push(image_builder, upstream, "Green")

    passed = gate_cli("run", f"{upstream.host}/node:15-alpine", "--json", config=config)
    red = push(image_builder, upstream, "Red")
    rejected = gate_cli("run", f"{upstream.host}/node:15-alpine", "--json", config=config)

    assert passed.returncode == 0, passed.stderr
    verdict = json.loads(passed.stdout)
    assert verdict["verdict"] == "promoted" and verdict["digest"] == green
    unique = f"15-alpine-{verdict['run_id']}"
    assert verdict["target_tags"] == [unique, "15-alpine"]
    assert rejected.returncode == 1, rejected.stderr
    refusal = json.loads(rejected.stdout)
    assert refusal["verdict"] == "rejected" and refusal["digest"] == red
    assert "validate-base-image" in refusal["reason"]
    assert tags_of(target) == {"15-alpine": green, unique: green}
    assert not has_manifest(target, red)

    shown = gate_cli("show", refusal["record_id"], "--json", config=config)
    assert "Invalid Color" in json.loads(shown.stdout)["log"]
    history = [
        json.loads(line)
        for line in gate_cli("history", "--json", config=config).stdout.splitlines()
    ]
    assert [h["state"] for h in history] == ["rejected", "promoted"]


class MovesUpstreamWhileValidating:
    """A Validator (our port) that delegates, after pushing a new image to the upstream tag."""

    def __init__(self, inner: object, push: Callable[[], str]) -> None:
        self.inner = inner
        self.push = push
        self.pushed: str | None = None

    def validate(
        self,
        request: ValidationRequest,
        on_started: Callable[[str], None],
        resume: Resume | None = None,
    ) -> ValidationResult:
        self.pushed = self.push()
        return self.inner.validate(request, on_started, resume)  # type: ignore[attr-defined,no-any-return]


def test_upstream_tag_moving_mid_gate_promotes_the_validated_digest(
    tmp_path: Path,
    registries: tuple[RegistryProcess, RegistryProcess],
    image_builder: ImageBuilder,
) -> None:
    upstream, target = registries
    keeper = local_gatekeeper(load_config(write_config(tmp_path, upstream.host, target.host)))
    green = push(image_builder, upstream, "Green")
    mover = MovesUpstreamWhileValidating(
        keeper.validator,
        lambda: push(image_builder, upstream, "Red"),
    )
    keeper = Gatekeeper(keeper.config, keeper.registry, mover, keeper.ledger, keeper.secrets)

    outcome = gate_image(keeper, f"{upstream.host}/node:15-alpine")

    assert mover.pushed and mover.pushed != green
    assert tags_of(upstream)["15-alpine"] == mover.pushed  # upstream really moved
    assert outcome.verdict == "promoted" and outcome.record.digest == green
    assert tags_of(target)["15-alpine"] == green
    assert not has_manifest(target, mover.pushed)


def test_multi_arch_index_is_promoted_whole(
    tmp_path: Path,
    registries: tuple[RegistryProcess, RegistryProcess],
    image_builder: ImageBuilder,
) -> None:
    upstream, target = registries
    config = write_config(tmp_path, upstream.host, target.host)
    index = image_builder.index(
        f"{upstream.host}/node:15-alpine", env={"BACKGROUND_COLOR": "Green"}
    )
    children = [
        m["digest"]
        for m in httpx.get(
            f"{upstream.url}/v2/node/manifests/{index}", headers={"Accept": MANIFEST_ACCEPT}
        ).json()["manifests"]
    ]

    result = gate_cli("run", f"{upstream.host}/node:15-alpine", "--json", config=config)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["digest"] == index
    assert tags_of(target)["15-alpine"] == index
    assert len(children) >= 2 and all(has_manifest(target, child) for child in children)


def test_ten_concurrent_requests_validate_and_promote_once(
    tmp_path: Path,
    registries: tuple[RegistryProcess, RegistryProcess],
    image_builder: ImageBuilder,
) -> None:
    upstream, target = registries
    config = write_config(tmp_path, upstream.host, target.host)
    digest = push(image_builder, upstream, "Green")
    since = datetime.now(UTC).isoformat()

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(
            pool.map(
                lambda _: gate_cli(
                    "run", f"{upstream.host}/node@{digest}", "--json", config=config
                ),
                range(10),
            )
        )

    assert [r.returncode for r in results] == [0] * 10, [r.stderr for r in results]
    verdicts = [json.loads(r.stdout) for r in results]
    assert {v["record_id"] for v in verdicts} == {verdicts[0]["record_id"]}
    assert sum(not v["duplicate"] for v in verdicts) == 1
    assert validation_starts(since) == [f"{verdicts[0]['run_id']}-validate-base-image"]
    run_tags = [t for t in tags_of(target) if t.startswith("15-alpine-")]
    assert len(run_tags) == 1


def test_validation_that_cannot_run_fails_retryably_and_keeps_stable_tag(
    tmp_path: Path,
    registries: tuple[RegistryProcess, RegistryProcess],
    image_builder: ImageBuilder,
) -> None:
    upstream, target = registries
    config = write_config(tmp_path, upstream.host, target.host)
    green = push(image_builder, upstream, "Green")
    assert gate_cli("run", f"{upstream.host}/node:15-alpine", config=config).returncode == 0
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "acr-task.yaml").write_text(
        "version: v1.1.0\nsteps:\n  - id: scan\n    cmd: 127.0.0.1:9/no/such-scanner:1 --check\n"
    )
    broken = write_config(tmp_path, upstream.host, target.host, folder)
    push(image_builder, upstream, "Blue")

    result = gate_cli("run", f"{upstream.host}/node:15-alpine", "--json", config=broken)

    assert result.returncode == 3, result.stdout + result.stderr
    assert json.loads(result.stdout)["verdict"] == "failed"
    assert tags_of(target)["15-alpine"] == green


def test_rollback_returns_stable_tag_to_the_previous_promotion(
    tmp_path: Path,
    registries: tuple[RegistryProcess, RegistryProcess],
    image_builder: ImageBuilder,
) -> None:
    upstream, target = registries
    config = write_config(tmp_path, upstream.host, target.host)
    orange = push(image_builder, upstream, "Orange")
    assert gate_cli("run", f"{upstream.host}/node:15-alpine", config=config).returncode == 0
    push(image_builder, upstream, "Green")
    assert gate_cli("run", f"{upstream.host}/node:15-alpine", config=config).returncode == 0

    result = gate_cli(
        "rollback", f"{target.host}/node", "--reason", "green breaks the app", config=config
    )

    assert result.returncode == 0, result.stderr
    assert tags_of(target)["15-alpine"] == orange
    history = [
        json.loads(line)
        for line in gate_cli("history", "--json", config=config).stdout.splitlines()
    ]
    assert history[0]["state"] == "rolled_back" and "green breaks the app" in history[0]["reason"]


@pytest.mark.parametrize(
    ("image", "code", "message"),
    [
        ("Node:15-alpine", 2, "invalid"),
        ("127.0.0.1:5001/node:bad tag", 2, "invalid tag"),
        ("docker.io/library/python:3.12", 2, "no rule"),
    ],
)
def test_bad_requests_exit_2_with_a_message(
    tmp_path: Path, image: str, code: int, message: str
) -> None:
    config = write_config(tmp_path, "127.0.0.1:5001", "127.0.0.1:5002")

    result = gate_cli("run", image, config=config)

    assert result.returncode == code
    assert message in result.stderr.lower()
    assert gate_cli("history", "--json", config=config).stdout == ""  # nothing recorded


def test_broken_config_exits_2_naming_the_file(tmp_path: Path) -> None:
    config = tmp_path / "gate.yaml"
    config.write_text("rules:\n  - name: x\n    source: node\n")

    result = gate_cli("run", "node:15-alpine", config=config)

    assert result.returncode == 2
    assert str(config) in result.stderr and "rule 'x'" in result.stderr


def test_unreachable_registry_exits_3(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    config = write_config(tmp_path, dead, "127.0.0.1:5002")

    result = gate_cli("run", f"{dead}/node:15-alpine", config=config)

    assert result.returncode == 3
    assert dead in result.stderr


def test_watch_once_gates_a_new_upstream_digest_then_leaves_it_alone(
    tmp_path: Path,
    registries: tuple[RegistryProcess, RegistryProcess],
    image_builder: ImageBuilder,
) -> None:
    upstream, target = registries
    config = write_config(tmp_path, upstream.host, target.host)
    green = push(image_builder, upstream, "Green")

    first = gate_cli("watch", "--once", config=config)
    second = gate_cli("watch", "--once", config=config)

    assert first.returncode == 0, first.stderr
    assert "PROMOTED" in first.stdout and tags_of(target)["15-alpine"] == green
    assert (
        second.returncode == 0
        and "unchanged" in second.stdout
        and "already promoted" in second.stdout
    )
    history = gate_cli("history", "--json", config=config).stdout.splitlines()
    assert [json.loads(line)["trigger"] for line in history] == ["poll"]
