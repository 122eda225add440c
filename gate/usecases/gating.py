"""Gating one image: resolve once, claim the (rule, digest), validate, promote, record.

:func:`gate_image` does it all in one call (the CLI, a push listener, a poll); :func:`admit`
records the request and :func:`gate_record` carries it out later (the HTTP API and its worker).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from copy import replace
from datetime import UTC, datetime

from gate.config.model import Rule
from gate.domain.records import (
    Claim,
    GateRecord,
    LeaseLost,
    Outcome,
    State,
    new_holder,
    new_record_id,
    utcnow,
)
from gate.domain.ref import ImageRef
from gate.errors import GateError, UsageError
from gate.logsafe import get_logger
from gate.ports import ProgressCallback, Resume
from gate.usecases.audit import log_decision
from gate.usecases.cooldown import cooldown_hold
from gate.usecases.downstream import start_downstream
from gate.usecases.keeper import Gatekeeper, GateOutcome, as_ref
from gate.usecases.leases import Heartbeat, lease_seconds
from gate.usecases.passes import has_pass, pass_fresh, passed_at
from gate.usecases.promotion import promote
from gate.usecases.staging import Staging, discard_staging, start_staging
from gate.usecases.validation import preflight, validate_platforms, validation_request

# the logger name is what log queries select by; it stays the one from before the split
_log = get_logger("gate.service")


WAIT_POLL_SECONDS = 0.5


def _prepare(
    keeper: Gatekeeper,
    image: str | ImageRef,
    *,
    trigger: str,
    force: bool,
    actor: str | None = None,
    actor_id: str = "",
    record_failure: bool = True,
) -> tuple[Rule, ImageRef, GateRecord]:
    """Match the rule and resolve the digest, once: the record every later step works on.

    A failure to resolve is recorded (``record_failure``) and raised.
    """
    ref = as_ref(image)
    rule = keeper.config.match(ref)
    tag = rule.gated_tag(ref)
    started = time.monotonic()
    try:
        digest = ref.digest or keeper.registry.resolve(ref)
        if ref.digest:
            # a digest request must exist upstream before we claim anything for it
            keeper.registry.resolve(ref.pinned())
    except GateError as exc:
        if not record_failure:
            raise
        _unresolved(
            keeper,
            GateRecord(
                id=new_record_id(),
                rule=rule.name,
                source=str(ref),
                target=rule.target.name,
                trigger=trigger,
                forced=force,
                actor=actor,
                actor_id=actor_id,
                timings={"resolve": round(time.monotonic() - started, 3)},
                first_seen=keeper.clock(),
                state=State.FAILED,
                reason=exc.message,
            ),
            exc,
        )
        raise
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


def _unresolved(keeper: Gatekeeper, failed: GateRecord, error: GateError) -> None:
    """Record a request whose digest could not be resolved: failed, without a digest.

    Without a digest the record is under no (rule, digest), so it never blocks a later gate of
    the rule; failed records never block anyway. It gets its audit line like any decision. A
    ledger that refuses it too is only logged: the caller raises the resolving error, which is
    the one that says what to fix.
    """
    try:
        keeper.ledger.add(failed)
    except GateError as exc:
        _log.warning("recording the failure to resolve %s failed: %s", failed.source, exc.message)
        return
    log_decision(failed)
    error.recorded = failed.id


def _decided_by_digest(keeper: Gatekeeper, ref: ImageRef) -> GateOutcome | None:
    """The decision already recorded for a request by digest, asked of the ledger alone.

    The digest is what would be gated and its (rule, digest) is settled: the answer is that
    record whatever the registry says now, so the registry is not asked (nor its client
    loaded). A request by tag must ask the registry what the tag points at first.
    """
    if ref.digest is None:
        return None
    rule = keeper.config.match(ref)
    rule.gated_tag(ref)  # a digest alone that names no tag of the rule is refused as before
    existing = keeper.ledger.decided(rule.name, ref.digest)
    if existing is None:
        return None
    keeper.notify(
        "duplicate", existing, f"{ref.digest} already {existing.state} by record {existing.id}"
    )
    return GateOutcome(existing, duplicate=True)


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
    validating or copying anything, unless ``force``; by digest, without asking the registry. When another process is gating the same
    (rule, digest), waits for its decision (or returns at once with ``wait=False``).
    """
    if not force:
        known = _decided_by_digest(keeper, as_ref(image))
        if known is not None:
            return known
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
    # an admission answers its caller with the error and records nothing: requests that were
    # not admitted must not be able to fill the ledger
    _rule, _source, record = _prepare(
        keeper,
        image,
        trigger=trigger,
        force=force,
        actor=actor,
        actor_id=actor_id,
        record_failure=False,
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
    if has_pass(record) and not pass_fresh(rule, record):
        return _gate_anew(keeper, rule, source, record, progress)
    if not has_pass(record):
        # a record that passed already promotes without validating: nothing to preflight for
        preflight(keeper, rule, record)
    with Heartbeat(keeper, record) as beat:
        try:
            done = _run(keeper, rule, source, record, beat.watch(progress), beat.check)
        except LeaseLost as exc:
            keeper.notify("lease-lost", record, exc.message)
            return GateOutcome(keeper.ledger.get(record.id), duplicate=True)
    if done.state in (State.VALIDATED, State.WAITING):
        try:
            keeper.ledger.renew(done.id, done.lease_holder, utcnow())
        except GateError as exc:  # the verdict is recorded; the lease lapses on its own
            _log.warning("record %s: giving its lease up failed: %s", done.id, exc.message)
    return GateOutcome(done)


def _gate_anew(
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
        f"{passed_at(record).isoformat(timespec='seconds')}, longer ago than the rule's "
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


def _run(
    keeper: Gatekeeper,
    rule: Rule,
    source: ImageRef,
    record: GateRecord,
    progress: ProgressCallback | None,
    lease_check: Callable[[], None] | None = None,
) -> GateRecord:
    """Decide a claimed record, then start the rule's downstream tasks if it was promoted."""
    record = _decide(keeper, rule, source, record, progress, lease_check)
    if record.state is State.PROMOTED and rule.downstream:
        record = start_downstream(keeper, rule, record)
    return record


def _decide(
    keeper: Gatekeeper,
    rule: Rule,
    source: ImageRef,
    record: GateRecord,
    progress: ProgressCallback | None,
    lease_check: Callable[[], None] | None = None,
) -> GateRecord:
    """Validate and promote a claimed record; every exit path leaves a final record.

    An adopted record carries on from its state: a validation already passed is not run again,
    and a validation run already started is followed rather than started anew. While the
    validation runs, the candidate's blobs are staged into the target
    (:mod:`gate.usecases.staging`): kept for the promotion after a pass, removed otherwise.
    """
    ledger = keeper.ledger
    if has_pass(record):
        if record.state is State.WAITING:
            held = cooldown_hold(keeper, rule, source, record)
            if held is not None:
                return held
        if record.state in (State.VALIDATED, State.WAITING):
            record = record.advance(State.PROMOTING, reason="")
            ledger.save(record)
        return promote(keeper, rule, source, record, progress, resumed=True)
    staging: Staging | None = None
    passed = lost = False
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
        # the blobs travel while the validation runs; nothing is tagged before the verdict
        staging = start_staging(keeper, rule, source, lease_check)

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
            result, record = validate_platforms(keeper, rule, source, record, resume, save=saved)
        else:
            result = keeper.validator.validate(
                validation_request(keeper, rule, source, record), started, resume
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
        passed = True

        when = datetime.now(UTC).strftime("%Y%m%d")
        upstream_tag = source.tag or ""
        unique = rule.render(rule.unique_tag, tag=upstream_tag, run_id=result.run_id, date=when)
        stable = rule.render(rule.stable_tag, tag=upstream_tag, run_id=result.run_id, date=when)
        record = record.advance(
            State.PROMOTING, target_tags=(unique, stable), validated_at=utcnow()
        )
        held = cooldown_hold(keeper, rule, source, record)
        if held is not None:
            return held
        ledger.save(record)
    except BaseException as exc:
        if isinstance(exc, LeaseLost):
            lost = True
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
    finally:
        if staging is not None:
            if passed:
                staging.keep()  # joined before the promotion copies: one upload per blob
            elif lost:
                staging.discard(lambda: False)  # the new holder may be using these blobs
            else:
                discard_staging(keeper, staging, record, f"{record.state.value}")
    return promote(keeper, rule, source, record, progress)


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
