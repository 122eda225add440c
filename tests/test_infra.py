"""The deployment templates (infra/, azure.yaml) against the code they deploy.

The Bicep CLI cannot be installed offline, so the templates are parsed with pycep (a Python Bicep
parser) and checked statically: every file parses and every module path resolves; the function,
queue, table and app-setting names the templates declare are exactly those ``function_app.py``,
``gate/settings.py`` and the ledger use; every role assignment is named guid(scope, principal,
role), scoped to one resource and its built-in role id commented with the role's name; and no
template holds anything that looks like a secret.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from pycep import BicepParser

import function_app
from gate.config import AzureLedger
from gate.events import IMAGE_PUSHED
from gate.settings import STORAGE_CONNECTION

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))
TEMPLATE_FILES = sorted(
    [p for p in INFRA.rglob("*") if p.is_file()] + [ROOT / "azure.yaml"], key=str
)

# Built-in roles the templates use, checked against the Azure built-in roles reference.
BUILTIN_ROLES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
}

# Settings local.settings.sample.json has for Core Tools that do not exist in Azure, and why.
LOCAL_ONLY_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME": "Flex Consumption takes the runtime from functionAppConfig",
    "AzureWebJobsFeatureFlags": "worker indexing is the default of the Python v2 model",
    "AzureWebJobsStorage": "a connection string; Azure uses the identity-based __ settings",
}
APPLICATION_INSIGHTS_SETTINGS = {
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
}

GUID = re.compile(r"'([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})'")


# -- helpers -------------------------------------------------------------------------------


@cache
def bicep(relative: str) -> dict[str, Any]:
    """The parsed template ``infra/<relative>``."""
    return BicepParser().parse(file_path=INFRA / relative)


def body(declaration: dict[str, Any]) -> dict[str, Any]:
    """A resource's or module's own properties, under any loop or condition."""
    config: dict[str, Any] = declaration["config"]
    while "config" in config and ("loop_type" in config or "condition" in config):
        config = config["config"]
    return config


def resources(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every resource of a template; pycep lists nested ones as ``parent__child``."""
    yield from template.get("resources", {}).items()


def render(expression: Any) -> str:
    """A parsed Bicep expression back as text, enough to compare two of them."""
    if isinstance(expression, str):
        return expression
    if isinstance(expression, dict) and "operator" in expression:
        operator = expression["operator"]
        left, right = (render(v) for v in operator["operands"].values())
        separator = {"property_accessor": ".", "nested_resource_accessor": "::"}
        if operator["type"] in separator:
            return f"{left}{separator[operator['type']]}{right}"
        if operator["type"] == "index_accessor":
            return f"{left}[{right}]"
    if isinstance(expression, dict) and "function" in expression:
        function = expression["function"]
        arguments = ", ".join(render(v) for v in function["parameters"].values() if v is not None)
        return f"{function['type']}({arguments})"
    return json.dumps(expression, sort_keys=True)


def variable(template: dict[str, Any], name: str) -> Any:
    """The value of a template variable."""
    return template["variables"][name]["value"]


@cache
def bindings() -> tuple[dict[str, Any], ...]:
    """Every binding of every function in function_app.py, with its function's name.

    Cached: ``get_functions()`` indexes the app and refuses to run twice in one process.
    """
    found = []
    for function in function_app.app.get_functions():
        for binding in json.loads(function.get_function_json())["bindings"]:
            found.append({**binding, "function": function.get_function_name()})
    return tuple(found)


def settings_the_code_reads() -> set[str]:
    """Names ``gate/settings.py`` reads with ``env.get("NAME", …)``."""
    tree = ast.parse((ROOT / "gate" / "settings.py").read_text(encoding="utf-8"))
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "env"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    }


def template_app_settings() -> set[str]:
    """Every app setting name the templates give the Function app."""
    function = bicep("app/function.bicep")
    (settings,) = (r for _, r in resources(function) if r["type"] == "Microsoft.Web/sites/config")
    assert body(settings)["properties"] == {
        "function": {
            "type": "union",
            "parameters": {"arg_1": "platformSettings", "arg_2": "appSettings"},
        }
    }
    main = bicep("main.bicep")
    assert body(main["modules"]["functionApp"])["params"]["appSettings"] == "appSettings"
    return set(variable(function, "platformSettings")) | set(variable(main, "appSettings"))


SECRET_PATTERNS = {
    "storage account key": re.compile(r"AccountKey\s*="),
    "storage connection string": re.compile(r"DefaultEndpointsProtocol\s*="),
    "SAS token": re.compile(r"SharedAccessSignature|[?&]sig=[A-Za-z0-9%+/=]{16,}"),
    "key or credential listing (listKeys(), listCredentials(), …)": re.compile(
        r"\blist[A-Z]\w*\s*\("
    ),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"),
    "password or key literal": re.compile(
        r"(?i)\b(password|passwd|client_?secret|access_?key|account_?key|api_?key|token)"
        r"\s*[:=]\s*'[^'$]+'"
    ),
}
_OPAQUE = re.compile(r"['\"]([A-Za-z0-9+/=_-]{40,})['\"]")


def secrets_in(text: str) -> list[str]:
    """What in ``text`` looks like a secret: one entry per kind, with the matching line."""
    found = []
    for kind, pattern in SECRET_PATTERNS.items():
        for line in text.splitlines():
            if pattern.search(line):
                found.append(f"{kind}: {line.strip()}")
    for match in _OPAQUE.finditer(text):
        literal = match.group(1)
        # an opaque mix of cases and digits (a key, a token), not a word or a name
        if (
            re.search(r"\d", literal)
            and re.search(r"[a-z]", literal)
            and re.search(r"[A-Z]", literal)
        ):
            found.append(f"opaque literal: {literal[:8]}…")
    return found


# -- the templates parse -------------------------------------------------------------------


def test_the_templates_include_main_and_its_modules() -> None:
    names = {p.relative_to(INFRA).as_posix() for p in BICEP_FILES}
    assert {"main.bicep", "app/function.bicep", "app/push-subscription.bicep"} <= names


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_every_bicep_file_parses(path: Path) -> None:
    template = bicep(path.relative_to(INFRA).as_posix())
    assert template.get("resources") or template.get("modules")


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_every_module_and_loaded_file_exists(path: Path) -> None:
    template = bicep(path.relative_to(INFRA).as_posix())
    for name, module in template.get("modules", {}).items():
        assert module["type"] == "local", f"{path.name}: module {name} is not a local file"
        assert (path.parent / module["detail"]["path"]).is_file(), f"{path.name}: {name}"
    for loaded in re.findall(r"load\w+\('([^']+)'\)", path.read_text(encoding="utf-8")):
        assert (path.parent / loaded).is_file(), f"{path.name} loads {loaded}"


def test_main_deploys_at_subscription_scope_and_its_parameter_file_matches() -> None:
    main = bicep("main.bicep")
    assert main["globals"]["scope"]["value"] == "subscription"
    declared = main["parameters"]
    given = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert set(given) <= set(declared), "main.parameters.json sets a parameter main.bicep lacks"
    required = {name for name, p in declared.items() if "default" not in p}
    assert required <= set(given), "a parameter without a default is missing from the file"


def test_azure_yaml_deploys_the_folder_as_one_python_function_service() -> None:
    project = yaml.safe_load((ROOT / "azure.yaml").read_text(encoding="utf-8"))
    assert project["services"] == {
        "gate": {"project": ".", "language": "python", "host": "function"}
    }
    assert {"posix", "windows"} <= set(project["hooks"]["postdeploy"])
    # azd finds the app by this tag, named after the service
    tags = body(bicep("main.bicep")["modules"]["functionApp"])["params"]["tags"]
    assert tags["function"]["parameters"]["arg_2"] == {"'azd-service-name'": "gate"}


def test_postdeploy_hook_turns_on_the_event_subscription_once_the_code_is_deployed() -> None:
    hooks = yaml.safe_load((ROOT / "azure.yaml").read_text(encoding="utf-8"))["hooks"]
    parameters = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))
    variable_name = re.fullmatch(
        r"\$\{(\w+)=false\}", parameters["parameters"]["subscribeToEvents"]["value"]
    )
    assert variable_name is not None
    outputs = bicep("main.bicep")["outputs"]
    for shell in ("posix", "windows"):
        script = hooks["postdeploy"][shell]["run"]
        assert f"azd env set {variable_name.group(1)} true" in script
        assert "azd provision --no-prompt" in script
        # only when there is an upstream registry to subscribe to (a main.bicep output)
        assert "AZURE_UPSTREAM_REGISTRY_ID" in script and "AZURE_UPSTREAM_REGISTRY_ID" in outputs


# -- names the code uses -------------------------------------------------------------------


def test_sample_settings_list_every_setting_the_code_reads() -> None:
    sample = json.loads((ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))
    placeholders = {
        name
        for binding in bindings()
        for value in binding.values()
        if isinstance(value, str)
        for name in re.findall(r"%(\w+)%", value)
    }
    assert placeholders == {"GATE_WATCH_SCHEDULE"}
    assert settings_the_code_reads() | placeholders <= set(sample["Values"])


def test_app_settings_in_templates_are_exactly_those_the_app_reads() -> None:
    sample = set(
        json.loads((ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))["Values"]
    )
    connections = {b["connection"] for b in bindings() if "connection" in b}
    assert connections == {STORAGE_CONNECTION}
    identity_based = {
        f"{connection}__{part}"
        for connection in connections
        for part in ("accountName", "credential", "clientId")
    }
    expected = (sample - set(LOCAL_ONLY_SETTINGS)) | identity_based | APPLICATION_INSIGHTS_SETTINGS
    assert template_app_settings() == expected


def test_storage_connection_is_identity_based() -> None:
    platform = variable(bicep("app/function.bicep"), "platformSettings")
    assert platform[f"{STORAGE_CONNECTION}__credential"] == "managedidentity"
    assert platform[f"{STORAGE_CONNECTION}__clientId"] == "identityClientId"
    assert platform["AZURE_CLIENT_ID"] == "identityClientId"


def test_queues_are_those_the_functions_bind_to() -> None:
    main = bicep("main.bicep")
    bound = {b["queueName"] for b in bindings() if "queueName" in b}
    assert set(variable(main, "queueNames")) == bound
    assert body(main["modules"]["storage"])["params"]["queueNames"] == "queueNames"


def test_ledger_table_and_log_container_are_the_ledgers_defaults() -> None:
    main = bicep("main.bicep")
    storage = body(main["modules"]["storage"])["params"]
    ledger = AzureLedger()
    assert variable(main, "ledgerTable") == ledger.table
    assert variable(main, "logContainer") == ledger.log_container
    assert storage["tableNames"] == ["ledgerTable"]
    assert "logContainer" in storage["containerNames"]


def test_event_subscription_delivers_pushes_to_the_event_grid_function() -> None:
    main = bicep("main.bicep")
    event_functions = {b["function"] for b in bindings() if b["type"] == "eventGridTrigger"}
    assert event_functions == {variable(main, "eventFunctionName")}
    module = body(main["modules"]["pushSubscription"])["params"]
    assert module["functionName"] == "eventFunctionName"
    assert module["repositories"] == "watchedRepositories"

    subscription = body(bicep("app/push-subscription.bicep")["resources"]["pushes"])
    properties = subscription["properties"]
    destination = properties["destination"]
    assert destination["endpointType"] == "AzureFunction"
    assert destination["properties"]["resourceId"] == "${functionAppId}/functions/${functionName}"
    assert properties["filter"]["includedEventTypes"] == [IMAGE_PUSHED]
    assert properties["filter"]["advancedFilters"] == [
        {"operatorType": "StringIn", "key": "data.target.repository", "values": "repositories"}
    ]
    assert set(properties["retryPolicy"]) == {"maxDeliveryAttempts", "eventTimeToLiveInMinutes"}
    dead_letter = properties["deadLetterWithResourceIdentity"]
    assert dead_letter["identity"] == {"type": "SystemAssigned"}
    assert dead_letter["deadLetterDestination"]["endpointType"] == "StorageBlob"


def test_function_app_runs_python_on_flex_consumption() -> None:
    function = bicep("app/function.bicep")
    plan = body(function["resources"]["plan"])
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    site = body(function["resources"]["site"])
    assert site["kind"] == "functionapp,linux"
    config = site["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "pythonVersion"}
    versions = next(
        d["argument"]
        for d in function["parameters"]["pythonVersion"]["decorators"]
        if d["type"] == "allowed"
    )
    assert all(tuple(map(int, v.split("."))) >= (3, 11) for v in versions)
    assert config["deployment"]["storage"]["authentication"]["type"] == "UserAssignedIdentity"


# -- grants --------------------------------------------------------------------------------


def role_assignments() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path in BICEP_FILES:
        relative = path.relative_to(INFRA).as_posix()
        for name, resource in resources(bicep(relative)):
            if resource["type"] == "Microsoft.Authorization/roleAssignments":
                yield relative, name, body(resource)


def test_templates_assign_roles() -> None:
    assert len(list(role_assignments())) >= 6


def test_every_role_assignment_is_named_by_scope_principal_and_role() -> None:
    for where, name, assignment in role_assignments():
        guid = assignment["name"]["function"]
        assert guid["type"] == "guid", f"{where}: {name}"
        scope, principal, role = (render(v) for v in guid["parameters"].values())
        properties = assignment["properties"]
        role_id = properties["roleDefinitionId"]["function"]
        assert role_id["type"] == "subscription_resource_id", f"{where}: {name}"
        assert scope == f"{render(assignment['scope'])}.id", f"{where}: {name}"
        assert principal == render(properties["principalId"]), f"{where}: {name}"
        assert role == render(role_id["parameters"]["resource_name_1"]), f"{where}: {name}"


def test_every_role_assignment_is_scoped_to_a_resource_of_its_template() -> None:
    for where, name, assignment in role_assignments():
        template = bicep(where)
        assert template["globals"].get("scope", {}).get("value") != "subscription", where
        declared = {n for n, _ in resources(template)}
        scope = render(assignment["scope"])
        assert scope.split("::")[0] in declared, f"{where}: {name} is scoped to {scope}"


def test_builtin_role_ids_are_commented_with_their_names() -> None:
    seen = set()
    for path in BICEP_FILES:
        for line in path.read_text(encoding="utf-8").splitlines():
            for role_id in GUID.findall(line):
                assert role_id in BUILTIN_ROLES, f"{path.name}: unknown role id {role_id}"
                assert line.rstrip().endswith(f"// {BUILTIN_ROLES[role_id]}"), line
                seen.add(role_id)
    assert seen == set(BUILTIN_ROLES)


def test_custom_registry_roles_name_each_operation_and_none_writes_content() -> None:
    permissions = variable(bicep("rbac/registry-access.bicep"), "permissions")
    assert set(permissions) == {"reader", "importer", "runner"}
    for kind, granted in permissions.items():
        operations = granted["actions"] + granted["dataActions"]
        assert operations, kind
        for operation in operations:
            assert operation.startswith("Microsoft.ContainerRegistry/registries/"), operation
            assert "*" not in operation, f"{kind}: ACR ignores wildcards in custom roles"
            assert not re.search(r"push/write|content/write|/delete$", operation), (
                f"{kind} may write or delete registry content: {operation}"
            )
    assert (
        "Microsoft.ContainerRegistry/registries/importImage/action"
        in (permissions["importer"]["actions"])
    )
    assert (
        "Microsoft.ContainerRegistry/registries/scheduleRun/action"
        in (permissions["runner"]["actions"])
    )


def test_readme_explains_every_role_the_templates_grant() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Deploying to Azure") :]
    for name in BUILTIN_ROLES.values():
        assert name in section, name
    for kind in variable(bicep("rbac/registry-access.bicep"), "permissions"):
        assert f"Gated import {kind}" in section, kind


# -- no secrets ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", TEMPLATE_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_template_holds_a_secret(path: Path) -> None:
    assert secrets_in(path.read_text(encoding="utf-8")) == []


def test_secret_scan_catches_keys_connection_strings_and_list_keys() -> None:
    leaky = (
        "var conn = 'DefaultEndpointsProtocol=https;AccountName=a;AccountKey=abc'\n"
        "var keys = storage.listKeys().keys[0].value\n"
        "password: 'hunter2'\n"
        "var k = 'Zm9vYmFyYmF6cXV4cXV1eDEyMzQ1Njc4OTBBQkNERUZHSElK'\n"
    )
    kinds = {entry.split(":")[0] for entry in secrets_in(leaky)}
    assert kinds == {
        "storage account key",
        "storage connection string",
        "key or credential listing (listKeys(), listCredentials(), …)",
        "password or key literal",
        "opaque literal",
    }


def test_no_parameter_is_secure_with_a_default() -> None:
    for path in BICEP_FILES:
        template = bicep(path.relative_to(INFRA).as_posix())
        for name, parameter in template.get("parameters", {}).items():
            secure = any(d["type"] == "secure" for d in parameter["decorators"])
            assert not (secure and "default" in parameter), f"{path.name}: {name}"
