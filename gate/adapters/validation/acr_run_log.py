"""What the ACR validator reads back: a run's log, the step it failed at, and its verdict.

ACR's runner logs ``Container failed during run: STEP. No retries remaining.`` and ``failed to
run step ID: STEP: exit status N`` for a failing step, and closes with ``Run ID: X failed after
Ns. Error: ...``; :func:`judge` turns a run's end status and log into the validation's outcome
(see :mod:`gate.adapters.validation.acr_task_run` for the rules).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from azure.mgmt.containerregistrytasks.models import Run

from gate.adapters.validation.acr_run_request import run_timeout_of
from gate.adapters.validation.masking import ANSI
from gate.domain.records import Outcome

ENGINE_ERROR_EXIT = 125
"""The exit status docker uses when it, not the container, failed (pull errors and the like)."""

_REASON_LINES = 3
_REASON_CHARS = 400
_ACB_LINE = re.compile(r"^\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} ")
_STEP_FAILED = re.compile(r"^failed to run step ID: (?P<step>.+?): (?P<error>.+)$", re.M)
_EXIT_STATUS = re.compile(r"^exit status (?P<code>-?\d+)$")
_URL_QUERY = re.compile(r"(https?://[^\s?'\"]+)\?[^\s'\"]*")
_RUN_END = re.compile(
    r"^Run ID: \S+ (?:was successful|failed) after \S+?(?:\. Error: (?P<error>.*))?$", re.M
)


@dataclass(frozen=True)
class StepFailure:
    """The step a failed ACR run stopped at, as its log tells: ``error`` is ACR's words
    (``exit status 1``, ``context deadline exceeded``), ``tail`` the step's last output lines."""

    step: str
    error: str
    tail: str

    @property
    def exit_code(self) -> int | None:
        """The step's exit status, when the error is one."""
        match = _EXIT_STATUS.match(self.error.strip())
        return int(match["code"]) if match else None

    def describe(self) -> str:
        """``step 'X' exited with code N: <last lines>`` (the local validator's wording)."""
        code = self.exit_code
        what = (
            f"step '{self.step}' exited with code {code}"
            if code is not None
            else f"step '{self.step}' failed: {self.error.strip()}"
        )
        return f"{what}: {self.tail}" if self.tail else what


def parse_step_failure(log_text: str) -> StepFailure | None:
    """The failing step of an ACR run log, or None if no step failed in it.

    ACR's runner logs ``failed to run step ID: STEP: ERROR`` when a step fails (after
    ``Container failed during run: STEP. No retries remaining.`` for a container that exited
    non-zero). The tail is the step's own output: the non-blank lines between
    ``Launching container with name: STEP`` and the failure, without the runner's timestamped
    lines, the last few joined by `` / ``.
    """
    text = ANSI.sub("", log_text)
    failures = list(_STEP_FAILED.finditer(text))
    if not failures:
        return None
    failure = failures[-1]
    step, error = failure["step"].strip(), failure["error"].strip()
    lines = text[: failure.start()].splitlines()
    end = len(lines)
    for index in range(len(lines) - 1, -1, -1):
        if f"Container failed during run: {step}." in lines[index]:
            end = index
            break
    start = 0
    for index in range(end - 1, -1, -1):
        if f"Launching container with name: {step}" in lines[index]:
            start = index + 1
            break
    output = [
        line.strip() for line in lines[start:end] if line.strip() and not _ACB_LINE.match(line)
    ]
    tail = " / ".join(output[-_REASON_LINES:])
    if len(tail) > _REASON_CHARS:
        tail = "..." + tail[-_REASON_CHARS:]
    return StepFailure(step=step, error=error, tail=tail)


def _run_error(log_text: str) -> str:
    """The ``Error: ...`` of ACR's closing ``Run ID: X failed after Ns. Error: ...`` line."""
    found = [m["error"] for m in _RUN_END.finditer(log_text) if m["error"]]
    return found[-1].strip() if found else ""


def redact_urls(text: str) -> str:
    """``text`` with the query of every URL cut (a SAS token is a credential)."""
    return _URL_QUERY.sub(r"\1?<redacted>", text)


def judge(
    run_id: str,
    status: str,
    run: Run,
    text: str,
    fetched: bool,
    *,
    timeout_seconds: float,
) -> tuple[Outcome, str]:
    """The outcome and reason of run ``run_id``, ended in ``status``; see the validator's module.

    ``text`` is its log (masked), ``fetched`` whether it could be read at all,
    ``timeout_seconds`` the validation timeout the run was asked for.
    """
    run_error = (run.properties.run_error_message if run.properties else None) or ""
    if status == "Succeeded":
        return Outcome.PASSED, f"run {run_id} succeeded"
    if status == "Failed":
        failure = parse_step_failure(text)
        if failure is not None and failure.exit_code != ENGINE_ERROR_EXIT:
            return Outcome.REJECTED, failure.describe()
        if failure is not None:
            return (
                Outcome.FAILED,
                f"the container engine could not run step '{failure.step}' "
                f"({failure.error}): {failure.tail or 'no output'}; check that the step's "
                "images exist and the runner identity may pull them (AcrPull), then retry",
            )
        why = (
            _run_error(text)
            or run_error
            or ("its log could not be read" if not fetched else "no step failed in its log")
        )
        return (
            Outcome.FAILED,
            f"run {run_id} failed before any step failed ({why}); check that the runner "
            "identity has AcrPull on the registries it logs in to and may read their Key "
            "Vault secrets, and the run log (az acr task logs), then retry",
        )
    if status == "Canceled":
        return (
            Outcome.FAILED,
            f"run {run_id} was cancelled before it finished; gate the image again",
        )
    if status == "Timeout":
        return (
            Outcome.FAILED,
            f"run {run_id} passed its ACR run timeout of "
            f"{run_timeout_of(timeout_seconds)} s; raise the rule's validation "
            "timeout_seconds, or make the steps faster",
        )
    detail = f": {run_error}" if run_error else ""
    return (
        Outcome.FAILED,
        f"ACR could not carry out run {run_id} (status {status or 'unknown'}){detail}; retry later",
    )


__all__ = [
    "ENGINE_ERROR_EXIT",
    "StepFailure",
    "judge",
    "parse_step_failure",
    "redact_urls",
]
