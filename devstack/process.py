"""What the dev-stack services share: context-manager use and stopping a child process."""

from __future__ import annotations

import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Self


class Service:
    """A service started with :meth:`start` and stopped with :meth:`stop`, or used in ``with``."""

    def start(self) -> Self:
        """Start the service; returns it."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the service and wait for it."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ThreadedServer(Service):
    """An HTTP server of our own on a loopback port, served by a background thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    def start(self) -> Self:
        """Serve on a background thread."""
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """Ask ``proc`` to exit, kill it if it does not within ``timeout``, and reap it."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ChildProcess(Service):
    """A service that is one child process logging to ``_log_path``."""

    _proc: subprocess.Popen[bytes] | None = None
    _log_path: Path

    @property
    def log(self) -> str:
        """What the process has written so far."""
        try:
            return self._log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        terminate(proc)

    def stop(self) -> None:
        """Terminate the process and wait for it to exit."""
        self._terminate()
