"""Refused credentials are found before a validation runs: the registry port's push check.

A real docker-registry with htpasswd auth as the target, real podman for the validation, the
real CLI; the Azure adapters through the real SDK clients against the ACR emulator.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import stamina
from azure.core.exceptions import ClientAuthenticationError

from devstack.acr import AcrEmulator
from devstack.acr.core import TestCredential, TokenBook
from devstack.configs import GateYaml, Registry, Rule, Validation, empty_task_gate_yaml
from devstack.images import ImageBuilder
from devstack.podman import started_containers
from devstack.registry import RegistryProcess
from gate.adapters.ledger.sqlite import SqliteLedger
from gate.adapters.registry.acr_import import AcrImportRegistry
from gate.adapters.registry.oci import HostSettings, OciRegistry
from gate.adapters.secrets.local import LocalSecrets
from gate.config.loading import load_config
from gate.domain.records import State
from gate.domain.ref import ImageRef
from gate.errors import AuthenticationError, ConfigError, RegistryUnavailable
from gate.usecases.gating import gate_image
from gate.usecases.keeper import Gatekeeper
from tests.e2e.test_end_to_end import SEED_VALIDATION, gate_cli
from tests.emulated import oci_hosts
from tests.fakes import FakeRegistry, FakeSecrets, FakeValidator
from tests.integration.test_azure_promote_modes import _push_registry

USER, PASSWORD = "gate", "right-password"


@pytest.fixture
def locked_target(tmp_path: Path) -> Any:
    """A target registry that takes pushes only from USER with PASSWORD."""
    with RegistryProcess(tmp_path / "target", username=USER, password=PASSWORD) as process:
        yield process


def _tags(registry: RegistryProcess, repo: str = "node") -> list[str]:
    answer = httpx.get(f"{registry.url}/v2/{repo}/tags/list", auth=(USER, PASSWORD))
    if answer.status_code == 404:
        return []
    answer.raise_for_status()
    return list(answer.json().get("tags") or [])


def _uploads(registry: RegistryProcess, repo: str = "node") -> list[Path]:
    """Open upload sessions of ``repo``: distribution keeps each one's bytes in ``data``.

    (Its filesystem layout; a cancelled session loses ``data`` and ``startedat``, while
    distribution 2.8 leaves an empty ``hashstates`` folder behind.)
    """
    folder = registry.root / "data" / "docker" / "registry" / "v2" / "repositories" / repo
    return sorted((folder / "_uploads").glob("*/data"))


def _config(tmp_path: Path, upstream: str, target: str, locked: str) -> Path:
    """A gate.yaml gating upstream/node into target/node; ``locked`` gets USER's credentials."""

    login = Registry(locked, username=USER, password_secret="locked-password")
    registries = tuple(login if host == locked else Registry(host) for host in (upstream, target))
    validation = Validation(SEED_VALIDATION, timeout=120)
    rule = Rule(f"{upstream}/node", f"{target}/node", validation=validation)
    return GateYaml(tmp_path / "data", (rule,), registries).write(tmp_path)


# -- the OCI adapter's push check against a real registry -------------------------------------


def test_push_check_with_the_right_password_passes_and_leaves_nothing(
    locked_target: RegistryProcess,
) -> None:
    hosts = {locked_target.host: HostSettings(insecure=True, username=USER, password=PASSWORD)}
    with OciRegistry(hosts) as oci:
        oci.check_push(ImageRef(locked_target.host, "node"))

    assert _tags(locked_target) == []
    assert _uploads(locked_target) == []  # the upload session was cancelled


def test_push_check_with_a_wrong_password_is_refused_without_the_password(
    locked_target: RegistryProcess,
) -> None:
    hosts = {locked_target.host: HostSettings(insecure=True, username=USER, password="wrong-pw")}
    with OciRegistry(hosts) as oci, pytest.raises(AuthenticationError) as caught:
        oci.check_push(ImageRef(locked_target.host, "node"))

    assert "refused the credentials of user 'gate'" in caught.value.message
    assert "wrong-pw" not in caught.value.message
    assert caught.value.exit_code == 2
    assert _uploads(locked_target) == []


def test_push_check_without_credentials_says_which_host_needs_them(
    locked_target: RegistryProcess,
) -> None:
    hosts = {locked_target.host: HostSettings(insecure=True)}
    with OciRegistry(hosts) as oci, pytest.raises(AuthenticationError, match="none are configured"):
        oci.check_push(ImageRef(locked_target.host, "node"))


def test_push_check_of_a_registry_that_is_down_is_retryable(tmp_path: Path) -> None:
    with RegistryProcess(tmp_path / "gone") as process:
        host = process.host
    with (
        stamina.set_testing(True, attempts=2, cap=True),  # both attempts, no backoff
        OciRegistry({host: HostSettings(insecure=True)}, max_attempts=2) as oci,
        pytest.raises(RegistryUnavailable) as caught,
    ):
        oci.check_push(ImageRef(host, "node"))

    assert caught.value.retryable and caught.value.exit_code == 3


# -- the whole gate: a wrong password costs no validation -------------------------------------


pytestmark_podman = pytest.mark.usefixtures("podman_env")


@pytestmark_podman
def test_wrong_target_password_exits_2_before_any_container_runs(
    tmp_path: Path,
    registry: RegistryProcess,
    locked_target: RegistryProcess,
    image_builder: ImageBuilder,
) -> None:
    image_builder.image(f"{registry.host}/node:15-alpine", env={"BACKGROUND_COLOR": "Green"})
    config = _config(tmp_path, registry.host, locked_target.host, locked_target.host)
    since = datetime.now(UTC).isoformat()

    wrong = {"GATE_SECRET_LOCKED_PASSWORD": "wrong-pw"}
    result = gate_cli("run", f"{registry.host}/node:15-alpine", config=config, env=wrong)
    again = gate_cli("run", f"{registry.host}/node:15-alpine", config=config, env=wrong)
    history = gate_cli("history", "--json", config=config, env=wrong)

    assert result.returncode == 2, result.stdout + result.stderr
    assert again.returncode == 2, again.stdout + again.stderr
    assert "refused the credentials of user 'gate'" in result.stderr
    assert "wrong-pw" not in result.stderr + result.stdout
    assert started_containers(since) == []
    assert history.returncode == 0, history.stderr
    records = [json.loads(line) for line in history.stdout.splitlines()]
    assert [r["state"] for r in records] == ["failed", "failed"]
    assert all("not validated" in r["reason"] for r in records)
    assert _tags(locked_target) == []


@pytestmark_podman
def test_wrong_upstream_password_exits_2_at_the_resolve_and_records_only_the_failure(
    tmp_path: Path,
    registry: RegistryProcess,
    locked_target: RegistryProcess,
    image_builder: ImageBuilder,
) -> None:
    # the locked registry is the upstream here: the candidate's pull is what is refused
    digest = image_builder.image(f"{registry.host}/node:15-alpine")
    hosts = {
        registry.host: HostSettings(insecure=True),
        locked_target.host: HostSettings(insecure=True, username=USER, password=PASSWORD),
    }
    with OciRegistry(hosts) as oci:
        oci.copy(
            ImageRef(registry.host, "node", digest=digest),
            ImageRef(locked_target.host, "node"),
            tags=("15-alpine",),
        )
    config = _config(tmp_path, locked_target.host, registry.host, locked_target.host)
    since = datetime.now(UTC).isoformat()

    wrong = {"GATE_SECRET_LOCKED_PASSWORD": "wrong-pw"}
    result = gate_cli("run", f"{locked_target.host}/node:15-alpine", config=config, env=wrong)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "refused the credentials of user 'gate'" in result.stderr
    assert started_containers(since) == []
    # the failure to resolve is the one record: no digest, so it blocks no later gate
    (failed,) = SqliteLedger(tmp_path / "data" / "gate.db").history()
    assert failed.state is State.FAILED and failed.digest is None
    assert "refused the credentials of user 'gate'" in failed.reason
    assert failed.source == f"{locked_target.host}/node:15-alpine"


@pytestmark_podman
def test_right_target_password_validates_and_promotes(
    tmp_path: Path,
    registry: RegistryProcess,
    locked_target: RegistryProcess,
    image_builder: ImageBuilder,
) -> None:
    image_builder.image(f"{registry.host}/node:15-alpine", env={"BACKGROUND_COLOR": "Green"})
    config = _config(tmp_path, registry.host, locked_target.host, locked_target.host)

    result = gate_cli(
        "run",
        f"{registry.host}/node:15-alpine",
        "--json",
        config=config,
        env={"GATE_SECRET_LOCKED_PASSWORD": PASSWORD},
    )

    assert result.returncode == 0, result.stdout + result.stderr
    verdict = json.loads(result.stdout)
    assert sorted(_tags(locked_target)) == sorted(verdict["target_tags"])
    assert _uploads(locked_target) == []


# -- the service over fakes: the check runs once, before the validation ------------------------


def _fake_keeper(tmp_path: Path, registry: FakeRegistry, validator: FakeValidator) -> Gatekeeper:
    config = load_config(empty_task_gate_yaml(tmp_path, "up.example.com", "art.example.com"))
    return Gatekeeper(
        config=config,
        registry=registry,
        validator=validator,
        ledger=SqliteLedger(config.data_dir / "gate.db"),
        secrets=FakeSecrets(),
    )


def test_refused_push_check_raises_records_failed_and_validates_nothing(tmp_path: Path) -> None:
    registry, validator = FakeRegistry(push_refused=True), FakeValidator()
    registry.push("up.example.com/node:15-alpine", "green")
    keeper = _fake_keeper(tmp_path, registry, validator)

    with pytest.raises(AuthenticationError):
        gate_image(keeper, "up.example.com/node:15-alpine")

    assert validator.requests == []
    assert registry.push_checks == ["art.example.com/node"]
    [record] = keeper.ledger.history()
    assert record.state is State.FAILED
    assert record.reason.startswith("not validated: the push check on art.example.com/node")


def test_push_check_runs_once_per_gate_before_the_validation(tmp_path: Path) -> None:
    registry = FakeRegistry()
    checks_at_validation: list[int] = []
    validator = FakeValidator(
        during=lambda request: checks_at_validation.append(len(registry.push_checks))
    )
    registry.push("up.example.com/node:15-alpine", "green")
    keeper = _fake_keeper(tmp_path, registry, validator)

    outcome = gate_image(keeper, "up.example.com/node:15-alpine")
    duplicate = gate_image(keeper, "up.example.com/node:15-alpine")

    assert outcome.verdict == "promoted" and duplicate.duplicate
    assert checks_at_validation == [1]
    assert registry.push_checks == ["art.example.com/node"]  # a duplicate costs no check


# -- the Azure adapters -------------------------------------------------------------------------


def test_push_mode_check_refuses_an_identity_acr_does_not_know(
    acr_emulator: AcrEmulator,
) -> None:
    up = acr_emulator.add_registry("preflightup")
    base = acr_emulator.add_registry("preflightbase")
    stranger = TestCredential(TokenBook("another-tenant"))
    registry = _push_registry(acr_emulator, up, base, stranger)

    with pytest.raises(AuthenticationError, match="AcrPush"):
        registry.check_push(ImageRef(base.login_server, "node"))
    registry.close()


def test_push_mode_check_passes_for_the_gate_identity_and_writes_no_tag(
    acr_emulator: AcrEmulator,
) -> None:
    up = acr_emulator.add_registry("preflightup2")
    base = acr_emulator.add_registry("preflightbase2")
    registry = _push_registry(acr_emulator, up, base)

    registry.check_push(ImageRef(base.login_server, "node"))

    answer = httpx.get(f"{base.backing.url}/v2/node/tags/list")
    assert answer.status_code == 404 or not answer.json().get("tags")
    registry.close()


class _NoIdentity:
    """A credential that cannot sign in (no managed identity on the host, say)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        raise ClientAuthenticationError("ManagedIdentityCredential: no identity found")


def _import_registry(acr_emulator: AcrEmulator, credential: Any) -> AcrImportRegistry:
    base = acr_emulator.add_registry(f"importbase{len(acr_emulator.registries)}")
    return AcrImportRegistry(
        credential=credential,
        subscription_id=acr_emulator.subscription_id,
        target_resource_group=base.resource_group,
        target_registry=base.name,
        target_login_server=base.login_server,
        arm_endpoint=acr_emulator.arm_endpoint,
        secrets=LocalSecrets(env={}),
        oci=OciRegistry(oci_hosts(acr_emulator)),
    )


def test_import_mode_check_fails_when_the_identity_cannot_sign_in(
    acr_emulator: AcrEmulator,
) -> None:
    registry = _import_registry(acr_emulator, _NoIdentity())

    with pytest.raises(AuthenticationError, match="AZURE_CLIENT_ID"):
        registry.check_push(ImageRef(registry.target_login_server, "node"))
    registry.close()


def test_import_mode_check_asks_for_an_arm_token_and_refuses_another_registry(
    acr_emulator: AcrEmulator,
) -> None:
    credential = acr_emulator.credential()
    registry = _import_registry(acr_emulator, credential)
    asked = len(credential.scopes)

    registry.check_push(ImageRef(registry.target_login_server, "node"))
    with pytest.raises(ConfigError, match="imports into"):
        registry.check_push(ImageRef("other.azurecr.io", "node"))

    assert credential.scopes[asked:] == [("https://management.azure.com/.default",)]
    registry.close()
