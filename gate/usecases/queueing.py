"""Queued work that another worker holds: how long to put it off, how often, and the queue's
retry budget that must outlast the longest validation.

What the Functions host does with a queue message (azure-sdk-for-net,
sdk/storage/Microsoft.Azure.WebJobs.Extensions.Storage.Common/src/Shared/Queues/):

* QueueListener.cs receives each message invisible for 10 minutes and, while the function runs,
  a timer renews that visibility half-way to its expiry: a long invocation keeps its message,
  and host.json's ``visibilityTimeout`` plays no part while it runs.
* QueueProcessor.cs, when the invocation ends: success deletes the message; a failure with
  ``DequeueCount >= maxDequeueCount`` copies it to ``<queue>-poison``; any other failure puts it
  back, invisible for host.json's ``visibilityTimeout`` ("the time interval between retries
  when processing of a message fails": learn.microsoft.com/azure/azure-functions/
  functions-bindings-storage-queue#host-json).

So a message for a (rule, digest) another worker holds must not fail: each failure spends one
of ``maxDequeueCount`` deliveries, ``visibilityTimeout`` apart, and a validation outlasts them.
The worker puts such a message back itself, with a delay derived from the holder's lease and
its rule's timeouts, and completes the delivered one; a counter in the message bounds that.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gate.config.model import GateConfig, Rule
from gate.domain.records import GateRecord, HistoryQuery, State, utcnow
from gate.errors import ConfigError
from gate.usecases.keeper import Gatekeeper

PROMOTION_MARGIN_SECONDS = 300.0
"""What a holder may take past its validation: the import (or push) of the image with its tags,
the attestation, the ledger writes, and an ACR run's time queued before it starts."""

IN_PROGRESS = (State.RECEIVED, State.VALIDATING, State.PROMOTING, State.VALIDATED, State.WAITING)
"""The states of a gate record that claim its (rule, digest) and are not final."""

CLAIMS_READ = 50
"""Records read per in-progress state when looking for a (rule, digest)'s claim: a rule has few
records in progress at once, so the newest 50 of each state hold them."""


def work_seconds(config: GateConfig, rule: Rule) -> float:
    """The longest a holder works on one record of ``rule``: every platform's validation one
    after another (gate/usecases/validation.py runs them in turn), a lease it may have to wait
    out to take the record over, and the promotion margin."""
    runs = max(1, len(rule.platforms))
    return rule.validation.timeout_seconds * runs + config.lease.seconds + PROMOTION_MARGIN_SECONDS


def budget_needed(config: GateConfig) -> float:
    """Seconds the queue's retries must span: the longest :func:`work_seconds` of any rule."""
    return max(
        (work_seconds(config, rule) for rule in config.rules),
        default=config.lease.seconds + PROMOTION_MARGIN_SECONDS,
    )


def postponement_limit(config: GateConfig) -> int:
    """How often one request is put back at most: enough postponements, each at least a lease
    long, to wait out the longest holder twice over (its run, then a takeover of it)."""
    return math.ceil(2 * budget_needed(config) / config.lease.seconds)


def postpone_delay(keeper: Gatekeeper, rule: Rule | None, holder: GateRecord) -> float:
    """Seconds to put off a request whose (rule, digest) ``holder`` holds.

    Until the holder should be done (its creation plus :func:`work_seconds`), and at least until
    its lease would lapse if its worker died (then the postponed request takes it over); never
    less than one lease, never more than the whole of :func:`work_seconds`.
    """
    config = keeper.config
    lease = config.lease.seconds
    longest = work_seconds(config, rule) if rule is not None else budget_needed(config)
    now = utcnow()
    done_by = (holder.created_at - now).total_seconds() + longest
    lapses = (holder.lease_until - now).total_seconds() if holder.lease_until else lease
    return min(longest, max(lease, done_by, lapses + 1.0))


def claimed(keeper: Gatekeeper, rule: str, digest: str) -> GateRecord | None:
    """The newest gate record in progress for (rule, digest), held or not; None if none.

    A bounded read: the newest :data:`CLAIMS_READ` records of each in-progress state.
    """
    found = [r for r in in_progress(keeper, rule) if r.digest == digest]
    return max(found, key=lambda r: r.created_at, default=None)


def in_progress(keeper: Gatekeeper, rule: str) -> list[GateRecord]:
    """The rule's gate records in progress (see :data:`CLAIMS_READ`)."""
    return [
        r
        for state in IN_PROGRESS
        for r in keeper.ledger.history(HistoryQuery(rule=rule, state=state, limit=CLAIMS_READ))
        if r.action == "gate"
    ]


@dataclass(frozen=True)
class HostQueueBudget:
    """The retry budget host.json gives a queue message: ``deliveries`` attempts, each failure
    put back for ``visibility_seconds``."""

    visibility_seconds: float
    deliveries: int

    @property
    def seconds(self) -> float:
        """How long a failing message is retried before it is poisoned: the gaps between its
        deliveries, ``(deliveries - 1) * visibility_seconds`` (the run times come on top)."""
        return (self.deliveries - 1) * self.visibility_seconds

    @classmethod
    def from_host_json(cls, host: Mapping[str, Any]) -> HostQueueBudget:
        """Read ``extensions.queues``; the defaults are the host's (visibilityTimeout 0,
        maxDequeueCount 5: learn.microsoft.com/azure/azure-functions/
        functions-bindings-storage-queue#host-json)."""
        queues = host.get("extensions", {}).get("queues", {})
        text = str(queues.get("visibilityTimeout", "00:00:00"))
        try:
            hours, minutes, seconds = (float(part) for part in text.split(":"))
        except ValueError:
            raise ConfigError(
                f"host.json extensions.queues.visibilityTimeout {text[:40]!r} is not hh:mm:ss; "
                "write it as a TimeSpan, e.g. 00:05:00"
            ) from None
        return cls(hours * 3600 + minutes * 60 + seconds, int(queues.get("maxDequeueCount", 5)))


def budget_problem(host: Mapping[str, Any], config: GateConfig) -> str:
    """Why host.json's queue retry budget is too short for ``config`` ('' when it is not)."""
    budget = HostQueueBudget.from_host_json(host)
    needed = budget_needed(config)
    if budget.seconds >= needed:
        return ""
    longest = max(config.rules, key=lambda r: work_seconds(config, r), default=None)
    which = f" (rule '{longest.name}')" if longest is not None else ""
    return (
        f"host.json retries a failing gate request for {budget.seconds:g} s "
        f"(visibilityTimeout {budget.visibility_seconds:g} s x (maxDequeueCount "
        f"{budget.deliveries} - 1)), shorter than the longest validation with its lease and "
        f"promotion margin, {needed:g} s{which}; raise extensions.queues.visibilityTimeout to at "
        f"least {math.ceil(needed / max(1, budget.deliveries - 1))} s, or maxDequeueCount"
    )
