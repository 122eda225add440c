"""Checks the Functions host makes on indexed metadata before it starts any listener.

All of them read the metadata the worker returned (``raw_bindings``), not our source:

- function names: ``^[a-z][a-z0-9_\\-]{0,127}$`` (case-insensitive), not ``host``, unique;
  binding names: ``^([a-zA-Z][a-zA-Z0-9]{0,127}|\\$return)$``; ``$return`` only as an output
  (azure-functions-host ``src/WebJobs.Script/Utility.cs``: ``FunctionNameValidationRegex``,
  ``BindingNameValidationRegex``, ``ValidateBinding``);
- a trigger binding in every function, binding names unique within it, ignoring case
  (``src/WebJobs.Script/Host/WorkerFunctionMetadataProvider.cs``, ``ValidateBindings``);
- ``%NAME%`` in a binding property is replaced by the app setting ``NAME``, and an unresolved
  one is an error ("Binding expressions: app settings",
  learn.microsoft.com/azure/azure-functions/functions-bindings-expressions-patterns; the
  WebJobs SDK's ``NameResolverExtensions.ResolveWholeString``);
- ``connection`` names an app setting holding a connection string, or the prefix of an
  identity-based connection's settings ``<NAME>__<property>``
  (learn.microsoft.com/azure/azure-functions/functions-reference#connections);
- queue names: 3-63 characters, lowercase letters, digits and single dashes, starting and
  ending with a letter or digit ("Naming Queues and Metadata",
  learn.microsoft.com/rest/api/storageservices/naming-queues-and-metadata).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from tests.functions_host.host import FunctionMetadata

FUNCTION_NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,127}$", re.IGNORECASE)
BINDING_NAME = re.compile(r"^([a-zA-Z][a-zA-Z0-9]{0,127}|\$return)$")
QUEUE_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(?:-[a-z0-9]+)*$")
SETTING_REFERENCE = re.compile(r"%([^%]+)%")


def resolve(value: str, settings: Mapping[str, str]) -> tuple[str, list[str]]:
    """``value`` with each ``%NAME%`` replaced by its app setting, and the names not found."""
    missing: list[str] = []

    def setting(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in settings:
            missing.append(name)
            return match.group(0)
        return settings[name]

    return SETTING_REFERENCE.sub(setting, value), missing


def _connection_present(name: str, settings: Mapping[str, str]) -> bool:
    return bool(settings.get(name)) or any(key.startswith(f"{name}__") for key in settings)


def host_problems(functions: Iterable[FunctionMetadata], settings: Mapping[str, str]) -> list[str]:
    """Every reason the host would refuse (or fail to listen for) these functions; [] if none."""
    problems: list[str] = []
    seen: set[str] = set()
    for function in functions:
        name = function.name
        if not FUNCTION_NAME.match(name) or name.lower() == "host":
            problems.append(f"{name}: not a valid function name")
        if name.lower() in seen:
            problems.append(f"{name}: two functions have this name")
        seen.add(name.lower())
        triggers = [b for b in function.bindings if str(b.get("type", "")).endswith("Trigger")]
        if not triggers:
            problems.append(f"{name}: no trigger binding (every function needs one)")
        binding_names: set[str] = set()
        for binding in function.bindings:
            problems.extend(f"{name}: {p}" for p in _binding_problems(binding, settings))
            bname = str(binding.get("name")).lower()
            if bname in binding_names:
                problems.append(f"{name}: two bindings are named {binding.get('name')!r}")
            binding_names.add(bname)
    return problems


def _binding_problems(binding: Mapping[str, Any], settings: Mapping[str, str]) -> list[str]:
    problems: list[str] = []
    bname = str(binding.get("name"))
    if not BINDING_NAME.match(bname):
        problems.append(f"binding name {bname!r} is invalid")
    if bname == "$return" and str(binding.get("direction", "")).upper() != "OUT":
        problems.append("$return must be an output binding")
    resolved: dict[str, Any] = {}
    for key, value in binding.items():
        if isinstance(value, str):
            value, missing = resolve(value, settings)
            problems.extend(
                f"binding {bname}: {key} refers to %{m}%, which is not an app setting"
                for m in missing
            )
        resolved[key] = value
    connection = resolved.get("connection")
    if isinstance(connection, str) and not _connection_present(connection, settings):
        problems.append(
            f"binding {bname}: connection {connection!r} is neither an app setting nor the "
            f"prefix of {connection}__* settings"
        )
    kind = str(binding.get("type", ""))
    if kind in ("queue", "queueTrigger"):
        queue = resolved.get("queueName")
        if not isinstance(queue, str) or not QUEUE_NAME.match(queue):
            problems.append(f"binding {bname}: {queue!r} is not a valid storage queue name")
    return problems
