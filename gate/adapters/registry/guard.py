"""The transport guard: where the registry client may send a request, and how much of any
answer it reads.

Every request the client sends (those it makes, the redirects httpx follows, the token
requests of the auth flow) passes :class:`GuardedTransport` on its way to the network:

* only ``http`` and ``https`` URLs are requested;
* no request goes to a loopback, link-local or cloud-metadata address, unless the registry the
  request is made for is itself on such an address (local development with ``127.0.0.1``
  registries); the address class allowed travels with the request (:func:`allow_for`) and is
  kept by httpx on the redirects it follows;
* every answer is cut at a ceiling (:data:`ANSWER_CEILING`, or what the request allows), and
  at its deadline, however it is read: httpx reads the bodies of 401 challenges and of
  redirects itself, and a peer must not make those endless either.

Host names are judged as written, not resolved: a name that resolves to a forbidden address is
the DNS operator's choice, not the registry's.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections.abc import Iterator

import httpx

from gate.errors import RegistryMisbehaved

ANSWER_CEILING = 8 << 20
"""The most the gate reads of any answer that is not a blob (a backstop; each kind of answer
has its own, smaller bound)."""

ALLOW = "gate.allow"
"""Request extension: the address classes (``loopback``, ``link-local``) the request may go to."""

LIMIT = "gate.limit"
"""Request extension: the most bytes its answer may have (blobs: their declared size)."""

STARTED = "gate.started"
"""Request extension: the monotonic time the request was first sent (before auth, redirects)."""

ALLOWED_TIME = "gate.allowed-time"
"""Request extension: the seconds from :data:`STARTED` by which its answer must be complete."""

_METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
_METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, Azure, GCP, OpenStack, ...
        ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)


@functools.lru_cache(maxsize=4096)
def address_class(host: str) -> str | None:
    """``loopback``, ``link-local`` or ``metadata`` for a host the gate does not visit by
    default (bracketed IPv6 and a port are accepted), None for any other host.

    A pure function of the name as written, so worked out once per host (the cache is
    bounded: a peer naming ever new hosts in redirects only evicts, never grows it)."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    name = name.rstrip(".")
    if name in _METADATA_NAMES:
        return "metadata"
    if name == "localhost" or name.endswith(".localhost"):
        return "loopback"
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in _METADATA_ADDRESSES:
        return "metadata"
    if address.is_loopback or address.is_unspecified:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    return None


@functools.lru_cache(maxsize=4096)
def allow_for(registry_host: str) -> frozenset[str]:
    """The address classes requests made for ``registry_host`` may go to: its own class (a
    registry on loopback may redirect to loopback), never ``metadata`` unless it is one."""
    own = address_class(registry_host)
    return frozenset() if own is None else frozenset({own})


def refuse_url(url: httpx.URL, allowed: frozenset[str], *, what: str) -> str | None:
    """Why the gate does not send ``what`` to ``url`` (a sentence), or None if it may."""
    if url.scheme not in ("http", "https") or not url.host:
        shape = f"{url.scheme}:// URL" if url.scheme else "URL without scheme or host"
        return (
            f"{what} names {shape} {str(url)[:200]!r}; the gate only follows absolute "
            "http:// and https:// URLs"
        )
    host = url.host
    kind = address_class(host)
    if kind is not None and kind not in allowed:
        return (
            f"{what} points at {host}, a {kind} address; the gate sends no request there "
            "unless the configured registry itself is on such an address"
        )
    return None


class GuardedTransport(httpx.BaseTransport):
    """``inner`` with the request policy and the answer bounds of this module."""

    def __init__(self, inner: httpx.BaseTransport, *, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        allowed: frozenset[str] = request.extensions.get(ALLOW, frozenset())
        why = refuse_url(request.url, allowed, what=f"a {request.method} request")
        if why is not None:
            raise RegistryMisbehaved(
                f"{why}. A registry (or its token service) sent the gate there; it was not "
                "followed. Report it to the registry's operator."
            )
        started = float(request.extensions.get(STARTED, time.monotonic()))
        allowed_time = float(request.extensions.get(ALLOWED_TIME, self._deadline))
        limit = int(request.extensions.get(LIMIT, ANSWER_CEILING))
        response = self._inner.handle_request(request)
        if not isinstance(response.stream, httpx.SyncByteStream):  # pragma: no cover
            return response
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Bounded(response.stream, request, limit, started, allowed_time),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._inner.close()


class _Bounded(httpx.SyncByteStream):
    """An answer's bytes, refused past ``limit`` or ``allowed_time`` seconds after ``started``."""

    def __init__(
        self,
        inner: httpx.SyncByteStream,
        request: httpx.Request,
        limit: int,
        started: float,
        allowed_time: float,
    ) -> None:
        self._inner = inner
        self._request = request
        self._limit = limit
        self._allowed_time = allowed_time
        self._deadline = started + allowed_time

    def __iter__(self) -> Iterator[bytes]:
        seen = 0
        for chunk in self._inner:
            seen += len(chunk)
            if seen > self._limit:
                raise RegistryMisbehaved(
                    f"{self._where()} answered with more than {self._limit} bytes; the gate "
                    "reads no more than that of this answer. Report it to the registry's "
                    "operator."
                )
            if time.monotonic() > self._deadline:
                raise RegistryMisbehaved(
                    f"{self._where()} took longer than {self._allowed_time:g} s to answer; "
                    "the gate does not wait longer for one answer. Check the registry's "
                    "health (or the network to it), then retry."
                )
            yield chunk

    def _where(self) -> str:
        url = self._request.url
        return f"{url.netloc.decode('ascii')} ({self._request.method} {url.path[:200]})"

    def close(self) -> None:
        self._inner.close()
