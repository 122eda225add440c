"""The pure parts of the ACR validator: the task run body it sends and the verdict it reads.

The emulator tests (tests/integration/test_azure_task_run.py) check the same request end to end; these pin
the wire shape and the judging without a network.
"""

from __future__ import annotations

import base64

import pytest
from azure.mgmt.containerregistrytasks.models import Run

from gate.adapters.validation.acr_run_log import judge
from gate.adapters.validation.acr_run_request import (
    MAX_RUN_TIMEOUT,
    MIN_RUN_TIMEOUT,
    platform_properties,
    registry_credentials,
    run_timeout_of,
    task_run,
)
from gate.domain.records import Outcome
from gate.errors import ConfigError

FAILED_STEP_LOG = (
    "2024/03/05 07:08:09 Launching container with name: probe\n"
    "checking the image\n"
    "it is red\n"
    "2024/03/05 07:08:10 Container failed during run: probe. No retries remaining.\n"
    "failed to run step ID: probe: exit status 3\n"
)


def test_the_task_run_body_has_the_encoded_task_values_identity_and_credentials() -> None:
    body = task_run(
        task=b"version: v1.1.0\n",
        values={"IMAGE": "r.io/app@sha256:1", "TOKEN": "t0k"},
        secret_values=frozenset({"TOKEN"}),
        platform=platform_properties("", default_os="Linux", default_architecture="amd64"),
        timeout=600,
        source_location="source/202403/abc.tar.gz",
        credentials=registry_credentials(
            {"other.io": ("https://kv/secrets/u", "https://kv/secrets/p"), "me.azurecr.io": None},
            "client-id",
        ),
        identity_resource_id="/subscriptions/s/identity",
        location="westeurope",
    ).as_dict()

    assert body["location"] == "westeurope"  # the runner registry's region
    assert body["identity"] == {
        "type": "UserAssigned",
        "userAssignedIdentities": {"/subscriptions/s/identity": {}},
    }
    request = body["properties"]["runRequest"]
    assert request["type"] == "EncodedTaskRunRequest"
    assert base64.b64decode(request["encodedTaskContent"]) == b"version: v1.1.0\n"
    assert request["values"] == [
        {"name": "IMAGE", "value": "r.io/app@sha256:1", "isSecret": False},
        {"name": "TOKEN", "value": "t0k", "isSecret": True},
    ]
    assert request["platform"] == {"os": "Linux", "architecture": "amd64"}
    assert request["timeout"] == 600
    assert request["sourceLocation"] == "source/202403/abc.tar.gz"
    registries = request["credentials"]["customRegistries"]
    assert list(registries) == ["me.azurecr.io", "other.io"]
    assert registries["me.azurecr.io"] == {"identity": "client-id"}
    assert registries["other.io"] == {
        "userName": {"type": "Vaultsecret", "value": "https://kv/secrets/u"},
        "password": {"type": "Vaultsecret", "value": "https://kv/secrets/p"},
        "identity": "client-id",
    }


def test_a_task_run_without_identity_or_registries_carries_neither() -> None:
    body = task_run(
        task=b"x",
        values={"IMAGE": "i"},
        secret_values=frozenset(),
        platform=platform_properties(
            "linux/arm64/v8", default_os="Linux", default_architecture="amd64"
        ),
        timeout=MIN_RUN_TIMEOUT,
        source_location="s",
        credentials=registry_credentials({}, None),
        identity_resource_id=None,
    ).as_dict()

    assert "identity" not in body and "location" not in body  # no region known: none sent
    request = body["properties"]["runRequest"]
    assert "credentials" not in request
    assert request["platform"] == {"os": "Linux", "architecture": "arm64", "variant": "v8"}


@pytest.mark.parametrize("mode", ["None", "Default"])
def test_the_login_mode_of_the_runner_registry_is_sent_as_source_registry(mode: str) -> None:
    alone = registry_credentials({}, None, login_mode=mode)
    assert alone is not None and alone.as_dict() == {"sourceRegistry": {"loginMode": mode}}
    both = registry_credentials({"acr.example.io": None}, "client-id", login_mode=mode)
    assert both is not None and both.as_dict() == {
        "customRegistries": {"acr.example.io": {"identity": "client-id"}},
        "sourceRegistry": {"loginMode": mode},
    }


def test_a_platform_acr_has_no_agent_for_is_refused() -> None:
    with pytest.raises(ConfigError, match="platform linux/riscv64 cannot run as an ACR task run"):
        platform_properties("linux/riscv64", default_os="Linux", default_architecture="amd64")


def test_run_timeouts_are_whole_seconds_within_acrs_bounds() -> None:
    assert run_timeout_of(10) == MIN_RUN_TIMEOUT
    assert run_timeout_of(600.2) == 601
    assert run_timeout_of(MAX_RUN_TIMEOUT) == MAX_RUN_TIMEOUT
    with pytest.raises(ConfigError, match="lower the rule's validation timeout_seconds"):
        run_timeout_of(MAX_RUN_TIMEOUT + 1)


def run(error: str | None = None) -> Run:
    """A run as ARM returns it (``runErrorMessage`` is read-only: set from the wire shape)."""
    return Run({"properties": {"runErrorMessage": error} if error else {}})


def test_a_failed_step_rejects_and_an_engine_failure_fails() -> None:
    outcome, reason = judge("r1", "Failed", run(), FAILED_STEP_LOG, True, timeout_seconds=600)
    assert outcome is Outcome.REJECTED
    assert reason == "step 'probe' exited with code 3: checking the image / it is red"

    engine_log = FAILED_STEP_LOG.replace("exit status 3", "exit status 125")
    outcome, reason = judge("r1", "Failed", run(), engine_log, True, timeout_seconds=600)
    assert outcome is Outcome.FAILED
    assert reason.startswith("the container engine could not run step 'probe'")


def test_runs_that_say_nothing_about_the_image_fail() -> None:
    assert judge("r1", "Succeeded", run(), "", True, timeout_seconds=600) == (
        Outcome.PASSED,
        "run r1 succeeded",
    )
    outcome, reason = judge("r1", "Failed", run("login failed"), "", False, timeout_seconds=600)
    assert outcome is Outcome.FAILED
    assert "run r1 failed before any step failed (login failed)" in reason
    outcome, reason = judge("r1", "Timeout", run(), "", True, timeout_seconds=100)
    assert outcome is Outcome.FAILED
    assert f"passed its ACR run timeout of {MIN_RUN_TIMEOUT} s" in reason
    outcome, reason = judge("r1", "Error", run("agent lost"), "", True, timeout_seconds=600)
    assert (outcome, reason) == (
        Outcome.FAILED,
        "ACR could not carry out run r1 (status Error): agent lost; retry later",
    )
