"""Promote modes (import, push) and downstream tasks, through the real SDK clients against the
ACR emulator, real docker-registry processes, real podman and a real Azurite.

The emulator tells the modes apart the way ACR would: a push goes through the data plane (and
fires base-image triggers), an import through ARM (and, undocumented either way, fires none by
default). The downstream hello-world task really runs (podman) in the emulated registry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import textwrap
from collections.abc import Iterator
from copy import replace
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.acr import AcrEmulator, EmulatedRegistry
from devstack.acr.downstream import pushes, task_runs
from devstack.acr.tasks import runs_of, wait_for_runs
from devstack.azurite import AzuriteProcess
from devstack.images import ImageBuilder, tag_digests
from gate.adapters.downstream.acr_task import AcrTaskDownstream
from gate.adapters.registry.acr_push import AcrPushRegistry
from gate.adapters.registry.oci import OciRegistry
from gate.adapters.secrets.local import LocalSecrets
from gate.compose import build_gatekeeper
from gate.config.loading import load_config
from gate.config.model import DownstreamTask
from gate.domain.records import GateRecord, State
from gate.domain.ref import ImageRef
from gate.errors import AuthenticationError, ConfigError, Conflict
from gate.usecases import audit
from gate.usecases.downstream import retry_downstream
from gate.usecases.gating import gate_image
from gate.usecases.keeper import Gatekeeper
from gate.usecases.rollback import rollback
from tests.e2e.test_azure_gate import quick, tables  # noqa: F401  (tables is a fixture)
from tests.emulated import oci_hosts

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "seed" / "validation"
HELLO_WORLD = textwrap.dedent(
    """\
    version: v1.1.0
    steps:
      - id: hello
        cmd: "{{.Values.BASE_IMAGE}} -c 'echo hello-world'"
        entryPoint: sh
    """
)


@dataclass
class Cloud:
    """The emulated Azure side: base-artifacts with a hello-world task, and an upstream.

    The upstream is a public registry reached anonymously (a registry on loopback, over plain
    HTTP): nothing here needs a run to log in to it.
    """

    emulator: AcrEmulator
    upstream: EmulatedRegistry
    base: EmulatedRegistry
    images: ImageBuilder
    tmp_path: Path
    tables: AzuriteProcess

    def push(self, color: str) -> str:
        return self.images.image(
            f"{self.upstream.backing.host}/node:15-alpine", env={"BACKGROUND_COLOR": color}
        )

    def keeper(self, promote: str, downstream: str = "") -> Gatekeeper:
        path = self.tmp_path / f"gate-{promote}.yaml"
        path.write_text(
            textwrap.dedent(
                f"""\
                registries:
                  - host: "{self.upstream.backing.host}"
                    insecure: true
                azure:
                  subscription_id: "{self.emulator.subscription_id}"
                  arm_endpoint: "{self.emulator.arm_endpoint}"
                  registry:
                    name: {self.base.name}
                    resource_group: {self.base.resource_group}
                    login_server: "{self.base.login_server}"
                    promote: {promote}
                  ledger:
                    connection_string: "{self.tables.connection_string}"
                    table: gate{self.tmp_path.name[-8:].replace("_", "")}{promote}
                rules:
                  - name: node
                    source: "{self.upstream.backing.host}/node"
                    tags: ["15-alpine"]
                    target: "{self.base.login_server}/node"
                    validation: {{folder: "{SEED}", timeout: 300}}
                """
            )
            + (f"    downstream: {downstream}\n" if downstream else "")
        )
        keeper = build_gatekeeper(load_config(path), credential=self.emulator.credential())
        return quick(keeper, self.emulator, self.base)

    def gate(self, keeper: Gatekeeper) -> GateRecord:
        return gate_image(keeper, f"{self.upstream.backing.host}/node:15-alpine").record

    def target_tags(self) -> dict[str, str]:
        return tag_digests(self.base.backing.host, "node")

    def arm(self, name: str) -> int:
        return len(self.emulator.arm_calls(name))

    def settle(self) -> None:
        """Wait for every run (validation and downstream) of the base registry to end."""
        wait_for_runs(self.emulator, self.base.name)


@pytest.fixture
def cloud(
    tmp_path: Path,
    acr_emulator: AcrEmulator,
    tables: AzuriteProcess,  # noqa: F811
    podman_env: dict[str, str],
    image_builder: ImageBuilder,
) -> Iterator[Cloud]:
    up = acr_emulator.add_registry("publicregistry", "public-rg")
    base = acr_emulator.add_registry("baseartifacts", "base-rg")
    acr_emulator.add_task(
        base.name,
        "hello-world",
        HELLO_WORLD,
        values={"BASE_IMAGE": f"{base.login_server}/node:15-alpine"},
        base_image=f"{base.login_server}/node:15-alpine",
    )
    cloud = Cloud(acr_emulator, up, base, image_builder, tmp_path, tables)
    yield cloud
    cloud.settle()


def _decision_line(record: GateRecord, caplog: pytest.LogCaptureFixture) -> dict[str, object]:
    with caplog.at_level(logging.INFO, logger="gate.audit"):
        audit.log_decision(record)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "gate.audit"]
    assert line.startswith("GATE_DECISION ")
    decoded: dict[str, object] = json.loads(line.removeprefix("GATE_DECISION "))
    return decoded


# -- the two modes -------------------------------------------------------------------------------


def test_push_mode_pushes_the_validated_digest_and_never_imports(cloud: Cloud) -> None:
    green = cloud.push("Green")

    record = cloud.gate(cloud.keeper("push"))

    assert record.state is State.PROMOTED, record.reason
    unique, stable = record.target_tags
    assert record.digest == green
    assert cloud.target_tags() == {unique: green, stable: green}
    lock = cloud.base.tag("node", unique)
    assert (lock.write_enabled, lock.delete_enabled) == (False, False)
    assert cloud.arm("importImage") == 0
    seen = [(p.repository, p.tag, p.digest) for p in pushes(cloud.emulator)]
    assert seen == [("node", unique, green), ("node", stable, green)]  # run-ID tag first


def test_import_mode_imports_and_pushes_nothing(cloud: Cloud) -> None:
    green = cloud.push("Green")

    record = cloud.gate(cloud.keeper("import"))

    assert record.state is State.PROMOTED, record.reason
    assert cloud.target_tags() == {record.target_tags[0]: green, record.target_tags[1]: green}
    assert cloud.arm("importImage") == 2
    assert pushes(cloud.emulator) == []


# -- what reaches hello-world ------------------------------------------------------------------


def test_push_mode_alone_triggers_hello_world_through_its_base_image(cloud: Cloud) -> None:
    green = cloud.push("Green")

    record = cloud.gate(cloud.keeper("push"))

    assert record.state is State.PROMOTED and record.downstream == ()
    (run,) = task_runs(cloud.emulator, "hello-world")
    assert run.trigger == "Image Update"
    cloud.settle()
    body = run.run.to_json()["properties"]
    assert body["status"] == "Succeeded" and body["task"] == "hello-world"
    (image,) = body["imageUpdateTrigger"]["images"]
    assert (image["repository"], image["tag"], image["digest"]) == ("node", "15-alpine", green)


def test_import_mode_alone_runs_nothing_downstream(cloud: Cloud) -> None:
    cloud.push("Green")

    record = cloud.gate(cloud.keeper("import"))

    assert record.state is State.PROMOTED
    cloud.settle()
    assert task_runs(cloud.emulator) == []  # the undocumented case is not assumed
    assert [r.task for r in runs_of(cloud.emulator, cloud.base.name)] == [None]  # validation


def test_import_that_fires_triggers_is_an_emulator_switch_not_an_assumption(cloud: Cloud) -> None:
    cloud.emulator.import_fires_base_image_triggers = True
    cloud.push("Green")

    cloud.gate(cloud.keeper("import"))

    assert [r.trigger for r in task_runs(cloud.emulator, "hello-world")] == ["Image Update"]


@pytest.mark.parametrize("promote", ["import", "push"])
def test_downstream_task_runs_after_the_promotion_and_is_recorded(
    cloud: Cloud, promote: str, caplog: pytest.LogCaptureFixture
) -> None:
    green = cloud.push("Green")
    keeper = cloud.keeper(promote, downstream="[hello-world]")

    record = cloud.gate(keeper)

    assert record.state is State.PROMOTED, record.reason
    manual = [r for r in task_runs(cloud.emulator, "hello-world") if r.trigger == "Manual"]
    (run,) = manual
    (entry,) = record.downstream
    assert (entry.registry, entry.task, entry.run_id, entry.error) == (
        cloud.base.name,
        "hello-world",
        run.run_id,
        "",
    )
    assert keeper.ledger.get(record.id).downstream == record.downstream
    line = _decision_line(record, caplog)
    assert line["downstream"] == [
        {"registry": cloud.base.name, "task": "hello-world", "run_id": run.run_id, "error": ""}
    ]
    # in push mode the base-image trigger runs it as well; in import mode only the gate does
    triggered = [r for r in task_runs(cloud.emulator, "hello-world") if r.trigger != "Manual"]
    assert len(triggered) == (1 if promote == "push" else 0)
    cloud.settle()
    assert run.run.to_json()["properties"]["status"] == "Succeeded"
    assert cloud.target_tags()["15-alpine"] == green


def test_downstream_failure_leaves_the_promotion_promoted_and_is_recorded(cloud: Cloud) -> None:
    green = cloud.push("Green")
    keeper = cloud.keeper("import", downstream="[hello-world, missing-task]")

    record = cloud.gate(keeper)

    assert record.state is State.PROMOTED
    assert cloud.target_tags()["15-alpine"] == green
    ok, failed = record.downstream
    assert ok.task == "hello-world" and ok.run_id is not None
    assert failed.task == "missing-task" and failed.run_id is None
    assert "not found" in failed.error and "missing-task" in failed.error
    stored = keeper.ledger.get(record.id)
    assert stored.state is State.PROMOTED and stored.downstream == record.downstream

    # retried once the task exists: only the one that failed is queued again
    cloud.emulator.add_task(
        cloud.base.name,
        "missing-task",
        HELLO_WORLD,
        values={"BASE_IMAGE": f"{cloud.base.login_server}/node:15-alpine"},
    )
    retried = retry_downstream(keeper, record.id)

    assert retried.downstream[0] == ok
    assert retried.downstream[1].run_id == task_runs(cloud.emulator, "missing-task")[0].run_id
    assert len(task_runs(cloud.emulator, "hello-world")) == 1
    assert keeper.ledger.get(record.id).downstream == retried.downstream


def test_downstream_scheduling_refused_by_arm_is_recorded_not_raised(cloud: Cloud) -> None:
    cloud.push("Green")
    keeper = cloud.keeper("push", downstream="[hello-world]")
    inner = keeper.validator

    class ThenArmFails:
        """The Validator port: validates, then every later scheduleRun answers 500."""

        def validate(self, *args: Any, **kwargs: Any) -> Any:
            result = inner.validate(*args, **kwargs)
            cloud.emulator.faults.add(route="scheduleRun", status=500, times=1000)
            return result

    record = cloud.gate(replace(keeper, validator=ThenArmFails()))

    assert record.state is State.PROMOTED
    (entry,) = record.downstream
    assert entry.run_id is None and "500" in entry.error
    assert [r.trigger for r in task_runs(cloud.emulator, "hello-world")] == ["Image Update"]


def test_rejected_image_schedules_no_downstream_run(cloud: Cloud) -> None:
    red = cloud.push("Red")

    record = cloud.gate(cloud.keeper("push", downstream="[hello-world]"))

    assert record.state is State.REJECTED and record.digest == red
    assert record.downstream == ()
    assert task_runs(cloud.emulator) == []
    assert pushes(cloud.emulator) == []
    assert "task_run_requests" not in cloud.emulator.state  # no TaskRunRequest reached ARM


# -- the push adapter on its own ----------------------------------------------------------------


def _push_registry(
    emulator: AcrEmulator, up: EmulatedRegistry, base: EmulatedRegistry, credential: Any = None
) -> AcrPushRegistry:
    return AcrPushRegistry(
        credential=credential or emulator.credential(),
        subscription_id=emulator.subscription_id,
        target_resource_group=base.resource_group,
        target_registry=base.name,
        target_login_server=base.login_server,
        arm_endpoint=emulator.arm_endpoint,
        acr_sources={up.login_server: up.resource_id},
        secrets=LocalSecrets(env={}),
        oci=OciRegistry(oci_hosts(emulator)),
    )


def test_push_copies_a_multi_arch_index_whole(
    acr_emulator: AcrEmulator, image_builder: ImageBuilder
) -> None:
    up = acr_emulator.add_registry("upstreamacr")
    base = acr_emulator.add_registry("targetacr")
    index = image_builder.index(f"{up.backing.host}/tools:1")
    registry = _push_registry(acr_emulator, up, base)

    report = registry.copy(
        ImageRef(up.login_server, "tools", digest=index),
        ImageRef(base.login_server, "tools"),
        immutable_tags=("1-ca1",),
        tags=("1",),
    )

    assert report.digest == index and report.manifests == 3  # the index and both children
    assert tag_digests(base.backing.host, "tools") == {"1-ca1": index, "1": index}
    children = httpx.get(
        f"{up.backing.url}/v2/tools/manifests/{index}",
        headers={"Accept": "application/vnd.oci.image.index.v1+json"},
    ).json()["manifests"]
    with OciRegistry(oci_hosts(acr_emulator)) as oci:
        for child in children:
            wanted = ImageRef(base.backing.host, "tools", digest=child["digest"])
            assert oci.resolve(wanted) == child["digest"]
    registry.close()


def test_push_never_moves_a_run_id_tag_at_another_digest(
    acr_emulator: AcrEmulator, image_builder: ImageBuilder
) -> None:
    up = acr_emulator.add_registry("upstreamacr")
    base = acr_emulator.add_registry("targetacr")
    old = image_builder.image(f"{base.backing.host}/node:15-alpine-ca1", env={"V": "old"})
    new = image_builder.image(f"{up.backing.host}/node:15-alpine", env={"V": "new"})
    registry = _push_registry(acr_emulator, up, base)

    with pytest.raises(Conflict, match="15-alpine-ca1"):
        registry.copy(
            ImageRef(up.login_server, "node", digest=new),
            ImageRef(base.login_server, "node"),
            immutable_tags=("15-alpine-ca1",),
            tags=("15-alpine",),
        )

    assert tag_digests(base.backing.host, "node") == {"15-alpine-ca1": old}
    assert pushes(acr_emulator) == []
    registry.close()


def test_push_needs_an_acr_token_with_push_scope(acr_emulator: AcrEmulator) -> None:
    base = acr_emulator.add_registry("targetacr")
    answer = httpx.post(f"https://{base.login_server}/v2/node/blobs/uploads/")
    assert answer.status_code == 401
    assert 'scope="repository:node:push"' in answer.headers["www-authenticate"]


def test_downstream_adapter_names_the_task_by_arm_id(acr_emulator: AcrEmulator) -> None:
    base = acr_emulator.add_registry("targetacr", "base-rg")
    acr_emulator.add_task(base.name, "hello-world", "version: v1.1.0\nsteps: []\n")
    runner = AcrTaskDownstream(
        credential=acr_emulator.credential(),
        subscription_id=acr_emulator.subscription_id,
        arm_endpoint=acr_emulator.arm_endpoint,
    )
    task = DownstreamTask("hello-world", base.name, "base-rg")

    run = runner.start(task, ImageRef(base.login_server, "node", "15-alpine", "sha256:" + "a" * 64))

    (record,) = task_runs(acr_emulator, "hello-world")
    assert run.run_id == record.run_id and record.trigger == "Manual"
    body = acr_emulator.state["task_run_requests"][-1]
    assert body == {"type": "TaskRunRequest", "taskId": task.task_id(acr_emulator.subscription_id)}
    with pytest.raises(ConfigError, match="not found"):
        runner.start(
            DownstreamTask("nosuchtask", base.name, "base-rg"), ImageRef(base.login_server, "node")
        )
    wait_for_runs(acr_emulator, base.name)
    runner.close()


def test_a_throttled_schedule_run_is_retried_after_its_retry_after_and_queues_one_run(
    acr_emulator: AcrEmulator,
) -> None:
    base = acr_emulator.add_registry("targetacr", "base-rg")
    acr_emulator.add_task(base.name, "hello-world", "version: v1.1.0\nsteps: []\n")
    acr_emulator.faults.add(route="scheduleRun", status=429, retry_after=1, times=2)
    runner = AcrTaskDownstream(
        credential=acr_emulator.credential(),
        subscription_id=acr_emulator.subscription_id,
        arm_endpoint=acr_emulator.arm_endpoint,
    )

    run = runner.start(
        DownstreamTask("hello-world", base.name, "base-rg"), ImageRef(base.login_server, "node")
    )

    (record,) = task_runs(acr_emulator, "hello-world")  # a POST, yet only one run queued
    assert run.run_id == record.run_id
    assert [c.status for c in acr_emulator.arm_calls("scheduleRun")] == [429, 429, 200]
    wait_for_runs(acr_emulator, base.name)
    runner.close()


def test_push_with_an_identity_acr_does_not_know_is_an_authentication_error(
    acr_emulator: AcrEmulator, image_builder: ImageBuilder
) -> None:
    from devstack.acr.core import TestCredential, TokenBook

    up = acr_emulator.add_registry("upstreamacr")
    base = acr_emulator.add_registry("targetacr")
    digest = image_builder.image(f"{up.backing.host}/node:15-alpine")
    # an identity whose tokens this ACR never saw (another tenant's, say)
    stranger = TestCredential(TokenBook("another-tenant"))
    registry = _push_registry(acr_emulator, up, base, stranger)

    with pytest.raises(AuthenticationError, match="AcrPush") as caught:
        registry.copy(
            ImageRef(up.login_server, "node", digest=digest),
            ImageRef(base.login_server, "node"),
            immutable_tags=("15-alpine-ca1",),
            tags=("15-alpine",),
        )

    assert "Repository Writer" in caught.value.message
    assert tag_digests(base.backing.host, "node") == {}
    registry.close()


def test_rollback_in_push_mode_is_a_push_and_rebuilds_downstream(cloud: Cloud) -> None:
    keeper = cloud.keeper("push")
    green = cloud.push("Green")
    first = cloud.gate(keeper)
    blue = cloud.push("Blue")
    second = cloud.gate(keeper)
    assert (first.state, second.state) == (State.PROMOTED, State.PROMOTED)

    rollback(keeper, f"{cloud.base.login_server}/node", reason="blue breaks the app")

    assert cloud.target_tags()["15-alpine"] == green
    updates = [
        r.run.to_json()["properties"]["imageUpdateTrigger"]["images"][0]["digest"]
        for r in task_runs(cloud.emulator, "hello-world")
    ]
    assert updates == [green, blue, green]


def test_push_within_one_acr_mounts_blobs_across_repositories(
    acr_emulator: AcrEmulator, image_builder: ImageBuilder
) -> None:
    base = acr_emulator.add_registry("targetacr")
    digest = image_builder.image(f"{base.backing.host}/staging/node:15-alpine")
    registry = _push_registry(acr_emulator, base, base)

    report = registry.copy(
        ImageRef(base.login_server, "staging/node", digest=digest),
        ImageRef(base.login_server, "node"),
        tags=("15-alpine",),
    )

    assert report.blobs_mounted >= 2 and report.blobs_copied == 0  # config and layer(s)
    assert tag_digests(base.backing.host, "node") == {"15-alpine": digest}
    registry.close()


def test_chunked_blob_upload_through_the_emulated_data_plane(acr_emulator: AcrEmulator) -> None:
    base = acr_emulator.add_registry("targetacr")
    login = base.login_server
    aad = acr_emulator.credential().get_token("https://containerregistry.azure.net/.default")
    refresh = httpx.post(
        f"https://{login}/oauth2/exchange",
        data={"grant_type": "access_token", "service": login, "access_token": aad.token},
    ).json()["refresh_token"]
    access = httpx.post(
        f"https://{login}/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "service": login,
            "scope": "repository:blobs/test:pull,push",
            "refresh_token": refresh,
        },
    ).json()["access_token"]
    auth = {"Authorization": f"Bearer {access}"}
    data = b"0123456789" * 1000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    with httpx.Client(base_url=f"https://{login}", headers=auth) as client:
        started = client.post("/v2/blobs/test/blobs/uploads/")
        assert started.status_code == 202
        patched = client.patch(
            started.headers["location"],
            content=data[:4000],
            headers={"Content-Type": "application/octet-stream"},
        )
        assert patched.status_code == 202
        location = patched.headers["location"]
        separator = "&" if "?" in location else "?"
        done = client.put(f"{location}{separator}digest={digest}", content=data[4000:])
        assert done.status_code == 201
        assert client.head(f"/v2/blobs/test/blobs/{digest}").status_code == 200
