"""Promotion: copy the validated digest to the target, the run-ID tag before the stable tag,
attested in between when an attestor is configured."""

from __future__ import annotations

import time
from datetime import timedelta

from gate.config.model import Rule
from gate.domain.records import GateRecord, LeaseLost, State
from gate.domain.ref import ImageRef
from gate.errors import GateError
from gate.ports import ProgressCallback
from gate.usecases.cooldown import cooldown_note
from gate.usecases.keeper import Gatekeeper
from gate.usecases.passes import passed_at


def promote(
    keeper: Gatekeeper,
    rule: Rule,
    source: ImageRef,
    record: GateRecord,
    progress: ProgressCallback | None,
    *,
    resumed: bool = False,
) -> GateRecord:
    """Copy the validated digest: the run-ID tag first (never overwritten), then the stable tag.

    ``resumed``: the record had its pass before this call (a failed promotion retried, a
    cooldown ended, a takeover), so an earlier attempt may have copied it already
    (:class:`~gate.ports.CopyOptions`).

    A copy that fails leaves the record ``validated`` (see :func:`_promotion_failed`): the pass
    is kept for the next attempt, which promotes without validating again.
    """
    unique, stable = record.target_tags
    keeper.notify("promoting", record, f"to {rule.target.name}:{unique}, then :{stable}")
    began = time.monotonic()
    # by digest, never by tag: upstream may have moved since we resolved it
    try:
        attestation = _copy_attested(keeper, rule, source, record, progress, resumed=resumed)
    except BaseException as exc:
        return _promotion_failed(keeper, rule, source, record, exc)
    record = record.advance(
        State.PROMOTED,
        promoted_tags=(),
        attestation=attestation,
        reason=f"passed validation run {record.run_id}"
        + (f"; attestation {attestation}" if attestation else "")
        + ("; signed by the gate's signature key" if attestation and keeper.signatory else "")
        + cooldown_note(rule, record),
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
    fresh_until = passed_at(record) + timedelta(seconds=rule.validation_fresh_for)
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
    *,
    resumed: bool,
) -> str:
    """Copy with both tags; with an attestor, attest (and sign, with a signatory) between the
    run-ID and the stable tag.

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
            resumed=resumed,
        )
        return ""
    assert source.digest is not None
    keeper.registry.copy(
        source.pinned(), rule.target, immutable_tags=(unique,), progress=progress, resumed=resumed
    )
    attestation = keeper.attestor.promotion(rule, rule.target.with_digest(source.digest), record)
    if keeper.signatory is not None:
        # the gate's signature (its own key), before the stable tag moves: a failure to sign is
        # a failed promotion, as a failure to attest is
        keeper.signatory.sign(rule.target.with_digest(source.digest), record)
    keeper.registry.copy(source.pinned(), rule.target, tags=(stable,))
    return attestation
