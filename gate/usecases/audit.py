"""The audit trail beside the ledger: one structured log line per decision, and the CloudEvent
that announces an outcome (published by :mod:`gate.adapters.outcomes` on an Event Grid topic).

Log lines start with ``GATE_DECISION`` followed by JSON, so Application Insights can query them:
``traces | where message startswith "GATE_DECISION" | extend d = parse_json(substring(message, 14))``.
A poll pass writes one ``GATE_POLL`` line per watched upstream registry (:func:`log_poll`). The
workbook's and alert rules' queries (infra/queries/) read these fields; tests hold them together.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from gate.domain.records import GateRecord, State
from gate.logsafe import clean

AUDIT_FIELD_LIMIT = 1024

logger = logging.getLogger("gate.audit")

EVENT_TYPES = {
    State.PROMOTED: "GatedImport.ImagePromoted",
    State.REJECTED: "GatedImport.ImageRejected",
    State.FAILED: "GatedImport.GateFailed",
    State.ROLLED_BACK: "GatedImport.RolledBack",
    # scheduled re-validation: the stable tag moved back; no earlier digest passes (nothing
    # moved); the stable digest fails now under on_failure: alert (nothing moves)
    State.DEMOTED: "GatedImport.ImageDemoted",
    State.BROKEN: "GatedImport.RuleBroken",
    State.FAILING: "GatedImport.RevalidationFailed",
}


def decision(
    record: GateRecord, *, duplicate: bool = False, duration: float | None = None
) -> dict[str, Any]:
    """The audit fields of a decision (no log text, no secrets: records hold none).

    Text that came from outside (source, reason, actor, ...) is escaped and capped, so the
    ``GATE_DECISION`` line stays one parseable JSON line of bounded size whatever the input.
    """
    fields: dict[str, Any] = _capped(
        {
            "record_id": record.id,
            "rule": record.rule,
            "source": record.source,
            "digest": record.digest,
            "verdict": record.state.value,
            "duplicate": duplicate,
            "run_id": record.run_id,
            "target": record.target,
            "target_tags": list(record.target_tags),
            "trigger": record.trigger,
            "actor": record.actor,
            # the Entra object id of who asked (empty: a trigger, the CLI or a function key)
            "actor_id": record.actor_id,
            "reason": record.reason,
            # downstream task runs the gate queued after the promotion (not waited for)
            "downstream": [d.to_dict() for d in record.downstream],
            # one entry per platform of a rule with platforms: (reasons stay in the record)
            "platforms": [
                {
                    "platform": p.platform,
                    "digest": p.digest,
                    "verdict": p.verdict,
                    "run_id": p.run_id,
                }
                for p in record.platforms
            ],
            # the signed attestation attached for this decision (gate verify checks it)
            "attestation": record.attestation or None,
            # a re-validation's promotion, or a demotion's failing re-validation
            "of_record": record.of_record or None,
            "duration_s": round(duration, 3) if duration is not None else None,
            # what the decision was about: gate, rollback, revalidate, demote
            "action": record.action,
            # when the gate first saw the digest, made the record and decided it: the
            # workbook's push-to-promotion time and its current stable digest read these
            "first_seen": _iso(record.first_seen),
            "created_at": _iso(record.created_at),
            "decided_at": _iso(record.updated_at),
            # seconds per phase (resolve, validate, promote)
            "timings": dict(record.timings),
        }
    )
    return fields


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _capped(value: Any) -> Any:
    if isinstance(value, str):
        return clean(value, AUDIT_FIELD_LIMIT)
    if isinstance(value, list):
        return [_capped(v) for v in value]
    if isinstance(value, dict):
        return {k: _capped(v) for k, v in value.items()}
    return value


def log_decision(
    record: GateRecord, *, duplicate: bool = False, duration: float | None = None
) -> None:
    """Write the one audit line of a decision at INFO."""
    logger.info(
        "GATE_DECISION %s", json.dumps(decision(record, duplicate=duplicate, duration=duration))
    )


def poll_report(registries: Iterable[str], errors: Iterable[str]) -> list[dict[str, Any]]:
    """What a poll pass says per watched upstream registry: ``errors`` counts the items it
    could not reach there, ``skipped`` those it did not even try (the registry was paused by a
    rate limit, or the pass's budget ran out), ``first_error`` shows one.

    ``errors`` are the pass's error lines (:func:`gate.entrypoints.worker.poll`), each starting with the
    polled reference (``registry/repository…``); lines that name no watched registry (e.g. the
    ledger's) are left to the pass's own log line.
    """
    problems = list(errors)
    report = []
    for registry in sorted(set(registries)):
        mine = [p for p in problems if p.startswith(f"{registry}/")]
        report.append(
            _capped(
                {
                    "registry": registry,
                    "errors": len(mine),
                    "skipped": sum(": not polled: " in p for p in mine),
                    "first_error": mine[0] if mine else None,
                }
            )
        )
    return report


def log_poll(registries: Iterable[str], errors: Iterable[str]) -> None:
    """Write one ``GATE_POLL`` line per watched registry at INFO (the alert on a registry no
    pass reached for an hour reads them)."""
    for entry in poll_report(registries, errors):
        logger.info("GATE_POLL %s", json.dumps(entry))


def outcome_event(record: GateRecord) -> tuple[str, str, dict[str, Any]] | None:
    """The CloudEvent (type, subject, data) announcing a final outcome; None for other states."""
    event_type = EVENT_TYPES.get(record.state)
    if event_type is None:
        return None
    return event_type, f"{record.target}@{record.digest}", decision(record)
