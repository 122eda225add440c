"""The Event Grid trigger: which pushes become gate requests, and that bad input never escapes.

These call the real decorated function with real ``func.EventGridEvent``/``func.CloudEvent``
objects; the configuration alone decides, so no registry is needed.
"""

from __future__ import annotations

import copy
import json
import logging
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import function_app
from gate.entrypoints.messages import GateRequest

DATA = Path(__file__).parents[1] / "data" / "events"
TOPIC = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/publicregistry-rg"
    "/providers/Microsoft.ContainerRegistry/registries/publicregistry"
)


class Collect(func.Out[Any]):
    """A queue output binding that keeps what the function sets."""

    def __init__(self) -> None:
        self.value: Any = None

    def set(self, val: Any) -> None:
        self.value = val

    def get(self) -> Any:
        return self.value


def sample(name: str) -> list[dict[str, Any]]:
    loaded: list[dict[str, Any]] = json.loads((DATA / name).read_text())
    return loaded


def as_trigger_event(raw: dict[str, Any]) -> func.EventGridEvent | func.CloudEvent:
    """What the Functions host hands the trigger for one wire event."""
    if "specversion" in raw:
        return func.CloudEvent(
            id=raw.get("id"),
            source=raw.get("source"),
            type=raw.get("type"),
            specversion=raw.get("specversion"),
            time=None,
            subject=raw.get("subject"),
            datacontenttype=None,
            dataschema=None,
            data=raw.get("data"),
        )
    return func.EventGridEvent(
        id=raw.get("id"),
        data=raw.get("data"),
        topic=raw.get("topic"),
        subject=raw.get("subject"),
        event_type=raw.get("eventType"),
        event_time=datetime.now(UTC),
        data_version=raw.get("dataVersion"),
    )


@pytest.fixture
def app_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / "acr-task.yaml").write_text("version: v1.1.0\nsteps: []\n")
    path = tmp_path / "gate.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            registries:
              - host: publicregistry.azurecr.cn
                resource_id: {TOPIC}
            rules:
              - name: node
                source: publicregistry.azurecr.cn/node
                tags: ["15-alpine", "16-*"]
                target: base.azurecr.cn/node
                validation: {{folder: validation}}
              - name: python
                source: publicregistry.azurecr.cn/python
                tags: ["3.12"]
                untagged: true
                target: base.azurecr.cn/python
                validation: {{folder: validation}}
            """
        )
    )
    monkeypatch.setenv("GATE_CONFIG", str(path))
    for cached in (function_app.settings, function_app.config, function_app.keeper):
        cached.cache_clear()
    yield path
    for cached in (function_app.settings, function_app.config, function_app.keeper):
        cached.cache_clear()


def push(raw: dict[str, Any]) -> GateRequest | None:
    out = Collect()
    function_app.on_push(as_trigger_event(raw), out)
    return GateRequest.from_json(out.value) if out.value is not None else None


def pushed(**changes: Any) -> dict[str, Any]:
    """The sample Event Grid push with ``data.target``/``data``/envelope fields changed."""
    event = copy.deepcopy(sample("eventgrid-imagepushed.json")[0])
    for key, value in changes.items():
        if key in ("tag", "digest", "repository", "mediaType"):
            event["data"]["target"][key] = value
        elif key in ("action", "host"):
            (event["data"] if key == "action" else event["data"]["request"])[key] = value
        else:
            event[key] = value
    return event


@pytest.mark.usefixtures("app_config")
def test_event_grid_sample_becomes_a_digest_pinned_gate_request() -> None:
    request = push(sample("eventgrid-imagepushed.json")[0])

    assert request == GateRequest(
        image="publicregistry.azurecr.cn/node:15-alpine@sha256:"
        "213bbc182920ab41e18edc2001e06abcca6735d87782d9cef68abd83941cf0e5",
        trigger="event",
        event_id="831e1650-001e-001b-66ab-eeb76e069631",
    )


@pytest.mark.usefixtures("app_config")
def test_cloudevents_sample_becomes_a_gate_request() -> None:
    request = push(sample("cloudevents-imagepushed.json")[0])

    assert request is not None and request.image is not None
    assert request.image.endswith(
        "node:15-alpine@sha256:5f0a9b4c0f5e1d3a2b7c9e8d6f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a"
    )


@pytest.mark.usefixtures("app_config")
@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (sample("eventgrid-subscription-validation.json")[0], "not an image push"),
        (pushed(eventType="Microsoft.ContainerRegistry.ImageDeleted"), "not an image push"),
        (pushed(eventType="Microsoft.ContainerRegistry.ChartPushed"), "not an image push"),
        (pushed(action="delete"), "is not a push"),
        (pushed(mediaType="application/vnd.cncf.helm.config.v1+json"), "not a container image"),
        (pushed(tag=None), "untagged push"),
        (pushed(repository="ruby"), "no rule watches ruby"),
        (pushed(tag="17-alpine"), "no rule watches node:17-alpine"),
        (pushed(host="otherregistry.azurecr.cn"), "not a configured upstream"),
        (pushed(topic=TOPIC.replace("publicregistry", "impostor")), "not the configured upstream"),
    ],
)
def test_pushes_the_gate_does_not_watch_are_ignored_with_one_line_saying_why(
    event: dict[str, Any], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gate.functions"):
        assert push(event) is None

    lines = [r.getMessage() for r in caplog.records if r.name == "gate.functions"]
    assert len(lines) == 1 and reason in lines[0] and event["id"] in lines[0]


@pytest.mark.usefixtures("app_config")
def test_untagged_push_is_gated_when_its_rule_asks_for_it() -> None:
    request = push(pushed(repository="python", tag=None))

    assert request is not None and request.image is not None
    assert request.image.startswith("publicregistry.azurecr.cn/python@sha256:")


@pytest.mark.usefixtures("app_config")
@pytest.mark.parametrize(
    "event",
    [
        pushed(data=None),
        pushed(data={"target": "x", "request": {}}),
        pushed(digest="sha256:short"),
        # only the OCI image spec's registered algorithms name content a registry serves
        pushed(digest="md5:" + "a" * 32),
        pushed(digest="sha1:" + "a" * 40),
        pushed(digest="sha256x:" + "a" * 64),
        pushed(digest="foo:" + "A" * 64),
        pushed(repository="Upper/Case"),
        pushed(tag="bad tag!"),
        pushed(host=None),
        pushed(eventType=None),
    ],
)
def test_malformed_pushes_are_logged_with_their_id_and_dropped(
    event: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gate.functions"):
        assert push(event) is None

    (line,) = [r.getMessage() for r in caplog.records if r.name == "gate.functions"]
    assert "malformed" in line and event["id"] in line


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def mutate(event: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    event = copy.deepcopy(event)
    node: Any = event
    for key in path[:-1]:
        if not isinstance(node, dict) or not isinstance(node.get(key), dict):
            return event
        node = node[key]
    node[path[-1]] = value
    return event


FIELDS = [
    ["id"],
    ["eventType"],
    ["topic"],
    ["data"],
    ["data", "action"],
    ["data", "target"],
    ["data", "request"],
    ["data", "target", "digest"],
    ["data", "target", "tag"],
    ["data", "target", "repository"],
    ["data", "target", "mediaType"],
    ["data", "request", "host"],
]


@pytest.mark.usefixtures("app_config")
@settings(
    max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)
@given(path=st.sampled_from(FIELDS), value=json_values, cloud=st.booleans())
def test_fuzzed_events_never_raise_and_queue_only_watched_pushes(
    path: list[str], value: Any, cloud: bool
) -> None:
    base = sample("cloudevents-imagepushed.json" if cloud else "eventgrid-imagepushed.json")[0]
    if cloud:
        path = [{"eventType": "type", "topic": "source"}.get(p, p) for p in path]
    event = mutate(base, path, value)

    request = push(event)  # must not raise, whatever the payload

    if request is not None:
        assert request.image is not None and "@sha256:" in request.image
        assert request.image.startswith("publicregistry.azurecr.cn/node:")
