"""Synthetic task runs: a run that stays Running for a while, then Succeeds, without podman.

For load scenarios (hundreds of runs on a small machine): with
``emulator.synthetic_runs = SyntheticRuns(seconds=D)`` every run scheduled afterwards downloads
its source and logs in as usual (so a missing upload or identity still fails it), stays
``Running`` for ``D`` seconds (a cancel ends it at once), then ends ``Succeeded`` with a short
log in ACR's format. Its steps are not executed. ``None`` (the default) runs the task file on
the emulated agent as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from devstack.acr.tasks import EmulatedRun


@dataclass(frozen=True)
class SyntheticRuns:
    """Every run: ``seconds`` Running, then Succeeded with a small log."""

    seconds: float

    def __post_init__(self) -> None:
        if self.seconds < 0:
            raise ValueError(f"a synthetic run lasts 0 s or more, not {self.seconds:g} s")


def execute(
    settings: SyntheticRuns,
    run: EmulatedRun,
    runner: Callable[[str], None],
    write: Callable[[str], None],
    finish: Callable[[str, str], None],
) -> None:
    """Play one run as ``settings`` says (after its source download and logins)."""
    step = "acb_step_0"
    runner(
        f"Executing step ID: {step}. Timeout(sec): 600, Working directory: '', "
        "Network: 'acb_default_network'"
    )
    if settings.seconds and run.cancel.wait(settings.seconds):
        return  # cancelled: the cancel route set the status
    write(f"synthetic run: {settings.seconds:g} s, no step executed\n")
    runner(f"Successfully executed container: {step}")
    finish("Succeeded", "")
