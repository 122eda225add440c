"""Records as plain text (no rich): what ``gate show`` and ``gate history`` print.

Every value goes through :func:`gate.logsafe.clean`, so text that came from outside prints as
itself: it cannot drive the terminal or break a line into two.
"""

from __future__ import annotations

from gate.domain.records import DownstreamRun, GateRecord, State
from gate.logsafe import clean

_SHOWN = 100_000


def plain(value: object) -> str:
    """``value`` as terminal-safe text on one line (long enough for any stored field)."""
    return clean(value, _SHOWN)


def downstream_status(run: DownstreamRun) -> str:
    """How a downstream task fared: queued (ACR), ran to an outcome (local), or not started."""
    if run.outcome:  # a local task file, run to its end
        said = f": {run.error}" if run.error else (f": {run.output}" if run.output else "")
        return f"run {run.run_id} {run.outcome}{said}"
    if run.scheduled:
        return f"run {run.run_id} queued"
    return f"not queued: {run.error}"


def partial(record: GateRecord) -> str:
    """What a promotion that did not finish left at the target, and what finishes it."""
    written = [t for t in record.target_tags if t in record.promoted_tags]
    missing = [t for t in record.target_tags if t not in record.promoted_tags]
    kinds = dict(zip(record.target_tags, ("run-ID tag", "stable tag"), strict=False))
    said = [f"{kinds.get(t, 'tag')} {t} written" for t in written]
    said += [f"{kinds.get(t, 'tag')} {t} not moved" for t in missing]
    return ", ".join(said) + "; the next attempt finishes the promotion"


def record_lines(record: GateRecord) -> list[str]:
    """``gate show``: every field, the per-platform runs, the downstream runs, what a partial
    promotion left, then the log (which keeps its own lines)."""
    lines = [
        f"{key:>13}  {plain(value)}"
        for key, value in record.to_dict().items()
        if key not in ("downstream", "platforms")
    ]
    for result in record.platforms:
        said = (
            f"{result.platform} {result.digest} {result.verdict or 'not run'} "
            f"run {result.run_id or '-'}" + (f": {result.reason}" if result.reason else "")
        )
        lines.append(f"{'platform':>13}  {plain(said)}")
    for run in record.downstream:
        lines.append(
            f"{'downstream':>13}  {plain(f'{run.registry}/{run.task} {downstream_status(run)}')}"
        )
    if record.partial:
        lines.append(f"{'partial':>13}  {plain(partial(record))}")
    if record.log:
        lines += ["", "validation log", *(plain(line) for line in record.log.splitlines())]
    return lines


def history_fields(record: GateRecord) -> tuple[str, ...]:
    """One record as ``gate history``'s columns: id, time, what, digest, verdict, run, reason."""
    shown = record.state.value
    if record.state is State.WAITING and record.eligible_at is not None:
        shown = f"waiting until {record.eligible_at.isoformat(timespec='seconds')}"
    what = record.source if record.action == "gate" else f"{record.action} {record.target}"
    return tuple(
        plain(field)
        for field in (
            record.id,
            record.created_at.isoformat(timespec="seconds"),
            what,
            record.digest or "-",
            shown,
            record.run_id or "-",
            record.reason,
        )
    )
