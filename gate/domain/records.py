"""Domain values of the gate: records, states, validation outcomes. All frozen.

The values are msgspec Structs, as the configuration's are (see :mod:`gate.config.model`): every
command loads this module, and a Struct class is built in C where a dataclass compiles its
methods first.
"""

from __future__ import annotations

import enum
import os
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from msgspec.structs import replace

from gate.errors import InfrastructureError, NotFound, UsageError


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


def _instant(raw: Any) -> datetime | None:
    return datetime.fromisoformat(raw) if raw else None


def new_holder() -> str:
    """A lease holder id: host and process (to tell who held a record) and a random part."""
    import socket  # only processes that gate load it (history and show never do)

    return f"{socket.gethostname()[:40]}/{os.getpid()}/{os.urandom(4).hex()}"


RECORD_ID_RANDOM_BITS = 84


def new_record_id() -> str:
    """A record id: 32 lowercase hex characters, milliseconds since the epoch (11, so ids sort
    like the records they name, and like the shorter ids of older ledgers) then 84 random bits.

    84 bits make a collision among the ids of one millisecond as unlikely as one of UUIDv4's
    122 bits over a whole ledger's life; ledgers still refuse a duplicate id rather than
    overwrite the record it names.
    """
    # os.urandom is the operating system's CSPRNG, the source of the secrets module too
    tail = int.from_bytes(os.urandom(11)) >> (88 - RECORD_ID_RANDOM_BITS)
    return f"{time.time_ns() // 1_000_000:011x}{tail:021x}"


RECORD_ID_MIN_PREFIX = 6
_RECORD_ID_QUERY = re.compile(r"[0-9a-f]{6,32}")


def record_id_query(text: str) -> str:
    """``text`` checked as a record id or a prefix of one (6 to 32 lowercase hex characters).

    Ledgers look ids up exactly or by this prefix as a key range, never as a pattern, so text
    from outside can neither match other records nor reach a query engine. Raises
    :class:`~gate.errors.NotFound` (no record can have such an id) for anything else.
    """
    if isinstance(text, str) and _RECORD_ID_QUERY.fullmatch(text):
        return text
    shown = repr(text[:40] + "…" if isinstance(text, str) and len(text) > 40 else text)
    raise NotFound(
        f"no record {shown}: a record id (or a prefix of one) is 6 to 32 lowercase hex "
        "characters, as 'gate history' lists them"
    )


def record_id_range(prefix: str) -> tuple[str, str]:
    """The key range ``[low, high)`` of the ids that start with a checked hex ``prefix``."""
    # 'f' + 1 is 'g', above every hex digit: the range holds exactly the ids with this prefix
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


class State(enum.StrEnum):
    """Where a gate record stands. ``promoted``, ``rejected``, ``failed``, ``rolled_back`` are
    final; the others are in progress. ``validated`` is a passing validation whose promotion did
    not finish: the next attempt promotes it without validating again while the pass is fresh.
    ``waiting`` is a passing validation held back by the rule's cooldown until ``eligible_at``;
    ``superseded`` (final) is a waiting digest whose upstream tag moved on: never promoted."""

    RECEIVED = "received"
    VALIDATING = "validating"
    VALIDATED = "validated"
    PROMOTING = "promoting"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    WAITING = "waiting"
    SUPERSEDED = "superseded"
    # scheduled re-validation of a promoted digest (action ``revalidate``) and what followed it
    # (action ``demote``); all final, none decisive: they never settle a (rule, digest)'s gate
    REVALIDATED = "revalidated"
    FAILING = "failing"
    DEMOTED = "demoted"
    BROKEN = "broken"

    @property
    def final(self) -> bool:
        """True when nothing more will happen to a record in this state."""
        return self in _FINAL

    @property
    def decisive(self) -> bool:
        """True when the state settles (rule, digest): a new gate of it is a duplicate."""
        return self in (State.PROMOTED, State.REJECTED, State.SUPERSEDED)


_FINAL = frozenset(
    {State.PROMOTED, State.REJECTED, State.FAILED, State.ROLLED_BACK, State.SUPERSEDED}
) | frozenset({State.REVALIDATED, State.FAILING, State.DEMOTED, State.BROKEN})


class Outcome(enum.StrEnum):
    """What a validation said: the image passed, the image is bad, or we could not tell."""

    PASSED = "passed"
    REJECTED = "rejected"
    FAILED = "failed"


class ValidationResult(msgspec.Struct, frozen=True):
    """The result of one validation run."""

    outcome: Outcome
    run_id: str
    reason: str
    log: str = ""
    log_location: str | None = None


class DownstreamRun(msgspec.Struct, frozen=True):
    """One downstream task the gate started after a promotion.

    ``registry`` / ``task`` name the task; ``run_id`` is the run it got, or None when
    scheduling failed, with ``error`` saying why (the promotion stands either way). An ACR task
    is queued and not waited for (``outcome`` stays empty); a local task file runs to its end:
    ``outcome`` is ``succeeded`` or ``failed`` (then ``error`` says why) and ``output`` is the
    last line its last step printed.
    """

    registry: str
    task: str
    run_id: str | None = None
    error: str = ""
    outcome: str = ""
    output: str = ""

    @property
    def scheduled(self) -> bool:
        """True when the task run was queued (or, for a local task file, ran and succeeded)."""
        return self.run_id is not None and not self.error

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``outcome`` and ``output`` only for a run that has an outcome)."""
        shown: dict[str, Any] = {
            "registry": self.registry,
            "task": self.task,
            "run_id": self.run_id,
            "error": self.error,
        }
        if self.outcome:
            shown.update(outcome=self.outcome, output=self.output)
        return shown

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DownstreamRun:
        """The inverse of :meth:`to_dict`."""
        return cls(
            registry=str(raw["registry"]),
            task=str(raw["task"]),
            run_id=raw.get("run_id"),
            error=str(raw.get("error") or ""),
            outcome=str(raw.get("outcome") or ""),
            output=str(raw.get("output") or ""),
        )


class PlatformResult(msgspec.Struct, frozen=True):
    """One platform of a multi-platform validation: what ran on it and what it said.

    ``platform`` is the rule's ``os/arch[/variant]``; ``digest`` the child manifest that was
    validated for it; ``verdict`` an :class:`Outcome` value (empty: not run yet); ``run_id``,
    ``reason`` and ``log_location`` are that run's.
    """

    platform: str
    digest: str
    verdict: str = ""
    run_id: str | None = None
    reason: str = ""
    log_location: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "platform": self.platform,
            "digest": self.digest,
            "verdict": self.verdict,
            "run_id": self.run_id,
            "reason": self.reason,
            "log_location": self.log_location,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PlatformResult:
        """The inverse of :meth:`to_dict`."""
        return cls(
            platform=str(raw["platform"]),
            digest=str(raw["digest"]),
            verdict=str(raw.get("verdict") or ""),
            run_id=raw.get("run_id"),
            reason=str(raw.get("reason") or ""),
            log_location=raw.get("log_location"),
        )


class GateRecord(msgspec.Struct, frozen=True):
    """One gate attempt (or rollback): the durable, auditable decision.

    ``source`` is the reference as requested; ``digest`` the one it resolved to, which is the
    only thing validated and promoted. ``timings`` holds seconds per phase. ``attempts`` counts
    the workers that took the record on (0: admitted, not started; above 1: resumed).
    ``downstream`` lists the downstream task runs scheduled after the promotion.

    While in progress a record is held by a lease: ``lease_holder`` (empty: queued for a worker,
    held by none) until ``lease_until``, which the holder keeps pushing forward while it works;
    once it has passed, another worker may take the record over. ``validated_at`` is when the
    validation passed; ``promoted_tags`` the target tags found at the digest after a promotion
    that did not finish (a run-ID tag written while the stable tag did not move).
    ``attestation`` is the digest of the signed attestation the gate attached for this record (a
    promotion's verdict, or a rollback's demotion of the digest it moved off), when one was.
    ``first_seen`` is when the gate first saw the digest: set when the record is made, kept when
    a redelivery or a later poll takes the same record on (and by the record that validates a
    stale pass again); ``eligible_at`` is when the rule's cooldown lets it be promoted, set
    once a cooldown held it back (None: never held).
    ``actor`` names who asked (a person's or pipeline's display name, ``function-key``, or
    the trigger's own name) and ``actor_id`` is their Microsoft Entra object id, when the
    platform authenticated them.
    ``platforms`` holds one result per platform of a rule with ``platforms:`` (empty: the
    image was validated once, on the runtime's default platform).
    ``of_record`` links a re-validation to the promotion it re-checks, and a demotion (or a
    rule marked broken) to the re-validation that failed.

    Records are equal when every field is (``timings`` too) and hash by ``id``.
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
    actor_id: str = ""
    attempts: int = 0
    created_at: datetime = msgspec.field(default_factory=utcnow)
    updated_at: datetime = msgspec.field(default_factory=utcnow)
    timings: dict[str, float] = msgspec.field(default_factory=dict)
    downstream: tuple[DownstreamRun, ...] = ()
    lease_holder: str = ""
    lease_until: datetime | None = None
    validated_at: datetime | None = None
    promoted_tags: tuple[str, ...] = ()
    attestation: str = ""
    first_seen: datetime | None = None
    eligible_at: datetime | None = None
    of_record: str = ""
    platforms: tuple[PlatformResult, ...] = ()

    def __hash__(self) -> int:  # timings is a dict; equal records have the same id
        return hash(self.id)

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
            actor_id=str(raw.get("actor_id") or ""),
            attempts=raw.get("attempts", 1),
            created_at=datetime.fromisoformat(raw["created_at"]),
            updated_at=datetime.fromisoformat(raw["updated_at"]),
            timings=dict(raw.get("timings", {})),
            # records written before downstream runs existed have none
            downstream=tuple(DownstreamRun.from_dict(d) for d in raw.get("downstream") or ()),
            # records written before leases existed have none: their updated_at stands for one
            lease_holder=str(raw.get("lease_holder") or ""),
            lease_until=_instant(raw.get("lease_until")),
            validated_at=_instant(raw.get("validated_at")),
            promoted_tags=tuple(raw.get("promoted_tags") or ()),
            attestation=str(raw.get("attestation") or ""),
            first_seen=_instant(raw.get("first_seen")),
            eligible_at=_instant(raw.get("eligible_at")),
            of_record=str(raw.get("of_record") or ""),
            # records written before per-platform validation have none
            platforms=tuple(PlatformResult.from_dict(p) for p in raw.get("platforms") or ()),
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
            "actor_id": self.actor_id,
            "attempts": self.attempts,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "timings": dict(self.timings),
            "downstream": [d.to_dict() for d in self.downstream],
            "lease_holder": self.lease_holder,
            "lease_until": self.lease_until.isoformat() if self.lease_until else None,
            "validated_at": self.validated_at.isoformat() if self.validated_at else None,
            "promoted_tags": list(self.promoted_tags),
            "attestation": self.attestation,
            "first_seen": self.first_seen.isoformat() if self.first_seen else None,
            "eligible_at": self.eligible_at.isoformat() if self.eligible_at else None,
            "of_record": self.of_record,
            "platforms": [p.to_dict() for p in self.platforms],
        }

    def lease_live(self, now: datetime, lease_seconds: float) -> bool:
        """True while someone holds (or a queue still owes a worker) this in-progress record.

        A record without ``lease_until`` (written before leases) is held for ``lease_seconds``
        after its last update.
        """
        if self.state.final:
            return False
        until = self.lease_until
        if until is None:
            until = self.updated_at + timedelta(seconds=lease_seconds)
        return now < until

    @property
    def partial(self) -> bool:
        """True when a promotion wrote some target tags and did not finish."""
        return self.state is not State.PROMOTED and bool(self.promoted_tags)


class Claim(msgspec.Struct, frozen=True):
    """The ledger's answer to a claim: ``record`` is ours when ``acquired``, else the existing
    record that settles or is already gating the same (rule, digest).

    ``resumed`` means we adopted an in-progress record whose worker went silent (crashed or
    timed out): carry on from its state (e.g. poll its validation run) instead of starting over.
    """

    record: GateRecord
    acquired: bool
    resumed: bool = False


class LeaseLost(InfrastructureError):
    """Another worker took a record over (its lease had lapsed): this one writes no verdict."""


def claim_step(
    existing: GateRecord,
    record: GateRecord,
    *,
    now: datetime,
    force: bool,
    start: bool,
    lease_seconds: float,
    holder: str,
) -> Claim | None:
    """What a claim of ``record`` makes of ``existing``, a record of the same (rule, digest).

    The one decision both ledgers take (each inside its own atomic write): None to look at the
    next (older) record; a claim not acquired to answer with ``existing``; an acquired claim
    whose record the ledger must write, conditionally on ``existing`` being unchanged. Failed
    records never reach this function: they never block.
    """
    lease = now + timedelta(seconds=lease_seconds)
    # queued for a worker and held by none (admitted, or re-queued after its holder died);
    # records from before leases are only taken like this before their first start
    queued = not existing.state.final and not existing.lease_holder
    if existing.id == record.id and queued and (existing.attempts == 0 or existing.lease_until):
        if not start:
            return Claim(existing, acquired=False)
        taken = replace(
            existing,
            attempts=existing.attempts + 1,
            lease_holder=holder,
            lease_until=lease,
            updated_at=now,
        )
        return Claim(taken, acquired=True, resumed=existing.attempts > 0)
    if existing.state.decisive:
        return None if force else Claim(existing, acquired=False)
    if existing.state.final:
        return None
    if existing.lease_live(now, lease_seconds):
        # someone is gating it right now (or a queue owes it a worker); even --force waits
        return Claim(existing, acquired=False)
    # its holder went silent: take the record over and carry on where it stopped; an admission
    # (not start) re-queues it, held by none, for the worker its caller queues
    adopted = replace(
        existing,
        attempts=existing.attempts + 1 if start else existing.attempts,
        lease_holder=holder if start else "",
        lease_until=lease,
        updated_at=now,
    )
    return Claim(adopted, acquired=True, resumed=True)


def claim_insert(
    record: GateRecord, *, now: datetime, start: bool, lease_seconds: float, holder: str
) -> GateRecord:
    """``record`` as a claim inserts it: started and held by ``holder``, or queued for a worker."""
    return replace(
        record,
        attempts=1 if start else 0,
        lease_holder=holder if start else "",
        lease_until=now + timedelta(seconds=lease_seconds),
    )


def merge_lease(stored: GateRecord, record: GateRecord) -> GateRecord:
    """``record`` as a save writes it over ``stored``: refused if another worker holds it.

    A save never shortens the lease the holder's heartbeat pushed forward, and never moves it
    to another holder (only claims and renewals do); :class:`LeaseLost` when ``stored`` is held
    by someone other than the ``record``'s holder.
    """
    if stored.lease_holder != record.lease_holder:
        raise LeaseLost(
            f"record {record.id} was taken over by {stored.lease_holder or 'the queue'} "
            "after its lease lapsed; its outcome will be the record's (ask again later)"
        )
    until = stored.lease_until
    if record.lease_until is not None and (until is None or record.lease_until > until):
        until = record.lease_until
    return replace(record, lease_until=until)


def renew_lease(stored: GateRecord, holder: str, until: datetime) -> GateRecord | None:
    """``stored`` with its lease moved to ``until`` if ``holder`` holds it, else None.

    An ``until`` at or before now gives the lease up (the record may be taken over at once).
    """
    if not holder or stored.lease_holder != holder or stored.state.final:
        return None
    return replace(stored, lease_until=until)


class HistoryQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Which records :meth:`Ledger.history` lists: each filter set narrows it (None: any).

    ``since`` and ``before`` bound the creation time (``before`` strictly: it pages, given the
    last record of the previous page); ``actor`` matches a record's ``actor_id`` (an object id)
    or ``actor`` (a name) exactly; ``limit`` caps the page (negative: no limit).
    """

    rule: str | None = None
    target: str | None = None
    state: State | None = None
    since: datetime | None = None
    before: datetime | None = None
    actor: str | None = None
    limit: int = 50


FIRST_PAGE = HistoryQuery()
"""The newest 50 records, unfiltered."""
