"""The gate request on the queue: its wire form, and what a malformed one is told."""

from __future__ import annotations

import pytest

from gate.entrypoints.events import MalformedEvent, parse_event, parse_notifications
from gate.entrypoints.messages import GateRequest, MalformedRequest


def test_a_request_body_leaves_out_unset_and_false_fields_and_reads_back_equal() -> None:
    request = GateRequest(image="example.io/node:15@sha256:" + "a" * 64, trigger="poll")

    body = request.to_json()

    assert body == '{"image": "example.io/node:15@sha256:' + "a" * 64 + '", "trigger": "poll"}'
    assert GateRequest.from_json(body) == request
    assert GateRequest.from_json(GateRequest(record_id="r1", force=True).to_json()).force


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"{not json", "is not JSON"),
        (b"[1]", "Expected `object`, got `array`"),
        (b'{"image": "a", "colour": "red"}', "unknown field `colour`"),
        (b'{"image": 5}', "Expected `str | null`, got `int` - at `$.image`"),
        (b'{"record_id": "r", "force": "yes"}', "Expected `bool`, got `str` - at `$.force`"),
        (b'{"image": "a", "record_id": "r"}', "exactly one of 'image', 'record_id' or"),
        (b'{"image": "a", "revalidate": "node"}', "exactly one of 'image', 'record_id' or"),
        (b"{}", "exactly one of 'image', 'record_id' or 'revalidate'"),
        (b'{"image": "a", "postponed": -1}', "Expected `int` >= 0 - at `$.postponed`"),
    ],
)
def test_a_malformed_request_says_what_is_wrong(body: bytes, said: str) -> None:
    with pytest.raises(MalformedRequest, match=r"^gate request") as raised:
        GateRequest.from_json(body)

    assert said in raised.value.message


def test_a_push_event_with_a_wrongly_typed_field_names_the_field_and_the_event() -> None:
    event = {
        "id": "e-7",
        "eventType": "Microsoft.ContainerRegistry.ImagePushed",
        "topic": "/subscriptions/x",
        "data": {
            "action": "push",
            "target": {"repository": "node", "tag": 15, "digest": "sha256:" + "a" * 64},
            "request": {"host": "example.io"},
        },
    }

    with pytest.raises(MalformedEvent) as raised:
        parse_event(event)

    assert raised.value.message.startswith("event e-7: data: ")
    assert "at `$.target.tag`" in raised.value.message


def test_a_push_without_a_host_or_repository_is_malformed() -> None:
    with pytest.raises(MalformedEvent, match=r"length >= 1 - at `\$.events\[0\].request.host`"):
        parse_notifications({"events": [{"target": {"repository": "n"}, "request": {"host": ""}}]})
    with pytest.raises(MalformedEvent, match=r"missing required field `repository`"):
        parse_notifications({"events": [{"target": {}, "request": {"host": "h"}}]})
