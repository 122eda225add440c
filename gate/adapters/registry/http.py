"""The HTTP layer of the OCI registry client: one ``httpx`` client, its bounds, and retries.

Every request of the client goes through :meth:`RegistryHttp.request`, which authenticates it
(:class:`~gate.adapters.registry.auth.RegistryAuth`) and sorts the answer: transient failures
(connection errors, timeouts, 429, 500/502/503/504) raise :class:`Transient`, every other
status is returned for the caller to judge (:meth:`RegistryHttp.expect`). A unit of work that
may be repeated as a whole runs under :meth:`RegistryHttp.retry`: a bounded number of attempts
with exponential backoff and jitter (``stamina``), or the wait the registry's ``Retry-After``
asks for, capped.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote, urljoin, urlsplit

import httpx

from gate.adapters.registry.auth import RegistryAuth, TokenCache, refused
from gate.adapters.registry.endpoint import (
    RETRY_STATUSES,
    Endpoint,
    HostSettings,
    Transient,
    parse_retry_after,
)
from gate.adapters.registry.guard import (
    ALLOW,
    ALLOWED_TIME,
    ANSWER_CEILING,
    LIMIT,
    STARTED,
    GuardedTransport,
    allow_for,
)
from gate.errors import (
    AuthenticationError,
    ManifestUnknown,
    RegistryError,
    RegistryMisbehaved,
    RegistryUnavailable,
    RetryLater,
)
from gate.ports import RateLimited

if TYPE_CHECKING:
    import stamina

T = TypeVar("T")

__all__ = [
    "RETRY_STATUSES",
    "Endpoint",
    "HostSettings",
    "RegistryHttp",
    "RetryPolicy",
    "Transient",
    "append_query",
    "error_detail",
    "parse_retry_after",
]

_DOCKER_HUB = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_USER_AGENT = "gated-import-gate"
_NETWORK_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
ANSWER_LIMIT = 1 << 20
"""The most the gate reads of an answer it buffers (uploads, tag pages, token answers)."""
_ERROR_LIMIT = 64 << 10
"""The most the gate reads of an error body: enough for any registry's error JSON."""
_BLOB_RATE = float(1 << 20)
MAX_REDIRECTS = 5
"""The most redirects one request follows (httpx's default is 20)."""


# stamina logs every scheduled retry at WARNING (its default hook logs to the "stamina" logger);
# the gate reports a registry that stays unavailable in its own error, and a retry that succeeds
# is no news. Quietening the logger, rather than replacing stamina's hooks, needs no import of
# stamina here: it is imported on the first retry (RegistryHttp.retry), so a command whose
# requests all succeed at once does not pay for it and tenacity (about 10 ms of a start).
logging.getLogger("stamina").setLevel(logging.ERROR)


@dataclass(frozen=True)
class RetryPolicy:
    """How often a unit of work is tried and how long the gate waits in between.

    Attempt ``n`` that fails transiently is followed by a wait of
    ``min(backoff_max, backoff_initial / 2 * 2 ** (n - 1) + jitter)``, the jitter drawn from
    ``[0, backoff_initial / 2]`` (so the first wait lies in ``[initial / 2, initial]``), or by
    the registry's ``Retry-After``, capped at ``retry_after_max``. The ``Retry-After`` waits
    of one unit of work stay within ``wait_budget``: a registry that asks for more ends it at
    once (:class:`~gate.errors.RetryLater`), so that it cannot hold the gate past its deadline.
    """

    max_attempts: int = 5
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 20.0
    wait_budget: float = 40.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def backoff(
        self, exc: Exception, *, wait_limits: bool = True, waited: float = 0.0
    ) -> bool | float:
        """The stamina backoff hook: False (final), True (exponential backoff) or the seconds
        ``Retry-After`` asks for (capped). ``wait_limits=False`` makes a 429 final (polls). A
        wait that would take the ``waited`` seconds of this unit of work past ``wait_budget``
        is final too, and marks ``exc`` as ``too_long``."""
        if not isinstance(exc, Transient):
            return False
        if exc.status == 429 and not wait_limits:
            return False
        if exc.retry_after is not None:
            wait = min(exc.retry_after, self.retry_after_max)
            if waited + wait > self.wait_budget:
                exc.too_long = True
                return False
            return wait
        return True

    def attempts(self, *, wait_limits: bool) -> Iterator[stamina.Attempt]:
        """The attempts of one unit of work (``stamina.retry_context``), bounded by count and
        by the ``Retry-After`` waits (:meth:`backoff`)."""
        waited = [0.0]

        def hook(exc: Exception) -> bool | float:
            wait = self.backoff(exc, wait_limits=wait_limits, waited=waited[0])
            if not isinstance(wait, bool):
                waited[0] += wait
            return wait

        import stamina

        return iter(
            stamina.retry_context(
                on=hook,
                attempts=self.max_attempts,
                timeout=None,
                wait_initial=self.backoff_initial / 2,
                wait_jitter=self.backoff_initial / 2,
                wait_max=self.backoff_max,
                wait_exp_base=2,
            )
        )


def error_detail(response: httpx.Response) -> str:
    """The registry's own error codes and messages (the distribution JSON error body); at
    most 64 KiB of it is read, and a body that is cut there says nothing."""
    try:
        body = json.loads(_bounded_body(response, _ERROR_LIMIT) or b"{}")
    except (ValueError, httpx.HTTPError):
        return ""
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return ""
    parts = [
        f"{e.get('code', '?')}: {e.get('message', '')}".strip()
        for e in errors
        if isinstance(e, dict)
    ]
    return "; ".join(parts)


def _bounded_body(response: httpx.Response, limit: int) -> bytes:
    """The body of ``response`` if it is at most ``limit`` bytes (read up to that), else b""."""
    try:
        return response.content if len(response.content) <= limit else b""
    except httpx.ResponseNotRead:
        pass
    collected = bytearray()
    try:
        for chunk in response.iter_bytes():
            collected += chunk
            if len(collected) > limit:
                return b""
    except RegistryMisbehaved:
        return b""  # cut by the transport guard (too slow): the status says enough
    return bytes(collected)


def append_query(url: str, key: str, value: str) -> str:
    """``url`` with ``key=value`` appended to whatever query it has."""
    # The upload Location carries opaque state in its query (e.g. ``_state=``); httpx's
    # ``params=`` would replace that query, so the parameter is appended by hand.
    separator = "&" if urlsplit(url).query else "?"
    return f"{url}{separator}{key}={quote(value, safe=':')}"


LANE = "gate.lane"
"""Request extension: ``"poll"`` for the small answers of a poll (HEADs), which may share an
HTTP/2 connection; anything else (blobs, uploads) goes over HTTP/1.1."""

POOL_SIZE = 64
"""Connections kept per registry origin: the most poll requests in flight to one host
(``concurrency`` is at most 64), so that a pass reuses every connection it opens."""


MAX_ORIGINS = 64
"""The most origins with a pool of their own; any further ones share one pool per scheme."""


def _http2_available() -> bool:
    """Whether the ``h2`` package is installed (httpx's HTTP/2 needs it)."""
    from importlib.util import find_spec

    return find_spec("h2") is not None


class _Stack(httpx.BaseTransport):
    """Connections of one origin handed out one request at a time, the last returned first.

    Each is an httpx transport of one connection: httpcore's pool scans every connection it
    holds, under one lock, at each request and each answer (and asks the kernel whether an
    idle one was closed), so that one pool of 16 connections costs a poll more CPU in
    bookkeeping than in HTTP. Taken from the stack, a connection is its request's alone until
    the answer is closed; at most :data:`POOL_SIZE` idle ones are kept.
    """

    def __init__(self, make: Callable[[], httpx.HTTPTransport]) -> None:
        self._make = make
        self._idle: list[httpx.HTTPTransport] = []
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._make()
        try:
            response = conn.handle_request(request)
        except BaseException:
            self._give_back(conn)
            raise
        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_GivenBack(response.stream, lambda: self._give_back(conn)),
            extensions=response.extensions,
        )

    def _give_back(self, conn: httpx.HTTPTransport) -> None:
        with self._lock:
            if len(self._idle) < POOL_SIZE:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _GivenBack(httpx.SyncByteStream):
    """An answer's bytes; closing it gives its connection back (once)."""

    def __init__(self, inner: httpx.SyncByteStream, give_back: Callable[[], None]) -> None:
        self._inner = inner
        self._give_back: Callable[[], None] | None = give_back

    def __iter__(self) -> Iterator[bytes]:
        yield from self._inner

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            give_back, self._give_back = self._give_back, None
            if give_back is not None:
                give_back()


class _PerOrigin(httpx.BaseTransport):
    """One connection pool per registry origin (scheme, host, port), made on its first request.

    A host keeps up to :data:`POOL_SIZE` connections alive however many others are polled.
    A plain-HTTP pool loads no CA bundle (``verify=False`` only skips loading it: no TLS
    happens there); TLS pools verify certificates as httpx does by default
    (``SSL_CERT_FILE``/``SSL_CERT_DIR`` honoured), all with one SSL context, made on the
    first ``https://`` request (loading the CA bundle costs about 20 ms).

    Poll requests (:data:`LANE`) to an ``https://`` origin go to a pool that offers HTTP/2
    when the ``h2`` package is installed: its requests then share one multiplexed
    connection. httpx negotiates HTTP/2 by TLS ALPN only, so a registry on plain HTTP is
    spoken to in HTTP/1.1, and so is one that does not offer ``h2`` in its handshake. Poll
    requests in HTTP/1.1 take a connection each from a :class:`_Stack`. Everything else
    (blobs, uploads, tag lists) goes through an HTTP/1.1 pool per origin: large bodies through
    h2's pure-Python flow control would only be slower.
    """

    def __init__(self) -> None:
        self._pools: dict[tuple[bytes, bytes, int | None, bool], httpx.BaseTransport] = {}
        self._lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None

    def pool(self, url: httpx.URL, *, poll: bool) -> httpx.BaseTransport:
        """The pool of ``url``'s origin (``poll``: the one for small poll answers)."""
        key = (url.raw_scheme, url.raw_host, url.port, poll)
        found = self._pools.get(key)
        if found is not None:
            return found
        with self._lock:
            if key not in self._pools and len(self._pools) >= MAX_ORIGINS:
                # origins past the bound (redirect targets a peer keeps naming anew) share one
                # pool per scheme: a peer cannot make the gate keep pools without end
                key = (url.raw_scheme, b"", None, poll)
            found = self._pools.get(key)
            if found is None:
                found = self._pools[key] = self._new(url.scheme == "https", poll=poll)
        return found

    def _new(self, tls: bool, *, poll: bool) -> httpx.BaseTransport:
        verify: ssl.SSLContext | bool = False
        if tls:
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
            verify = self._ssl
        if poll and tls and _http2_available():
            return httpx.HTTPTransport(verify=verify, http2=True, limits=_limits(POOL_SIZE))
        if poll:
            return _Stack(lambda: httpx.HTTPTransport(verify=verify, limits=_limits(1)))
        return httpx.HTTPTransport(verify=verify, limits=_limits(POOL_SIZE))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        poll = request.extensions.get(LANE) == "poll"
        return self.pool(request.url, poll=poll).handle_request(request)

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()


def _limits(connections: int) -> httpx.Limits:
    return httpx.Limits(max_connections=connections, max_keepalive_connections=connections)


class RegistryHttp:
    """The connection pool, the token cache and the retry policy shared by every operation.

    ``hosts`` maps a registry name as written in references to its :class:`HostSettings`;
    unlisted hosts are reached over HTTPS anonymously. ``transport`` replaces the network
    (tests); ``timeout`` bounds every connect, read, write and pool wait, and ``deadline``
    (default: ``timeout``) a whole answer, from sending the request to its last byte (a blob
    gets one second more per MiB it declares, :meth:`blob_deadline`).
    """

    def __init__(
        self,
        hosts: Mapping[str, HostSettings] | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        deadline: float | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        self._hosts = dict(hosts or {})
        self.deadline = timeout if deadline is None else deadline
        self.policy = policy or RetryPolicy()
        # the guard is the one way to the network, for the client and for the poll HEADs alike
        self._transport = GuardedTransport(transport or _PerOrigin(), deadline=self.deadline)
        self._timeouts = httpx.Timeout(timeout).as_dict()
        self._client = httpx.Client(
            transport=self._transport,
            timeout=httpx.Timeout(timeout),
            headers={"User-Agent": _USER_AGENT},
            # only blob GETs follow redirects (ACR: one 307 to its storage, learn.microsoft.com
            # "Dedicated data endpoints in Azure Container Registry"; Docker Hub: one to its CDN); each hop passes the guard's address policy, carries no credential (the
            # auth flow answers only the registry's own origin) and stays within the answer's
            # deadline; a chain longer than this is the peer's, not a registry's
            max_redirects=MAX_REDIRECTS,
        )
        self._tokens = TokenCache()
        self._endpoints: dict[str, Endpoint] = {}

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def endpoint(self, registry: str) -> Endpoint:
        """Where the API of ``registry`` (as references name it) lives, and how to reach it."""
        found = self._endpoints.get(registry)
        if found is None:
            # the same answer for every request of a pass: worked out once per registry (the
            # dict is written by one assignment: two threads at worst both work it out)
            found = self._endpoints[registry] = self._endpoint(registry)
        return found

    def _endpoint(self, registry: str) -> Endpoint:
        settings = self._hosts.get(registry)
        host = registry
        if registry in _DOCKER_HUB:
            host = "registry-1.docker.io"
            if settings is None:
                settings = next(
                    (self._hosts[h] for h in sorted(_DOCKER_HUB) if h in self._hosts), None
                )
        settings = settings or HostSettings()
        scheme = "http" if settings.insecure else "https"
        return Endpoint(name=registry, host=host, base=f"{scheme}://{host}", settings=settings)

    def retry(self, what: str, attempt: Callable[[], T], *, wait_limits: bool = True) -> T:
        """Run ``attempt`` until it succeeds, retrying transient failures as the
        :class:`RetryPolicy` says; :class:`RegistryUnavailable` when they persist.

        ``wait_limits=False`` (polls) raises :class:`RateLimited` at the first ``429`` instead.
        """
        try:
            return attempt()  # most units of work succeed at once: no retry machinery for them
        except Transient as exc:
            first: Transient | None = exc
        # the first failure goes through the policy as the first attempt, as if it had run
        # under it: the same hook decides whether and how long to wait before the second

        def again() -> T:
            nonlocal first
            if first is not None:
                failed, first = first, None
                raise failed
            return attempt()

        try:
            for trial in self.policy.attempts(wait_limits=wait_limits):
                with trial:
                    return again()
        except Transient as exc:
            if exc.too_long:
                after = "" if exc.retry_after is None else f" {exc.retry_after:.0f} s"
                raise RetryLater(
                    f"{what}: registry {exc.host} answered {exc.reason} and asked for a pause "
                    f"of{after}; the gate waits at most {self.policy.retry_after_max:g} s a "
                    f"time and {self.policy.wait_budget:g} s in all for one operation, so it "
                    "stopped here: try again later",
                    retry_after=exc.retry_after,
                ) from None
            if exc.status == 429 and not wait_limits:
                after = "" if exc.retry_after is None else f" for {exc.retry_after:.0f} s"
                raise RateLimited(
                    f"{what}: registry {exc.host} answered HTTP 429 (too many requests), "
                    f"asking for a pause{after}; polling it resumes after that",
                    registry=exc.host,
                    retry_after=exc.retry_after,
                ) from None
            attempts = self.policy.max_attempts
            raise RegistryUnavailable(
                f"{what} failed: registry {exc.host} answered {exc.reason} on all "
                f"{attempts} attempts. Check that {exc.host} is reachable "
                "from here (network, proxy, DNS, TLS) and healthy, then retry later."
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def request(
        self,
        ep: Endpoint,
        method: str,
        url: str,
        *,
        scopes: tuple[str, ...],
        headers: Mapping[str, str] | None = None,
        content: bytes | Iterator[bytes] | None = None,
        stream: bool = False,
        follow_redirects: bool = False,
        limit: int = ANSWER_LIMIT,
        blob_size: int | None = None,
        poll: bool = False,
    ) -> httpx.Response:
        """Send one request, authenticated for ``scopes``. Transient failures raise
        :class:`Transient`; any other status but a final 401 is returned for the caller.

        Unless ``stream``, the answer is read here, at most ``limit`` bytes of it
        (:class:`~gate.errors.RegistryMisbehaved` past that). The answer must be complete
        within :attr:`deadline`; a blob of ``blob_size`` bytes gets one second more per MiB
        (it must arrive at 1 MiB/s at least) and may be that long (the caller checks it).
        ``poll``: a small answer read at once, sent on the poll connections (:data:`LANE`)."""
        allowed_time, ceiling = self.deadline, ANSWER_CEILING
        if blob_size is not None:
            allowed_time += blob_size / _BLOB_RATE
            ceiling += blob_size
        extensions = {
            ALLOW: allow_for(ep.host),
            STARTED: time.monotonic(),
            ALLOWED_TIME: allowed_time,
            LIMIT: ceiling,
        }
        if poll and not stream:
            extensions[LANE] = "poll"
        request = self._client.build_request(
            method, url, headers=headers, content=content, extensions=extensions
        )
        auth = RegistryAuth(
            self._tokens,
            ep,
            scopes,
            build_request=self._client.build_request,
        )
        try:
            # Streamed so that a blob GET is read chunk by chunk; small bodies are read below
            # or discarded by closing.
            response = self._client.send(
                request, auth=auth, stream=True, follow_redirects=follow_redirects
            )
        except _NETWORK_ERRORS as exc:
            if auth.token_request is not None and _request_of(exc) is auth.token_request:
                host = auth.token_request.url.netloc.decode("ascii")
                raise Transient(host, f"{type(exc).__name__} at its token service") from exc
            raise Transient(ep.host, f"{type(exc).__name__} ({exc})") from exc
        except httpx.HTTPError as exc:
            # too many redirects, a Location that is no URL, a protocol httpx does not speak:
            # what the registry sent, not a fault of the network
            raise RegistryMisbehaved(
                f"{method} {urlsplit(url).path[:200]} at registry {ep.name} failed: "
                f"{type(exc).__name__} ({str(exc)[:300]}). The registry (or a proxy in between) "
                "answered in a way the gate does not follow: report it."
            ) from None
        if response.status_code in RETRY_STATUSES:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            response.close()
            raise Transient(
                ep.host, f"HTTP {response.status_code}", retry_after, response.status_code
            )
        if response.status_code == 401:
            # The auth flow answered the challenge once already: this refusal is final.
            response.close()
            raise refused(ep, scopes)
        if not stream:
            with closing(response):
                data = self.read_at_most(ep, response, limit)
            if len(data) > limit:
                raise RegistryMisbehaved(
                    f"registry {ep.name} answered {method} {response.url.path} with more than "
                    f"{limit} bytes; the gate reads no more than that of such an answer. The "
                    "registry (or a proxy in between) is misbehaving: report it."
                )
            # The bounded bytes, as a response already read (``.content``, ``.json()``).
            response = httpx.Response(
                response.status_code,
                headers=response.headers,
                content=data,
                request=response.request,
                extensions=response.extensions,
                history=response.history,
            )
        return response

    def head(
        self, ep: Endpoint, url: str, *, scopes: tuple[str, ...], accept: str
    ) -> httpx.Response:
        """One HEAD for a poll, its answer's headers read (no body): :meth:`request`'s
        answers and errors, on a shorter way when the gate knows how to authenticate it.

        The short way sends the request straight through the transport guard (address
        policy, answer bounds and deadline, as every request) with the authorization the
        token cache holds for ``ep`` (a live token for ``scopes``, basic credentials for a
        host that asked for them, or nothing for a host that never challenged), skipping the
        client's cookie jar, redirect and auth-flow machinery, which a HEAD answered with
        headers only does not need. Where the cache would have to fetch a token first, and
        when the registry challenges the short way's request (401), the HEAD goes the whole
        way (:meth:`request`), which answers the challenge.
        """
        if not url.startswith(ep.base + "/"):
            raise AssertionError("a poll HEAD goes to its registry's own origin")
        authorization = self._tokens.known(ep, scopes)
        if authorization is None:  # a token to fetch first: the auth flow does that
            return self.request(
                ep, "HEAD", url, scopes=scopes, headers={"Accept": accept}, poll=True
            )
        headers = {"Accept": accept, "User-Agent": _USER_AGENT}
        if authorization:
            # to the endpoint's own origin only: the URL was checked above
            headers["Authorization"] = authorization
        request = httpx.Request(
            "HEAD",
            url,
            headers=headers,
            extensions={
                ALLOW: allow_for(ep.host),
                STARTED: time.monotonic(),
                ALLOWED_TIME: self.deadline,
                LIMIT: ANSWER_CEILING,
                LANE: "poll",
                "timeout": self._timeouts,
            },
        )
        try:
            response = self._transport.handle_request(request)
            response.request = request
            with closing(response):
                data = self.read_at_most(ep, response, _ERROR_LIMIT)
        except _NETWORK_ERRORS as exc:
            raise Transient(ep.host, f"{type(exc).__name__} ({exc})") from exc
        except httpx.HTTPError as exc:
            raise RegistryMisbehaved(
                f"HEAD {urlsplit(url).path[:200]} at registry {ep.name} failed: "
                f"{type(exc).__name__} ({str(exc)[:300]}). The registry (or a proxy in between) "
                "answered in a way the gate does not follow: report it."
            ) from None
        status = response.status_code
        if status == 401:
            # a token the registry no longer takes, or a host that started asking: the whole
            # way answers the challenge (and a refusal there is final)
            self._tokens.forget(ep.host, scopes)
            self._tokens.learn(ep, response.headers.get("WWW-Authenticate", ""))
            return self.request(
                ep, "HEAD", url, scopes=scopes, headers={"Accept": accept}, poll=True
            )
        if status in RETRY_STATUSES:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise Transient(ep.host, f"HTTP {status}", retry_after, status)
        # a HEAD answer has no body; an error answer is read (bounded) for error_detail
        return httpx.Response(
            status,
            headers=response.headers,
            content=data,
            request=request,
            extensions=response.extensions,
        )

    def read_at_most(self, ep: Endpoint, response: httpx.Response, limit: int) -> bytes:
        """The body of a streamed ``response``, but no more than ``limit`` + 1 bytes of it:
        enough for the caller to refuse an oversized one without holding all of it (the
        transport guard refuses one still coming after its deadline)."""
        data = bytearray()
        try:
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > limit:
                    break
        except (httpx.TimeoutException, httpx.NetworkError) as exc:
            raise Transient(ep.host, f"{type(exc).__name__} ({exc})") from exc
        return bytes(data[: limit + 1])

    def expect(
        self,
        response: httpx.Response,
        statuses: tuple[int, ...],
        ep: Endpoint,
        what: str,
    ) -> None:
        """Raise the matching gate error unless ``response`` has one of ``statuses``."""
        if response.status_code in statuses:
            return
        detail = error_detail(response)
        suffix = f" ({detail})" if detail else ""
        if response.status_code == 403:
            raise AuthenticationError(
                f"registry {ep.name} denied {what}{suffix}; check that the account configured "
                f"for host '{ep.name}' has that permission"
            )
        if response.status_code == 404:
            raise ManifestUnknown(f"{what}: registry {ep.name} answered 404 not found{suffix}")
        raise RegistryError(
            f"{what} failed: registry {ep.name} answered HTTP {response.status_code}{suffix}"
        )

    def location(self, ep: Endpoint, response: httpx.Response) -> str:
        """The absolute upload URL a ``202`` names in its ``Location``."""
        location = str(response.headers.get("Location", ""))
        if not location:
            raise RegistryError(
                f"registry {ep.name} started an upload without a Location header; "
                "it does not follow the distribution API"
            )
        # Registries may answer with a relative Location (``http.relativeurls``).
        return urljoin(f"{ep.base}/", location)


def _request_of(exc: httpx.RequestError) -> httpx.Request | None:
    try:
        return exc.request
    except RuntimeError:  # an error raised outside a request context carries none
        return None
