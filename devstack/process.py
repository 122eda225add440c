"""What the dev-stack services share: context-manager use and stopping a child process."""

from __future__ import annotations

import subprocess
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
