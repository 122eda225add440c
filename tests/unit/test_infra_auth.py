"""App Service authentication in the templates, next to the names the code uses for it.

The auth settings (``authsettingsV2``), the app roles and the route protection of
``function_app.py`` are checked together: the setting that tells the code authentication is on
is set exactly when the templates turn it on, every HTTP function has its roles, the Event Grid
webhook stays reachable, and every property exists in the SDK's model of the api-version.
"""

from __future__ import annotations

import re
from typing import Any

from pycep import BicepParser

# imported under the name pytest gives tests/unit/test_infra.py (not tests.unit.test_infra): its
# bindings() indexes function_app once per process, and a second copy of the module would index
# it again, which azure.functions refuses
from test_infra import (
    INFRA,
    ROOT,
    bicep,
    bindings,
    body,
    model_key,
    properties_not_in_model,
    render,
    resources,
    sdk_model,
    variable,
)

from gate.config.app_settings import AUTH_ENTRA, AUTH_FUNCTION_KEY, AUTH_MODE_SETTING
from gate.entrypoints.principal import APP_ROLES, GATE_OPERATE, GATE_READ, ROUTE_ROLES

EVENT_GRID_WEBHOOK = "/runtime/webhooks/eventgrid"


def auth_settings() -> dict[str, Any]:
    """The ``authsettingsV2`` resource of the Function app template."""
    (auth,) = (
        r
        for _, r in resources(bicep("app/function.bicep"))
        if r["type"] == "Microsoft.Web/sites/config" and body(r)["name"] == "authsettingsV2"
    )
    return auth


def test_authentication_is_on_exactly_when_a_client_id_is_given() -> None:
    function = bicep("app/function.bicep")
    auth = auth_settings()

    assert auth["config"]["condition"] == "authEnabled"
    assert variable(function, "authEnabled") == {
        "operator": {
            "type": "not",
            "operands": {
                "bool_value": {
                    "function": {"type": "empty", "parameters": {"item_to_test": "authClientId"}}
                }
            },
        }
    }
    assert "default" in function["parameters"]["authClientId"]
    assert function["parameters"]["authClientId"]["default"] == ""


def test_the_setting_that_trusts_the_principal_follows_the_same_parameter() -> None:
    main = bicep("main.bicep")
    mode = variable(main, "appSettings")[AUTH_MODE_SETTING]
    operands = mode["operator"]["operands"]

    assert mode["operator"]["type"] == "conditional"
    assert render(operands["condition"]) == "empty(authClientId)"
    # empty client id: function keys; a client id: App Service authentication, header trusted
    assert (operands["true_value"], operands["false_value"]) == (AUTH_FUNCTION_KEY, AUTH_ENTRA)
    params = body(main["modules"]["functionApp"])["params"]
    for name in ("authClientId", "authTenantId", "authApplicationIdUri"):
        assert params[name] == name


def test_unauthenticated_calls_get_401_and_only_the_event_grid_webhook_is_excluded() -> None:
    properties = body(auth_settings())["properties"]

    assert properties["platform"] == {"enabled": True}
    assert properties["globalValidation"] == {
        "requireAuthentication": True,
        "unauthenticatedClientAction": "Return401",
        "excludedPaths": [EVENT_GRID_WEBHOOK],
    }
    assert properties["httpSettings"] == {"requireHttps": True}


def test_entra_id_checks_tokens_issued_for_the_gates_app_registration() -> None:
    aad = body(auth_settings())["properties"]["identityProviders"]["azureActiveDirectory"]

    assert aad["enabled"] is True
    assert aad["registration"]["clientId"] == "authClientId"
    assert aad["registration"]["openIdIssuer"] == (
        "${environment().authentication.loginEndpoint}${authTenant}/v2.0"
    )
    (audience,) = aad["validation"]["allowedAudiences"]
    assert render(audience) == (
        "empty(authApplicationIdUri) ? api://${authClientId} : authApplicationIdUri"
    )
    # no client secret: the app only checks bearer tokens, it signs nobody in
    assert "clientSecretSettingName" not in aad["registration"]


def test_auth_settings_are_checked_against_their_own_sdk_model() -> None:
    auth = auth_settings()

    assert model_key(auth) == "Microsoft.Web/sites/config/authsettingsV2"
    assert sdk_model(model_key(auth)).__name__ == "SiteAuthSettingsV2"
    assert properties_not_in_model(sdk_model(model_key(auth)), body(auth)) == []


def test_the_model_check_catches_a_misspelt_auth_setting() -> None:
    template = BicepParser().parse(
        text="""
resource auth 'Microsoft.Web/sites/config@2025-03-01' = {
  name: 'authsettingsV2'
  properties: {
    globalValidation: { excludedPath: [ '/x' ], unauthenticatedClientAction: 'Return401' }
    identityProviders: { azureActiveDirectory: { registration: { clientID: 'x' } } }
  }
}
"""
    )
    (auth,) = (r for _, r in resources(template))

    assert properties_not_in_model(sdk_model(model_key(auth)), body(auth)) == [
        "properties.globalValidation.excludedPath: not in the model",
        "properties.identityProviders.azureActiveDirectory.registration.clientID: not in the model",
    ]


def http_functions() -> dict[str, dict[str, Any]]:
    """The HTTP trigger binding of each HTTP function of function_app.py."""
    return {b["function"]: b for b in bindings() if b["type"] == "httpTrigger"}


def test_every_http_function_has_its_roles_and_keeps_its_function_key() -> None:
    functions = http_functions()

    assert set(functions) == set(ROUTE_ROLES)
    for name, binding in functions.items():
        # function keys stay on: without App Service authentication they are the only check
        assert binding["authLevel"].lower() == "function", name
        roles = ROUTE_ROLES[name]
        if binding["methods"] == ["GET"]:
            assert set(roles) == {GATE_READ, GATE_OPERATE}, name
        else:
            assert binding["methods"] == ["POST"] and roles == (GATE_OPERATE,), name
    assert set(APP_ROLES) == {GATE_READ, GATE_OPERATE}


def test_no_http_route_hides_behind_the_excluded_webhook_path() -> None:
    for name, binding in http_functions().items():
        assert not ("/api/" + binding["route"]).startswith(EVENT_GRID_WEBHOOK), name
        assert not binding["route"].startswith("runtime"), name
    # the excluded path is where the Event Grid trigger is delivered
    assert any(b["type"] == "eventGridTrigger" for b in bindings())


def test_function_app_checks_each_route_by_its_own_name() -> None:
    source = (ROOT / "function_app.py").read_text(encoding="utf-8")
    for name in ROUTE_ROLES:
        function = re.search(rf"def {name}\(.*?(?=\n@app|\Z)", source, re.S)
        assert function is not None, name
        assert f'_authorized("{name}", req)' in function.group(0), name


def test_docs_tell_the_deployer_the_roles_the_setting_and_the_token_call() -> None:
    # "Who may call the API" lives on the Functions page of the guide
    page = (ROOT / "docs" / "guide" / "functions.md").read_text(encoding="utf-8")
    section = page[page.index("## Who may call the API") :]

    for needed in (*APP_ROLES, AUTH_MODE_SETTING, "az account get-access-token --resource"):
        assert needed in section, needed
    assert "AUTH_CLIENT_ID" in (INFRA / "main.parameters.json").read_text(encoding="utf-8")
