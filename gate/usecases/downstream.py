"""Downstream tasks: queued after a promotion (never undoing it), and retried by hand."""

from __future__ import annotations

from gate.config.model import DownstreamTask, Rule
from gate.domain.records import DownstreamRun, GateRecord, State
from gate.domain.ref import ImageRef
from gate.errors import GateError, UsageError
from gate.logsafe import get_logger
from gate.usecases.keeper import Gatekeeper

# the logger name is what log queries select by; it stays the one from before the split
_log = get_logger("gate.service")


def start_downstream(keeper: Gatekeeper, rule: Rule, record: GateRecord) -> GateRecord:
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
