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

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from gate.config import DownstreamTask, GateConfig, Rule
from gate.errors import Conflict, GateError, NotFound, UsageError
from gate.model import Claim, DownstreamRun, GateRecord, Outcome, State, new_record_id
from gate.ports import (
    DownstreamRunner,
    Ledger,
    ProgressCallback,
    Registry,
    Resume,
    Secrets,
    ValidationRequest,
    Validator,
)
from gate.ref import ImageRef, parse_digest

_log = logging.getLogger("gate.service")

Notify = Callable[[str, GateRecord, str], None]
"""``notify(event, record, message)``: progress for whoever watches (CLI output, logs)."""

# How long an in-progress record may stay silent, beyond its validation timeout, before another
# process may take the (rule, digest) over: covers the promotion copy after the validation.
PROMOTION_ALLOWANCE_SECONDS = 900.0
WAIT_POLL_SECONDS = 0.5


def quiet(event: str, record: GateRecord, message: str) -> None:
    """The default observer: says nothing."""


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
        """0 promoted, 1 rejected, 3 failed or still in progress (worth asking again)."""
        return {State.PROMOTED: 0, State.REJECTED: 1}.get(self.record.state, 3)

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
        }


def _as_ref(image: str | ImageRef) -> ImageRef:
    return image if isinstance(image, ImageRef) else ImageRef.parse(image)


def _prepare(
    keeper: Gatekeeper, image: str | ImageRef, *, trigger: str, force: bool
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
        timings={"resolve": round(time.monotonic() - started, 3)},
    )
    return rule, ref.with_tag(tag).with_digest(digest), record


def stale_after(rule: Rule) -> float:
    """Seconds an in-progress record of ``rule`` may go without progress before it is adopted."""
    return rule.validation.timeout_seconds + PROMOTION_ALLOWANCE_SECONDS


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
    while True:
        claim = keeper.ledger.claim(record, force=force, stale_after_seconds=stale_after(rule))
        if claim.acquired:
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
    return GateOutcome(_continue(keeper, rule, source, claim, progress))


def admit(
    keeper: Gatekeeper, image: str | ImageRef, *, trigger: str = "manual", force: bool = False
) -> GateOutcome:
    """Resolve and dedupe now, gate later: record the request as ``received`` and return it.

    For callers that answer at once and leave the slow part to a worker (the HTTP API): the
    returned record id is what the worker's :func:`gate_record` takes. A (rule, digest) decided
    or being gated already returns that record instead (``duplicate``), and nothing is added.
    """
    rule, _source, record = _prepare(keeper, image, trigger=trigger, force=force)
    claim = keeper.ledger.claim(
        record, force=force, stale_after_seconds=stale_after(rule), start=False
    )
    if claim.acquired:
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
    claim = keeper.ledger.claim(record, force=record.forced, stale_after_seconds=stale_after(rule))
    if not claim.acquired:
        return GateOutcome(claim.record, duplicate=True)
    source = ImageRef.parse(record.source)
    source = source.with_tag(rule.gated_tag(source)).with_digest(record.digest)
    return GateOutcome(_continue(keeper, rule, source, claim, progress))


def _continue(
    keeper: Gatekeeper,
    rule: Rule,
    source: ImageRef,
    claim: Claim,
    progress: ProgressCallback | None,
) -> GateRecord:
    if claim.resumed:
        keeper.notify(
            "resuming",
            claim.record,
            f"record {claim.record.id} went silent in state {claim.record.state}",
        )
    return _run(keeper, rule, source, claim.record, progress)


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
    try:
        if record.state is State.PROMOTING and record.run_id and len(record.target_tags) == 2:
            return _promote(keeper, rule, source, record, progress)
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

        began = time.monotonic()
        result = keeper.validator.validate(
            _validation_request(keeper, rule, source, record), started, resume
        )
        record = record.advance(
            record.state,
            run_id=result.run_id,
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
        record = record.advance(State.PROMOTING, target_tags=(unique, stable))
        ledger.save(record)
        return _promote(keeper, rule, source, record, progress)
    except BaseException as exc:
        reason = exc.message if isinstance(exc, GateError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, KeyboardInterrupt):
            reason = "interrupted"
        record = record.advance(State.FAILED, reason=reason)
        ledger.save(record)
        keeper.notify("failed", record, reason)
        if isinstance(exc, GateError):
            return record
        raise


def _promote(
    keeper: Gatekeeper,
    rule: Rule,
    source: ImageRef,
    record: GateRecord,
    progress: ProgressCallback | None,
) -> GateRecord:
    """Copy the validated digest: the run-ID tag first (never overwritten), then the stable tag.

    Raises on error; the caller records the failure.
    """
    unique, stable = record.target_tags
    keeper.notify("promoting", record, f"to {rule.target.name}:{unique}, then :{stable}")
    began = time.monotonic()
    # by digest, never by tag: upstream may have moved since we resolved it
    keeper.registry.copy(
        source.pinned(),
        rule.target,
        immutable_tags=(unique,),
        tags=(stable,),
        progress=progress,
    )
    record = record.advance(
        State.PROMOTED,
        reason=f"passed validation run {record.run_id}",
        timings={**record.timings, "promote": round(time.monotonic() - began, 3)},
    )
    keeper.ledger.save(record)
    keeper.notify("promoted", record, f"{rule.target.name}:{stable} is now {source.digest}")
    return record


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


@dataclass(frozen=True)
class WatchItem:
    """One watched upstream tag in one poll: its digest and what the poll did about it."""

    rule: str
    source: str
    digest: str | None = None
    outcome: GateOutcome | None = None
    skipped: str = ""
    error: str = ""


def poll_upstreams(keeper: Gatekeeper) -> list[WatchItem]:
    """HEAD every watched upstream tag; items without ``skipped``/``error`` are new digests.

    Glob selectors list the repository's tags first. One tag's error does not stop the others.
    Nothing is gated here: :func:`watch_once` gates inline, the timer function enqueues.
    """
    items: list[WatchItem] = []
    for rule in keeper.config.rules:
        try:
            tags = list(rule.exact_tags)
            if len(tags) != len(rule.tags):
                listed = keeper.registry.list_tags(rule.source)
                tags += sorted(t for t in listed if rule.selects(t) and t not in tags)
        except GateError as exc:
            items.append(WatchItem(rule.name, rule.source.name, error=exc.message))
            continue
        for tag in tags:
            ref = rule.source.with_tag(tag)
            try:
                digest = keeper.registry.resolve(ref)
                decided = keeper.ledger.decided(rule.name, digest)
            except GateError as exc:
                items.append(WatchItem(rule.name, str(ref), error=exc.message))
                continue
            skipped = f"already {decided.state}" if decided is not None else ""
            items.append(WatchItem(rule.name, str(ref), digest, skipped=skipped))
    return items


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
    return items


def rollback(
    keeper: Gatekeeper,
    target: str | ImageRef,
    *,
    reason: str,
    to: str | None = None,
    actor: str | None = None,
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
    )
    keeper.registry.copy(repo.with_digest(chosen.digest).pinned(), repo, tags=(stable,))
    record = record.advance(
        State.ROLLED_BACK,
        reason=f"{reason.strip()} ({repo.name}:{stable} {current} -> {chosen.digest}, "
        f"promoted by record {chosen.id}, run {chosen.run_id})",
    )
    keeper.ledger.add(record)
    keeper.notify("rolled-back", record, record.reason)
    return record


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
