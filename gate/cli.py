"""The ``gate`` command line: a thin shell over :mod:`gate.service`.

Exit codes: 0 promoted (or already promoted), 1 rejected by validation, 2 usage or
configuration error, 3 infrastructure error worth retrying.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table
from rich.text import Text

from gate.config import GateConfig, config_path, load_config
from gate.errors import GateError, UsageError
from gate.logsafe import clean
from gate.model import DownstreamRun, GateRecord, State, parse_instant
from gate.service import (
    Gatekeeper,
    GateOutcome,
    Revalidated,
    gate_image,
    retry_downstream,
    revalidate,
    revalidate_due,
    rollback,
    watch_once,
)

# when output goes to a file or a pipe, do not squeeze it to rich's default 80 columns
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)

_STYLE = {
    "promoted": "green",
    "rejected": "red",
    "failed": "yellow",
    "rolled_back": "cyan",
    "waiting": "blue",
    "superseded": "magenta",
}

# Text that may come from outside (references, reasons, actors, error messages, logs) reaches
# the terminal only inside rich ``Text`` objects, which are never parsed for markup or emoji
# codes, and only after clean() has escaped its control characters: a "[/]" or an escape
# sequence in a stored reason prints as itself and cannot crash or drive the terminal.
_SHOWN = 100_000


def _plain(value: object) -> str:
    """``value`` as terminal-safe text on one line (long enough for any stored field)."""
    return clean(value, _SHOWN)


def _fail(exc: GateError) -> NoReturn:
    err.print(Text.assemble(("error:", "bold red"), " ", _plain(exc.message)), soft_wrap=True)
    sys.exit(exc.exit_code)


def _keeper(config: str | None, quiet: bool = False) -> Gatekeeper:
    from gate.compose import build_gatekeeper

    cfg: GateConfig = load_config(config_path(config))

    def notify(event: str, record: GateRecord, message: str) -> None:
        if not quiet:
            style = _STYLE.get(event, "dim")
            err.print(Text.assemble((f"{event:>11}", style), " ", _plain(message)), soft_wrap=True)

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
    heading = (r.state.value.upper(), f"bold {style}".strip())
    out.print(Text.assemble(heading, f"{seen}  {_plain(r.source)}"), soft_wrap=True)
    out.print(
        Text(
            f"  digest  {_plain(r.digest)}\n  record  {_plain(r.id)}   run {_plain(r.run_id or '-')}"
        )
    )
    if r.target_tags and r.state is State.PROMOTED:
        tags = ", ".join(f"{r.target}:{t}" for t in r.target_tags)
        out.print(Text(f"  tags    {_plain(tags)}"), soft_wrap=True)
    _print_downstream(r)
    if r.state is State.WAITING and r.eligible_at is not None:
        out.print(Text(f"  until   {r.eligible_at.isoformat(timespec='seconds')} (cooldown)"))
    if r.reason:
        out.print(Text(f"  reason  {_plain(r.reason)}"), soft_wrap=True)


def _downstream_status(run: DownstreamRun) -> str:
    """How a downstream task fared: queued (ACR), ran to an outcome (local), or not started."""
    if run.outcome:  # a local task file, run to its end
        said = f": {run.error}" if run.error else (f": {run.output}" if run.output else "")
        return f"run {run.run_id} {run.outcome}{said}"
    if run.scheduled:
        return f"run {run.run_id} queued"
    return f"not queued: {run.error}"


def _print_downstream(record: GateRecord, indent: str = "  ") -> None:
    """One line per downstream task the gate started (or could not start)."""
    for run in record.downstream:
        failed = not run.scheduled
        what = Text(_plain(_downstream_status(run)), style="red" if failed else "")
        task = _plain(f"{run.registry}/{run.task}")
        out.print(Text.assemble(f"{indent}then    {task} ", what), soft_wrap=True)


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
                line = Text.assemble(("      error", "yellow"), f" {_plain(item.source)}: ")
                err.print(line.append(_plain(item.error)), soft_wrap=True)
                worst = max(worst, 3)
            elif item.outcome:
                # a digest waiting out its cooldown is the poll working, not a failure
                waits = item.outcome.record.state is State.WAITING
                worst = max(worst, 0 if waits else item.outcome.exit_code)
                _print_outcome(item.outcome)
            else:
                unchanged = f"  unchanged {item.source} {item.digest} ({item.skipped})"
                out.print(Text(_plain(unchanged), style="dim"), soft_wrap=True)
        worst = max(worst, _print_revalidated(revalidate_due(keeper)))
        if once:
            sys.exit(worst)
        time.sleep(interval)


@main.command("revalidate")
@click.argument("rule", required=False)
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line on stdout.")
def revalidate_cmd(rule: str | None, config: str | None, as_json: bool) -> None:
    """Re-validate the digest the stable tag points at now, for RULE (default: every rule with
    revalidate:), whatever its schedule; demote or alert as the rule says.

    Exit 0 when every stable digest passes (or was demoted to one that does), 1 when one fails
    and nothing moved (alert, or the rule is broken), 3 when one could not be checked.
    """
    try:
        results = revalidate(_keeper(config, quiet=as_json), rule)
    except GateError as exc:
        _fail(exc)
    if as_json:
        from gate.audit import EVENT_TYPES

        for result in results:
            print(
                json.dumps(
                    {
                        "rule": result.rule,
                        "stable": result.stable,
                        "error": result.error or None,
                        "records": [
                            {
                                "record_id": r.id,
                                "action": r.action,
                                "state": r.state.value,
                                "digest": r.digest,
                                "of_record": r.of_record or None,
                                "event": EVENT_TYPES.get(r.state),
                                "reason": r.reason,
                            }
                            for r in result.records
                        ],
                    }
                )
            )
        sys.exit(_revalidation_exit(results))
    sys.exit(_print_revalidated(results))


def _revalidation_exit(results: list[Revalidated]) -> int:
    worst = 0
    for result in results:
        last = result.decision or result.checked
        if result.error or last is None or last.state is State.FAILED:
            worst = max(worst, 3)
        elif last.state in (State.FAILING, State.BROKEN):
            worst = max(worst, 1)
    return worst


def _print_revalidated(results: list[Revalidated]) -> int:
    """One line per record a re-validation pass added; returns the pass's exit code."""
    for result in results:
        for r in result.records:
            style = {"revalidated": "green", "demoted": "cyan"}.get(r.state.value, "red")
            line = f" {r.target}:{r.target_tags[0] if r.target_tags else '-'} {r.digest}"
            out.print(
                Text.assemble((r.state.value.upper(), f"bold {style}"), _plain(line)),
                soft_wrap=True,
            )
            out.print(
                Text(
                    f"  record  {_plain(r.id)}   of {_plain(r.of_record)}\n"
                    f"  reason  {_plain(r.reason)}"
                ),
                soft_wrap=True,
            )
        if result.error:
            said = Text.assemble(("      error", "yellow"), f" rule {_plain(result.rule)}: ")
            err.print(said.append(_plain(result.error)), soft_wrap=True)
    return _revalidation_exit(results)


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
            Text.assemble(
                ("error:", "bold red"),
                _plain(f" cannot listen on {bind}:{port}: {exc.strerror}; pick another --port"),
            ),
            soft_wrap=True,
        )
        sys.exit(2)
    with listener:
        err.print(
            Text(
                f"listening on {listener.url}: add it to the registry's notifications.endpoints "
                "(ignoredmediatypes: [application/octet-stream]); Ctrl-C to stop"
            ),
            soft_wrap=True,
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
        after = _since(since)
        _require_ledger(keeper)
        records = keeper.ledger.history(
            rule=rule,
            target=target,
            state=State(state) if state else None,
            since=after,
            limit=limit,
        )
    except GateError as exc:
        _fail(exc)
    if as_json:
        for r in records:
            print(json.dumps(r.to_dict()))
        return
    out.print(history_table(records))


def _require_ledger(keeper: Gatekeeper) -> None:
    """Refuse to read a local ledger that does not exist (a wrong --config or data_dir)."""
    from gate.adapters.sqlite_ledger import SqliteLedger

    if isinstance(keeper.ledger, SqliteLedger):
        keeper.ledger.require()


def history_table(records: list[GateRecord]) -> Table:
    """The decisions as a table (also the walkthrough's summary); ``gate show`` has the rest."""
    table = Table()
    for column in ("record", "time (UTC)", "source", "digest", "verdict", "run", "reason"):
        table.add_column(column, overflow="fold")
    for r in records:
        style = _STYLE.get(r.state.value, "")
        table.add_row(
            Text(_plain(r.id)),
            r.created_at.strftime("%m-%d %H:%M:%S"),
            Text(_plain(r.source if r.action == "gate" else f"{r.action} {r.target}")),
            Text(_plain((r.digest or "-")[:19])),
            Text(_verdict(r), style=style),
            Text(_plain(r.run_id or "-")),
            Text(_plain(r.reason)),
        )
    return table


def _verdict(record: GateRecord) -> str:
    """The state, with the time a digest waiting out its cooldown becomes eligible."""
    if record.state is State.WAITING and record.eligible_at is not None:
        return f"waiting until {record.eligible_at.strftime('%m-%d %H:%M:%S')}"
    return record.state.value


@main.command("show")
@click.argument("record_id")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON (with its log).")
def show_cmd(record_id: str, config: str | None, as_json: bool) -> None:
    """Show one record, with its validation log."""
    try:
        keeper = _keeper(config)
        _require_ledger(keeper)
        record = keeper.ledger.get(record_id)
    except GateError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps({**record.to_dict(), "log": record.log}))
        return
    for key, value in record.to_dict().items():
        if key != "downstream":
            out.print(Text(f"{key:>13}  {_plain(value)}"), soft_wrap=True)
    for run in record.downstream:
        line = _plain(f"{run.registry}/{run.task} {_downstream_status(run)}")
        out.print(Text(f"{'downstream':>13}  {line}"), soft_wrap=True)
    if record.partial:
        out.print(Text(f"{'partial':>13}  {_plain(_partial(record))}"), soft_wrap=True)
    if record.log:
        out.print(Text("\nvalidation log", style="bold"))
        # line by line: the log keeps its lines, every other control character is escaped
        out.print(Text("\n".join(_plain(line) for line in record.log.splitlines())), soft_wrap=True)


def _partial(record: GateRecord) -> str:
    """What a promotion that did not finish left at the target, and what finishes it."""
    written = [t for t in record.target_tags if t in record.promoted_tags]
    missing = [t for t in record.target_tags if t not in record.promoted_tags]
    kinds = dict(zip(record.target_tags, ("run-ID tag", "stable tag"), strict=False))
    said = [f"{kinds.get(t, 'tag')} {t} written" for t in written]
    said += [f"{kinds.get(t, 'tag')} {t} not moved" for t in missing]
    return ", ".join(said) + "; the next attempt finishes the promotion"


@main.command("downstream")
@click.argument("record_id")
@config_option
def downstream_cmd(record_id: str, config: str | None) -> None:
    """Queue the downstream tasks of promotion RECORD_ID that were not queued (e.g. ARM failed)."""
    try:
        record = retry_downstream(_keeper(config), record_id)
    except GateError as exc:
        _fail(exc)
    promoted = f"  {record.target}@{record.digest}  record {record.id}"
    out.print(Text.assemble(("PROMOTED", "bold green"), _plain(promoted)), soft_wrap=True)
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
@click.option(
    "--actor", help="Who; recorded with the rollback (default: the OS user, else the host)."
)
def rollback_cmd(
    target: str, config: str | None, to: str | None, reason: str, actor: str | None
) -> None:
    """Move TARGET's stable tag back to an earlier validated digest (TARGET: registry/repo[:tag])."""
    try:
        who = who_rolls_back(actor)
        record = rollback(_keeper(config), target, to=to, reason=reason, actor=who)
    except GateError as exc:
        _fail(exc)
    moved = f" {record.target}:{record.target_tags[0]} -> {record.digest}"
    out.print(Text.assemble(("ROLLED BACK", "bold cyan"), _plain(moved)), soft_wrap=True)
    out.print(
        Text(
            f"  record  {_plain(record.id)}\n   actor  {_plain(record.actor)}\n"
            f"  reason  {_plain(record.reason)}"
        ),
        soft_wrap=True,
    )


def who_rolls_back(actor: str | None) -> str:
    """The actor a rollback records: ``--actor``, else the OS user of this uid, else the host.

    The user comes from the password database by uid, not from ``$USER``, which any caller
    sets as it likes; a uid without an entry (some containers) records the uid and the host.
    """
    if actor is not None:
        if not actor.strip():
            raise UsageError("--actor is empty; name who rolls back, or leave --actor out")
        return actor.strip()
    uid = os.getuid()
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return f"uid {uid}@{socket.gethostname() or 'unknown-host'}"


@main.command("keygen")
@click.argument("private_key", metavar="KEY_FILE")
@click.option("--force", is_flag=True, help="Overwrite an existing pair.")
def keygen_cmd(private_key: str, force: bool) -> None:
    """Write a new ECDSA P-256 attestation key pair: KEY_FILE (private, 0600) and its .pub."""
    from pathlib import Path

    from gate.adapters.signers import generate_key_pair

    try:
        public = generate_key_pair(Path(private_key), force=force)
    except GateError as exc:
        _fail(exc)
    out.print(Text(_plain(f"private key {private_key}\n public key {public}")), soft_wrap=True)


@main.command("verify")
@click.argument("image")
@config_option
@click.option(
    "--key", "key", metavar="PUB.pem", help="Public key (default: attestation.key's .pub file)."
)
@click.option("--max-age", metavar="AGE", help="Refuse attestations older than this (30d, 12h).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def verify_cmd(
    image: str, config: str | None, key: str | None, max_age: str | None, as_json: bool
) -> None:
    """Check that IMAGE carries the gate's valid, newest attestation saying PASSED.

    Exit 0 verified, 1 not verified (the reason is printed), 2 usage, 3 infrastructure.
    """
    from pathlib import Path

    from gate.attest import load_public_key, parse_age, verify_image
    from gate.compose import attestation_reader

    try:
        cfg = load_config(config_path(config))
        if key is None:
            if cfg.attestation is None or cfg.attestation.key is None:
                raise UsageError(
                    "no key to verify with: pass --key PUB.pem (the gate's public key; for a "
                    "Key Vault key: az keyvault key download --encoding PEM)"
                )
            key_path = cfg.attestation.key.with_suffix(".pub")
        else:
            key_path = Path(key)
        try:
            pem = key_path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read the public key {key_path}: {exc.strerror}") from None
        public = load_public_key(pem, str(key_path))
        age = parse_age(max_age) if max_age else None
        registry, store = attestation_reader(cfg)
        verdict = verify_image(registry, store, image, [public], max_age=age)
    except GateError as exc:
        if as_json:
            print(
                json.dumps({"verified": False, "error": type(exc).__name__, "reason": exc.message})
            )
        _fail(exc)
    if as_json:
        print(json.dumps(verdict.to_dict()))
    else:
        word, style = (
            ("VERIFIED", "bold green") if verdict.verified else ("NOT VERIFIED", "bold red")
        )
        line = f" {verdict.image.split('@')[0]}@{verdict.digest}"
        out.print(Text.assemble((word, style), _plain(line)), soft_wrap=True)
        out.print(Text(_plain(f"  {verdict.reason}")), soft_wrap=True)
        if verdict.attestation:
            out.print(Text(_plain(f"  attestation {verdict.attestation}")), soft_wrap=True)
    sys.exit(0 if verdict.verified else 1)


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
    summary = f" {cfg.path}: {len(cfg.rules)} rule(s), {where}"
    out.print(Text.assemble(("ok", "green"), _plain(summary)), soft_wrap=True)
    for rule in cfg.rules:
        line = f"  {rule.name}: {rule.source.name} [{', '.join(rule.tags)}] -> {rule.target.name}"
        out.print(Text(_plain(line)), soft_wrap=True)


@config_group.command("schema")
def config_schema_cmd() -> None:
    """Print the configuration's JSON Schema (point an editor's YAML support at it)."""
    from gate.config_schema import json_schema

    print(json.dumps(json_schema(), indent=2, sort_keys=True))
