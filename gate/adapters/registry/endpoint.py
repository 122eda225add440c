"""What every layer of the OCI registry client shares: where a registry is, how to reach it,
and the internal signal of a failure worth retrying."""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
"""The answers worth retrying: too many requests and the transient server errors."""


KNOWN_TOKEN_REALMS: Mapping[str, frozenset[str]] = {
    # Docker Hub challenges with realm="https://auth.docker.io/token"
    "registry-1.docker.io": frozenset({"auth.docker.io"}),
    # GitLab.com's registry sends clients to realm="https://gitlab.com/jwt/auth"
    "registry.gitlab.com": frozenset({"gitlab.com"}),
}
"""Token realms on another host that well-known registries use, trusted by default with the
registry's credentials. ACR (``<name>.azurecr.io/oauth2/token``), GHCR (``ghcr.io/token``),
Quay (``quay.io/v2/auth``) and distribution's usual set-ups use their own host."""


@dataclass(frozen=True)
class HostSettings:
    """How to reach one registry host.

    ``insecure`` allows plain HTTP (the configuration permits it for loopback hosts only);
    ``username``/``password`` are used for basic auth or at a bearer-token realm: the
    registry's own host, a host of ``token_realms`` (``host`` or ``host:port``), or the realm
    a well-known registry is known to use (:data:`KNOWN_TOKEN_REALMS`).
    """

    insecure: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token_realms: tuple[str, ...] = ()


@dataclass(frozen=True)
class Endpoint:
    """A registry as the references name it, and where its API actually lives."""

    name: str
    host: str
    base: str
    settings: HostSettings

    def trusts_realm(self, realm: str) -> bool:
        """Whether the credentials of this registry may go to token realm URL ``realm``: its
        own host and port, a configured ``token_realms`` entry, or a known realm."""
        parts = urlsplit(realm)
        netloc, host = parts.netloc.lower(), (parts.hostname or "").lower()
        if not host or parts.scheme not in ("http", "https"):
            return False
        own = urlsplit(self.base).netloc.lower()
        trusted = {entry.lower() for entry in self.settings.token_realms}
        trusted |= KNOWN_TOKEN_REALMS.get(self.host, frozenset())
        return netloc == own or netloc in trusted or (host in trusted and ":" not in netloc)

    @property
    def has_credentials(self) -> bool:
        """Whether both a username and a password are configured for this host."""
        return self.settings.username is not None and self.settings.password is not None


class Transient(Exception):
    """A failure worth retrying (connection error, timeout, 429, 5xx); internal only, turned
    into :class:`~gate.errors.RegistryUnavailable` or :class:`~gate.ports.RateLimited`."""

    def __init__(
        self, host: str, reason: str, retry_after: float | None = None, status: int = 0
    ) -> None:
        super().__init__(reason)
        self.host = host
        self.reason = reason
        self.retry_after = retry_after
        self.status = status
        # set by the retry policy when the pause asked for is longer than the gate waits
        self.too_long = False


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
