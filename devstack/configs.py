"""The gate.yaml the tests and benchmarks write for a local upstream and target registry (one
rule, `node`), and the promotion record that goes with it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gate.domain.records import GateRecord, State, new_record_id


def local_gate_yaml(
    tmp_path: Path,
    upstream: str,
    target: str,
    *,
    validation: str,
    top: Sequence[str] = (),
    rule: Sequence[str] = (),
) -> Path:
    """Write ``tmp_path/gate.yaml``: both registries over loopback HTTP, rule ``node`` gating
    ``node:15-alpine`` from ``upstream`` into ``target``.

    ``validation`` is the rule's validation mapping (YAML flow style); ``top`` adds top-level
    lines, ``rule`` adds lines to the rule (both written as given, without indentation).
    """
    lines = [
        f"data_dir: {tmp_path / 'data'}",
        *top,
        "registries:",
        f'  - {{host: "{upstream}", insecure: true}}',
        f'  - {{host: "{target}", insecure: true}}',
        "rules:",
        "  - name: node",
        f"    source: {upstream}/node",
        '    tags: ["15-alpine"]',
        f"    target: {target}/node",
        f"    validation: {validation}",
        *(f"    {line}" for line in rule),
    ]
    path = tmp_path / "gate.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def empty_task_gate_yaml(
    folder: Path, upstream: str, target: str, *, rule: Sequence[str] = ()
) -> Path:
    """Write ``folder/gate.yaml`` for tests over fakes: rule ``node`` from ``upstream`` into
    ``target``, its validation an empty task file in ``folder/validation``, the ledger in
    ``folder/data``; ``rule`` adds lines to the rule."""
    (folder / "validation").mkdir(parents=True, exist_ok=True)
    (folder / "validation" / "acr-task.yaml").write_text("version: v1.1.0\nsteps: []\n")
    lines = [
        "data_dir: data",
        "rules:",
        "  - name: node",
        f"    source: {upstream}/node",
        '    tags: ["15-alpine"]',
        f"    target: {target}/node",
        "    validation: {folder: validation}",
        *(f"    {line}" for line in rule),
    ]
    path = folder / "gate.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def unreachable_target_gate_yaml(folder: Path, upstream: str, *, top: Sequence[str] = ()) -> Path:
    """Write ``folder/gate.yaml`` for commands that never promote: rule ``node`` watches
    ``upstream/lib/node:15-alpine`` and targets ``127.0.0.1:9`` (nothing listens there); an
    empty task file in ``folder/validation``, the ledger in ``folder/data``; ``top`` adds
    top-level lines."""
    (folder / "validation").mkdir(parents=True, exist_ok=True)
    (folder / "validation" / "acr-task.yaml").write_text("version: v1.1.0\nsteps: []\n")
    lines = [
        f"data_dir: {folder / 'data'}",
        f"registries:\n  - {{host: '{upstream}', insecure: true}}",
        *top,
        "rules:",
        "  - name: node",
        f"    source: {upstream}/lib/node",
        '    tags: ["15-alpine"]',
        "    target: 127.0.0.1:9/base/node",
        "    validation: {folder: validation}",
    ]
    path = folder / "gate.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


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
