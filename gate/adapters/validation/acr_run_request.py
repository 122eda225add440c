"""What the ACR validator sends: the source archive, the task run's name and its request body.

Everything here is pure: the archive's bytes, the ``taskRuns`` name of an attempt, the
platform, timeout and registry credentials of the ``EncodedTaskRunRequest``, and the
``TaskRun`` resource itself (see :mod:`gate.adapters.validation.acr_task_run` for why a task
run, and what each part means to ACR).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import math
import re
import stat
import tarfile
import uuid
from collections.abc import Collection, Mapping
from pathlib import Path

from azure.mgmt.containerregistrytasks.models import (
    Credentials,
    CustomRegistryCredentials,
    EncodedTaskRunRequest,
    IdentityProperties,
    PlatformProperties,
    SecretObject,
    SetValue,
    SourceRegistryCredentials,
    TaskRun,
    TaskRunProperties,
    UserIdentityProperties,
)

from gate.errors import ConfigError

MIN_RUN_TIMEOUT = 300
MAX_RUN_TIMEOUT = 28800
"""The run timeout bounds of ``EncodedTaskRunRequest.timeout`` in the REST specification."""

TASK_RUN_NAME = re.compile(r"^[a-zA-Z0-9-]{5,50}$")
"""The ``taskRunName`` grammar of the REST specification (5-50 characters)."""

_NAME_PREFIX = "gate-"

TAR_MTIME = 0
"""Every entry of the source archive carries this mtime, so equal folders give equal bytes."""

# PlatformProperties' enums in the 2025-03-01-preview specification (OS, Architecture, Variant)
_ACR_OS = {"linux": "Linux", "windows": "Windows"}
_ACR_ARCHITECTURES = frozenset({"amd64", "x86", "386", "arm", "arm64"})
_ACR_VARIANTS = frozenset({"v6", "v7", "v8"})


def pack_folder(folder: Path) -> bytes:
    """The folder as a deterministic ``tar.gz``: what ACR unpacks into ``/workspace``.

    Entries are sorted by path; mtimes are ``TAR_MTIME``; owners are 0 without names; modes
    are 0755 for folders and executables, 0644 for other files (only the executable bit means
    anything to a run). Symbolic links are kept as links; sockets, fifos and devices are left
    out. The gzip header carries no name and a zero mtime.
    """
    root = Path(folder)
    raw = io.BytesIO()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(root).as_posix())
            if not (info.isfile() or info.isdir() or info.issym()):
                continue
            info.mtime = TAR_MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            executable = info.isdir() or bool(info.mode & stat.S_IXUSR)
            info.mode = 0o755 if executable else 0o644
            if info.isfile():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    return raw.getvalue()


def task_run_name(key: str, attempt: int) -> str:
    """The task run name of attempt ``attempt`` of the validation ``key``: ``gate-{key}-{n}``.

    Deterministic, so a later attempt finds an earlier one's task run by name. A key that is not
    already lower-case letters, digits and single inner hyphens, or that would make the name
    longer than 50 characters, is replaced by a SHA-256 prefix of itself (equal keys give equal
    names, different keys different ones). An empty key gives a random name (nothing to find).
    """
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, got {attempt}")
    suffix = f"-{attempt}"
    if not key:
        return f"{_NAME_PREFIX}{uuid.uuid4().hex}{suffix}"
    name = f"{_NAME_PREFIX}{key}{suffix}"
    if not re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", key) or not TASK_RUN_NAME.match(name):
        room = 50 - len(_NAME_PREFIX) - len(suffix)
        name = f"{_NAME_PREFIX}{hashlib.sha256(key.encode()).hexdigest()[:room]}{suffix}"
    return name


def platform_properties(
    text: str, *, default_os: str, default_architecture: str
) -> PlatformProperties:
    """The run's ``PlatformProperties``: ``text`` (``os/arch[/variant]``), else the default.

    Only the values the 2025-03-01-preview specification enumerates (``OS``: Windows,
    Linux; ``Architecture``: amd64, x86, 386, arm, arm64; ``Variant``: v6, v7, v8) are sent;
    another platform is refused before anything is scheduled.
    """
    if not text:
        return PlatformProperties(os=default_os, architecture=default_architecture)
    os_name, _, rest = text.partition("/")
    architecture, _, variant = rest.partition("/")
    acr_os = _ACR_OS.get(os_name)
    if (
        acr_os is None
        or architecture not in _ACR_ARCHITECTURES
        or (variant and variant not in _ACR_VARIANTS)
    ):
        raise ConfigError(
            f"platform {text} cannot run as an ACR task run, whose platforms are "
            f"{'/'.join(sorted(_ACR_OS))} on {', '.join(sorted(_ACR_ARCHITECTURES))} "
            f"(variants {', '.join(sorted(_ACR_VARIANTS))}); remove it from the rule's "
            "platforms"
        )
    return PlatformProperties(os=acr_os, architecture=architecture, variant=variant or None)


def run_timeout_of(seconds: float) -> int:
    """The ``timeout`` of the run request for a validation timeout of ``seconds``."""
    if seconds > MAX_RUN_TIMEOUT:
        raise ConfigError(
            f"validation timeout {seconds:g} s is longer than an ACR run may take "
            f"({MAX_RUN_TIMEOUT} s); lower the rule's validation timeout_seconds"
        )
    # ACR refuses shorter run timeouts; our own deadline still applies the shorter one.
    return max(MIN_RUN_TIMEOUT, math.ceil(seconds))


def registry_credentials(
    custom_registries: Mapping[str, tuple[str, str] | None],
    identity_client_id: str | None,
    *,
    login_mode: str | None = None,
) -> Credentials | None:
    """The run's ``credentials``: each host the task logs in to, and its runner-registry login.

    In ``customRegistries``, None maps to an ACR the identity pulls from itself; a (username,
    password) pair of Key Vault secret URIs to a registry whose credentials that identity reads.
    ``login_mode`` (``None`` or ``Default``, see :mod:`~gate.adapters.validation.acr_run_scope`)
    becomes ``sourceRegistry.loginMode``; without it ACR applies its own default.
    """
    if not custom_registries and login_mode is None:
        return None
    registries: dict[str, CustomRegistryCredentials] = {}
    for host, secret_uris in sorted(custom_registries.items()):
        if secret_uris is None:
            # an ACR: the runner identity logs in itself (needs AcrPull there)
            registries[host] = CustomRegistryCredentials(identity=identity_client_id)
            continue
        username_uri, password_uri = secret_uris
        registries[host] = CustomRegistryCredentials(
            user_name=SecretObject(type="Vaultsecret", value=username_uri),
            password=SecretObject(type="Vaultsecret", value=password_uri),
            # the identity that reads the secrets: the client ID of the user-assigned
            # identity attached to the task run (Azure/acr quickdockerbuildusingidentitykeyvault)
            identity=identity_client_id,
        )
    source = None if login_mode is None else SourceRegistryCredentials(login_mode=login_mode)
    return Credentials(custom_registries=registries or None, source_registry=source)


def task_run(
    *,
    task: bytes,
    values: Mapping[str, str],
    secret_values: Collection[str],
    platform: PlatformProperties,
    timeout: int,
    source_location: str,
    credentials: Credentials | None,
    identity_resource_id: str | None,
    location: str | None = None,
) -> TaskRun:
    """The ``taskRuns`` resource of one validation: the task file and its values, encoded.

    ``task`` is the task file's bytes; values named in ``secret_values`` are flagged
    ``isSecret``; ``identity_resource_id`` (the runner's user-assigned identity) is attached
    when given; ``source_location`` is the uploaded archive's ``relativePath``; ``location`` is
    the resource's ``location`` ("The location of the resource", a top-level string of
    ``TaskRun``, not required: REST specification 2019-06-01-preview and 2025-03-01-preview,
    Bicep type ``Microsoft.ContainerRegistry/registries/taskRuns``), the runner registry's
    region, sent when known.
    """
    identity = None
    if identity_resource_id:
        identity = IdentityProperties(
            type="UserAssigned",
            user_assigned_identities={identity_resource_id: UserIdentityProperties()},
        )
    return TaskRun(
        identity=identity,
        location=location,
        properties=TaskRunProperties(
            run_request=EncodedTaskRunRequest(
                encoded_task_content=base64.b64encode(task).decode("ascii"),
                values_property=[
                    SetValue(name=key, value=value, is_secret=key in secret_values)
                    for key, value in values.items()
                ],
                platform=platform,
                timeout=timeout,
                source_location=source_location,
                credentials=credentials,
            ),
        ),
    )


__all__ = [
    "MAX_RUN_TIMEOUT",
    "MIN_RUN_TIMEOUT",
    "TAR_MTIME",
    "TASK_RUN_NAME",
    "pack_folder",
    "platform_properties",
    "registry_credentials",
    "run_timeout_of",
    "task_run",
    "task_run_name",
]
