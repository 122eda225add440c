"""What one validation task run may reach: its registry credentials and its runner login.

A task run gets, in ``credentials.customRegistries``, only the registries of *its* rule (see
:func:`run_registries`), and in ``credentials.sourceRegistry.loginMode`` the login to the
runner registry only when its task file uses that registry (see :func:`runner_login_mode`).

``SourceRegistryCredentials.loginMode`` ("The authentication mode which determines the source
registry login scope. The credentials for the source registry will be generated using the
given scope. These credentials will be used to login to the source registry during the run.")
takes ``None`` or ``Default`` (REST specification ``containerregistry_build.json``,
2019-06-01-preview and 2025-03-01-preview, enum ``SourceRegistryLoginMode``; the SDK model
``azure.mgmt.containerregistrytasks.models.SourceRegistryCredentials.login_mode``). Without
it ACR logs the run in to its own registry (``Default``), with push rights.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from gate.adapters.validation.taskfile import parse_task
from gate.adapters.validation.taskfile_build import base_images
from gate.adapters.validation.taskfile_model import (
    WORKSPACE,
    BuildStep,
    CmdStep,
    PushStep,
    RunContext,
)
from gate.domain.ref import ImageRef
from gate.errors import GateError

LOGIN_NONE = "None"
LOGIN_DEFAULT = "Default"
"""The two ``SourceRegistryLoginMode`` values of the REST specification."""

UNKNOWN_RUNNER = "runner-registry.invalid"
"""What ``{{.Run.Registry}}`` renders to when the runner's login server is not known."""

_SCAN_LIMIT = 1 << 20  # files larger than this in a validation folder are not read for names


def _names(host: str, text: str) -> bool:
    """True when ``text`` names registry ``host`` as a whole word (``host/…``, ``host``)."""
    return re.search(rf"(?<![\w.-]){re.escape(host)}(?![\w.-])", text, re.IGNORECASE) is not None


def _folder_texts(folder: Path) -> Iterable[str]:
    """The text of every regular file of ``folder`` up to ``_SCAN_LIMIT`` bytes."""
    for path in sorted(Path(folder).rglob("*")):
        try:
            if path.is_symlink() or not path.is_file() or path.stat().st_size > _SCAN_LIMIT:
                continue
            yield path.read_bytes().decode("utf-8", "replace")
        except OSError:
            continue


def run_registries(
    custom_registries: Mapping[str, tuple[str, str] | None],
    *,
    candidate_host: str,
    folder: Path,
    values: Mapping[str, str],
) -> dict[str, tuple[str, str] | None]:
    """The registry credentials one rule's task run carries, out of every configured one.

    Always the candidate's own registry (``candidate_host``, the rule's upstream). Any other
    configured registry only when the rule names it: in a file of its validation folder (the
    task file, a Dockerfile, a script) or in one of the ``values`` (non-secret ones: callers
    leave secret values out). A task file can only pull from a registry it names, so a
    registry named nowhere is one it never logs in to, and a broken secret of another rule's
    upstream cannot fail this run.
    """
    if not custom_registries:
        return {}  # nothing to choose from: the folder need not be read
    wanted = candidate_host.lower()
    texts = [*values.values(), *_folder_texts(folder)]
    return {
        host: secrets
        for host, secrets in sorted(custom_registries.items())
        if host.lower() == wanted or any(_names(host, text) for text in texts)
    }


def _in_runner(image: str, server: str) -> bool:
    """True when ``image`` lives in the registry ``server`` (or cannot be told apart)."""
    try:
        return ImageRef.parse(image).registry.lower() == server
    except GateError:
        return True  # not a reference we can read: assume the worst


def runner_login_mode(
    folder: Path, task_file: str, values: Mapping[str, str], login_server: str | None
) -> str:
    """``Default`` when the task file uses the runner registry, else ``None``.

    The task file uses it when a ``push`` step pushes there, a ``cmd`` step runs an image
    from it that no ``build`` step of the file makes, or a ``build`` step's Dockerfile starts
    ``FROM`` an image there (``{{.Run.Registry}}`` and ``$Registry`` render to
    ``login_server``). A file this cannot read to the end (a feature the local parser does not
    model, a Dockerfile ``FROM`` it cannot resolve) keeps the login: a run that needs it must
    not lose it.
    """
    server = (login_server or UNKNOWN_RUNNER).lower()
    root = Path(folder)
    context = RunContext(
        run_id="validation", date=datetime.now(UTC), values=dict(values), registry=server
    )
    try:
        task = parse_task((root / task_file).read_text("utf-8"), context, source=task_file)
    except (GateError, OSError, UnicodeDecodeError):
        return LOGIN_DEFAULT
    built = set(task.built)
    for step in task.steps:
        if isinstance(step, PushStep) and any(_in_runner(i, server) for i in step.images):
            return LOGIN_DEFAULT
        if isinstance(step, CmdStep) and step.image not in built and _in_runner(step.image, server):
            return LOGIN_DEFAULT
        if isinstance(step, BuildStep):
            try:
                relative = PurePosixPath(step.dockerfile).relative_to(WORKSPACE)
                dockerfile = (root / relative).read_text("utf-8")
            except (ValueError, OSError, UnicodeDecodeError):
                return LOGIN_DEFAULT
            images, complete = base_images(dockerfile, step.build_args)
            if not complete or any(i not in built and _in_runner(i, server) for i in images):
                return LOGIN_DEFAULT
    return LOGIN_NONE


__all__ = [
    "LOGIN_DEFAULT",
    "LOGIN_NONE",
    "UNKNOWN_RUNNER",
    "run_registries",
    "runner_login_mode",
]
