"""Azurite, Microsoft's Azure Storage emulator (npm ``azurite``), on free loopback ports.

``scripts/setup`` installs it project-locally under ``.tools/``; an ``azurite`` on ``PATH`` works
too. In-memory persistence: every process starts empty and leaves nothing behind.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from devstack.process import ChildProcess
from devstack.registry import free_port

_START_TIMEOUT = 30.0
_ACCOUNT = "devstoreaccount1"
# Azurite's fixed development account key: public, documented, accepted by no real account.
_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
_LOCAL_BINARY = (
    Path(__file__).resolve().parent.parent / ".tools" / "node_modules" / ".bin" / "azurite"
)


def azurite_binary() -> str:
    """The ``azurite`` executable: the project-local install, else the one on ``PATH``."""
    if _LOCAL_BINARY.exists():
        return str(_LOCAL_BINARY)
    found = shutil.which("azurite")
    if found is None:
        raise RuntimeError(
            "azurite is not installed: run scripts/setup (it installs the npm package azurite "
            "into .tools/), or put an azurite executable on PATH"
        )
    return found


class AzuriteProcess(ChildProcess):
    """An ``azurite`` process serving blob, queue and table endpoints on 127.0.0.1.

    Use as a context manager (or call :meth:`start` / :meth:`stop`). ``workdir`` holds its log
    and is its working directory (in-memory persistence writes no data there; azurite refuses
    ``--location`` together with ``--inMemoryPersistence``).

    With ``cert`` and ``key`` (PEM files) it serves HTTPS; ``oauth`` (which needs HTTPS) makes it
    accept bearer tokens too, checking their issuer, audience and lifetime but not their
    signature, so that identity-based clients can be tested with a test credential.
    """

    account_name = _ACCOUNT
    account_key = _ACCOUNT_KEY

    def __init__(
        self,
        workdir: Path,
        *,
        cert: Path | None = None,
        key: Path | None = None,
        oauth: bool = False,
    ) -> None:
        if (cert is None) != (key is None) or (oauth and cert is None):
            raise ValueError("give cert and key together; oauth needs them (HTTPS)")
        self.workdir = Path(workdir)
        self.cert = cert
        self.key = key
        self.oauth = oauth
        self.scheme = "https" if cert is not None else "http"
        self.blob_port = 0
        self.queue_port = 0
        self.table_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = self.workdir / "azurite.log"

    @property
    def blob_endpoint(self) -> str:
        """``http(s)://127.0.0.1:PORT/devstoreaccount1``: the blob service's account URL."""
        return f"{self.scheme}://127.0.0.1:{self.blob_port}/{_ACCOUNT}"

    @property
    def queue_endpoint(self) -> str:
        """``http(s)://127.0.0.1:PORT/devstoreaccount1``: the queue service's account URL."""
        return f"{self.scheme}://127.0.0.1:{self.queue_port}/{_ACCOUNT}"

    @property
    def table_endpoint(self) -> str:
        """``http(s)://127.0.0.1:PORT/devstoreaccount1``: the table service's account URL."""
        return f"{self.scheme}://127.0.0.1:{self.table_port}/{_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        """A storage connection string for the development account at these endpoints."""
        return (
            f"DefaultEndpointsProtocol={self.scheme};AccountName={_ACCOUNT};AccountKey={_ACCOUNT_KEY};"
            f"BlobEndpoint={self.blob_endpoint};QueueEndpoint={self.queue_endpoint};"
            f"TableEndpoint={self.table_endpoint};"
        )

    def start(self) -> AzuriteProcess:
        """Start azurite and wait until all three endpoints answer; retry on a port collision."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        binary = azurite_binary()
        last_error = ""
        for _ in range(5):
            self.blob_port, self.queue_port, self.table_port = _three_free_ports()
            command = [
                binary,
                "--silent",
                "--inMemoryPersistence",
                "--disableTelemetry",
                "--skipApiVersionCheck",
                "--blobHost",
                "127.0.0.1",
                "--queueHost",
                "127.0.0.1",
                "--tableHost",
                "127.0.0.1",
                "--blobPort",
                str(self.blob_port),
                "--queuePort",
                str(self.queue_port),
                "--tablePort",
                str(self.table_port),
            ]
            if self.cert is not None and self.key is not None:
                command += ["--cert", str(self.cert), "--key", str(self.key)]
            if self.oauth:
                command += ["--oauth", "basic"]
            with self._log_path.open("wb") as log:
                self._proc = subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.workdir,
                )
            if self._wait_ready():
                return self
            last_error = self.log
            self._terminate()
            if "EADDRINUSE" not in last_error:
                break
        raise RuntimeError(
            f"azurite did not answer on {self.table_endpoint} within {_START_TIMEOUT:.0f}s; "
            f"its output:\n{last_error}"
        )

    def _wait_ready(self) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            # azurite reports each service once it listens; then the table port must accept
            if self.log.count("successfully listening at") >= 3:
                try:
                    socket.create_connection(("127.0.0.1", self.table_port), timeout=1.0).close()
                    return True
                except OSError:
                    pass
            time.sleep(0.05)
        return False


def _three_free_ports() -> tuple[int, int, int]:
    ports: list[int] = []
    while len(ports) < 3:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports[0], ports[1], ports[2]
