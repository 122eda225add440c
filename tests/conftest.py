"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.acr import AcrEmulator, TestCredential
from devstack.images import ImageBuilder
from devstack.podman import podman_env as _podman_env
from devstack.registry import RegistryProcess

# ---------------------------------------------------------------------------------------------
# devstack fixtures: real registries, daemonless image builds, podman configuration.
# (Add other fixtures below this block.)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    """A fresh docker-registry on a free loopback port (plain http), stopped afterwards."""
    with RegistryProcess(tmp_path / "registry") as process:
        yield process


@pytest.fixture
def registries(tmp_path: Path) -> Iterator[tuple[RegistryProcess, RegistryProcess]]:
    """Two independent registries: (source, target)."""
    with (
        RegistryProcess(tmp_path / "registry-a") as first,
        RegistryProcess(tmp_path / "registry-b") as second,
    ):
        yield first, second


@pytest.fixture(scope="session")
def podman_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Podman settings of this host (runc, cgroupfs, vfs) in a private store, set in os.environ.

    Session-scoped: the vfs store keeps pulled layers between tests. Returns the variables.
    """
    env = _podman_env(tmp_path_factory.mktemp("podman"))
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def image_builder(tmp_path: Path) -> ImageBuilder:
    """Builds busybox images and pushes them: ``image_builder.image("HOST/REPO:TAG", env=...)``."""
    return ImageBuilder(tmp_path / "images")


# ---------------------------------------------------------------------------------------------
# end of devstack fixtures
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# azurite: Azure Storage (blob, queue, table) emulator for the Table ledger and the queue
# ---------------------------------------------------------------------------------------------


from devstack.azurite import AzuriteProcess  # noqa: E402  (this block is appended)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteProcess]:
    """One Azurite for the session (in memory): ``.connection_string``, ``.table_endpoint``, ….

    Tests share it: give each test its own table/container/queue names.
    """
    with AzuriteProcess(tmp_path_factory.mktemp("azurite")) as process:
        yield process


# ---------------------------------------------------------------------------------------------
# end of azurite
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Azure fixtures: the emulator of ARM (ACR import, quick and task runs), ACR data planes, Key Vault.
# Shared by every Azure adapter test; function scope (each test gets fresh state).
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def acr_emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AcrEmulator]:
    """A started :class:`~devstack.acr.AcrEmulator`, its CA trusted through the env.

    ``REQUESTS_CA_BUNDLE`` (azure-core's requests transport) and ``SSL_CERT_FILE`` (httpx) point
    at the emulator's test CA for the duration of the test. Add registries with
    ``acr_emulator.add_registry(name)``.
    """
    with AcrEmulator(tmp_path / "acr-emulator") as emulator:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(emulator.ca_path))
        monkeypatch.setenv("SSL_CERT_FILE", str(emulator.ca_path))
        yield emulator


@pytest.fixture
def azure_credential(acr_emulator: AcrEmulator) -> TestCredential:
    """The credential whose tokens the emulator accepts (records the scopes asked for)."""
    return acr_emulator.credential()


# ---------------------------------------------------------------------------------------------
# end of Azure fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _parse_cache_of_its_own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The command line caches configuration parses under $XDG_CACHE_HOME: the tests' own
    folder, not the user's."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before
