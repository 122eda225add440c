"""The gate.yaml the tests write for a local upstream and target registry (one rule, `node`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


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
