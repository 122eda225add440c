"""The gate request: what the triggers put on the ``gate-requests`` queue for the worker."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from gate.errors import UsageError


class MalformedRequest(UsageError):
    """A queue message that is not a gate request; it is dropped (retrying cannot fix it)."""


@dataclass(frozen=True)
class GateRequest:
    """Gate ``image`` (a reference, digest-pinned when the trigger knew the digest), or carry out
    the admitted record ``record_id``. ``event_id`` ties the request to its Event Grid event."""

    image: str | None = None
    record_id: str | None = None
    trigger: str = "event"
    force: bool = False
    event_id: str | None = None

    def to_json(self) -> str:
        """The queue message body."""
        return json.dumps({k: v for k, v in asdict(self).items() if v not in (None, False)})

    @classmethod
    def from_json(cls, text: str | bytes) -> GateRequest:
        """Parse a queue message; :class:`MalformedRequest` says what is wrong with it."""
        try:
            raw: Any = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedRequest(f"gate request is not JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise MalformedRequest("gate request must be a JSON object")
        unknown = sorted(set(raw) - {"image", "record_id", "trigger", "force", "event_id"})
        if unknown:
            raise MalformedRequest(f"gate request has unknown field(s): {', '.join(unknown)}")
        for key in ("image", "record_id", "trigger", "event_id"):
            if key in raw and not isinstance(raw[key], str):
                raise MalformedRequest(f"gate request field '{key}' must be a string")
        if not isinstance(raw.get("force", False), bool):
            raise MalformedRequest("gate request field 'force' must be true or false")
        if bool(raw.get("image")) == bool(raw.get("record_id")):
            raise MalformedRequest("gate request needs exactly one of 'image' or 'record_id'")
        return cls(
            image=raw.get("image"),
            record_id=raw.get("record_id"),
            trigger=raw.get("trigger", "event"),
            force=raw.get("force", False),
            event_id=raw.get("event_id"),
        )
