"""Domain values of the gate: records, states, validation outcomes. All frozen."""

from __future__ import annotations

import enum
import re
import secrets
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from gate.errors import NotFound, UsageError


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the only clock the domain reads)."""
    return datetime.now(UTC)


def parse_instant(text: str, what: str = "time") -> datetime:
    """An ISO 8601 time from outside as an aware UTC datetime (a time without zone is UTC).

    :class:`~gate.errors.UsageError` when it is not one, or when it lies outside the years that
    can be held in UTC (``0001-01-01T00:00:00+14:00`` is a valid ISO time before year 1 UTC).
    """
    shown = repr(text[:40] + "…" if len(text) > 40 else text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{what} {shown} is not an ISO 8601 time; write e.g. 2026-11-28 or 2026-11-28T00:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise UsageError(
            f"{what} {shown} falls outside the years 1 to 9999 in UTC; give a time inside them"
        ) from None


def new_record_id() -> str:
    """A record id: time-ordered hex (so ids sort like records) plus a random tail."""
    return f"{time.time_ns() // 1_000_000:011x}{secrets.token_hex(3)}"


RECORD_ID_MIN_PREFIX = 6
_RECORD_ID_QUERY = re.compile(r"[0-9a-f]{6,17}")


def record_id_query(text: str) -> str:
    """``text`` checked as a record id or a prefix of one (6 to 17 lowercase hex characters).

    Ledgers look ids up exactly or by this prefix as a key range, never as a pattern, so text
    from outside can neither match other records nor reach a query engine. Raises
    :class:`~gate.errors.NotFound` (no record can have such an id) for anything else.
    """
    if isinstance(text, str) and _RECORD_ID_QUERY.fullmatch(text):
        return text
    shown = repr(text[:40] + "…" if isinstance(text, str) and len(text) > 40 else text)
    raise NotFound(
        f"no record {shown}: a record id (or a prefix of one) is 6 to 17 lowercase hex "
        "characters, as 'gate history' lists them"
    )


def record_id_range(prefix: str) -> tuple[str, str]:
    """The key range ``[low, high)`` of the ids that start with a checked hex ``prefix``."""
    # 'f' + 1 is 'g', above every hex digit: the range holds exactly the ids with this prefix
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


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
class DownstreamRun:
    """One downstream task the gate scheduled after a promotion (it does not wait for it).

    ``registry`` / ``task`` name the task; ``run_id`` is the run it got, or None when
    scheduling failed, with ``error`` saying why (the promotion stands either way).
    """

    registry: str
    task: str
    run_id: str | None = None
    error: str = ""

    @property
    def scheduled(self) -> bool:
        """True when the task run was queued."""
        return self.run_id is not None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "registry": self.registry,
            "task": self.task,
            "run_id": self.run_id,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DownstreamRun:
        """The inverse of :meth:`to_dict`."""
        return cls(
            registry=str(raw["registry"]),
            task=str(raw["task"]),
            run_id=raw.get("run_id"),
            error=str(raw.get("error") or ""),
        )


@dataclass(frozen=True)
class GateRecord:
    """One gate attempt (or rollback): the durable, auditable decision.

    ``source`` is the reference as requested; ``digest`` the one it resolved to, which is the
    only thing validated and promoted. ``timings`` holds seconds per phase. ``attempts`` counts
    the workers that took the record on (0: admitted, not started; above 1: resumed).
    ``downstream`` lists the downstream task runs scheduled after the promotion.
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
    downstream: tuple[DownstreamRun, ...] = ()

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
            # records written before downstream runs existed have none
            downstream=tuple(DownstreamRun.from_dict(d) for d in raw.get("downstream") or ()),
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
            "downstream": [d.to_dict() for d in self.downstream],
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
