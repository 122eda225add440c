"""What the serverless triggers do with the gate, free of any Functions types.

``function_app.py`` turns trigger payloads into calls of these functions and their results
into bindings and status codes. The functions here are the same the CLI's service calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from gate.domain.records import GateRecord, State, new_record_id, utcnow
from gate.domain.ref import ImageRef
from gate.entrypoints.messages import GateRequest
from gate.errors import GateError, InfrastructureError
from gate.logsafe import get_logger
from gate.ports import RequestQueue
from gate.usecases.cooldown import waiting_records
from gate.usecases.gating import gate_image, gate_record
from gate.usecases.keeper import Gatekeeper, GateOutcome
from gate.usecases.leases import lease_seconds
from gate.usecases.polling import poll_upstreams
from gate.usecases.queueing import claimed, postpone_delay, postponement_limit

_log = get_logger("gate.worker")


class RetryLater(InfrastructureError):
    """A passed validation whose promotion failed; let the queue deliver the request again."""


@dataclass(frozen=True)
class Postponed:
    """A request left to the worker that holds its (rule, digest), whose record is ``holder``.

    ``requeued`` is the request as put back on the queue, visible again after
    ``delay_seconds``; None when the request was settled as a duplicate instead: it had been
    put back as often as the bound allows (or there was no queue to put it on), and the
    holder's outcome will be the record.
    """

    holder: GateRecord
    requeued: GateRequest | None = None
    delay_seconds: float = 0.0


@dataclass(frozen=True)
class Revalidation:
    """A queued re-validation of rule ``rule``: the records it added and the errors seen, or
    ``skipped``, why nothing was done (not due, done already, or another worker has it)."""

    rule: str
    records: tuple[GateRecord, ...] = ()
    errors: tuple[str, ...] = ()
    skipped: str = ""
    pass_record: GateRecord | None = None


Handled = GateOutcome | Postponed | Revalidation
"""What :func:`handle` made of one queued request."""


def handle(
    keeper: Gatekeeper,
    request: GateRequest,
    *,
    queue: RequestQueue | None = None,
    wait_seconds: float = 20.0,
    publish: Callable[[GateRecord], None] | None = None,
) -> Handled:
    """Carry out one queued request, idempotently.

    A request already decided costs one ledger read. One whose (rule, digest) another worker
    holds is waited for up to ``wait_seconds``, then put back on ``queue`` with a delay derived
    from the holder's lease and timeouts (:func:`gate.usecases.queueing.postpone_delay`): it
    is never failed, so it never reaches the poison queue (gate/usecases/queueing.py says
    why). After :func:`gate.usecases.queueing.postponement_limit` postponements, or without a
    queue, it is settled as a duplicate: the holder's outcome is the record. A worker that died
    is taken over by the postponed request once its lease lapses. A promotion that failed
    after its validation passed is handed back at once (:class:`RetryLater`): the redelivery
    promotes without validating again. A digest left waiting out its rule's cooldown is
    returned as it stands: the timer checks it again (no worker waits). A re-validation request
    re-validates its rule once (:func:`revalidate_one`), publishing with ``publish``.
    """
    if request.revalidate:
        return revalidate_one(keeper, request.revalidate, publish)
    if request.record_id:
        outcome = gate_record(keeper, request.record_id)
    else:
        outcome = gate_image(
            keeper, request.image or "", trigger=request.trigger, force=request.force, wait=False
        )
    if not outcome.duplicate and outcome.record.state is State.VALIDATED:
        raise RetryLater(
            f"record {outcome.record.id}: {outcome.record.reason}; the request will be "
            "delivered again"
        )
    deadline = time.monotonic() + wait_seconds
    while not outcome.record.state.final and outcome.record.state is not State.WAITING:
        if time.monotonic() >= deadline:
            return _postpone(keeper, request, outcome.record, queue)
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        outcome = GateOutcome(keeper.ledger.get(outcome.record.id), duplicate=True)
    return outcome


def _postpone(
    keeper: Gatekeeper, request: GateRequest, holder: GateRecord, queue: RequestQueue | None
) -> Postponed:
    """Put ``request`` back for later, or settle it as a duplicate once the bound is reached."""
    limit = postponement_limit(keeper.config)
    if queue is None or request.postponed >= limit:
        why = "no queue to put it back on" if queue is None else f"put back {limit} times"
        _log.warning(
            "a request settled as a duplicate (%s): record %s (%s) is its holder's, whose "
            "outcome will be the record",
            why,
            holder.id,
            holder.state,
        )
        return Postponed(holder)
    rule = next((r for r in keeper.config.rules if r.name == holder.rule), None)
    delay = postpone_delay(keeper, rule, holder)
    again = msgspec.structs.replace(request, postponed=request.postponed + 1)
    queue.send_later(again.to_json(), delay_seconds=delay)
    return Postponed(holder, again, delay)


def poisoned(keeper: Gatekeeper, request: GateRequest, reason: str) -> GateRecord:
    """Record a request the queue gave up on as failed, with why; returns that record.

    A (rule, digest) that is decided, claimed (a record in progress) or held by a live worker
    is not failed: its record is returned as it stands, and nothing is written.
    """
    if request.record_id:
        record = keeper.ledger.get(request.record_id)
        parked = record.state in (State.VALIDATED, State.WAITING)
        if record.state.final or parked or _held(keeper, record):
            # decided; or passed and waiting to be promoted (the next event or poll does it);
            # or a live worker holds it: its own outcome will be the record
            return record
        failed = record.advance(State.FAILED, reason=f"poisoned: {reason}")
        keeper.ledger.save(failed)
        return failed
    if request.revalidate:
        return _poisoned_revalidation(keeper, request, reason)
    source = request.image or "?"
    rule, target, digest = "-", "-", None
    try:
        ref = ImageRef.parse(source)
        matched = keeper.config.match(ref)
        rule, target, digest = matched.name, matched.target.name, ref.digest
    except GateError:
        pass  # a poisoned request may name anything; it is recorded all the same
    if digest is not None:
        existing = keeper.ledger.decided(rule, digest) or claimed(keeper, rule, digest)
        if existing is not None:
            # decided, or in progress (held, or parked for the next attempt): that record stands
            return existing
    failed = GateRecord(
        id=new_record_id(),
        rule=rule,
        source=source,
        target=target,
        digest=digest,
        trigger=request.trigger,
        state=State.FAILED,
        reason=f"poisoned: {reason}",
    )
    keeper.ledger.add(failed)
    return failed


def _poisoned_revalidation(keeper: Gatekeeper, request: GateRequest, reason: str) -> GateRecord:
    """A re-validation request the queue gave up on, recorded as a failed re-validation (it
    does not count as one: the rule stays due and the next timer run queues it again)."""
    from gate.usecases.revalidation import REVALIDATION_ACTOR

    name = request.revalidate or "-"
    rule = next((r for r in keeper.config.rules if r.name == name), None)
    target = rule.target.name if rule is not None else "-"
    failed = GateRecord(
        id=new_record_id(),
        action="revalidate",
        rule=name,
        source=target,
        target=target,
        trigger=request.trigger,
        state=State.FAILED,
        actor=REVALIDATION_ACTOR,
        reason=f"poisoned: {reason}",
    )
    keeper.ledger.add(failed)
    return failed


def _held(keeper: Gatekeeper, record: GateRecord) -> bool:
    """True when a worker holds ``record`` under a live lease."""
    return bool(record.lease_holder) and record.lease_live(utcnow(), lease_seconds(keeper))


def poll(keeper: Gatekeeper) -> tuple[list[GateRequest], list[str]]:
    """The timer's work: gate requests for upstream digests not decided yet, and errors seen."""
    requests, errors = [], []
    for item in poll_upstreams(keeper):
        if item.error:
            errors.append(f"{item.source}: {item.error}")
        elif not item.skipped and item.digest:
            image = str(item.pinned())
            requests.append(GateRequest(image=image, trigger="poll"))
    return requests + _waiting_requests(keeper, requests, errors), errors


def poll_carrying(
    keeper: Gatekeeper, state: str | None
) -> tuple[list[GateRequest], list[str], str]:
    """:func:`poll` on a host that may not keep its process until the next timer run.

    ``state`` is what the previous pass left (:meth:`~gate.usecases.keeper.PollMemory.snapshot`: the
    tags it did not reach, the registries paused and until when); the third value is what this
    pass leaves, to store until the next run.
    """
    if state:
        keeper.poll_memory.restore(state)
    requests, errors = poll(keeper)
    return requests, errors, keeper.poll_memory.snapshot()


def _waiting_requests(
    keeper: Gatekeeper, queued: list[GateRequest], errors: list[str]
) -> list[GateRequest]:
    """Requests to check again the digests waiting out a cooldown that the poll did not queue:
    once a cooldown ends the worker promotes (upstream tag unchanged) or supersedes it."""
    images = {r.image for r in queued}
    try:
        waiting = waiting_records(keeper)
    except GateError as exc:
        errors.append(f"waiting records: {exc.message}")
        return []
    now = keeper.clock()
    return [
        GateRequest(record_id=r.id, trigger=r.trigger)
        for r in waiting
        if r.eligible_at is not None and r.eligible_at <= now and _polled(r) not in images
    ]


def _polled(record: GateRecord) -> str:
    return str(ImageRef.parse(record.source).with_digest(record.digest or ""))


def revalidations_due(keeper: Gatekeeper) -> tuple[list[GateRequest], list[str]]:
    """The timer's re-validation: one request per rule whose schedule is due, and errors seen.

    Nothing is validated here: the worker re-validates each rule from its request
    (:func:`revalidate_one`), so the timer returns in seconds however many rules are due.
    """
    from gate.usecases.revalidation import revalidation_due

    requests: list[GateRequest] = []
    errors: list[str] = []
    for rule in keeper.config.rules:
        try:
            due = revalidation_due(keeper, rule)
        except GateError as exc:
            errors.append(f"rule {rule.name}: {exc.message}")
            continue
        if due:
            requests.append(GateRequest(revalidate=rule.name, trigger="revalidate"))
    return requests, errors


def revalidate_one(
    keeper: Gatekeeper, rule: str, publish: Callable[[GateRecord], None] | None = None
) -> Revalidation:
    """Re-validate ``rule`` for a queued request, once however often it was queued.

    The rule's due pass is claimed in the ledger (:func:`gate.usecases.revalidation.
    revalidate_queued`): a second request for it finds it done (not due any more) or taken.
    ``publish`` is called with each record that is an outcome event (a demotion, a rule marked
    broken, a failing re-validation); a publishing error is reported, not raised: the records
    stand.
    """
    from gate.usecases.audit import EVENT_TYPES
    from gate.usecases.revalidation import revalidate_queued

    results, marker, skipped = revalidate_queued(keeper, rule, trigger="schedule")
    records: list[GateRecord] = []
    errors: list[str] = []
    for result in results:
        records.extend(result.records)
        if result.error:
            errors.append(f"rule {result.rule} {result.stable}: {result.error}".replace("  ", " "))
    for record in records:
        if publish is None or record.state not in EVENT_TYPES:
            continue
        try:
            publish(record)
        except Exception as exc:  # the decision is recorded; the event is what is lost
            errors.append(f"record {record.id}: its outcome event was not sent: {exc}")
    return Revalidation(rule, tuple(records), tuple(errors), skipped, marker)
