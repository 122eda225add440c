"""The gate's one exception tree.

Every error the gate raises on purpose derives from :class:`GateError`; its message says what
went wrong and what to do about it, and never carries a secret. ``exit_code`` is what the CLI
exits with; ``retryable`` tells a caller (CLI, queue worker) whether trying again later may help.

::

    GateError
    ├── UsageError                   exit 2  (bad input: fix the request or the config)
    │   ├── InvalidReference         an image reference that does not parse
    │   ├── ConfigError              the gate configuration file is wrong
    │   ├── NoMatchingRule           no rule watches this image
    │   ├── UnsupportedTask          the task file uses what the local runner cannot run
    │   ├── NotFound                 a record, digest or tag that does not exist
    │   └── Conflict                 the request contradicts the current state
    └── InfrastructureError          exit 3  (worth retrying later)
        ├── RegistryError            a registry refused or failed
        │   ├── RegistryUnavailable  connection errors, 5xx, 429 after bounded retries
        │   │   └── RetryLater       the registry asked for a longer pause than the gate waits
        │   ├── RegistryMisbehaved   an answer the gate refuses (too big, too slow, malformed,
        │   │                        pointing where the gate does not go)
        │   ├── AuthenticationError  credentials missing or refused (exit 2: fix the config)
        │   └── ManifestUnknown      the tag or digest is not there (exit 2: fix the request)
        ├── ValidatorError           the validation could not run (not: it ran and said no)
        ├── LedgerError              the record store failed
        └── QueueError               the request queue could not be written
"""

from __future__ import annotations


class GateError(Exception):
    """Root of every error the gate raises on purpose."""

    exit_code: int = 3
    retryable: bool = False
    recorded: str | None = None
    """The id of the failed record the gate already wrote for this error, if it wrote one (a
    failure to resolve): whoever catches it need not record it again."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(GateError):
    """The request or the configuration is wrong; retrying the same thing will not help."""

    exit_code = 2


class InvalidReference(UsageError):
    """An image reference does not follow the OCI/Docker reference grammar."""


class ConfigError(UsageError):
    """The gate configuration is invalid; the message names the file, the rule and the field."""


class NoMatchingRule(UsageError):
    """No rule of the configuration watches the requested image."""


class UnsupportedTask(UsageError):
    """The ACR task file uses a step type or property the local runner cannot execute."""


class NotFound(UsageError):
    """A record, tag or digest the request names does not exist."""


class Conflict(UsageError):
    """The request contradicts the current state (e.g. a run-ID tag that already exists)."""


class InfrastructureError(GateError):
    """Something the gate depends on failed; trying again later may succeed."""

    exit_code = 3
    retryable = True


class RegistryError(InfrastructureError):
    """A registry answered with an error or could not be reached."""


class RegistryUnavailable(RegistryError):
    """Connection errors, 5xx or 429 answers that outlasted the bounded retries."""


class RetryLater(RegistryUnavailable):
    """The registry asked (``Retry-After``) for a longer pause than the gate waits; try again
    after ``retry_after`` seconds (None when it named no time)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RegistryMisbehaved(RegistryError):
    """The registry's answer is refused by the gate's bounds: larger or slower than allowed,
    malformed, or sending the gate (or its credentials) where they do not go. Retryable like
    any registry error (a slow network or a broken proxy may pass), though a registry that
    does this on purpose will be refused again."""


class AuthenticationError(RegistryError):
    """The registry refused the credentials, or needs credentials none were configured for."""

    exit_code = 2
    retryable = False


class ManifestUnknown(RegistryError):
    """The tag or digest does not exist in the repository."""

    exit_code = 2
    retryable = False


class ValidatorError(InfrastructureError):
    """The validation could not be carried out (engine missing, run lost, timeout of our own)."""


class LedgerError(InfrastructureError):
    """The record store failed."""


class QueueError(InfrastructureError):
    """The request queue refused a message or could not be reached."""
