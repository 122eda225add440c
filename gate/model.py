"""Domain values of the gate: records, states, validation outcomes. All frozen."""

from __future__ import annotations

import enum
import secrets
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the only clock the domain reads)."""
    return datetime.now(UTC)


def new_record_id() -> str:
    """A record id: time-ordered hex (so ids sort like records) plus a random tail."""
    return f"{time.time_ns() // 1_000_000:011x}{secrets.token_hex(3)}"


class State(enum.StrEnum):
    """Where a gate record stands. ``promoted``, ``rejected``, ``failed``, ``rolled_back`` are
    final; the others are in progress."""

    RECEIVED = "received"
    VALIDATING = "validating"
    PROMOTING = "promoting"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"

    @property
    def final(self) -> bool:
        """True when nothing more will happen to a record in this state."""
        return self in _FINAL

    @property
    def decisive(self) -> bool:
        """True when the state settles (rule, digest): a new gate of it is a duplicate."""
        return self in (State.PROMOTED, State.REJECTED)


_FINAL = frozenset({State.PROMOTED, State.REJECTED, State.FAILED, State.ROLLED_BACK})


class Outcome(enum.StrEnum):
    """What a validation said: the image passed, the image is bad, or we could not tell."""

    PASSED = "passed"
    REJECTED = "rejected"
    FAILED = "failed"


@dataclass(frozen=True)
class ValidationResult:
    """The result of one validation run."""

    outcome: Outcome
    run_id: str
    reason: str
    log: str = ""
    log_location: str | None = None


@dataclass(frozen=True)
class GateRecord:
    """One gate attempt (or rollback): the durable, auditable decision.

    ``source`` is the reference as requested; ``digest`` the one it resolved to, which is the
    only thing validated and promoted. ``timings`` holds seconds per phase. ``attempts`` counts
    the workers that took the record on (0: admitted, not started; above 1: resumed).
    """

    id: str
    rule: str
    source: str
    target: str
    action: str = "gate"
    digest: str | None = None
    trigger: str = "manual"
    state: State = State.RECEIVED
    run_id: str | None = None
    reason: str = ""
    log: str = ""
    log_location: str | None = None
    target_tags: tuple[str, ...] = ()
    forced: bool = False
    actor: str | None = None
    attempts: int = 0
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    timings: dict[str, float] = field(default_factory=dict, hash=False, compare=False)

    def advance(self, state: State, **changes: Any) -> GateRecord:
        """Return this record moved to ``state`` with ``changes``, stamped now."""
        return replace(self, state=state, updated_at=utcnow(), **changes)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, log: str = "") -> GateRecord:
        """The inverse of :meth:`to_dict` (how ledgers store records); the log comes apart."""
        return cls(
            id=raw["id"],
            action=raw["action"],
            rule=raw["rule"],
            source=raw["source"],
            digest=raw["digest"],
            target=raw["target"],
            trigger=raw["trigger"],
            state=State(raw["state"]),
            run_id=raw["run_id"],
            reason=raw["reason"],
            log=log,
            log_location=raw["log_location"],
            target_tags=tuple(raw["target_tags"]),
            forced=raw["forced"],
            actor=raw["actor"],
            attempts=raw.get("attempts", 1),
            created_at=datetime.fromisoformat(raw["created_at"]),
            updated_at=datetime.fromisoformat(raw["updated_at"]),
            timings=dict(raw.get("timings", {})),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (datetimes as ISO 8601)."""
        return {
            "id": self.id,
            "action": self.action,
            "rule": self.rule,
            "source": self.source,
            "digest": self.digest,
            "target": self.target,
            "trigger": self.trigger,
            "state": self.state.value,
            "run_id": self.run_id,
            "reason": self.reason,
            "log_location": self.log_location,
            "target_tags": list(self.target_tags),
            "forced": self.forced,
            "actor": self.actor,
            "attempts": self.attempts,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "timings": dict(self.timings),
        }


@dataclass(frozen=True)
class Claim:
    """The ledger's answer to a claim: ``record`` is ours when ``acquired``, else the existing
    record that settles or is already gating the same (rule, digest).

    ``resumed`` means we adopted an in-progress record whose worker went silent (crashed or
    timed out): carry on from its state (e.g. poll its validation run) instead of starting over.
    """

    record: GateRecord
    acquired: bool
    resumed: bool = False
