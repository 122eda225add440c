"""``gate listen``: the local counterpart of the Event Grid trigger.

A plain OCI registry (CNCF distribution, Debian's ``docker-registry``) posts a notification
envelope for every push to the endpoints in its ``notifications`` configuration. The listener
answers at once (the registry retries slow endpoints) after checking each event against the
rules with :func:`gate.entrypoints.events.triage`, and a worker thread gates what was accepted, one request
at a time, with the same service the CLI uses.

With a token, a notification must carry ``Authorization: Bearer <token>`` or is refused (401)
before its body is read; the registry sends it from its endpoint's ``headers`` (CNCF
distribution's configuration reference, ``notifications.endpoints``: "Static headers to add to
each request ... values must always be lists"). Without a token the listener binds only to a
loopback address: anyone who can reach it could otherwise make the gate validate and promote.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import queue
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from gate.entrypoints.events import Ignored, MalformedEvent, parse_notifications, triage
from gate.entrypoints.messages import GateRequest
from gate.errors import GateError, UsageError
from gate.logsafe import get_logger
from gate.usecases.gating import gate_image
from gate.usecases.keeper import Gatekeeper, GateOutcome

# arguments from outside (event ids, names, messages) are escaped and capped: gate/logsafe.py
log = get_logger("gate.listener")

MAX_BODY_BYTES = 1024 * 1024
MIN_TOKEN_CHARS = 16


def read_token(path: Path) -> str:
    """The shared secret in ``path`` (surrounding whitespace dropped); never logged."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise UsageError(f"cannot read the token file {path}: {reason}") from None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise UsageError(
            f"the token file {path} must hold one secret of at least {MIN_TOKEN_CHARS} "
            "characters without spaces; e.g. python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))' > FILE"
        )
    return token


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


class PushListener:
    """An HTTP endpoint for registry notifications, and the worker that gates what they report.

    ``on_outcome`` sees each decision (the CLI prints it). Use as a context manager, or
    :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        keeper: Gatekeeper,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        on_outcome: Callable[[GateOutcome], None] | None = None,
        token: str | None = None,
    ) -> None:
        if not token and not is_loopback(host):
            raise UsageError(
                f"refusing to listen on {host} without a token: anyone who can reach it could "
                "make the gate validate and promote; pass --token-file (and give the registry "
                "the same secret in its endpoint's headers), or bind to 127.0.0.1"
            )
        self._token = token.encode() if token else None
        self.keeper = keeper
        self.on_outcome = on_outcome or (lambda outcome: None)
        self.requests: queue.Queue[GateRequest | None] = queue.Queue()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        """Where to point the registry's ``notifications.endpoints[].url``."""
        host, port = self._server.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else host
        return f"http://{name}:{port}/events"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                log.debug(format, *args)

            def _answer(
                self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                if not listener.authorized(self.headers.get("Authorization")):
                    # checked before the body is read: a refused sender costs nothing more
                    log.warning(
                        "refused a notification from %s: missing or wrong bearer token",
                        self.client_address[0],
                    )
                    self.close_connection = True
                    self._answer(
                        401,
                        {
                            "error": "unauthorized",
                            "detail": "send 'Authorization: Bearer <token>' (the registry's "
                            "notifications.endpoints[].headers) with the listener's token",
                        },
                        {"WWW-Authenticate": "Bearer"},
                    )
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    self._answer(
                        413, {"error": "too_large", "detail": f"limit {MAX_BODY_BYTES} bytes"}
                    )
                    return
                status, body = listener.receive(self.rfile.read(length))
                self._answer(status, body)

        return Handler

    def authorized(self, authorization: str | None) -> bool:
        """True when no token is required, or ``authorization`` is ``Bearer <the token>``."""
        if self._token is None:
            return True
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        # constant time: the answer's timing must not tell how much of a guess was right
        return hmac.compare_digest(credentials.strip().encode(), self._token)

    def receive(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        """Triage one notification envelope; queue what the rules watch. Returns the answer."""
        try:
            pushes = parse_notifications(json.loads(raw or b"null"))
        except (ValueError, UnicodeDecodeError):
            return 400, {"error": "bad_json", "detail": "expected a notification envelope"}
        except MalformedEvent as exc:
            # a malformed envelope will not improve with the registry's retries: drop it
            log.warning("dropped malformed notification: %s", exc.message)
            return 200, {"queued": 0, "dropped": exc.message}
        queued, ignored = 0, []
        for push in pushes:
            try:
                decision = triage(self.keeper.config, push)
            except MalformedEvent as exc:
                log.warning("dropped malformed notification %s: %s", push.id, exc.message)
                continue
            if isinstance(decision, Ignored):
                log.info("ignored notification %s: %s", push.id, decision.reason)
                ignored.append(decision.reason)
                continue
            self.requests.put(decision)
            queued += 1
        return 200, {"queued": queued, "ignored": ignored}

    def _work(self) -> None:
        while (request := self.requests.get()) is not None:
            try:
                outcome = gate_image(self.keeper, request.image or "", trigger="event")
            except GateError as exc:
                log.error("could not gate %s: %s", request.image, exc.message)
                continue
            finally:
                self.requests.task_done()
            self.on_outcome(outcome)

    def start(self) -> PushListener:
        """Serve notifications and start the worker (both in daemon threads)."""
        for target in (self._server.serve_forever, self._work):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop taking notifications, let the worker finish what is queued, and return."""
        self._server.shutdown()
        self._server.server_close()
        self.requests.put(None)
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def __enter__(self) -> PushListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
