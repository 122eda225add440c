"""Registry push events → gate requests.

Reads ``Microsoft.ContainerRegistry.ImagePushed`` in the Event Grid schema and the CloudEvents
1.0 schema, and decides — from the configuration alone, with no network — whether the push is
one the gate watches. Everything else is ignored with a reason (one log line), never retried.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gate.config.model import GateConfig
from gate.domain.ref import ImageRef, parse_digest
from gate.entrypoints.messages import GateRequest
from gate.errors import InvalidReference, UsageError

IMAGE_PUSHED = "Microsoft.ContainerRegistry.ImagePushed"
IMAGE_MEDIA_TYPES = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    }
)


class MalformedEvent(UsageError):
    """An event that claims to be a push but lacks what a push carries; dropped, never retried."""


@dataclass(frozen=True)
class PushEvent:
    """The parts of a registry event the gate looks at."""

    id: str
    event_type: str
    source: str
    action: str
    host: str
    repository: str
    tag: str | None
    digest: str | None
    media_type: str | None


@dataclass(frozen=True)
class Ignored:
    """A push the gate does not act on, and why."""

    reason: str


def _text(value: Any, what: str, event_id: str) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"event {event_id}: {what} is missing or not a string")
    return value


def parse_event(event: Mapping[str, Any]) -> PushEvent:
    """Read one event (Event Grid or CloudEvents schema, as a dict) into a :class:`PushEvent`.

    Only the envelope and, for pushes, ``data.target``/``data.request`` are required; an event of
    another type parses with empty push fields (it is ignored later, not refused).
    """
    if not isinstance(event, Mapping):
        raise MalformedEvent("an event must be a JSON object")
    event_id = str(event.get("id") or "?")[:100]
    cloud = "specversion" in event
    event_type = _text(event.get("type" if cloud else "eventType"), "the event type", event_id)
    source = event.get("source" if cloud else "topic") or ""
    if not isinstance(source, str):
        raise MalformedEvent(f"event {event_id}: its source/topic is not a string")
    data = event.get("data")
    if event_type != IMAGE_PUSHED:
        return PushEvent(event_id, event_type, source, "", "", "", None, None, None)
    if not isinstance(data, Mapping):
        raise MalformedEvent(f"event {event_id}: data is missing or not an object")
    target, request = data.get("target"), data.get("request")
    if not isinstance(target, Mapping) or not isinstance(request, Mapping):
        raise MalformedEvent(f"event {event_id}: data.target or data.request is missing")
    tag, digest, media_type = target.get("tag"), target.get("digest"), target.get("mediaType")
    for name, value in (("tag", tag), ("digest", digest), ("mediaType", media_type)):
        if value is not None and not isinstance(value, str):
            raise MalformedEvent(f"event {event_id}: data.target.{name} is not a string")
    return PushEvent(
        id=event_id,
        event_type=event_type,
        source=source,
        action=str(data.get("action") or ""),
        host=_text(request.get("host"), "data.request.host", event_id),
        repository=_text(target.get("repository"), "data.target.repository", event_id),
        tag=tag or None,
        digest=digest or None,
        media_type=media_type or None,
    )


def parse_notifications(envelope: Any) -> list[PushEvent]:
    """Read a CNCF distribution registry's notification envelope (``{"events": [...]}``).

    This is how a plain registry (``docker-registry``'s ``notifications.endpoints``) reports
    pushes: the local counterpart of ACR's Event Grid events. Pushes map to ImagePushed; pulls
    and blob events parse with their action, and :func:`triage` ignores them.
    """
    if not isinstance(envelope, Mapping) or not isinstance(envelope.get("events"), list):
        raise MalformedEvent("a notification envelope is a JSON object with an 'events' list")
    pushes = []
    for event in envelope["events"]:
        if not isinstance(event, Mapping):
            raise MalformedEvent("every notification event must be a JSON object")
        event_id = str(event.get("id") or "?")[:100]
        target, request = event.get("target"), event.get("request")
        if not isinstance(target, Mapping) or not isinstance(request, Mapping):
            raise MalformedEvent(f"notification {event_id}: target or request is missing")
        tag, digest, media_type = target.get("tag"), target.get("digest"), target.get("mediaType")
        for name, value in (("tag", tag), ("digest", digest), ("mediaType", media_type)):
            if value is not None and not isinstance(value, str):
                raise MalformedEvent(f"notification {event_id}: target.{name} is not a string")
        pushes.append(
            PushEvent(
                id=event_id,
                event_type=IMAGE_PUSHED,
                source="",
                action=str(event.get("action") or ""),
                host=_text(request.get("host"), "request.host", event_id),
                repository=_text(target.get("repository"), "target.repository", event_id),
                tag=tag or None,
                digest=digest or None,
                media_type=media_type or None,
            )
        )
    return pushes


def triage(config: GateConfig, push: PushEvent) -> GateRequest | Ignored:
    """Turn a push the configuration watches into a gate request; say why anything else is not."""
    if push.event_type != IMAGE_PUSHED:
        return Ignored(f"not an image push ({push.event_type})")
    if push.action != "push":
        return Ignored(f"action '{push.action}' is not a push")
    if push.media_type and push.media_type not in IMAGE_MEDIA_TYPES:
        return Ignored(f"{push.media_type} is not a container image (chart or artifact)")
    if push.digest is None:
        return Ignored("the push carries no digest")
    try:
        digest = parse_digest(push.digest)
        ref = ImageRef.parse(f"{push.host}/{push.repository}")
        if push.tag:
            ref = ref.with_tag(push.tag)
    except InvalidReference as exc:
        raise MalformedEvent(f"event {push.id}: {exc.message}") from None
    upstreams = {rule.source.registry for rule in config.rules}
    if ref.registry not in upstreams:
        return Ignored(f"registry {ref.registry} is not a configured upstream")
    expected = config.registry(ref.registry).resource_id
    if expected and push.source and push.source.lower() != expected.lower():
        return Ignored(f"event from {push.source}, not the configured upstream {expected}")
    rule = next((r for r in config.rules if r.watches(ref)), None)
    if rule is None:
        return Ignored(f"no rule watches {ref.repository}:{push.tag or '<untagged>'}")
    if push.tag is None and not rule.untagged:
        return Ignored(
            f"untagged push of {ref.repository} (rule '{rule.name}' ignores untagged pushes)"
        )
    return GateRequest(image=str(ref.with_digest(digest)), trigger="event", event_id=push.id)
