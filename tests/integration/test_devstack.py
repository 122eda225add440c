"""The dev stack itself: registries start, images push, podman runs them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from devstack.images import MANIFEST_ACCEPT, ImageBuilder, manifest_digest, push_to_tag
from devstack.registry import RegistryProcess


def test_registry_answers_v2_and_requires_credentials_when_configured(tmp_path: Path) -> None:

    root = tmp_path
    with RegistryProcess(root / "auth", username="ci", password="s3cret pass") as process:
        assert httpx.get(f"{process.url}/v2/").status_code == 401
        assert httpx.get(f"{process.url}/v2/", auth=("ci", "s3cret pass")).status_code == 200
        assert httpx.get(f"{process.url}/v2/", auth=("ci", "wrong")).status_code == 401


def test_built_image_digest_is_the_registry_digest(
    registry: RegistryProcess, image_builder: ImageBuilder
) -> None:
    digest = image_builder.image(f"{registry.host}/team/app:1", env={"A": "1"})
    assert digest == manifest_digest(f"{registry.host}/team/app:1")


def test_built_index_children_are_in_the_registry(
    registry: RegistryProcess, image_builder: ImageBuilder
) -> None:
    digest = image_builder.index(f"{registry.host}/team/multi:1")
    index = httpx.get(
        f"{registry.url}/v2/team/multi/manifests/{digest}", headers={"Accept": MANIFEST_ACCEPT}
    ).json()
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    for child in index["manifests"]:
        head = httpx.head(
            f"{registry.url}/v2/team/multi/manifests/{child['digest']}",
            headers={"Accept": MANIFEST_ACCEPT},
        )
        assert head.status_code == 200


def test_push_to_tag_moves_tag_without_changing_digest(
    registry: RegistryProcess, image_builder: ImageBuilder
) -> None:
    first = image_builder.image(f"{registry.host}/team/app:1", env={"V": "1"})
    second = image_builder.image(f"{registry.host}/team/app:2", env={"V": "2"})
    assert first != second
    push_to_tag(registry.host, "team/app", second, "1")
    assert manifest_digest(f"{registry.host}/team/app:1") == second


@pytest.mark.podman
def test_podman_runs_pushed_image_with_its_env(
    registry: RegistryProcess, image_builder: ImageBuilder, podman_env: dict[str, str]
) -> None:
    digest = image_builder.image(f"{registry.host}/team/app:1", env={"BACKGROUND_COLOR": "blue"})
    image = f"{registry.host}/team/app@{digest}"
    subprocess.run(
        ["podman", "pull", "-q", "--tls-verify=false", image], check=True, capture_output=True
    )
    run = subprocess.run(
        ["podman", "run", "--rm", "--network", "none", image, "sh", "-c", "echo $BACKGROUND_COLOR"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert run.stdout.strip() == "blue"


def _imported_modules(folder: Path) -> dict[Path, set[str]]:
    """Every module each Python file under ``folder`` imports (absolute imports)."""
    import ast

    found: dict[Path, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
        found[path] = names
    return found


ROOT = Path(__file__).resolve().parents[2]


def _offenders(folder: str, *forbidden: str) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {name}"
        for path, names in _imported_modules(ROOT / folder).items()
        for name in sorted(names)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


def test_the_acr_emulator_imports_no_gate_module() -> None:
    # what it fakes is written from the specifications, so a gate bug cannot hide in it
    assert _offenders("devstack/acr", "gate", "tests", "bench") == []


def test_devstack_tests_and_bench_do_not_import_each_other() -> None:
    assert _offenders("devstack", "tests", "bench") == []
    assert _offenders("bench", "tests") == []
    assert _offenders("tests", "bench") == []
