"""The ``gate`` command line: a thin shell over :mod:`gate.service`.

Exit codes: 0 promoted (or already promoted), 1 rejected by validation, 2 usage or
configuration error, 3 infrastructure error worth retrying.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from gate.config import GateConfig, config_path, load_config
from gate.errors import GateError, UsageError
from gate.model import GateRecord, State, parse_instant
from gate.service import (
    Gatekeeper,
    GateOutcome,
    gate_image,
    retry_downstream,
    rollback,
    watch_once,
)

# when output goes to a file or a pipe, do not squeeze it to rich's default 80 columns
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)

_STYLE = {"promoted": "green", "rejected": "red", "failed": "yellow", "rolled_back": "cyan"}


def _fail(exc: GateError) -> NoReturn:
    err.print(f"[bold red]error:[/] {exc.message}", markup=True, soft_wrap=True)
    sys.exit(exc.exit_code)


def _keeper(config: str | None, quiet: bool = False) -> Gatekeeper:
    from gate.compose import build_gatekeeper

    cfg: GateConfig = load_config(config_path(config))

    def notify(event: str, record: GateRecord, message: str) -> None:
        if not quiet:
            style = _STYLE.get(event, "dim")
            err.print(f"[{style}]{event:>11}[/] {message}", soft_wrap=True)

    return build_gatekeeper(cfg, notify=notify)


class _Bar:
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

    def __enter__(self) -> _Bar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)


config_option = click.option(
    "--config",
    "-c",
    envvar="GATE_CONFIG",
    metavar="FILE",
    help="Gate configuration (default: $GATE_CONFIG, else ./gate.yaml).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gated-import-gate", prog_name="gate")
def main() -> None:
    """Gated import of upstream base images: pin by digest, validate, promote."""


@main.command("run")
@click.argument("image")
@config_option
@click.option("--force", is_flag=True, help="Re-gate a digest that was already decided.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def run_cmd(image: str, config: str | None, force: bool, as_json: bool) -> None:
    """Gate one upstream IMAGE (a tag, or a digest: node:15-alpine, node@sha256:...)."""
    try:
        keeper = _keeper(config, quiet=as_json)
        with _Bar(enabled=not as_json and err.is_terminal) as bar:
            outcome = gate_image(keeper, image, force=force, progress=bar)
    except GateError as exc:
        if as_json:
            print(
                json.dumps({"verdict": "error", "error": type(exc).__name__, "reason": exc.message})
            )
        _fail(exc)
    if as_json:
        print(json.dumps(outcome.to_dict()))
    else:
        _print_outcome(outcome)
    sys.exit(outcome.exit_code)


def _print_outcome(outcome: GateOutcome) -> None:
    r = outcome.record
    style = _STYLE.get(r.state.value, "")
    seen = " (decided before; use --force to re-gate)" if outcome.duplicate else ""
    out.print(f"[bold {style}]{r.state.value.upper()}[/]{seen}  {r.source}")
    out.print(f"  digest  {r.digest}\n  record  {r.id}   run {r.run_id or '-'}")
    if r.target_tags and r.state is State.PROMOTED:
        out.print("  tags    " + ", ".join(f"{r.target}:{t}" for t in r.target_tags))
    _print_downstream(r)
    if r.reason:
        out.print(f"  reason  {r.reason}", soft_wrap=True)


def _print_downstream(record: GateRecord, indent: str = "  ") -> None:
    """One line per downstream task run the gate queued (or could not queue)."""
    for run in record.downstream:
        what = f"run {run.run_id}" if run.scheduled else f"[red]not queued[/]: {run.error}"
        out.print(f"{indent}then    {run.registry}/{run.task} {what}", soft_wrap=True)


@main.command("watch")
@config_option
@click.option("--once", is_flag=True, help="Poll once and exit (for cron or a timer).")
@click.option(
    "--interval",
    default=300.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Seconds between polls.",
)
def watch_cmd(config: str | None, once: bool, interval: float) -> None:
    """Poll every watched upstream tag (HEAD only) and gate digests not decided yet."""
    try:
        keeper = _keeper(config)
    except GateError as exc:
        _fail(exc)
    worst = 0
    while True:
        for item in watch_once(keeper):
            if item.error:
                err.print(f"[yellow]      error[/] {item.source}: {item.error}", soft_wrap=True)
                worst = max(worst, 3)
            elif item.outcome:
                worst = max(worst, item.outcome.exit_code)
                _print_outcome(item.outcome)
            else:
                out.print(f"[dim]  unchanged {item.source} {item.digest} ({item.skipped})[/]")
        if once:
            sys.exit(worst)
        time.sleep(interval)


@main.command("listen")
@config_option
@click.option("--bind", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
def listen_cmd(config: str | None, bind: str, port: int) -> None:
    """Gate pushes as a registry reports them (its notifications endpoint), until Ctrl-C."""
    from gate.listener import PushListener

    try:
        keeper = _keeper(config)
        listener = PushListener(keeper, host=bind, port=port, on_outcome=_print_outcome)
    except GateError as exc:
        _fail(exc)
    except OSError as exc:
        err.print(
            f"[bold red]error:[/] cannot listen on {bind}:{port}: {exc.strerror}; pick another --port"
        )
        sys.exit(2)
    with listener:
        err.print(
            f"listening on {listener.url}: add it to the registry's notifications.endpoints "
            "(ignoredmediatypes: [application/octet-stream]); Ctrl-C to stop"
        )
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            err.print("stopping; finishing what is queued")


def _since(value: str | None) -> datetime | None:
    if not value:
        return None
    units = {"m": 60, "h": 3600, "d": 86400}
    span = re.fullmatch(r"([0-9]{1,7})([mhd])", value)
    if span:
        try:
            return datetime.now(UTC) - timedelta(seconds=int(span[1]) * units[span[2]])
        except OverflowError:
            raise click.BadParameter(
                f"{value} reaches back before year 1", param_hint="'--since'"
            ) from None
    try:
        return parse_instant(value)
    except UsageError as exc:
        raise click.BadParameter(
            f"{exc.message}; or give a span (30m, 12h, 7d)", param_hint="'--since'"
        ) from None


@main.command("history")
@config_option
@click.option("--rule", help="Only this rule.")
@click.option("--target", help="Only this target repository (registry/repository).")
@click.option("--state", type=click.Choice([s.value for s in State]), help="Only this state.")
@click.option("--since", help="Only records since a date or span (7d, 12h).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines on stdout.")
def history_cmd(
    config: str | None,
    rule: str | None,
    target: str | None,
    state: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List gate decisions, newest first."""
    try:
        keeper = _keeper(config)
        records = keeper.ledger.history(
            rule=rule,
            target=target,
            state=State(state) if state else None,
            since=_since(since),
            limit=limit,
        )
    except GateError as exc:
        _fail(exc)
    if as_json:
        for r in records:
            print(json.dumps(r.to_dict()))
        return
    out.print(history_table(records))


def history_table(records: list[GateRecord]) -> Table:
    """The decisions as a table (also the walkthrough's summary); ``gate show`` has the rest."""
    table = Table()
    for column in ("record", "time (UTC)", "source", "digest", "verdict", "run", "reason"):
        table.add_column(column, overflow="fold")
    for r in records:
        style = _STYLE.get(r.state.value, "")
        table.add_row(
            r.id,
            r.created_at.strftime("%m-%d %H:%M:%S"),
            r.source if r.action == "gate" else f"{r.action} {r.target}",
            (r.digest or "-")[:19],
            f"[{style}]{r.state.value}[/]" if style else r.state.value,
            r.run_id or "-",
            r.reason,
        )
    return table


@main.command("show")
@click.argument("record_id")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON (with its log).")
def show_cmd(record_id: str, config: str | None, as_json: bool) -> None:
    """Show one record, with its validation log."""
    try:
        record = _keeper(config).ledger.get(record_id)
    except GateError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps({**record.to_dict(), "log": record.log}))
        return
    for key, value in record.to_dict().items():
        if key != "downstream":
            out.print(f"{key:>13}  {value}", soft_wrap=True)
    for run in record.downstream:
        queued = f"run {run.run_id}" if run.scheduled else f"not queued: {run.error}"
        out.print(f"{'downstream':>13}  {run.registry}/{run.task} {queued}", soft_wrap=True)
    if record.log:
        out.print("\n[bold]validation log[/]")
        out.print(record.log, markup=False, highlight=False, soft_wrap=True)


@main.command("downstream")
@click.argument("record_id")
@config_option
def downstream_cmd(record_id: str, config: str | None) -> None:
    """Queue the downstream tasks of promotion RECORD_ID that were not queued (e.g. ARM failed)."""
    try:
        record = retry_downstream(_keeper(config), record_id)
    except GateError as exc:
        _fail(exc)
    out.print(f"[bold green]PROMOTED[/]  {record.target}@{record.digest}  record {record.id}")
    _print_downstream(record)
    if any(not run.scheduled for run in record.downstream):
        sys.exit(3)


@main.command("rollback")
@click.argument("target")
@config_option
@click.option(
    "--to", "to", metavar="RUN_ID|DIGEST", help="An earlier promotion (default: the one before)."
)
@click.option("--reason", required=True, help="Why; recorded with the rollback.")
@click.option("--actor", envvar="USER", help="Who (default: $USER).")
def rollback_cmd(
    target: str, config: str | None, to: str | None, reason: str, actor: str | None
) -> None:
    """Move TARGET's stable tag back to an earlier validated digest (TARGET: registry/repo[:tag])."""
    try:
        record = rollback(_keeper(config), target, to=to, reason=reason, actor=actor)
    except GateError as exc:
        _fail(exc)
    out.print(
        f"[bold cyan]ROLLED BACK[/] {record.target}:{record.target_tags[0]} -> {record.digest}"
    )
    out.print(f"  record  {record.id}\n  reason  {record.reason}", soft_wrap=True)


@main.group("config")
def config_group() -> None:
    """Check a configuration file, or print its JSON Schema for editors."""


@config_group.command("check")
@click.argument("file", required=False, metavar="[FILE]")
@config_option
def config_check_cmd(file: str | None, config: str | None) -> None:
    """Load FILE (default: --config, $GATE_CONFIG, ./gate.yaml) and run every check; run nothing."""
    try:
        cfg = load_config(config_path(file or config))
    except GateError as exc:
        _fail(exc)
    where = "Azure" if cfg.azure is not None else "local"
    out.print(f"[green]ok[/] {cfg.path}: {len(cfg.rules)} rule(s), {where}", soft_wrap=True)
    for rule in cfg.rules:
        out.print(
            f"  {rule.name}: {rule.source.name} [{', '.join(rule.tags)}] -> {rule.target.name}",
            soft_wrap=True,
        )


@config_group.command("schema")
def config_schema_cmd() -> None:
    """Print the configuration's JSON Schema (point an editor's YAML support at it)."""
    from gate.config_schema import json_schema

    print(json.dumps(json_schema(), indent=2, sort_keys=True))
