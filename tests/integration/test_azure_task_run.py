"""The ACR task-run validator with the real SDK client against the ACR emulator.

The emulator serves ARM over HTTPS (its CA exported as ``REQUESTS_CA_BUNDLE``) and really runs
each task run's task file with podman, from the uploaded source archive; candidates are busybox
images in an emulated registry's backing ``docker-registry``, or in a *private* emulated ACR
that only a run logged in with a user-assigned identity holding AcrPull may pull from. Every
test runs its task runs on a registry of its own, so the emulator's run book and ARM call log
count only its runs.
"""

from __future__ import annotations

import base64
import io
import itertools
import os
import shutil
import ssl
import tarfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.acr import AcrEmulator, EmulatedIdentity, EmulatedRegistry
from devstack.acr.task_runs import task_runs_of
from devstack.acr.tasks import runs_of, wait_for_runs
from devstack.images import build_image
from gate.adapters.validation.acr_task_run import (
    DELETE_ATTEMPTS,
    TASK_RUN_NAME,
    AcrTaskRunValidator,
    pack_folder,
    parse_step_failure,
    redact_urls,
    task_run_name,
)
from gate.domain.records import Outcome
from gate.domain.ref import ImageRef
from gate.errors import ConfigError, ValidatorError
from gate.ports import Resume, ValidationRequest

SEED = Path(__file__).resolve().parents[1] / "data" / "cmd-validation"  # cmd steps only
API = "2025-03-01-preview"
_names = itertools.count(1)


@dataclass(frozen=True)
class Env:
    """The emulator, the walkthrough's two candidates in its upstream registry, the green one
    in a private ACR too, and user-assigned identities with and without the grants it needs."""

    emulator: AcrEmulator
    green: ImageRef
    red: ImageRef
    private: EmulatedRegistry
    private_green: ImageRef
    runner_identity: EmulatedIdentity  # AcrPull on the private ACR, reads the vault
    no_pull: EmulatedIdentity  # reads the vault only
    no_vault: EmulatedIdentity  # AcrPull only


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, podman_env: dict[str, str]) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("task-run")
    saved = {key: os.environ.get(key) for key in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")}
    # No Retry-After on task run creation: the SDK then polls at the validator's own pace.
    with AcrEmulator(root / "emulator", lro_retry_after=0) as emulator:
        os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"] = str(emulator.ca_path)
        try:
            upstream = emulator.add_registry("upstream")
            host = upstream.backing.host
            pushed = {
                color: build_image(
                    root / "images",
                    f"{host}/seed/app:{color.lower()}",
                    env={"BACKGROUND_COLOR": color},
                )
                for color in ("Green", "Red")
            }
            private = emulator.add_registry("privateupstream", private=True)
            private_digest = build_image(
                root / "images",
                f"{private.backing.host}/seed/app:green",
                env={"BACKGROUND_COLOR": "Green"},
            )
            yield Env(
                emulator=emulator,
                green=ImageRef.parse(f"{host}/seed/app@{pushed['Green']}"),
                red=ImageRef.parse(f"{host}/seed/app@{pushed['Red']}"),
                private=private,
                private_green=ImageRef.parse(f"{private.login_server}/seed/app@{private_digest}"),
                runner_identity=emulator.add_identity(
                    "gate-runner", pull_from=(private,), reads_vault=True
                ),
                no_pull=emulator.add_identity("vault-only", reads_vault=True),
                no_vault=emulator.add_identity("pull-only", pull_from=(private,)),
            )
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture
def runner(env: Env) -> Iterator[EmulatedRegistry]:
    """A registry of this test's own that runs its task runs; faults cleared afterwards."""
    env.emulator.faults.clear()
    registry = env.emulator.add_registry(f"runner{next(_names)}")
    yield registry
    env.emulator.faults.clear()
    env.emulator.throttle_every, env.emulator.throttle_fraction = None, 0.0
    env.emulator.throttle_retry_after = 1
    env.emulator.set_concurrent_runs(registry.name, None)
    wait_for_runs(env.emulator, registry.name)


def make_validator(env: Env, registry: EmulatedRegistry, **options: Any) -> AcrTaskRunValidator:
    settings: dict[str, Any] = {
        "poll_initial": 0.05,
        "poll_max": 0.5,
        "client_kwargs": {"retry_backoff_factor": 0.01},
        "login_server": registry.login_server,  # what {{.Run.Registry}} is in its runs
    }
    settings.update(options)
    return AcrTaskRunValidator(
        credential=env.emulator.credential(),
        subscription_id=env.emulator.subscription_id,
        resource_group=registry.resource_group,
        registry=registry.name,
        arm_endpoint=env.emulator.arm_endpoint,
        **settings,
    )


def with_identity(identity: EmulatedIdentity) -> dict[str, str]:
    """The validator options that attach ``identity`` to its task runs."""
    return {"identity_resource_id": identity.resource_id, "identity_client_id": identity.client_id}


def request_for(image: ImageRef, folder: Path = SEED, **options: Any) -> ValidationRequest:
    return ValidationRequest(image=image, folder=folder, task_file="acr-task.yaml", **options)


def folder_with(tmp_path: Path, task: str) -> Path:
    folder = tmp_path / "validation"
    folder.mkdir()
    (folder / "acr-task.yaml").write_text(textwrap.dedent(task))
    return folder


def calls(env: Env, registry: EmulatedRegistry, name: str) -> list[int]:
    """The statuses ARM answered to route ``name`` for this registry's paths."""
    marker = f"/registries/{registry.name}/"
    return [
        c.status
        for c in env.emulator.arm_calls(name)
        if marker in c.path or c.path.endswith(f"/registries/{registry.name}")
    ]


class FakeTime:
    """A clock that the validator's sleeps advance (no real waiting)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


# ---------------------------------------------------------------------------------------------
# outcomes
# ---------------------------------------------------------------------------------------------


@pytest.mark.podman
def test_seed_green_image_passes_with_the_minimum_arm_calls(
    env: Env, runner: EmulatedRegistry
) -> None:
    started: list[str] = []
    with make_validator(env, runner) as validator:
        result = validator.validate(request_for(env.green), started.append)
    assert result.outcome is Outcome.PASSED, result.log
    assert started == [result.run_id] == ["ca1"]
    assert result.log_location == f"acr://{runner.name}/runs/ca1"
    assert "Validation Complete - No Known Errors" in result.log
    assert "Run ID: ca1 was successful after" in result.log
    assert calls(env, runner, "listBuildSourceUploadUrl") == [200]
    # PUT the task run, follow its creation (one status poll, the SDK's final GET)...
    assert calls(env, runner, "createTaskRun") == [201]
    assert calls(env, runner, "taskRunOperationStatus") == [200]
    # ...and, after the delete, the GET that checks the task run is gone (404)
    assert calls(env, runner, "getTaskRun") == [200, 404]
    # ...follow the run, read its log, delete the task run
    assert calls(env, runner, "getRun") and set(calls(env, runner, "getRun")) == {200}
    assert calls(env, runner, "listLogSasUrl") == [200]
    assert calls(env, runner, "deleteTaskRun") == [200]
    assert task_runs_of(env.emulator, runner.name) == {}
    assert calls(env, runner, "scheduleRun") == calls(env, runner, "cancelRun") == []


@pytest.mark.podman
def test_seed_red_image_is_rejected_naming_the_failing_step_and_its_output(
    env: Env, runner: EmulatedRegistry
) -> None:
    with make_validator(env, runner) as validator:
        result = validator.validate(request_for(env.red), lambda run_id: None)
    assert result.outcome is Outcome.REJECTED, result.log
    # The local validator's wording for the same failure, parsed from ACR's log lines.
    assert (
        result.reason == "step 'validate-base-image' exited with code 1: ERROR: Invalid Color: Red"
    )
    assert "failed to run step ID: validate-base-image: exit status 1" in result.log


@pytest.mark.podman
def test_task_run_request_carries_task_values_platform_timeout_and_source(
    env: Env, runner: EmulatedRegistry
) -> None:
    with make_validator(env, runner, architecture="amd64") as validator:
        result = validator.validate(
            request_for(
                env.green, values={"EXTRA": "x"}, timeout_seconds=42, key="0193ab", attempt=1
            ),
            lambda _: None,
        )
    assert result.outcome is Outcome.PASSED, result.log
    (put,) = [c for c in env.emulator.arm_calls("createTaskRun") if runner.name in c.path]
    assert put.path.endswith("/taskRuns/gate-0193ab-1")  # the record's id and attempt
    (run,) = runs_of(env.emulator, runner.name)
    assert run.identities == ()  # no credentials configured, no identity needed
    body = run.body
    assert body["type"] == "EncodedTaskRunRequest"
    assert base64.b64decode(body["encodedTaskContent"]) == (SEED / "acr-task.yaml").read_bytes()
    assert body["values"] == [
        {"name": "IMAGE", "value": str(env.green), "isSecret": False},
        {"name": "EXTRA", "value": "x", "isSecret": False},
    ]
    assert body["platform"] == {"os": "Linux", "architecture": "amd64"}
    assert body["timeout"] == 300  # ACR's minimum; our own deadline keeps the 42 s
    assert body["sourceLocation"].startswith("source/")
    # no registry to log in to, and no login to the runner registry: the file never uses it
    assert body["credentials"] == {"sourceRegistry": {"loginMode": "None"}}
    uploaded = env.emulator.blobs.get(f"acr-{runner.name}", body["sourceLocation"])
    assert uploaded == pack_folder(SEED)


def test_failed_run_whose_step_failed_is_rejected_naming_that_step(
    env: Env, runner: EmulatedRegistry
) -> None:
    env.emulator.faults.add(run_outcome="Failed", times=1)
    with make_validator(env, runner) as validator:
        result = validator.validate(request_for(env.green), lambda _: None)
    assert result.outcome is Outcome.REJECTED, result.log
    assert result.reason == (
        "step 'validate-base-image' exited with code 1: injected failure: the step exited non-zero"
    )


@pytest.mark.parametrize(
    ("status", "says"),
    [
        ("Error", "ACR could not carry out run ca1 (status Error): The run encountered"),
        ("Timeout", "run ca1 passed its ACR run timeout of 600 s"),
    ],
)
def test_error_and_timeout_runs_fail_the_validation(
    env: Env, runner: EmulatedRegistry, status: str, says: str
) -> None:
    env.emulator.faults.add(run_outcome=status, times=1)
    with make_validator(env, runner) as validator:
        result = validator.validate(request_for(env.green), lambda _: None)
    assert result.outcome is Outcome.FAILED
    assert result.reason.startswith(says), result.reason
    assert runs_of(env.emulator, runner.name)[0].status == status


def test_failed_run_without_a_failing_step_fails_rather_than_rejects(
    env: Env, runner: EmulatedRegistry
) -> None:
    # The identity cannot read a secret that does not exist: ACR fails the run at login, before
    # any step; that says nothing about the image. (The candidate's own registry: a run logs in
    # only to its rule's registries.)
    missing = f"{env.emulator.key_vault_url}/secrets/no-such-secret"
    with make_validator(
        env,
        runner,
        custom_registries={env.green.registry: (missing, missing)},
        **with_identity(env.runner_identity),
    ) as validator:
        result = validator.validate(request_for(env.green), lambda _: None)
    assert result.outcome is Outcome.FAILED, result.log
    assert result.reason.startswith("run ca1 failed before any step failed (failed during run")
    assert f"Logging in to registry: {env.green.registry}" in result.log


MIRROR = {"MIRROR": "registry.example.io/mirror"}
"""A rule value naming the non-ACR registry of :func:`private_credentials`: its run gets it."""


def private_credentials(env: Env) -> dict[str, tuple[str, str] | None]:
    """The private ACR by identity alone, and a non-ACR registry by Key Vault secrets."""
    user = env.emulator.set_secret("pull-user", "reader")
    password = env.emulator.set_secret("pull-password", "pa55-w0rd")
    return {env.private.login_server: None, "registry.example.io": (user, password)}


@pytest.mark.podman
def test_private_upstream_and_vault_secrets_are_reached_through_the_task_runs_identity(
    env: Env, runner: EmulatedRegistry
) -> None:
    custom = private_credentials(env)
    identity = env.runner_identity
    with make_validator(
        env, runner, custom_registries=custom, **with_identity(identity)
    ) as validator:
        result = validator.validate(request_for(env.private_green, values=MIRROR), lambda _: None)
    assert result.outcome is Outcome.PASSED, result.log
    (run,) = runs_of(env.emulator, runner.name)
    assert run.identities == (identity,)  # attached by its ARM id
    user, password = custom["registry.example.io"] or ("", "")
    assert run.body["credentials"] == {
        "customRegistries": {
            env.private.login_server: {"identity": identity.client_id},
            "registry.example.io": {
                "userName": {"type": "Vaultsecret", "value": user},
                "password": {"type": "Vaultsecret", "value": password},
                "identity": identity.client_id,
            },
        },
        "sourceRegistry": {"loginMode": "None"},
    }
    assert run.to_json()["properties"]["customRegistries"] == [
        env.private.login_server,
        "registry.example.io",
    ]


@pytest.mark.parametrize("claimed", ["[system]", "client id"])
def test_the_same_request_as_a_plain_quick_run_fails_at_login(
    env: Env, runner: EmulatedRegistry, claimed: str
) -> None:
    # The shape the gate used to send: scheduleRun has no identity, so no credential resolves.
    identity = env.runner_identity.client_id if claimed == "client id" else claimed
    task = f"version: v1.1.0\nsteps:\n  - cmd: {env.private_green} true\n"
    body = {
        **good_body(),
        "encodedTaskContent": base64.b64encode(task.encode()).decode(),
        "credentials": {"customRegistries": {env.private.login_server: {"identity": identity}}},
    }
    response = arm(env)("POST", f"{runner.resource_id}/scheduleRun?api-version={API}", json=body)
    assert response.status_code == 200, response.text
    wait_for_runs(env.emulator, runner.name)
    (run,) = runs_of(env.emulator, runner.name)
    assert run.status == "Failed" and run.logged_in == []
    stored = (env.emulator.blobs.get(f"acr-{runner.name}", run.log_name) or b"").decode()
    assert f"the identity '{identity}' is not an identity of this run" in stored
    assert "Executing step ID" not in stored


@pytest.mark.parametrize(
    ("lacking", "says"),
    [
        ("no_pull", "the identity has no pull permission on registry privateupstream"),
        ("no_vault", "the identity may not read secrets of the vault"),
    ],
)
def test_task_run_whose_identity_lacks_a_grant_fails_at_login(
    env: Env, runner: EmulatedRegistry, lacking: str, says: str
) -> None:
    identity: EmulatedIdentity = getattr(env, lacking)
    with make_validator(
        env, runner, custom_registries=private_credentials(env), **with_identity(identity)
    ) as validator:
        result = validator.validate(request_for(env.private_green, values=MIRROR), lambda _: None)
    assert result.outcome is Outcome.FAILED, result.log
    assert result.reason.startswith("run ca1 failed before any step failed"), result.reason
    assert "AcrPull" in result.reason  # the fix: grant the runner identity
    assert says in result.log
    assert "Executing step ID" not in result.log


def test_private_upstream_without_a_login_is_refused_to_the_engine_and_fails(
    env: Env, runner: EmulatedRegistry
) -> None:
    with make_validator(env, runner) as validator:
        result = validator.validate(request_for(env.private_green), lambda _: None)
    assert result.outcome is Outcome.FAILED, result.log
    assert result.reason.startswith(
        "the container engine could not run step 'validate-base-image' (exit status 125)"
    ), result.reason
    assert "unauthorized: authentication required" in result.log


def test_credentials_without_a_runner_identity_are_refused_before_anything_runs(
    env: Env, runner: EmulatedRegistry
) -> None:
    with pytest.raises(ConfigError, match="need the runner's user-assigned identity"):
        make_validator(env, runner, custom_registries=private_credentials(env))
    with pytest.raises(ConfigError, match="both its ARM resource id and its client id"):
        make_validator(env, runner, identity_resource_id=env.runner_identity.resource_id)
    assert calls(env, runner, "listBuildSourceUploadUrl") == []


# ---------------------------------------------------------------------------------------------
# deadline, throttling, transient errors
# ---------------------------------------------------------------------------------------------


def test_run_that_outlives_our_deadline_is_cancelled_and_fails(
    env: Env, runner: EmulatedRegistry
) -> None:
    env.emulator.faults.add(run_delay=600.0, times=1)
    fake = FakeTime()
    with make_validator(
        env, runner, deadline_margin=2.0, sleep=fake.sleep, clock=fake.clock
    ) as validator:
        result = validator.validate(request_for(env.green, timeout_seconds=3), lambda _: None)
    assert result.outcome is Outcome.FAILED
    assert result.reason.startswith(
        "run ca1 did not finish within the validation timeout of 3 s (+2 s margin) after it "
        "started; it was cancelled"
    ), result.reason
    assert calls(env, runner, "cancelRun") == [200]
    assert runs_of(env.emulator, runner.name)[0].status == "Canceled"
    # the 5 s count from the first poll that saw it Running (the task run answers it Queued)
    assert 5.0 <= sum(fake.slept) < 6.0
    # Backoff: the interval doubles up to poll_max, so five seconds take a handful of polls.
    assert len(calls(env, runner, "getRun")) == len(fake.slept) < 15


@pytest.mark.podman
@pytest.mark.parametrize(
    ("status", "retry_after"), [(429, 1), (500, None)], ids=["throttled", "server-error"]
)
def test_task_run_creation_that_fails_once_is_retried_by_the_sdk_and_runs_once(
    env: Env, runner: EmulatedRegistry, status: int, retry_after: int | None
) -> None:
    env.emulator.faults.add(route="createTaskRun", status=status, retry_after=retry_after)
    with make_validator(env, runner) as validator:
        result = validator.validate(request_for(env.green), lambda _: None)
    assert result.outcome is Outcome.PASSED, result.log
    assert calls(env, runner, "createTaskRun") == [status, 201]
    assert [r.run_id for r in runs_of(env.emulator, runner.name)] == ["ca1"]


def test_task_run_creation_that_keeps_failing_is_a_validator_error_and_runs_nothing(
    env: Env, runner: EmulatedRegistry
) -> None:
    env.emulator.faults.add(route="createTaskRun", status=500, times=1000)
    started: list[str] = []
    with (
        make_validator(
            env, runner, client_kwargs={"retry_total": 1, "retry_backoff_factor": 0.01}
        ) as validator,
        pytest.raises(ValidatorError) as caught,
    ):
        validator.validate(request_for(env.green), started.append)
    assert caught.value.message.startswith(
        f"ACR task run on registry {runner.name} failed: 500 InternalServerError"
    )
    assert "taskruns/write" in caught.value.message and "Managed Identity Operator" in (
        caught.value.message
    )
    assert started == [] and runs_of(env.emulator, runner.name) == []


@pytest.mark.podman
def test_server_errors_while_polling_are_retried(env: Env, runner: EmulatedRegistry) -> None:
    env.emulator.faults.add(route="getRun", status=500, times=2)
    with make_validator(env, runner) as validator:
        result = validator.validate(request_for(env.green), lambda _: None)
    assert result.outcome is Outcome.PASSED, result.log
    statuses = calls(env, runner, "getRun")
    assert statuses[:2] == [500, 500] and statuses[-1] == 200


def test_polling_that_keeps_failing_ends_at_our_deadline(
    env: Env, runner: EmulatedRegistry
) -> None:
    env.emulator.faults.add(run_delay=600.0, times=1)
    env.emulator.faults.add(route="getRun", status=503, times=1000)
    fake = FakeTime()
    with make_validator(
        env,
        runner,
        deadline_margin=0.0,
        sleep=fake.sleep,
        clock=fake.clock,
        client_kwargs={"retry_total": 0},
    ) as validator:
        result = validator.validate(request_for(env.green, timeout_seconds=1), lambda _: None)
    assert result.outcome is Outcome.FAILED
    assert "did not finish within the validation timeout" in result.reason
    assert set(calls(env, runner, "getRun")) == {503}
    assert calls(env, runner, "cancelRun") == [200]


# ---------------------------------------------------------------------------------------------
# resuming
# ---------------------------------------------------------------------------------------------


@pytest.mark.podman
def test_resume_with_a_run_id_follows_that_run_without_starting_another(
    env: Env, runner: EmulatedRegistry
) -> None:
    with make_validator(env, runner) as validator:
        first = validator.validate(request_for(env.red, key="rec1"), lambda _: None)
        started: list[str] = []
        resumed = validator.validate(
            request_for(env.red, key="rec1", attempt=2),
            started.append,
            Resume(first.run_id, datetime.now(UTC)),
        )
    assert (resumed.outcome, resumed.run_id, resumed.reason) == (
        first.outcome,
        first.run_id,
        first.reason,
    )
    assert started == []
    assert calls(env, runner, "createTaskRun") == [201]
    assert calls(env, runner, "listBuildSourceUploadUrl") == [200]
    assert len(runs_of(env.emulator, runner.name)) == 1
    # the first attempt's task run, deleted already, is deleted again to be sure: 204
    assert calls(env, runner, "deleteTaskRun") == [200, 204]


@pytest.mark.podman
def test_resume_with_a_run_id_acr_does_not_know_starts_a_new_run(
    env: Env, runner: EmulatedRegistry
) -> None:
    started: list[str] = []
    with make_validator(env, runner) as validator:
        result = validator.validate(
            request_for(env.green, key="rec2", attempt=2),
            started.append,
            Resume("lr0000000000000", datetime.now(UTC)),
        )
    assert result.outcome is Outcome.PASSED, result.log
    assert started == ["ca1"]
    (put,) = [c for c in env.emulator.arm_calls("createTaskRun") if runner.name in c.path]
    assert put.path.endswith("/taskRuns/gate-rec2-2")


class Crash(BaseException):
    """The worker dies right after ACR started the run, before it recorded the ID."""


def crash(run_id: str) -> None:
    raise Crash(run_id)


@pytest.mark.podman
def test_worker_that_died_after_the_put_is_resumed_by_following_its_task_runs_run(
    env: Env, runner: EmulatedRegistry
) -> None:
    with make_validator(env, runner) as validator:
        with pytest.raises(Crash):
            validator.validate(request_for(env.red, key="rec3", attempt=1), crash)
        assert set(task_runs_of(env.emulator, runner.name)) == {"gate-rec3-1"}
        started: list[str] = []
        result = validator.validate(
            request_for(env.red, key="rec3", attempt=2),
            started.append,
            Resume(None, datetime.now(UTC)),
        )
    assert result.outcome is Outcome.REJECTED, result.log
    assert started == [result.run_id] == ["ca1"]
    assert calls(env, runner, "createTaskRun") == [201]  # nothing created the second time
    assert len(runs_of(env.emulator, runner.name)) == 1
    # found by name (the SDK's final GET of the creation, then the lookup), then deleted and
    # checked gone (404)
    assert calls(env, runner, "getTaskRun") == [200, 200, 404]
    assert task_runs_of(env.emulator, runner.name) == {}
    assert calls(env, runner, "listRuns") == []  # no search among the registry's runs


@pytest.mark.podman
def test_worker_that_died_before_the_put_is_resumed_by_a_new_task_run(
    env: Env, runner: EmulatedRegistry
) -> None:
    started: list[str] = []
    with make_validator(env, runner) as validator:
        result = validator.validate(
            request_for(env.green, key="rec4", attempt=3),
            started.append,
            Resume(None, datetime.now(UTC)),
        )
    assert result.outcome is Outcome.PASSED, result.log
    assert started == ["ca1"]
    # attempts 2 and 1 looked up (404), then attempt 3's own task run created and read back,
    # then checked gone after its delete (404)
    assert calls(env, runner, "getTaskRun") == [404, 404, 200, 404]
    (put,) = [c for c in env.emulator.arm_calls("createTaskRun") if runner.name in c.path]
    assert put.path.endswith("/taskRuns/gate-rec4-3")


@pytest.mark.podman
def test_a_task_run_that_cannot_be_deleted_leaves_the_verdict_alone(
    env: Env, runner: EmulatedRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    env.emulator.faults.add(route="deleteTaskRun", status=500, times=1000)
    with make_validator(
        env, runner, client_kwargs={"retry_total": 1, "retry_backoff_factor": 0.01}
    ) as validator:
        result = validator.validate(request_for(env.green, key="rec5"), lambda _: None)
    assert result.outcome is Outcome.PASSED, result.log
    # DELETE_ATTEMPTS tries, each retried once by the SDK (retry_total=1)
    assert calls(env, runner, "deleteTaskRun") == [500] * 2 * DELETE_ATTEMPTS
    assert set(task_runs_of(env.emulator, runner.name)) == {"gate-rec5-1"}
    # reported, with the command that removes it, in the result, its log and our log
    command = (
        f"az acr taskrun delete --registry {runner.name} --name gate-rec5-1 "
        f"--resource-group {runner.resource_group} --yes"
    )
    notice = (
        f"task run gate-rec5-1 on registry {runner.name} could not be deleted (500 "
        "InternalServerError: Encountered internal server error. Please try again later.); its "
        "registry credentials and secret values may remain in it: delete it with "
        f"'{command}'"
    )
    assert result.reason == f"run {result.run_id} succeeded; {notice}"
    assert result.log.endswith(f"\n{notice}\n")
    assert notice in caplog.text
    assert "holds no secret values" not in caplog.text


# ---------------------------------------------------------------------------------------------
# secrets, refusals
# ---------------------------------------------------------------------------------------------


@pytest.mark.podman
def test_secret_values_never_reach_the_log_or_the_reason(
    env: Env, runner: EmulatedRegistry, tmp_path: Path
) -> None:
    folder = folder_with(
        tmp_path,
        """\
        version: v1.1.0
        steps:
          - id: leak
            cmd: "{{.Values.IMAGE}} sh -c 'echo token is $TOKEN; exit 3'"
            env: ["TOKEN={{.Values.TOKEN}}"]
        """,
    )
    secret = "s3cr3t-t0ken-value"
    with make_validator(env, runner) as validator:
        result = validator.validate(
            request_for(
                env.green, folder, values={"TOKEN": secret}, secret_values=frozenset({"TOKEN"})
            ),
            lambda _: None,
        )
    assert result.outcome is Outcome.REJECTED, result.log
    assert result.reason == "step 'leak' exited with code 3: token is ***"
    assert secret not in result.log and "token is ***" in result.log
    (run,) = runs_of(env.emulator, runner.name)
    assert {"name": "TOKEN", "value": secret, "isSecret": True} in run.body["values"]
    # The emulator, like ACR as far as documented, does not mask what steps print.
    stored = env.emulator.blobs.get(f"acr-{runner.name}", run.log_name) or b""
    assert secret.encode() in stored


def test_timeout_acr_cannot_take_is_refused_before_anything_is_scheduled(
    env: Env, runner: EmulatedRegistry
) -> None:
    started: list[str] = []
    with make_validator(env, runner) as validator, pytest.raises(ConfigError, match="28800"):
        validator.validate(request_for(env.green, timeout_seconds=30000), started.append)
    assert started == [] and calls(env, runner, "listBuildSourceUploadUrl") == []


def test_missing_task_file_is_refused_before_anything_is_uploaded(
    env: Env, runner: EmulatedRegistry, tmp_path: Path
) -> None:
    with make_validator(env, runner) as validator, pytest.raises(ConfigError, match="task file"):
        validator.validate(request_for(env.green, tmp_path), lambda _: None)
    assert calls(env, runner, "listBuildSourceUploadUrl") == []


def test_unknown_registry_is_a_validator_error_naming_the_registry(env: Env) -> None:
    validator = AcrTaskRunValidator(
        credential=env.emulator.credential(),
        subscription_id=env.emulator.subscription_id,
        resource_group="rg",
        registry="nosuchregistry",
        arm_endpoint=env.emulator.arm_endpoint,
    )
    with validator, pytest.raises(ValidatorError) as caught:
        validator.validate(request_for(env.green), lambda _: None)
    assert caught.value.message.startswith(
        "ACR task run on registry nosuchregistry failed: 404 ResourceNotFound: "
    )


# ---------------------------------------------------------------------------------------------
# the emulator's ARM refusals (what the real service's contract is checked against)
# ---------------------------------------------------------------------------------------------


def arm(env: Env) -> Callable[..., httpx.Response]:
    token = env.emulator.credential().get_token("https://management.azure.com/.default").token

    def send(method: str, path: str, **kwargs: Any) -> httpx.Response:
        trust = ssl.create_default_context(cafile=str(env.emulator.ca_path))
        with httpx.Client(verify=trust) as client:
            return client.request(
                method,
                f"{env.emulator.arm_endpoint}{path}",
                headers={"Authorization": f"Bearer {token}"},
                **kwargs,
            )

    return send


def good_body() -> dict[str, Any]:
    return {
        "type": "EncodedTaskRunRequest",
        "encodedTaskContent": base64.b64encode(b"version: v1.1.0\nsteps: []\n").decode(),
        "platform": {"os": "Linux", "architecture": "amd64"},
        "timeout": 600,
    }


@pytest.mark.parametrize(
    ("change", "code", "says"),
    [
        (lambda b: b.pop("platform"), "InvalidRequestContent", "Required property 'platform'"),
        (lambda b: b.pop("encodedTaskContent"), "InvalidRequestContent", "'encodedTaskContent'"),
        (lambda b: b.update(timeout=60), "InvalidParameter", "between 300 and 28800"),
        (lambda b: b.update(encodedTaskContent="not base64!"), "InvalidParameter", "base64"),
        (lambda b: b.update(values_property=[]), "InvalidRequestContent", "values_property"),
        (lambda b: b["platform"].update(os="Plan9"), "InvalidRequestContent", "allowed values"),
        (
            lambda b: b.update(
                credentials={
                    "customRegistries": {
                        "x.io": {
                            "userName": {"type": "Vaultsecret", "value": "https://v/secrets/u"},
                            "password": {"type": "Vaultsecret", "value": "https://v/secrets/p"},
                        }
                    }
                }
            ),
            "InvalidParameter",
            "names no identity",
        ),
        (lambda b: b.update(type="Bogus"), "InvalidRequestContent", "discriminator"),
    ],
)
def test_malformed_schedule_run_body_gets_arm_400(
    env: Env,
    runner: EmulatedRegistry,
    change: Callable[[dict[str, Any]], Any],
    code: str,
    says: str,
) -> None:
    body = good_body()
    change(body)
    path = f"{runner.resource_id}/scheduleRun?api-version={API}"
    response = arm(env)("POST", path, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code
    assert says in response.json()["error"]["message"]
    assert runs_of(env.emulator, runner.name) == []


def test_well_formed_schedule_run_body_is_accepted(env: Env, runner: EmulatedRegistry) -> None:
    path = f"{runner.resource_id}/scheduleRun?api-version={API}"
    response = arm(env)("POST", path, json=good_body())
    assert response.status_code == 200, response.text
    properties = response.json()["properties"]
    assert (properties["runId"], properties["status"], properties["runType"]) == (
        "ca1",
        "Queued",
        "QuickRun",
    )


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("RunType eq 'QuickRun' and CreateTime ge 2024-01-01T00:00:00Z", 200),
        ("Status eq 'Running'", 200),
        ("contains(OutputImageManifests, 'x')", 400),
        ("RunType eq 'QuickRun' or Status eq 'Failed'", 400),
    ],
)
def test_runs_list_filter_accepts_the_clauses_it_knows_and_refuses_others(
    env: Env, runner: EmulatedRegistry, query: str, status: int
) -> None:
    path = f"{runner.resource_id}/runs"
    response = arm(env)("GET", path, params={"api-version": API, "$filter": query, "$top": "5"})
    assert response.status_code == status, response.text


def task_run_body(identity: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"properties": {"runRequest": good_body()}}
    if identity is not None:
        body["identity"] = identity
    return body


@pytest.mark.parametrize(
    ("name", "body", "code", "says"),
    [
        ("abc", None, "InvalidResourceName", "5 to 50 characters"),
        ("bad_name", None, "InvalidResourceName", "letters, digits and hyphens"),
        (
            "gate-x-1",
            {"type": "SystemAssigned"},
            "InvalidParameter",
            "a task run takes a user-assigned identity only",
        ),
        (
            "gate-x-1",
            {
                "type": "UserAssigned",
                "userAssignedIdentities": {
                    "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/"
                    "userAssignedIdentities/nobody": {}
                },
            },
            "FailedIdentityOperation",
            "was not found",
        ),
        ("gate-x-1", {"type": "UserAssigned"}, "InvalidParameter", "at least one entry"),
    ],
)
def test_malformed_task_run_gets_arm_400_and_runs_nothing(
    env: Env,
    runner: EmulatedRegistry,
    name: str,
    body: dict[str, Any] | None,
    code: str,
    says: str,
) -> None:
    path = f"{runner.resource_id}/taskRuns/{name}?api-version={API}"
    response = arm(env)("PUT", path, json=task_run_body(body))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code
    assert says in response.json()["error"]["message"]
    assert runs_of(env.emulator, runner.name) == []
    assert task_runs_of(env.emulator, runner.name) == {}


def test_task_run_resource_lifecycle_follows_the_specification(
    env: Env, runner: EmulatedRegistry
) -> None:
    send = arm(env)
    path = f"{runner.resource_id}/taskRuns/gate-life-1?api-version={API}"
    identity = {
        "type": "UserAssigned",
        "userAssignedIdentities": {env.no_vault.resource_id: {}},
    }
    created = send("PUT", path, json=task_run_body(identity))
    assert created.status_code == 201, created.text
    assert created.headers["Azure-AsyncOperation"].startswith(env.emulator.arm_endpoint)
    props = created.json()["properties"]
    assert props["provisioningState"] == "Creating"
    assert (
        props["runResult"]["properties"]["runId"],
        props["runResult"]["properties"]["status"],
    ) == (
        "ca1",
        "Queued",
    )
    # the same PUT again changes nothing and starts nothing
    assert send("PUT", path, json=task_run_body(identity)).status_code == 200
    got = send("GET", path).json()
    assert got["properties"]["provisioningState"] == "Succeeded"
    assert got["identity"]["userAssignedIdentities"][env.no_vault.resource_id] == {
        "principalId": env.no_vault.principal_id,
        "clientId": env.no_vault.client_id,
    }
    assert len(runs_of(env.emulator, runner.name)) == 1
    assert [send("DELETE", path).status_code, send("DELETE", path).status_code] == [200, 204]
    assert send("GET", path).status_code == 404


# ---------------------------------------------------------------------------------------------
# pieces
# ---------------------------------------------------------------------------------------------


def test_source_archive_is_the_same_bytes_for_the_same_folder(tmp_path: Path) -> None:
    first = tmp_path / "a"
    shutil.copytree(SEED, first)
    second = tmp_path / "b"
    shutil.copytree(SEED, second)
    os.utime(second / "test.sh", (0, 1_700_000_000))
    (second / "acr-task.yaml").chmod(0o600)
    assert pack_folder(first) == pack_folder(second)
    with tarfile.open(fileobj=io.BytesIO(pack_folder(first)), mode="r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["acr-task.yaml", "test.sh"]
    assert {(m.mtime, m.uid, m.uname) for m in members} == {(0, 0, "")}
    assert [oct(m.mode) for m in members] == ["0o644", "0o755"]


ACR_FAILED_LOG = """\
2024/03/05 10:15:01 Downloading source code...
2024/03/05 10:15:02 Finished downloading source code
2024/03/05 10:15:02 Using acb_vol_4b9f0c1e as the home volume
2024/03/05 10:15:02 Setting up Docker configuration...
2024/03/05 10:15:03 Successfully set up Docker configuration
2024/03/05 10:15:03 Logging in to registry: gatedemo.azurecr.io
2024/03/05 10:15:04 Successfully logged into gatedemo.azurecr.io
2024/03/05 10:15:04 Executing step ID: smoke. Timeout(sec): 600, Working directory: '', Network: 'acb_default_network'
2024/03/05 10:15:04 Launching container with name: smoke
Unable to find image 'gatedemo.azurecr.io/base/node@sha256:1111111111111111111111111111111111111111111111111111111111111111' locally
checking node version
\x1b[31mnode: not found\x1b[0m
2024/03/05 10:15:09 Container failed during run: smoke. No retries remaining.
failed to run step ID: smoke: exit status 127

Run ID: cb7 failed after 9s. Error: failed during run, err: exit status 1
"""


def test_step_failure_is_parsed_from_acr_log_lines() -> None:
    failure = parse_step_failure(ACR_FAILED_LOG)
    assert failure is not None
    assert (failure.step, failure.exit_code) == ("smoke", 127)
    assert failure.describe() == (
        "step 'smoke' exited with code 127: Unable to find image "
        "'gatedemo.azurecr.io/base/node@sha256:1111111111111111111111111111111111111111111111111111111111111111' "
        "locally / checking node version / node: not found"
    )
    assert parse_step_failure(ACR_FAILED_LOG.replace("failed to run step ID", "x")) is None


def test_sas_tokens_are_cut_from_urls_in_messages() -> None:
    text = "GET https://acct.blob.core.windows.net/c/logs/x.log?sv=2021&sig=abc%2F failed"
    assert (
        redact_urls(text) == "GET https://acct.blob.core.windows.net/c/logs/x.log?<redacted> failed"
    )


def test_task_run_names_are_deterministic_and_fit_the_name_grammar() -> None:
    assert task_run_name("0193f2a4c1d2e3f4a5", 1) == "gate-0193f2a4c1d2e3f4a5-1"
    assert task_run_name("0193f2a4c1d2e3f4a5", 2) == "gate-0193f2a4c1d2e3f4a5-2"
    odd = ["Rec_1", "a" * 60, "x--y", "-x"]
    names = [task_run_name(key, 7) for key in odd]
    assert names == [task_run_name(key, 7) for key in odd]  # the same key, the same name
    assert len(set(names)) == len(odd)
    assert all(TASK_RUN_NAME.match(name) and name.endswith("-7") for name in names)
    assert task_run_name("", 1) != task_run_name("", 1)  # no key: nothing to find later
    with pytest.raises(ValueError):
        task_run_name("x", 0)


# ---------------------------------------------------------------------------------------------
# what a candidate can reach: its rule's credentials, the runner login, leftover task runs
# ---------------------------------------------------------------------------------------------

OTHER_UPSTREAM = "other-upstream.example.io"
"""Rule B's upstream: configured with the gate, named by nothing of rule A."""


def two_rules(env: Env, *, broken: bool = False) -> dict[str, tuple[str, str] | None]:
    """Rule A's upstream (the candidates' registry) and rule B's, by Key Vault secrets."""
    user = env.emulator.set_secret("a-user", "reader")
    password = env.emulator.set_secret("a-password", "pa55-w0rd")
    missing = f"{env.emulator.key_vault_url}/secrets/no-such-secret"
    other = (
        (missing, missing)
        if broken
        else (
            env.emulator.set_secret("b-user", "b-reader"),
            env.emulator.set_secret("b-password", "b-pa55"),
        )
    )
    return {env.green.registry: (user, password), OTHER_UPSTREAM: other}


@pytest.mark.podman
def test_a_rules_run_carries_no_credential_of_another_rules_upstream(
    env: Env, runner: EmulatedRegistry
) -> None:
    custom = two_rules(env)
    # a delete that never succeeds leaves the task run for TaskRuns_GetDetails to show
    env.emulator.faults.add(route="deleteTaskRun", status=500, times=1000)
    with make_validator(
        env,
        runner,
        custom_registries=custom,
        client_kwargs={"retry_total": 0},
        **with_identity(env.runner_identity),
    ) as validator:
        result = validator.validate(request_for(env.green, key="rule-a"), lambda _: None)
    assert result.outcome is Outcome.PASSED, result.log
    user, password = custom[env.green.registry] or ("", "")
    expected = {
        "customRegistries": {
            env.green.registry: {
                "userName": {"type": "Vaultsecret", "value": user},
                "password": {"type": "Vaultsecret", "value": password},
                "identity": env.runner_identity.client_id,
            }
        },
        "sourceRegistry": {"loginMode": "None"},
    }
    (run,) = runs_of(env.emulator, runner.name)
    assert run.body["credentials"] == expected
    assert run.logged_in == [env.green.registry]
    # what ARM keeps in the task run, read as TaskRuns_GetDetails answers it (with secrets)
    path = f"{runner.resource_id}/taskRuns/gate-rule-a-1"
    details = arm(env)("POST", f"{path}/listDetails?api-version={API}")
    assert details.status_code == 200, details.text
    assert details.json()["properties"]["runRequest"]["credentials"] == expected
    assert OTHER_UPSTREAM not in details.text
    assert calls(env, runner, "getTaskRunDetails") == [200]


@pytest.mark.podman
def test_a_broken_secret_of_another_rules_upstream_does_not_fail_this_rule(
    env: Env, runner: EmulatedRegistry, tmp_path: Path
) -> None:
    custom = two_rules(env, broken=True)
    with make_validator(
        env, runner, custom_registries=custom, **with_identity(env.runner_identity)
    ) as validator:
        mine = validator.validate(request_for(env.green, key="rule-a"), lambda _: None)
        # rule B's own run (its task file names its upstream) does fail at that login
        folder = folder_with(
            tmp_path,
            f"""\
            version: v1.1.0
            steps:
              - cmd: {OTHER_UPSTREAM}/tools/check:1 true
            """,
        )
        theirs = validator.validate(request_for(env.green, folder, key="rule-b"), lambda _: None)
    assert mine.outcome is Outcome.PASSED, mine.log
    assert f"Logging in to registry: {OTHER_UPSTREAM}" not in mine.log
    assert theirs.outcome is Outcome.FAILED, theirs.log
    assert f"Logging in to registry: {OTHER_UPSTREAM}" in theirs.log
    assert "failed to get the credentials" in theirs.log


@pytest.mark.podman
def test_a_task_file_that_pushes_to_the_runner_registry_keeps_its_login(
    env: Env, runner: EmulatedRegistry, tmp_path: Path
) -> None:
    folder = folder_with(
        tmp_path,
        """\
        version: v1.1.0
        steps:
          - id: make
            build: -t {{.Run.Registry}}/checked:{{.Run.ID}} --build-arg BASE={{.Values.IMAGE}} .
          - id: test
            cmd: "{{.Run.Registry}}/checked:{{.Run.ID}} true"
          - id: ship
            push: ["{{.Run.Registry}}/checked:{{.Run.ID}}"]
        """,
    )
    (folder / "Dockerfile").write_text("ARG BASE\nFROM $BASE\n")
    with make_validator(env, runner) as validator:
        result = validator.validate(request_for(env.green, folder), lambda _: None)
    assert result.outcome is Outcome.PASSED, result.log
    (run,) = runs_of(env.emulator, runner.name)
    assert run.body["credentials"] == {"sourceRegistry": {"loginMode": "Default"}}
    assert run.to_json()["properties"]["sourceRegistryAuth"] == "Default"


def test_a_run_without_a_runner_login_cannot_push_there(env: Env, runner: EmulatedRegistry) -> None:
    # What the emulator does with loginMode None: the push to its own registry is refused
    # (ACR's agents push with the run's login), before anything is built.
    task = (
        "version: v1.1.0\nsteps:\n"
        "  - {id: make, build: -t $Registry/app:1 .}\n"
        '  - {id: ship, push: ["$Registry/app:1"]}\n'
    )
    body = {
        **good_body(),
        "encodedTaskContent": base64.b64encode(task.encode()).decode(),
        "credentials": {"sourceRegistry": {"loginMode": "None"}},
    }
    response = arm(env)("POST", f"{runner.resource_id}/scheduleRun?api-version={API}", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["properties"]["sourceRegistryAuth"] == "None"
    wait_for_runs(env.emulator, runner.name)
    (run,) = runs_of(env.emulator, runner.name)
    assert run.status == "Failed"
    stored = (env.emulator.blobs.get(f"acr-{runner.name}", run.log_name) or b"").decode()
    assert f"unauthorized: authentication required for {runner.login_server}" in stored
    assert "failed to run step ID: ship: exit status 1" in stored
    assert "Executing step ID: make" not in stored


def test_a_private_runner_registry_refuses_pulls_to_a_run_without_its_login(
    env: Env,
) -> None:
    private_runner = env.emulator.add_registry(f"privaterunner{next(_names)}", private=True)
    task = f"version: v1.1.0\nsteps:\n  - cmd: {private_runner.login_server}/tools/check:1 true\n"
    body = {
        **good_body(),
        "encodedTaskContent": base64.b64encode(task.encode()).decode(),
        "credentials": {"sourceRegistry": {"loginMode": "None"}},
    }
    path = f"{private_runner.resource_id}/scheduleRun?api-version={API}"
    response = arm(env)("POST", path, json=body)
    assert response.status_code == 200, response.text
    wait_for_runs(env.emulator, private_runner.name)
    (run,) = runs_of(env.emulator, private_runner.name)
    assert run.status == "Failed"
    stored = (env.emulator.blobs.get(f"acr-{private_runner.name}", run.log_name) or b"").decode()
    assert "unauthorized: authentication required" in stored
    assert "exit status 125" in stored


def test_task_run_get_hides_secrets_that_get_details_returns(
    env: Env, runner: EmulatedRegistry
) -> None:
    identity = env.runner_identity
    credentials = {
        "customRegistries": {
            "registry.example.io": {
                "userName": {"type": "Opaque", "value": "reader"},
                "password": {"type": "Opaque", "value": "pa55-w0rd"},
            }
        },
        "sourceRegistry": {"loginMode": "None"},
    }
    values = [{"name": "TOKEN", "value": "s3cr3t", "isSecret": True}]
    body = {
        "identity": {"type": "UserAssigned", "userAssignedIdentities": {identity.resource_id: {}}},
        "properties": {"runRequest": {**good_body(), "credentials": credentials, "values": values}},
    }
    path = f"{runner.resource_id}/taskRuns/gate-secrets-1"
    created = arm(env)("PUT", f"{path}?api-version={API}", json=body)
    assert created.status_code == 201, created.text
    shown = arm(env)("GET", f"{path}?api-version={API}")
    details = arm(env)("POST", f"{path}/listDetails?api-version={API}")
    assert shown.status_code == details.status_code == 200
    for answer in (created.text, shown.text):
        assert "pa55-w0rd" not in answer and "s3cr3t" not in answer
    request = details.json()["properties"]["runRequest"]
    assert request["credentials"] == credentials and request["values"] == values
    gone = arm(env)(
        "POST", f"{runner.resource_id}/taskRuns/nosuchrun/listDetails?api-version={API}"
    )
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "ResourceNotFound"
    wait_for_runs(env.emulator, runner.name)


@pytest.mark.podman
def test_a_delete_that_fails_twice_is_retried_and_verified(
    env: Env, runner: EmulatedRegistry
) -> None:
    env.emulator.faults.add(route="deleteTaskRun", status=500, times=2)
    with make_validator(env, runner, client_kwargs={"retry_total": 0}) as validator:
        result = validator.validate(request_for(env.green, key="rec6"), lambda _: None)
    assert result.outcome is Outcome.PASSED, result.log
    assert result.reason == f"run {result.run_id} succeeded"  # nothing left to report
    assert calls(env, runner, "deleteTaskRun") == [500, 500, 200]
    # the SDK's final GET of the creation, then the check after the delete that worked
    assert calls(env, runner, "getTaskRun") == [200, 404]
    assert task_runs_of(env.emulator, runner.name) == {}
    assert "could not be deleted" not in result.log


@pytest.mark.podman
def test_a_delete_answered_as_done_is_checked_and_repeated_while_the_task_run_stays(
    env: Env, runner: EmulatedRegistry
) -> None:
    env.emulator.faults.add(task_run_survives_delete=True, times=1)
    with make_validator(env, runner) as validator:
        result = validator.validate(request_for(env.green, key="rec7"), lambda _: None)
    assert result.outcome is Outcome.PASSED, result.log
    assert result.reason == f"run {result.run_id} succeeded"
    assert calls(env, runner, "deleteTaskRun") == [200, 200]
    # the creation's final GET, the check that found it still there, the check after the retry
    assert calls(env, runner, "getTaskRun") == [200, 200, 404]
    assert task_runs_of(env.emulator, runner.name) == {}


# ---------------------------------------------------------------------------------------------
# load: ARM throttling
# ---------------------------------------------------------------------------------------------

# every ARM route one validation uses (cancelRun: see the queueing tests)
VALIDATION_ROUTES = (
    "listBuildSourceUploadUrl",
    "createTaskRun",
    "taskRunOperationStatus",
    "getTaskRun",
    "getRun",
    "listLogSasUrl",
    "deleteTaskRun",
)


class RecordingSleep:
    """Really sleeps (runs take real time), and keeps what it was asked to sleep."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)
        time.sleep(seconds)


@pytest.mark.podman
@pytest.mark.parametrize(
    ("image", "verdict"), [("green", Outcome.PASSED), ("red", Outcome.REJECTED)]
)
def test_a_throttled_answer_on_every_arm_route_of_a_validation_leaves_its_verdict_alone(
    env: Env, runner: EmulatedRegistry, image: str, verdict: Outcome
) -> None:
    for route in VALIDATION_ROUTES:
        env.emulator.faults.add(route=route, status=429, retry_after=1)
    env.emulator.faults.add(run_delay=5.0, times=1)  # still running once created: polled
    sleep = RecordingSleep()  # polls sleep at most poll_max (0.5 s): waits of 1 s are retries
    with make_validator(env, runner, sleep=sleep) as validator:
        result = validator.validate(request_for(getattr(env, image)), lambda _: None)
        retries = validator.arm_retries
    assert result.outcome is verdict, result.log
    for route in VALIDATION_ROUTES:
        statuses = calls(env, runner, route)
        assert statuses[0] == 429 and 429 not in statuses[1:], (route, statuses)
    throttled = [c for c in env.emulator.throttled_calls() if runner.name in c.path]
    assert retries == len(throttled) == len(VALIDATION_ROUTES)
    assert sleep.slept.count(1.0) == len(VALIDATION_ROUTES)  # each Retry-After waited out
    assert [r.run_id for r in runs_of(env.emulator, runner.name)] == ["ca1"]  # one run only
    assert task_runs_of(env.emulator, runner.name) == {}


@pytest.mark.podman
def test_ten_percent_of_arm_requests_throttled_change_no_verdict_and_every_one_is_retried(
    env: Env, runner: EmulatedRegistry
) -> None:
    env.emulator.throttle_fraction, env.emulator.throttle_seed = 0.1, 7
    env.emulator.throttle_retry_after = 0  # Retry-After: 0, the test's 10 ms backoff
    before = len(env.emulator.throttled_calls())
    with make_validator(env, runner) as validator:
        results = [validator.validate(request_for(env.green), lambda _: None) for _ in range(2)]
        results.append(validator.validate(request_for(env.red), lambda _: None))
        retries = validator.arm_retries
    throttled = env.emulator.throttled_calls()[before:]
    assert [r.outcome for r in results] == [Outcome.PASSED, Outcome.PASSED, Outcome.REJECTED]
    assert throttled, "the seed throttles at least one request"
    assert retries == len(throttled)  # each answered 429 was retried, none given up
    assert len(runs_of(env.emulator, runner.name)) == 3


def test_a_retry_after_beyond_the_bound_is_not_waited_and_fails_the_validation_at_once(
    env: Env, runner: EmulatedRegistry
) -> None:
    env.emulator.throttle_every, env.emulator.throttle_retry_after = 1, 3600
    fake = FakeTime()
    started: list[str] = []
    with (
        make_validator(env, runner, sleep=fake.sleep, clock=fake.clock) as validator,
        pytest.raises(ValidatorError) as caught,
    ):
        validator.validate(request_for(env.green), started.append)
    assert caught.value.message.startswith(
        f"ACR task run on registry {runner.name} failed: 429 TooManyRequests"
    )
    assert fake.slept == []  # an hour's Retry-After is not slept, and not retried early
    assert calls(env, runner, "listBuildSourceUploadUrl") == [429]
    assert started == [] and runs_of(env.emulator, runner.name) == []


def test_arm_throttling_retries_are_bounded_in_number_and_in_each_wait(
    env: Env, runner: EmulatedRegistry
) -> None:
    env.emulator.throttle_every, env.emulator.throttle_retry_after = 1, 5
    fake = FakeTime()
    with (
        make_validator(
            env, runner, sleep=fake.sleep, clock=fake.clock, client_kwargs={"retry_status": 2}
        ) as validator,
        pytest.raises(ValidatorError, match="429 TooManyRequests"),
    ):
        validator.validate(request_for(env.green), lambda _: None)
    # two retries, each after the 5 s asked, then the third 429 is the answer
    assert fake.slept == [5.0, 5.0]
    assert calls(env, runner, "listBuildSourceUploadUrl") == [429, 429, 429]


# ---------------------------------------------------------------------------------------------
# load: runs waiting in ACR's queue
# ---------------------------------------------------------------------------------------------


def occupy_the_agent(env: Env, registry: EmulatedRegistry, seconds: float) -> str:
    """Let ``registry`` run one run at once, and start one that keeps it ``seconds``."""
    env.emulator.set_concurrent_runs(registry.name, 1)
    env.emulator.faults.add(run_delay=seconds, times=1)
    path = f"{registry.resource_id}/scheduleRun?api-version={API}"
    answer = arm(env)("POST", path, json=good_body())
    assert answer.status_code == 200, answer.text
    run_id = str(answer.json()["properties"]["runId"])
    for _ in range(100):  # until its thread took the agent
        if runs_of(env.emulator, registry.name)[0].status == "Running":
            return run_id
        time.sleep(0.02)
    raise AssertionError("the occupying run never started")


@pytest.mark.podman
def test_a_run_queued_longer_than_its_timeout_is_not_failed_and_its_timeout_counts_from_its_start(
    env: Env, runner: EmulatedRegistry
) -> None:
    occupy_the_agent(env, runner, 8.0)
    with make_validator(env, runner, deadline_margin=2.0) as validator:
        result = validator.validate(request_for(env.green, timeout_seconds=4), lambda _: None)
    assert result.outcome is Outcome.PASSED, result.reason
    blocker, run = runs_of(env.emulator, runner.name)
    assert run.run_id == result.run_id and run.start_time is not None
    assert blocker.finish_time is not None and run.start_time >= blocker.finish_time
    # it waited longer in the queue than its whole allowance (4 s + 2 s), and still passed
    assert (run.start_time - run.create_time).total_seconds() > 6.0


def test_a_run_that_never_leaves_the_queue_is_cancelled_after_the_queue_bound_and_fails(
    env: Env, runner: EmulatedRegistry
) -> None:
    blocker = occupy_the_agent(env, runner, 600.0)
    env.emulator.faults.add(route="cancelRun", status=429, retry_after=1)  # survives throttling
    fake = FakeTime()
    try:
        with make_validator(
            env, runner, max_queue_wait=30.0, sleep=fake.sleep, clock=fake.clock
        ) as validator:
            result = validator.validate(request_for(env.green, timeout_seconds=1), lambda _: None)
    finally:
        arm(env)("POST", f"{runner.resource_id}/runs/{blocker}/cancel?api-version={API}")
    assert result.outcome is Outcome.FAILED  # says nothing about the image: never REJECTED
    assert result.reason.startswith(
        f"run {result.run_id} waited in ACR's queue on registry {runner.name} for more than "
        "30 s without starting; it was cancelled."
    ), result.reason
    # the validation timeout (1 s) never applied: the run had not started
    assert sum(s for s in fake.slept if s != 1.0) == pytest.approx(30.0)
    assert calls(env, runner, "cancelRun")[:3] == [429, 200, 200]  # ours, then the blocker's
    run = next(r for r in runs_of(env.emulator, runner.name) if r.run_id == result.run_id)
    assert run.status == "Canceled" and run.start_time is None


@pytest.mark.podman
def test_the_task_run_carries_the_runner_registrys_location_and_arm_echoes_it(
    env: Env, runner: EmulatedRegistry
) -> None:
    # kept after its deletion, so that the resource ARM stored can be looked at
    env.emulator.faults.add(task_run_survives_delete=True, times=DELETE_ATTEMPTS)
    with make_validator(env, runner, location=env.emulator.location) as validator:
        result = validator.validate(request_for(env.green, key="loc1"), lambda _: None)
    assert result.outcome is Outcome.PASSED, result.log
    (kept,) = task_runs_of(env.emulator, runner.name).values()
    assert kept.location == env.emulator.location == "westeurope"
    shown = arm(env)("GET", f"{kept.resource_id()}?api-version={API}")
    assert shown.json()["location"] == "westeurope"
