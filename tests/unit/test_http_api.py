"""The HTTP API's answers to hostile input: always JSON 2xx/4xx with error and detail, never a
5xx or an escaped exception, and nothing queued or recorded for bad input.

The handlers in gate/entrypoints/http_api.py run over fakes of the registry and validator ports and the real
SQLite ledger; tests/e2e/test_function_app.py and tests/e2e/test_functions_worker.py cover the same
handlers behind the Functions triggers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gate.adapters.ledger.sqlite import SqliteLedger
from gate.config.loading import load_config
from gate.entrypoints.http_api import ApiResponse, get_gate, list_gates, post_gate, post_rollback
from gate.ports import HistoryQuery
from gate.usecases.keeper import Gatekeeper
from tests.fakes import FakeRegistry, FakeSecrets, FakeValidator
from tests.unit.test_service import ART, UP, write_config

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def keeper(tmp_path_factory: pytest.TempPathFactory) -> Gatekeeper:
    folder: Path = tmp_path_factory.mktemp("http")
    config = load_config(write_config(folder))
    return Gatekeeper(
        config=config,
        registry=FakeRegistry(),
        validator=FakeValidator(),
        ledger=SqliteLedger(config.data_dir / "gate.db"),
        secrets=FakeSecrets({"test-token": "t"}),
    )


def answer(response: ApiResponse) -> dict[str, Any]:
    """The response checked for the API's shape; its body."""
    assert 200 <= response.status < 500, (response.status, response.body)
    body = json.loads(response.text())
    if response.status >= 400:
        assert set(body) == {"error", "detail"} and body["error"] and body["detail"], body
        assert len(body["detail"]) < 2000  # a huge input is not echoed back
    return body


def test_json_nested_deeper_than_the_parser_is_a_400(keeper: Gatekeeper) -> None:
    deep = b"[" * 30_000 + b"]" * 30_000  # under the 64 KB body limit

    response, queued = post_gate(keeper, deep, max_body_bytes=LIMIT)

    assert response.status == 400 and answer(response)["error"] == "bad_json" and queued is None
    assert post_rollback(keeper, deep, max_body_bytes=LIMIT, actor="a").status == 400


@pytest.mark.parametrize(
    ("query", "mentions"),
    [
        ({"limit": "²"}, "limit"),
        ({"limit": "\uff11\uff12"}, "limit"),  # fullwidth digits
        ({"limit": "0"}, "limit"),
        ({"limit": "9" * 5000}, "limit"),
        ({"since": "0001-01-01T00:00:00+14:00"}, "years 1 to 9999"),
        ({"before": "9999-12-31T23:59:59-14:00"}, "years 1 to 9999"),
        ({"since": "yesterday"}, "ISO 8601"),
        ({"state": "sideways"}, "state"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_query_parameters_are_a_400_that_names_them(
    keeper: Gatekeeper, query: dict[str, str], mentions: str
) -> None:
    response = list_gates(keeper, query, page_size=50)

    assert response.status == 400 and mentions in answer(response)["detail"]


@pytest.mark.parametrize("record_id", ["%%%%%%", "______", "x" * 50_000, "abc\ndef", ""])
def test_record_ids_that_cannot_exist_are_a_404(keeper: Gatekeeper, record_id: str) -> None:
    response = get_gate(keeper, record_id)

    assert response.status == 404 and answer(response)["error"] == "not_found"


@pytest.mark.parametrize(
    "image",
    [
        f"{UP}/node@md5:" + "a" * 32,
        f"{UP}/node@sha1:" + "a" * 40,
        f"{UP}/node@sha256x:" + "a" * 64,
        f"{UP}/node@foo:" + "A" * 64,
        f"{UP}/node:15-alpine@sha384:" + "a" * 96,
    ],
)
def test_malformed_digests_are_a_422_and_queue_nothing(keeper: Gatekeeper, image: str) -> None:
    response, queued = post_gate(
        keeper, json.dumps({"image": image}).encode(), max_body_bytes=LIMIT
    )

    assert response.status == 422 and answer(response)["error"] == "invalid_reference"
    assert queued is None and keeper.ledger.history() == []


json_text = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_text.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"image": st.text(max_size=80) | st.sampled_from([f"{UP}/node", f"{ART}/node"])},
        optional={
            "force": json_text,
            "to": json_text,
            "reason": json_text,
            "repository": json_text,
        },
    ).map(lambda v: json.dumps(v).encode()),
)
queries = st.dictionaries(
    st.sampled_from(["repository", "state", "since", "before", "limit", "rule", "actor", "x"]),
    st.text(max_size=40),
    max_size=5,
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies, query=queries, record_id=st.text(max_size=60))
def test_no_input_gets_a_5xx_or_leaves_a_trace(
    keeper: Gatekeeper, body: bytes, query: dict[str, str], record_id: str
) -> None:
    before = keeper.ledger.history(HistoryQuery(limit=500))

    response, queued = post_gate(keeper, body, max_body_bytes=LIMIT)
    answer(response)
    answer(list_gates(keeper, query, page_size=50))
    answer(get_gate(keeper, record_id))
    answer(post_rollback(keeper, body, max_body_bytes=LIMIT, actor="fuzz"))

    # only an admitted request (a watched, resolvable image) records and queues anything
    if response.status != 202:
        assert queued is None and keeper.ledger.history(HistoryQuery(limit=500)) == before


@pytest.mark.parametrize(
    "since", ["0001-01-01T00:00:00+14:00", "9999999d", "²d", "yesterday", "x" * 5000]
)
def test_history_since_out_of_range_or_malformed_exits_2_without_a_traceback(
    tmp_path: Path, since: str
) -> None:
    from click.testing import CliRunner

    from gate.entrypoints.cli import main

    config = write_config(tmp_path)

    result = CliRunner().invoke(main, ["history", "--config", str(config), "--since", since])

    assert result.exit_code == 2 and "--since" in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
