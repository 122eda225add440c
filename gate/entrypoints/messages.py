"""The gate request: what the triggers put on the ``gate-requests`` queue for the worker."""

from __future__ import annotations

import json

import msgspec

from gate.errors import UsageError


class MalformedRequest(UsageError):
    """A queue message that is not a gate request; it is dropped (retrying cannot fix it)."""


class GateRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Gate ``image`` (a reference, digest-pinned when the trigger knew the digest), or carry out
    the admitted record ``record_id``. ``event_id`` ties the request to its Event Grid event."""

    image: str | None = None
    record_id: str | None = None
    trigger: str = "event"
    force: bool = False
    event_id: str | None = None

    def __post_init__(self) -> None:
        # raised inside decoding, msgspec reports it as a ValidationError (with its path)
        if bool(self.image) == bool(self.record_id):
            raise ValueError("a gate request needs exactly one of 'image' or 'record_id'")

    def to_json(self) -> str:
        """The queue message body (unset and false fields left out)."""
        fields = msgspec.structs.asdict(self)
        return json.dumps({k: v for k, v in fields.items() if v not in (None, False)})

    @classmethod
    def from_json(cls, text: str | bytes) -> GateRequest:
        """Parse a queue message; :class:`MalformedRequest` says what is wrong with it."""
        try:
            return msgspec.json.decode(text, type=cls)
        except msgspec.ValidationError as exc:
            raise MalformedRequest(f"gate request is not valid: {exc}") from None
        except msgspec.DecodeError as exc:
            raise MalformedRequest(f"gate request is not JSON ({exc})") from None
