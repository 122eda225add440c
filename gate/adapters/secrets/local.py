"""Local secrets: environment variables, or files in a secrets folder.

A secret named ``upstream-password`` is read from ``$GATE_SECRET_UPSTREAM_PASSWORD``, else from
``<secrets_dir>/upstream-password``. The Azure composition uses Key Vault instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from gate.errors import ConfigError


def env_name(secret: str) -> str:
    """The environment variable that holds ``secret`` (``GATE_SECRET_`` + upper snake case)."""
    return "GATE_SECRET_" + re.sub(r"[^A-Za-z0-9]", "_", secret).upper()


class LocalSecrets:
    """Secrets from the environment or a folder of files, cached for the life of the process."""

    def __init__(self, secrets_dir: Path | None = None, env: Mapping[str, str] | None = None):
        self._dir = secrets_dir
        self._env = os.environ if env is None else env
        self._cache: dict[str, str] = {}

    def get(self, name: str) -> str:
        """Return secret ``name``; the error says where it was looked for, never a value."""
        if name in self._cache:
            return self._cache[name]
        var = env_name(name)
        value = self._env.get(var)
        if value is None and self._dir is not None:
            file = self._dir / name
            if file.is_file():
                value = file.read_text(encoding="utf-8").rstrip("\r\n")
        if value is None:
            where = f"${var}" + (f" or {self._dir / name}" if self._dir else "")
            raise ConfigError(f"secret '{name}' is not set; provide it in {where}")
        self._cache[name] = value
        return value
