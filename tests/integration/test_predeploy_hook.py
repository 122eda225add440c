"""The azd predeploy check (scripts/hooks/check-config), run for real with the gate CLI on a
missing, an invalid and a valid gate.yaml in a project folder laid out as azure.yaml deploys it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HOOK = ROOT / "scripts" / "hooks" / "check-config"
GATE_CLI = Path(sys.executable).parent / "gate"

# what the deployment's outputs put in the azd environment (infra/main.bicep), for the
# walkthrough's gate.yaml
SUB = "00000000-0000-0000-0000-000000000000"
GROUPS = f"/subscriptions/{SUB}/resourceGroups"
DEPLOYED = {
    "GATE_SUBSCRIPTION_ID": SUB,
    "GATE_REGISTRY_NAME": "baseartifactsabc",
    "GATE_REGISTRY_RESOURCE_GROUP": "rg-dev-walkthrough",
    "GATE_REGISTRY_LOGIN_SERVER": "baseartifactsabc.azurecr.io",
    "GATE_RUNNER_REGISTRY_NAME": "gaterunnerabc",
    "GATE_RUNNER_RESOURCE_GROUP": "rg-dev",
    "GATE_RUNNER_IDENTITY_RESOURCE_ID": f"{GROUPS}/rg-dev/providers/"
    "Microsoft.ManagedIdentity/userAssignedIdentities/id-runner-abc",
    "GATE_RUNNER_IDENTITY_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
    "GATE_KEY_VAULT_URL": "https://kv-abc.vault.azure.net",
    "GATE_TABLE_ENDPOINT": "https://stabc.table.core.windows.net",
    "GATE_UPSTREAM_LOGIN_SERVER": "publicabc.azurecr.io",
    "GATE_UPSTREAM_REGISTRY_ID": f"{GROUPS}/rg-dev-walkthrough/providers/"
    "Microsoft.ContainerRegistry/registries/publicabc",
    "GATE_DOWNSTREAM_REGISTRY": "contosoabc",
    "GATE_DOWNSTREAM_RESOURCE_GROUP": "rg-dev-walkthrough",
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder with the hook where azure.yaml runs it from, and the .funcignore."""
    (tmp_path / "scripts" / "hooks").mkdir(parents=True)
    shutil.copy(HOOK, tmp_path / "scripts" / "hooks" / "check-config")
    shutil.copy(ROOT / ".funcignore", tmp_path / ".funcignore")
    return tmp_path


def with_walkthrough_config(folder: Path) -> None:
    shutil.copy(ROOT / "infra" / "walkthrough" / "gate.yaml", folder / "gate.yaml")
    shutil.copytree(ROOT / "examples" / "seed" / "validation", folder / "validation")


def run_hook(project: Path, **env: str) -> subprocess.CompletedProcess[str]:
    # from another folder, as azd runs a hook from its script's folder
    return subprocess.run(
        [str(project / "scripts" / "hooks" / "check-config")],
        cwd=project / "scripts",
        env={"PATH": os.environ["PATH"], "GATE_CLI": str(GATE_CLI), **DEPLOYED, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_missing_config_stops_the_deployment_and_says_how_to_write_one(project: Path) -> None:
    result = run_hook(project)
    assert result.returncode != 0
    assert "no gate configuration at 'gate.yaml'" in result.stderr
    assert "cp infra/walkthrough/gate.yaml gate.yaml" in result.stderr
    assert "answers 500 to every event" in result.stderr
    assert not (project / "gate.yaml").exists()  # it writes nothing


def test_an_invalid_config_stops_the_deployment_with_the_checks_own_error(project: Path) -> None:
    with_walkthrough_config(project)
    # a setting the deployment did not set: the check names it and how to fix it
    env = {k: v for k, v in DEPLOYED.items() if k != "GATE_UPSTREAM_LOGIN_SERVER"}
    result = subprocess.run(
        [str(project / "scripts" / "hooks" / "check-config")],
        cwd=project,
        env={"PATH": os.environ["PATH"], "GATE_CLI": str(GATE_CLI), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "GATE_UPSTREAM_LOGIN_SERVER is not set" in result.stderr
    assert "'gate.yaml' does not pass 'gate config check'" in result.stderr


def test_a_config_that_is_not_gate_yaml_at_all_is_refused(project: Path) -> None:
    (project / "gate.yaml").write_text("rules: [this is not a rule]\n", encoding="utf-8")
    result = run_hook(project)
    assert result.returncode != 0
    assert "rules[0]: expected a mapping" in result.stderr
    assert "'gate.yaml' does not pass 'gate config check'" in result.stderr


def test_a_valid_config_lets_the_deployment_go_on(project: Path) -> None:
    with_walkthrough_config(project)
    result = run_hook(project)
    assert result.returncode == 0, result.stderr
    assert "check-config: 'gate.yaml' is valid and will be deployed" in result.stdout
    # the check's own summary of what it loaded
    assert "1 rule(s), Azure" in result.stdout


def test_a_config_the_package_leaves_out_is_refused_though_it_is_valid(project: Path) -> None:
    (project / "infra").mkdir()
    with_walkthrough_config(project / "infra")
    result = run_hook(project, GATE_CONFIG="infra/gate.yaml")
    assert result.returncode != 0
    assert ".funcignore leaves 'infra/gate.yaml' out of the package (pattern 'infra')" in (
        result.stderr
    )
    # and with the same file where it is deployed, it passes
    with_walkthrough_config(project)
    assert run_hook(project, GATE_CONFIG="gate.yaml").returncode == 0


@pytest.mark.parametrize("path", ["/home/site/wwwroot/gate.yaml", "../gate.yaml", "a/../../g.yaml"])
def test_a_config_path_outside_the_app_folder_is_refused(project: Path, path: str) -> None:
    with_walkthrough_config(project)
    result = run_hook(project, GATE_CONFIG=path)
    assert result.returncode != 0
    assert f"GATE_CONFIG is '{path}'" in result.stderr


def test_without_the_gate_cli_the_deployment_is_stopped_not_waved_through(project: Path) -> None:
    with_walkthrough_config(project)
    bare = project / "bin"
    bare.mkdir()
    # only what the hook itself uses, no gate
    for tool in ("sh", "dirname"):
        found = shutil.which(tool)
        assert found is not None
        (bare / tool).symlink_to(found)
    result = subprocess.run(
        [str(project / "scripts" / "hooks" / "check-config")],
        cwd=project,
        env={"PATH": str(bare), **DEPLOYED},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "the gate CLI is not installed" in result.stderr
    assert "scripts/setup" in result.stderr


def test_azure_yaml_runs_the_check_before_every_deploy_on_both_shells() -> None:
    hooks = yaml.safe_load((ROOT / "azure.yaml").read_text(encoding="utf-8"))["hooks"]
    predeploy = hooks["predeploy"]
    assert predeploy["posix"] == {"shell": "sh", "run": "scripts/hooks/check-config"}
    assert predeploy["windows"] == {"shell": "pwsh", "run": "./scripts/hooks/check-config.ps1"}
    assert (ROOT / "scripts" / "hooks" / "check-config.ps1").is_file()
    # a failing hook stops azd only when errors are not ignored
    assert "continueOnError" not in predeploy["posix"] and "continueOnError" not in predeploy
    assert os.access(HOOK, os.X_OK)
