"""What ``gate`` prints on a terminal: tables, outcomes, progress bars (rich).

Imported only by the commands that print for a person: ``--json`` and plain output (stdout not
a terminal, or ``--plain``) never load rich.

Text that may come from outside (references, reasons, actors, error messages, logs) reaches
the terminal only inside rich ``Text`` objects, which are never parsed for markup or emoji
codes, and only after :func:`gate.entrypoints.views.plain` has escaped its control characters: a "[/]" or an escape
sequence in a stored reason prints as itself and cannot crash or drive the terminal.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table
from rich.text import Text as Text  # the commands build their lines with it too

from gate.domain.records import GateRecord, State
from gate.entrypoints.views import downstream_status
from gate.entrypoints.views import plain as plain  # the commands clean their lines with it too

if TYPE_CHECKING:
    from gate.usecases.keeper import GateOutcome
    from gate.usecases.revalidation import Revalidated

# when output goes to a file or a pipe, do not squeeze it to rich's default 80 columns
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)

STYLE = {
    "promoted": "green",
    "rejected": "red",
    "failed": "yellow",
    "rolled_back": "cyan",
    "waiting": "blue",
    "superseded": "magenta",
}


def notice(event: str, message: str) -> None:
    """A progress line on stderr (``resolved``, ``validating``, ...)."""
    style = STYLE.get(event, "dim")
    err.print(Text.assemble((f"{event:>11}", style), " ", plain(message)), soft_wrap=True)


def error(message: str) -> None:
    """An ``error:`` line on stderr."""
    err.print(Text.assemble(("error:", "bold red"), " ", plain(message)), soft_wrap=True)


class Bar:
    """A rich progress bar fed by the registry adapter's byte-progress callback."""

    def __init__(self, enabled: bool) -> None:
        self.progress = Progress(
            "{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=err,
            transient=True,
            disable=not enabled,
        )
        self.tasks: dict[str, Any] = {}

    def __call__(self, what: str, done: int, total: int) -> None:
        if what not in self.tasks:
            self.tasks[what] = self.progress.add_task(what[:32], total=total or None)
        self.progress.update(self.tasks[what], completed=done)

    def __enter__(self) -> Bar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)


def print_outcome(outcome: GateOutcome) -> None:
    r = outcome.record
    style = STYLE.get(r.state.value, "")
    seen = " (decided before; use --force to re-gate)" if outcome.duplicate else ""
    heading = (r.state.value.upper(), f"bold {style}".strip())
    out.print(Text.assemble(heading, f"{seen}  {plain(r.source)}"), soft_wrap=True)
    out.print(
        Text(f"  digest  {plain(r.digest)}\n  record  {plain(r.id)}   run {plain(r.run_id or '-')}")
    )
    if r.target_tags and r.state is State.PROMOTED:
        tags = ", ".join(f"{r.target}:{t}" for t in r.target_tags)
        out.print(Text(f"  tags    {plain(tags)}"), soft_wrap=True)
    print_downstream(r)
    if r.state is State.WAITING and r.eligible_at is not None:
        out.print(Text(f"  until   {r.eligible_at.isoformat(timespec='seconds')} (cooldown)"))
    if r.reason:
        out.print(Text(f"  reason  {plain(r.reason)}"), soft_wrap=True)


def print_downstream(record: GateRecord, indent: str = "  ") -> None:
    """One line per downstream task the gate started (or could not start)."""
    for run in record.downstream:
        failed = not run.scheduled
        what = Text(plain(downstream_status(run)), style="red" if failed else "")
        task = plain(f"{run.registry}/{run.task}")
        out.print(Text.assemble(f"{indent}then    {task} ", what), soft_wrap=True)


def print_revalidated(results: list[Revalidated]) -> None:
    """One line per record a re-validation pass added, and one per error."""
    for result in results:
        for r in result.records:
            style = {"revalidated": "green", "demoted": "cyan"}.get(r.state.value, "red")
            line = f" {r.target}:{r.target_tags[0] if r.target_tags else '-'} {r.digest}"
            out.print(
                Text.assemble((r.state.value.upper(), f"bold {style}"), plain(line)),
                soft_wrap=True,
            )
            out.print(
                Text(
                    f"  record  {plain(r.id)}   of {plain(r.of_record)}\n"
                    f"  reason  {plain(r.reason)}"
                ),
                soft_wrap=True,
            )
        if result.error:
            said = Text.assemble(("      error", "yellow"), f" rule {plain(result.rule)}: ")
            err.print(said.append(plain(result.error)), soft_wrap=True)


def history_table(records: list[GateRecord]) -> Table:
    """The decisions as a table (also the walkthrough's summary); ``gate show`` has the rest."""
    table = Table()
    for column in ("record", "time (UTC)", "source", "digest", "verdict", "run", "reason"):
        table.add_column(column, overflow="fold")
    for r in records:
        style = STYLE.get(r.state.value, "")
        table.add_row(
            Text(plain(r.id)),
            r.created_at.strftime("%m-%d %H:%M:%S"),
            Text(plain(r.source if r.action == "gate" else f"{r.action} {r.target}")),
            Text(plain((r.digest or "-")[:19])),
            Text(verdict(r), style=style),
            Text(plain(r.run_id or "-")),
            Text(plain(r.reason)),
        )
    return table


def verdict(record: GateRecord) -> str:
    """The state, with the time a digest waiting out its cooldown becomes eligible."""
    if record.state is State.WAITING and record.eligible_at is not None:
        return f"waiting until {record.eligible_at.strftime('%m-%d %H:%M:%S')}"
    return record.state.value
