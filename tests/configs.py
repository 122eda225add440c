"""Moved to :mod:`devstack.configs` (the benchmarks write the same gate.yaml); kept importable
for tests written against the old place."""

from devstack.configs import (
    empty_task_gate_yaml,
    local_gate_yaml,
    promotion_of,
    unreachable_target_gate_yaml,
)

__all__ = [
    "empty_task_gate_yaml",
    "local_gate_yaml",
    "promotion_of",
    "unreachable_target_gate_yaml",
]
