"""The emulator's core: HTTPS servers, routing, ARM's gatekeeping, tokens, faults, blobs.

One :class:`AcrEmulator` runs, in daemon threads of the test process:

* an ARM server (``arm_endpoint``): every management route answers only to a bearer token the
  emulator's :class:`TestCredential` issued for ``https://management.azure.com``, requires an
  ``api-version`` the route supports, and is recorded in ``calls``; it also serves the SAS blob
  store under ``/_blobs/`` (no bearer token there: the signature is the authorisation);
* one data-plane server per emulated registry (``EmulatedRegistry.login_server``), backed by
  a real ``docker-registry`` process (see :mod:`devstack.acr.dataplane`);
* a Key Vault server (``key_vault_url``, see :mod:`devstack.acr.keyvault`).

Every server is HTTPS with a certificate for ``127.0.0.1`` and ``localhost`` from a
``trustme`` CA written to ``ca_path``, so the real SDK clients run their real bearer-token
policies (which refuse plain HTTP). Tests export ``ca_path`` as ``REQUESTS_CA_BUNDLE`` and
``SSL_CERT_FILE``.

ARM behaviour relied on (azure-core 1.41 / azure-mgmt-core sources, ARM's published RPC):

* 401 answers carry ``WWW-Authenticate: Bearer authorization_uri="https://login.microsoftonline
  .com/{tenant}", error="invalid_token", error_description="..."``; the SDK's
  ``ARMChallengeAuthenticationPolicy`` only acts on ``error="insufficient_claims"`` (CAE) and
  otherwise returns the 401 to the caller, which maps it to ``ClientAuthenticationError``.
* A missing ``api-version`` is ``400 MissingApiVersionParameter``; a malformed one
  ``400 InvalidApiVersionParameter``; a well-formed one the resource type does not support is,
  in ARM, ``400 NoRegisteredProviderFound`` with the supported versions listed — the emulator
  answers that too (the message shape follows ARM's; the exact wording is not confirmed).
* Error bodies are ``{"error": {"code", "message"}}`` (common-types ``ErrorResponse``).
* 429/5xx from :class:`Faults` carry ``Retry-After`` when asked; azure-core's ``RetryPolicy``
  honours it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import random
import re
import secrets
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import trustme
from azure.core.credentials import AccessToken

from devstack.process import Service
from devstack.registry import RegistryProcess

if TYPE_CHECKING:  # synthetic imports tasks, which imports this module
    from devstack.acr.synthetic import SyntheticRuns

ARM_AUDIENCE = "https://management.azure.com"
ACR_AUDIENCE = "https://containerregistry.azure.net"
VAULT_AUDIENCE = "https://vault.azure.net"
# Audiences the ACR token exchange accepts (as the service does: ACR's own, and ARM's).
ACR_EXCHANGE_AUDIENCES = frozenset(
    {ACR_AUDIENCE, ARM_AUDIENCE, "https://management.core.windows.net"}
)
_API_VERSION_FORM = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$|^\d+\.\d+(-preview)?$")


# ---------------------------------------------------------------------------------------------
# requests and responses
# ---------------------------------------------------------------------------------------------


@dataclass
class Request:
    """One HTTP request as a handler sees it (header names lower-case)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    server: str = ""
    # every query parameter in order, repeated ones included (token scopes, upload state)
    query_items: list[tuple[str, str]] = field(default_factory=list)

    def json(self) -> Any:
        """The body parsed as JSON (raises ``ValueError`` if it is not JSON)."""
        return json.loads(self.body.decode("utf-8"))

    def form(self) -> dict[str, str]:
        """The body parsed as ``application/x-www-form-urlencoded``."""
        return dict(parse_qsl(self.body.decode("utf-8"), keep_blank_values=True))

    @property
    def api_version(self) -> str | None:
        """The ``api-version`` query parameter, if any."""
        return self.query.get("api-version")


@dataclass
class Response:
    """What a handler answers: dict/list bodies go out as JSON, bytes/str as they are."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> tuple[bytes, dict[str, str]]:
        """The body bytes and the headers to send with them."""
        headers = dict(self.headers)
        if self.body is None:
            data = b""
        elif isinstance(self.body, bytes):
            data = self.body
        elif isinstance(self.body, str):
            data = self.body.encode("utf-8")
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        else:
            data = json.dumps(self.body).encode("utf-8")
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
        return data, headers


def arm_error(status: int, code: str, message: str, **headers: str) -> Response:
    """ARM's error answer: ``{"error": {"code": ..., "message": ...}}``."""
    return Response(status, {"error": {"code": code, "message": message}}, dict(headers))


Handler = Callable[[Request, "re.Match[str]"], Response]


@dataclass(frozen=True)
class Route:
    """One registered route."""

    method: str
    pattern: re.Pattern[str]
    name: str
    api_versions: frozenset[str] | None
    handler: Handler
    public: bool


@dataclass(frozen=True)
class Call:
    """One request an emulated service received (ARM: every one; the benchmark counts them)."""

    method: str
    name: str
    path: str
    api_version: str | None
    status: int


# ---------------------------------------------------------------------------------------------
# faults
# ---------------------------------------------------------------------------------------------

_FAULT_CODES = {
    429: ("TooManyRequests", "The request is being throttled. Retry after the given interval."),
    500: ("InternalServerError", "Encountered internal server error. Please try again later."),
    502: ("BadGateway", "The gateway did not receive a response from the service."),
    503: ("ServiceUnavailable", "The service is temporarily unavailable. Please try again."),
    504: ("GatewayTimeout", "The gateway did not receive a response within the time limit."),
}


@dataclass
class StatusFault:
    """Answer ``status`` on route ``route`` for the next ``times`` requests (None: always)."""

    route: str
    status: int
    retry_after: int | None = None
    times: int | None = 1
    code: str | None = None
    message: str | None = None


class Faults:
    """Fault injection, by route name, plus named flags.

    ``add(route="importImage", status=429, retry_after=1, times=1)`` fails the next request of
    that route (``times`` defaults to 1 for a status fault; ``code``/``message`` replace the ARM
    error body's); ``add(import_fails_midway=True)``, ``add(keyvault_down=True)``,
    ``add(run_outcome="Failed")``, ``add(run_delay=5.0)`` set flags (``times`` counts the uses
    when given, else the flag stays until :meth:`clear`). Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: list[StatusFault] = []
        self._flags: dict[str, list[Any]] = {}  # name -> [value, remaining uses or None]

    def add(
        self,
        *,
        route: str | None = None,
        status: int | None = None,
        retry_after: int | None = None,
        times: int | None = None,
        code: str | None = None,
        message: str | None = None,
        **flags: Any,
    ) -> None:
        """Add a status fault for ``route`` and/or set flags."""
        with self._lock:
            if route is not None or status is not None:
                if route is None or status is None:
                    raise ValueError("a status fault needs both route= and status=")
                self._status.append(
                    StatusFault(
                        route, status, retry_after, 1 if times is None else times, code, message
                    )
                )
            for name, value in flags.items():
                self._flags[name] = [value, times]

    def clear(self) -> None:
        """Remove every fault and flag."""
        with self._lock:
            self._status.clear()
            self._flags.clear()

    def take_status(self, route: str) -> StatusFault | None:
        """The status fault to apply to this request of ``route`` now, if any (counts a use)."""
        with self._lock:
            for fault in self._status:
                if fault.route != route:
                    continue
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._status.remove(fault)
                return fault
        return None

    def peek(self, name: str, default: Any = None) -> Any:
        """The value of flag ``name`` without using it up."""
        with self._lock:
            entry = self._flags.get(name)
            return default if entry is None else entry[0]

    def take(self, name: str, default: Any = None) -> Any:
        """The value of flag ``name``, counting one use if it was added with ``times``."""
        with self._lock:
            entry = self._flags.get(name)
            if entry is None:
                return default
            value, remaining = entry
            if remaining is not None:
                remaining -= 1
                if remaining <= 0:
                    del self._flags[name]
                else:
                    entry[1] = remaining
            return value

    @property
    def import_fails_midway(self) -> bool:
        """Imports copy content, then end Failed without writing tags."""
        return bool(self.peek("import_fails_midway", False))

    @property
    def keyvault_down(self) -> bool:
        """Key Vault answers 503 to everything."""
        return bool(self.peek("keyvault_down", False))

    def response(self, fault: StatusFault) -> Response:
        """The ARM-shaped answer of a status fault."""
        code, message = _FAULT_CODES.get(fault.status, ("Error", "Injected failure."))
        headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
        return arm_error(fault.status, fault.code or code, fault.message or message, **headers)


# ---------------------------------------------------------------------------------------------
# tokens
# ---------------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_jwt(claims: dict[str, Any]) -> str:
    """An unsigned-looking JWT (the emulator checks tokens by lookup, not by signature)."""
    header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    payload = _b64url(json.dumps(claims).encode())
    return f"{header}.{payload}.{_b64url(secrets.token_bytes(32))}"


@dataclass(frozen=True)
class IssuedToken:
    """What the emulator knows about a token it issued."""

    audience: str
    expires_on: int
    kind: str  # "aad", "acr_refresh", "acr_access"
    scope: str = ""
    service: str = ""


class TokenBook:
    """Every token the emulator issued; a token is valid when it is here and not expired."""

    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self._lock = threading.Lock()
        self._tokens: dict[str, IssuedToken] = {}

    def issue(self, kind: str, audience: str, lifetime: int = 3600, **extra: str) -> str:
        """Issue a token of ``kind`` for ``audience``."""
        expires = int(time.time()) + lifetime
        token = make_jwt(
            {
                "aud": audience,
                "tid": self.tenant_id,
                "exp": expires,
                "iat": int(time.time()),
                "oid": "11111111-2222-3333-4444-555555555555",
                "jti": str(uuid.uuid4()),
                **extra,
            }
        )
        with self._lock:
            self._tokens[token] = IssuedToken(
                audience, expires, kind, extra.get("scope", ""), extra.get("service", "")
            )
        return token

    def issued(self) -> tuple[str, ...]:
        """Every token issued so far, expired ones included (what must never be logged)."""
        with self._lock:
            return tuple(self._tokens)

    def lookup(self, token: str) -> IssuedToken | None:
        """The issued token, if it is known and not expired."""
        with self._lock:
            found = self._tokens.get(token)
        if found is None or found.expires_on < time.time():
            return None
        return found


def bearer(req: Request) -> str | None:
    """The bearer token of ``Authorization``, if there is one."""
    value = req.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class TestCredential:
    """A ``TokenCredential`` whose tokens the emulator accepts; records the scopes asked for.

    ``get_token("https://management.azure.com/.default")`` returns a token for that audience.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, book: TokenBook) -> None:
        self._book = book
        self._lock = threading.Lock()
        self.scopes: list[tuple[str, ...]] = []
        self.kwargs: list[dict[str, Any]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        """Issue a token for the audience of the first scope (``<audience>/.default``)."""
        if not scopes:
            raise ValueError("get_token needs at least one scope")
        with self._lock:
            self.scopes.append(tuple(scopes))
            self.kwargs.append(dict(kwargs))
        audience = scopes[0].removesuffix("/.default").rstrip("/")
        lifetime = 3600
        token = self._book.issue("aad", audience, lifetime)
        return AccessToken(token, int(time.time()) + lifetime)

    def close(self) -> None:
        """Nothing to release (the protocol has it)."""


# ---------------------------------------------------------------------------------------------
# routing
# ---------------------------------------------------------------------------------------------


Gate = Callable[[Request, Route], Response | None]


class Router:
    """Routes of one server; ``gate`` runs before every non-public handler (auth, versions).

    ``route(method, pattern, name=..., api_versions=...)`` registers a handler
    ``handler(req, match) -> Response``; ``pattern`` is a regular expression that must match
    the whole path (named groups welcome). ``api_versions`` None means the route takes none.
    """

    def __init__(self, label: str, faults: Faults, *, arm: bool = False) -> None:
        self.label = label
        self.faults = faults
        self.arm = arm
        self.routes: list[Route] = []
        self.gate: Gate | None = None
        # Asked before routing: a response here (a service that is down) answers every request.
        self.outage: Callable[[Request], Response | None] | None = None
        self.calls: list[Call] = []
        self._lock = threading.Lock()

    def route(
        self,
        method: str,
        pattern: str,
        *,
        name: str,
        api_versions: set[str] | frozenset[str] | None,
        public: bool = False,
    ) -> Callable[[Handler], Handler]:
        """Decorator registering ``handler`` for ``method`` and ``pattern``."""

        def register(handler: Handler) -> Handler:
            self.routes.append(
                Route(
                    method.upper(),
                    re.compile(pattern),
                    name,
                    None if api_versions is None else frozenset(api_versions),
                    handler,
                    public,
                )
            )
            return handler

        return register

    def handle(self, req: Request) -> Response:
        """Find the route, run the gate, faults and handler, and record the call."""
        down = self.outage(req) if self.outage is not None else None
        if down is not None:
            self._record(req, "outage", down.status)
            return down
        route, match, allowed = self._find(req)
        if route is None or match is None:
            if allowed:
                response = self._error(
                    405,
                    "MethodNotAllowed",
                    f"The requested resource does not support http method '{req.method}'.",
                )
            else:
                response = self._error(404, "NotFound", f"No route for {req.method} {req.path}.")
            self._record(req, "-", response.status)
            return response
        try:
            response = self._dispatch(req, route, match)
        except Exception as exc:  # an emulator bug must show as a 500, not a hung client
            import traceback

            traceback.print_exc()
            response = self._error(500, "InternalServerError", f"emulator error: {exc!r}")
        self._record(req, route.name, response.status)
        return response

    def _dispatch(self, req: Request, route: Route, match: re.Match[str]) -> Response:
        if not route.public and self.gate is not None:
            refused = self.gate(req, route)
            if refused is not None:
                return refused
        fault = self.faults.take_status(route.name)
        if fault is not None:
            return self.faults.response(fault)
        return route.handler(req, match)

    def _find(self, req: Request) -> tuple[Route | None, re.Match[str] | None, bool]:
        path_matched = False
        for route in self.routes:
            match = route.pattern.fullmatch(req.path)
            if match is None:
                continue
            path_matched = True
            if route.method == req.method or (route.method == "GET" and req.method == "HEAD"):
                return route, match, True
        return None, None, path_matched

    def _error(self, status: int, code: str, message: str) -> Response:
        return arm_error(status, code, message)

    def _record(self, req: Request, name: str, status: int) -> None:
        with self._lock:
            self.calls.append(Call(req.method, name, req.path, req.api_version, status))


def check_api_version(
    req: Request, route: Route, resource_type: str = "registries"
) -> Response | None:
    """ARM's api-version check for ``route``: None if fine, else the 400 ARM answers."""
    if route.api_versions is None:
        return None
    version = req.api_version
    if not version:
        return arm_error(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )
    if not _API_VERSION_FORM.match(version):
        return arm_error(
            400,
            "InvalidApiVersionParameter",
            f"The api-version '{version}' is invalid. The supported versions are "
            f"'{','.join(sorted(route.api_versions, reverse=True))}'.",
        )
    if version not in route.api_versions:
        return arm_error(
            400,
            "NoRegisteredProviderFound",
            f"No registered resource provider found for location 'westeurope' and API version "
            f"'{version}' for type '{resource_type}'. The supported api-versions are "
            f"'{', '.join(sorted(route.api_versions, reverse=True))}'.",
        )
    return None


# ---------------------------------------------------------------------------------------------
# HTTPS servers
# ---------------------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TlsServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the tests read calls, not access logs

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        split = urlsplit(self.path)
        req = Request(
            method=self.command,
            path=unquote(split.path),
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self._body(),
            server=self.server.label,
            query_items=parse_qsl(split.query, keep_blank_values=True),
        )
        response = self.server.router.handle(req)
        data, headers = response.encode()
        self.send_response(response.status)
        headers.setdefault("x-ms-request-id", str(uuid.uuid4()))
        headers.setdefault("Date", format_datetime(datetime.now(UTC), usegmt=True))
        for key, value in headers.items():
            if key.lower() != "content-length":
                self.send_header(key, value)
        length = headers.get("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve


class _TlsServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, router: Router, context: ssl.SSLContext, label: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.router = router
        self.label = label
        # The TLS handshake happens in the request thread (first read), not in accept():
        # one slow client must not stall the others.
        self.socket = context.wrap_socket(
            self.socket, server_side=True, do_handshake_on_connect=False
        )

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients closing keep-alive connections are not errors worth printing.
        pass


class TlsService:
    """A router served over HTTPS on a free loopback port, in a daemon thread."""

    def __init__(self, router: Router, context: ssl.SSLContext, label: str) -> None:
        self.router = router
        self._server = _TlsServer(router, context, label)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            name=f"emulator-{label}",
            daemon=True,
            kwargs={"poll_interval": 0.1},
        )

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``https://127.0.0.1:PORT``."""
        return f"https://{self.host}"

    def start(self) -> None:
        """Start serving."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()


# ---------------------------------------------------------------------------------------------
# SAS blob store
# ---------------------------------------------------------------------------------------------


class BlobStore:
    """Blobs served by the ARM server under ``/_blobs/{container}/{name}`` with a SAS check.

    ``sas_url(container, name, write=...)`` signs ``sp`` (``r`` or ``rcw``) and ``se`` with a
    key only the emulator knows; a request whose signature, permission or expiry does not hold
    gets the 403 ``AuthenticationFailed`` Blob Storage gives. Every signature issued is kept
    (:meth:`signatures`), and so is the path of every blob request that came with an
    ``Authorization`` header (``authorized``): a client must not send the credential of the
    host that redirected it here.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.base_url = ""  # set when the ARM server is up
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._signatures: set[str] = set()
        self.authorized: list[str] = []
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, container: str, name: str) -> Path:
        digest = hashlib.sha256(f"{container}/{name}".encode()).hexdigest()
        return self.root / container / digest

    def _sign(self, container: str, name: str, permissions: str, expiry: str) -> str:
        mac = hmac.new(self._key, f"{container}/{name}\n{permissions}\n{expiry}".encode(), "sha256")
        return base64.b64encode(mac.digest()).decode()

    def sas_url(self, container: str, name: str, *, write: bool, lifetime: int = 3600) -> str:
        """A URL that reads (or, with ``write``, also creates/writes) one blob."""
        permissions = "rcw" if write else "r"
        expiry = (datetime.now(UTC) + timedelta(seconds=lifetime)).strftime("%Y-%m-%dT%H:%M:%SZ")
        sig = self._sign(container, name, permissions, expiry)
        with self._lock:
            self._signatures.add(sig)
        query = (
            f"sv=2021-08-06&sr=b&sp={permissions}&se={quote(expiry, safe='')}"
            f"&sig={quote(sig, safe='')}"
        )
        return f"{self.base_url}/_blobs/{quote(container)}/{quote(name)}?{query}"

    def signatures(self) -> frozenset[str]:
        """Every ``sig`` value :meth:`sas_url` signed so far (as signed, before URL quoting)."""
        with self._lock:
            return frozenset(self._signatures)

    def check(self, req: Request, container: str, name: str, need: str) -> Response | None:
        """None if the request's SAS grants ``need`` (a letter of ``sp``), else the 403."""
        if "authorization" in req.headers:
            with self._lock:
                self.authorized.append(req.path)
        sig = req.query.get("sig", "")
        permissions = req.query.get("sp", "")
        expiry = req.query.get("se", "")
        expected = self._sign(container, name, permissions, expiry)
        valid = hmac.compare_digest(sig, expected)
        expired = True
        try:
            expired = datetime.strptime(expiry, "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=UTC
            ) < datetime.now(UTC)
        except ValueError:
            valid = False
        if not valid or expired or need not in permissions:
            return Response(
                403,
                b'<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed</Code>'
                b"<Message>Server failed to authenticate the request. Make sure the value of "
                b"Authorization header is formed correctly including the signature.</Message></Error>",
                {"Content-Type": "application/xml", "x-ms-error-code": "AuthenticationFailed"},
            )
        return None

    def put(self, container: str, name: str, data: bytes) -> None:
        """Store a blob (what an upload through a write SAS does)."""
        path = self._path(container, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)

    def append(self, container: str, name: str, data: bytes) -> None:
        """Append to a blob (the emulated run log grows while a run runs)."""
        path = self._path(container, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, path.open("ab") as handle:
            handle.write(data)

    def get(self, container: str, name: str) -> bytes | None:
        """A blob's bytes, or None."""
        path = self._path(container, name)
        with self._lock:
            return path.read_bytes() if path.is_file() else None

    def has(self, container: str, name: str) -> bool:
        """Whether the blob exists."""
        return self._path(container, name).is_file()

    def install(self, router: Router) -> None:
        """Register the blob routes (public: the SAS is the authorisation)."""
        pattern = r"/_blobs/(?P<container>[^/]+)/(?P<name>.+)"

        @router.route("PUT", pattern, name="blobPut", api_versions=None, public=True)
        def put_blob(req: Request, m: re.Match[str]) -> Response:
            refused = self.check(req, m["container"], m["name"], "w")
            if refused is not None:
                return refused
            if req.query.get("comp"):
                return Response(
                    400,
                    b"<Error><Code>UnsupportedQueryParameter</Code></Error>",
                    {"Content-Type": "application/xml"},
                )
            self.put(m["container"], m["name"], req.body)
            return Response(201, None, self._headers(req.body))

        @router.route("GET", pattern, name="blobGet", api_versions=None, public=True)
        def get_blob(req: Request, m: re.Match[str]) -> Response:
            refused = self.check(req, m["container"], m["name"], "r")
            if refused is not None:
                return refused
            data = self.get(m["container"], m["name"])
            if data is None:
                return Response(
                    404,
                    b"<Error><Code>BlobNotFound</Code><Message>The specified blob does not exist."
                    b"</Message></Error>",
                    {"Content-Type": "application/xml", "x-ms-error-code": "BlobNotFound"},
                )
            headers = self._headers(data)
            headers["Content-Type"] = "application/octet-stream"
            headers["Accept-Ranges"] = "bytes"
            headers["x-ms-blob-type"] = "BlockBlob"
            wanted = req.headers.get("x-ms-range") or req.headers.get("range")
            if wanted:
                match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted.strip())
                if match:
                    start = int(match[1])
                    if start >= len(data):
                        return Response(
                            416,
                            b"<Error><Code>InvalidRange</Code></Error>",
                            {
                                "Content-Range": f"bytes */{len(data)}",
                                "x-ms-error-code": "InvalidRange",
                            },
                        )
                    end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                    if req.method == "HEAD":
                        headers["Content-Length"] = str(end - start + 1)
                    return Response(206, data[start : end + 1], headers)
            if req.method == "HEAD":
                headers["Content-Length"] = str(len(data))
            return Response(200, data, headers)

    @staticmethod
    def _headers(data: bytes) -> dict[str, str]:
        return {
            "ETag": f'"0x{hashlib.md5(data).hexdigest()[:16].upper()}"',
            "Last-Modified": format_datetime(datetime.now(UTC), usegmt=True),
            "Content-MD5": base64.b64encode(hashlib.md5(data).digest()).decode(),
            "x-ms-version": "2021-08-06",
            "x-ms-request-server-encrypted": "true",
        }


# ---------------------------------------------------------------------------------------------
# the emulator
# ---------------------------------------------------------------------------------------------


@dataclass
class TagState:
    """What ACR keeps about a tag beyond the backing registry: its changeable attributes."""

    write_enabled: bool = True
    delete_enabled: bool = True
    list_enabled: bool = True
    read_enabled: bool = True
    created: str = ""
    updated: str = ""


@dataclass
class EmulatedRegistry:
    """One emulated ACR: a backing ``docker-registry`` plus a TLS data-plane server.

    ``private``: a task run may pull from it only after logging in with an identity that has
    AcrPull on it (see :class:`EmulatedIdentity`); otherwise its agent is refused the pull.
    """

    name: str
    resource_group: str
    subscription_id: str
    backing: RegistryProcess
    service: TlsService | None = None
    private: bool = False
    tag_state: dict[tuple[str, str], TagState] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def resource_id(self) -> str:
        """The registry's ARM id."""
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.ContainerRegistry/registries/{self.name}"
        )

    @property
    def login_server(self) -> str:
        """``127.0.0.1:PORT`` of the TLS data plane (what ``myacr.azurecr.io`` is in Azure)."""
        assert self.service is not None, "the registry's data plane is not started"
        return self.service.host

    @property
    def calls(self) -> list[Call]:
        """Data-plane requests received."""
        assert self.service is not None
        return self.service.router.calls

    def tag(self, repository: str, tag: str) -> TagState:
        """The tag's attributes (created on first use)."""
        with self.lock:
            key = (repository, tag)
            if key not in self.tag_state:
                now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
                self.tag_state[key] = TagState(created=now, updated=now)
            return self.tag_state[key]


@dataclass
class EmulatedIdentity:
    """A user-assigned managed identity and what it was granted.

    ``pull_from``: names of the registries it has AcrPull on; ``reads_vault``: whether it may
    read the emulated Key Vault's secrets (Key Vault Secrets User). Change the grants freely.
    """

    name: str
    resource_id: str
    client_id: str
    principal_id: str
    pull_from: set[str] = field(default_factory=set)
    reads_vault: bool = False

    def may_pull(self, registry: EmulatedRegistry) -> bool:
        """Whether the identity has AcrPull on ``registry``."""
        return registry.name in self.pull_from


class AcrEmulator(Service):
    """ARM (ACR import, quick runs), ACR data planes and Key Vault, over HTTPS on loopback.

    Use as a context manager, or :meth:`start` / :meth:`stop`. See the package docstring.

    ARM throttling, settable from Python at any time (ARM answers a throttled request ``429
    Too Many Requests`` with a ``Retry-After`` in seconds: learn.microsoft.com/azure/
    azure-resource-manager/management/request-limits-and-throttling):

    * ``throttle_every = N``: every ``N``-th ARM request (counted over all ARM routes, after
      authentication) answers ``429`` ``TooManyRequests``, deterministically;
    * ``throttle_fraction = 0.1``: each ARM request answers ``429`` with that probability,
      drawn from ``random.Random(throttle_seed)`` (the draws repeat for a given order of
      requests); both may be set, either one throttles;
    * ``throttle_retry_after``: the ``Retry-After`` seconds of those answers (default 1; 0 sends
      ``Retry-After: 0``, which azure-core retries after its own backoff).

    Throttled requests are not handled (nothing changes) and are recorded in ``calls`` under
    their route's name with status 429, so ``throttled_calls()`` counts them. The blob store
    (Storage, not ARM) and Key Vault are never throttled by these settings. ``None`` / ``0.0``
    turn it off; :meth:`Faults.add` still injects one-off 429s on a named route.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        subscription_id: str = "00000000-0000-0000-0000-000000000001",
        tenant_id: str = "72f988bf-0000-0000-0000-0000000000aa",
        location: str = "westeurope",
        lro_retry_after: int = 1,
    ) -> None:
        self.workdir = Path(workdir)
        self.subscription_id = subscription_id
        self.tenant_id = tenant_id
        self.location = location
        self.lro_retry_after = lro_retry_after
        self.faults = Faults()
        self.tokens = TokenBook(tenant_id)
        self.registries: dict[str, EmulatedRegistry] = {}
        self.identities: dict[str, EmulatedIdentity] = {}  # lower-case resource id -> identity
        self.secrets: dict[str, list[tuple[str, str]]] = {}  # name -> [(version, value)]
        self.arm = Router("arm", self.faults, arm=True)
        self.arm.gate = self._arm_gate
        self.blobs = BlobStore(self.workdir / "blobs")
        self._ca = trustme.CA()
        self._server_cert = self._ca.issue_cert("127.0.0.1", "localhost")
        self.ca_path = self.workdir / "emulator-ca.pem"
        self._services: list[TlsService] = []
        self._arm_service: TlsService | None = None
        self._vault_service: TlsService | None = None
        self._credential: TestCredential | None = None
        self._started = False
        self.state: dict[str, Any] = {}  # room for route modules (operations, runs)
        # Whether an importImage fires the base-image triggers of tasks, as a push does. Not
        # documented either way (Azure/acr issue #459 asks for it): off, so nothing relies on
        # it; a test may turn it on to model the other possibility.
        self.import_fires_base_image_triggers = False
        # Runs played without podman (devstack.acr.synthetic.SyntheticRuns), for load
        # scenarios; None: every run executes its task file.
        self.synthetic_runs: SyntheticRuns | None = None
        # registry name -> how many of its runs execute at once (the others stay Queued)
        self.concurrent_runs: dict[str, int] = {}
        # ARM throttling (see the class docstring): off unless a test or benchmark sets it
        self.throttle_every: int | None = None
        self.throttle_fraction = 0.0
        self.throttle_retry_after = 1
        self.throttle_seed = 0
        self._throttle_lock = threading.Lock()
        self._throttle_count = 0
        self._throttle_random: random.Random | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> AcrEmulator:
        """Start the ARM and Key Vault servers and register every route."""
        if self._started:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._ca.cert_pem.write_to_path(str(self.ca_path))
        from devstack.acr import arm, keyvault

        arm.install(self)
        self.blobs.install(self.arm)
        self._arm_service = self._serve(self.arm, "arm")
        self.blobs.base_url = self._arm_service.url
        vault_router = keyvault.router(self)
        self._vault_service = self._serve(vault_router, "keyvault")
        from devstack.acr import task_runs, tasks

        tasks.install(self)
        task_runs.install(self)
        self._started = True
        return self

    def stop(self) -> None:
        """Stop every server and backing registry."""
        for service in reversed(self._services):
            service.stop()
        self._services.clear()
        for registry in self.registries.values():
            registry.backing.stop()
        self._started = False

    def _serve(self, router: Router, label: str) -> TlsService:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_cert.configure_cert(context)
        service = TlsService(router, context, label)
        service.start()
        self._services.append(service)
        return service

    # -- endpoints -------------------------------------------------------------------------

    @property
    def arm_endpoint(self) -> str:
        """``https://127.0.0.1:PORT`` of the ARM server."""
        assert self._arm_service is not None, "start the emulator first"
        return self._arm_service.url

    @property
    def key_vault_url(self) -> str:
        """``https://127.0.0.1:PORT`` of the Key Vault server."""
        assert self._vault_service is not None, "start the emulator first"
        return self._vault_service.url

    @property
    def calls(self) -> list[Call]:
        """Every ARM request received, in order."""
        return self.arm.calls

    @property
    def vault_calls(self) -> list[Call]:
        """Every Key Vault request received, in order."""
        assert self._vault_service is not None, "start the emulator first"
        return self._vault_service.router.calls

    def arm_calls(self, name: str | None = None) -> list[Call]:
        """ARM calls, optionally only those of route ``name``."""
        return [c for c in self.arm.calls if name is None or c.name == name]

    def credential(self) -> TestCredential:
        """The credential whose tokens the emulator accepts (one per emulator)."""
        if self._credential is None:
            self._credential = TestCredential(self.tokens)
        return self._credential

    # -- registries ------------------------------------------------------------------------

    def add_registry(
        self, name: str, resource_group: str = "rg", *, private: bool = False
    ) -> EmulatedRegistry:
        """Start a backing registry and its TLS data plane; register it under ``name``."""
        if name in self.registries:
            raise ValueError(f"registry {name!r} exists already")
        from devstack.acr import dataplane

        backing = RegistryProcess(self.workdir / "registries" / name).start()
        registry = EmulatedRegistry(
            name, resource_group, self.subscription_id, backing, private=private
        )
        try:
            registry.service = self._serve(dataplane.router(self, registry), f"acr-{name}")
        except BaseException:
            backing.stop()
            raise
        self.registries[name] = registry
        return registry

    def registry_by_id(self, resource_id: str) -> EmulatedRegistry | None:
        """The emulated registry with this ARM id (case-insensitive, as ARM ids are)."""
        wanted = resource_id.rstrip("/").lower()
        return next((r for r in self.registries.values() if r.resource_id.lower() == wanted), None)

    def registry_by_login_server(self, login_server: str) -> EmulatedRegistry | None:
        """The emulated registry whose data plane is ``login_server``."""
        return next(
            (r for r in self.registries.values() if r.service and r.login_server == login_server),
            None,
        )

    def find_registry(
        self, subscription: str, resource_group: str, name: str
    ) -> EmulatedRegistry | None:
        """The registry an ARM path names (names and groups compare case-insensitively)."""
        found = self.registries.get(name) or next(
            (r for n, r in self.registries.items() if n.lower() == name.lower()), None
        )
        if (
            found is None
            or subscription.lower() != self.subscription_id.lower()
            or found.resource_group.lower() != resource_group.lower()
        ):
            return None
        return found

    @property
    def backing_hosts(self) -> tuple[str, ...]:
        """``127.0.0.1:PORT`` of every backing registry (plain HTTP, loopback)."""
        return tuple(r.backing.host for r in self.registries.values())

    # -- managed identities ----------------------------------------------------------------

    def add_identity(
        self,
        name: str,
        resource_group: str = "identities-rg",
        *,
        pull_from: tuple[EmulatedRegistry, ...] = (),
        reads_vault: bool = False,
    ) -> EmulatedIdentity:
        """Create user-assigned identity ``name`` with the given grants."""
        resource_id = (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{resource_group}"
            f"/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
        )
        if resource_id.lower() in self.identities:
            raise ValueError(f"identity {name!r} exists already")
        identity = EmulatedIdentity(
            name=name,
            resource_id=resource_id,
            client_id=str(uuid.uuid4()),
            principal_id=str(uuid.uuid4()),
            pull_from={r.name for r in pull_from},
            reads_vault=reads_vault,
        )
        self.identities[resource_id.lower()] = identity
        return identity

    def identity_by_id(self, resource_id: str) -> EmulatedIdentity | None:
        """The identity with this ARM id (case-insensitive, as ARM ids are)."""
        return self.identities.get(resource_id.rstrip("/").lower())

    # -- persistent tasks (see devstack.acr.downstream) -------------------------------

    def add_task(self, registry: str, name: str, task_yaml: str, **options: Any) -> Any:
        """Create persistent task ``name`` on ``registry``; see ``downstream.add_task``."""
        from devstack.acr import downstream

        return downstream.add_task(self, registry, name, task_yaml, **options)

    # -- Key Vault -------------------------------------------------------------------------

    def set_secret(self, name: str, value: str) -> str:
        """Store a new version of secret ``name``; return its versioned id."""
        version = uuid.uuid4().hex
        self.secrets.setdefault(name, []).append((version, value))
        return f"{self.key_vault_url}/secrets/{name}/{version}"

    def secret_by_uri(self, uri: str) -> str:
        """Resolve a Key Vault secret URI the way an ACR identity would (latest or a version)."""
        split = urlsplit(uri)
        base = f"{split.scheme}://{split.netloc}"
        if base != self.key_vault_url:
            raise KeyError(f"{uri} is not a secret of the emulated vault {self.key_vault_url}")
        if self.faults.keyvault_down:
            raise ConnectionError(f"Key Vault {self.key_vault_url} is down (fault injected)")
        parts = [p for p in split.path.split("/") if p]
        if len(parts) not in (2, 3) or parts[0] != "secrets":
            raise KeyError(f"{uri} is not a Key Vault secret URI (…/secrets/NAME[/VERSION])")
        versions = self.secrets.get(parts[1])
        if not versions:
            raise KeyError(f"secret {parts[1]!r} does not exist in {self.key_vault_url}")
        if len(parts) == 3:
            for version, value in versions:
                if version == parts[2]:
                    return value
            raise KeyError(f"secret {parts[1]!r} has no version {parts[2]!r}")
        return versions[-1][1]

    # -- ARM gate --------------------------------------------------------------------------

    def _arm_gate(self, req: Request, route: Route) -> Response | None:
        token = bearer(req)
        challenge = (
            f'Bearer authorization_uri="https://login.microsoftonline.com/{self.tenant_id}", '
            'error="invalid_token", error_description="{}"'
        )
        if token is None:
            return arm_error(
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
                **{
                    "WWW-Authenticate": challenge.format(
                        "The authentication failed because of missing 'Authorization' header."
                    )
                },
            )
        issued = self.tokens.lookup(token)
        if issued is None or issued.kind != "aad":
            return arm_error(
                401,
                "InvalidAuthenticationToken",
                "The access token is invalid.",
                **{"WWW-Authenticate": challenge.format("The access token is invalid.")},
            )
        if issued.audience.rstrip("/") not in (ARM_AUDIENCE, "https://management.core.windows.net"):
            return arm_error(
                401,
                "InvalidAuthenticationTokenAudience",
                f"The access token has been obtained for wrong audience or resource "
                f"'{issued.audience}'. It should exactly match with one of the allowed audiences "
                f"'{ARM_AUDIENCE}/','{ARM_AUDIENCE}'.",
                **{
                    "WWW-Authenticate": challenge.format(
                        "The access token has an invalid audience."
                    )
                },
            )
        refused = check_api_version(req, route)
        if refused is not None:
            return refused
        return self._throttle()

    def _throttle(self) -> Response | None:
        """ARM's 429 for this request when the throttling settings say so, else None."""
        every, fraction = self.throttle_every, self.throttle_fraction
        if not every and not fraction:
            return None
        with self._throttle_lock:
            self._throttle_count += 1
            hit = bool(every) and self._throttle_count % int(every or 1) == 0
            if fraction:
                if self._throttle_random is None:
                    self._throttle_random = random.Random(self.throttle_seed)
                hit = self._throttle_random.random() < fraction or hit
        if not hit:
            return None
        code, message = _FAULT_CODES[429]  # ARM's exact throttling message is not published
        return arm_error(429, code, message, **{"Retry-After": str(self.throttle_retry_after)})

    def set_concurrent_runs(self, registry: str, limit: int | None) -> None:
        """Let ``registry`` execute at most ``limit`` runs at once (None: no limit).

        Runs beyond it stay ``Queued`` (no ``startTime``) until one of the running ends, as
        runs wait for an agent in ACR (:mod:`devstack.acr.tasks`).
        """
        if limit is None:
            self.concurrent_runs.pop(registry, None)
        elif limit < 1:
            raise ValueError(f"a registry runs at least one run at once, not {limit}")
        else:
            self.concurrent_runs[registry] = limit

    def throttled_calls(self) -> list[Call]:
        """The ARM requests answered 429 (by the throttling settings or a fault)."""
        return [c for c in self.arm.calls if c.status == 429]

    # -- helpers for route modules ---------------------------------------------------------

    def operation_url(self, kind: str, operation_id: str, api_version: str) -> str:
        """ARM's URL of an async operation (``operationStatuses`` or ``operationResults``)."""
        return (
            f"{self.arm_endpoint}/subscriptions/{self.subscription_id}/providers/"
            f"Microsoft.ContainerRegistry/locations/{self.location}/{kind}/{operation_id}"
            f"?api-version={api_version}"
        )
