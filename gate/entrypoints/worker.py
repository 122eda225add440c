"""What the serverless triggers do with the gate, free of any Functions types.

``function_app.py`` turns trigger payloads into calls of these functions and their results
into bindings and status codes. The functions here are the same the CLI's service calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gate.domain.records import GateRecord, State, new_record_id, utcnow
from gate.domain.ref import ImageRef
from gate.entrypoints.messages import GateRequest
from gate.errors import GateError, InfrastructureError
from gate.usecases.cooldown import waiting_records
from gate.usecases.gating import gate_image, gate_record
from gate.usecases.keeper import Gatekeeper, GateOutcome
from gate.usecases.leases import lease_seconds
from gate.usecases.polling import poll_upstreams


class RetryLater(InfrastructureError):
    """Another worker holds this (rule, digest); let the queue deliver the request again later."""


def handle(keeper: Gatekeeper, request: GateRequest, *, wait_seconds: float = 20.0) -> GateOutcome:
    """Carry out one queued gate request, idempotently.

    A request already decided costs one ledger read; one whose (rule, digest) another worker is
    gating is waited for up to ``wait_seconds``, then :class:`RetryLater` hands it back to the
    queue (its visibility timeout spaces the redeliveries; a worker that died is taken over once
    its lease lapses). A promotion that failed after its validation passed is handed back at
    once: the redelivery promotes without validating again. A digest left waiting out its
    rule's cooldown is returned as it stands: the timer checks it again (no worker waits).
    """
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
            raise RetryLater(
                f"record {outcome.record.id} is being gated by another worker "
                f"({outcome.record.state}); the request will be delivered again"
            )
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        outcome = GateOutcome(keeper.ledger.get(outcome.record.id), duplicate=True)
    return outcome


def poisoned(keeper: Gatekeeper, request: GateRequest, reason: str) -> GateRecord:
    """Record a request the queue gave up on as failed, with why; returns that record."""
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
    source = request.image or "?"
    rule, target, digest = "-", "-", None
    try:
        ref = ImageRef.parse(source)
        matched = keeper.config.match(ref)
        rule, target, digest = matched.name, matched.target.name, ref.digest
    except GateError:
        pass  # a poisoned request may name anything; it is recorded all the same
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


def revalidate(
    keeper: Gatekeeper, publish: Callable[[GateRecord], None] | None = None
) -> tuple[list[GateRecord], list[str]]:
    """The timer's re-validation: rules whose schedule is due, checked now (inline).

    Returns the records the pass added (each has its ``GATE_DECISION`` line already) and the
    errors seen; ``publish`` is called with each record that is an outcome event (a demotion, a
    rule marked broken, a failing re-validation). A publishing error is reported, not raised:
    the records stand.
    """
    from gate.usecases.audit import EVENT_TYPES
    from gate.usecases.revalidation import revalidate_due

    records: list[GateRecord] = []
    errors: list[str] = []
    for result in revalidate_due(keeper):
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
    return records, errors
