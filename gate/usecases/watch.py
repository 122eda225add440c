"""``gate watch``'s pass: poll the upstreams, gate the new digests inline, and check the records
waiting out a cooldown again."""

from __future__ import annotations

from copy import replace

from gate.errors import GateError
from gate.ports import ProgressCallback
from gate.usecases.cooldown import waiting_records
from gate.usecases.gating import gate_image, gate_record
from gate.usecases.keeper import Gatekeeper
from gate.usecases.polling import WatchItem, poll_upstreams


def watch_once(keeper: Gatekeeper, *, progress: ProgressCallback | None = None) -> list[WatchItem]:
    """Poll every watched upstream tag (HEAD only) and gate the digests not decided yet."""
    items = []
    for item in poll_upstreams(keeper):
        if item.skipped or item.error or item.digest is None:
            items.append(item)
            continue
        try:
            outcome = gate_image(
                keeper, item.pinned(), trigger="poll", wait=False, progress=progress
            )
            items.append(replace(item, outcome=outcome))
        except GateError as exc:
            items.append(replace(item, error=exc.message))
    return items + _recheck_waiting(keeper, items, progress)


def _recheck_waiting(
    keeper: Gatekeeper, done: list[WatchItem], progress: ProgressCallback | None
) -> list[WatchItem]:
    """Check the digests waiting out a cooldown that this poll did not reach: promote the ones
    whose cooldown ended and whose upstream tag still points at them; supersede the others."""
    seen = {i.outcome.record.id for i in done if i.outcome is not None}
    items = []
    try:
        waiting = waiting_records(keeper)
    except GateError as exc:
        return [WatchItem("-", "waiting records", error=exc.message)]
    for record in waiting:
        if record.id in seen:
            continue
        item = WatchItem(record.rule, record.source, record.digest)
        try:
            items.append(replace(item, outcome=gate_record(keeper, record.id, progress=progress)))
        except GateError as exc:
            items.append(replace(item, error=exc.message))
    return items
