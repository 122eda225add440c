"""The gate.yaml the tests and benchmarks write, and the promotion record that goes with it.

:class:`GateYaml` is the one writer: its parts are the ones the tests vary (the ledger folder,
the registries, the rules and any top-level sections). ``local_gate_yaml``,
``empty_task_gate_yaml`` and ``unreachable_target_gate_yaml`` are its three common shapes, one
rule ``node`` gating ``node:15-alpine``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gate.domain.records import GateRecord, State, new_record_id

EMPTY_TASK = "version: v1.1.0\nsteps: []\n"


def _scalar(value: str | Path) -> str:
    # A JSON string is a YAML double-quoted scalar: hosts, paths and "${VAR}" values need no
    # case-by-case quoting.
    return json.dumps(str(value))


def _flow(pairs: Mapping[str, str | bool]) -> str:
    """A YAML flow mapping of ``pairs``: strings quoted, booleans as YAML writes them."""
    items = (
        f"{key}: {('true' if value else 'false') if isinstance(value, bool) else _scalar(value)}"
        for key, value in pairs.items()
    )
    return "{" + ", ".join(items) + "}"


@dataclass(frozen=True)
class Registry:
    """One ``registries:`` entry: loopback registries speak plain HTTP, hence ``insecure``."""

    host: str
    insecure: bool = True
    username: str | None = None
    password_secret: str | None = None

    def yaml(self) -> str:
        """This entry as a YAML flow mapping."""
        pairs: dict[str, str | bool] = {"host": self.host, "insecure": self.insecure}
        if self.username is not None:
            pairs["username"] = self.username
        if self.password_secret is not None:
            pairs["password_secret"] = self.password_secret
        return _flow(pairs)


@dataclass(frozen=True)
class Validation:
    """A rule's ``validation:`` mapping: the task folder and what the task run is given."""

    folder: str | Path = "validation"
    timeout: int | None = None
    values: Mapping[str, str] = field(default_factory=dict)
    secret_values: Mapping[str, str] = field(default_factory=dict)

    def yaml(self) -> str:
        """This mapping in YAML flow style."""
        parts = [f"folder: {_scalar(self.folder)}"]
        if self.timeout is not None:
            parts.append(f"timeout: {self.timeout}")
        if self.values:
            parts.append(f"values: {_flow(self.values)}")
        if self.secret_values:
            parts.append(f"secret_values: {_flow(self.secret_values)}")
        return "{" + ", ".join(parts) + "}"


@dataclass(frozen=True)
class Rule:
    """One ``rules:`` entry; ``lines`` adds keys to it (``cooldown: 6h``, ``revalidate: ...``).

    ``validation`` is a :class:`Validation` or its YAML flow text as given.
    """

    source: str
    target: str
    name: str = "node"
    tags: tuple[str, ...] = ("15-alpine",)
    validation: Validation | str = Validation()
    lines: tuple[str, ...] = ()

    def yaml(self) -> list[str]:
        """This entry's lines, indented under ``rules:``."""
        validation = (
            self.validation.yaml() if isinstance(self.validation, Validation) else self.validation
        )
        keys = [
            f"name: {self.name}",
            f"source: {_scalar(self.source)}",
            f"tags: {json.dumps(list(self.tags))}",
            f"target: {_scalar(self.target)}",
            f"validation: {validation}",
            *self.lines,
        ]
        return [f"  - {keys[0]}", *(f"    {key}" for key in keys[1:])]


@dataclass(frozen=True)
class GateYaml:
    """A whole gate.yaml; ``top`` adds top-level lines (``lease: {...}``, ``poll: {...}``)."""

    data_dir: str | Path
    rules: tuple[Rule, ...]
    registries: tuple[Registry, ...] = ()
    top: tuple[str, ...] = ()

    def text(self) -> str:
        """The file's text."""
        lines = [f"data_dir: {_scalar(self.data_dir)}", *self.top]
        if self.registries:
            lines += ["registries:", *(f"  - {registry.yaml()}" for registry in self.registries)]
        lines.append("rules:")
        for rule in self.rules:
            lines += rule.yaml()
        return "\n".join(lines) + "\n"

    def write(self, folder: Path, name: str = "gate.yaml") -> Path:
        """Write the file as ``folder/name`` and return its path."""
        path = folder / name
        path.write_text(self.text())
        return path


def write_empty_task(folder: Path) -> Path:
    """Write an ACR task with no steps as ``folder/validation/acr-task.yaml``: the validation
    folder of tests whose validator is a fake, and of commands that never validate."""
    (folder / "validation").mkdir(parents=True, exist_ok=True)
    task = folder / "validation" / "acr-task.yaml"
    task.write_text(EMPTY_TASK)
    return task


def local_gate_yaml(
    tmp_path: Path,
    upstream: str,
    target: str,
    *,
    validation: Validation | str,
    top: Sequence[str] = (),
    rule: Sequence[str] = (),
) -> Path:
    """Write ``tmp_path/gate.yaml``: both registries over loopback HTTP, rule ``node`` gating
    ``node:15-alpine`` from ``upstream`` into ``target``, the ledger in ``tmp_path/data``.

    ``validation`` is the rule's validation mapping; ``top`` adds top-level lines, ``rule`` adds
    lines to the rule (both written as given, without indentation).
    """
    return GateYaml(
        data_dir=tmp_path / "data",
        registries=(Registry(upstream), Registry(target)),
        rules=(Rule(f"{upstream}/node", f"{target}/node", validation=validation, lines=(*rule,)),),
        top=(*top,),
    ).write(tmp_path)


def empty_task_gate_yaml(
    folder: Path,
    upstream: str,
    target: str,
    *,
    rule: Sequence[str] = (),
    top: Sequence[str] = (),
) -> Path:
    """Write ``folder/gate.yaml`` for tests over fakes: rule ``node`` from ``upstream`` into
    ``target``, its validation an empty task file in ``folder/validation``, the ledger in
    ``folder/data``; ``rule`` adds lines to the rule, ``top`` top-level lines."""
    write_empty_task(folder)
    return GateYaml(
        data_dir="data",
        rules=(Rule(f"{upstream}/node", f"{target}/node", lines=(*rule,)),),
        top=(*top,),
    ).write(folder)


def unreachable_target_gate_yaml(folder: Path, upstream: str, *, top: Sequence[str] = ()) -> Path:
    """Write ``folder/gate.yaml`` for commands that never promote: rule ``node`` watches
    ``upstream/lib/node:15-alpine`` and targets ``127.0.0.1:9`` (nothing listens there); an
    empty task file in ``folder/validation``, the ledger in ``folder/data``; ``top`` adds
    top-level lines."""
    write_empty_task(folder)
    return GateYaml(
        data_dir=folder / "data",
        registries=(Registry(upstream),),
        rules=(Rule(f"{upstream}/lib/node", "127.0.0.1:9/base/node"),),
        top=(*top,),
    ).write(folder)


def promotion_of(upstream: str, digest: str, *, run_id: str, log: str) -> GateRecord:
    """A promoted record of rule ``node`` (``unreachable_target_gate_yaml``'s) for ``digest``."""
    return GateRecord(
        id=new_record_id(),
        rule="node",
        source=f"{upstream}/lib/node:15-alpine",
        target="127.0.0.1:9/base/node",
        digest=digest,
        state=State.PROMOTED,
        run_id=run_id,
        target_tags=(f"15-alpine-{run_id}", "15-alpine"),
        log=log,
    )
