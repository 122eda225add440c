"""The audit trail beside the ledger: one structured log line per decision, and optionally a
CloudEvent per outcome on an Event Grid custom topic.

Log lines start with ``GATE_DECISION`` followed by JSON, so Application Insights can query them:
``traces | where message startswith "GATE_DECISION" | extend d = parse_json(substring(message, 14))``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from gate.logsafe import clean
from gate.model import GateRecord, State

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
            "reason": record.reason,
            # downstream task runs the gate queued after the promotion (not waited for)
            "downstream": [d.to_dict() for d in record.downstream],
            # the signed attestation attached for this decision (gate verify checks it)
            "attestation": record.attestation or None,
            # a re-validation's promotion, or a demotion's failing re-validation
            "of_record": record.of_record or None,
            "duration_s": round(duration, 3) if duration is not None else None,
        }
    )
    return fields


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


class OutcomePublisher:
    """Publishes a CloudEvent per final outcome to an Event Grid custom topic (identity auth)."""

    def __init__(self, endpoint: str, credential: Any, *, source: str = "/gated-import") -> None:
        from azure.eventgrid import EventGridPublisherClient

        self._client = EventGridPublisherClient(endpoint, credential)
        self._source = source

    def publish(self, record: GateRecord) -> None:
        """Send the outcome; only final states are published."""
        from azure.core.messaging import CloudEvent

        event_type = EVENT_TYPES.get(record.state)
        if event_type is None:
            return
        self._client.send(
            CloudEvent(
                source=self._source,
                type=event_type,
                subject=f"{record.target}@{record.digest}",
                data=decision(record),
            )
        )
