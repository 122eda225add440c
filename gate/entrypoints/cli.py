"""The ``gate`` command line: a thin shell over the use cases (:mod:`gate.usecases`).

Exit codes: 0 promoted (or already promoted), 1 rejected by validation, 2 usage or
configuration error, 3 infrastructure error worth retrying.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from gate.errors import ConfigError, GateError, UsageError

# Commands import what they use when they run (the composition root, the service, rich):
# ``gate --help`` loads click alone, and ``gate history --json`` never loads rich, httpx or
# the validator.
if TYPE_CHECKING:
    from gate.config.model import GateConfig
    from gate.domain.records import GateRecord, State
    from gate.ports import Ledger
    from gate.usecases.keeper import Gatekeeper
    from gate.usecases.revalidation import Revalidated


def _fail(exc: GateError) -> NoReturn:
    from gate.logsafe import clean

    label = click.style("error:", fg="red", bold=True) if sys.stderr.isatty() else "error:"
    click.echo(f"{label} {clean(exc.message, 100_000)}", err=True)
    sys.exit(exc.exit_code)


def _config(config: str | None) -> GateConfig:
    from gate.config.loading import config_path, load_config
    from gate.config.parse_cache import cache_dir

    return load_config(config_path(config), parse_cache=cache_dir())


def _keeper(config: str | None, quiet: bool = False) -> Gatekeeper:
    from gate.compose import build_gatekeeper

    cfg = _config(config)

    def notify(event: str, record: GateRecord, message: str) -> None:
        if not quiet:
            from gate.entrypoints import render

            render.notice(event, message)

    return build_gatekeeper(cfg, notify=notify)


def _ledger(config: str | None) -> Ledger:
    """The ledger alone, refusing a local one that does not exist (a wrong --config or
    data_dir): reading commands need nothing else."""
    from gate.compose import build_ledger

    return build_ledger(_config(config), existing=True)


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
        from gate.usecases.gating import gate_image

        keeper = _keeper(config, quiet=as_json)
        if as_json:
            outcome = gate_image(keeper, image, force=force)
        else:
            from gate.entrypoints.render import Bar, err

            with Bar(enabled=err.is_terminal) as bar:
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
        from gate.entrypoints.render import print_outcome

        print_outcome(outcome)
    sys.exit(outcome.exit_code)


_PRUNE_EVERY = 86400.0  # seconds between retention passes of a long-running watch


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
    """Poll every watched upstream tag (HEAD only) and gate digests not decided yet; re-validate
    what is due, and (once a day) delete records older than ledger.keep."""
    from gate.entrypoints.render import Text, err, out, plain, print_outcome
    from gate.usecases.retention import prune_records
    from gate.usecases.revalidation import revalidate_due
    from gate.usecases.watch import watch_once

    try:
        keeper = _keeper(config)
    except GateError as exc:
        _fail(exc)
    worst = 0
    pruned = 0.0
    while True:
        for item in watch_once(keeper):
            if item.error:
                line = Text.assemble(("      error", "yellow"), f" {plain(item.source)}: ")
                err.print(line.append(plain(item.error)), soft_wrap=True)
                worst = max(worst, 3)
            elif item.outcome:
                # a digest waiting out its cooldown is the poll working, not a failure
                waits = item.outcome.record.state.value == "waiting"
                worst = max(worst, 0 if waits else item.outcome.exit_code)
                print_outcome(item.outcome)
            else:
                unchanged = f"  unchanged {item.source} {item.digest} ({item.skipped})"
                out.print(Text(plain(unchanged), style="dim"), soft_wrap=True)
        worst = max(worst, _print_revalidated(revalidate_due(keeper)))
        if time.monotonic() - pruned > _PRUNE_EVERY or not pruned:
            pruned = time.monotonic()
            try:
                report = prune_records(keeper)
            except GateError as exc:
                report = None
                err.print(Text(plain(f"  retention: {exc.message}"), style="yellow"))
            for problem in report.errors if report else ():
                err.print(Text(plain(f"  retention: {problem}"), style="yellow"))
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
    from gate.usecases.revalidation import revalidate

    try:
        results = revalidate(_keeper(config, quiet=as_json), rule)
    except GateError as exc:
        _fail(exc)
    if as_json:
        from gate.usecases.audit import EVENT_TYPES

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
    from gate.domain.records import State

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
    from gate.entrypoints.render import print_revalidated

    print_revalidated(results)
    return _revalidation_exit(results)


@main.command("prune")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def prune_cmd(config: str | None, as_json: bool) -> None:
    """Delete final records older than ledger.keep, except those behind a live stable or run-ID
    tag (gate watch and the Functions timer do this daily).

    Exit 0 when done, 3 when a target repository's tags could not be read (its records were
    all kept).
    """
    from gate.usecases.retention import prune_records

    try:
        report = prune_records(_keeper(config, quiet=True))
    except GateError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    elif report.cutoff is None:
        click.echo("ledger.keep is null: every record is kept")
    else:
        click.echo(
            f"{report.deleted} record(s) created before {report.cutoff.isoformat()} deleted; "
            f"{report.kept_live} older one(s) kept behind live tags"
        )
        for problem in report.errors:
            click.echo(f"warning: {problem}", err=True)
    sys.exit(3 if report.errors else 0)


@main.command("listen")
@config_option
@click.option("--bind", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    help="File holding a shared secret: notifications without 'Authorization: Bearer <it>' "
    "are refused (401). Required to --bind anything but a loopback address.",
)
def listen_cmd(config: str | None, bind: str, port: int, token_file: str | None) -> None:
    """Gate pushes as a registry reports them (its notifications endpoint), until Ctrl-C."""
    from gate.entrypoints.listener import PushListener, read_token
    from gate.entrypoints.render import Text, err, plain, print_outcome

    try:
        token = read_token(Path(token_file)) if token_file else None
        keeper = _keeper(config)
        listener = PushListener(keeper, host=bind, port=port, on_outcome=print_outcome, token=token)
    except GateError as exc:
        _fail(exc)
    except OSError as exc:
        err.print(
            Text.assemble(
                ("error:", "bold red"),
                plain(f" cannot listen on {bind}:{port}: {exc.strerror}; pick another --port"),
            ),
            soft_wrap=True,
        )
        sys.exit(2)
    with listener:
        err.print(
            Text(
                f"listening on {listener.url}: add it to the registry's notifications.endpoints "
                "(ignoredmediatypes: [application/octet-stream]"
                + (
                    ", headers: {Authorization: [Bearer <the token file's secret>]}"
                    if token
                    else ""
                )
                + "); Ctrl-C to stop"
            ),
            soft_wrap=True,
        )
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            err.print("stopping; finishing what is queued")


class _StateName(click.ParamType[str]):
    """A record state, checked when given (``--help`` need not load the model)."""

    name = "state"

    def convert(self, value: str, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from gate.domain.records import State

        if value not in {s.value for s in State}:
            self.fail(f"'{value}' is not one of {', '.join(s.value for s in State)}", param, ctx)
        return value


def _state(value: str | None) -> State | None:
    from gate.domain.records import State

    return State(value) if value else None


def _since(value: str | None) -> datetime | None:
    if not value:
        return None
    from gate.domain.durations import SPAN, DurationError, parse_duration

    try:
        seconds = parse_duration(value, SPAN)
    except DurationError:
        pass  # not a span: an instant
    else:
        try:
            return datetime.now(UTC) - timedelta(seconds=seconds)
        except OverflowError:
            raise click.BadParameter(
                f"{value} reaches back before year 1", param_hint="'--since'"
            ) from None
    try:
        from gate.domain.records import parse_instant

        return parse_instant(value)
    except UsageError as exc:
        raise click.BadParameter(
            f"{exc.message}; or give a span (30m, 12h, 7d)", param_hint="'--since'"
        ) from None


@main.command("history")
@config_option
@click.option("--rule", help="Only this rule.")
@click.option("--target", help="Only this target repository (registry/repository).")
@click.option("--state", type=_StateName(), help="Only this state (received, promoted, ...).")
@click.option("--since", help="Only records since a date or span (7d, 12h).")
@click.option(
    "--actor",
    help="Only records of this actor: an Entra object id, or a name exactly as recorded.",
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines on stdout.")
@click.option(
    "--plain", "plain_text", is_flag=True, help="Tab-separated lines, even on a terminal."
)
def history_cmd(
    config: str | None,
    rule: str | None,
    target: str | None,
    state: str | None,
    since: str | None,
    actor: str | None,
    limit: int,
    as_json: bool,
    plain_text: bool,
) -> None:
    """List gate decisions, newest first (a table on a terminal; tab-separated lines when
    stdout is not one, or with --plain)."""
    try:
        after = _since(since)
        from gate.domain.records import HistoryQuery

        query = HistoryQuery(
            rule=rule,
            target=target,
            state=_state(state),
            since=after,
            actor=actor or None,
            limit=limit,
        )
        records = _ledger(config).history(query)
    except GateError as exc:
        _fail(exc)
    if as_json:
        click.echo("".join(json.dumps(r.to_dict()) + "\n" for r in records), nl=False)
    elif plain_text or not sys.stdout.isatty():
        from gate.entrypoints.views import history_fields

        # clean() escapes tabs and newlines: one record stays one line of seven fields
        click.echo("".join("\t".join(history_fields(r)) + "\n" for r in records), nl=False)
    else:
        from gate.entrypoints.render import history_table, out

        out.print(history_table(records))


@main.command("show")
@click.argument("record_id")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON (with its log).")
def show_cmd(record_id: str, config: str | None, as_json: bool) -> None:
    """Show one record, with its validation log."""
    try:
        record = _ledger(config).get(record_id)
    except GateError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps({**record.to_dict(), "log": record.log}))
        return
    from gate.entrypoints.views import record_lines

    click.echo("".join(line + "\n" for line in record_lines(record)), nl=False)


@main.command("downstream")
@click.argument("record_id")
@config_option
def downstream_cmd(record_id: str, config: str | None) -> None:
    """Queue the downstream tasks of promotion RECORD_ID that were not queued (e.g. ARM failed)."""
    from gate.entrypoints.render import Text, out, plain, print_downstream
    from gate.usecases.downstream import retry_downstream

    try:
        record = retry_downstream(_keeper(config), record_id)
    except GateError as exc:
        _fail(exc)
    promoted = f"  {record.target}@{record.digest}  record {record.id}"
    out.print(Text.assemble(("PROMOTED", "bold green"), plain(promoted)), soft_wrap=True)
    print_downstream(record)
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
    from gate.entrypoints.render import Text, out, plain
    from gate.usecases.rollback import rollback

    try:
        who = who_rolls_back(actor)
        record = rollback(_keeper(config), target, to=to, reason=reason, actor=who)
    except GateError as exc:
        _fail(exc)
    moved = f" {record.target}:{record.target_tags[0]} -> {record.digest}"
    out.print(Text.assemble(("ROLLED BACK", "bold cyan"), plain(moved)), soft_wrap=True)
    out.print(
        Text(
            f"  record  {plain(record.id)}\n   actor  {plain(record.actor)}\n"
            f"  reason  {plain(record.reason)}"
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

    from gate.compose import write_key_pair
    from gate.entrypoints.render import Text, out, plain

    try:
        public = write_key_pair(Path(private_key), force=force)
    except GateError as exc:
        _fail(exc)
    out.print(Text(plain(f"private key {private_key}\n public key {public}")), soft_wrap=True)


@main.command("verify")
@click.argument("image")
@config_option
@click.option(
    "--key", "key", metavar="PUB.pem", help="Public key (default: attestation.key's .pub file)."
)
@click.option(
    "--key-vault-key",
    "vault_key",
    metavar="URI",
    help="Or the gate's Key Vault key (its public half is read with your Azure sign-in).",
)
@click.option("--max-age", metavar="AGE", help="Refuse attestations older than this (30d, 12h).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def verify_cmd(
    image: str,
    config: str | None,
    key: str | None,
    vault_key: str | None,
    max_age: str | None,
    as_json: bool,
) -> None:
    """Check that IMAGE carries the gate's valid, newest attestation saying PASSED.

    Exit 0 verified, 1 not verified (the reason is printed), 2 usage, 3 infrastructure.
    """
    from gate.compose import attestation_reader
    from gate.domain.attestation import parse_age
    from gate.entrypoints.render import Text, out, plain
    from gate.usecases.attestation import verify_image

    try:
        cfg = _config(config)
        public = _verification_key(cfg, key, vault_key)
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
        out.print(Text.assemble((word, style), plain(line)), soft_wrap=True)
        out.print(Text(plain(f"  {verdict.reason}")), soft_wrap=True)
        if verdict.attestation:
            out.print(Text(plain(f"  attestation {verdict.attestation}")), soft_wrap=True)
    sys.exit(0 if verdict.verified else 1)


def _verification_key(cfg: GateConfig, key: str | None, vault_key: str | None) -> object:
    """The key ``gate verify`` checks with: --key, --key-vault-key, else the configured key's
    ``.pub`` file."""
    from pathlib import Path

    from gate.domain.attestation import load_public_key, verification_key

    if key is not None and vault_key is not None:
        raise UsageError("pass --key or --key-vault-key, not both")
    if vault_key is not None:
        from gate.compose import vault_public_key

        credential, options = _key_vault_access()
        return verification_key(vault_public_key(vault_key, credential, **options), vault_key)
    if key is None:
        if cfg.attestation is None or cfg.attestation.key is None:
            raise UsageError(
                "no key to verify with: pass --key PUB.pem (the gate's public key) or "
                "--key-vault-key URI (the gate's Key Vault key)"
            )
        key_path = cfg.attestation.key.with_suffix(".pub")
    else:
        key_path = Path(key)
    try:
        pem = key_path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the public key {key_path}: {exc.strerror}") from None
    return load_public_key(pem, str(key_path))


def _key_vault_access() -> tuple[object, dict[str, object]]:
    """The credential (``az login``, a pipeline's or a managed identity: azure-identity's
    DefaultAzureCredential) and client options ``--key-vault-key`` reads the key with."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(), {}


@main.group("config")
def config_group() -> None:
    """Check a configuration file, or print its JSON Schema for editors."""


@config_group.command("check")
@click.argument("file", required=False, metavar="[FILE]")
@config_option
@click.option(
    "--host-json",
    type=click.Path(dir_okay=False),
    help="The Functions app's host.json: also check that its queue retries outlast the "
    "longest validation of the file's rules.",
)
def config_check_cmd(file: str | None, config: str | None, host_json: str | None) -> None:
    """Load FILE (default: --config, $GATE_CONFIG, ./gate.yaml) and run every check; run nothing."""
    from gate.entrypoints.render import Text, out, plain

    try:
        cfg = _config(file or config)
        if host_json is not None:
            _check_host_json(Path(host_json), cfg)
    except GateError as exc:
        _fail(exc)
    where = "Azure" if cfg.azure is not None else "local"
    summary = f" {cfg.path}: {len(cfg.rules)} rule(s), {where}"
    out.print(Text.assemble(("ok", "green"), plain(summary)), soft_wrap=True)
    for rule in cfg.rules:
        line = f"  {rule.name}: {rule.source.name} [{', '.join(rule.tags)}] -> {rule.target.name}"
        out.print(Text(plain(line)), soft_wrap=True)
    if host_json is not None:
        from gate.usecases.queueing import budget_needed

        said = (
            f"  {host_json}: queue retries cover the longest validation ({budget_needed(cfg):g} s)"
        )
        out.print(Text(plain(said)), soft_wrap=True)


def _check_host_json(path: Path, cfg: GateConfig) -> None:
    """Refuse a host.json whose queue retry budget is shorter than ``cfg`` needs."""
    from gate.usecases.queueing import budget_problem

    try:
        host = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not JSON ({exc}); fix it") from None
    problem = budget_problem(host if isinstance(host, dict) else {}, cfg)
    if problem:
        raise ConfigError(f"{path}: {problem}")


@config_group.command("schema")
def config_schema_cmd() -> None:
    """Print the configuration's JSON Schema (point an editor's YAML support at it)."""
    from gate.config.schema import json_schema

    print(json.dumps(json_schema(), indent=2, sort_keys=True))
