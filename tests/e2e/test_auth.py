"""Who may re-gate and roll back: the client principal, app roles, and what a refusal leaves.

The principal headers are built from the shapes App Service authentication sends
(learn.microsoft.com/azure/app-service/configure-authentication-user-identities: Base64 JSON of
``auth_typ``, ``name_typ``, ``role_typ`` and ``claims[{typ, val}]``; the object id under its
mapped claim type; app roles in the access token's ``roles`` claim,
configure-authentication-provider-aad). The HTTP functions are called with real
``func.HttpRequest`` objects over the real Functions app (Azurite queue, registries, podman).
"""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

import function_app
from gate.config.app_settings import (
    AUTH_AUDIENCES_SETTING,
    AUTH_MODE_SETTING,
    AUTH_TENANT_SETTING,
    EntraTrust,
    Settings,
)
from gate.entrypoints.http_api import ApiResponse, authorize, caller
from gate.entrypoints.principal import (
    FUNCTION_KEY,
    GATE_OPERATE,
    GATE_READ,
    ROUTE_ROLES,
    Principal,
    PrincipalError,
    decode_principal,
)
from gate.errors import ConfigError
from tests.e2e.test_function_app import (  # noqa: F401  (fixtures)
    Serverless,
    app,
    azurite_queues,
    http,
)
from tests.unit.test_function_events import Collect

ROOT = Path(__file__).resolve().parents[2]

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "6e8a0c3a-1b2d-4c5e-8f90-a1b2c3d4e5f6"
APP_ID_URI = f"api://{CLIENT_ID}"
TRUST = EntraTrust(tenant_id=TENANT, audiences=frozenset({CLIENT_ID, APP_ID_URI}))
ENTRA_SETTINGS = {
    AUTH_MODE_SETTING: "entra",
    AUTH_TENANT_SETTING: TENANT,
    AUTH_AUDIENCES_SETTING: f"{CLIENT_ID},{APP_ID_URI}",
}
"""The app settings infra writes with authentication on (infra/main.bicep)."""
OBJECT_ID_TYPE = "http://schemas.microsoft.com/identity/claims/objectidentifier"
NAME_TYPE = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name"
ROLE_TYPE = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"

OPERATOR_ID = "0b1f9a3e-5c7d-4e2a-9f11-3a4b5c6d7e8f"
READER_ID = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"
PIPELINE_ID = "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"
PIPELINE_APP_ID = "3c2b1a09-8f7e-4d6c-9b5a-4f3e2d1c0b9a"


def principal_payload(
    object_id: str,
    name: str | None,
    roles: tuple[str, ...] = (),
    *,
    role_claim: str = "roles",
    extra: tuple[tuple[str, str], ...] = (),
) -> dict[str, Any]:
    """A decoded X-MS-CLIENT-PRINCIPAL as App Service authentication (Entra ID) builds it."""
    claims = [
        {"typ": "aud", "val": CLIENT_ID},
        {"typ": "iss", "val": f"https://login.microsoftonline.com/{TENANT}/v2.0"},
        {"typ": OBJECT_ID_TYPE, "val": object_id},
        {"typ": "http://schemas.microsoft.com/identity/claims/tenantid", "val": TENANT},
        {"typ": "ver", "val": "2.0"},
    ]
    if name is not None:
        claims += [{"typ": "name", "val": name}, {"typ": "preferred_username", "val": name}]
    claims += [{"typ": typ, "val": val} for typ, val in extra]
    claims += [{"typ": role_claim, "val": role} for role in roles]
    return {"auth_typ": "aad", "claims": claims, "name_typ": NAME_TYPE, "role_typ": ROLE_TYPE}


def encode(payload: Any) -> str:
    return base64.b64encode(json.dumps(payload).encode()).decode()


def principal_header(object_id: str, name: str | None, *roles: str) -> dict[str, str]:
    return {"X-MS-CLIENT-PRINCIPAL": encode(principal_payload(object_id, name, roles))}


OPERATOR = principal_header(OPERATOR_ID, "operator@contoso.com", GATE_OPERATE)
READER = principal_header(READER_ID, "reader@contoso.com", GATE_READ)
NOBODY: dict[str, str] = {}


# -- decoding the client principal --------------------------------------------------------------


def test_a_users_principal_gives_object_id_name_and_app_roles() -> None:
    header = OPERATOR["X-MS-CLIENT-PRINCIPAL"]

    who = decode_principal(header, TRUST)

    assert who == Principal(OPERATOR_ID, "operator@contoso.com", frozenset({GATE_OPERATE}))


def test_roles_under_the_payloads_role_type_count_too() -> None:
    payload = principal_payload(READER_ID, "r", (GATE_READ,), role_claim=ROLE_TYPE)

    assert decode_principal(encode(payload), TRUST).roles == {GATE_READ}


def test_a_claim_under_name_typ_names_the_caller_first() -> None:
    payload = principal_payload(READER_ID, "Display Name", extra=((NAME_TYPE, "upn@contoso"),))

    assert decode_principal(encode(payload), TRUST).name == "upn@contoso"


def test_a_pipeline_identity_without_a_name_is_named_by_its_application_id() -> None:
    payload = principal_payload(
        PIPELINE_ID, None, (GATE_OPERATE,), extra=(("appid", PIPELINE_APP_ID),)
    )

    who = decode_principal(encode(payload), TRUST)

    assert (who.object_id, who.name, who.roles) == (
        PIPELINE_ID,
        PIPELINE_APP_ID,
        frozenset({GATE_OPERATE}),
    )


def test_the_token_claim_oid_is_read_when_the_claim_was_not_mapped() -> None:
    payload = {
        "auth_typ": "aad",
        "claims": [
            {"typ": "oid", "val": READER_ID},
            {"typ": "tid", "val": TENANT},
            {"typ": "aud", "val": CLIENT_ID},
        ],
    }

    assert decode_principal(encode(payload), TRUST) == Principal(READER_ID, READER_ID, frozenset())


@pytest.mark.parametrize(
    ("header", "says"),
    [
        ("not base64 at all!", "not Base64-encoded JSON"),
        (base64.b64encode(b"\xff\xfe").decode(), "not Base64-encoded JSON"),
        (encode(["a list"]), "no claims list"),
        (encode({"auth_typ": "aad"}), "no claims list"),
        (encode({"claims": [{"typ": "oid", "val": 7}]}), "not {typ, val} strings"),
        (encode({"claims": ["oid"]}), "not {typ, val} strings"),
        (encode({"claims": [{"typ": "name", "val": "x"}]}), "no object id claim"),
        (encode({"claims": [{"typ": "oid", "val": "  "}]}), "no object id claim"),
        ("A" * 70_000, "over"),
        (base64.b64encode(b"[" * 20_000 + b"]" * 20_000).decode(), "nests too deeply"),
    ],
)
def test_a_malformed_principal_is_refused_with_the_cause(header: str, says: str) -> None:
    with pytest.raises(PrincipalError) as refused:
        decode_principal(header, TRUST)

    assert says in refused.value.message


# -- who calls, and may they ---------------------------------------------------------------------


def _refusal(payload: dict[str, Any]) -> str:
    with pytest.raises(PrincipalError) as refused:
        decode_principal(encode(payload), TRUST)
    return refused.value.message


def test_a_principal_of_another_tenant_is_refused_even_with_the_gates_roles() -> None:
    payload = principal_payload(OPERATOR_ID, "mallory", (GATE_OPERATE,))
    other = "0f0e0d0c-0b0a-4909-8807-060504030201"
    payload["claims"] = [
        {**c, "val": other} if c["typ"].endswith("tenantid") else c for c in payload["claims"]
    ]

    says = _refusal(payload)

    assert other in says and TENANT in says and "az login --tenant" in says


def test_the_unmapped_tid_claim_names_the_tenant_too() -> None:
    payload = principal_payload(READER_ID, "r", (GATE_READ,))
    payload["claims"] = [
        {"typ": "tid", "val": TENANT} if c["typ"].endswith("tenantid") else c
        for c in payload["claims"]
    ]

    assert decode_principal(encode(payload), TRUST).roles == {GATE_READ}


def test_a_principal_without_a_tenant_claim_is_refused() -> None:
    payload = principal_payload(READER_ID, "r", (GATE_READ,))
    payload["claims"] = [c for c in payload["claims"] if not c["typ"].endswith("tenantid")]

    assert "tenant 'none'" in _refusal(payload)


def test_a_token_for_another_audience_is_refused() -> None:
    payload = principal_payload(OPERATOR_ID, "o", (GATE_OPERATE,))
    payload["claims"] = [
        {"typ": "aud", "val": "api://someone-else"} if c["typ"] == "aud" else c
        for c in payload["claims"]
    ]

    says = _refusal(payload)

    assert "api://someone-else" in says and "get-access-token --resource" in says


def test_the_application_id_uri_is_an_accepted_audience() -> None:
    payload = principal_payload(READER_ID, "r", (GATE_READ,))
    payload["claims"] = [
        {"typ": "aud", "val": APP_ID_URI} if c["typ"] == "aud" else c for c in payload["claims"]
    ]

    assert decode_principal(encode(payload), TRUST).object_id == READER_ID


@pytest.mark.parametrize("provider", ["github", "google", "", "AAD "])
def test_a_principal_of_another_identity_provider_is_refused(provider: str) -> None:
    payload = {**principal_payload(OPERATOR_ID, "o", (GATE_OPERATE,)), "auth_typ": provider}

    assert "accepts only Microsoft Entra ID" in _refusal(payload)


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({AUTH_TENANT_SETTING: "common"}, "not a directory (tenant) id"),
        ({AUTH_TENANT_SETTING: "organizations"}, "not a directory (tenant) id"),
        ({AUTH_TENANT_SETTING: "contoso.onmicrosoft.com"}, "not a directory (tenant) id"),
        ({AUTH_TENANT_SETTING: f"{TENANT}0"}, "not a directory (tenant) id"),
        ({AUTH_TENANT_SETTING: ""}, "not a directory (tenant) id"),
        ({AUTH_AUDIENCES_SETTING: ""}, "no token audience"),
        ({AUTH_AUDIENCES_SETTING: " , "}, "no token audience"),
    ],
)
def test_entra_mode_without_one_tenant_and_an_audience_stops_the_app(
    settings: dict[str, str], says: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({**ENTRA_SETTINGS, **settings})

    assert says in refused.value.message


def test_without_authentication_a_principal_header_is_ignored() -> None:
    forged = principal_header(OPERATOR_ID, "mallory", GATE_OPERATE)
    broken = {"x-ms-client-principal": "%%%"}

    assert caller(forged, entra=None) == FUNCTION_KEY
    assert caller(broken, entra=None) == FUNCTION_KEY
    assert FUNCTION_KEY.name == "function-key" and FUNCTION_KEY.object_id == ""


def test_with_authentication_no_principal_is_a_401() -> None:
    answer = caller(NOBODY, entra=TRUST)

    assert isinstance(answer, ApiResponse) and answer.status == 401
    assert "Authorization: Bearer" in answer.body["detail"]


def test_the_principal_header_name_is_case_insensitive() -> None:
    lower = {"x-ms-client-principal": OPERATOR["X-MS-CLIENT-PRINCIPAL"]}

    assert caller(lower, entra=TRUST) == decode_principal(lower["x-ms-client-principal"], TRUST)


@pytest.mark.parametrize(
    ("function", "headers", "status"),
    [
        ("get_gate", READER, None),
        ("list_gates", READER, None),
        ("get_gate", OPERATOR, None),
        ("post_gate", OPERATOR, None),
        ("post_rollback", OPERATOR, None),
        ("post_gate", READER, 403),
        ("post_rollback", READER, 403),
        ("list_gates", principal_header(READER_ID, "no roles"), 403),
        ("post_gate", NOBODY, 401),
        ("get_gate", {"X-MS-CLIENT-PRINCIPAL": "garbage"}, 401),
    ],
)
def test_each_route_lets_in_exactly_its_roles(
    function: str, headers: dict[str, str], status: int | None
) -> None:
    answer = authorize(function, headers, entra=TRUST)

    if status is None:
        assert isinstance(answer, Principal)
    else:
        assert isinstance(answer, ApiResponse) and answer.status == status


def test_a_403_says_which_role_is_missing_and_how_to_get_it() -> None:
    answer = authorize("post_rollback", READER, entra=TRUST)

    assert isinstance(answer, ApiResponse) and answer.body["error"] == "forbidden"
    detail = answer.body["detail"]
    assert "Gate.Operate" in detail and "you hold Gate.Read" in detail
    assert "app registration" in detail


def test_reading_needs_either_role_and_writing_needs_operate() -> None:
    assert ROUTE_ROLES == {
        "get_gate": (GATE_READ, GATE_OPERATE),
        "list_gates": (GATE_READ, GATE_OPERATE),
        "post_gate": (GATE_OPERATE,),
        "post_rollback": (GATE_OPERATE,),
    }


# -- the setting that says authentication is on --------------------------------------------------


def test_auth_mode_defaults_to_function_keys_and_only_entra_trusts_the_header() -> None:
    assert not Settings.from_env({}).trusts_principal
    assert not Settings.from_env({AUTH_MODE_SETTING: "function-key"}).trusts_principal
    assert Settings.from_env(ENTRA_SETTINGS).trusts_principal
    assert Settings.from_env(ENTRA_SETTINGS).entra == TRUST


@pytest.mark.parametrize("value", ["Entra", "aad", "on", "true"])
def test_an_unknown_auth_mode_stops_the_app_instead_of_guessing(value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({AUTH_MODE_SETTING: value})

    assert "GATE_AUTH_MODE" in refused.value.message and "'entra'" in refused.value.message


# -- the Functions app, authentication on --------------------------------------------------------


@pytest.fixture
def entra(app: Serverless, monkeypatch: pytest.MonkeyPatch) -> Serverless:  # noqa: F811
    """The app as Azure runs it with App Service authentication on (infra sets the setting)."""
    for name, value in ENTRA_SETTINGS.items():
        monkeypatch.setenv(name, value)
    function_app.settings.cache_clear()
    return app


def as_caller(request: func.HttpRequest, headers: dict[str, str]) -> func.HttpRequest:
    """``request`` as the platform hands it over with these identity headers."""
    return func.HttpRequest(
        request.method,
        request.url,
        headers={"content-type": "application/json", **headers},
        params=dict(request.params),
        route_params=dict(request.route_params),
        body=request.get_body(),
    )


def gate_as(served: Serverless, headers: dict[str, str], image: str) -> tuple[int, Any, Any]:
    out = Collect()
    response = function_app.post_gate(
        as_caller(http("POST", "gate", {"image": image}), headers), out
    )
    return response.status_code, json.loads(response.get_body()), out.value


def promote_as_operator(served: Serverless, color: str) -> str:
    digest = served.push_image(color)
    status, _, queued = gate_as(served, OPERATOR, f"{served.upstream.host}/node@{digest}")
    assert status == 202 and queued
    served.enqueue(_collected(queued))
    assert served.work() == 1
    return digest


def _collected(value: Any) -> Collect:
    out = Collect()
    out.set(value)
    return out


def test_an_operators_gate_request_names_them_through_the_queue_and_in_the_audit_line(
    entra: Serverless, caplog: pytest.LogCaptureFixture
) -> None:
    digest = entra.push_image("Green")
    caplog.set_level(logging.INFO, logger="gate.audit")

    status, body, queued = gate_as(entra, OPERATOR, f"{entra.upstream.host}/node:15-alpine")
    entra.enqueue(_collected(queued))
    entra.work()

    assert status == 202 and (body["actor"], body["actor_id"]) == (
        "operator@contoso.com",
        OPERATOR_ID,
    )
    # the queue carries the record id, and the record carries the caller
    assert json.loads(queued) == {"record_id": body["id"], "trigger": "http"}
    record = function_app.keeper().ledger.get(body["id"])
    assert record.state.value == "promoted" and record.digest == digest
    assert (record.actor, record.actor_id) == ("operator@contoso.com", OPERATOR_ID)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("GATE_DECISION")]
    decision = json.loads(line.removeprefix("GATE_DECISION "))
    assert (decision["actor"], decision["actor_id"]) == ("operator@contoso.com", OPERATOR_ID)


def _operator_with(claim: str, value: str) -> dict[str, str]:
    """An operator's principal with one claim changed (another tenant, another audience)."""
    payload = principal_payload(OPERATOR_ID, "mallory@fabrikam", (GATE_OPERATE,))
    payload["claims"] = [{**c, "val": value} if c["typ"] == claim else c for c in payload["claims"]]
    return {"X-MS-CLIENT-PRINCIPAL": encode(payload)}


FOREIGN_OPERATOR = _operator_with(
    "http://schemas.microsoft.com/identity/claims/tenantid", "0f0e0d0c-0b0a-4909-8807-060504030201"
)
WRONG_AUDIENCE_OPERATOR = _operator_with("aud", "api://another-app")
GITHUB_OPERATOR = {
    "X-MS-CLIENT-PRINCIPAL": encode(
        {**principal_payload(OPERATOR_ID, "octocat", (GATE_OPERATE,)), "auth_typ": "github"}
    )
}


def test_refused_callers_change_nothing(
    entra: Serverless, caplog: pytest.LogCaptureFixture
) -> None:
    orange = promote_as_operator(entra, "Orange")
    promote_as_operator(entra, "Green")
    green_tags = entra.target_tags()
    before = function_app.keeper().ledger.history()
    blue = entra.push_image("Blue")
    repo = f"{entra.target.host}/node"
    rollback = http("POST", "rollback", {"repository": repo, "to": orange, "reason": "test"})
    forged = {"X-MS-CLIENT-PRINCIPAL": "eyJub3QiOiAiYSBwcmluY2lwYWwifQ=="}

    answers = {
        "gate, nobody": gate_as(entra, NOBODY, f"{entra.upstream.host}/node@{blue}")[::2],
        "gate, reader": gate_as(entra, READER, f"{entra.upstream.host}/node@{blue}")[::2],
        "gate, forged": gate_as(entra, forged, f"{entra.upstream.host}/node@{blue}")[::2],
        "gate, other tenant": gate_as(
            entra, FOREIGN_OPERATOR, f"{entra.upstream.host}/node@{blue}"
        )[::2],
        "gate, other audience": gate_as(
            entra, WRONG_AUDIENCE_OPERATOR, f"{entra.upstream.host}/node@{blue}"
        )[::2],
        "gate, other provider": gate_as(
            entra, GITHUB_OPERATOR, f"{entra.upstream.host}/node@{blue}"
        )[::2],
        "rollback, other tenant": (
            function_app.post_rollback(as_caller(rollback, FOREIGN_OPERATOR)).status_code,
        ),
        "rollback, nobody": (function_app.post_rollback(as_caller(rollback, NOBODY)).status_code,),
        "rollback, reader": (function_app.post_rollback(as_caller(rollback, READER)).status_code,),
        "list, nobody": (
            function_app.list_gates(as_caller(http("GET", "gates"), NOBODY)).status_code,
        ),
    }

    assert answers == {
        "gate, nobody": (401, None),
        "gate, reader": (403, None),
        "gate, forged": (401, None),
        "gate, other tenant": (401, None),
        "gate, other audience": (401, None),
        "gate, other provider": (401, None),
        "rollback, other tenant": (401,),
        "rollback, nobody": (401,),
        "rollback, reader": (403,),
        "list, nobody": (401,),
    }
    assert function_app.keeper().ledger.history() == before
    assert entra.target_tags() == green_tags and entra.queue.peek_messages() == []
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused ")]
    assert len(refusals) == len(answers)
    assert any("not the gate's tenant" in line for line in refusals)


def test_a_reader_reads_and_an_operator_rolls_back_as_themselves(
    entra: Serverless, caplog: pytest.LogCaptureFixture
) -> None:
    orange = promote_as_operator(entra, "Orange")
    promote_as_operator(entra, "Green")
    repo = f"{entra.target.host}/node"
    caplog.set_level(logging.INFO, logger="gate.audit")

    listed = function_app.list_gates(as_caller(http("GET", "gates"), READER))
    rolled = function_app.post_rollback(
        as_caller(
            http("POST", "rollback", {"repository": repo, "reason": "green breaks"}), OPERATOR
        )
    )

    assert listed.status_code == 200 and len(json.loads(listed.get_body())["records"]) == 2
    body = json.loads(rolled.get_body())
    assert rolled.status_code == 200 and body["state"] == "rolled_back"
    assert (body["actor"], body["actor_id"]) == ("operator@contoso.com", OPERATOR_ID)
    assert entra.target_tags()["15-alpine"] == orange
    record = function_app.keeper().ledger.get(body["id"])
    assert (record.actor, record.actor_id) == ("operator@contoso.com", OPERATOR_ID)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("GATE_DECISION")]
    decision = json.loads(line.removeprefix("GATE_DECISION "))
    assert (decision["verdict"], decision["record_id"]) == ("rolled_back", body["id"])
    assert (decision["actor"], decision["actor_id"]) == ("operator@contoso.com", OPERATOR_ID)


def test_history_filters_by_the_actors_object_id_or_name(entra: Serverless) -> None:
    promote_as_operator(entra, "Orange")
    promote_as_operator(entra, "Green")
    repo = f"{entra.target.host}/node"
    function_app.post_rollback(
        as_caller(http("POST", "rollback", {"repository": repo, "reason": "why"}), OPERATOR)
    )
    other = principal_header(PIPELINE_ID, "pipeline", GATE_OPERATE)
    blue = entra.push_image("Blue")
    gate_as(entra, other, f"{entra.upstream.host}/node@{blue}")

    def listed(actor: str) -> list[tuple[str, str]]:
        response = function_app.list_gates(
            as_caller(http("GET", "gates", params={"actor": actor}), READER)
        )
        assert response.status_code == 200
        return [(r["action"], r["actor_id"]) for r in json.loads(response.get_body())["records"]]

    assert listed(OPERATOR_ID) == [
        ("rollback", OPERATOR_ID),
        ("gate", OPERATOR_ID),
        ("gate", OPERATOR_ID),
    ]
    assert listed("operator@contoso.com") == listed(OPERATOR_ID)
    assert listed(PIPELINE_ID) == [("gate", PIPELINE_ID)]
    assert listed("nobody@contoso.com") == []


# -- the Functions app, authentication off (local func start) ------------------------------------


def test_without_authentication_a_forged_principal_neither_names_nor_limits_the_caller(
    app: Serverless,  # noqa: F811
) -> None:
    digest = app.push_image("Green")
    forged_reader = principal_header(READER_ID, "mallory@evil", GATE_READ)

    status, body, queued = gate_as(app, forged_reader, f"{app.upstream.host}/node@{digest}")

    assert status == 202 and queued
    assert (body["actor"], body["actor_id"]) == ("function-key", "")
    assert function_app.keeper().ledger.get(body["id"]).actor_id == ""


# -- the same, under the real Python worker -----------------------------------------------------


def test_the_worker_hands_the_principal_header_to_the_role_check(tmp_path: Path) -> None:
    from tests.e2e.test_functions_worker import SAMPLE_SETTINGS, SEED
    from tests.functions_host import FunctionsHost
    from tests.functions_host.payloads import http_request

    config = tmp_path / "gate.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'data'}\n"
        "rules:\n"
        "  - {name: node, source: 127.0.0.1:5999/node, tags: ['15-alpine'],\n"
        f"     target: 127.0.0.1:5998/node, validation: {{folder: '{SEED}'}}}}\n"
    )
    settings = {**SAMPLE_SETTINGS, "GATE_CONFIG": str(config), **ENTRA_SETTINGS}
    body = json.dumps({"image": "127.0.0.1:5999/node:15-alpine"}).encode()
    with FunctionsHost(ROOT, settings) as host:
        host.boot()
        calls = {
            "gate, nobody": host.invoke("post_gate", http_request("POST", "gate", body=body)),
            "gate, reader": host.invoke(
                "post_gate", http_request("POST", "gate", body=body, headers=READER)
            ),
            "list, reader": host.invoke("list_gates", http_request("GET", "gates", headers=READER)),
            "list, operator": host.invoke(
                "list_gates",
                http_request("GET", "gates", headers=OPERATOR, query={"actor": OPERATOR_ID}),
            ),
        }

    answers = {name: call.http_response() for name, call in calls.items()}
    assert {name: a.status for name, a in answers.items()} == {
        "gate, nobody": 401,
        "gate, reader": 403,
        "list, reader": 200,
        "list, operator": 200,
    }
    assert "Gate.Operate" in answers["gate, reader"].json()["detail"]
    assert calls["gate, reader"].queue_messages("requests") == []
    assert answers["list, operator"].json() == {"records": []}


# -- gate history --actor ------------------------------------------------------------------------


def test_gate_history_actor_lists_only_that_callers_records(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from gate.entrypoints.cli import main
    from gate.usecases.rollback import rollback
    from tests.unit.test_cli_edges import ART, _promoted_twice

    keeper = _promoted_twice(tmp_path)
    rolled = rollback(
        keeper, f"{ART}/node", reason="bad", actor="operator@contoso.com", actor_id=OPERATOR_ID
    )
    config = tmp_path / "gate.yaml"

    def history(*args: str) -> list[str]:
        result = CliRunner().invoke(main, ["history", "--json", *args, "--config", str(config)])
        assert result.exit_code == 0, result.output
        return [json.loads(line)["id"] for line in result.output.splitlines()]

    assert history("--actor", OPERATOR_ID) == [rolled.id]
    assert history("--actor", "operator@contoso.com") == [rolled.id]
    assert history("--actor", READER_ID) == []
    assert len(history()) == 3
