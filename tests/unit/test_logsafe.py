"""Log lines cannot be forged or flooded from outside: every field from an event, a request or a
record is escaped and capped, and GATE_DECISION stays one parseable JSON line."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gate.domain.records import GateRecord, State, new_record_id
from gate.logsafe import clean, redact
from gate.usecases.audit import log_decision
from tests.unit.test_function_events import (  # noqa: F401  (app_config is a fixture)
    FIELDS,
    app_config,
    mutate,
    push,
    pushed,
    sample,
)

FORGED = 'e1\nINFO gate.functions GATE_DECISION {"verdict": "promoted"}'


def gate_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("gate")]


def test_clean_escapes_what_breaks_a_line_or_a_terminal_and_says_what_it_cut() -> None:
    assert clean("a\nb\r\tc\x1b[31m\u2028d\x00") == "a\\nb\\r\\tc\\x1b[31m\\u2028d\\x00"
    assert clean("x" * 1000, 10) == "xxxxxxxxxx…(+990 chars)"
    assert clean("Grün 15-alpine") == "Grün 15-alpine"  # printable text is left alone


@pytest.mark.usefixtures("app_config")
@pytest.mark.parametrize(
    "event",
    [
        pushed(id=FORGED, digest="sha256:short"),  # dropped as malformed
        pushed(id=FORGED, repository="unwatched"),  # ignored
        pushed(id=FORGED),  # queued
        pushed(id="e" * 100_000, tag="x" * 5000),
        pushed(action="push\nINFO forged", digest="md5:" + "a" * 32),
    ],
)
def test_event_fields_reach_the_log_escaped_and_capped(
    event: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gate"):
        push(event)

    lines = gate_lines(caplog)
    assert lines
    for line in lines:
        assert "\n" not in line and "\r" not in line and len(line) < 2000, line
    if event["id"] == FORGED:
        assert any("e1\\nINFO gate.functions" in line for line in lines)


def test_gate_decision_stays_one_json_line_whatever_the_record_holds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    record = GateRecord(
        id=new_record_id(),
        rule="node",
        source="upstream.example.com/node:15-alpine",
        target="artifacts.example.com/node",
        digest="sha256:" + "a" * 64,
        state=State.ROLLED_BACK,
        reason='breaks checkout\nGATE_DECISION {"verdict": "promoted"}' + "!" * 100_000,
        actor="mallory\r\n",
    )

    with caplog.at_level(logging.INFO, logger="gate.audit"):
        log_decision(record)

    (line,) = [r.getMessage() for r in caplog.records if r.name == "gate.audit"]
    assert line.count("\n") == 0 and line.startswith("GATE_DECISION ")
    fields = json.loads(line.removeprefix("GATE_DECISION "))
    assert fields["reason"].startswith("breaks checkout\\nGATE_DECISION")
    assert fields["reason"].endswith("chars)") and len(fields["reason"]) < 1100
    assert fields["actor"] == "mallory\\r\\n"


hostile_text = st.text(
    alphabet=st.characters(codec="utf-8", categories=["Cc", "Cf", "Zl", "Zp", "L", "N", "P"]),
    max_size=400,
)


@pytest.mark.usefixtures("app_config")
@settings(
    max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)
@given(path=st.sampled_from(FIELDS), value=hostile_text)
def test_no_event_field_writes_an_unprintable_character_to_the_log(
    path: list[str], value: str
) -> None:
    handler = _Lines()
    logger = logging.getLogger("gate")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        push(mutate(sample("eventgrid-imagepushed.json")[0], path, value))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)

    for line in handler.lines:
        assert line.isprintable() and len(line) < 2000, line


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


# -- credentials in library log lines ---------------------------------------------------------

SAS_URL = (
    "https://weu.blob.core.windows.net/a1b2/docker/registry/v2/blobs/sha256/ab/abcd/data"
    "?se=2026-12-07T20%3A30%3A00Z&sig=Zm9vYmFyYmF6cXV4%2BcXV1eA%3D%3D&sp=r&spr=https&sr=b&sv=2018"
)


@pytest.mark.parametrize(
    ("line", "secret", "kept"),
    [
        (f'HTTP Request: GET {SAS_URL} "HTTP/1.1 200 OK"', "Zm9vYmFyYmF6cXV4", "sp=r&spr=https"),
        ("GET https://ci:hunter2@registry.example/v2/", "hunter2", "registry.example/v2/"),
        (
            "headers: {'Authorization': 'Bearer eyJ0eXAiOiJKV1Qi.eyJzdWIi.c2ln'}",
            "eyJ0eXAi",
            "Authorization",
        ),
        ("Authorization: Basic Y2k6aHVudGVyMg==", "Y2k6aHVudGVyMg", "Authorization: Basic"),
        ("POST /oauth2/token?grant_type=x&refresh_token=abc.def", "abc.def", "grant_type=x"),
        ("POST /oauth2/token;password=pa55&user=ci", "pa55", "user=ci"),
        # httpcore's DEBUG record of a redirect's response headers (bytes, as it logs them)
        (
            "receive_response_headers.complete return_value=(b'HTTP/1.1', 307, "
            f"b'Temporary Redirect', [(b'Location', b'{SAS_URL}'), (b'Content-Length', b'0')])",
            "Zm9vYmFyYmF6cXV4",
            "(b'Content-Length', b'0')",
        ),
    ],
)
def test_redact_removes_the_credential_and_keeps_what_was_called(
    line: str, secret: str, kept: str
) -> None:
    cleaned = redact(line)

    assert secret not in cleaned and "REDACTED" in cleaned and kept in cleaned


def test_redact_leaves_lines_without_credentials_alone() -> None:
    line = "GET https://auth.docker.io/token?scope=repository:library/node:pull&service=registry"

    assert redact(line) == line


def test_a_library_logger_cannot_write_a_sas_signature_at_any_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import httpx

    import gate.adapters  # noqa: F401  (installs the redaction, as every adapter import does)

    caplog.set_level(logging.DEBUG)

    def redirect(request: httpx.Request) -> httpx.Response:
        if request.url.host == "registry.example":
            return httpx.Response(307, headers={"location": SAS_URL})
        return httpx.Response(200, content=b"blob")

    with httpx.Client(transport=httpx.MockTransport(redirect), follow_redirects=True) as client:
        assert client.get("https://registry.example/v2/node/blobs/sha256:ab").content == b"blob"
    logging.getLogger("urllib3.connectionpool").debug('"GET %s HTTP/1.1" 200 4', SAS_URL)
    logging.getLogger("azure.core.pipeline").warning("retrying %s", SAS_URL)

    lines = [record.getMessage() for record in caplog.records]
    assert any("blob.core.windows.net" in line for line in lines if "HTTP Request" in line)
    assert len([line for line in lines if "sig=REDACTED" in line]) >= 3
    assert not any("Zm9vYmFyYmF6cXV4" in line for line in lines)


def test_a_traceback_or_stack_on_a_record_loses_its_credentials_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import gate.adapters  # noqa: F401  (installs the redaction)

    caplog.set_level(logging.DEBUG)
    try:
        raise RuntimeError(f"Client error '403 Forbidden' for url '{SAS_URL}'")
    except RuntimeError:
        # azure-identity logs the failures of its credentials so, at DEBUG
        logging.getLogger("azure.identity").debug("credential failed", exc_info=True)
    stack = logging.getLogger("gate").makeRecord(
        "gate", logging.DEBUG, __file__, 1, "x", None, None, sinfo=f"Stack: {SAS_URL}"
    )

    (failed,) = caplog.records
    written = logging.Formatter().format(failed)
    assert "RuntimeError" in written and "credential failed" in written
    assert "sig=REDACTED" in written and "Zm9vYmFyYmF6cXV4" not in written
    assert "Zm9vYmFyYmF6cXV4" not in caplog.text
    assert stack.stack_info is not None and "Zm9vYmFyYmF6cXV4" not in stack.stack_info
