"""The values of an ACR task file: the run context it is rendered with, its steps, the task.

Also the constants of the ACR Tasks YAML reference that rendering and parsing share. See
:mod:`gate.adapters.validation.taskfile` for what the loader relies on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

SUPPORTED_VERSIONS = ("v1.0.0", "v1.1.0", "1.0-preview-1")
"""The task file versions ACR Tasks accepts (compared case-insensitively, as ACR does)."""

DEFAULT_VERSION = "v1.0.0"
DEFAULT_STEP_TIMEOUT = 600
"""Seconds a step may run unless ``timeout`` or ``stepTimeout`` says otherwise (ACR's default)."""

WORKSPACE = "/workspace"
"""Where the source context (the rule's validation folder) is mounted, and the default workdir."""

IMMEDIATE = "-"
"""The ``when`` token that means "no dependency"."""

ALIAS_VERSION = "v1.1.0"
"""Aliases (``$ID``, ``bash``...) apply from this version on."""

DATE_FORMAT = "%Y%m%d-%H%M%Sz"
"""``{{.Run.Date}}``: the run's start in UTC, as ACR Tasks formats it."""

IMAGE_ALIASES: Mapping[str, str] = {
    "acr": "mcr.microsoft.com/acr/acr-cli:0.14",
    "az": "mcr.microsoft.com/acr/azure-cli:9fb281c",
    "bash": "mcr.microsoft.com/acr/bash:9fb281c",
    "curl": "mcr.microsoft.com/acr/curl:9fb281c",
    "cssc": "mcr.microsoft.com/acr/cssc:9fb281c",
}
"""The image aliases of the reference: a ``cmd`` whose first word is one runs that image."""

RUN_VARIABLES = ("ID", "Registry", "RegistryName", "Date", "OS", "Architecture")
"""The Run variables the local runner provides (``{{.Run.X}}``, and ``$X`` from v1.1.0)."""

# The advice of every refusal names ``az acr run`` (which is an ACR quick run) because that is
# what a user can run by hand; the text is part of the messages users and tests see, so it stays.
LOCAL_FIX = "run it as an ACR quick run (az acr run), or replace it with a cmd step"
"""The advice that ends every refusal of a feature the local runner cannot reproduce."""

ENV_KEY = re.compile(r"[^=\s]+")
"""What an ``env`` entry's or a ``--build-arg``'s key may be: no ``=`` and no white space."""


@dataclass(frozen=True)
class RunContext:
    """What a task file is rendered with: the run's variables and the rule's values.

    ``values`` feed ``{{.Values.NAME}}``; ``registry`` is ``{{.Run.Registry}}`` (the registry the
    run belongs to, the promotion target); ``date`` is the run's start (UTC).
    """

    run_id: str
    date: datetime
    values: Mapping[str, str] = field(default_factory=dict)
    registry: str = ""
    os: str = "linux"
    architecture: str = "amd64"

    def run_variable(self, name: str) -> str | None:
        """The value of ``{{.Run.<name>}}``, or None if the local runner does not provide it."""
        variables = {
            "ID": self.run_id,
            "Registry": self.registry,
            "RegistryName": self.registry.split(".", 1)[0],
            "Date": self.date.strftime(DATE_FORMAT),
            "OS": self.os,
            "Architecture": self.architecture,
        }
        return variables.get(name)


@dataclass(frozen=True)
class CmdStep:
    """One ``cmd`` step, resolved: defaults applied, env merged, dependencies explicit.

    ``working_directory`` is None when ``disableWorkingDirectoryOverride`` leaves the image's
    own; ``after`` holds the ids this step waits for (empty: it may start at once).
    """

    id: str
    image: str
    args: tuple[str, ...]
    env: tuple[str, ...]
    entry_point: str | None
    working_directory: str | None
    after: tuple[str, ...]
    timeout: int
    ignore_errors: bool
    index: int


@dataclass(frozen=True)
class BuildStep:
    """One ``build`` step, resolved: ``docker build`` with the flags the local runner supports.

    ``dockerfile`` and ``context`` are paths inside the source context (``/workspace``), already
    joined with the step's working directory; ``tags`` are the normalized image names it tags
    (``-t``), ``build_args`` the ``KEY=value`` pairs (``--build-arg``).
    """

    id: str
    tags: tuple[str, ...]
    dockerfile: str
    context: str
    build_args: tuple[str, ...]
    target: str | None
    no_cache: bool
    platform: str | None
    working_directory: str
    after: tuple[str, ...]
    timeout: int
    ignore_errors: bool
    index: int

    @property
    def image(self) -> str:
        """The first name the step tags (what a log header shows), or '' when it tags none."""
        return self.tags[0] if self.tags else ""


@dataclass(frozen=True)
class PushStep:
    """One ``push`` step: the image names (built in this run) it pushes."""

    id: str
    images: tuple[str, ...]
    after: tuple[str, ...]
    timeout: int
    ignore_errors: bool
    index: int
    working_directory: str | None = None

    @property
    def image(self) -> str:
        """The first image it pushes."""
        return self.images[0]


Step = CmdStep | BuildStep | PushStep
"""Any step of a task file."""


@dataclass(frozen=True)
class AcrTask:
    """A checked task file: its version and its steps in the order they are to run."""

    version: str
    steps: tuple[Step, ...]
    source: str = "acr-task.yaml"

    @property
    def built(self) -> tuple[str, ...]:
        """Every image name a build step of the file tags, once each."""
        return tuple(
            dict.fromkeys(t for s in self.steps if isinstance(s, BuildStep) for t in s.tags)
        )

    @property
    def images(self) -> tuple[str, ...]:
        """Every image the cmd steps run and no build step makes, once each, in first-use order.

        These are pulled before the first step; images built in the run are not.
        """
        built = set(self.built)
        return tuple(
            dict.fromkeys(
                s.image for s in self.steps if isinstance(s, CmdStep) and s.image not in built
            )
        )
