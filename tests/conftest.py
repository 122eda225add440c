"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

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
