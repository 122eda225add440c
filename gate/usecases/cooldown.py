"""Cooldowns: a passing digest waits until it has been upstream long enough, and is superseded
when its upstream tag moves on meanwhile."""

from __future__ import annotations

from datetime import timedelta

from gate.config.model import Rule
from gate.domain.durations import format_duration
from gate.domain.records import GateRecord, HistoryQuery, State
from gate.domain.ref import ImageRef
from gate.errors import GateError
from gate.usecases.keeper import Gatekeeper


def cooldown_hold(
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
            f"({format_duration(rule.cooldown_seconds)}); validation run {record.run_id} passed, "
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
            f"cooldown {format_duration(rule.cooldown_seconds)} since first seen "
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


def cooldown_note(rule: Rule, record: GateRecord) -> str:
    """What a promotion's reason says about the rule's cooldown ('' for a rule without one)."""
    if not rule.cooldown_seconds:
        return ""
    if record.forced:
        return f"; cooldown ({format_duration(rule.cooldown_seconds)}) skipped: forced"
    return f"; cooldown ({format_duration(rule.cooldown_seconds)}) passed"


def waiting_records(keeper: Gatekeeper, *, limit: int = 1000) -> list[GateRecord]:
    """The records waiting out a cooldown (for gate watch and the timer to check again)."""
    return [
        r
        for r in keeper.ledger.history(HistoryQuery(state=State.WAITING, limit=limit))
        if r.action == "gate" and r.digest
    ]
