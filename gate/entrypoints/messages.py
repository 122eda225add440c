"""The gate request: what the triggers put on the ``gate-requests`` queue for the worker."""

from __future__ import annotations

import json
from typing import Annotated

import msgspec

from gate.errors import UsageError


class MalformedRequest(UsageError):
    """A queue message that is not a gate request; it is dropped (retrying cannot fix it)."""


class GateRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Gate ``image`` (a reference, digest-pinned when the trigger knew the digest), carry out
    the admitted record ``record_id``, or re-validate the rule named ``revalidate`` (the timer
    queues one per rule due). ``event_id`` ties the request to its Event Grid event.

    ``postponed`` counts how often a worker put the request back because another worker held
    its (rule, digest): it bounds the postponements. Every field has a default, so a message
    written before a field existed still parses.
    """

    image: str | None = None
    record_id: str | None = None
    revalidate: str | None = None
    trigger: str = "event"
    force: bool = False
    event_id: str | None = None
    postponed: Annotated[int, msgspec.Meta(ge=0)] = 0

    def __post_init__(self) -> None:
        # raised inside decoding, msgspec reports it as a ValidationError (with its path)
        if sum(bool(v) for v in (self.image, self.record_id, self.revalidate)) != 1:
            raise ValueError(
                "a gate request needs exactly one of 'image', 'record_id' or 'revalidate'"
            )

    def to_json(self) -> str:
        """The queue message body (unset and false fields left out)."""
        fields = msgspec.structs.asdict(self)
        return json.dumps({k: v for k, v in fields.items() if v not in (None, False, 0)})

    @classmethod
    def from_json(cls, text: str | bytes) -> GateRequest:
        """Parse a queue message; :class:`MalformedRequest` says what is wrong with it."""
        try:
            return msgspec.json.decode(text, type=cls)
        except msgspec.ValidationError as exc:
            raise MalformedRequest(f"gate request is not valid: {exc}") from None
        except msgspec.DecodeError as exc:
            raise MalformedRequest(f"gate request is not JSON ({exc})") from None
