"""A passing validation waiting for its promotion: whether there is one, and whether it is still
fresh enough to promote without validating again."""

from __future__ import annotations

from datetime import datetime

from gate.config.model import Rule
from gate.domain.records import GateRecord, State, utcnow


def has_pass(record: GateRecord) -> bool:
    """True when the record's validation passed and its promotion is still to be finished."""
    return (
        record.state in (State.VALIDATED, State.PROMOTING, State.WAITING)
        and bool(record.run_id)
        and len(record.target_tags) == 2
    )


def passed_at(record: GateRecord) -> datetime:
    """When the record's validation passed."""
    # records from before validated_at: their last update is the latest the pass can be from
    return record.validated_at or record.updated_at


def pass_fresh(rule: Rule, record: GateRecord) -> bool:
    """True while the record's passing validation may still be promoted without another.

    A pass held back by a cooldown counts from when the cooldown ended, not from the validation.
    """
    since = max(passed_at(record), record.eligible_at or passed_at(record))
    age = (utcnow() - since).total_seconds()
    return age <= rule.validation_fresh_for
