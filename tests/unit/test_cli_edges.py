"""Everyday rough edges of the CLI and the HTTP API: a missing ledger, who rolls back, and
stored text from outside that must print as itself (never as markup or terminal control)."""

from __future__ import annotations

import json
import os
import pwd
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.configs import empty_task_gate_yaml
from gate.adapters.ledger.sqlite import SqliteLedger
from gate.config.loading import load_config
from gate.domain.records import DownstreamRun, GateRecord, State, new_record_id
from gate.entrypoints import http_api
from gate.entrypoints.cli import main, who_rolls_back
from gate.errors import NotFound, UsageError
from gate.logsafe import clean
from gate.usecases.gating import gate_image
from gate.usecases.keeper import Gatekeeper
from tests.fakes import FakeRegistry, FakeSecrets, FakeValidator

UP = "up.example.com"
ART = "art.example.com"


def write_config(folder: Path) -> Path:
    return empty_task_gate_yaml(folder, UP, ART)


def gate(*args: str, config: Path) -> Result:
    return CliRunner().invoke(main, [*args, "--config", str(config)])


def printable(text: str) -> bool:
    """True when ``text`` holds no control character but line ends (nothing drives a terminal)."""
    return all(char == "\n" or char.isprintable() for char in text)


# -- no ledger ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [("history",), ("history", "--json"), ("show", "0123456789abcdef")]
)
def test_read_commands_without_a_ledger_exit_2_and_create_nothing(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    config = write_config(tmp_path)

    result = gate(*args, config=config)

    assert result.exit_code == 2, result.output
    ledger = tmp_path / "data" / "gate.db"
    assert f"no ledger at {ledger}" in result.stderr
    assert "gate run" in result.stderr
    assert not ledger.exists() and not (tmp_path / "data").exists()


def test_the_sqlite_ledger_is_created_by_its_first_write_not_by_opening_it(tmp_path: Path) -> None:
    path = tmp_path / "data" / "gate.db"
    ledger = SqliteLedger(path)
    assert not path.exists()
    assert ledger.decided("node", "sha256:" + "0" * 64) is None  # a watch on a fresh dir
    assert ledger.history() == []
    with pytest.raises(NotFound, match="no ledger at"):
        ledger.get("0123456789abcdef")
    with pytest.raises(NotFound, match="no ledger at"):
        ledger.require()
    assert not path.exists()

    ledger.add(GateRecord(id=new_record_id(), rule="node", source="s", target="t"))

    assert path.exists() and len(ledger.history()) == 1


# -- who rolls back ---------------------------------------------------------------------------


def test_rollback_actor_is_the_option_else_the_os_user_by_uid() -> None:
    assert who_rolls_back("  alice ") == "alice"
    assert who_rolls_back(None) == pwd.getpwuid(os.getuid()).pw_name


def test_rollback_actor_ignores_a_forged_user_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "somebody-else")

    assert who_rolls_back(None) == pwd.getpwuid(os.getuid()).pw_name


def test_rollback_actor_of_a_uid_without_a_user_names_uid_and_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unknown = 2**31 - 7
    with pytest.raises(KeyError):
        pwd.getpwuid(unknown)
    monkeypatch.setattr(os, "getuid", lambda: unknown)

    assert who_rolls_back(None) == f"uid {unknown}@{socket.gethostname()}"


def test_an_empty_actor_option_is_refused() -> None:
    with pytest.raises(UsageError, match="--actor is empty"):
        who_rolls_back("  ")


def _promoted_twice(tmp_path: Path) -> Gatekeeper:
    config = load_config(write_config(tmp_path))
    keeper = Gatekeeper(
        config=config,
        registry=FakeRegistry(),
        validator=FakeValidator(),
        ledger=SqliteLedger(config.data_dir / "gate.db"),
        secrets=FakeSecrets(),
    )
    assert isinstance(keeper.registry, FakeRegistry)
    for color in ("green", "blue"):
        keeper.registry.push(f"{UP}/node:15-alpine", color)
        assert gate_image(keeper, f"{UP}/node:15-alpine").verdict == "promoted"
    return keeper


@pytest.mark.parametrize(
    ("principal", "recorded"),
    [
        (None, "http:anonymous"),
        ("", "http:anonymous"),
        (" alice@contoso.com ", "alice@contoso.com"),
    ],
)
def test_http_rollback_records_who_called_never_empty(
    tmp_path: Path, principal: str | None, recorded: str
) -> None:
    keeper = _promoted_twice(tmp_path)
    body = json.dumps({"repository": f"{ART}/node", "reason": "bad release"}).encode()

    answer = http_api.post_rollback(keeper, body, max_body_bytes=4096, actor=principal)

    assert answer.status == 200, answer.body
    assert answer.body["actor"] == recorded
    assert keeper.ledger.get(answer.body["id"]).actor == recorded


# -- stored text prints as itself ---------------------------------------------------------------

HOSTILE = [
    "broke [/]",
    "missing [/usr/lib/libssl.so.3]",
    "[red]not red[/red]",
    "[bold link=https://example.com]x",
    ":smile: :thumbs_up:",
    "\x1b[2J\x1b[31mcleared",
    "line\nforged line",
    "tab\tand\rreturn",
    "trailing backslash \\",
    "\u202eright-to-left override",
    "nul \x00 and bell \x07 and del \x7f",
]


def _stored(ledger: SqliteLedger, text: str, *, log: str = "") -> GateRecord:
    record = GateRecord(
        id=new_record_id(),
        rule="node",
        source=f"{UP}/node:{text}",
        target=f"{ART}/node",
        digest="sha256:" + "a" * 64,
        state=State.REJECTED,
        reason=text,
        actor=text,
        run_id=text[:40],
        log=log or f"step 1\n{text}\nstep 2",
        downstream=(DownstreamRun("reg", "task", error=text),),
    )
    ledger.add(record)
    return record


@pytest.mark.parametrize("text", HOSTILE)
def test_show_and_history_print_stored_text_as_itself(tmp_path: Path, text: str) -> None:
    config = write_config(tmp_path)
    record = _stored(SqliteLedger(tmp_path / "data" / "gate.db"), text)

    shown = gate("show", record.id, config=config)
    listed = gate("history", config=config)

    for result in (shown, listed):
        assert result.exit_code == 0, result.output
        assert result.exception is None
    assert printable(shown.stdout), repr(shown.stdout)
    # history's plain lines (stdout is not a terminal here) are tab-separated fields: a tab
    # is a separator only, never part of a field, so every line keeps its seven fields
    assert printable(listed.stdout.replace("\t", " ")), repr(listed.stdout)
    assert [len(line.split("\t")) for line in listed.stdout.splitlines()] == [7]
    assert f"reason  {clean(text, 100_000)}" in shown.stdout
    assert f" actor  {clean(text, 100_000)}" in shown.stdout
    log_shown = shown.stdout.split("validation log\n", 1)[1]
    # the log keeps its own lines; within a line, everything else is escaped
    assert all(clean(line, 100_000) in log_shown for line in text.splitlines())


def test_history_table_shows_markup_in_a_reason_literally(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    _stored(SqliteLedger(tmp_path / "data" / "gate.db"), "[red]x[/] :smile:")

    listed = gate("history", config=config)

    assert listed.exit_code == 0, listed.output
    assert "[red]x[/] :smile:" in listed.stdout


def test_an_error_message_quoting_outside_text_prints_literally(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    _stored(SqliteLedger(tmp_path / "data" / "gate.db"), "x")

    result = gate("show", "[/]\x1b[2J:smile:", config=config)

    assert result.exit_code == 2
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "[/]" in result.stderr and ":smile:" in result.stderr
    assert printable(result.stderr), repr(result.stderr)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text=st.one_of(st.text(max_size=200), st.sampled_from(HOSTILE)),
    log=st.text(max_size=300),
)
def test_any_stored_text_renders_in_show_history_and_the_http_view(
    tmp_path: Path, text: str, log: str
) -> None:
    config = write_config(tmp_path)
    ledger = SqliteLedger(tmp_path / "data" / "gate.db")
    record = _stored(ledger, text, log=log)

    shown = gate("show", record.id, config=config)
    listed = gate("history", config=config)
    keeper = Gatekeeper(
        config=load_config(config),
        registry=FakeRegistry(),
        validator=FakeValidator(),
        ledger=ledger,
        secrets=FakeSecrets(),
    )
    view = http_api.get_gate(keeper, record.id)

    for result in (shown, listed):
        assert result.exit_code == 0, result.output
    assert printable(shown.stdout), repr(shown.stdout)
    assert printable(listed.stdout.replace("\t", " ")), repr(listed.stdout)
    # hypothesis's examples share tmp_path: one line per record so far, seven fields each
    assert {len(line.split("\t")) for line in listed.stdout.splitlines()} == {7}
    assert f"reason  {clean(text, 100_000)}" in shown.stdout
    assert view.status == 200
    body = view.text()
    assert body.isascii() and body.isprintable()  # JSON escapes every control character
    assert json.loads(body)["reason"] == text
