"""Registry authentication as an ``httpx.Auth`` flow: the distribution token challenge.

A registry that wants a token answers ``401`` with ``WWW-Authenticate: Bearer realm=...,
service=..., scope=...`` (the distribution "Token Authentication Specification"); the flow
asks the realm for a token (anonymously, or with the host's basic credentials), then sends the
request again with it. Tokens are cached per host and scope until shortly before they expire,
and a host known to want tokens gets one before its first request, saving a 401. A ``Basic``
challenge is answered with the configured credentials.

Credentials and tokens go only to the host they are for: a request to any other origin (an
absolute upload ``Location`` elsewhere, a blob redirected to storage) is sent without them and
its challenges are not answered; httpx itself drops ``Authorization`` on a redirect to another
origin. No token or password is ever put in an error message.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from gate.adapters.registry.endpoint import RETRY_STATUSES, Endpoint, Transient, parse_retry_after
from gate.adapters.registry.guard import ALLOW, LIMIT, refuse_url
from gate.errors import AuthenticationError, RegistryError, RegistryMisbehaved

# A token is renewed this long before the expiry the realm announced.
_TOKEN_MARGIN = 10.0
TOKEN_LIMIT = 1 << 20
"""The most the gate reads of a token answer (a JWT of a few KiB, in JSON)."""

_Flow = Generator[httpx.Request, httpx.Response]


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Split ``WWW-Authenticate: Scheme k="v",k2=v2`` into (lower-case scheme, params)."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        key.lower(): quoted if quoted or plain == "" else plain
        for key, quoted, plain in re.findall(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]*))', rest)
    }
    return scheme.lower(), params


def needs_credentials(ep: Endpoint, scopes: tuple[str, ...]) -> AuthenticationError:
    """The error for a registry that wants credentials the configuration does not give."""
    return AuthenticationError(
        f"registry {ep.name} requires credentials for {', '.join(scopes)} and none are "
        f"configured; add username and password_secret for host '{ep.name}' under "
        "'registries' in the gate configuration"
    )


def refused(ep: Endpoint, scopes: tuple[str, ...]) -> AuthenticationError:
    """The error for a registry (or its token service) that refused the request's credentials."""
    if not ep.has_credentials:
        return needs_credentials(ep, scopes)
    return AuthenticationError(
        f"registry {ep.name} refused the credentials of user '{ep.settings.username}' for "
        f"{', '.join(scopes)}; check the username and the password secret configured for "
        f"host '{ep.name}' and that the account may access that repository"
    )


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float


class TokenCache:
    """What the registries told the gate about authentication, shared by every request.

    Several poll threads may use it at once: each entry is one dict assignment, and a race
    costs at most one token fetched twice.
    """

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, tuple[str, ...]], _Token] = {}
        self._bearer_realms: dict[str, dict[str, str]] = {}
        self._basic_hosts: set[str] = set()

    def token(self, host: str, scopes: tuple[str, ...]) -> str | None:
        """A cached token of ``host`` for ``scopes`` that has not expired."""
        token = self._tokens.get((host, tuple(sorted(scopes))))
        if token is not None and token.expires_at > time.monotonic():
            return token.value
        return None

    def store(self, host: str, scopes: tuple[str, ...], token: _Token) -> None:
        """Keep ``token`` for requests of ``host`` that need ``scopes``."""
        self._tokens[(host, tuple(sorted(scopes)))] = token

    def forget(self, host: str, scopes: tuple[str, ...]) -> None:
        """Drop the token of ``host`` for ``scopes`` (the registry refused it)."""
        self._tokens.pop((host, tuple(sorted(scopes))), None)

    def realm(self, host: str) -> Mapping[str, str] | None:
        """The token realm and service ``host`` challenged with before, if any."""
        return self._bearer_realms.get(host)

    def remember_realm(self, host: str, realm: dict[str, str]) -> None:
        """Record that ``host`` wants bearer tokens from ``realm``."""
        self._bearer_realms[host] = realm

    def uses_basic(self, host: str) -> bool:
        """Whether ``host`` challenged with ``Basic``."""
        return host in self._basic_hosts

    def remember_basic(self, host: str) -> None:
        """Record that ``host`` wants basic auth."""
        self._basic_hosts.add(host)

    def known(self, ep: Endpoint, scopes: tuple[str, ...]) -> str | None:
        """The ``Authorization`` a request to ``ep`` for ``scopes`` carries without asking
        anyone first: basic credentials for a host that asked for them, a live token, ``""``
        for a host that never challenged; None when a token must be fetched first."""
        if self.uses_basic(ep.host):
            return basic_authorization(ep)
        token = self.token(ep.host, scopes)
        if token is not None:
            return f"Bearer {token}"
        return None if self.realm(ep.host) is not None else ""

    def learn(self, ep: Endpoint, challenge: str) -> None:
        """Remember what a 401's ``WWW-Authenticate`` says ``ep`` wants, as the auth flow
        does before answering it, so that the flow's next request asks for it up front."""
        scheme, params = parse_challenge(challenge)
        if scheme == "bearer" and params.get("realm"):
            self.remember_realm(
                ep.host, {"realm": params["realm"], "service": params.get("service", "")}
            )
        elif scheme == "basic" and ep.has_credentials:
            self.remember_basic(ep.host)


def basic_authorization(ep: Endpoint) -> str:
    """``Basic`` with the credentials configured for ``ep`` (for its own host only)."""
    pair = f"{ep.settings.username}:{ep.settings.password}".encode()
    return "Basic " + base64.b64encode(pair).decode()


class RegistryAuth(httpx.Auth):
    """The auth flow of one request to ``ep`` that needs ``scopes`` (synchronous clients).

    ``build_request`` is the client's, so that a token request carries its timeouts and
    headers. :attr:`token_request` is the last token request sent, so that the caller can
    tell a token service that cannot be reached from the registry itself.
    """

    def __init__(
        self,
        cache: TokenCache,
        ep: Endpoint,
        scopes: tuple[str, ...],
        *,
        build_request: Callable[..., httpx.Request],
    ) -> None:
        self._cache = cache
        self._ep = ep
        self._scopes = scopes
        self._build_request = build_request
        self.token_request: httpx.Request | None = None
        self._extensions: dict[str, Any] = {}

    def auth_flow(self, request: httpx.Request) -> _Flow:
        """Send ``request`` with what the cache knows; answer one 401 challenge, send again."""
        # a token request goes where this request may go, within its deadline
        self._extensions = dict(request.extensions)
        if not self._for_endpoint(request.url):
            yield request
            return
        authorization = yield from self._known_authorization()
        if authorization is not None:
            request.headers["Authorization"] = authorization
        response = yield request
        if response.status_code != 401 or not self._for_endpoint(response.url):
            return
        challenge = response.headers.get("WWW-Authenticate", "")
        if not isinstance(request.stream, httpx.ByteStream):
            # The body was (partly) consumed: drop the token and restart the whole upload.
            self._cache.forget(self._ep.host, self._scopes)
            raise Transient(self._ep.host, "HTTP 401 during an upload (token expired?)")
        if authorization is not None and not challenge:
            return  # refused, and no hint how to do better: the caller says so
        self._cache.forget(self._ep.host, self._scopes)
        request.headers["Authorization"] = yield from self._answer(challenge)
        yield request

    def _for_endpoint(self, url: httpx.URL) -> bool:
        origin = httpx.URL(self._ep.base)
        return (url.scheme, url.host, url.port) == (origin.scheme, origin.host, origin.port)

    def _basic(self) -> str:
        return basic_authorization(self._ep)

    def _known_authorization(self) -> Generator[httpx.Request, httpx.Response, str | None]:
        host = self._ep.host
        if self._cache.uses_basic(host):
            return self._basic()
        token = self._cache.token(host, self._scopes)
        if token is not None:
            return f"Bearer {token}"
        realm = self._cache.realm(host)
        if realm is None:
            return None
        # The host is known to want bearer tokens: fetch one up front, saving a 401.
        fetched = yield from self._fetch_token(realm, self._scopes)
        self._cache.store(host, self._scopes, fetched)
        return f"Bearer {fetched.value}"

    def _answer(self, header: str) -> Generator[httpx.Request, httpx.Response, str]:
        ep = self._ep
        scheme, params = parse_challenge(header)
        if scheme == "bearer" and params.get("realm"):
            realm = {"realm": params["realm"], "service": params.get("service", "")}
            self._cache.remember_realm(ep.host, realm)
            # The challenge names the scope this request needs; ask for ours and that one.
            wanted = self._scopes
            if params.get("scope") and params["scope"] not in wanted:
                wanted = (*wanted, params["scope"])
            token = yield from self._fetch_token(realm, wanted)
            self._cache.store(ep.host, self._scopes, token)
            return f"Bearer {token.value}"
        if scheme == "basic":
            if not ep.has_credentials:
                raise needs_credentials(ep, self._scopes)
            self._cache.remember_basic(ep.host)
            return self._basic()
        raise AuthenticationError(
            f"registry {ep.name} asked for authentication the gate does not support "
            f"('{scheme or 'no challenge'}'); only bearer-token and basic auth are supported"
        )

    def _fetch_token(
        self, realm: Mapping[str, str], scopes: tuple[str, ...]
    ) -> Generator[httpx.Request, httpx.Response, _Token]:
        ep = self._ep
        realm_url = realm["realm"]
        why = refuse_url(
            httpx.URL(realm_url),
            self._extensions.get(ALLOW, frozenset()),
            what=f"the token realm registry {ep.name} named",
        )
        if why is not None:
            raise RegistryMisbehaved(f"{why}; the gate asked it for no token")
        if ep.has_credentials and not ep.trusts_realm(realm_url):
            shown = realm_url[:200]
            raise AuthenticationError(
                f"registry {ep.name} sends clients for tokens to {shown!r}, which is not its "
                f"own host nor a token realm the gate trusts for it; the gate sent the "
                f"credentials of host '{ep.name}' nowhere. If that realm is the registry's "
                f"own token service, add its host to token_realms of host '{ep.name}'."
            )
        if (
            ep.has_credentials
            and urlsplit(realm_url).scheme != "https"
            and not ep.settings.insecure
        ):
            raise AuthenticationError(
                f"registry {ep.name} sends clients to a token service over plain HTTP "
                f"({realm_url}); the gate will not send credentials there. Use an HTTPS realm."
            )
        params: list[tuple[str, str | int | float | bool | None]] = []
        if realm.get("service"):
            params.append(("service", realm["service"]))
        params.extend(("scope", scope) for scope in scopes)
        # The realm is where the registry sends its clients for tokens: the host's basic
        # credentials are meant for it (the token specification's "Requesting a Token").
        headers = {"Authorization": self._basic()} if ep.has_credentials else {}
        self.token_request = self._build_request(
            "GET",
            realm_url,
            params=params,
            headers=headers,
            extensions={**self._extensions, LIMIT: TOKEN_LIMIT},
        )
        response = yield self.token_request
        token_host = urlsplit(realm_url).netloc
        # The flow reads the small token answer itself; requires_response_body would make
        # httpx read every answer of the request, a streamed blob included. The transport
        # guard cuts it at TOKEN_LIMIT and at the request's deadline.
        try:
            body = response.read()
        except (httpx.TimeoutException, httpx.NetworkError) as exc:
            raise Transient(token_host, f"{type(exc).__name__} at its token service") from exc
        if response.status_code in RETRY_STATUSES:
            raise Transient(
                token_host,
                f"HTTP {response.status_code} at its token service",
                parse_retry_after(response.headers.get("Retry-After")),
            )
        if response.status_code in (401, 403):
            raise refused(ep, scopes) if ep.has_credentials else needs_credentials(ep, scopes)
        if response.status_code != 200:
            raise RegistryError(
                f"the token service of registry {ep.name} answered HTTP {response.status_code}"
                f" for {', '.join(scopes)}; check the registry's status"
            )
        value, lifetime = _token_of(body)
        if not value:
            raise RegistryError(
                f"the token service of registry {ep.name} answered without a token; "
                "it does not follow the distribution token API"
            )
        return _Token(value, time.monotonic() + max(lifetime - _TOKEN_MARGIN, 1.0))


def _token_of(data: bytes) -> tuple[str, float]:
    try:
        body: Any = json.loads(data)
        value = str(body.get("token") or body.get("access_token") or "")
        lifetime = float(body.get("expires_in") or 60)
    except (ValueError, AttributeError, TypeError):
        return "", 0.0
    return value, lifetime
