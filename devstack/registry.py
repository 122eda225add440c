"""A real CNCF distribution registry (Debian's ``docker-registry``) on a free loopback port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx

from devstack.process import ChildProcess

_START_TIMEOUT = 10.0


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago (bind to 0, release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _config(
    root: Path,
    port: int,
    notify_url: str | None,
    htpasswd: Path | None,
    notify_headers: dict[str, list[str]] | None = None,
    delete_enabled: bool = True,
    tls: tuple[Path, Path] | None = None,
) -> str:
    # JSON is valid YAML: no dependency on a YAML writer, and no quoting surprises.
    import json

    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "data")},
            "delete": {"enabled": delete_enabled},
            # No blob-descriptor cache: tests delete and re-push, a cache would hide that.
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {
            "addr": f"127.0.0.1:{port}",
            "relativeurls": True,
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
    }
    if tls is not None:
        # distribution's configuration reference: http.tls.certificate and http.tls.key; Go's
        # net/http then offers HTTP/2 by ALPN on that listener
        http = config["http"]
        assert isinstance(http, dict)
        http["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
    if htpasswd is not None:
        config["auth"] = {"htpasswd": {"realm": "devstack", "path": str(htpasswd)}}
    if notify_url is not None:
        endpoint: dict[str, object] = {
            "name": "devstack",
            "url": notify_url,
            "timeout": "2s",
            "threshold": 3,
            "backoff": "1s",
            "ignoredmediatypes": ["application/octet-stream"],
        }
        if notify_headers:
            # sent with every notification; "values must always be lists" (distribution's
            # configuration reference, notifications.endpoints[].headers)
            endpoint["headers"] = {name: list(values) for name, values in notify_headers.items()}
        config["notifications"] = {"endpoints": [endpoint]}
    return json.dumps(config, indent=2)


def _write_htpasswd(path: Path, username: str, password: str) -> None:
    # The registry only accepts bcrypt entries; Python has no bcrypt in the standard library,
    # so use apache2-utils' htpasswd (password passed on stdin, never on the command line).
    tool = shutil.which("htpasswd")
    if tool is None:
        raise RuntimeError(
            "basic auth for the dev registry needs the 'htpasswd' tool: "
            "install apache2-utils (apt-get install apache2-utils)"
        )
    result = subprocess.run(
        [tool, "-niB", username],
        input=password + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"htpasswd failed: {result.stderr.strip()}")
    path.write_text(result.stdout)


class RegistryProcess(ChildProcess):
    """A ``docker-registry serve`` process storing under ``root``, listening on 127.0.0.1.

    Use as a context manager (or call :meth:`start` / :meth:`stop`). ``notify_url`` adds a
    notifications endpoint, ``notify_headers`` static headers its notifications carry (e.g.
    ``{"Authorization": ["Bearer <token>"]}``); ``username``/``password`` turn on htpasswd basic
    auth. ``delete_enabled=False`` turns deletion off (``storage.delete.enabled``): manifest and
    blob ``DELETE`` requests are then refused with 405 UNSUPPORTED. ``tls`` (certificate and key
    PEM files) serves HTTPS instead of HTTP.
    """

    def __init__(
        self,
        root: Path,
        *,
        port: int | None = None,
        notify_url: str | None = None,
        notify_headers: dict[str, list[str]] | None = None,
        username: str | None = None,
        password: str | None = None,
        delete_enabled: bool = True,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.root = Path(root)
        self.delete_enabled = delete_enabled
        self.tls = tls
        self._fixed_port = port
        self.port = port or 0
        self.notify_url = notify_url
        self.notify_headers = notify_headers
        self.username = username
        self.password = password
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = self.root / "registry.log"

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the registry part of image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https://`` with ``tls``)."""
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def start(self) -> RegistryProcess:
        """Start the registry and wait until ``GET /v2/`` answers; retry on a port collision."""
        self.root.mkdir(parents=True, exist_ok=True)
        htpasswd: Path | None = None
        if self.username is not None:
            htpasswd = self.root / "htpasswd"
            _write_htpasswd(htpasswd, self.username, self.password or "")
        attempts = 1 if self._fixed_port else 5
        last_error = ""
        for _ in range(attempts):
            self.port = self._fixed_port or free_port()
            config_path = self.root / "config.yml"
            config_path.write_text(
                _config(
                    self.root,
                    self.port,
                    self.notify_url,
                    htpasswd,
                    self.notify_headers,
                    delete_enabled=self.delete_enabled,
                    tls=self.tls,
                )
            )
            with self._log_path.open("wb") as log:
                self._proc = subprocess.Popen(
                    ["docker-registry", "serve", str(config_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
                )
            if self._wait_ready():
                return self
            last_error = self.log
            self._terminate()
            if "address already in use" not in last_error:
                break
        raise RuntimeError(
            f"docker-registry did not answer GET /v2/ on {self.url} within {_START_TIMEOUT:.0f}s; "
            f"its log:\n{last_error}"
        )

    def _wait_ready(self) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                # 401 counts as up: with auth on, /v2/ asks for credentials.
                # readiness only: the test CA's trust is the client's business, not this probe's
                response = httpx.get(f"{self.url}/v2/", timeout=1.0, verify=not self.tls)
                if response.status_code in (200, 401):
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        return False
