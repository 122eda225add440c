"""The service layer: gate an image, poll upstreams, roll back. Ports come in as arguments.

The invariants live here:

* the digest is resolved once; the digest validated is the digest promoted;
* one validation and one promotion per (rule, digest), however often it is asked for, unless
  forced (the ledger's claim decides, atomically);
* the run-ID tag is written (never overwritten) before the stable tag moves, and the stable tag
  only ever moves to a digest that passed validation;
* every decision, including failures, ends in a record;
* downstream tasks start only after a promotion, and what happens to them never undoes it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from copy import replace
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, cast

from gate.config.model import DownstreamTask, GateConfig, Rule
from gate.domain.records import (
    Claim,
    DownstreamRun,
    GateRecord,
    LeaseLost,
    Outcome,
    PlatformResult,
    State,
    ValidationResult,
    new_holder,
    new_record_id,
    utcnow,
)
from gate.domain.ref import ImageRef, parse_digest
from gate.errors import Conflict, GateError, NotFound, UsageError
from gate.logsafe import get_logger
from gate.ports import (
    DownstreamRunner,
    Ledger,
    ManifestReader,
    PolledDigest,
    PollingRegistry,
    ProgressCallback,
    RateLimited,
    Registry,
    Resume,
    Secrets,
    SignatureStore,
    ValidationRequest,
    Validator,
)

if TYPE_CHECKING:
    # the attestor is built (and attest imported) by the composition root, when configured
    from gate.domain.attestation import Attestor

_log = get_logger("gate.service")

Notify = Callable[[str, GateRecord, str], None]
"""``notify(event, record, message)``: progress for whoever watches (CLI output, logs)."""

WAIT_POLL_SECONDS = 0.5


def quiet(event: str, record: GateRecord, message: str) -> None:
    """The default observer: says nothing."""


@dataclass
class PollMemory:
    """What one process's poll passes hand on: tags a pass did not reach, registries paused.

    Kept with the :class:`Gatekeeper` (``gate watch`` and a warm Functions host build it once
    per process). ``pending`` holds ``(rule, tag reference)`` pairs, polled first next pass;
    ``paused`` maps a registry to (wall-clock time its pause ends, why).
    """

    pending: list[tuple[str, str]] = field(default_factory=list)
    paused: dict[str, tuple[float, str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> str:
        """The carry-over as JSON, for a host that keeps it between processes."""
        import json

        with self.lock:
            return json.dumps(
                {
                    "pending": [list(p) for p in self.pending],
                    "paused": {r: list(p) for r, p in self.paused.items()},
                },
                sort_keys=True,
            )

    def restore(self, text: str) -> None:
        """Take over a :meth:`snapshot`; one that does not parse is ignored with a warning (the
        carry-over only orders the next pass and spares paused registries)."""
        import json

        try:
            body = json.loads(text)
            pending = [(str(rule), str(ref)) for rule, ref in body["pending"]]
            paused = {str(r): (float(u), str(w)) for r, (u, w) in body["paused"].items()}
        except (ValueError, TypeError, KeyError, AttributeError):
            _log.warning("poll carry-over ignored: it is not a snapshot this version wrote")
            return
        with self.lock:
            self.pending = pending
            self.paused = paused


@dataclass(frozen=True)
class Gatekeeper:
    """The gate's ports and configuration, bundled for the service functions."""

    config: GateConfig
    registry: Registry
    validator: Validator
    ledger: Ledger
    secrets: Secrets
    notify: Notify = field(default=quiet)
    downstream: DownstreamRunner | None = None
    attestor: Attestor | None = None
    signatures: SignatureStore | None = None
    poll_memory: PollMemory = field(default_factory=PollMemory, compare=False)
    # the clock cooldowns are measured by (first sightings, eligible times); a seam for tests
    clock: Callable[[], datetime] = field(default=utcnow)


@dataclass(frozen=True)
class GateOutcome:
    """What a gate request ended in: the deciding record, and whether it was decided before."""

    record: GateRecord
    duplicate: bool = False

    @property
    def verdict(self) -> str:
        """``promoted``, ``rejected`` or ``failed`` (or an in-progress state when not waiting)."""
        return self.record.state.value

    @property
    def exit_code(self) -> int:
        """0 promoted, 1 rejected or superseded, 3 failed or still in progress or waiting out a
        cooldown (worth asking again)."""
        return {State.PROMOTED: 0, State.REJECTED: 1, State.SUPERSEDED: 1}.get(self.record.state, 3)

    def to_dict(self) -> dict[str, object]:
        """The ``gate run --json`` object."""
        r = self.record
        return {
            "verdict": self.verdict,
            "duplicate": self.duplicate,
            "rule": r.rule,
            "source": r.source,
            "digest": r.digest,
            "target": r.target,
            "target_tags": list(r.target_tags),
            "run_id": r.run_id,
            "record_id": r.id,
            "reason": r.reason,
            "downstream": [d.to_dict() for d in r.downstream],
            "eligible_at": r.eligible_at.isoformat() if r.eligible_at else None,
        }


def _as_ref(image: str | ImageRef) -> ImageRef:
    return image if isinstance(image, ImageRef) else ImageRef.parse(image)


def _prepare(
    keeper: Gatekeeper,
    image: str | ImageRef,
    *,
    trigger: str,
    force: bool,
    actor: str | None = None,
    actor_id: str = "",
) -> tuple[Rule, ImageRef, GateRecord]:
    """Match the rule and resolve the digest, once: the record every later step works on."""
    ref = _as_ref(image)
    rule = keeper.config.match(ref)
    tag = rule.gated_tag(ref)
    started = time.monotonic()
    digest = ref.digest or keeper.registry.resolve(ref)
    if ref.digest:
        # a digest request must exist upstream before we claim anything for it
        keeper.registry.resolve(ref.pinned())
    record = GateRecord(
        id=new_record_id(),
        rule=rule.name,
        source=str(ref),
        digest=digest,
        target=rule.target.name,
        trigger=trigger,
        forced=force,
        actor=actor,
        actor_id=actor_id,
        timings={"resolve": round(time.monotonic() - started, 3)},
        first_seen=keeper.clock(),
    )
    return rule, ref.with_tag(tag).with_digest(digest), record


def lease_seconds(keeper: Gatekeeper) -> float:
    """Seconds a lease lasts past its last renewal: a silent holder is taken over after that."""
    return keeper.config.lease.seconds


def gate_image(
    keeper: Gatekeeper,
    image: str | ImageRef,
    *,
    trigger: str = "manual",
    force: bool = False,
    wait: bool = True,
    progress: ProgressCallback | None = None,
) -> GateOutcome:
    """Gate one upstream image: resolve once, dedupe, validate, promote, record.

    A request for a (rule, digest) already decided returns that decision (``duplicate``) without
    validating or copying anything, unless ``force``. When another process is gating the same
    (rule, digest), waits for its decision (or returns at once with ``wait=False``).
    """
    rule, source, record = _prepare(keeper, image, trigger=trigger, force=force)
    announced = False
    holder = new_holder()
    while True:
        claim = keeper.ledger.claim(
            record, force=force, lease_seconds=lease_seconds(keeper), holder=holder
        )
        if claim.acquired:
            claim = _forcing(keeper, claim, force, save=False)
            break
        existing = claim.record
        if existing.state.final:
            keeper.notify(
                "duplicate",
                existing,
                f"{source.digest} already {existing.state} by record {existing.id}",
            )
            return GateOutcome(existing, duplicate=True)
        if not wait:
            return GateOutcome(existing, duplicate=True)
        if not announced:
            keeper.notify(
                "waiting",
                existing,
                f"record {existing.id} is gating {source.digest}; waiting for it",
            )
            announced = True
        time.sleep(WAIT_POLL_SECONDS)
    keeper.notify("resolved", record, f"{record.source} is {source.digest} (rule {rule.name})")
    return _continue(keeper, rule, source, claim, progress)


def admit(
    keeper: Gatekeeper,
    image: str | ImageRef,
    *,
    trigger: str = "manual",
    force: bool = False,
    actor: str | None = None,
    actor_id: str = "",
) -> GateOutcome:
    """Resolve and dedupe now, gate later: record the request as ``received`` and return it.

    For callers that answer at once and leave the slow part to a worker (the HTTP API): the
    returned record id is what the worker's :func:`gate_record` takes. A (rule, digest) decided
    or being gated already returns that record instead (``duplicate``), and nothing is added.
    ``actor``/``actor_id`` (who asked: name and Entra object id) stay on the record the worker
    carries on, so they survive the queue hop.
    """
    _rule, _source, record = _prepare(
        keeper, image, trigger=trigger, force=force, actor=actor, actor_id=actor_id
    )
    claim = keeper.ledger.claim(
        record, force=force, lease_seconds=lease_seconds(keeper), start=False
    )
    if claim.acquired:
        claim = _forcing(keeper, claim, force, save=True)
        keeper.notify("received", claim.record, f"{record.source} is {record.digest}")
    return GateOutcome(claim.record, duplicate=not claim.acquired)


def gate_record(
    keeper: Gatekeeper, record_id: str, *, progress: ProgressCallback | None = None
) -> GateOutcome:
    """Carry out an admitted record (see :func:`admit`), or resume one whose worker died.

    Returns the record as it stands, ``duplicate`` when this call did no work: it was final
    already, or another worker holds it (then try again later).
    """
    record = keeper.ledger.get(record_id)
    if record.state.final or record.action != "gate" or record.digest is None:
        return GateOutcome(record, duplicate=True)
    rule = next((r for r in keeper.config.rules if r.name == record.rule), None)
    if rule is None:
        failed = record.advance(
            State.FAILED, reason=f"rule '{record.rule}' is no longer in the configuration"
        )
        keeper.ledger.save(failed)
        return GateOutcome(failed)
    claim = keeper.ledger.claim(
        record, force=record.forced, lease_seconds=lease_seconds(keeper), holder=new_holder()
    )
    if not claim.acquired:
        return GateOutcome(claim.record, duplicate=True)
    source = ImageRef.parse(record.source)
    source = source.with_tag(rule.gated_tag(source)).with_digest(record.digest)
    return _continue(keeper, rule, source, claim, progress)


def _continue(
    keeper: Gatekeeper,
    rule: Rule,
    source: ImageRef,
    claim: Claim,
    progress: ProgressCallback | None,
) -> GateOutcome:
    """Work on a claimed record under its lease, renewed by a heartbeat until it is decided.

    A worker that finds its lease taken over (it was silent too long) stops and writes no
    verdict: the record is the new holder's. A record left ``validated`` (its promotion did not
    finish) gives its lease up, so that the next attempt promotes it at once.
    """
    record = claim.record
    if claim.resumed and record.state is not State.WAITING:
        keeper.notify("resuming", record, f"record {record.id} went silent in state {record.state}")
    if _has_pass(record) and not _pass_fresh(rule, record):
        return _revalidate(keeper, rule, source, record, progress)
    if not _has_pass(record):
        # a record that passed already promotes without validating: nothing to preflight for
        _preflight(keeper, rule, record)
    with _Heartbeat(keeper, record) as beat:
        try:
            done = _run(keeper, rule, source, record, beat.watch(progress))
        except LeaseLost as exc:
            keeper.notify("lease-lost", record, exc.message)
            return GateOutcome(keeper.ledger.get(record.id), duplicate=True)
    if done.state in (State.VALIDATED, State.WAITING):
        try:
            keeper.ledger.renew(done.id, done.lease_holder, utcnow())
        except GateError as exc:  # the verdict is recorded; the lease lapses on its own
            _log.warning("record %s: giving its lease up failed: %s", done.id, exc.message)
    return GateOutcome(done)


def _has_pass(record: GateRecord) -> bool:
    """True when the record's validation passed and its promotion is still to be finished."""
    return (
        record.state in (State.VALIDATED, State.PROMOTING, State.WAITING)
        and bool(record.run_id)
        and len(record.target_tags) == 2
    )


def _passed_at(record: GateRecord) -> datetime:
    # records from before validated_at: their last update is the latest the pass can be from
    return record.validated_at or record.updated_at


def _pass_fresh(rule: Rule, record: GateRecord) -> bool:
    """True while the record's passing validation may still be promoted without another.

    A pass held back by a cooldown counts from when the cooldown ended, not from the validation.
    """
    since = max(_passed_at(record), record.eligible_at or _passed_at(record))
    age = (utcnow() - since).total_seconds()
    return age <= rule.validation_fresh_for


def _revalidate(
    keeper: Gatekeeper,
    rule: Rule,
    source: ImageRef,
    record: GateRecord,
    progress: ProgressCallback | None,
) -> GateOutcome:
    """Close a record whose pass went stale (failed, never blocks) and gate the digest anew."""
    expired = record.advance(
        State.FAILED,
        reason=f"its validation (run {record.run_id}) passed at "
        f"{_passed_at(record).isoformat(timespec='seconds')}, longer ago than the rule's "
        f"validation_fresh_for ({rule.validation_fresh_for:g} s): a new record validates "
        "the digest again",
    )
    keeper.ledger.save(expired)
    keeper.notify("failed", expired, expired.reason)
    fresh = GateRecord(
        id=new_record_id(),
        rule=record.rule,
        source=record.source,
        digest=record.digest,
        target=record.target,
        trigger=record.trigger,
        forced=record.forced,
        first_seen=record.first_seen,
    )
    claim = keeper.ledger.claim(
        fresh, force=record.forced, lease_seconds=lease_seconds(keeper), holder=new_holder()
    )
    if not claim.acquired:
        return GateOutcome(claim.record, duplicate=True)
    return _continue(keeper, rule, source, claim, progress)


class _Heartbeat:
    """Renews a record's lease from a background thread while its holder works on it.

    Every ``lease.heartbeat`` seconds the lease is pushed ``lease.seconds`` past now. A refused
    renewal means another worker took the record over: :meth:`watch` then stops a copy in
    flight, and the holder's next save is refused by the ledger anyway (:class:`LeaseLost`).
    A renewal that fails for a ledger outage is tried again on the next beat.
    """

    def __init__(self, keeper: Gatekeeper, record: GateRecord) -> None:
        self._ledger = keeper.ledger
        self._record = record
        self._lease = keeper.config.lease
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{record.id}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        if self._record.lease_holder:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _beat(self) -> None:
        record = self._record
        while not self._stop.wait(self._lease.heartbeat_seconds):
            until = utcnow() + timedelta(seconds=self._lease.seconds)
            try:
                held = self._ledger.renew(record.id, record.lease_holder, until)
            except GateError as exc:
                _log.warning("record %s: renewing its lease failed: %s", record.id, exc.message)
                continue
            if not held:
                if not self._stop.is_set():
                    self.lost.set()
                return

    def check(self) -> None:
        """Raise :class:`LeaseLost` once another worker has taken the record over."""
        if self.lost.is_set():
            raise LeaseLost(
                f"record {self._record.id} was taken over by another worker after its lease "
                "lapsed; this worker stops and leaves the verdict to it"
            )

    def watch(self, progress: ProgressCallback | None) -> ProgressCallback:
        """``progress``, checking the lease on every report (a copy stops once it is lost)."""

        def report(what: str, done: int, total: int) -> None:
            self.check()
            if progress is not None:
                progress(what, done, total)

        return report


def _preflight(keeper: Gatekeeper, rule: Rule, record: GateRecord) -> None:
    """Check that the target takes the promotion before anything is validated.

    Refused credentials are a configuration error (exit 2), not a verdict: the record ends
    failed with the registry's words and the error is raised, so no validation runs for an
    image that could not be promoted. The candidate's pull was checked already: its digest was
    resolved (or checked) with the configured credentials.
    """
    try:
        keeper.registry.check_push(rule.target)
    except GateError as exc:
        failed = record.advance(
            State.FAILED,
            reason=f"not validated: the push check on {rule.target.name} failed: {exc.message}",
        )
        keeper.ledger.save(failed)
        keeper.notify("failed", failed, failed.reason)
        raise


def _run(
    keeper: Gatekeeper,
    rule: Rule,
    source: ImageRef,
    record: GateRecord,
    progress: ProgressCallback | None,
) -> GateRecord:
    """Decide a claimed record, then start the rule's downstream tasks if it was promoted."""
    record = _decide(keeper, rule, source, record, progress)
    if record.state is State.PROMOTED and rule.downstream:
        record = _start_downstream(keeper, rule, record)
    return record


def _decide(
    keeper: Gatekeeper,
    rule: Rule,
    source: ImageRef,
    record: GateRecord,
    progress: ProgressCallback | None,
) -> GateRecord:
    """Validate and promote a claimed record; every exit path leaves a final record.

    An adopted record carries on from its state: a validation already passed is not run again,
    and a validation run already started is followed rather than started anew.
    """
    ledger = keeper.ledger
    if _has_pass(record):
        if record.state is State.WAITING:
            held = _cooldown_hold(keeper, rule, source, record)
            if held is not None:
                return held
        if record.state in (State.VALIDATED, State.WAITING):
            record = record.advance(State.PROMOTING, reason="")
            ledger.save(record)
        return _promote(keeper, rule, source, record, progress)
    try:
        refused = _unsigned(keeper, rule, source)
        if refused:
            record = record.advance(State.REJECTED, reason=refused)
            ledger.save(record)
            keeper.notify("rejected", record, refused)
            return record
        resume = None
        if record.state is State.VALIDATING:
            resume = Resume(run_id=record.run_id, since=record.created_at)
        record = record.advance(State.VALIDATING)
        ledger.save(record)
        keeper.notify("validating", record, str(source.pinned()))

        def started(run_id: str) -> None:
            nonlocal record
            record = record.advance(State.VALIDATING, run_id=run_id)
            ledger.save(record)
            keeper.notify("run-started", record, f"run {run_id}")

        def saved(updated: GateRecord) -> None:
            # kept here too: a failure mid-way records what the platforms said so far
            nonlocal record
            record = updated
            ledger.save(updated)

        began = time.monotonic()
        if rule.platforms:
            result, record = _validate_platforms(keeper, rule, source, record, resume, save=saved)
        else:
            result = keeper.validator.validate(
                _validation_request(keeper, rule, source, record), started, resume
            )
        record = record.advance(
            record.state,
            run_id=result.run_id or record.run_id,
            log=result.log,
            log_location=result.log_location,
            timings={**record.timings, "validate": round(time.monotonic() - began, 3)},
        )
        if result.outcome is Outcome.REJECTED:
            record = record.advance(State.REJECTED, reason=result.reason)
            ledger.save(record)
            keeper.notify("rejected", record, result.reason)
            return record
        if result.outcome is Outcome.FAILED:
            record = record.advance(
                State.FAILED, reason=f"validation failed to run: {result.reason}"
            )
            ledger.save(record)
            keeper.notify("failed", record, record.reason)
            return record

        when = datetime.now(UTC).strftime("%Y%m%d")
        upstream_tag = source.tag or ""
        unique = rule.render(rule.unique_tag, tag=upstream_tag, run_id=result.run_id, date=when)
        stable = rule.render(rule.stable_tag, tag=upstream_tag, run_id=result.run_id, date=when)
        record = record.advance(
            State.PROMOTING, target_tags=(unique, stable), validated_at=utcnow()
        )
        held = _cooldown_hold(keeper, rule, source, record)
        if held is not None:
            return held
        ledger.save(record)
    except BaseException as exc:
        if isinstance(exc, LeaseLost):
            raise  # the record is another worker's now: write nothing
        reason = exc.message if isinstance(exc, GateError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, KeyboardInterrupt):
            reason = "interrupted"
        record = record.advance(State.FAILED, reason=reason)
        ledger.save(record)
        keeper.notify("failed", record, reason)
        if isinstance(exc, GateError):
            return record
        raise
    return _promote(keeper, rule, source, record, progress)


def _forcing(keeper: Gatekeeper, claim: Claim, force: bool, *, save: bool) -> Claim:
    """A forced request that took over a record waiting out its cooldown makes it forced.

    The record then says the cooldown was skipped; ``save`` writes that at once (an admission,
    whose worker reads the record later).
    """
    record = claim.record
    if not force or record.forced or record.state is not State.WAITING:
        return claim
    record = replace(record, forced=True)
    if save:
        keeper.ledger.save(record)
    return replace(claim, record=record)


def _cooldown_hold(
    keeper: Gatekeeper, rule: Rule, source: ImageRef, record: GateRecord
) -> GateRecord | None:
    """Hold a passing record back while the rule's cooldown runs; None to promote it now.

    Saves and returns the record ``waiting`` (too young, or upstream could not be asked) or
    ``superseded`` (the upstream tag points elsewhere now: never promoted). A forced record,
    or a rule without a cooldown, is not held. The upstream tag is asked on every check, so a
    digest pulled back upstream is superseded as soon as the gate looks again.
    """
    if not rule.cooldown_seconds or record.forced:
        return None
    seen = record.first_seen or record.created_at
    eligible = seen + timedelta(seconds=rule.cooldown_seconds)
    tag = source.tag or ""
    upstream = rule.source.with_tag(tag)
    try:
        current = keeper.registry.resolve(upstream)
    except GateError as exc:
        current, asked = None, exc.message
    if current is not None and current != source.digest:
        held = record.advance(
            State.SUPERSEDED,
            eligible_at=eligible,
            reason=f"superseded: {upstream} moved on to {current} during the cooldown "
            f"({_duration(rule.cooldown_seconds)}); validation run {record.run_id} passed, "
            "but this digest is never promoted",
        )
        keeper.ledger.save(held)
        keeper.notify("superseded", held, held.reason)
        return held
    now = keeper.clock()
    if current is not None and now >= eligible:
        return None
    if current is None:
        why = f"{upstream} could not be checked ({asked}); the next check tries again"
    else:
        why = (
            f"cooldown {_duration(rule.cooldown_seconds)} since first seen "
            f"{seen.isoformat(timespec='seconds')}: promoted from "
            f"{eligible.isoformat(timespec='seconds')} (gate watch or the timer) if {upstream} "
            "still points at it"
        )
    held = record.advance(
        State.WAITING,
        eligible_at=eligible,
        reason=f"validation run {record.run_id} passed; {why}",
    )
    keeper.ledger.save(held)
    keeper.notify("cooldown", held, held.reason)
    return held


def _cooldown_note(rule: Rule, record: GateRecord) -> str:
    """What a promotion's reason says about the rule's cooldown ('' for a rule without one)."""
    if not rule.cooldown_seconds:
        return ""
    if record.forced:
        return f"; cooldown ({_duration(rule.cooldown_seconds)}) skipped: forced"
    return f"; cooldown ({_duration(rule.cooldown_seconds)}) passed"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def waiting_records(keeper: Gatekeeper, *, limit: int = 1000) -> list[GateRecord]:
    """The records waiting out a cooldown (for gate watch and the timer to check again)."""
    return [
        r
        for r in keeper.ledger.history(state=State.WAITING, limit=limit)
        if r.action == "gate" and r.digest
    ]


def _unsigned(keeper: Gatekeeper, rule: Rule, source: ImageRef) -> str:
    """Why the candidate is refused for lack of a valid upstream signature ('' if it is not).

    Only for rules with ``require_signature``; checked before any validation runs.
    """
    if not rule.signature_keys:
        return ""
    if keeper.signatures is None:
        raise UsageError(
            f"rule '{rule.name}' requires upstream signatures, and this gate has no signature "
            "reader; build it with gate.compose, which adds one for such rules"
        )
    from gate.domain.signatures import refusal

    pinned = source.pinned()
    keys = keeper.signatures.public_keys(rule.signature_keys)
    found = keeper.signatures.cosign_signatures(pinned)
    return refusal(pinned, found, keys)


def _promote(
    keeper: Gatekeeper,
    rule: Rule,
    source: ImageRef,
    record: GateRecord,
    progress: ProgressCallback | None,
) -> GateRecord:
    """Copy the validated digest: the run-ID tag first (never overwritten), then the stable tag.

    A copy that fails leaves the record ``validated`` (see :func:`_promotion_failed`): the pass
    is kept for the next attempt, which promotes without validating again.
    """
    unique, stable = record.target_tags
    keeper.notify("promoting", record, f"to {rule.target.name}:{unique}, then :{stable}")
    began = time.monotonic()
    # by digest, never by tag: upstream may have moved since we resolved it
    try:
        attestation = _copy_attested(keeper, rule, source, record, progress)
    except BaseException as exc:
        return _promotion_failed(keeper, rule, source, record, exc)
    record = record.advance(
        State.PROMOTED,
        promoted_tags=(),
        attestation=attestation,
        reason=f"passed validation run {record.run_id}"
        + (f"; attestation {attestation}" if attestation else "")
        + _cooldown_note(rule, record),
        timings={**record.timings, "promote": round(time.monotonic() - began, 3)},
    )
    keeper.ledger.save(record)
    keeper.notify("promoted", record, f"{rule.target.name}:{stable} is now {source.digest}")
    return record


def _promotion_failed(
    keeper: Gatekeeper, rule: Rule, source: ImageRef, record: GateRecord, exc: BaseException
) -> GateRecord:
    """Record a promotion that did not finish as ``validated``: the pass stands, and so does
    whatever part of the promotion reached the target (shown as ``promoted_tags``).

    Re-raises what is not a :class:`GateError` once recorded (and a lost lease at once).
    """
    if isinstance(exc, LeaseLost):
        raise exc
    cause = exc.message if isinstance(exc, GateError) else f"{type(exc).__name__}: {exc}"
    if isinstance(exc, KeyboardInterrupt):
        cause = "interrupted"
    fresh_until = _passed_at(record) + timedelta(seconds=rule.validation_fresh_for)
    kept = record.advance(
        State.VALIDATED,
        reason=f"promotion failed: {cause}; validation run {record.run_id} passed, so the next "
        "attempt (a rerun, the next event or poll) promotes without validating again until "
        f"{fresh_until.isoformat(timespec='seconds')}",
        promoted_tags=_tags_at_digest(keeper, rule, source, record),
    )
    keeper.ledger.save(kept)
    keeper.notify("failed", kept, kept.reason)
    if isinstance(exc, GateError):
        return kept
    raise exc


def _tags_at_digest(
    keeper: Gatekeeper, rule: Rule, source: ImageRef, record: GateRecord
) -> tuple[str, ...]:
    """Which of the record's target tags point at its digest now (none if the target is down).

    The run-ID tag is written first: without it (or without an answer) there is nothing to ask.
    """
    found = []
    for tag in record.target_tags:
        try:
            if keeper.registry.resolve(rule.target.with_tag(tag)) != source.digest:
                break
        except GateError:
            break  # not there, or cannot tell: claim nothing more
        found.append(tag)
    return tuple(found)


def _copy_attested(
    keeper: Gatekeeper,
    rule: Rule,
    source: ImageRef,
    record: GateRecord,
    progress: ProgressCallback | None,
) -> str:
    """Copy with both tags; with an attestor, attest between the run-ID and the stable tag.

    The stable tag never moves to a digest whose attestation could not be written: a failure
    to attest raises (a failed promotion, retried like any other), leaving only the run-ID tag.
    Returns the attestation's digest ('' without an attestor).
    """
    unique, stable = record.target_tags
    if keeper.attestor is None:
        keeper.registry.copy(
            source.pinned(),
            rule.target,
            immutable_tags=(unique,),
            tags=(stable,),
            progress=progress,
        )
        return ""
    assert source.digest is not None
    keeper.registry.copy(source.pinned(), rule.target, immutable_tags=(unique,), progress=progress)
    attestation = keeper.attestor.promotion(rule, rule.target.with_digest(source.digest), record)
    keeper.registry.copy(source.pinned(), rule.target, tags=(stable,))
    return attestation


def _start_downstream(keeper: Gatekeeper, rule: Rule, record: GateRecord) -> GateRecord:
    """Queue each downstream task of ``rule`` for the promoted digest; record the runs.

    Nothing here waits for a run or can fail the promotion: a task that cannot be queued is
    recorded with its error (retry with ``gate downstream RECORD_ID``) and the rest still run.
    """
    assert record.digest is not None
    image = rule.target.with_tag(record.target_tags[-1]).with_digest(record.digest)
    runs = [_start_one(keeper, task, image, record) for task in rule.downstream]
    record = record.advance(State.PROMOTED, downstream=tuple(runs))
    try:
        keeper.ledger.save(record)
    except GateError as exc:
        # the promotion is recorded already; the runs still reach the audit line
        keeper.notify("failed", record, f"recording the downstream runs failed: {exc.message}")
    return record


def _start_one(
    keeper: Gatekeeper, task: DownstreamTask, image: ImageRef, record: GateRecord
) -> DownstreamRun:
    name = f"{task.registry}/{task.task}"
    if keeper.downstream is None:
        run = DownstreamRun(
            task.registry, task.task, error="no downstream runner is configured (needs azure:)"
        )
    else:
        try:
            run = keeper.downstream.start(task, image)
        except GateError as exc:
            run = DownstreamRun(task.registry, task.task, error=exc.message)
        except Exception as exc:  # the promotion stands whatever a scheduler raises
            run = DownstreamRun(task.registry, task.task, error=f"{type(exc).__name__}: {exc}")
    if run.scheduled:
        keeper.notify("downstream", record, f"task {name} queued as run {run.run_id}")
    else:
        # logged as well as recorded: whoever watches the logs learns a rebuild did not start
        _log.warning(
            "record %s: downstream task %s was not queued (retry: gate downstream %s): %s",
            record.id,
            name,
            record.id,
            run.error,
        )
        keeper.notify("downstream", record, f"task {name} was not queued: {run.error}")
    return run


def retry_downstream(keeper: Gatekeeper, record_id: str) -> GateRecord:
    """Queue the downstream tasks of a promotion that were not queued (failed or never tried).

    Tasks already queued for the record are left alone (their runs are theirs); a record whose
    tasks never got to start (its worker stopped right after promoting) gets all of its rule's.
    """
    record = keeper.ledger.get(record_id)
    if record.action != "gate" or record.state is not State.PROMOTED or record.digest is None:
        raise UsageError(
            f"record {record.id} is {record.state.value}, not a promotion; only promoted "
            "records start downstream tasks"
        )
    rule = next((r for r in keeper.config.rules if r.name == record.rule), None)
    if rule is None or not rule.downstream:
        raise UsageError(
            f"rule '{record.rule}' has no downstream tasks in {keeper.config.path}; add "
            "downstream: to the rule first"
        )
    done = {(d.registry.lower(), d.task.lower()): d for d in record.downstream if d.scheduled}
    image = rule.target.with_tag(record.target_tags[-1]).with_digest(record.digest)
    runs = []
    for task in rule.downstream:
        kept = done.get((task.registry.lower(), task.task.lower()))
        runs.append(kept if kept is not None else _start_one(keeper, task, image, record))
    record = record.advance(State.PROMOTED, downstream=tuple(runs))
    keeper.ledger.save(record)
    return record


def _validation_request(
    keeper: Gatekeeper, rule: Rule, source: ImageRef, record: GateRecord
) -> ValidationRequest:
    pinned = source.pinned()
    values = {
        **rule.validation.values,
        "IMAGE": str(pinned),
        "REGISTRY_FROM_URL": f"{pinned.registry}/",
        "SOURCE_TAG": source.tag or "",
        "SOURCE_DIGEST": source.digest or "",
    }
    secret_names = frozenset(rule.validation.secret_values)
    for name, secret in rule.validation.secret_values.items():
        values[name] = keeper.secrets.get(secret)
    return ValidationRequest(
        image=pinned,
        folder=rule.validation.folder,
        task_file=rule.validation.task,
        values=values,
        secret_values=secret_names,
        timeout_seconds=rule.validation.timeout_seconds,
        run_registry=rule.target.registry,
        # the record's id and which worker this is: an ACR run started by an earlier worker
        # that died before recording it is found again by this name
        key=record.id,
        attempt=max(record.attempts, 1),
    )


def _validate_platforms(
    keeper: Gatekeeper,
    rule: Rule,
    image: ImageRef,
    record: GateRecord,
    resume: Resume | None,
    *,
    save: Callable[[GateRecord], None] | None,
) -> tuple[ValidationResult, GateRecord]:
    """Validate ``image`` (pinned) once per platform of the rule, each on its own manifest.

    The image's index gives each platform's child digest (:func:`gate.domain.platforms.
    select_platforms`); a platform it lacks rejects the image before anything runs. Each run
    is recorded in ``record.platforms`` as it starts and ends (``save`` writes it), so a
    resumed record follows the runs an earlier worker started and runs again only what did
    not pass. One verdict comes back: rejected if any platform was, else failed if any could
    not run, else passed; the run ID is the first platform's (the run-ID tag names it).
    """
    from gate.domain.platforms import select_platforms

    reader = _manifest_reader(keeper.registry)
    if reader is None:
        raise UsageError(
            f"rule '{rule.name}' lists platforms, but this gate's registry adapter cannot read "
            "image indexes to find each platform's manifest; remove platforms from the rule, "
            "or use a registry adapter that reads manifests (the OCI and ACR adapters do)"
        )
    pinned = image.pinned()
    digest = pinned.digest or ""
    fetched = reader.fetch_manifest(pinned, digest)
    if fetched is None:
        raise NotFound(
            f"{pinned} is gone from its registry, so its platforms cannot be read; gate the "
            "tag's current digest"
        )
    chosen = select_platforms(
        fetched[0],
        fetched[1],
        digest,
        rule.platforms,
        lambda blob: reader.fetch_blob(pinned, blob),
    )
    if isinstance(chosen, str):
        return ValidationResult(Outcome.REJECTED, "", f"not validated: {chosen}"), record
    earlier = {p.platform: p for p in record.platforms}
    results: dict[str, PlatformResult] = {}
    for manifest in chosen:
        name = str(manifest.platform)
        kept = earlier.get(name)
        # an earlier attempt's result stands only for the same child manifest
        if kept is None or kept.digest != manifest.digest:
            kept = PlatformResult(name, manifest.digest)
        results[name] = kept

    def keep(changed: PlatformResult, **changes: object) -> None:
        nonlocal record
        results[changed.platform] = changed
        record = record.advance(record.state, platforms=tuple(results.values()), **changes)
        if save is not None:
            save(record)

    keep(next(iter(results.values())))
    logs: list[str] = []
    for manifest in chosen:
        name = str(manifest.platform)
        current = results[name]
        if current.verdict == Outcome.PASSED.value:
            logs.append(
                f"===== platform {name} ({current.digest}): passed in run "
                f"{current.run_id}, an earlier attempt ====="
            )
            continue
        child = pinned.with_digest(manifest.digest)
        base = _validation_request(keeper, rule, image, record)
        request = replace(
            base,
            image=child,
            values={**base.values, "IMAGE": str(child), "SOURCE_DIGEST": manifest.digest},
            platform=name,
            # one run name per platform: a resumed record finds each platform's run again
            key=f"{record.id}-{name.replace('/', '-')}" if base.key else "",
        )
        platform_resume = None
        if resume is not None:
            running = current.run_id if not current.verdict else None
            platform_resume = Resume(run_id=running, since=resume.since)

        def started(run_id: str, name: str = name) -> None:
            keep(replace(results[name], run_id=run_id), run_id=record.run_id or run_id)
            keeper.notify("run-started", record, f"run {run_id} on {name}")

        keeper.notify("validating", record, f"{child} on {name}")
        result = keeper.validator.validate(request, started, platform_resume)
        keep(
            replace(
                results[name],
                verdict=result.outcome.value,
                run_id=result.run_id,
                reason=result.reason,
                log_location=result.log_location,
            )
        )
        logs.append(
            f"===== platform {name} ({manifest.digest}, found as {manifest.found}): run "
            f"{result.run_id} {result.outcome.value} =====\n{result.log}"
        )
    return _platform_verdict(list(results.values()), "\n".join(logs)), record


def _manifest_reader(registry: Registry) -> ManifestReader | None:
    """``registry`` as a :class:`ManifestReader` when it reads manifests, else None.

    Asked by attribute, not ``isinstance``: a protocol check looks at the class alone
    (``inspect.getattr_static``), which a port built on first use does not pass.
    """
    methods = ("fetch_manifest", "fetch_blob")
    if all(callable(getattr(registry, name, None)) for name in methods):
        return cast(ManifestReader, registry)
    return None


def _platform_verdict(results: list[PlatformResult], log: str) -> ValidationResult:
    """One verdict of per-platform runs: rejected over failed over passed, naming platforms."""

    def said(verdict: Outcome) -> list[PlatformResult]:
        return [r for r in results if r.verdict == verdict.value]

    passed = [f"{r.platform} (run {r.run_id})" for r in said(Outcome.PASSED)]
    tail = f"; passed: {', '.join(passed)}" if passed else ""
    first = results[0]
    location = next((r.log_location for r in results if r.log_location), None)
    if rejected := said(Outcome.REJECTED):
        why = "; ".join(f"{r.platform} (run {r.run_id}): {r.reason}" for r in rejected)
        outcome, reason = Outcome.REJECTED, f"rejected on {why}{tail}"
    elif failed := said(Outcome.FAILED):
        why = "; ".join(f"{r.platform} (run {r.run_id}): {r.reason}" for r in failed)
        outcome, reason = Outcome.FAILED, f"could not validate on {why}{tail}"
    else:
        outcome, reason = Outcome.PASSED, f"every platform passed: {', '.join(passed)}"
    return ValidationResult(outcome, first.run_id or "", reason, log, location)


@dataclass(frozen=True)
class WatchItem:
    """One watched upstream tag in one poll: its digest and what the poll did about it."""

    rule: str
    source: str
    digest: str | None = None
    outcome: GateOutcome | None = None
    skipped: str = ""
    error: str = ""


@dataclass(frozen=True)
class _PollJob:
    rule: Rule
    ref: ImageRef


class _Pass:
    """One poll pass's shared state: its deadline, and the registries told to stop."""

    def __init__(self, deadline: float, paused: dict[str, tuple[float, str]]) -> None:
        self.deadline = deadline
        self.lock = threading.Lock()
        # registry -> why it is not polled any more in this pass (a 429, a spent quota)
        self.stopped: dict[str, str] = {}
        self.paused = paused

    def stop(self, registry: str, why: str, retry_after: float | None) -> None:
        with self.lock:
            self.stopped.setdefault(registry, why)
            if retry_after is not None:
                self.paused[registry] = (time.time() + retry_after, why)

    def blocked(self, registry: str) -> str:
        """Why ``registry`` is not to be asked now (empty: go ahead)."""
        if time.monotonic() >= self.deadline:
            return "budget"
        with self.lock:
            return self.stopped.get(registry, "")


def _run_per_registry[R](
    jobs: list[_PollJob], limit: int, work: Callable[[_PollJob], R]
) -> list[R]:
    """``work`` on every job, at most ``limit`` at a time per registry; results in job order.

    ``limit`` 0: one job at a time in this thread, whatever the registry.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    if limit == 0:
        return [work(job) for job in jobs]

    registries = sorted({job.ref.registry for job in jobs})
    pools = {
        r: ThreadPoolExecutor(max_workers=limit, thread_name_prefix="poll") for r in registries
    }
    try:
        futures: list[Future[R]] = [pools[j.ref.registry].submit(work, j) for j in jobs]
        return [f.result() for f in futures]
    finally:
        for pool in pools.values():
            pool.shutdown(wait=True)


def poll_upstreams(keeper: Gatekeeper) -> list[WatchItem]:
    """HEAD every watched upstream tag; items without ``skipped``/``error`` are new digests.

    Glob selectors list the repository's tags first (following the tag list's pagination).
    Requests run concurrently, at most ``poll.concurrency_per_registry`` in flight per
    registry; a ``429`` (its ``Retry-After``) or a spent Docker Hub pull quota stops that
    registry for the window (the rest of the pass without one); a pass stops starting requests
    after ``poll.budget`` seconds. What a pass did not reach comes back as an item with an
    ``error`` saying why, and is polled first by the next pass. One tag's error does not stop
    the others. Nothing is gated here: :func:`watch_once` gates inline, the timer enqueues.
    """
    settings = keeper.config.poll
    memory = keeper.poll_memory
    started = time.monotonic()
    with memory.lock:
        now = time.time()
        memory.paused = {r: p for r, p in memory.paused.items() if p[0] > now}
        paused = dict(memory.paused)
        carried = set(memory.pending)
    run = _Pass(started + settings.budget_seconds, paused)
    for host, (until, why) in paused.items():
        run.stopped[host] = f"{why} (paused until {_clock(until)})"
    registry = keeper.registry
    polling = registry if isinstance(registry, PollingRegistry) else None
    # Adapters without the polling capability (their thread safety unknown) are asked one
    # request at a time.
    limit = settings.concurrency_per_registry if polling is not None else 0

    def skipped_item(job: _PollJob, source: str, why: str) -> WatchItem:
        if why == "budget":
            why = (
                f"not polled: the pass's budget of {settings.budget_seconds:g} s ran out; "
                "it is polled first next pass"
            )
        else:
            why = f"not polled: registry {job.ref.registry} is paused: {why}"
        return WatchItem(job.rule.name, source, error=why)

    def list_job(job: _PollJob) -> list[str] | WatchItem:
        source = job.rule.source.name
        why = run.blocked(job.ref.registry)
        if why:
            return skipped_item(job, source, why)
        try:
            if polling is not None:
                return polling.poll_tags(job.rule.source)
            return registry.list_tags(job.rule.source)
        except RateLimited as exc:
            run.stop(job.ref.registry, exc.message, exc.retry_after)
            return WatchItem(job.rule.name, source, error=exc.message)
        except GateError as exc:
            return WatchItem(job.rule.name, source, error=exc.message)

    def head_job(job: _PollJob) -> WatchItem:
        source = str(job.ref)
        why = run.blocked(job.ref.registry)
        if why:
            return skipped_item(job, source, why)
        try:
            if polling is not None:
                answer = polling.poll_digest(job.ref)
            else:
                answer = PolledDigest(registry.resolve(job.ref))
        except RateLimited as exc:
            run.stop(job.ref.registry, exc.message, exc.retry_after)
            return WatchItem(job.rule.name, source, error=exc.message)
        except GateError as exc:
            return WatchItem(job.rule.name, source, error=exc.message)
        if answer.quota_spent:
            run.stop(job.ref.registry, f"registry {job.ref.registry}: {answer.quota_spent}", None)
        return WatchItem(job.rule.name, source, answer.digest)

    items: list[WatchItem] = []
    heads: list[_PollJob] = []
    listings: list[_PollJob] = []
    for rule in keeper.config.rules:
        heads += [_PollJob(rule, rule.source.with_tag(t)) for t in rule.exact_tags]
        if len(rule.exact_tags) != len(rule.tags):
            listings.append(_PollJob(rule, rule.source))
    for job, listed in zip(listings, _run_per_registry(listings, limit, list_job), strict=True):
        if isinstance(listed, WatchItem):
            items.append(listed)
            continue
        exact = set(job.rule.exact_tags)
        selected = sorted(t for t in listed if job.rule.selects(t))
        heads += [
            _PollJob(job.rule, job.rule.source.with_tag(t)) for t in selected if t not in exact
        ]
    # what the last pass did not reach goes first (a stable sort keeps the others in order)
    heads.sort(key=lambda j: (j.rule.name, str(j.ref)) not in carried)
    polled = _run_per_registry(heads, limit, head_job)
    not_reached: list[tuple[str, str]] = []
    for job, item in zip(heads, polled, strict=True):
        if item.error or item.digest is None:
            if item.error.startswith("not polled") or job.ref.registry in run.stopped:
                not_reached.append((job.rule.name, str(job.ref)))
            items.append(item)
            continue
        try:
            decided = keeper.ledger.decided(job.rule.name, item.digest)
        except GateError as exc:
            items.append(replace(item, error=exc.message))
            continue
        items.append(replace(item, skipped=f"already {decided.state}" if decided else ""))
    with memory.lock:
        memory.pending = not_reached
        memory.paused.update(run.paused)
    _log_pass(items, heads, run, time.monotonic() - started)
    return items


def _clock(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%H:%M:%S UTC")


def _log_pass(
    items: list[WatchItem],
    heads: list[_PollJob],
    run: _Pass,
    elapsed: float,
) -> None:
    """One line per pass: what was polled, how long it took, and what it skipped and why."""
    skipped = [i.source for i in items if i.error.startswith("not polled")]
    errors = sum(1 for i in items if i.error) - len(skipped)
    line = "poll pass: %d tag(s) in %.1f s, %d error(s)"
    args: list[object] = [len(heads), elapsed, errors]
    if skipped:
        shown = ", ".join(skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        line += "; not polled %d (tags among them are polled first next pass): %s%s"
        args += [len(skipped), shown, more]
    for registry, why in sorted(run.stopped.items()):
        line += "; registry %s stopped: %s"
        args += [registry, why]
    if skipped or run.stopped:
        _log.warning(line, *args)
    else:
        _log.info(line, *args)


def watch_once(keeper: Gatekeeper, *, progress: ProgressCallback | None = None) -> list[WatchItem]:
    """Poll every watched upstream tag (HEAD only) and gate the digests not decided yet."""
    items = []
    for item in poll_upstreams(keeper):
        if item.skipped or item.error or item.digest is None:
            items.append(item)
            continue
        try:
            ref = ImageRef.parse(item.source).with_digest(item.digest)
            outcome = gate_image(keeper, ref, trigger="poll", wait=False, progress=progress)
            items.append(replace(item, outcome=outcome))
        except GateError as exc:
            items.append(replace(item, error=exc.message))
    return items + _recheck_waiting(keeper, items, progress)


def _recheck_waiting(
    keeper: Gatekeeper, done: list[WatchItem], progress: ProgressCallback | None
) -> list[WatchItem]:
    """Check the digests waiting out a cooldown that this poll did not reach: promote the ones
    whose cooldown ended and whose upstream tag still points at them; supersede the others."""
    seen = {i.outcome.record.id for i in done if i.outcome is not None}
    items = []
    try:
        waiting = waiting_records(keeper)
    except GateError as exc:
        return [WatchItem("-", "waiting records", error=exc.message)]
    for record in waiting:
        if record.id in seen:
            continue
        item = WatchItem(record.rule, record.source, record.digest)
        try:
            items.append(replace(item, outcome=gate_record(keeper, record.id, progress=progress)))
        except GateError as exc:
            items.append(replace(item, error=exc.message))
    return items


def rollback(
    keeper: Gatekeeper,
    target: str | ImageRef,
    *,
    reason: str,
    to: str | None = None,
    actor: str | None = None,
    actor_id: str = "",
) -> GateRecord:
    """Move a target's stable tag back to an earlier promoted digest, and record who and why.

    ``target`` is the target repository, with the stable tag when its rule has several.
    ``to`` is a run ID or digest of an earlier promotion; without it, the promotion before the
    one the stable tag points at now. Only digests the gate promoted (so validated) qualify.
    """
    if not reason.strip():
        raise UsageError("a rollback needs a reason (--reason 'why'); it goes into the record")
    ref = _as_ref(target)
    repo = ImageRef(ref.registry, ref.repository)
    rules = keeper.config.rules_for_target(repo)
    if not rules:
        raise NotFound(f"no rule promotes into '{repo}'; check the repository name")
    promotions = [
        r
        for r in keeper.ledger.history(target=repo.name, state=State.PROMOTED, limit=1000)
        if r.action == "gate" and r.digest
    ]
    stable = _stable_tag(ref, rules, promotions)
    promotions = [r for r in promotions if stable in r.target_tags[1:]]
    if not promotions:
        raise NotFound(
            f"the gate never promoted anything to {repo.name}:{stable}; nothing to roll back to"
        )
    current = keeper.registry.resolve(repo.with_tag(stable))
    chosen = _rollback_target(promotions, current, to)
    if chosen.digest == current:
        raise Conflict(f"{repo.name}:{stable} already points at {current}; nothing to do")
    assert chosen.digest is not None
    record = GateRecord(
        id=new_record_id(),
        action="rollback",
        rule=chosen.rule,
        source=f"{repo.name}@{current}",
        digest=chosen.digest,
        target=repo.name,
        trigger="rollback",
        state=State.RECEIVED,
        run_id=chosen.run_id,
        target_tags=(stable,),
        actor=actor,
        actor_id=actor_id,
    )
    assert chosen.digest is not None
    attested, demoted = _move_back(
        keeper, repo, stable, current, chosen.digest, record, f"rolled back: {reason.strip()}"
    )
    record = record.advance(
        State.ROLLED_BACK,
        attestation=attested,
        reason=f"{reason.strip()} ({repo.name}:{stable} {current} -> {chosen.digest}, "
        f"promoted by record {chosen.id}, run {chosen.run_id}){demoted}",
    )
    keeper.ledger.add(record)
    keeper.notify("rolled-back", record, record.reason)
    return record


def _move_back(
    keeper: Gatekeeper,
    repo: ImageRef,
    stable: str,
    current: str,
    chosen: str,
    record: GateRecord,
    why: str,
) -> tuple[str, str]:
    """Move ``repo:stable`` from ``current`` back to ``chosen`` (a rollback or a demotion),
    attesting first that ``current`` is no longer the verdict.

    ``why`` goes into the attestation ("rolled back: …", "demoted by re-validation: …"). A
    rollback or demotion is an emergency measure: a failure to attest does not stop it, but it is
    logged and said in the record. Only the stable tag moves; the run-ID tags of both digests
    stay where they are. Returns the attestation's digest ('' when none was written) and the
    text the record's reason ends with.
    """
    attested, said = "", ""
    if keeper.attestor is not None:
        image = repo.with_digest(current)
        try:
            attested = keeper.attestor.demotion(image, record, why)
            said = f"; demotion attestation {attested}"
        except GateError as exc:
            _log.warning(
                "record %s: the demotion of %s was not attested: %s", record.id, image, exc.message
            )
            said = f"; the demotion of {current} could NOT be attested: {exc.message}"
    keeper.registry.copy(repo.with_digest(chosen).pinned(), repo, tags=(stable,))
    return attested, said


def _stable_tag(ref: ImageRef, rules: list[Rule], promotions: list[GateRecord]) -> str:
    if ref.tag:
        return ref.tag
    stable_tags = {r.target_tags[1] for r in promotions if len(r.target_tags) > 1}
    if len(stable_tags) == 1:
        return stable_tags.pop()
    if not stable_tags:
        raise NotFound(f"the gate never promoted anything to {ref.name}; nothing to roll back to")
    raise UsageError(
        f"{ref.name} has several stable tags ({', '.join(sorted(stable_tags))}); "
        f"name one, e.g. {ref.name}:{sorted(stable_tags)[0]}"
    )


def _rollback_target(promotions: list[GateRecord], current: str, to: str | None) -> GateRecord:
    """Pick the promotion to roll back to (``promotions`` newest first)."""
    if to:
        if ":" in to:
            digest = parse_digest(to)
            found = [r for r in promotions if r.digest == digest]
        else:
            found = [r for r in promotions if r.run_id == to]
        if not found:
            raise Conflict(
                f"'{to}' was never promoted here by the gate, so it was never validated; "
                "roll back to a run ID or digest from 'gate history --state promoted'"
            )
        return found[0]
    # step back from where the stable tag is now, so repeated rollbacks keep going back
    digests = [r.digest for r in promotions]
    start = digests.index(current) + 1 if current in digests else 0
    for candidate in promotions[start:]:
        if candidate.digest != current:
            return candidate
    raise NotFound(f"no promotion older than {current} to roll back to; name one with --to")


# --- scheduled re-validation and automatic demotion ---------------------------------------

REVALIDATION_ACTOR = "revalidation"


@dataclass(frozen=True)
class Revalidated:
    """One stable tag re-validated in a pass: every record the pass added, oldest first.

    ``checked`` is the re-validation of the digest the stable tag pointed at; ``decision`` the
    demotion (``demoted``) or the rule marked ``broken``, when the check failed under
    ``on_failure: demote``. ``error`` says why nothing could be checked.
    """

    rule: str
    stable: str
    records: tuple[GateRecord, ...] = ()
    checked: GateRecord | None = None
    decision: GateRecord | None = None
    error: str = ""


def revalidation_due(keeper: Gatekeeper, rule: Rule, now: datetime | None = None) -> bool:
    """True when ``rule`` re-validates and its last pass (from the ledger) is ``every`` ago.

    The schedule needs no store of its own: the newest re-validation record that told
    something (``revalidated`` or ``failing``) is when the rule was last re-validated; one that
    could not run (``failed``) does not count, so the next tick tries again.
    """
    if rule.revalidate is None:
        return False
    last = [
        r.created_at
        for state in (State.REVALIDATED, State.FAILING)
        for r in keeper.ledger.history(rule=rule.name, state=state, limit=1)
    ]
    if not last:
        return True
    age = ((now or utcnow()) - max(last)).total_seconds()
    return age >= rule.revalidate.every_seconds


def revalidate_due(keeper: Gatekeeper, *, now: datetime | None = None) -> list[Revalidated]:
    """Re-validate every rule whose schedule says so (the timer and ``gate watch``)."""
    results: list[Revalidated] = []
    for rule in keeper.config.rules:
        try:
            due = revalidation_due(keeper, rule, now)
        except GateError as exc:
            results.append(Revalidated(rule.name, "", error=exc.message))
            continue
        if due:
            results.extend(revalidate_rule(keeper, rule, trigger="schedule"))
    return results


def revalidate(
    keeper: Gatekeeper, rule_name: str | None = None, *, trigger: str = "manual"
) -> list[Revalidated]:
    """Re-validate now, whatever the schedule: one rule by name, or every rule that has
    ``revalidate:`` (``gate revalidate [RULE]``)."""
    if rule_name is None:
        rules = [r for r in keeper.config.rules if r.revalidate is not None]
        if not rules:
            raise UsageError(
                f"no rule in {keeper.config.path} has a revalidate: option; add e.g. "
                "revalidate: {every: 24h, on_failure: demote} to a rule"
            )
    else:
        rules = [r for r in keeper.config.rules if r.name == rule_name]
        if not rules:
            raise NotFound(f"no rule '{rule_name}' in {keeper.config.path}; see its rules: list")
        if rules[0].revalidate is None:
            raise UsageError(
                f"rule '{rule_name}' has no revalidate: option, so nothing says what a failure "
                "does; add revalidate: {every: 24h, on_failure: demote | alert} to it"
            )
    results: list[Revalidated] = []
    for rule in rules:
        results.extend(revalidate_rule(keeper, rule, trigger=trigger))
    return results


def revalidate_rule(keeper: Gatekeeper, rule: Rule, *, trigger: str) -> list[Revalidated]:
    """Re-validate the digest each of the rule's stable tags points at; demote or alert.

    Only digests the gate promoted are re-validated, from the target (their run-ID tags keep
    them there; upstream may have deleted them). A failure under ``demote`` re-validates the
    rule's earlier promoted digests, newest first, at most ``candidates``, and moves the stable
    tag to the first that passes now; run-ID tags are never touched.
    """
    assert rule.revalidate is not None
    try:
        promotions = [
            r
            for r in keeper.ledger.history(rule=rule.name, state=State.PROMOTED, limit=1000)
            if r.action == "gate" and r.digest and len(r.target_tags) > 1
        ]
    except GateError as exc:
        return [Revalidated(rule.name, "", error=exc.message)]
    stables = sorted({r.target_tags[1] for r in promotions})
    return [_revalidate_stable(keeper, rule, stable, promotions, trigger) for stable in stables]


def _revalidate_stable(
    keeper: Gatekeeper, rule: Rule, stable: str, promotions: list[GateRecord], trigger: str
) -> Revalidated:
    assert rule.revalidate is not None
    mine = [r for r in promotions if r.target_tags[1] == stable]
    try:
        current = keeper.registry.resolve(rule.target.with_tag(stable))
    except GateError as exc:
        return Revalidated(rule.name, stable, error=exc.message)
    at = next((i for i, r in enumerate(mine) if r.digest == current), None)
    if at is None:
        return Revalidated(
            rule.name,
            stable,
            error=f"{rule.target.name}:{stable} points at {current}, which the gate never "
            "promoted; it is not re-validated (gate it, or roll back to a promoted digest)",
        )
    checked = _recheck(keeper, rule, mine[at], stable, trigger)
    records = [checked]
    if checked.state is not State.FAILING or rule.revalidate.on_failure != "demote":
        if checked.state is State.FAILING:
            _log.warning(
                "rule %s: %s:%s (%s) fails its validation now; on_failure is alert, nothing moves",
                rule.name,
                rule.target.name,
                stable,
                current,
            )
        return Revalidated(rule.name, stable, tuple(records), checked)
    seen = {current}
    tried = 0
    for earlier in mine[at + 1 :]:
        assert earlier.digest is not None
        if earlier.digest in seen:
            continue
        if tried >= rule.revalidate.candidates:
            break
        seen.add(earlier.digest)
        tried += 1
        candidate = _recheck(keeper, rule, earlier, stable, trigger)
        records.append(candidate)
        if candidate.state is State.REVALIDATED:
            try:
                demoted = _demote_to(keeper, rule, stable, current, earlier, checked, trigger)
            except GateError as exc:
                # the stable tag did not move (or its record was not written): the next pass
                # re-validates and tries again
                return Revalidated(
                    rule.name, stable, tuple(records), checked, error=f"demotion: {exc.message}"
                )
            records.append(demoted)
            return Revalidated(rule.name, stable, tuple(records), checked, demoted)
    broken = GateRecord(
        id=new_record_id(),
        action="demote",
        rule=rule.name,
        source=f"{rule.target.name}@{current}",
        digest=current,
        target=rule.target.name,
        trigger=trigger,
        state=State.BROKEN,
        target_tags=(stable,),
        actor=REVALIDATION_ACTOR,
        of_record=checked.id,
        reason=f"{rule.target.name}:{stable} ({current}) fails its validation now and none of "
        f"the {tried} earlier promoted digest(s) re-validated passes (at most "
        f"{rule.revalidate.candidates}); the stable tag stays, the rule is broken until a new "
        "digest is promoted",
    )
    _record_revalidation(keeper, broken)
    _log.warning("rule %s is broken: %s", rule.name, broken.reason)
    records.append(broken)
    return Revalidated(rule.name, stable, tuple(records), checked, broken)


def _recheck(
    keeper: Gatekeeper, rule: Rule, promotion: GateRecord, stable: str, trigger: str
) -> GateRecord:
    """Run the rule's current validation on a promoted digest; record what it says now."""
    assert promotion.digest is not None
    try:
        requested = ImageRef.parse(promotion.source)
        upstream_tag = requested.tag or rule.gated_tag(requested)
    except GateError:
        upstream_tag = ""  # SOURCE_TAG only; the digest is what is validated
    # validated where the gate put it: the target holds every promoted digest under its
    # run-ID tag, while upstream may have deleted an older one
    image = rule.target.with_tag(upstream_tag or None).with_digest(promotion.digest)
    record = GateRecord(
        id=new_record_id(),
        action="revalidate",
        rule=rule.name,
        source=str(image.pinned()),
        digest=promotion.digest,
        target=rule.target.name,
        trigger=trigger,
        state=State.VALIDATING,
        target_tags=(stable,),
        actor=REVALIDATION_ACTOR,
        of_record=promotion.id,
    )
    keeper.notify("revalidating", record, f"{image.pinned()} (promoted by record {promotion.id})")
    began = time.monotonic()
    try:
        if rule.platforms:
            # every platform again, each on its manifest of the promoted index in the target
            result, record = _validate_platforms(keeper, rule, image, record, None, save=None)
        else:
            result = keeper.validator.validate(
                _validation_request(keeper, rule, image, record), lambda run_id: None, None
            )
    except GateError as exc:
        done = record.advance(State.FAILED, reason=f"re-validation could not run: {exc.message}")
    else:
        state = {
            Outcome.PASSED: State.REVALIDATED,
            Outcome.REJECTED: State.FAILING,
        }.get(result.outcome, State.FAILED)
        said = {
            State.REVALIDATED: f"passes its current validation (run {result.run_id})",
            State.FAILING: f"fails its current validation now: {result.reason}",
        }.get(state, f"re-validation could not run: {result.reason}")
        done = record.advance(
            state,
            run_id=result.run_id or None,
            log=result.log,
            log_location=result.log_location,
            reason=said,
            timings={"validate": round(time.monotonic() - began, 3)},
        )
    _record_revalidation(keeper, done)
    return done


def _demote_to(
    keeper: Gatekeeper,
    rule: Rule,
    stable: str,
    current: str,
    chosen: GateRecord,
    failing: GateRecord,
    trigger: str,
) -> GateRecord:
    """Move the stable tag to ``chosen`` (which passed just now), recorded like a rollback."""
    assert chosen.digest is not None
    repo = rule.target
    record = GateRecord(
        id=new_record_id(),
        action="demote",
        rule=rule.name,
        source=f"{repo.name}@{current}",
        digest=chosen.digest,
        target=repo.name,
        trigger=trigger,
        state=State.RECEIVED,
        run_id=chosen.run_id,
        target_tags=(stable,),
        actor=REVALIDATION_ACTOR,
        of_record=failing.id,
    )
    why = f"{current} fails its current validation (record {failing.id})"
    attested, said = _move_back(
        keeper, repo, stable, current, chosen.digest, record, f"demoted by re-validation: {why}"
    )
    record = record.advance(
        State.DEMOTED,
        attestation=attested,
        reason=f"demoted: {why}; {repo.name}:{stable} {current} -> {chosen.digest}, promoted "
        f"by record {chosen.id} (run {chosen.run_id}), which passes now{said}",
    )
    _record_revalidation(keeper, record)
    return record


def _record_revalidation(keeper: Gatekeeper, record: GateRecord) -> None:
    """Add a re-validation's record, write its audit line and tell whoever watches."""
    from gate.entrypoints import audit
    keeper.ledger.add(record)
    audit.log_decision(record)
    keeper.notify(record.state.value, record, record.reason)
