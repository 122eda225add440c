"""Registry push events → gate requests.

Reads ``Microsoft.ContainerRegistry.ImagePushed`` in the Event Grid schema and the CloudEvents
1.0 schema, and decides — from the configuration alone, with no network — whether the push is
one the gate watches. Everything else is ignored with a reason (one log line), never retried.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

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


class _Target(msgspec.Struct, frozen=True):
    repository: Annotated[str, msgspec.Meta(min_length=1)]
    tag: str | None = None
    digest: str | None = None
    mediaType: str | None = None  # the wire names, as the schemas spell them


class _Request(msgspec.Struct, frozen=True):
    host: Annotated[str, msgspec.Meta(min_length=1)]


class _Push(msgspec.Struct, frozen=True):
    """``data`` of an ImagePushed event; a notification event of a plain registry alike."""

    target: _Target
    request: _Request
    action: Any = None  # read as text, whatever a registry put there
    id: Any = None


class _Envelope(msgspec.Struct, frozen=True):
    """What both event schemas carry; ``data`` is read once the type is known."""

    id: str = "?"
    specversion: str | None = None
    type: str | None = None  # CloudEvents 1.0
    eventType: str | None = None  # Event Grid schema
    source: str | None = None  # CloudEvents 1.0
    topic: str | None = None  # Event Grid schema
    data: Any = None  # read once the type is known


class _Notifications(msgspec.Struct, frozen=True):
    events: list[_Push]


def _push_event(event_id: str, event_type: str, source: str, push: _Push) -> PushEvent:
    return PushEvent(
        id=event_id,
        event_type=event_type,
        source=source,
        action=str(push.action or ""),
        host=push.request.host,
        repository=push.target.repository,
        tag=push.target.tag or None,
        digest=push.target.digest or None,
        media_type=push.target.mediaType or None,
    )


def parse_event(event: Mapping[str, Any]) -> PushEvent:
    """Read one event (Event Grid or CloudEvents schema, as a dict) into a :class:`PushEvent`.

    Only the envelope and, for pushes, ``data.target``/``data.request`` are required; an event of
    another type parses with empty push fields (it is ignored later, not refused). Fields the
    gate does not read are allowed: both schemas carry more (subject, eventTime, ...).
    """
    if not isinstance(event, Mapping):
        raise MalformedEvent("an event must be a JSON object")
    event_id = str(event.get("id") or "?")[:100]
    try:
        envelope = msgspec.convert(event, _Envelope, str_keys=True)
    except msgspec.ValidationError as exc:
        raise MalformedEvent(f"event {event_id}: {exc}") from None
    cloud = envelope.specversion is not None
    event_type = envelope.type if cloud else envelope.eventType
    if not event_type:
        raise MalformedEvent(f"event {event_id}: the event type is missing")
    source = (envelope.source if cloud else envelope.topic) or ""
    if event_type != IMAGE_PUSHED:
        return PushEvent(event_id, event_type, source, "", "", "", None, None, None)
    try:
        push = msgspec.convert(envelope.data, _Push, str_keys=True)
    except msgspec.ValidationError as exc:
        raise MalformedEvent(f"event {event_id}: data: {exc}") from None
    return _push_event(event_id, event_type, source, push)


def parse_notifications(envelope: Any) -> list[PushEvent]:
    """Read a CNCF distribution registry's notification envelope (``{"events": [...]}``).

    This is how a plain registry (``docker-registry``'s ``notifications.endpoints``) reports
    pushes: the local counterpart of ACR's Event Grid events. Pushes map to ImagePushed; pulls
    and blob events parse with their action, and :func:`triage` ignores them.
    """
    try:
        notifications = msgspec.convert(envelope, _Notifications, str_keys=True)
    except msgspec.ValidationError as exc:
        raise MalformedEvent(f"notification envelope: {exc}") from None
    return [
        _push_event(str(push.id or "?")[:100], IMAGE_PUSHED, "", push)
        for push in notifications.events
    ]


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
