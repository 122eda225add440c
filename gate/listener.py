"""``gate listen``: the local counterpart of the Event Grid trigger.

A plain OCI registry (CNCF distribution, Debian's ``docker-registry``) posts a notification
envelope for every push to the endpoints in its ``notifications`` configuration. The listener
answers at once (the registry retries slow endpoints) after checking each event against the
rules with :func:`gate.events.triage`, and a worker thread gates what was accepted, one request
at a time, with the same service the CLI uses.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gate.errors import GateError
from gate.events import Ignored, MalformedEvent, parse_notifications, triage
from gate.logsafe import get_logger
from gate.messages import GateRequest
from gate.service import Gatekeeper, GateOutcome, gate_image

# arguments from outside (event ids, names, messages) are escaped and capped: gate/logsafe.py
log = get_logger("gate.listener")

MAX_BODY_BYTES = 1024 * 1024


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
    ) -> None:
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

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    self._answer(
                        413, {"error": "too_large", "detail": f"limit {MAX_BODY_BYTES} bytes"}
                    )
                    return
                status, body = listener.receive(self.rfile.read(length))
                self._answer(status, body)

        return Handler

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
