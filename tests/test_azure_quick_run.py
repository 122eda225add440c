"""The ACR quick-run validator with the real SDK client against the ACR emulator.

The emulator serves ARM over HTTPS (its CA exported as ``REQUESTS_CA_BUNDLE``) and really runs
each scheduled run's task file with podman, from the uploaded source archive; candidates are
busybox images in an emulated registry's backing ``docker-registry``. Every test runs its quick
runs on a registry of its own, so the emulator's run book and ARM call log count only its runs.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.images import build_image
from gate.adapters.azure.quick_run import (
    AcrQuickRunValidator,
    pack_folder,
    parse_step_failure,
    redact_urls,
)
from gate.errors import ConfigError, ValidatorError
from gate.model import Outcome
from gate.ports import Resume, ValidationRequest
from gate.ref import ImageRef
from tests.acr_emulator import AcrEmulator, EmulatedRegistry
from tests.acr_emulator.tasks import runs_of, wait_for_runs

SEED = Path(__file__).resolve().parent.parent / "examples" / "seed" / "validation"
API = "2025-03-01-preview"
_names = itertools.count(1)


@dataclass(frozen=True)
class Env:
    """The emulator and the walkthrough's two candidates in its upstream registry."""

    emulator: AcrEmulator
    green: ImageRef
    red: ImageRef


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, podman_env: dict[str, str]) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("quick-run")
    saved = {key: os.environ.get(key) for key in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")}
    with AcrEmulator(root / "emulator") as emulator:
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
            yield Env(
                emulator=emulator,
                green=ImageRef.parse(f"{host}/seed/app@{pushed['Green']}"),
                red=ImageRef.parse(f"{host}/seed/app@{pushed['Red']}"),
            )
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture
def runner(env: Env) -> Iterator[EmulatedRegistry]:
    """A registry of this test's own that runs its quick runs; faults cleared afterwards."""
    env.emulator.faults.clear()
    registry = env.emulator.add_registry(f"runner{next(_names)}")
    yield registry
    env.emulator.faults.clear()
    wait_for_runs(env.emulator, registry.name)


def make_validator(env: Env, registry: EmulatedRegistry, **options: Any) -> AcrQuickRunValidator:
    settings: dict[str, Any] = {
        "poll_initial": 0.05,
        "poll_max": 0.5,
        "client_kwargs": {"retry_backoff_factor": 0.01},
    }
    settings.update(options)
    return AcrQuickRunValidator(
        credential=env.emulator.credential(),
        subscription_id=env.emulator.subscription_id,
        resource_group=registry.resource_group,
        registry=registry.name,
        arm_endpoint=env.emulator.arm_endpoint,
        **settings,
    )


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
    assert calls(env, runner, "scheduleRun") == [200]
    assert calls(env, runner, "listLogSasUrl") == [200]
    assert calls(env, runner, "getRun") and set(calls(env, runner, "getRun")) == {200}
    assert calls(env, runner, "listRuns") == calls(env, runner, "cancelRun") == []


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
def test_schedule_run_body_carries_task_values_platform_timeout_and_source(
    env: Env, runner: EmulatedRegistry
) -> None:
    with make_validator(env, runner, architecture="amd64") as validator:
        result = validator.validate(
            request_for(env.green, values={"EXTRA": "x"}, timeout_seconds=42), lambda _: None
        )
    assert result.outcome is Outcome.PASSED, result.log
    (run,) = runs_of(env.emulator, runner.name)
    body = run.body
    assert body["type"] == "EncodedTaskRunRequest"
    assert base64.b64decode(body["encodedTaskContent"]) == (SEED / "acr-task.yaml").read_bytes()
    assert body["values"] == [
        {"name": "IMAGE", "value": str(env.green), "isSecret": False},
        {"name": "EXTRA", "value": "x", "isSecret": False},
    ]
    assert body["platform"] == {"os": "Linux", "architecture": "amd64"}
    assert body["timeout"] == 300  # ACR's minimum; our own deadline keeps the 42 s
    assert body["sourceLocation"].startswith("source/") and "credentials" not in body
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
    # The registry's identity cannot read the credentials: ACR fails the run at login, before
    # any step; that says nothing about the image.
    missing = f"{env.emulator.key_vault_url}/secrets/no-such-secret"
    with make_validator(
        env, runner, custom_registries={"private.example.io": (missing, missing)}
    ) as validator:
        result = validator.validate(request_for(env.green), lambda _: None)
    assert result.outcome is Outcome.FAILED, result.log
    assert result.reason.startswith("run ca1 failed before any step failed (failed during run")
    assert "Logging in to registry: private.example.io" in result.log


@pytest.mark.podman
def test_custom_registry_credentials_are_key_vault_references_read_by_the_identity(
    env: Env, runner: EmulatedRegistry
) -> None:
    user = env.emulator.set_secret("pull-user", "reader")
    password = env.emulator.set_secret("pull-password", "pa55-w0rd")
    with make_validator(
        env,
        runner,
        custom_registries={"private.example.io": (user, password)},
        identity="11111111-aaaa-bbbb-cccc-222222222222",
    ) as validator:
        result = validator.validate(request_for(env.green), lambda _: None)
    assert result.outcome is Outcome.PASSED, result.log
    (run,) = runs_of(env.emulator, runner.name)
    assert run.body["credentials"] == {
        "customRegistries": {
            "private.example.io": {
                "userName": {"type": "Vaultsecret", "value": user},
                "password": {"type": "Vaultsecret", "value": password},
                "identity": "11111111-aaaa-bbbb-cccc-222222222222",
            }
        }
    }
    assert run.to_json()["properties"]["customRegistries"] == ["private.example.io"]


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
        "run ca1 did not finish within the validation timeout of 3 s (+2 s for queueing); "
        "it was cancelled"
    ), result.reason
    assert calls(env, runner, "cancelRun") == [200]
    assert runs_of(env.emulator, runner.name)[0].status == "Canceled"
    assert sum(fake.slept) == pytest.approx(5.0)
    # Backoff: the interval doubles up to poll_max, so five seconds take a handful of polls.
    assert len(calls(env, runner, "getRun")) == len(fake.slept) < 15


@pytest.mark.podman
def test_throttled_schedule_run_is_retried_by_the_sdk_and_schedules_once(
    env: Env, runner: EmulatedRegistry
) -> None:
    env.emulator.faults.add(route="scheduleRun", status=429, retry_after=1, times=1)
    with make_validator(env, runner) as validator:
        result = validator.validate(request_for(env.green), lambda _: None)
    assert result.outcome is Outcome.PASSED, result.log
    assert calls(env, runner, "scheduleRun") == [429, 200]
    assert [r.run_id for r in runs_of(env.emulator, runner.name)] == ["ca1"]


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
def test_resume_with_a_run_id_follows_that_run_without_scheduling(
    env: Env, runner: EmulatedRegistry
) -> None:
    with make_validator(env, runner) as validator:
        first = validator.validate(request_for(env.red), lambda _: None)
        started: list[str] = []
        resumed = validator.validate(
            request_for(env.red), started.append, Resume(first.run_id, datetime.now(UTC))
        )
    assert (resumed.outcome, resumed.run_id, resumed.reason) == (
        first.outcome,
        first.run_id,
        first.reason,
    )
    assert started == []
    assert calls(env, runner, "scheduleRun") == [200]
    assert calls(env, runner, "listBuildSourceUploadUrl") == [200]
    assert len(runs_of(env.emulator, runner.name)) == 1


@pytest.mark.podman
def test_resume_with_a_run_id_acr_does_not_know_starts_a_new_run(
    env: Env, runner: EmulatedRegistry
) -> None:
    started: list[str] = []
    with make_validator(env, runner) as validator:
        result = validator.validate(
            request_for(env.green), started.append, Resume("lr0000000000000", datetime.now(UTC))
        )
    assert result.outcome is Outcome.PASSED, result.log
    assert started == ["ca1"]


class Crash(Exception):
    """The worker dies right after ACR scheduled the run, before it recorded the ID."""


def crash(run_id: str) -> None:
    raise Crash(run_id)


@pytest.mark.podman
def test_worker_that_died_after_scheduling_adopts_its_orphan_run_on_resume(
    env: Env, runner: EmulatedRegistry
) -> None:
    since = datetime.now(UTC)
    with make_validator(env, runner) as validator:
        with pytest.raises(Crash):
            validator.validate(request_for(env.red), crash)
        started: list[str] = []
        result = validator.validate(request_for(env.red), started.append, Resume(None, since))
    assert result.outcome is Outcome.REJECTED, result.log
    assert started == [result.run_id] == ["ca1"]
    assert calls(env, runner, "scheduleRun") == [200]
    assert len(runs_of(env.emulator, runner.name)) == 1
    assert calls(env, runner, "listRuns")


@pytest.mark.podman
def test_orphan_still_before_its_steps_is_adopted_once_its_log_shows_the_image(
    env: Env, runner: EmulatedRegistry
) -> None:
    env.emulator.faults.add(run_delay=3.0, times=1)  # logged in, steps not started yet
    since = datetime.now(UTC)
    with make_validator(env, runner) as validator:
        with pytest.raises(Crash):
            validator.validate(request_for(env.green), crash)
        result = validator.validate(request_for(env.green), lambda _: None, Resume(None, since))
    assert result.outcome is Outcome.PASSED, result.log
    assert result.run_id == "ca1" and calls(env, runner, "scheduleRun") == [200]
    # Looked again while the orphan's log did not show the image yet; one log link for it.
    assert len(calls(env, runner, "listRuns")) >= 2
    assert calls(env, runner, "listLogSasUrl") == [200]


@pytest.mark.podman
def test_orphan_search_ignores_a_run_that_validated_another_image(
    env: Env, runner: EmulatedRegistry
) -> None:
    since = datetime.now(UTC)
    with make_validator(env, runner) as validator:
        stranger = validator.validate(request_for(env.green), lambda _: None)
        started: list[str] = []
        result = validator.validate(request_for(env.red), started.append, Resume(None, since))
    assert stranger.outcome is Outcome.PASSED
    assert result.outcome is Outcome.REJECTED, result.log
    assert started == [result.run_id] == ["ca2"]
    assert calls(env, runner, "scheduleRun") == [200, 200]


def test_orphan_search_ignores_runs_created_before_the_window(
    env: Env, runner: EmulatedRegistry
) -> None:
    env.emulator.faults.add(run_outcome="Failed", times=2)
    with make_validator(env, runner) as validator:
        validator.validate(request_for(env.green), lambda _: None)
        later = datetime.now(UTC) + timedelta(hours=1)
        result = validator.validate(request_for(env.green), lambda _: None, Resume(None, later))
    assert result.run_id == "ca2"
    assert calls(env, runner, "scheduleRun") == [200, 200]


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
    validator = AcrQuickRunValidator(
        credential=env.emulator.credential(),
        subscription_id=env.emulator.subscription_id,
        resource_group="rg",
        registry="nosuchregistry",
        arm_endpoint=env.emulator.arm_endpoint,
    )
    with validator, pytest.raises(ValidatorError) as caught:
        validator.validate(request_for(env.green), lambda _: None)
    assert caught.value.message.startswith(
        "ACR quick run on registry nosuchregistry failed: 404 ResourceNotFound: "
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
def test_runs_list_filter_knows_the_forms_the_validator_uses(
    env: Env, runner: EmulatedRegistry, query: str, status: int
) -> None:
    path = f"{runner.resource_id}/runs"
    response = arm(env)("GET", path, params={"api-version": API, "$filter": query, "$top": "5"})
    assert response.status_code == status, response.text


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
