"""What every layer of the OCI registry client shares: where a registry is, how to reach it,
and the internal signal of a failure worth retrying."""

from __future__ import annotations

import email.utils
from dataclasses import dataclass, field
from datetime import UTC, datetime

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
"""The answers worth retrying: too many requests and the transient server errors."""


@dataclass(frozen=True)
class HostSettings:
    """How to reach one registry host.

    ``insecure`` allows plain HTTP (the configuration permits it for loopback hosts only);
    ``username``/``password`` are used for basic auth or at a bearer-token realm.
    """

    insecure: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Endpoint:
    """A registry as the references name it, and where its API actually lives."""

    name: str
    host: str
    base: str
    settings: HostSettings

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
