"""The house has no import circles and no arrows running back up.

Layers, lowest first: errors and logsafe; domain; config; ports; usecases and adapters (side by
side, neither importing the other); compose (the only wiring); entrypoints; ``gate/__main__``
and function_app. A
module may import its own layer and the layers below it, never one above. Imports inside
functions count too: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# what each layer may import, besides itself
ALLOWED: dict[str, set[str]] = {
    "gate.errors": set(),
    "gate.logsafe": set(),
    "gate.domain": {"gate.errors"},
    "gate.config": {"gate.errors", "gate.domain"},
    "gate.ports": {"gate.errors", "gate.domain", "gate.config"},
    "gate.usecases": {"gate.errors", "gate.logsafe", "gate.domain", "gate.config", "gate.ports"},
    "gate.adapters": {"gate.errors", "gate.logsafe", "gate.domain", "gate.config", "gate.ports"},
    "gate.compose": {
        "gate.errors",
        "gate.logsafe",
        "gate.domain",
        "gate.config",
        "gate.ports",
        "gate.usecases",
        "gate.adapters",
    },
    "gate.entrypoints": {
        "gate.errors",
        "gate.logsafe",
        "gate.domain",
        "gate.config",
        "gate.ports",
        "gate.usecases",
        "gate.compose",
    },
    "gate.__main__": {"gate.entrypoints"},
    "function_app": {"gate"},
}


def modules() -> Iterator[tuple[str, Path]]:
    yield "function_app", ROOT / "function_app.py"
    for path in sorted((ROOT / "gate").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def layer(module: str) -> str | None:
    for name in sorted(ALLOWED, key=len, reverse=True):
        if module == name or module.startswith(name + "."):
            return name
    return None


def imports(module: str, path: Path) -> Iterator[tuple[int, str]]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # `from gate import usecases` imports a module too
                yield node.lineno, f"{target}.{alias.name}"


def gate_imports(module: str, path: Path) -> Iterator[tuple[int, str]]:
    known = {name for name, _ in modules()}
    for line, target in imports(module, path):
        if target in known and target != module:
            yield line, target


def test_every_gate_module_belongs_to_a_layer() -> None:
    assert [m for m, _ in modules() if layer(m) is None and m != "gate"] == []


def test_no_module_imports_a_layer_above_its_own() -> None:
    arrows = []
    for module, path in modules():
        own = layer(module)
        if own is None:
            continue
        for line, target in gate_imports(module, path):
            other = layer(target)
            if target == "gate" or other is None or other == own:
                continue
            if own == "function_app" or other in ALLOWED[own]:
                continue
            arrows.append(f"{path.relative_to(ROOT)}:{line} {module} -> {target}")
    assert arrows == []


def test_the_modules_import_no_circle() -> None:
    graph = {module: {t for _, t in gate_imports(module, path)} for module, path in modules()}
    # a package's __init__ re-exporting its modules is not a circle with them
    for module in graph:
        graph[module] = {t for t in graph[module] if not module.startswith(t + ".")}
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append([*trail[trail.index(nxt) :], nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []


@pytest.mark.parametrize("module", ["gate.domain", "gate.usecases"])
def test_the_inner_layers_import_no_io_library(module: str) -> None:
    # the domain and the use cases speak through ports: no HTTP, SDK or subprocess of their own
    banned = ("httpx", "azure", "subprocess", "sqlite3", "urllib", "http")
    found = []
    for name, path in modules():
        if layer(name) == module:
            found += [
                f"{name}:{line} {t}" for line, t in imports(name, path) if t.split(".")[0] in banned
            ]
    assert found == []
