"""The Functions app end to end: real ``func`` trigger objects, a real Azurite queue between the
triggers and the worker, real registries and podman behind the gate (local adapters)."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import function_app
from devstack.azurite import AzuriteProcess
from devstack.images import ImageBuilder, tag_digests
from devstack.podman import started_containers
from devstack.registry import RegistryProcess
from gate.config.app_settings import QUEUE
from tests.unit.test_function_events import Collect, as_trigger_event

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "seed" / "validation"


@dataclass
class Serverless:
    """The app under test and what it talks to."""

    upstream: RegistryProcess
    target: RegistryProcess
    images: ImageBuilder
    queue: QueueClient

    def push_image(self, color: str) -> str:
        return self.images.image(
            f"{self.upstream.host}/node:15-alpine", env={"BACKGROUND_COLOR": color}
        )

    def event(self, digest: str, event_id: str = "e1") -> dict[str, Any]:
        return {
            "id": event_id,
            "topic": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.ContainerRegistry/registries/up",
            "subject": "node:15-alpine",
            "eventType": "Microsoft.ContainerRegistry.ImagePushed",
            "data": {
                "action": "push",
                "target": {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": digest,
                    "repository": "node",
                    "tag": "15-alpine",
                },
                "request": {"host": self.upstream.host, "method": "PUT"},
            },
            "dataVersion": "1.0",
        }

    def enqueue(self, out: Collect) -> None:
        """What the host does with an output binding: put the message(s) on the queue."""
        values = out.value if isinstance(out.value, list) else [out.value] if out.value else []
        for value in values:
            self.queue.send_message(value)

    def work(self) -> int:
        """What the host does with the queue trigger: deliver each message until it succeeds."""
        done = 0
        while True:
            batch = list(self.queue.receive_messages(messages_per_page=32, visibility_timeout=1))
            if not batch:
                return done
            for message in batch:
                function_app.gate_worker(
                    func.QueueMessage(
                        id=message.id,
                        body=message.content.encode(),
                        pop_receipt=message.pop_receipt,
                    )
                )
                self.queue.delete_message(message)
                done += 1

    def target_tags(self) -> dict[str, str]:
        return tag_digests(self.target.host, "node")


@pytest.fixture(scope="module")
def azurite_queues(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteProcess]:
    with AzuriteProcess(tmp_path_factory.mktemp("azurite")) as process:
        yield process


@pytest.fixture
def app(
    tmp_path: Path,
    registries: tuple[RegistryProcess, RegistryProcess],
    image_builder: ImageBuilder,
    podman_env: dict[str, str],
    azurite_queues: AzuriteProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Serverless]:
    upstream, target = registries
    config = tmp_path / "gate.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            data_dir: {tmp_path / "data"}
            registries:
              - {{host: "{upstream.host}", insecure: true}}
              - {{host: "{target.host}", insecure: true}}
            rules:
              - name: node
                source: {upstream.host}/node
                tags: ["15-alpine"]
                target: {target.host}/node
                validation: {{folder: "{SEED}", timeout: 120}}
            """
        )
    )
    monkeypatch.setenv("GATE_CONFIG", str(config))
    monkeypatch.setenv("GATE_WORKER_WAIT_SECONDS", "1")
    for cached in (function_app.settings, function_app.config, function_app.keeper):
        cached.cache_clear()
    # the host base64-encodes queue messages (host.json messageEncoding)
    queue = QueueClient.from_connection_string(
        azurite_queues.connection_string,
        f"{QUEUE}-{tmp_path.name[-20:].lower().replace('_', '-')}".strip("-"),
        message_encode_policy=TextBase64EncodePolicy(),
        message_decode_policy=TextBase64DecodePolicy(),
    )
    queue.create_queue()
    yield Serverless(upstream, target, image_builder, queue)
    queue.delete_queue()
    for cached in (function_app.settings, function_app.config, function_app.keeper):
        cached.cache_clear()


def http(
    method: str,
    route: str,
    body: Any = None,
    params: dict[str, str] | None = None,
    route_params: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> func.HttpRequest:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    return func.HttpRequest(
        method,
        f"http://localhost/api/{route}",
        headers={"content-type": "application/json"},
        params=params or {},
        route_params=route_params or {},
        body=data,
    )


def validation_starts(since: str) -> int:
    return len(started_containers(since, "-validate-base-image"))


def test_redelivered_events_validate_and_promote_once(app: Serverless) -> None:
    digest = app.push_image("Green")
    since = datetime.now(UTC).isoformat()
    for i in range(12):  # Event Grid redelivers the same event, and bursts bring more
        out = Collect()
        function_app.on_push(as_trigger_event(app.event(digest, event_id=f"e{i % 3}")), out)
        app.enqueue(out)

    assert app.work() == 12

    history = function_app.keeper().ledger.history()
    assert [(r.state.value, r.digest) for r in history] == [("promoted", digest)]
    assert validation_starts(since) == 1
    tags = app.target_tags()
    assert tags["15-alpine"] == digest and len(tags) == 2


def test_http_gate_returns_a_record_the_worker_completes(app: Serverless) -> None:
    digest = app.push_image("Green")
    out = Collect()

    response = function_app.post_gate(
        http("POST", "gate", {"image": f"{app.upstream.host}/node:15-alpine"}), out
    )

    assert response.status_code == 202
    location = response.headers["Location"]
    record_id = location.rsplit("/", 1)[1]
    assert json.loads(response.get_body())["state"] == "received"
    app.enqueue(out)
    assert app.work() == 1

    status = function_app.get_gate(
        http("GET", f"gate/{record_id}", route_params={"record_id": record_id})
    )
    body = json.loads(status.get_body())
    assert status.status_code == 200 and body["state"] == "promoted" and body["digest"] == digest
    assert body["run_id"] and "Validation Complete" in body["log_tail"]

    again_out = Collect()
    again = function_app.post_gate(
        http("POST", "gate", {"image": f"{app.upstream.host}/node@{digest}"}), again_out
    )
    assert again.status_code == 200 and json.loads(again.get_body())["duplicate"] is True
    assert again.headers["Location"] == location and again_out.value is None


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        ({"image": "docker.io/library/ruby:3"}, 422, "no_matching_rule"),
        ({"image": "Not A Ref"}, 422, "invalid_reference"),
        ({"image": "UPSTREAM/node:15-alpine@md5:" + "a" * 32}, 422, "invalid_reference"),
        ({"image": "UPSTREAM/node:15-alpine@sha256x:" + "a" * 64}, 422, "invalid_reference"),
        ({"image": "UPSTREAM/node:15-alpine", "colour": "red"}, 400, "bad_request"),
        ({"image": "UPSTREAM/node:15-alpine", "force": "yes"}, 400, "bad_request"),
        ({"force": True}, 400, "bad_request"),
        ("not an object", 400, "bad_json"),
        ({"image": "UPSTREAM/node:15-alpine@sha256:" + "0" * 64}, 404, "not_found"),
    ],
)
def test_http_gate_refuses_bad_requests_and_queues_nothing(
    app: Serverless, body: Any, status: int, kind: str
) -> None:
    if isinstance(body, dict) and "image" in body:
        body = {**body, "image": body["image"].replace("UPSTREAM", app.upstream.host)}
    out = Collect()

    response = function_app.post_gate(http("POST", "gate", body), out)

    assert response.status_code == status
    assert (
        json.loads(response.get_body())["error"] == kind
        and json.loads(response.get_body())["detail"]
    )
    assert out.value is None and function_app.keeper().ledger.history() == []


def test_http_body_over_the_limit_is_refused(
    app: Serverless, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATE_MAX_BODY_BYTES", "100")
    function_app.settings.cache_clear()
    out = Collect()

    response = function_app.post_gate(
        http("POST", "gate", raw=b'{"image": "' + b"x" * 200 + b'"}'), out
    )

    assert response.status_code == 413 and out.value is None


def test_unknown_record_is_404(app: Serverless) -> None:
    response = function_app.get_gate(http("GET", "gate/nope", route_params={"record_id": "nope"}))

    assert response.status_code == 404 and json.loads(response.get_body())["error"] == "not_found"


def promote_via_http(app: Serverless, color: str) -> str:
    digest = app.push_image(color)
    out = Collect()
    response = function_app.post_gate(
        http("POST", "gate", {"image": f"{app.upstream.host}/node@{digest}"}), out
    )
    assert response.status_code == 202
    app.enqueue(out)
    app.work()
    return digest


def test_history_pages_newest_first(app: Serverless) -> None:
    digests = [promote_via_http(app, color) for color in ("Orange", "Green", "Blue")]

    first = json.loads(
        function_app.list_gates(http("GET", "gates", params={"limit": "2"})).get_body()
    )
    rest_params = dict(p.split("=", 1) for p in first["next"].split("?", 1)[1].split("&"))
    from urllib.parse import unquote

    rest = json.loads(
        function_app.list_gates(
            http("GET", "gates", params={k: unquote(v) for k, v in rest_params.items()})
        ).get_body()
    )

    assert [r["digest"] for r in first["records"] + rest["records"]] == digests[::-1]
    assert "next" not in rest
    promoted = json.loads(
        function_app.list_gates(http("GET", "gates", params={"state": "promoted"})).get_body()
    )
    assert len(promoted["records"]) == 3
    bad = function_app.list_gates(http("GET", "gates", params={"state": "sideways"}))
    assert bad.status_code == 400


def test_rollback_over_http_moves_the_stable_tag_and_records_the_function_key(
    app: Serverless,
) -> None:
    orange = promote_via_http(app, "Orange")
    promote_via_http(app, "Green")
    repo = f"{app.target.host}/node"

    request = http("POST", "rollback", {"repository": repo, "reason": "green breaks checkout"})
    # a name header a client sent: without App Service authentication nothing vouches for it
    request = func.HttpRequest(
        "POST",
        request.url,
        headers={"x-ms-client-principal-name": "alice@contoso"},
        body=request.get_body(),
    )
    response = function_app.post_rollback(request)

    body = json.loads(response.get_body())
    assert (
        response.status_code == 200
        and body["state"] == "rolled_back"
        and body["actor"] == "function-key"
        and body["actor_id"] == ""
    )
    assert app.target_tags()["15-alpine"] == orange
    refused = [
        function_app.post_rollback(http("POST", "rollback", b)).status_code
        for b in (
            {"repository": repo},
            {"repository": f"{app.target.host}/ruby", "reason": "x"},
            {"repository": repo, "reason": "x", "to": "sha256:" + "1" * 64},
        )
    ]
    assert refused == [400, 404, 409]


def test_timer_queues_only_undecided_digests(app: Serverless) -> None:
    digest = app.push_image("Green")
    out = Collect()

    function_app.watch(TimerRequest(past_due=False), out)
    app.enqueue(out)
    app.work()
    again = Collect()
    function_app.watch(TimerRequest(past_due=False), again)

    assert [json.loads(v)["image"] for v in out.value] == [
        f"{app.upstream.host}/node:15-alpine@{digest}"
    ]
    assert again.value is None
    assert app.target_tags()["15-alpine"] == digest


def test_poisoned_request_is_recorded_as_failed(app: Serverless) -> None:
    app.push_image("Green")
    out = Collect()
    function_app.post_gate(
        http("POST", "gate", {"image": f"{app.upstream.host}/node:15-alpine"}), out
    )

    function_app.gate_poison(func.QueueMessage(id="m1", body=out.value.encode()))

    record = function_app.keeper().ledger.history()[0]
    assert record.state.value == "failed" and record.reason.startswith("poisoned")
    assert "15-alpine" not in app.target_tags()


@settings(
    max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)
@given(
    body=st.binary(max_size=200)
    | st.builds(
        lambda d: json.dumps(d).encode(),
        st.dictionaries(
            st.sampled_from(["image", "record_id", "force", "trigger", "x"]),
            st.text(max_size=30) | st.booleans(),
            max_size=3,
        ),
    )
)
def test_malformed_queue_messages_never_raise_nor_promote(app: Serverless, body: bytes) -> None:
    try:
        function_app.gate_worker(func.QueueMessage(id="fuzz", body=body))
    except Exception as exc:  # only retryable infrastructure errors may go back to the queue
        from gate.errors import GateError

        assert isinstance(exc, GateError) and exc.retryable, exc
    assert app.target_tags() == {}
