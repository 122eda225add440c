"""The text stages of an ACR task file, before it is read as YAML: comments, version, aliases,
templates (``{{.Values.X}}``, ``{{.Run.X}}``), the way ACR Tasks applies them.
"""

from __future__ import annotations

import re

from gate.adapters.validation.taskfile_model import LOCAL_FIX as _FIX
from gate.adapters.validation.taskfile_model import RUN_VARIABLES, RunContext
from gate.errors import ConfigError, UnsupportedTask

_UNSUPPORTED_RUN_VARIABLES = frozenset(
    {"SharedVolume", "Commit", "Branch", "TaskName", "Repository", "GitTag", "TriggeredBy",
     "OSVersion"}
)  # fmt: skip

_ACTION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_EXPRESSION = re.compile(r"\.(Values|Run)\.([A-Za-z_][A-Za-z0-9_]*)")


def strip_comment_lines(text: str) -> str:
    """Drop the lines whose first non-blank character is ``#``, as ACR does before rendering."""
    return "\n".join(line for line in text.split("\n") if not line.strip().startswith("#"))


def find_version(text: str) -> str:
    """The version ACR's alias switch sees: the value of a ``version:`` first line, else ''."""
    for line in text.split("\n"):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line.startswith("version"):
            key, colon, value = line.partition(":")
            if colon and key.strip() == "version":
                return value.strip()
        return ""
    return ""


def expand_aliases(text: str, *, source: str) -> str:
    """Replace ``$Name`` Run aliases by their ``{{.Run.Name}}`` and ``$$`` by ``$``.

    An unknown ``$name`` (``$HOME``) is left as it is, as ACR does. A Run alias the local runner
    does not provide raises UnsupportedTask.
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char != "$":
            out.append(char)
            i += 1
            continue
        if i + 1 < n and text[i + 1] == "$":
            out.append("$")
            i += 2
            continue
        j = i + 1
        while j < n and text[j].isascii() and text[j].isalnum():
            j += 1
        name = text[i + 1 : j]
        if name in RUN_VARIABLES:
            out.append("{{.Run." + name + "}}")
        elif name in _UNSUPPORTED_RUN_VARIABLES:
            raise UnsupportedTask(
                f"{source}: the alias ${name} ({{{{.Run.{name}}}}}) has no local value; "
                f"{_FIX}, or write the value out (use $${name} for a literal '${name}')"
            )
        else:
            out.append("$" + name)
        i = j
    return "".join(out)


def render(text: str, context: RunContext, *, source: str = "acr-task.yaml") -> str:
    """Render the Go-template actions ``{{.Values.X}}`` and ``{{.Run.X}}`` of ``text``.

    Whitespace inside the braces and the trim markers ``{{-`` / ``-}}`` are allowed. A value
    that is not given raises ConfigError; any other action raises UnsupportedTask.
    """
    pieces: list[str] = []
    position = 0
    trim_next = False
    for match in _ACTION.finditer(text):
        before = text[position : match.start()]
        if trim_next:
            before = before.lstrip()
        inner = match.group(1)
        if re.match(r"-[ \t\r\n]", inner):
            before = before.rstrip()
            inner = inner[2:]
        trim_next = bool(re.search(r"[ \t\r\n]-$", inner))
        if trim_next:
            inner = inner[:-2]
        pieces.append(before)
        pieces.append(_evaluate(inner.strip(), context, source))
        position = match.end()
    rest = text[position:]
    if "{{" in rest:
        line = text.count("\n", 0, position + rest.index("{{")) + 1
        raise ConfigError(f"{source}, line {line}: '{{{{' opens a template action never closed")
    pieces.append(rest.lstrip() if trim_next else rest)
    return "".join(pieces)


def _evaluate(expression: str, context: RunContext, source: str) -> str:
    match = _EXPRESSION.fullmatch(expression)
    if match is None:
        raise UnsupportedTask(
            f"{source}: the template action {{{{ {expression[:80]} }}}} is not supported locally; "
            "only {{.Values.NAME}} and {{.Run.ID}}, {{.Run.Registry}}, {{.Run.RegistryName}}, "
            "{{.Run.Date}}, {{.Run.OS}}, {{.Run.Architecture}} are; "
            f"{_FIX}, or simplify the template"
        )
    kind, name = match.groups()
    if kind == "Values":
        if name not in context.values:
            known = ", ".join(sorted(context.values)) or "none"
            raise ConfigError(
                f"{source} uses {{{{.Values.{name}}}}} but no value {name} is given (given: "
                f"{known}); add {name} to the rule's validation values, or fix the name"
            )
        return context.values[name]
    value = context.run_variable(name)
    if value is None:
        raise UnsupportedTask(
            f"{source}: {{{{.Run.{name}}}}} has no local value; {_FIX}, or write the value out"
        )
    if name in ("Registry", "RegistryName") and not value:
        raise ConfigError(
            f"{source} uses {{{{.Run.{name}}}}} but the run has no registry; set the rule's "
            "target registry"
        )
    return value
