"""The whole gate on its Azure adapters, through the real SDK clients, against the ACR emulator
(ARM import, task runs with a user-assigned identity, ACR data plane) and a real Azurite (Table ledger): the walkthrough, the
duplicate that costs nothing, a crash between scheduling a run and recording it, and a fault
matrix: for each fault, the verdict, the ledger state and the target's tags."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from copy import replace
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack.acr import AcrEmulator, EmulatedIdentity, EmulatedRegistry
from devstack.acr.task_runs import task_runs_of
from devstack.acr.tasks import runs_of, wait_for_runs
from devstack.azurite import AzuriteProcess
from devstack.images import ImageBuilder, tag_digests
from gate.adapters.validation.acr_task_run import AcrTaskRunValidator
from gate.compose import LazyValidator, build_gatekeeper
from gate.config.loading import load_config
from gate.domain.records import GateRecord, State, utcnow
from gate.usecases.gating import gate_image
from gate.usecases.keeper import Gatekeeper

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "seed" / "validation"
_tables = itertools.count(1)


@dataclass
class Cloud:
    """The emulated Azure side of one test."""

    emulator: AcrEmulator
    upstream: EmulatedRegistry
    base: EmulatedRegistry
    images: ImageBuilder
    keeper: Gatekeeper
    config_path: Path

    def push(self, color: str) -> str:
        """Push upstream node:15-alpine in ``color`` (into the upstream ACR's storage)."""
        return self.images.image(
            f"{self.upstream.backing.host}/node:15-alpine", env={"BACKGROUND_COLOR": color}
        )

    def gate(self, keeper: Gatekeeper | None = None) -> GateRecord:
        return gate_image(
            keeper or self.keeper, f"{self.upstream.login_server}/node:15-alpine"
        ).record

    def target_tags(self) -> dict[str, str]:
        return tag_digests(self.base.backing.host, "node")

    def arm(self) -> list[str]:
        return [c.name for c in self.emulator.calls]

    def runs(self) -> int:
        wait_for_runs(self.emulator, self.base.name)
        return len(runs_of(self.emulator, self.base.name))


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteProcess]:
    with AzuriteProcess(tmp_path_factory.mktemp("azurite")) as process:
        yield process


def azure_config(
    tmp_path: Path,
    emulator: AcrEmulator,
    up: EmulatedRegistry,
    base: EmulatedRegistry,
    tables: AzuriteProcess | None,
    runner: EmulatedIdentity,
    *,
    folder: Path = SEED,
    rule: Sequence[str] = (),
) -> Path:
    """The Azure gate of these tests: upstream ``up`` (by resource id), promotions into ``base``
    (which also runs the validations, as ``runner``), records in a table of ``tables`` (None: a
    SQLite ledger in ``tmp_path/data``); ``rule`` adds lines to the rule."""
    ledger = (
        f"""  ledger:
    connection_string: "{tables.connection_string}"
    table: gate{next(_tables)}{tmp_path.name[-6:].replace("_", "")}
"""
        if tables is not None
        else ""
    )
    path = tmp_path / "gate.yaml"
    path.write_text(
        f"""\
data_dir: {tmp_path / "data"}
registries:
  - host: "{up.login_server}"
    resource_id: "{up.resource_id}"
azure:
  subscription_id: "{emulator.subscription_id}"
  arm_endpoint: "{emulator.arm_endpoint}"
  registry: {{name: {base.name}, resource_group: {base.resource_group}, login_server: "{base.login_server}"}}
  runner:
    name: {base.name}
    resource_group: {base.resource_group}
    login_server: "{base.login_server}"
    location: {emulator.location}
    identity: {{resource_id: "{runner.resource_id}", client_id: "{runner.client_id}"}}
{ledger}rules:
  - name: node
    source: "{up.login_server}/node"
    tags: ["15-alpine"]
    target: "{base.login_server}/node"
    validation: {{folder: "{folder}", timeout: 300}}
"""
        + "".join(f"    {line}\n" for line in rule)
    )
    return path


def quick(keeper: Gatekeeper, emulator: AcrEmulator, base: EmulatedRegistry) -> Gatekeeper:
    """The keeper with a test-speed poll interval on its task-run validator."""
    # the composition root builds the validator on first use: this builds it now
    assert isinstance(keeper.validator, LazyValidator)
    built = keeper.validator.port()
    assert isinstance(built, AcrTaskRunValidator)
    assert built.login_server == base.login_server  # azure.runner.login_server
    validator = AcrTaskRunValidator(
        custom_registries=built.custom_registries,
        login_server=built.login_server,
        location=built.location,
        identity_resource_id=built.identity_resource_id,
        identity_client_id=built.identity_client_id,
        credential=emulator.credential(),
        subscription_id=emulator.subscription_id,
        resource_group=base.resource_group,
        registry=base.name,
        arm_endpoint=emulator.arm_endpoint,
        poll_initial=0.05,
        poll_max=0.5,
        client_kwargs={"retry_backoff_factor": 0.01},
    )
    return replace(keeper, validator=validator)


@pytest.fixture
def cloud(
    tmp_path: Path,
    acr_emulator: AcrEmulator,
    tables: AzuriteProcess,
    podman_env: dict[str, str],
    image_builder: ImageBuilder,
) -> Iterator[Cloud]:
    # the upstream ACR is private: the validation run pulls the candidate only as the runner's
    # user-assigned identity, which has AcrPull there
    up = acr_emulator.add_registry("publicregistry", "public-rg", private=True)
    base = acr_emulator.add_registry("baseartifacts", "base-rg")
    runner = acr_emulator.add_identity("gate-runner", pull_from=(up,))
    path = azure_config(tmp_path, acr_emulator, up, base, tables, runner)
    keeper = build_gatekeeper(load_config(path), credential=acr_emulator.credential())
    yield Cloud(acr_emulator, up, base, image_builder, quick(keeper, acr_emulator, base), path)
    wait_for_runs(acr_emulator, base.name)


def test_walkthrough_on_azure_promotes_green_and_stops_red(cloud: Cloud) -> None:
    orange = cloud.push("Orange")
    first = cloud.gate()
    green = cloud.push("Green")
    second = cloud.gate()
    red = cloud.push("Red")
    third = cloud.gate()

    assert [first.state, second.state, third.state] == [
        State.PROMOTED,
        State.PROMOTED,
        State.REJECTED,
    ]
    assert [first.digest, second.digest, third.digest] == [orange, green, red]
    assert "Invalid Color" in third.reason
    tags = cloud.target_tags()
    assert tags["15-alpine"] == green
    assert tags[first.target_tags[0]] == orange and tags[second.target_tags[0]] == green
    assert red not in tags.values() and len(tags) == 3
    for record in (first, second):  # run-ID tags are locked once written
        lock = cloud.base.tag("node", record.target_tags[0])
        assert (lock.write_enabled, lock.delete_enabled) == (False, False)
    assert [r.state for r in cloud.keeper.ledger.history()] == [
        State.REJECTED,
        State.PROMOTED,
        State.PROMOTED,
    ]
    assert cloud.runs() == 3


def test_the_runner_registrys_configured_location_is_its_task_runs_location(
    cloud: Cloud,
) -> None:
    keeper = build_gatekeeper(
        load_config(cloud.config_path), credential=cloud.emulator.credential()
    )
    assert isinstance(keeper.validator, LazyValidator)
    built = keeper.validator.port()
    assert isinstance(built, AcrTaskRunValidator)
    assert built.location == cloud.emulator.location == "westeurope"  # azure.runner.location


def test_duplicate_costs_no_arm_call(cloud: Cloud) -> None:
    cloud.push("Green")
    cloud.gate()
    before = len(cloud.emulator.calls)

    again = gate_image(cloud.keeper, f"{cloud.upstream.login_server}/node:15-alpine")

    assert again.duplicate and again.record.state is State.PROMOTED
    assert len(cloud.emulator.calls) == before
    assert cloud.runs() == 1


class Crash(BaseException):
    """The worker process dies (nothing after this point runs)."""


class CrashAfterScheduling:
    """The Ledger port, but the process dies when it would record the run it just scheduled."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def save(self, record: GateRecord) -> None:
        if record.run_id:
            raise Crash
        self.inner.save(record)


def test_crash_between_scheduling_and_recording_resumes_the_same_run(cloud: Cloud) -> None:
    green = cloud.push("Green")
    with pytest.raises(Crash):
        cloud.gate(replace(cloud.keeper, ledger=CrashAfterScheduling(cloud.keeper.ledger)))
    (stuck,) = cloud.keeper.ledger.history()
    assert stuck.state is State.VALIDATING and stuck.run_id is None
    assert cloud.runs() == 1

    # a new worker, once the dead worker's lease has lapsed
    assert cloud.keeper.ledger.renew(stuck.id, stuck.lease_holder, utcnow())
    record = cloud.gate()

    assert record.id == stuck.id and record.state is State.PROMOTED and record.attempts == 2
    assert cloud.runs() == 1  # the run was found by its task run's name and followed
    assert record.run_id == runs_of(cloud.emulator, cloud.base.name)[0].run_id
    assert cloud.target_tags()["15-alpine"] == green
    names = cloud.arm()
    assert names.count("createTaskRun") == 1 and "listRuns" not in names
    assert task_runs_of(cloud.emulator, cloud.base.name) == {}  # deleted once followed


@pytest.mark.parametrize(
    ("fault", "verdict", "moved", "extra_runs"),
    [
        (
            {"route": "importImage", "status": 429, "retry_after": 1, "times": 1},
            State.PROMOTED,
            True,
            1,
        ),
        ({"route": "importImage", "status": 500, "times": 1}, State.PROMOTED, True, 1),
        # a promotion that fails after a pass keeps the pass: validated, promoted by the next try
        ({"route": "importImage", "status": 500, "times": 1000}, State.VALIDATED, False, 1),
        ({"import_fails_midway": True}, State.VALIDATED, False, 1),
        (
            {"route": "createTaskRun", "status": 429, "retry_after": 1, "times": 1},
            State.PROMOTED,
            True,
            1,
        ),
        ({"route": "createTaskRun", "status": 500, "times": 1}, State.PROMOTED, True, 1),
        ({"route": "createTaskRun", "status": 500, "times": 1000}, State.FAILED, False, 0),
        ({"route": "getRun", "status": 500, "times": 2}, State.PROMOTED, True, 1),
        ({"run_outcome": "Failed", "times": 1}, State.REJECTED, False, 1),
        ({"run_outcome": "Error", "times": 1}, State.FAILED, False, 1),
        ({"run_outcome": "Timeout", "times": 1}, State.FAILED, False, 1),
    ],
    ids=[
        "import-429",
        "import-500-once",
        "import-500-always",
        "import-midway",
        "create-429",
        "create-500-once",
        "create-500-always",
        "getrun-500",
        "run-failed",
        "run-error",
        "run-timeout",
    ],
)
def test_fault_matrix(
    cloud: Cloud, fault: dict[str, Any], verdict: State, moved: bool, extra_runs: int
) -> None:
    green = cloud.push("Green")
    assert cloud.gate().state is State.PROMOTED
    blue = cloud.push("Blue")
    before = cloud.target_tags()
    cloud.emulator.faults.add(**fault)

    record = cloud.gate()

    assert record.state is verdict, record.reason
    assert cloud.keeper.ledger.get(record.id).state is verdict
    tags = cloud.target_tags()
    assert tags["15-alpine"] == (blue if moved else green)  # never an unvalidated digest
    for tag, digest in before.items():  # no run-ID tag was ever overwritten
        assert tags[tag] == digest or tag == "15-alpine"
    if not moved:
        assert blue not in tags.values()
    assert cloud.runs() == 1 + extra_runs


def test_functions_gate_redelivered_events_once_on_azure_adapters(
    cloud: Cloud, tables: AzuriteProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    import azure.functions as func
    from azure.storage.queue import QueueClient

    import function_app
    from tests.unit.test_function_events import Collect, as_trigger_event

    green = cloud.push("Green")
    monkeypatch.setenv("GATE_CONFIG", str(cloud.config_path))
    function_app.config.cache_clear()
    function_app.settings.cache_clear()
    # the app's composition seam: the keeper built from the same file, with the emulator's
    # credential instead of DefaultAzureCredential
    monkeypatch.setattr(function_app, "keeper", lambda: cloud.keeper)
    queue = QueueClient.from_connection_string(
        tables.connection_string, f"gate-requests-{next(_tables)}"
    )
    queue.create_queue()
    event = {
        "id": "evt-1",
        "topic": cloud.upstream.resource_id,
        "subject": "node:15-alpine",
        "eventType": "Microsoft.ContainerRegistry.ImagePushed",
        "data": {
            "action": "push",
            "target": {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": green,
                "repository": "node",
                "tag": "15-alpine",
            },
            "request": {"host": cloud.upstream.login_server, "method": "PUT"},
        },
    }
    for _ in range(5):  # Event Grid delivers at least once
        out = Collect()
        function_app.on_push(as_trigger_event(event), out)
        queue.send_message(out.value)
    before = len(cloud.emulator.calls)

    for message in queue.receive_messages(messages_per_page=10):
        function_app.gate_worker(func.QueueMessage(id=message.id, body=message.content.encode()))
        queue.delete_message(message)

    (record,) = cloud.keeper.ledger.history()
    assert record.state is State.PROMOTED and record.digest == green and record.trigger == "event"
    assert cloud.runs() == 1
    imports = [c for c in cloud.emulator.calls[before:] if c.name == "importImage"]
    assert len(imports) == 2  # the run-ID tag, then the stable tag: once, not five times
    assert cloud.target_tags()["15-alpine"] == green
    queue.delete_queue()
    function_app.config.cache_clear()


def test_the_azure_gate_reads_upstream_signatures_through_the_acr_data_plane(
    cloud: Cloud, tmp_path: Path
) -> None:
    from tests.integration.test_upstream_signatures import cosign_sign, new_key

    key = new_key(tmp_path / "cosign.pub")
    path = cloud.config_path
    path.write_text(path.read_text() + "    require_signature: {keys: [cosign.pub]}\n")
    keeper = quick(
        build_gatekeeper(load_config(path), credential=cloud.emulator.credential()),
        cloud.emulator,
        cloud.base,
    )
    unsigned = cloud.push("Green")
    refused = cloud.gate(keeper)
    runs_after_refusal = cloud.runs()
    signed = cloud.push("Orange")
    cosign_sign(cloud.upstream.backing.host, "node", signed, key)
    passed = cloud.gate(keeper)

    assert refused.state is State.REJECTED and refused.reason.startswith("unsigned:")
    assert unsigned in refused.reason
    assert runs_after_refusal == 0  # refused before any task run
    assert passed.state is State.PROMOTED, passed.reason
    assert cloud.target_tags()["15-alpine"] == signed
    # the signature manifest and its payload were read from the upstream ACR's data plane
    sig = f"/node/manifests/{signed.replace(':', '-')}.sig"
    assert any(c.path.endswith(sig) and c.status == 200 for c in cloud.upstream.calls)
    # the payload: a 307 from the data plane, then a ranged read of the SAS link it gave
    assert any(c.name == "v2Blob" and c.status == 307 for c in cloud.upstream.calls)
    assert any(c.name == "blobGet" and c.status == 206 for c in cloud.emulator.calls)
