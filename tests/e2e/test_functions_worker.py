"""The Functions app as Azure runs it: indexed, loaded and invoked by the real Python worker.

``tests/functions_host`` plays the Functions host against ``azure-functions-runtime`` (the
worker library the app ships on Python 3.13) in its own process: worker init (indexing
``function_app.py``), function metadata, function load, then invocations with the payloads the
host sends. Queue outputs go to a real Azurite queue and come back through the queue trigger;
behind the gate are real registries and podman (local adapters, no ``azure:`` section).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from copy import replace
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from devstack.azurite import AzuriteProcess
from devstack.images import ImageBuilder, tag_digests
from devstack.registry import RegistryProcess
from gate.compose import build_gatekeeper
from gate.domain.records import State, new_record_id
from gate.ports import HistoryQuery, Ledger
from tests.functions_host import FunctionsHost, Invocation, WorkerFailure
from tests.functions_host.checks import host_problems
from tests.functions_host.payloads import event_grid_event, http_request, queue_message, timer
from tests.functions_host.queues import StorageQueues

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "tests" / "data" / "cmd-validation"  # a cmd-only task file: any repository
SAMPLE_SETTINGS: dict[str, str] = json.loads((ROOT / "local.settings.sample.json").read_text())[
    "Values"
]
APP_FUNCTIONS = {
    "on_push",
    "post_gate",
    "get_gate",
    "list_gates",
    "post_rollback",
    "watch",
    "prune",
    "gate_worker",
    "gate_poison",
}


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteProcess]:
    """This module's own Azurite: the app's queue names are fixed, so they are not shared."""
    with AzuriteProcess(tmp_path_factory.mktemp("azurite")) as process:
        yield process


@dataclass
class World:
    """The app under the worker, and what it talks to."""

    host: FunctionsHost
    queues: StorageQueues
    upstream: RegistryProcess
    target: RegistryProcess
    images: ImageBuilder
    ledger: Ledger

    def push(self, repository: str, tag: str, color: str) -> str:
        return self.images.image(
            f"{self.upstream.host}/{repository}:{tag}", env={"BACKGROUND_COLOR": color}
        )

    def target_tags(self, repository: str) -> dict[str, str]:
        return tag_digests(self.target.host, repository)

    def gate_by_http(self, image: str) -> tuple[Invocation, str]:
        """POST /api/gate, then the worker gates the queued request; (answer, record id)."""
        posted = self.host.invoke("post_gate", http_json("POST", "gate", {"image": image}))
        assert posted.http_response().status == 202, posted.http_response().body
        self.queues.put(posted, "requests")
        delivered = self.queues.deliver(self.host, "gate_worker")
        assert [d.ok for d in delivered] == [True], [d.error for d in delivered]
        return posted, posted.http_response().headers["Location"].rsplit("/", 1)[1]


def http_json(method: str, route: str, body: Any, **options: Any) -> Any:
    return http_request(method, route, body=json.dumps(body).encode(), **options)


@pytest.fixture
def world(
    tmp_path: Path,
    registries: tuple[RegistryProcess, RegistryProcess],
    image_builder: ImageBuilder,
    podman_env: dict[str, str],
    storage: AzuriteProcess,
) -> Iterator[World]:
    upstream, target = registries
    config = tmp_path / "gate.yaml"
    lines = [
        f"data_dir: {tmp_path / 'data'}",
        "registries:",
        f'  - {{host: "{upstream.host}", insecure: true}}',
        f'  - {{host: "{target.host}", insecure: true}}',
        "rules:",
    ]
    for repository, tag in (("node", "15-alpine"), ("python", "3-slim")):
        lines += [
            f"  - name: {repository}",
            f"    source: {upstream.host}/{repository}",
            f'    tags: ["{tag}"]',
            f"    target: {target.host}/{repository}",
            f'    validation: {{folder: "{SEED}", timeout: 120}}',
        ]
    config.write_text("\n".join(lines) + "\n")
    with booted_app(config, storage) as (host, queues, ledger):
        yield World(host, queues, upstream, target, image_builder, ledger)


@contextmanager
def booted_app(
    config: Path, storage: AzuriteProcess
) -> Iterator[tuple[FunctionsHost, StorageQueues, Ledger]]:
    """The app under the real worker with ``config`` and ``storage`` (its queues emptied), and
    the ledger the configuration names."""
    from gate.config.loading import load_config

    # app settings: the sample's, with this test's config and storage (as local.settings.json)
    settings = {
        **SAMPLE_SETTINGS,
        "GATE_CONFIG": str(config),
        "GATE_WORKER_WAIT_SECONDS": "1",
        "AzureWebJobsStorage": storage.connection_string,
    }
    queues = StorageQueues(storage.connection_string, ROOT)
    queues.clear("gate-requests", "gate-requests-poison")
    ledger = build_gatekeeper(load_config(config)).ledger
    with FunctionsHost(ROOT, settings) as host:
        host.boot()
        yield host, queues, ledger


# -- indexing ----------------------------------------------------------------------------------


def test_worker_indexes_and_loads_every_function_of_the_app(world: World) -> None:
    functions = world.host.functions

    assert set(functions) == APP_FUNCTIONS
    assert {name: f.trigger["type"] for name, f in functions.items()} == {
        "on_push": "eventGridTrigger",
        "post_gate": "httpTrigger",
        "get_gate": "httpTrigger",
        "list_gates": "httpTrigger",
        "post_rollback": "httpTrigger",
        "watch": "timerTrigger",
        "prune": "timerTrigger",
        "gate_worker": "queueTrigger",
        "gate_poison": "queueTrigger",
    }
    # the HTTP payloads of tests/functions_host/payloads.py assume these worker capabilities
    for capability in ("RawHttpBodyBytes", "RpcHttpBodyOnly", "RpcHttpTriggerMetadataRemoved"):
        assert world.host.capabilities.get(capability) == "true", capability


def test_indexed_bindings_pass_the_hosts_checks_with_the_sample_settings(world: World) -> None:
    functions = world.host.functions.values()

    assert host_problems(functions, SAMPLE_SETTINGS) == []
    watch = world.host.functions["watch"]
    assert watch.trigger["schedule"] == "%GATE_WATCH_SCHEDULE%"
    without = {k: v for k, v in SAMPLE_SETTINGS.items() if k != "GATE_WATCH_SCHEDULE"}
    assert host_problems(functions, without) == [
        "watch: binding timer: schedule refers to %GATE_WATCH_SCHEDULE%, which is not an app setting"
    ]
    # in Azure the storage connection is identity-based: AzureWebJobsStorage__* settings
    identity = {k: v for k, v in SAMPLE_SETTINGS.items() if k != "AzureWebJobsStorage"}
    identity["AzureWebJobsStorage__accountName"] = "gatestorage"
    assert host_problems(functions, identity) == []


BAD_ANNOTATION_APP = """\
import typing

import azure.functions as func

app = func.FunctionApp()


@app.function_name("fine")
@app.queue_trigger(arg_name="msg", queue_name="jobs", connection="AzureWebJobsStorage")
def fine(msg: func.QueueMessage) -> None:
    pass


@app.function_name("tick")
@app.timer_trigger(arg_name="timer", schedule="0 */5 * * * *")
@app.queue_output(arg_name="requests", queue_name="jobs", connection="AzureWebJobsStorage")
def tick(timer: func.TimerRequest, requests: func.Out[{annotation}]) -> None:
    requests.set(["a", "b"])
"""


def write_app(folder: Path, source: str) -> Path:
    folder.mkdir()
    (folder / "function_app.py").write_text(source)
    (folder / "host.json").write_text(json.dumps({"version": "2.0"}))
    return folder


def test_a_pep585_out_annotation_fails_indexing_of_the_whole_app(tmp_path: Path) -> None:
    app = write_app(tmp_path / "bad", BAD_ANNOTATION_APP.format(annotation="list[str]"))
    settings = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}

    with FunctionsHost(app, settings) as host, pytest.raises(WorkerFailure) as failure:
        host.boot()
    with FunctionsHost(app, settings) as host:
        host.init()
        indexed = host.index()

    assert failure.value.stage.startswith("worker init")
    assert (
        "cannot load the tick function: binding requests has invalid non-type annotation"
        in failure.value.message
    )
    assert indexed == {}  # not even the function without the bad annotation


def test_the_same_app_with_typing_list_indexes_and_queues_each_item(tmp_path: Path) -> None:
    app = write_app(tmp_path / "good", BAD_ANNOTATION_APP.format(annotation="typing.List[str]"))

    with FunctionsHost(app, {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}) as host:
        functions = host.boot()
        ticked = host.invoke("tick", timer())

    assert set(functions) == {"fine", "tick"}
    assert ticked.ok, ticked.error
    assert ticked.queue_messages("requests") == ["a", "b"]


BAD_NAMES_APP = """\
import azure.functions as func

app = func.FunctionApp()


@app.function_name("host")
@app.timer_trigger(arg_name="timer", schedule="%NOT_SET%")
@app.queue_output(arg_name="out_queue", queue_name="Gate_Requests", connection="Missing")
def tick(timer: func.TimerRequest, out_queue: func.Out[str]) -> None:
    pass


@app.function_name("work")
@app.queue_trigger(arg_name="msg", queue_name="%QUEUE%", connection="AzureWebJobsStorage")
def work(msg: func.QueueMessage) -> None:
    pass
"""


def test_host_checks_refuse_names_settings_connections_and_queues(tmp_path: Path) -> None:
    app = write_app(tmp_path / "names", BAD_NAMES_APP)
    settings = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "QUEUE": "a--b"}

    with FunctionsHost(app, settings) as host:
        functions = host.boot()  # the worker itself has no objection

    assert sorted(host_problems(functions.values(), settings)) == sorted(
        [
            "host: not a valid function name",
            "host: binding timer: schedule refers to %NOT_SET%, which is not an app setting",
            "host: binding name 'out_queue' is invalid",
            "host: binding out_queue: connection 'Missing' is neither an app setting nor the "
            "prefix of Missing__* settings",
            "host: binding out_queue: 'Gate_Requests' is not a valid storage queue name",
            "work: binding msg: 'a--b' is not a valid storage queue name",
        ]
    )


# -- invocations -------------------------------------------------------------------------------


def event(world: World, digest: str, event_id: str, repository: str = "node") -> dict[str, Any]:
    return {
        "id": event_id,
        "topic": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.ContainerRegistry/registries/up",
        "subject": f"{repository}:15-alpine",
        "eventType": "Microsoft.ContainerRegistry.ImagePushed",
        "eventTime": "2026-01-01T00:00:00Z",
        "dataVersion": "1.0",
        "data": {
            "action": "push",
            "target": {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "repository": repository,
                "tag": "15-alpine",
            },
            "request": {"host": world.upstream.host, "method": "PUT"},
        },
    }


def test_pushed_events_are_queued_and_gated_once_by_the_worker(world: World) -> None:
    digest = world.push("node", "15-alpine", "Green")

    pushed = [  # Event Grid redelivers; the runtime invokes once per event
        world.host.invoke("on_push", event_grid_event(event(world, digest, event_id)))
        for event_id in ("e1", "e1", "e2")
    ]
    queued = [world.queues.put(invocation, "requests") for invocation in pushed]
    delivered = world.queues.deliver(world.host, "gate_worker")

    assert all(p.ok for p in pushed), [p.error for p in pushed]
    assert all(len(texts) == 1 for texts in queued)
    assert {json.loads(texts[0])["image"] for texts in queued} == {
        f"{world.upstream.host}/node:15-alpine@{digest}"
    }
    assert len(delivered) == 3 and all(d.ok for d in delivered), [d.error for d in delivered]
    assert [(r.state.value, r.digest) for r in world.ledger.history()] == [("promoted", digest)]
    tags = world.target_tags("node")
    assert tags["15-alpine"] == digest and len(tags) == 2  # stable tag + run-ID tag


def test_events_nobody_gates_are_answered_and_queue_nothing(world: World) -> None:
    ignored = world.host.invoke(
        "on_push", event_grid_event(event(world, "sha256:" + "1" * 64, "e3", repository="ruby"))
    )
    malformed = world.host.invoke("on_push", event_grid_event({"id": "e4", "data": "nonsense"}))

    assert ignored.ok and malformed.ok
    assert ignored.output_values("requests") == [] and malformed.output_values("requests") == []
    assert ignored.logged("ignored event e3")
    assert malformed.logged("dropped malformed event e4")
    assert world.queues.peek("gate-requests") == []


def test_http_gate_answers_202_and_the_worker_completes_the_record(world: World) -> None:
    digest = world.push("node", "15-alpine", "Green")

    posted, record_id = world.gate_by_http(f"{world.upstream.host}/node:15-alpine")
    status = world.host.invoke(
        "get_gate", http_request("GET", f"gate/{record_id}", route_params={"record_id": record_id})
    ).http_response()

    answer = posted.http_response()
    assert answer.json()["state"] == "received"
    assert answer.headers["Location"].endswith(f"/gate/{record_id}")
    assert status.status == 200
    assert status.json()["state"] == "promoted" and status.json()["digest"] == digest
    assert world.ledger.get(record_id).state.value == "promoted"
    assert world.target_tags("node")["15-alpine"] == digest


def test_http_errors_come_back_as_json_and_queue_nothing(world: World) -> None:
    unknown = world.host.invoke(
        "get_gate", http_request("GET", "gate/nope", route_params={"record_id": "nope"})
    )
    no_rule = world.host.invoke(
        "post_gate", http_json("POST", "gate", {"image": "docker.io/library/ruby:3"})
    )
    not_json = world.host.invoke("post_gate", http_request("POST", "gate", body=b"{oops"))
    too_large = world.host.invoke(
        "post_gate", http_request("POST", "gate", body=b'{"image": "' + b"x" * 70000 + b'"}')
    )

    assert (unknown.http_response().status, unknown.http_response().json()["error"]) == (
        404,
        "not_found",
    )
    assert (no_rule.http_response().status, no_rule.http_response().json()["error"]) == (
        422,
        "no_matching_rule",
    )
    assert not_json.http_response().status == 400
    assert not_json.http_response().json()["error"] == "bad_json"
    assert too_large.http_response().status == 413
    for refused in (no_rule, not_json, too_large):
        assert refused.output_values("requests") == []
    assert world.ledger.history() == []


def test_history_and_rollback_over_http(world: World) -> None:
    orange = world.push("python", "3-slim", "Orange")
    world.gate_by_http(f"{world.upstream.host}/python:3-slim")
    green = world.push("python", "3-slim", "Green")
    world.gate_by_http(f"{world.upstream.host}/python:3-slim")
    repository = f"{world.target.host}/python"

    page = world.host.invoke("list_gates", http_request("GET", "gates", query={"limit": "1"}))
    sideways = world.host.invoke(
        "list_gates", http_request("GET", "gates", query={"state": "sideways"})
    )
    rolled = world.host.invoke(
        "post_rollback",
        http_json(
            "POST",
            "rollback",
            {"repository": repository, "reason": "green breaks checkout"},
            headers={"X-MS-CLIENT-PRINCIPAL-NAME": "alice@contoso"},
        ),
    )
    unknown = world.host.invoke(
        "post_rollback",
        http_json("POST", "rollback", {"repository": f"{world.target.host}/ruby", "reason": "x"}),
    )

    listed = page.http_response().json()
    assert [r["digest"] for r in listed["records"]] == [green] and "next" in listed
    assert sideways.http_response().status == 400
    body = rolled.http_response().json()
    assert rolled.http_response().status == 200
    # without App Service authentication (GATE_AUTH_MODE unset) a client-sent name is ignored
    assert body["state"] == "rolled_back" and body["actor"] == "function-key"
    assert body["actor_id"] == ""
    assert unknown.http_response().status == 404
    assert world.target_tags("python")["3-slim"] == orange
    assert world.ledger.history()[0].state.value == "rolled_back"


def test_timer_queues_only_undecided_digests(world: World) -> None:
    digest = world.push("node", "15-alpine", "Green")

    first = world.host.invoke("watch", timer())
    queued = world.queues.put(first, "requests")
    delivered = world.queues.deliver(world.host, "gate_worker")
    second = world.host.invoke("watch", timer(past_due=True))

    assert first.ok, first.error
    assert [json.loads(text)["image"] for text in queued] == [
        f"{world.upstream.host}/node:15-alpine@{digest}"
    ]
    assert [d.ok for d in delivered] == [True]
    assert second.ok and second.output_values("requests") == []
    assert world.target_tags("node")["15-alpine"] == digest


def test_the_prune_timer_deletes_old_records_but_not_a_promotion_behind_a_live_tag(
    world: World,
) -> None:
    world.push("node", "15-alpine", "Green")
    _posted, record_id = world.gate_by_http(f"{world.upstream.host}/node:15-alpine")
    promoted = world.ledger.get(record_id)
    long_ago = promoted.created_at - timedelta(days=500)
    # the same promotion, 500 days old: its run-ID tag is in the target, so it stays
    kept = replace(promoted, id=new_record_id(), created_at=long_ago, log="")
    # an old rejection of another digest: nothing points at it any more
    gone = replace(
        kept, id=new_record_id(), state=State.REJECTED, digest="sha256:" + "0" * 64, target_tags=()
    )
    world.ledger.add(kept)
    world.ledger.add(gone)

    pruned = world.host.invoke("prune", timer(function="prune"))

    assert pruned.ok, pruned.error
    left = {r.id for r in world.ledger.history(HistoryQuery(limit=-1))}
    assert left == {record_id, kept.id}
    assert promoted.state is State.PROMOTED


def post_without_working(world: World, image: str) -> tuple[Invocation, str]:
    posted = world.host.invoke("post_gate", http_json("POST", "gate", {"image": image}))
    assert posted.http_response().status == 202
    return posted, posted.http_response().headers["Location"].rsplit("/", 1)[1]


def test_a_request_another_worker_holds_is_put_back_with_a_delay_not_poisoned(
    world: World,
) -> None:
    world.push("node", "15-alpine", "Green")
    posted, record_id = post_without_working(world, f"{world.upstream.host}/node:15-alpine")
    # another worker has claimed the record and is still on it
    claim = world.ledger.claim(
        world.ledger.get(record_id), force=False, lease_seconds=3600, holder="other-worker"
    )
    assert claim.acquired
    world.queues.put(posted, "requests")

    delivered = world.queues.deliver(world.host, "gate_worker")
    poisoned = world.queues.deliver(world.host, "gate_poison")

    # one delivery, which succeeds: the worker put the request back itself, invisible for a
    # while, so the host deletes the delivered message and spends none of its retries
    [once] = delivered
    assert once.ok, once.error
    assert once.logged("put back for") and once.logged(f"record {record_id} is received")
    assert poisoned == []
    queue = world.queues.client("gate-requests")
    assert queue.get_queue_properties().approximate_message_count == 1
    assert world.queues.peek("gate-requests") == []  # invisible until its delay has passed
    assert world.ledger.get(record_id) == claim.record
    assert world.target_tags("node") == {}


def test_poisoned_requests_are_recorded_as_failed(world: World) -> None:
    digest = world.push("node", "15-alpine", "Green")
    posted, record_id = post_without_working(world, f"{world.upstream.host}/node:15-alpine")
    (text,) = posted.queue_messages("requests")
    world.queues.client("gate-requests-poison").send_message(text)

    poisoned = world.queues.deliver(world.host, "gate_poison")

    assert [p.ok for p in poisoned] == [True], [p.error for p in poisoned]
    record = world.ledger.get(record_id)
    assert record.state.value == "failed" and record.digest == digest
    assert (record.reason or "").startswith("poisoned")
    assert world.target_tags("node") == {}


def test_malformed_queue_messages_are_dropped_not_retried(world: World) -> None:
    dropped = world.host.invoke("gate_worker", queue_message("{not json", message_id="m-1"))

    assert dropped.ok, dropped.error
    assert dropped.logged("dropped malformed gate request m-1")
    assert world.ledger.history() == []


def test_the_timer_queues_a_due_revalidation_and_the_worker_runs_it_once(
    tmp_path: Path,
    registries: tuple[RegistryProcess, RegistryProcess],
    image_builder: ImageBuilder,
    podman_env: dict[str, str],
    storage: AzuriteProcess,
) -> None:
    upstream, target = registries
    config = tmp_path / "gate.yaml"
    config.write_text(
        "\n".join(
            [
                f"data_dir: {tmp_path / 'data'}",
                "registries:",
                f'  - {{host: "{upstream.host}", insecure: true}}',
                f'  - {{host: "{target.host}", insecure: true}}',
                "rules:",
                "  - name: node",
                f"    source: {upstream.host}/node",
                '    tags: ["15-alpine"]',
                f"    target: {target.host}/node",
                f'    validation: {{folder: "{SEED}", timeout: 120}}',
                "    revalidate: {every: 24h, on_failure: alert}",
            ]
        )
        + "\n"
    )
    digest = image_builder.image(
        f"{upstream.host}/node:15-alpine", env={"BACKGROUND_COLOR": "Green"}
    )
    with booted_app(config, storage) as (host, queues, ledger):
        first = host.invoke("watch", timer())
        queued = queues.put(first, "requests")
        # the promotion first, then the re-validation (one batch, in queue order); a second
        # tick before the worker ran queues the rule again
        again = queues.put(host.invoke("watch", timer()), "requests")
        delivered = queues.deliver(host, "gate_worker")
        last = host.invoke("watch", timer())
        left = queues.peek("gate-requests") + queues.peek("gate-requests-poison")

    assert first.ok, first.error
    revalidation = {"revalidate": "node", "trigger": "revalidate"}
    assert [json.loads(text) for text in queued] == [
        {"image": f"{upstream.host}/node:15-alpine@{digest}", "trigger": "poll"},
        revalidation,
    ]
    assert [json.loads(text) for text in again] == [
        {"image": f"{upstream.host}/node:15-alpine@{digest}", "trigger": "poll"},
        revalidation,
    ]
    assert [d.ok for d in delivered] == [True] * 4, [d.error for d in delivered]
    records = [(r.action, r.state.value) for r in reversed(ledger.history())]
    assert records == [
        ("gate", "promoted"),
        ("revalidate", "revalidated"),  # the pass, claimed once
        ("revalidate", "revalidated"),  # its check of the stable digest
    ]
    assert last.ok and last.output_values("requests") == []
    assert left == []
