"""azure-core's ``RetryPolicy`` with every wait bounded: what the ARM clients of the gate retry with.

ARM answers a throttled request with ``429 Too Many Requests`` and a ``Retry-After`` value, "the
number of seconds your application should wait (or sleep) before sending the next request. If
you send a request before the retry value has elapsed, your request isn't processed and a new
retry value is returned" (learn.microsoft.com/azure/azure-resource-manager/management/
request-limits-and-throttling, "Error code").

What azure-core 1.41.0 does with it (``azure/core/pipeline/policies/_retry.py``,
``RetryPolicyBase``):

* ``is_retry``: an answer of 400 or more **with** a ``Retry-After`` header is retried whatever
  the method (POST included); without one, 408, 429, 500, 502, 503, 504 and 506+ are retried for
  HEAD/GET/PUT/DELETE/OPTIONS/TRACE, and POST/PATCH only on 500, 503, 504;
* ``increment``: each retry of an answer counts against ``retry_total`` (default 10) and
  ``retry_status`` (default 3); the policy gives up, raising the last answer's error, when one
  goes below zero: 3 retries of a throttled request by default;
* ``sleep``: ``Retry-After`` (or ``retry-after-ms`` / ``x-ms-retry-after-ms``) is slept **as
  given, without any upper bound**; without it, exponential backoff ``retry_backoff_factor *
  2**(n-1)`` (default 0.8 s) capped at ``retry_backoff_max`` (default 120 s);
* ``timeout`` (default 604800 s, a week) bounds the whole, but is only checked before each
  attempt, after the sleep.

So a ``Retry-After: 3600`` would hold a worker for an hour per retry. :class:`BoundedRetryPolicy`
keeps azure-core's decisions and counters and adds one rule: an answer asking for a wait longer
than ``retry_after_max`` is **not** retried (retrying sooner is pointless, ARM would not process
it); its error reaches the caller at once, which decides (a validation keeps polling until its
own deadline, or FAILS, which says nothing against the image). Every wait is then at most ``retry_after_max``, and a request
takes at most ``retry_status`` of them: its total wait is bounded by
``retry_status * retry_after_max``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from azure.core.pipeline import PipelineResponse
from azure.core.pipeline.policies import RetryPolicy

ARM_RETRY_STATUS = 4
"""Retries of a throttled (429) or failing (5xx) ARM answer per request."""

ARM_RETRY_TOTAL = 6
"""Retries of any kind (answers, connection and read errors) per request."""

ARM_RETRY_AFTER_MAX = 60.0
"""The longest ``Retry-After`` (seconds) a request waits out; a longer one fails it at once.

ARM's token buckets refill every second (10 writes/s, 25 reads/s per subscription and region,
same page, "Regional throttling and token bucket algorithm"), so a throttled request is
normally asked to wait seconds; a minute is far past that and keeps one validation's worst case
(``ARM_RETRY_STATUS`` waits) within a few minutes.
"""

ARM_BACKOFF_MAX = 30.0
"""The longest backoff (seconds) between retries of an answer without ``Retry-After``."""


class BoundedRetryPolicy(RetryPolicy[Any, Any]):
    """``RetryPolicy`` that never waits longer than ``retry_after_max`` seconds between tries.

    ``sleep`` is injectable (tests count and skip the waits); ``retries`` counts the retries made,
    for logs and tests. Other keyword arguments are azure-core's (``retry_total``,
    ``retry_status``, ``retry_backoff_factor``, ``retry_backoff_max``…).
    """

    def __init__(
        self,
        *,
        retry_after_max: float = ARM_RETRY_AFTER_MAX,
        sleep: Callable[[float], None] = time.sleep,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("retry_total", ARM_RETRY_TOTAL)
        kwargs.setdefault("retry_status", ARM_RETRY_STATUS)
        kwargs.setdefault("retry_backoff_max", ARM_BACKOFF_MAX)
        super().__init__(**kwargs)
        self.retry_after_max = retry_after_max
        self._sleep = sleep
        self.retries = 0

    def is_retry(self, settings: dict[str, Any], response: PipelineResponse[Any, Any]) -> bool:
        """azure-core's decision, except that a wait beyond ``retry_after_max`` is not retried."""
        if not super().is_retry(settings, response):
            return False
        wait = self.get_retry_after(response)
        return wait is None or wait <= self.retry_after_max

    def sleep(
        self,
        settings: dict[str, Any],
        transport: Any,
        response: PipelineResponse[Any, Any] | None = None,
    ) -> None:
        """Wait ``Retry-After`` when the answer gives one, else the backoff; both bounded."""
        self.retries += 1
        wait = self.get_retry_after(response) if response is not None else None
        if not wait:
            wait = self.get_backoff_time(settings)
        wait = min(wait, self.retry_after_max)
        if wait > 0:
            self._sleep(wait)


def arm_retry_policy(
    client_kwargs: dict[str, Any], *, sleep: Callable[[float], None] = time.sleep
) -> BoundedRetryPolicy:
    """The policy for an ARM client, taking azure-core's ``retry_*`` keys out of ``client_kwargs``.

    The keys are removed (the SDK client builds its own ``RetryPolicy`` from any it sees, and would
    ignore them once ``retry_policy`` is given anyway); ``retry_after_max`` is taken too.
    """
    options = {
        key: client_kwargs.pop(key)
        for key in list(client_kwargs)
        if key.startswith("retry_") and key != "retry_policy"
    }
    return BoundedRetryPolicy(sleep=sleep, **options)


__all__ = [
    "ARM_BACKOFF_MAX",
    "ARM_RETRY_AFTER_MAX",
    "ARM_RETRY_STATUS",
    "ARM_RETRY_TOTAL",
    "BoundedRetryPolicy",
    "arm_retry_policy",
]
