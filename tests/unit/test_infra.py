"""The deployment templates (infra/, azure.yaml) against the code they deploy and Azure's types.

The Bicep CLI cannot be installed offline, so the templates are parsed with pycep (a Python Bicep
parser) and checked statically: every file parses and every module path resolves; the function,
queue, table and app-setting names the templates declare are exactly those ``function_app.py``,
``gate/config/app_settings.py``, the ledger and the walkthrough's gate.yaml use; every role assignment is
named guid(scope, principal, role), scoped to one resource and its built-in role id commented with
the role's name; the runner identity has exactly its grants; no template holds anything that looks
like a secret; and every property a template sets exists, writable, in the Azure SDK's model of
the same api-version (the SDK packages are pinned in requirements-dev.txt: models we did not
write, generated from the same REST specs as Bicep's types).
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import shutil
import sys
import time
import types
import typing
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import HttpTransport
from pycep import BicepParser

import function_app
from gate.config.app_settings import STORAGE_CONNECTION
from gate.config.loading import load_config
from gate.config.model import AzureLedger
from gate.entrypoints.events import IMAGE_PUSHED

ROOT = Path(__file__).resolve().parents[2]
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
    "12338af0-0e69-4776-bea7-57ae8d297424": "Key Vault Crypto User",
    "f1a07417-d97a-45cb-824c-7a7467783830": "Managed Identity Operator",
    "2a1e307c-b015-4ebd-883e-5b7698a07328": "Container Registry Repository Writer",
    # learn.microsoft.com/azure/role-based-access-control/built-in-roles/containers
    "577a9874-89fd-4f24-9dbd-b5034d0ad23a": "Container Registry Data Importer and Data Reader",
    "7f951dda-4ed3-4680-a7ca-43fe172d538d": "AcrPull",
    "b93aa761-3e63-49ed-ac28-beffa264f7ac": "Container Registry Repository Reader",
}

# App settings that override host.json for the deployed app (functions-host-json, "Override
# host.json values"), with the host.json path each overrides.
HOST_JSON_OVERRIDES = {
    "AzureFunctionsJobHost__extensions__queues__batchSize": ("extensions", "queues", "batchSize"),
    "AzureFunctionsJobHost__extensions__queues__newBatchThreshold": (
        "extensions",
        "queues",
        "newBatchThreshold",
    ),
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
        if operator["type"] == "conditional":
            operands = operator["operands"]
            return (
                f"{render(operands['condition'])} ? {render(operands['true_value'])} : "
                f"{render(operands['false_value'])}"
            )
        if operator["type"] == "not":
            return f"!{render(operator['operands']['bool_value'])}"
        left, right = (render(v) for v in operator["operands"].values())
        separator = {
            "property_accessor": ".",
            "nested_resource_accessor": "::",
            "and": " && ",
            "or": " || ",
        }
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
    """Names ``gate/config/app_settings.py`` reads with ``env.get("NAME", …)``."""
    tree = ast.parse((ROOT / "gate" / "config" / "app_settings.py").read_text(encoding="utf-8"))
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
    (settings,) = (
        r
        for _, r in resources(function)
        if r["type"] == "Microsoft.Web/sites/config" and body(r)["name"] == "appsettings"
    )
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
    expected = (
        (sample - set(LOCAL_ONLY_SETTINGS))
        | identity_based
        | APPLICATION_INSIGHTS_SETTINGS
        | set(HOST_JSON_OVERRIDES)
    )
    assert template_app_settings() == expected


def test_host_json_overrides_name_settings_host_json_has() -> None:
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    platform = variable(bicep("app/function.bicep"), "platformSettings")
    for setting, path in HOST_JSON_OVERRIDES.items():
        # AzureFunctionsJobHost__ then the host.json path, one __ between its parts
        assert setting == "AzureFunctionsJobHost__" + "__".join(path)
        node: Any = host
        for part in path:
            assert part in node, f"host.json has no {'.'.join(path)}"
            node = node[part]
        assert setting in platform


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


def test_function_app_runs_python_3_13_with_the_worker_the_app_ships() -> None:
    for template, where in ((bicep("app/function.bicep"), "app"), (bicep("main.bicep"), "main")):
        parameter = template["parameters"]["pythonVersion"]
        assert parameter["default"] == "3.13", where
        allowed = next(d["argument"] for d in parameter["decorators"] if d["type"] == "allowed")
        assert "3.13" in allowed, where
    assert body(bicep("main.bicep")["modules"]["functionApp"])["params"]["pythonVersion"] == (
        "pythonVersion"
    )
    # from 3.13 the platform no longer brings the worker: the app lists it
    requirements = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    assert re.search(r"^azure-functions-runtime==", requirements, re.MULTILINE)


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


ACR = "Microsoft.ContainerRegistry/registries/"


def test_custom_registry_roles_name_each_operation_and_none_writes_content() -> None:
    permissions = variable(bicep("rbac/registry-access.bicep"), "permissions")
    # the custom roles that remain: no built-in role is narrow enough for these
    assert set(permissions) == {"tagLock", "runner", "downstream"}
    for kind, granted in permissions.items():
        operations = granted["actions"] + granted["dataActions"]
        assert operations, kind
        assert len(set(operations)) == len(operations), kind
        for operation in operations:
            assert operation.startswith(ACR), operation
            assert "*" not in operation, f"{kind}: ACR ignores wildcards in custom roles"
            assert not re.search(r"push/write|content/write|repositories/delete", operation), (
                f"{kind} may write or delete registry content: {operation}"
            )
            # listDetails answers with the secrets of a task or task run: nobody needs them
            assert not operation.endswith("/listDetails/action"), f"{kind}: {operation}"
    assert f"{ACR}taskruns/write" in permissions["runner"]["actions"]
    assert permissions["tagLock"]["actions"] == [f"{ACR}metadata/read", f"{ACR}metadata/write"]
    assert permissions["tagLock"]["dataActions"] == [
        f"{ACR}repositories/metadata/read",
        f"{ACR}repositories/metadata/write",
    ]


def test_runner_role_creates_follows_and_deletes_task_runs() -> None:
    runner = variable(bicep("rbac/registry-access.bicep"), "permissions")["runner"]
    assert {
        f"{ACR}taskruns/write",
        f"{ACR}taskruns/read",
        f"{ACR}taskruns/delete",
        f"{ACR}runs/read",
        f"{ACR}runs/listLogSasUrl/action",
        f"{ACR}runs/cancel/action",
    } <= set(runner["actions"])
    # deleting a task run is the only delete the gate holds, and it deletes no content
    assert [a for a in runner["actions"] if a.endswith("/delete")] == [f"{ACR}taskruns/delete"]
    assert runner["dataActions"] == []
    # validations run as task runs only: a plain quick run would carry no identity
    assert f"{ACR}scheduleRun/action" not in runner["actions"]


def test_downstream_role_queues_runs_of_existing_tasks_only() -> None:
    downstream = variable(bicep("rbac/registry-access.bicep"), "permissions")["downstream"]
    assert set(downstream["actions"]) == {f"{ACR}scheduleRun/action", f"{ACR}tasks/read"}
    assert downstream["dataActions"] == []


def built_in_kinds() -> dict[str, list[str]]:
    """The built-in grant kinds of registry-access.bicep: kind -> role ids it assigns."""
    access = bicep("rbac/registry-access.bicep")
    roles = variable(access, "builtInRoles")
    return {
        kind: [roles[render(ref).split(".", 1)[1]] for ref in refs]
        for kind, refs in variable(access, "builtInKinds").items()
    }


def test_built_in_grant_kinds_assign_the_documented_roles() -> None:
    names = {kind: [BUILTIN_ROLES[r] for r in ids] for kind, ids in built_in_kinds().items()}
    assert names == {
        # named for both ends of an ACR-to-ACR import (container-registry-import-images)
        "importer": ["Container Registry Data Importer and Data Reader"],
        # pull only: AcrPull for "RBAC Registry Permissions" mode, Repository Reader for ABAC mode
        "puller": ["AcrPull", "Container Registry Repository Reader"],
    }
    # built-in and custom kinds do not overlap, so each grant is exactly one of them
    permissions = variable(bicep("rbac/registry-access.bicep"), "permissions")
    assert not set(built_in_kinds()) & set(permissions)


def test_built_in_grants_assign_each_role_of_their_kind_to_the_grants_principal() -> None:
    access = bicep("rbac/registry-access.bicep")
    flattened = variable(access, "builtInGrants")["function"]
    assert flattened["type"] == "flatten"
    mapped = flattened["parameters"]["array_to_flattern"]["function"]["parameters"]
    chosen = mapped["arg_1"]["function"]
    assert chosen["type"] == "filter"
    assert render(chosen["parameters"]["expression"]["detail"]["expression"]) == (
        "contains(builtInKinds, grant.role)"
    )
    per_role = mapped["arg_2"]["detail"]["expression"]["function"]["parameters"]
    assert render(per_role["arg_1"]) == "builtInKinds[grant.role]"
    assert per_role["arg_2"]["detail"]["expression"] == {
        "principalId": {
            "operator": {
                "type": "property_accessor",
                "operands": {"operand_1": "grant", "operand_2": "principalId"},
            }
        },
        "role": "role",
    }
    custom = variable(access, "customGrants")["function"]
    assert custom["type"] == "filter"
    assert (
        render(
            custom["parameters"]["expression"]["detail"]["expression"]["operator"]["operands"][
                "bool_value"
            ]
        )
        == "contains(builtInKinds, grant.role)"
    )
    loops = {
        name: r["config"]["loop_type"]["detail"]["array_name"]
        for name, r in resources(access)
        if r["type"] == "Microsoft.Authorization/roleAssignments"
    }
    assert loops == {
        "assignments": "customGrants",
        "builtInAssignments": "builtInGrants",
        "pushAssignments": "pushGrants",
    }
    assert render(
        body(access["resources"]["builtInAssignments"])["properties"]["roleDefinitionId"]
    ) == ("subscription_resource_id(Microsoft.Authorization/roleDefinitions, grant.role)")


def test_gate_imports_with_the_documented_role_on_the_source_and_the_target() -> None:
    gate = "identity.outputs.principalId"
    grants = {(module, role) for module, who, role in registry_grants() if who == gate}
    assert {("upstreamAccess", "importer"), ("baseAccess", "importer")} <= grants
    # locking the run-ID tag is the one base-artifacts right no built-in role has without push
    assert ("baseAccess", "tagLock") in grants
    assert grants == {
        ("upstreamAccess", "importer"),
        ("baseAccess", "importer"),
        ("baseAccess", "tagLock"),
        ("runnerAccess", "runner"),
        ("downstreamAccess", "downstream"),
    }


def test_an_identity_a_candidate_can_use_only_pulls() -> None:
    # validation runs (and the walkthrough's hello-world task) run code we did not write: their
    # identities get the pull-only kind, never the importer one
    for module, who, role in registry_grants():
        if who != "identity.outputs.principalId":
            assert role == "puller", (module, who, role)
    assert "577a9874-89fd-4f24-9dbd-b5034d0ad23a" not in built_in_kinds()["puller"]


def test_every_role_assignment_names_its_principal_type_and_custom_ones_wait_for_their_role() -> (
    None
):
    for where, name, assignment in role_assignments():
        # set on every assignment: a just-created identity is otherwise "not found" while it
        # replicates (role-based-access-control/troubleshooting, PrincipalNotFound)
        assert assignment["properties"]["principalType"] == "ServicePrincipal", f"{where}: {name}"
    custom = body(bicep("rbac/registry-access.bicep")["resources"]["assignments"])
    assert custom["dependsOn"] == ["definitions"]
    assert render(custom["properties"]["roleDefinitionId"]) == (
        "subscription_resource_id(Microsoft.Authorization/roleDefinitions, roleGuids[grant.role])"
    )


def test_deploy_docs_explain_every_role_the_templates_grant() -> None:
    page = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    section = page[page.index("# Deploying to Azure") :]
    for name in BUILTIN_ROLES.values():
        assert name in section, name
    for kind in variable(bicep("rbac/registry-access.bicep"), "permissions"):
        assert f"Gated import {kind}" in section, kind


# -- the runner identity -------------------------------------------------------------------


def dicts_in(value: Any) -> Iterator[dict[str, Any]]:
    """Every mapping inside a parsed value, also inside function arguments and conditionals."""
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from dicts_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from dicts_in(item)


def registry_grants() -> list[tuple[str, str, str]]:
    """(module, principal, role) of every custom-role grant main.bicep asks a registry for."""
    found = []
    for name, module in bicep("main.bicep")["modules"].items():
        if module["detail"]["path"] != "rbac/registry-access.bicep":
            continue
        for grant in dicts_in(body(module)["params"].get("grants")):
            if {"principalId", "role"} <= set(grant):
                found.append((name, render(grant["principalId"]), grant["role"]))
    return found


def test_validation_runs_have_a_user_assigned_identity_of_their_own() -> None:
    main = bicep("main.bicep")
    module = main["modules"]["runnerIdentity"]
    assert module["detail"]["path"] == "core/identity.bicep"
    assert body(module)["params"]["name"] == "id-runner-${token}"
    assert body(main["modules"]["identity"])["params"]["name"] == "id-gate-${token}"
    (identity,) = (r for _, r in resources(bicep("core/identity.bicep")))
    assert identity["type"] == "Microsoft.ManagedIdentity/userAssignedIdentities"
    # the runner registry has no identity any more: a quick run could not use it
    assert "systemIdentity" not in body(main["modules"]["runner"])["params"]
    (registry,) = (r for _, r in resources(bicep("core/registry.bicep")))
    assert "identity" not in body(registry)


def test_runner_identity_reads_upstream_and_the_vault_and_nothing_else() -> None:
    main = bicep("main.bicep")
    principal = "runnerIdentity.outputs.principalId"
    # one registry grant, the gate-access parameter and the monitoring parameter that leaves it
    # out of the foreign-secret-read alert: no other place names its principal
    assert (INFRA / "main.bicep").read_text(encoding="utf-8").count(principal) == 3
    monitoring = body(main["modules"]["monitoring"])["params"]
    assert render(monitoring["runnerPrincipalId"]) == principal
    assert not [
        r
        for _, r in resources(bicep("core/monitoring.bicep"))
        if r["type"] == "Microsoft.Authorization/roleAssignments"
    ]
    runner_grants = [(m, role) for m, who, role in registry_grants() if who == principal]
    assert runner_grants == [("upstreamAccess", "puller")]
    assert render(body(main["modules"]["gateAccess"])["params"]["runnerPrincipalId"]) == principal

    granted = [
        (name, render(a["scope"]), render(a["properties"]["roleDefinitionId"]))
        for where, name, a in role_assignments()
        if where == "rbac/gate-access.bicep"
        and render(a["properties"]["principalId"]) == "runnerPrincipalId"
    ]
    assert granted == [
        (
            "runnerSecrets",
            "vault::upstreamCredentials[i]",
            "subscription_resource_id(Microsoft.Authorization/roleDefinitions, "
            "roles.keyVaultSecretsUser)",
        )
    ]


def test_runner_identity_holds_no_vault_wide_role() -> None:
    # every step of a task run can use its identity, the candidate's included: a grant on the
    # vault would hand it every secret
    for where, name, assignment in role_assignments():
        if render(assignment["properties"]["principalId"]) == "runnerPrincipalId":
            assert render(assignment["scope"]) != "vault", f"{where}: {name}"
            assert render(assignment["scope"]).startswith("vault::"), f"{where}: {name}"


def test_runner_reads_one_secret_per_listed_name_each_by_its_own_assignment() -> None:
    access = bicep("rbac/gate-access.bicep")
    assert access["parameters"]["runnerSecretNames"]["default"] == []
    secrets = access["resources"]["vault__upstreamCredentials"]
    assert secrets["type"] == "Microsoft.KeyVault/vaults/secrets" and secrets["existing"]
    loop = secrets["config"]["loop_type"]["detail"]
    assert (loop["array_name"], loop["item_name"]) == ("runnerSecretNames", "name")
    assert body(secrets)["name"] == "name"

    grants = access["resources"]["runnerSecrets"]["config"]
    # one assignment per listed name, the i-th on the i-th secret
    assert grants["loop_type"]["type"] == "array_index"
    assert grants["loop_type"]["detail"]["array_name"] == "runnerSecretNames"
    assert grants["condition"] is None
    index = grants["loop_type"]["detail"]["index_name"]
    assignment = body(access["resources"]["runnerSecrets"])
    assert render(assignment["scope"]) == f"vault::upstreamCredentials[{index}]"
    assert render(assignment["name"]) == (
        f"guid(vault::upstreamCredentials[{index}].id, runnerPrincipalId, "
        "roles.keyVaultSecretsUser)"
    )
    assert variable(access, "roles")["keyVaultSecretsUser"] == (
        "4633458b-17de-408a-b874-0445c86b69e6"
    )

    main = bicep("main.bicep")
    assert main["parameters"]["runnerSecretNames"]["default"] == []
    params = body(main["modules"]["gateAccess"])["params"]
    assert params["runnerSecretNames"] == "runnerSecretNames"
    given = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))
    assert given["parameters"]["runnerSecretNames"] == {"value": []}


def test_deploy_docs_list_the_secret_names_and_say_the_vault_outlives_azd_down() -> None:
    page = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    parameters = page[page.index("## Parameters") : page.index("## Roles, and why each is needed")]
    assert "| `runnerSecretNames` |" in parameters
    (vault,) = (
        body(r)
        for _, r in resources(bicep("core/keyvault.bicep"))
        if r["type"] == "Microsoft.KeyVault/vaults"
    )
    assert vault["properties"]["enablePurgeProtection"] is True
    teardown = page[page.index("## Teardown") :]
    assert "purge protection" in teardown and "getKeyVaultsToPurge" in teardown
    retention = vault["properties"]["softDeleteRetentionInDays"]
    assert f"`softDeleteRetentionInDays` ({retention}" in teardown


def test_the_app_keeps_its_vault_wide_secrets_grant_for_its_own_code() -> None:
    granted = [
        (name, render(a["scope"]))
        for where, name, a in role_assignments()
        if "keyVaultSecretsUser" in render(a["properties"]["roleDefinitionId"])
    ]
    assert sorted(granted) == [
        ("appSecrets", "vault"),
        ("runnerSecrets", "vault::upstreamCredentials[i]"),
    ]


def test_gate_may_attach_the_runner_identity_and_no_other() -> None:
    operator = "f1a07417-d97a-45cb-824c-7a7467783830"
    access = bicep("rbac/gate-access.bicep")
    assert variable(access, "roles")["managedIdentityOperator"] == operator
    uses = [
        (where, name, a)
        for where, name, a in role_assignments()
        if "managedIdentityOperator" in render(a["properties"]["roleDefinitionId"])
        or operator in json.dumps(a)
    ]
    assert [(where, name) for where, name, _ in uses] == [
        ("rbac/gate-access.bicep", "appAttachesRunner")
    ]
    (_, _, assignment) = uses[0]
    assert render(assignment["properties"]["principalId"]) == "appPrincipalId"
    assert assignment["scope"] == "runnerIdentity"
    target = access["resources"]["runnerIdentity"]
    assert target["type"] == "Microsoft.ManagedIdentity/userAssignedIdentities"
    assert target["existing"] and body(target)["name"] == "runnerIdentityName"
    params = body(bicep("main.bicep")["modules"]["gateAccess"])["params"]
    assert render(params["runnerIdentityName"]) == "runnerIdentity.outputs.name"
    assert render(params["appPrincipalId"]) == "identity.outputs.principalId"


def test_the_app_signs_with_the_attestation_key_and_has_crypto_rights_on_nothing_else() -> None:
    vault = bicep("core/keyvault.bicep")
    [key] = [r for _, r in resources(vault) if r["type"] == "Microsoft.KeyVault/vaults/keys"]
    properties = body(key)["properties"]
    assert properties["kty"] == "EC" and properties["curveName"] == "P-256"
    assert sorted(properties["keyOps"]) == ["sign", "verify"]
    uses = [
        (where, n, a)
        for where, n, a in role_assignments()
        if "keyVaultCryptoUser" in render(a["properties"]["roleDefinitionId"])
    ]
    assert [(where, n) for where, n, _ in uses] == [
        ("rbac/gate-access.bicep", "appSignsAttestations")
    ]
    (_, _, assignment) = uses[0]
    assert render(assignment["properties"]["principalId"]) == "appPrincipalId"
    assert render(assignment["scope"]) == "vault::attestationKey"
    params = body(bicep("main.bicep")["modules"]["gateAccess"])["params"]
    assert render(params["attestationKeyName"]) == "keyVault.outputs.attestationKeyName"


def test_app_settings_name_the_runner_identity_and_every_resource_setting_is_an_output() -> None:
    main = bicep("main.bicep")
    settings = variable(main, "appSettings")
    assert render(settings["GATE_RUNNER_IDENTITY_RESOURCE_ID"]) == "runnerIdentity.outputs.id"
    assert render(settings["GATE_RUNNER_IDENTITY_CLIENT_ID"]) == "runnerIdentity.outputs.clientId"
    assert settings["GATE_PROMOTE_MODE"] == "promoteMode"
    outputs = main["outputs"]
    for name in set(settings) - settings_the_code_reads() - {"GATE_WATCH_SCHEDULE"}:
        assert name in outputs, f"{name} is an app setting but no azd output"
        assert render(outputs[name]["value"]) == f"appSettings.{name}", name


# -- diagnostic settings into the workspace -------------------------------------------------

DIAGNOSTIC_SETTINGS = "Microsoft.Insights/diagnosticSettings"


def diagnostic_settings(relative: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, declaration, body) of every diagnostic setting of ``infra/<relative>``."""
    return [
        (name, r, body(r))
        for name, r in resources(bicep(relative))
        if r["type"] == DIAGNOSTIC_SETTINGS
    ]


def logged_categories(setting: dict[str, Any]) -> list[str]:
    logs = setting["properties"]["logs"]
    assert all(entry["enabled"] is True for entry in logs)
    assert all("categoryGroup" not in entry for entry in logs)
    return [entry["category"] for entry in logs]


def test_every_diagnostic_setting_writes_to_the_workspace_in_resource_specific_tables() -> None:
    found = 0
    for path in BICEP_FILES:
        relative = path.relative_to(INFRA).as_posix()
        for name, _, setting in diagnostic_settings(relative):
            found += 1
            properties = setting["properties"]
            assert properties["workspaceId"] == "workspaceId", f"{relative}: {name}"
            # the alert queries AZKVAuditLogs, not AzureDiagnostics
            assert properties["logAnalyticsDestinationType"] == "Dedicated", f"{relative}: {name}"
            assert not {"storageAccountId", "eventHubAuthorizationRuleId"} & set(properties)
            assert setting["name"] == "gate-audit", f"{relative}: {name}"
    assert found == 3


def test_the_vault_sends_its_audit_events_to_the_workspace() -> None:
    ((_, declaration, setting),) = diagnostic_settings("core/keyvault.bicep")
    assert not declaration["config"].get("condition")
    assert setting["scope"] == "vault"
    assert logged_categories(setting) == ["AuditEvent"]
    vault = body(bicep("main.bicep")["modules"]["keyVault"])["params"]
    assert render(vault["workspaceId"]) == "monitoring.outputs.workspaceId"


def test_every_registry_the_gate_touches_sends_login_and_repository_events() -> None:
    ((_, declaration, setting),) = diagnostic_settings("rbac/registry-access.bicep")
    # if (!empty(workspaceId)): a caller that passes no workspace gets no setting
    condition = declaration["config"]["condition"]["operator"]
    assert condition["type"] == "not"
    assert render(condition["operands"]["bool_value"]) == "empty(workspaceId)"
    assert setting["scope"] == "registry"
    assert logged_categories(setting) == [
        "ContainerRegistryLoginEvents",
        "ContainerRegistryRepositoryEvents",
    ]
    modules = {
        name: body(module)["params"]
        for name, module in bicep("main.bicep")["modules"].items()
        if module["detail"]["path"] == "rbac/registry-access.bicep"
    }
    assert set(modules) == {"upstreamAccess", "baseAccess", "runnerAccess", "downstreamAccess"}
    for name, params in modules.items():
        assert render(params["workspaceId"]) == "monitoring.outputs.workspaceId", name


def test_the_upstream_topic_sends_its_delivery_failures() -> None:
    relative = "app/upstream-topic-diagnostics.bicep"
    ((_, declaration, setting),) = diagnostic_settings(relative)
    assert not declaration["config"].get("condition")
    assert setting["scope"] == "topic"
    assert logged_categories(setting) == ["DeliveryFailures"]
    topic = bicep(relative)["resources"]["topic"]
    assert topic["type"] == "Microsoft.EventGrid/systemTopics" and topic["existing"]
    module = bicep("main.bicep")["modules"]["upstreamTopicDiagnostics"]
    assert module["detail"]["path"] == relative
    assert render(module["config"]["condition"]) == "hasUpstream"
    params = body(module)["params"]
    assert render(params["topicName"]) == "upstreamTopic.outputs.name"
    assert render(params["workspaceId"]) == "monitoring.outputs.workspaceId"
    assert render(bicep("core/monitoring.bicep")["outputs"]["workspaceId"]["value"]) == (
        "workspace.id"
    )


def test_a_secret_read_by_anyone_but_the_gate_and_the_runner_raises_an_alert() -> None:
    monitoring = bicep("core/monitoring.bicep")
    alerts = {a["name"]: a for a in variable(monitoring, "logAlerts")}
    alert = alerts["gate-foreign-secret-read"]
    # the vault's audit log is in the workspace, the gate's own lines in Application Insights
    assert render(alert["scope"]) == "workspace.id"
    assert {render(a["scope"]) for n, a in alerts.items() if n != "gate-foreign-secret-read"} == {
        "insights.id"
    }
    assert alert["dimensions"] == ["caller"]
    assert alert["prelude"] == "gateCallers"
    prelude = variable(monitoring, "gateCallers")
    assert prelude.startswith("let gateCallers = dynamic([")
    assert "${gatePrincipalId}" in prelude and "${runnerPrincipalId}" in prelude
    rule = body(monitoring["resources"]["alerts"])["properties"]
    assert [render(scope) for scope in rule["scopes"]] == ["alert.scope"]
    (criterion,) = rule["criteria"]["allOf"]
    assert criterion["query"] == "${alert.prelude}${alert.query}"
    params = body(bicep("main.bicep")["modules"]["monitoring"])["params"]
    assert render(params["gatePrincipalId"]) == "identity.outputs.principalId"
    assert render(params["runnerPrincipalId"]) == "runnerIdentity.outputs.principalId"

    query = (INFRA / "queries" / "alert-foreign-secret-read.kql").read_text(encoding="utf-8")
    lines = [line for line in query.splitlines() if not line.startswith("//")]
    # the table the vault's Dedicated AuditEvent setting writes
    assert lines[0] == "AZKVAuditLogs"
    assert '| where OperationName == "SecretGet"' in lines
    assert "| where caller !in (gateCallers) or HttpStatusCode == 403" in lines


# -- promotion by push, downstream tasks, the walkthrough's gate.yaml -----------------------


def test_promote_mode_is_import_by_default_and_becomes_an_app_setting() -> None:
    parameter = bicep("main.bicep")["parameters"]["promoteMode"]
    assert parameter["default"] == "import"
    allowed = next(d["argument"] for d in parameter["decorators"] if d["type"] == "allowed")
    assert set(allowed) == {"import", "push"}


def test_push_mode_grants_repository_writer_on_the_promoted_repositories_only() -> None:
    main = bicep("main.bicep")
    push_mode = variable(main, "pushMode")["operator"]
    assert push_mode["type"] == "equals"
    assert tuple(push_mode["operands"].values()) == ("promoteMode", "push")
    push = body(main["modules"]["baseAccess"])["params"]["pushGrants"]["operator"]["operands"]
    assert push["condition"] == "pushMode"
    assert push["false_value"] == []
    ((grant),) = push["true_value"]
    assert render(grant["principalId"]) == "identity.outputs.principalId"
    assert grant["repositories"] == "promotedRepositories"

    access = bicep("rbac/registry-access.bicep")
    writer = variable(access, "builtInRoles")["repositoryWriter"]
    assert BUILTIN_ROLES[writer] == "Container Registry Repository Writer"
    assignment = body(access["resources"]["pushAssignments"])
    properties = assignment["properties"]
    assert render(properties["roleDefinitionId"]).endswith("builtInRoles.repositoryWriter)")
    assert properties["conditionVersion"] == "2.0"
    # ((no Writer data action) OR (the repository is one of the promoted ones)), per repository
    assert variable(access, "writerDataActions") == [
        f"{ACR}repositories/content/read",
        f"{ACR}repositories/content/write",
        f"{ACR}repositories/metadata/read",
        f"{ACR}repositories/metadata/write",
    ]
    guard = variable(access, "actionGuard")["function"]["parameters"]
    assert guard["delimiter"] == " AND "
    assert guard["input_array"]["function"]["parameters"]["arg_2"]["detail"]["expression"] == (
        "!(ActionMatches{\\'${action}\\'})"
    )
    assert variable(access, "repositoryIs") == (
        "@Request[Microsoft.ContainerRegistry/registries/repositories:name] "
        "StringEqualsIgnoreCase \\'{0}\\'"
    )
    condition = properties["condition"]["function"]["parameters"]
    assert (condition["format_string"], condition["arg_1"]) == ("(({0}) OR ({1}))", "actionGuard")
    repositories = condition["arg_2"]["function"]["parameters"]
    assert repositories["delimiter"] == " OR "
    each = repositories["input_array"]["function"]["parameters"]
    assert render(each["arg_1"]) == "grant.repositories"
    assert render(each["arg_2"]["detail"]["expression"]) == "format(repositoryIs, repository)"


def test_walkthrough_base_artifacts_evaluates_repository_conditions_in_push_mode() -> None:
    mode = body(bicep("main.bicep")["modules"]["walkthrough"])["params"][
        "baseArtifactsRoleAssignmentMode"
    ]["operator"]["operands"]
    assert mode["condition"] == "pushMode"
    assert (mode["true_value"], mode["false_value"]) == (
        "AbacRepositoryPermissions",
        "LegacyRegistryPermissions",
    )
    walkthrough = bicep("walkthrough/walkthrough.bicep")
    params = body(walkthrough["modules"]["baseArtifacts"])["params"]
    assert params["roleAssignmentMode"] == "baseArtifactsRoleAssignmentMode"
    (registry,) = (r for _, r in resources(bicep("core/registry.bicep")))
    assert body(registry)["properties"]["roleAssignmentMode"] == "roleAssignmentMode"


def test_gate_may_run_the_downstream_registrys_tasks() -> None:
    assert ("downstreamAccess", "identity.outputs.principalId", "downstream") in registry_grants()
    roles = [role for module, _, role in registry_grants() if module == "downstreamAccess"]
    assert roles == ["downstream"]
    settings = variable(bicep("main.bicep"), "appSettings")
    assert render(settings["GATE_DOWNSTREAM_REGISTRY"]) == "hasDownstream ? downstream.name : "
    assert render(settings["GATE_DOWNSTREAM_RESOURCE_GROUP"]) == (
        "hasDownstream ? downstream.resourceGroup : "
    )


WALKTHROUGH_GATE = INFRA / "walkthrough" / "gate.yaml"


def test_walkthrough_gate_yaml_reads_only_settings_the_deployment_sets() -> None:
    referenced = set(re.findall(r"\$\{(\w+)", WALKTHROUGH_GATE.read_text(encoding="utf-8")))
    assert {"GATE_RUNNER_IDENTITY_RESOURCE_ID", "GATE_RUNNER_IDENTITY_CLIENT_ID"} <= referenced
    assert referenced <= set(variable(bicep("main.bicep"), "appSettings"))


def test_walkthrough_gate_yaml_loads_with_the_deployed_settings(tmp_path: Path) -> None:
    shutil.copy(WALKTHROUGH_GATE, tmp_path / "gate.yaml")
    shutil.copytree(ROOT / "examples" / "seed" / "validation", tmp_path / "validation")
    sub = "00000000-0000-0000-0000-000000000000"
    group = f"/subscriptions/{sub}/resourceGroups"
    env = {
        "GATE_SUBSCRIPTION_ID": sub,
        "GATE_PROMOTE_MODE": "push",
        "GATE_REGISTRY_NAME": "baseartifactsabc",
        "GATE_REGISTRY_RESOURCE_GROUP": "rg-dev-walkthrough",
        "GATE_REGISTRY_LOGIN_SERVER": "baseartifactsabc.azurecr.io",
        "GATE_RUNNER_REGISTRY_NAME": "gaterunnerabc",
        "GATE_RUNNER_RESOURCE_GROUP": "rg-dev",
        "GATE_RUNNER_IDENTITY_RESOURCE_ID": f"{group}/rg-dev/providers/"
        "Microsoft.ManagedIdentity/userAssignedIdentities/id-runner-abc",
        "GATE_RUNNER_IDENTITY_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
        "GATE_KEY_VAULT_URL": "https://kv-abc.vault.azure.net",
        "GATE_TABLE_ENDPOINT": "https://stabc.table.core.windows.net",
        "GATE_UPSTREAM_LOGIN_SERVER": "publicabc.azurecr.io",
        "GATE_UPSTREAM_REGISTRY_ID": f"{group}/rg-dev-walkthrough/providers/"
        "Microsoft.ContainerRegistry/registries/publicabc",
        "GATE_DOWNSTREAM_REGISTRY": "contosoabc",
        "GATE_DOWNSTREAM_RESOURCE_GROUP": "rg-dev-walkthrough",
    }
    config = load_config(tmp_path / "gate.yaml", env)
    assert config.azure is not None and config.azure.runner_identity is not None
    assert config.azure.runner_identity.resource_id == env["GATE_RUNNER_IDENTITY_RESOURCE_ID"]
    assert config.azure.runner_identity.client_id == env["GATE_RUNNER_IDENTITY_CLIENT_ID"]
    assert config.azure.registry.promote == "push"
    assert config.azure.runner.name == "gaterunnerabc"
    (rule,) = config.rules
    (task,) = rule.downstream
    hello_world = body(bicep("walkthrough/hello-world.bicep")["resources"]["helloWorld"])
    assert (task.task, task.registry, task.resource_group) == (
        hello_world["name"],
        "contosoabc",
        "rg-dev-walkthrough",
    )
    # without GATE_PROMOTE_MODE the walkthrough imports
    del env["GATE_PROMOTE_MODE"]
    imported = load_config(tmp_path / "gate.yaml", env).azure
    assert imported is not None and imported.registry.promote == "import"


# -- every property a template sets exists in the Azure SDK's model of its api-version ------
#
# For each resource type: the SDK client and a GET whose request carries the api-version the
# package speaks (read off the request the real client builds, not off a constant we copied),
# and the model of the PUT body. Bicep's types and the SDK models are generated from the same
# REST specs, so a property the model lacks (or marks read-only) is one ARM ignores or refuses.

SDK_MODELS: dict[str, tuple[str, Callable[[Any], Any], str]] = {
    "Microsoft.Resources/resourceGroups": (
        "azure.mgmt.resource.resources.ResourceManagementClient",
        lambda c: c.resource_groups.get("rg"),
        "azure.mgmt.resource.resources.models.ResourceGroup",
    ),
    "Microsoft.ManagedIdentity/userAssignedIdentities": (
        "azure.mgmt.msi.v2024_11_30.ManagedServiceIdentityClient",
        lambda c: c.user_assigned_identities.get("rg", "id"),
        "azure.mgmt.msi.v2024_11_30.models.Identity",
    ),
    "Microsoft.OperationalInsights/workspaces": (
        "azure.mgmt.loganalytics.LogAnalyticsManagementClient",
        lambda c: c.workspaces.get("rg", "log"),
        "azure.mgmt.loganalytics.models.Workspace",
    ),
    "Microsoft.Insights/components": (
        "azure.mgmt.applicationinsights.v2020_02_02.ApplicationInsightsManagementClient",
        lambda c: c.components.get("rg", "appi"),
        "azure.mgmt.applicationinsights.v2020_02_02.models.ApplicationInsightsComponent",
    ),
    "Microsoft.Insights/workbooks": (
        "azure.mgmt.applicationinsights.v2023_06_01.ApplicationInsightsManagementClient",
        lambda c: c.workbooks.get("rg", "00000000-0000-0000-0000-000000000000"),
        "azure.mgmt.applicationinsights.v2023_06_01.models.Workbook",
    ),
    "Microsoft.Insights/scheduledQueryRules": (
        "azure.mgmt.monitor.MonitorManagementClient",
        lambda c: c.scheduled_query_rules.get("rg", "rule"),
        "azure.mgmt.monitor.models.ScheduledQueryRuleResource",
    ),
    "Microsoft.Insights/metricAlerts": (
        "azure.mgmt.monitor.MonitorManagementClient",
        lambda c: c.metric_alerts.get("rg", "rule"),
        "azure.mgmt.monitor.models.MetricAlertResource",
    ),
    "Microsoft.Storage/storageAccounts": (
        "azure.mgmt.storage.StorageManagementClient",
        lambda c: c.storage_accounts.get_properties("rg", "st"),
        "azure.mgmt.storage.models.StorageAccountCreateParameters",
    ),
    "Microsoft.Storage/storageAccounts/blobServices": (
        "azure.mgmt.storage.StorageManagementClient",
        lambda c: c.blob_services.get_service_properties("rg", "st"),
        "azure.mgmt.storage.models.BlobServiceProperties",
    ),
    "Microsoft.Storage/storageAccounts/blobServices/containers": (
        "azure.mgmt.storage.StorageManagementClient",
        lambda c: c.blob_containers.get("rg", "st", "c"),
        "azure.mgmt.storage.models.BlobContainer",
    ),
    "Microsoft.Storage/storageAccounts/queueServices": (
        "azure.mgmt.storage.StorageManagementClient",
        lambda c: c.queue_services.get_service_properties("rg", "st"),
        "azure.mgmt.storage.models.QueueServiceProperties",
    ),
    "Microsoft.Storage/storageAccounts/queueServices/queues": (
        "azure.mgmt.storage.StorageManagementClient",
        lambda c: c.queue.get("rg", "st", "q"),
        "azure.mgmt.storage.models.StorageQueue",
    ),
    "Microsoft.Storage/storageAccounts/tableServices": (
        "azure.mgmt.storage.StorageManagementClient",
        lambda c: c.table_services.get_service_properties("rg", "st"),
        "azure.mgmt.storage.models.TableServiceProperties",
    ),
    "Microsoft.Storage/storageAccounts/tableServices/tables": (
        "azure.mgmt.storage.StorageManagementClient",
        lambda c: c.table.get("rg", "st", "t"),
        "azure.mgmt.storage.models.Table",
    ),
    "Microsoft.KeyVault/vaults": (
        "azure.mgmt.keyvault.KeyVaultManagementClient",
        lambda c: c.vaults.get("rg", "kv"),
        "azure.mgmt.keyvault.models.VaultCreateOrUpdateParameters",
    ),
    # referenced only (`existing`): the secrets the runner identity may read
    "Microsoft.KeyVault/vaults/secrets": (
        "azure.mgmt.keyvault.KeyVaultManagementClient",
        lambda c: c.secrets.get("rg", "kv", "secret"),
        "azure.mgmt.keyvault.models.SecretCreateOrUpdateParameters",
    ),
    "Microsoft.KeyVault/vaults/keys": (
        "azure.mgmt.keyvault.KeyVaultManagementClient",
        lambda c: c.keys.get("rg", "kv", "key"),
        "azure.mgmt.keyvault.models.KeyCreateParameters",
    ),
    "Microsoft.ContainerRegistry/registries": (
        "azure.mgmt.containerregistry.ContainerRegistryManagementClient",
        lambda c: c.registries.get("rg", "registry"),
        "azure.mgmt.containerregistry.models.Registry",
    ),
    "Microsoft.ContainerRegistry/registries/tasks": (
        "azure.mgmt.containerregistrytasks.ContainerRegistryTasksMgmtClient",
        lambda c: c.tasks.get("rg", "registry", "task"),
        "azure.mgmt.containerregistrytasks.models.Task",
    ),
    "Microsoft.Web/serverfarms": (
        "azure.mgmt.web.WebSiteManagementClient",
        lambda c: c.app_service_plans.get("rg", "plan"),
        "azure.mgmt.web.models.AppServicePlan",
    ),
    "Microsoft.Web/sites": (
        "azure.mgmt.web.WebSiteManagementClient",
        lambda c: c.web_apps.get("rg", "app"),
        "azure.mgmt.web.models.Site",
    ),
    "Microsoft.Web/sites/config": (  # name 'appsettings'
        "azure.mgmt.web.WebSiteManagementClient",
        lambda c: c.web_apps.list_application_settings("rg", "app"),
        "azure.mgmt.web.models.StringDictionary",
    ),
    # the config resource's name picks its body: model_key() names these by type/name
    "Microsoft.Web/sites/config/authsettingsV2": (
        "azure.mgmt.web.WebSiteManagementClient",
        lambda c: c.web_apps.get_auth_settings_v2("rg", "app"),
        "azure.mgmt.web.models.SiteAuthSettingsV2",
    ),
    "Microsoft.EventGrid/systemTopics": (
        "azure.mgmt.eventgrid.EventGridManagementClient",
        lambda c: c.system_topics.get("rg", "topic"),
        "azure.mgmt.eventgrid.models.SystemTopic",
    ),
    "Microsoft.EventGrid/systemTopics/eventSubscriptions": (
        "azure.mgmt.eventgrid.EventGridManagementClient",
        lambda c: c.system_topic_event_subscriptions.get("rg", "topic", "subscription"),
        "azure.mgmt.eventgrid.models.EventSubscription",
    ),
    "Microsoft.Authorization/roleAssignments": (
        "azure.mgmt.authorization.v2022_04_01.AuthorizationManagementClient",
        lambda c: c.role_assignments.get("/subscriptions/s", "a"),
        "azure.mgmt.authorization.v2022_04_01.models.RoleAssignmentCreateParameters",
    ),
    "Microsoft.Authorization/roleDefinitions": (
        "azure.mgmt.authorization.v2022_04_01.AuthorizationManagementClient",
        lambda c: c.role_definitions.get("/subscriptions/s", "d"),
        "azure.mgmt.authorization.v2022_04_01.models.RoleDefinition",
    ),
}

# Bicep's own keywords of a resource body, and `name`, which is the URL, not the body
BICEP_KEYWORDS = frozenset({"name", "parent", "scope", "dependsOn", "depends_on"})


class _Sent(Exception):
    """Not an error: how the recording transport stops a call once the request is built."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


class _RecordingTransport(HttpTransport):
    """Stops a request at the wire and hands back its URL: nothing leaves the machine."""

    def __enter__(self) -> _RecordingTransport:
        return self

    def __exit__(self, *args: object) -> None:
        pass

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, request: Any, **kwargs: Any) -> Any:
        raise _Sent(request.url)


class _Credential:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("test-token", int(time.time()) + 3600)


def api_version_the_sdk_sends(resource_type: str) -> str:
    client_path, call, _ = SDK_MODELS[resource_type]
    module, name = client_path.rsplit(".", 1)
    client = getattr(importlib.import_module(module), name)(
        _Credential(), "00000000-0000-0000-0000-000000000000", transport=_RecordingTransport()
    )
    with pytest.raises(_Sent) as sent:
        call(client)
    return parse_qs(urlsplit(sent.value.url).query)["api-version"][0]


LEAF = "leaf"
_MSREST_PRIMITIVES = {
    "str", "bool", "int", "long", "float", "decimal", "object", "iso-8601", "rfc-1123",
    "duration", "date", "time", "unix-time", "bytearray", "base64",
}  # fmt: skip


# Types no pinned SDK package models: azure-mgmt-monitor 7.0.0 has no diagnostic settings. Their
# body is written out here from Bicep's types of the api-version the templates use
# (Azure/bicep-types-az, generated/monitor/microsoft.insights/2021-05-01-preview/types.md:
# DiagnosticSettings, LogSettings, MetricSettings, RetentionPolicy), in the nodes model_fields()
# reads, and checked the same way. A pinned SDK with these models should replace this.
_RETENTION = ("object", {"days": (LEAF, False), "enabled": (LEAF, False)})
SPEC_MODELS: dict[str, tuple[str, Any]] = {
    "Microsoft.Insights/diagnosticSettings": (
        "2021-05-01-preview",
        (
            "object",
            {
                "properties": (
                    (
                        "object",
                        {
                            "eventHubAuthorizationRuleId": (LEAF, False),
                            "eventHubName": (LEAF, False),
                            "logAnalyticsDestinationType": (LEAF, False),
                            "logs": (
                                (
                                    "list",
                                    (
                                        "object",
                                        {
                                            "category": (LEAF, False),
                                            "categoryGroup": (LEAF, False),
                                            "enabled": (LEAF, False),
                                            "retentionPolicy": (_RETENTION, False),
                                        },
                                    ),
                                ),
                                False,
                            ),
                            "marketplacePartnerId": (LEAF, False),
                            "metrics": (
                                (
                                    "list",
                                    (
                                        "object",
                                        {
                                            "category": (LEAF, False),
                                            "enabled": (LEAF, False),
                                            "retentionPolicy": (_RETENTION, False),
                                            "timeGrain": (LEAF, False),
                                        },
                                    ),
                                ),
                                False,
                            ),
                            "serviceBusRuleId": (LEAF, False),
                            "storageAccountId": (LEAF, False),
                            "workspaceId": (LEAF, False),
                        },
                    ),
                    False,
                ),
            },
        ),
    ),
}


def _models_package(cls: type) -> Any:
    return importlib.import_module(cls.__module__.rsplit(".", 1)[0])


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and (
        hasattr(value, "_attribute_map")
        or any(hasattr(f, "_rest_name_input") for k in value.__mro__ for f in vars(k).values())
    )


def _msrest_node(cls: type, spec: str) -> Any:
    """An msrest ``_attribute_map`` type ('[X]', '{X}', 'str', a model name) as a node."""
    if spec.startswith("[") and spec.endswith("]"):
        return ("list", _msrest_node(cls, spec[1:-1]))
    if spec.startswith("{") and spec.endswith("}"):
        return ("map", _msrest_node(cls, spec[1:-1]))
    if spec in _MSREST_PRIMITIVES:
        return LEAF
    found = getattr(sys.modules[cls.__module__], spec, None) or getattr(
        _models_package(cls), spec, None
    )
    return found if _is_model(found) else LEAF


def _annotation_node(cls: type, annotation: Any) -> Any:
    """A ``rest_field``'s annotation (Optional["_models.X"], list[...], dict[str, ...]) as a node."""
    if isinstance(annotation, str):
        annotation = typing.ForwardRef(annotation)
    if isinstance(annotation, typing.ForwardRef):
        name = annotation.__forward_arg__.split(".")[-1]
        annotation = getattr(_models_package(cls), name, LEAF)
    if _is_model(annotation):
        return annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list:
        return ("list", _annotation_node(cls, args[0]))
    if origin is dict:
        return ("map", _annotation_node(cls, args[1]))
    if origin in (typing.Union, types.UnionType):
        models = [n for a in args if (n := _annotation_node(cls, a)) != LEAF]
        return models[0] if len(models) == 1 else LEAF
    return LEAF


def model_fields(node: Any) -> dict[str, tuple[Any, bool]]:
    """The JSON properties of a model: name -> (node, read-only)."""
    if isinstance(node, tuple) and node[0] == "object":
        return dict(node[1])
    fields: dict[str, tuple[Any, bool]] = {}
    if hasattr(node, "_attribute_map"):  # msrest models; 'properties.x' keys are flattened
        readonly = {
            a for a, rule in getattr(node, "_validation", {}).items() if rule.get("readonly")
        }
        for attr, spec in node._attribute_map.items():
            *outer, last = (p.replace("\\.", ".") for p in re.split(r"(?<!\\)\.", spec["key"]))
            level = fields
            for part in outer:
                level = level.setdefault(part, (("object", {}), False))[0][1]
            level[last] = (_msrest_node(node, spec["type"]), attr in readonly)
        return fields
    for klass in reversed(node.__mro__):  # rest_field models
        notes = vars(klass).get("__annotations__", {})
        for attr, field in vars(klass).items():
            if not attr.startswith("_") and hasattr(field, "_rest_name_input"):
                fields[field._rest_name_input or attr] = (
                    _annotation_node(klass, notes.get(attr)),
                    field._visibility == ["read"],
                )
    return fields


def _subtype(node: Any, value: dict[str, Any]) -> Any:
    """The model a discriminator value (a step's ``type``, a destination's ``endpointType``) picks."""
    if not isinstance(node, type):
        return node
    for attr, choices in getattr(node, "_subtype_map", {}).items():
        # msrest escapes a dot in a key ('odata\\.type'); Bicep quotes such a key ('odata.type')
        key = node._attribute_map[attr]["key"].replace("\\.", ".")
        chosen = {k.strip("'"): v for k, v in value.items()}.get(key)
        if isinstance(chosen, str) and chosen in choices:
            return getattr(_models_package(node), choices[chosen])
    mapping = getattr(node, "__mapping__", None) or {}
    for klass in node.__mro__:
        for field in vars(klass).values():
            if getattr(field, "_is_discriminator", False):
                chosen = value.get(field._rest_name_input)
                if isinstance(chosen, str) and chosen in mapping:
                    return mapping[chosen]
    return node


def properties_not_in_model(node: Any, value: Any, path: str = "") -> list[str]:
    """Every property path of a parsed Bicep value that the model lacks or marks read-only.

    Expressions are opaque (their value is known only at deployment); both branches of a
    conditional are checked.
    """
    # pycep's operator node is {"operator": {"type": …, "operands": …}}; a property that is
    # itself named operator (a condition's 'GreaterThan') is a string, not an expression
    operator = value.get("operator") if isinstance(value, dict) else None
    operator = operator if isinstance(operator, dict) and "operands" in operator else None
    if operator is not None and operator.get("type") == "conditional":
        operands = operator["operands"]
        return properties_not_in_model(node, operands["true_value"], path) + (
            properties_not_in_model(node, operands["false_value"], path)
        )
    expression = isinstance(value, dict) and ("function" in value or operator is not None)
    if node == LEAF or expression or not isinstance(value, dict | list):
        return []
    if isinstance(node, tuple) and node[0] == "list":
        if not isinstance(value, list):
            return [f"{path}: an object where the model has a list"]
        return [
            p
            for i, v in enumerate(value)
            for p in properties_not_in_model(node[1], v, f"{path}[{i}]")
        ]
    if not isinstance(value, dict):
        return [f"{path}: a list where the model has an object"]
    if isinstance(node, tuple) and node[0] == "map":
        return [
            p for k, v in value.items() for p in properties_not_in_model(node[1], v, f"{path}[{k}]")
        ]
    node = _subtype(node, value)
    known = model_fields(node)
    found = []
    for key, item in value.items():
        name = key.strip("'")
        where = f"{path}.{name}" if path else name
        if not path and name in BICEP_KEYWORDS:
            continue
        if name not in known:
            found.append(f"{where}: not in the model")
        elif known[name][1]:
            found.append(f"{where}: read-only in the model")
        else:
            found.extend(properties_not_in_model(known[name][0], item, where))
    return found


def model_key(resource: dict[str, Any]) -> str:
    """The SDK_MODELS key of a declared resource: its type, or type/name where the name picks
    the body's schema (a site's ``config`` named ``authsettingsV2``)."""
    keyed = f"{resource['type']}/{body(resource).get('name')}"
    return keyed if keyed in SDK_MODELS else str(resource["type"])


def sdk_model(resource_type: str) -> type:
    module, name = SDK_MODELS[resource_type][2].rsplit(".", 1)
    model: type = getattr(importlib.import_module(module), name)
    return model


def deployed_resources() -> list[tuple[str, str, dict[str, Any]]]:
    """(file, name, declaration) of every resource the templates deploy (not `existing` ones)."""
    return [
        (path.relative_to(INFRA).as_posix(), name, resource)
        for path in BICEP_FILES
        for name, resource in resources(bicep(path.relative_to(INFRA).as_posix()))
        if not resource["existing"]
    ]


def test_every_deployed_resource_type_has_an_sdk_model() -> None:
    modelled = set(SDK_MODELS) | set(SPEC_MODELS)
    assert not set(SDK_MODELS) & set(SPEC_MODELS)
    deployed = {r["type"] for _, _, r in deployed_resources()}
    assert deployed <= modelled, deployed - modelled
    referenced = {
        r["type"] for p in BICEP_FILES for _, r in resources(bicep(p.relative_to(INFRA).as_posix()))
    }
    assert referenced <= modelled, referenced - modelled


@pytest.mark.parametrize(
    ("where", "name", "resource"),
    [
        pytest.param(where, name, resource, id=f"{where}:{name}")
        for where, name, resource in deployed_resources()
    ],
)
def test_resource_sets_only_properties_its_api_version_has(
    where: str, name: str, resource: dict[str, Any]
) -> None:
    if resource["type"] in SPEC_MODELS:
        api_version, node = SPEC_MODELS[resource["type"]]
        assert resource["api_version"] == api_version, f"{where}: {name}"
        assert properties_not_in_model(node, body(resource)) == []
        return
    assert api_version_the_sdk_sends(model_key(resource)) == resource["api_version"], (
        f"{where}: {name} uses {resource['type']}@{resource['api_version']}; pin the SDK of that "
        "api-version in requirements-dev.txt or move the template to the SDK's"
    )
    assert properties_not_in_model(sdk_model(model_key(resource)), body(resource)) == []


def test_existing_resources_use_the_api_version_of_the_deployed_ones() -> None:
    deployed = {(r["type"], r["api_version"]) for _, _, r in deployed_resources()}
    deployed_types = {t for t, _ in deployed}
    for path in BICEP_FILES:
        for name, resource in resources(bicep(path.relative_to(INFRA).as_posix())):
            if not resource["existing"]:
                continue
            if resource["type"] in deployed_types:
                assert (resource["type"], resource["api_version"]) in deployed, (path.name, name)
            else:
                # a type the templates only reference (a vault's secrets): the api-version of
                # its pinned SDK, as for a deployed one
                assert (
                    api_version_the_sdk_sends(model_key(resource)) == (resource["api_version"])
                ), (path.name, name)


def test_property_check_finds_what_the_api_version_lacks_or_owns() -> None:
    template = BicepParser().parse(
        text="""
resource registry 'Microsoft.ContainerRegistry/registries@2025-11-01' = {
  name: 'r'
  location: 'x'
  sku: { name: 'Basic' }
  properties: {
    anonymousPullEnabled: false
    loginServer: 'r.azurecr.io'
    policies: { retentionPolicy: { days: 7, keepForever: true } }
  }
}
resource task 'Microsoft.ContainerRegistry/registries/tasks@2025-03-01-preview' = {
  name: 't'
  location: 'x'
  properties: {
    platform: { os: 'Linux' }
    step: { type: 'EncodedTask', encodedTaskContent: 'eA==', dockerFilePath: 'Dockerfile' }
  }
}
"""
    )
    registry, task = (body(r) for _, r in resources(template))
    assert properties_not_in_model(
        sdk_model("Microsoft.ContainerRegistry/registries"), registry
    ) == [
        "properties.loginServer: read-only in the model",
        "properties.policies.retentionPolicy.keepForever: not in the model",
    ]
    # the step's type picks the model: an encoded task has no Dockerfile
    assert properties_not_in_model(
        sdk_model("Microsoft.ContainerRegistry/registries/tasks"), task
    ) == ["properties.step.dockerFilePath: not in the model"]


def test_property_check_reads_alert_conditions_and_odata_type_discriminators() -> None:
    # a condition's own 'operator' property is a value, not an expression to skip; a metric
    # alert's criteria pick their model by the quoted 'odata.type' key
    template = BicepParser().parse(
        text="""
resource rule 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'r'
  location: 'x'
  properties: {
    criteria: { allOf: [ { query: 'traces', operator: 'GreaterThan', threshold: 0, treshold: 1 } ] }
  }
}
resource dead 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: 'd'
  location: 'global'
  properties: {
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [ { criterionType: 'StaticThresholdCriterion', name: 'n', metricName: 'm'
                 timeAggregation: 'Total', operator: 'GreaterThan', threshold: 0
                 alertSensitivity: 'High' } ]
    }
  }
}
"""
    )
    rule, dead = (body(r) for _, r in resources(template))
    assert properties_not_in_model(sdk_model("Microsoft.Insights/scheduledQueryRules"), rule) == [
        "properties.criteria.allOf[0].treshold: not in the model"
    ]
    # alertSensitivity belongs to dynamic thresholds, not to a static criterion
    assert properties_not_in_model(sdk_model("Microsoft.Insights/metricAlerts"), dead) == [
        "properties.criteria.allOf[0].alertSensitivity: not in the model"
    ]


def test_property_check_reads_the_diagnostic_settings_model() -> None:
    template = BicepParser().parse(
        text="""
resource diag 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'd'
  scope: vault
  properties: {
    workspaceId: 'w'
    logAnalyticsDestinationType: 'Dedicated'
    logs: [ { category: 'AuditEvent', enabled: true, retention: 7 } ]
    workspace: 'w'
  }
}
"""
    )
    (diag,) = (body(r) for _, r in resources(template))
    _, node = SPEC_MODELS["Microsoft.Insights/diagnosticSettings"]
    assert properties_not_in_model(node, diag) == [
        "properties.logs[0].retention: not in the model",
        "properties.workspace: not in the model",
    ]


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


# -- the concurrency budget ----------------------------------------------------------------


def evaluate(expression: Any, names: dict[str, Any]) -> Any:
    """The value of a parsed integer Bicep expression, names looked up in ``names``.

    Enough for the budget's arithmetic (+, -, *, integer /, min, max); anything else raises, so
    a template that derives its numbers some other way fails here instead of being misread.
    """
    if isinstance(expression, bool):
        return expression
    if isinstance(expression, int):
        return expression
    if isinstance(expression, str):
        return names[expression]
    if "operator" in expression:
        operator = expression["operator"]
        left, right = (evaluate(v, names) for v in operator["operands"].values())
        arithmetic: dict[str, Callable[[int, int], int]] = {
            "add": lambda a, b: a + b,
            "substract": lambda a, b: a - b,  # pycep's spelling
            "multiply": lambda a, b: a * b,
            "divide": lambda a, b: a // b,  # Bicep's / on integers truncates
        }
        return arithmetic[operator["type"]](left, right)
    function = expression["function"]
    arguments = [evaluate(v, names) for v in function["parameters"].values() if v is not None]
    return {"min": min, "max": max}[function["type"]](*arguments)


BUDGET_VARIABLES = (
    "revalidationRuns",
    "workerRuns",
    "queueBatchSize",
    "queueNewBatchThreshold",
    "runsPerInstance",
    "maximumInstanceCount",
)


def derived_for(budget: int) -> dict[str, int]:
    """main.bicep's derived scale settings for a maxConcurrentTaskRuns of ``budget``."""
    main = bicep("main.bicep")
    names: dict[str, Any] = {"maxConcurrentTaskRuns": budget}
    for name in BUDGET_VARIABLES:
        names[name] = evaluate(variable(main, name), names)
    return names


def decorator(parameter: dict[str, Any], kind: str) -> Any:
    return next(d["argument"] for d in parameter["decorators"] if d["type"] == kind)


def test_derived_instances_times_messages_per_instance_stay_within_the_budget() -> None:
    parameter = bicep("main.bicep")["parameters"]["maxConcurrentTaskRuns"]
    low, high = decorator(parameter, "min_value"), decorator(parameter, "max_value")
    assert (low, high) == (3, 1000)
    for budget in range(low, high + 1):
        d = derived_for(budget)
        # the queue trigger holds batchSize + newBatchThreshold messages per instance, one
        # validation each, plus the timer's one inline re-validation
        worst = d["maximumInstanceCount"] * (d["queueBatchSize"] + d["queueNewBatchThreshold"])
        assert worst + d["revalidationRuns"] <= budget, budget
        # and not needlessly below it: one more instance would break the budget
        assert worst + d["runsPerInstance"] + d["revalidationRuns"] > budget, budget
        # values the platform and the host accept
        assert 1 <= d["maximumInstanceCount"] <= 1000, budget
        assert 1 <= d["queueBatchSize"] <= 32, budget
        assert 1 <= d["queueNewBatchThreshold"] <= d["queueBatchSize"], budget


def test_the_default_budget_derives_host_json_and_the_function_templates_defaults() -> None:
    main = bicep("main.bicep")
    default = main["parameters"]["maxConcurrentTaskRuns"]["default"]
    d = derived_for(default)
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))["extensions"]["queues"]
    # what runs locally (host.json) is what the default deployment sets
    assert (host["batchSize"], host["newBatchThreshold"]) == (
        d["queueBatchSize"],
        d["queueNewBatchThreshold"],
    )
    function = bicep("app/function.bicep")["parameters"]
    assert function["maximumInstanceCount"]["default"] == d["maximumInstanceCount"]
    assert function["queueBatchSize"]["default"] == d["queueBatchSize"]
    assert function["queueNewBatchThreshold"]["default"] == d["queueNewBatchThreshold"]
    assert (default, d["maximumInstanceCount"]) == (25, 4)


def test_the_derived_numbers_reach_the_plan_and_the_queue_trigger() -> None:
    params = body(bicep("main.bicep")["modules"]["functionApp"])["params"]
    for name in ("maximumInstanceCount", "queueBatchSize", "queueNewBatchThreshold"):
        assert params[name] == name
    function = bicep("app/function.bicep")
    scale = body(function["resources"]["site"])["properties"]["functionAppConfig"][
        "scaleAndConcurrency"
    ]
    assert scale["maximumInstanceCount"] == "maximumInstanceCount"
    platform = variable(function, "platformSettings")
    assert render(platform["AzureFunctionsJobHost__extensions__queues__batchSize"]) == (
        "string(queueBatchSize)"
    )
    assert render(platform["AzureFunctionsJobHost__extensions__queues__newBatchThreshold"]) == (
        "string(queueNewBatchThreshold)"
    )


def test_only_the_queue_worker_and_the_revalidating_timer_start_task_runs() -> None:
    # the budget counts gate_worker's messages and one re-validation; a new trigger that
    # validates would have to be counted too
    triggers = {b["function"]: b["type"] for b in bindings() if b["type"].endswith("Trigger")}
    assert triggers["gate_worker"] == "queueTrigger"
    assert [f for f, t in triggers.items() if t == "timerTrigger"] == ["watch", "prune"]
    source = (ROOT / "function_app.py").read_text(encoding="utf-8")
    # _revalidate runs validations one after another; it is defined once and called once, by
    # the watch timer (a timer runs on one instance at a time)
    assert source.count("_revalidate()") == 2
    watch = source[source.index("def watch(") : source.index("def prune(")]
    assert "_revalidate()" in watch


# -- Event Grid: the always-ready trigger and the repository filter ------------------------


def test_on_push_can_have_one_always_ready_instance_and_has_none_by_default() -> None:
    main = bicep("main.bicep")
    parameter = main["parameters"]["onPushAlwaysReady"]
    assert parameter["type"] == "bool" and parameter["default"] is False
    ready = variable(main, "alwaysReady")["operator"]["operands"]
    assert ready["condition"] == "onPushAlwaysReady"
    assert ready["false_value"] == []
    ((entry),) = ready["true_value"]
    # a function outside the http/durable/blob groups is named function:<name>
    assert entry == {"name": "function:${eventFunctionName}", "instanceCount": 1}
    assert variable(main, "eventFunctionName") == "on_push"
    assert body(main["modules"]["functionApp"])["params"]["alwaysReady"] == "alwaysReady"
    function = bicep("app/function.bicep")
    assert function["parameters"]["alwaysReady"]["default"] == []
    scale = body(function["resources"]["site"])["properties"]["functionAppConfig"][
        "scaleAndConcurrency"
    ]
    assert scale["alwaysReady"] == "alwaysReady"


def test_the_repository_filter_takes_at_most_event_grids_25_values() -> None:
    main = bicep("main.bicep")["parameters"]["watchedRepositories"]
    subscription = bicep("app/push-subscription.bicep")["parameters"]["repositories"]
    for parameter in (main, subscription):
        assert decorator(parameter, "max_length") == 25
        assert decorator(parameter, "min_length") == 1
        assert "25" in decorator(parameter, "description")
    # the only advanced filter, so its values are all the subscription's filter values
    filters = body(bicep("app/push-subscription.bicep")["resources"]["pushes"])["properties"][
        "filter"
    ]["advancedFilters"]
    assert [f["values"] for f in filters] == ["repositories"]


# -- the upstream system topic: created, or an existing one left as it is ------------------


def test_an_existing_upstream_topic_is_referenced_and_never_deployed() -> None:
    topic = bicep("app/upstream-topic.bicep")
    created = topic["resources"]["created"]
    assert created["type"] == "Microsoft.EventGrid/systemTopics" and not created["existing"]
    assert render(created["config"]["condition"]) == "!existingTopic"
    found = topic["resources"]["found"]
    assert found["existing"] and body(found)["name"] == "topicName"
    # the only resources: nothing else of the registry's topic is written either way
    assert {n for n, r in resources(topic) if not r["existing"]} == {"created"}
    principal = topic["outputs"]["principalId"]["value"]["operator"]["operands"]
    assert principal["condition"] == "existingTopic"
    assert render(principal["true_value"]) == "found.identity.principalId"
    assert "created" in render(principal["false_value"])
    assert topic["parameters"]["existingTopic"]["default"] is False


def test_main_uses_the_existing_topic_exactly_when_one_is_named_outside_the_walkthrough() -> None:
    main = bicep("main.bicep")
    assert render(variable(main, "existingUpstreamTopic")) == (
        "!deployWalkthrough && !empty(upstreamSystemTopicName)"
    )
    params = body(main["modules"]["upstreamTopic"])["params"]
    assert params["existingTopic"] == "existingUpstreamTopic"
    assert render(params["topicName"]) == (
        "existingUpstreamTopic ? upstreamSystemTopicName : evgt-${upstream.name}"
    )
    # the subscription, its dead-letter grant and the alerts follow the topic's outputs in both cases
    assert render(body(main["modules"]["pushSubscription"])["params"]["topicName"]) == (
        "upstreamTopic.outputs.name"
    )
    access = body(main["modules"]["gateAccess"])["params"]
    assert render(access["topicPrincipalId"]) == (
        "hasUpstream ? upstreamTopic.outputs.principalId : "
    )
    # teardown reads this to know whether the topic is the gate's to delete
    assert render(main["outputs"]["AZURE_UPSTREAM_TOPIC_CREATED"]["value"]) == (
        "hasUpstream && upstreamTopic.outputs.created"
    )
    assert render(bicep("app/upstream-topic.bicep")["outputs"]["created"]["value"]) == (
        "!existingTopic"
    )


def test_deploy_docs_budget_table_is_the_templates_derivation() -> None:
    page = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    section = page[page.index("## Concurrency budget") : page.index("## Always-ready instance")]
    rows = re.findall(
        r"^\| (\d+)(?: \(default\))? \| (\d+) \| (\d+) \| (\d+) \| (\d+) \+ 1 \|$",
        section,
        re.MULTILINE,
    )
    assert len(rows) >= 4
    for budget, batch, threshold, instances, worker in (tuple(map(int, r)) for r in rows):
        d = derived_for(budget)
        assert (batch, threshold, instances) == (
            d["queueBatchSize"],
            d["queueNewBatchThreshold"],
            d["maximumInstanceCount"],
        ), budget
        assert worker == instances * (batch + threshold), budget
    assert "| 25 (default) |" in section


def test_azd_variables_default_to_the_templates_defaults() -> None:
    main = bicep("main.bicep")["parameters"]
    given = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert given["maxConcurrentTaskRuns"]["value"] == (
        f"${{MAX_CONCURRENT_TASK_RUNS={main['maxConcurrentTaskRuns']['default']}}}"
    )
    assert given["onPushAlwaysReady"]["value"] == "${ON_PUSH_ALWAYS_READY=false}"
    assert main["onPushAlwaysReady"]["default"] is False
    assert given["upstreamSystemTopicName"]["value"] == "${UPSTREAM_SYSTEM_TOPIC_NAME=}"
