"""Scheduled re-validation and automatic demotion: promoted digests are validated again on the
rule's schedule; one that fails now is demoted (or alerted on), as its rule says."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime

from gate.config.model import Rule
from gate.domain.records import GateRecord, HistoryQuery, Outcome, State, new_record_id, utcnow
from gate.domain.ref import ImageRef
from gate.errors import GateError, LedgerError, NotFound, UsageError
from gate.logsafe import get_logger
from gate.usecases.keeper import Gatekeeper
from gate.usecases.rollback import move_back_record, move_stable_tag
from gate.usecases.validation import validate_platforms, validation_request

# the logger name is what log queries select by; it stays the one from before the split
_log = get_logger("gate.service")


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
    last = last_revalidation(keeper, rule)
    if last is None:
        return True
    age = ((now or utcnow()) - last).total_seconds()
    return age >= rule.revalidate.every_seconds


def last_revalidation(keeper: Gatekeeper, rule: Rule) -> datetime | None:
    """When ``rule`` was last re-validated: its newest ``revalidated`` or ``failing`` record."""
    last = [
        r.created_at
        for state in (State.REVALIDATED, State.FAILING)
        for r in keeper.ledger.history(HistoryQuery(rule=rule.name, state=state, limit=1))
    ]
    return max(last, default=None)


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


PASS_MARGIN_SECONDS = 300.0
"""What a pass may take past its validations: tag reads, the demotion's tag move, the records."""


def pass_seconds(keeper: Gatekeeper, rule: Rule) -> float:
    """The longest one re-validation pass of ``rule`` takes: the stable digest and up to
    ``candidates`` earlier ones, each validated on every platform in turn, plus a margin."""
    assert rule.revalidate is not None
    checks = 1 + rule.revalidate.candidates
    runs = max(1, len(rule.platforms))
    return checks * runs * rule.validation.timeout_seconds + PASS_MARGIN_SECONDS


def pass_id(rule: str, last: datetime | None, now: datetime, stale_seconds: float) -> str:
    """The record id of the pass that re-validates ``rule`` after ``last``, started ``now``.

    Every worker that starts the same due pass computes the same id, so the ledger, which
    refuses a second record with an id it holds (:meth:`gate.ports.Ledger.add`), lets exactly
    one of them record it: the pass is claimed. ``now`` counts in windows of ``stale_seconds``,
    so a pass whose worker died blocks the next attempt for at most one window. The id has the
    ledger's shape (gate/domain/records.py, ``new_record_id``): the window's start in
    milliseconds (11 hex digits), then 21 hex digits of a hash of rule, ``last`` and window.
    """
    window = int(now.timestamp() // stale_seconds)
    began = int(window * stale_seconds * 1000)
    seen = last.isoformat() if last else "never"
    tail = hashlib.sha256(f"{rule}|{seen}|{window}".encode()).hexdigest()[:21]
    return f"{began:011x}{tail}"


def revalidate_queued(
    keeper: Gatekeeper, rule_name: str, *, trigger: str = "schedule"
) -> tuple[list[Revalidated], GateRecord | None, str]:
    """One queued re-validation of ``rule_name``, done once however often it was queued.

    Returns the results, the pass's record and, when nothing was done, why: the rule is gone
    or no longer re-validates, it is not due (a pass for the same due time finished already),
    or another worker has the pass (its record is in the ledger, in progress). The pass's
    record (action ``revalidate``, no digest) is written first, under :func:`pass_id`, and
    closed when the pass ends: ``revalidated`` (it counts as the rule's last re-validation) or
    ``failed`` when something could not be checked (the next due tick tries again).
    """
    rule = next((r for r in keeper.config.rules if r.name == rule_name), None)
    if rule is None or rule.revalidate is None:
        return [], None, f"rule '{rule_name}' no longer re-validates in {keeper.config.path}"
    now = utcnow()
    last = last_revalidation(keeper, rule)
    if not revalidation_due(keeper, rule, now):
        when = last.isoformat(timespec="seconds") if last else "?"
        return [], None, f"rule {rule.name} is not due: it was re-validated at {when}"
    stale = pass_seconds(keeper, rule)
    running = _running_pass(keeper, rule, now, stale)
    if running is not None:
        return [], running, f"record {running.id} is re-validating rule {rule.name} already"
    marker = GateRecord(
        id=pass_id(rule.name, last, now, stale),
        action="revalidate",
        rule=rule.name,
        source=rule.target.name,
        target=rule.target.name,
        trigger=trigger,
        state=State.VALIDATING,
        actor=REVALIDATION_ACTOR,
        reason="re-validation pass running",
    )
    try:
        keeper.ledger.add(marker)
    except LedgerError as refused:
        try:
            taken = keeper.ledger.get(marker.id)
        except NotFound:
            # not a duplicate: the ledger failed, and the queue delivers the request again
            raise refused from None
        return [], taken, f"record {taken.id} has this re-validation pass of rule {rule.name}"
    results = revalidate_rule(keeper, rule, trigger=trigger)
    problems = [why for r in results if (why := _unchecked(r))]
    checked = sum(1 for r in results for x in r.records if x.action == "revalidate")
    if problems:
        done = marker.advance(
            State.FAILED, reason=f"re-validation pass could not finish: {'; '.join(problems)}"
        )
    else:
        done = marker.advance(
            State.REVALIDATED,
            reason=f"re-validation pass done: {len(results)} stable tag(s), {checked} check(s)",
        )
    keeper.ledger.save(done)
    return results, done, ""


def _unchecked(result: Revalidated) -> str:
    """Why ``result`` checked nothing ('' when it did): an error, or a check that could not run."""
    if result.error:
        return result.error
    if result.checked is not None and result.checked.state is State.FAILED:
        return result.checked.reason
    return ""


def _running_pass(
    keeper: Gatekeeper, rule: Rule, now: datetime, stale_seconds: float
) -> GateRecord | None:
    """A pass of ``rule`` in progress and younger than ``stale_seconds``; an older one (its
    worker died) is closed as failed, so that it stays in no one's way."""
    running = None
    for record in keeper.ledger.history(
        HistoryQuery(rule=rule.name, state=State.VALIDATING, limit=50)
    ):
        if record.action != "revalidate":
            continue
        if (now - record.created_at).total_seconds() < stale_seconds:
            running = running or record
            continue
        keeper.ledger.save(
            record.advance(
                State.FAILED,
                reason=f"re-validation pass silent for over {stale_seconds:g} s (its worker "
                "stopped); the next due pass re-validates the rule",
            )
        )
    return running


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
            for r in keeper.ledger.history(
                HistoryQuery(rule=rule.name, state=State.PROMOTED, limit=1000)
            )
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
            result, record = validate_platforms(keeper, rule, image, record, None, save=None)
        else:
            result = keeper.validator.validate(
                validation_request(keeper, rule, image, record), lambda run_id: None, None
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
    repo = rule.target
    record = move_back_record(
        repo,
        current,
        chosen,
        stable,
        action="demote",
        rule=rule.name,
        trigger=trigger,
        actor=REVALIDATION_ACTOR,
        of_record=failing.id,
    )
    why = f"{current} fails its current validation (record {failing.id})"
    record = move_stable_tag(
        keeper,
        repo,
        record,
        current=current,
        state=State.DEMOTED,
        why=f"demoted by re-validation: {why}",
        reason=f"demoted: {why}; {repo.name}:{stable} {current} -> {chosen.digest}, promoted "
        f"by record {chosen.id} (run {chosen.run_id}), which passes now",
    )
    _record_revalidation(keeper, record)
    return record


def _record_revalidation(keeper: Gatekeeper, record: GateRecord) -> None:
    """Add a re-validation's record, write its audit line and tell whoever watches."""
    from gate.usecases import audit

    keeper.ledger.add(record)
    audit.log_decision(record)
    keeper.notify(record.state.value, record, record.reason)
