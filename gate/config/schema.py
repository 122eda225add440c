"""The configuration file's JSON Schema, for editors: completion and checking.

The types it is made of are :mod:`gate.config.model`'s, the same the use cases read; the
names below are kept for the code that imported them from here.
"""

from typing import Any

import msgspec

from gate.config.loading import SchemaError, SchemaProblem, check, substitute
from gate.config.model import (
    DURATION_PATTERN,
    AcrEntry,
    AttestationSection,
    AzureSection,
    ConfigFile,
    DownstreamEntry,
    Duration,
    LeaseSection,
    LedgerEntry,
    LedgerSection,
    PollSection,
    RegistryEntry,
    RequireSignatureEntry,
    RevalidateEntry,
    RuleEntry,
    RunnerEntry,
    RunnerIdentityEntry,
    TargetRegistryEntry,
    Text,
    ValidationEntry,
    ValidatorSection,
)

__all__ = [
    "DURATION_PATTERN",
    "AcrEntry",
    "AttestationSection",
    "AzureSection",
    "ConfigFile",
    "DownstreamEntry",
    "Duration",
    "LeaseSection",
    "LedgerEntry",
    "LedgerSection",
    "PollSection",
    "RegistryEntry",
    "RequireSignatureEntry",
    "RevalidateEntry",
    "RuleEntry",
    "RunnerEntry",
    "RunnerIdentityEntry",
    "SchemaError",
    "SchemaProblem",
    "TargetRegistryEntry",
    "Text",
    "ValidationEntry",
    "ValidatorSection",
    "check",
    "json_schema",
    "substitute",
]


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the configuration file (for editors: completion and checking)."""
    body: dict[str, Any] = msgspec.json.schema(ConfigFile)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "gate.yaml",
        **_allow_substitution(body),
    }


_SUBSTITUTION = {"type": "string", "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}"}


def _allow_substitution(node: Any) -> Any:
    """A field whose JSON type or form ``${NAME}`` text would not fit also accepts that text.

    Booleans, numbers, choices (``promote``) and patterned names (a registry's) are read from
    the environment as often as written out; the loader substitutes before it checks.
    """
    if isinstance(node, list):
        return [_allow_substitution(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _allow_substitution(v) for k, v in node.items()}
    constrained = node.get("type") in ("boolean", "number", "integer") or "enum" in node
    if constrained or (node.get("type") == "string" and "pattern" in node):
        kept = {k: v for k, v in node.items() if k in ("default", "description")}
        typed = {k: v for k, v in node.items() if k not in kept}
        return {**kept, "anyOf": [typed, _SUBSTITUTION]}
    return node
