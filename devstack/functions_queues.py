"""What the Functions host's storage-queue extension does, over a real storage account (Azurite).

The queue trigger's semantics, from the documentation of the extension
(learn.microsoft.com/azure/azure-functions/functions-bindings-storage-queue, "host.json
settings"; functions-bindings-storage-queue-trigger, "Poison messages", "Concurrency"; the
extension's ``QueuesOptions`` reference):

* each instance fetches ``batchSize`` messages at a time and fetches again once the messages it
  is running drop to ``newBatchThreshold``: at most ``batchSize + newBatchThreshold`` run at
  once per instance; an empty queue is polled again after a growing delay, at most
  ``maxPollingInterval``;
* a message being processed stays invisible (the host fetches it with a visibility of its own,
  10 minutes, and renews it while the function runs: Azure/azure-webjobs-sdk issue 1040, where
  the maintainer says the host.json ``visibilityTimeout`` is used only when an invocation
  fails); here it is fetched invisible for ``hold_seconds`` (at least the function timeout, so
  no renewal is needed);
* an invocation that succeeds deletes its message; one that fails makes it visible again after
  ``visibilityTimeout`` ("the time interval between retries when processing of a message
  fails"), and after ``maxDequeueCount`` failed deliveries it moves to ``<queue>-poison``;
* messages are base64 text unless ``messageEncoding`` is ``none``.

:class:`QueueSettings` reads host.json's ``extensions.queues``; :class:`QueueHost` plays ``K``
instances of one queue trigger in threads of this process.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError
from azure.storage.queue import (
    QueueClient,
    QueueMessage,
    TextBase64DecodePolicy,
    TextBase64EncodePolicy,
)


def timespan_seconds(text: str) -> float:
    """Seconds of a host.json TimeSpan (``hh:mm:ss``, optionally ``d.hh:mm:ss`` or fractions)."""
    days = 0
    if "." in text.split(":")[0]:
        head, text = text.split(".", 1)
        days = int(head)
    parts = [float(p) for p in text.split(":")]
    if len(parts) != 3:
        raise ValueError(f"{text!r} is not a TimeSpan hh:mm:ss")
    hours, minutes, seconds = parts
    return days * 86400 + hours * 3600 + minutes * 60 + seconds


@dataclass(frozen=True)
class QueueSettings:
    """host.json ``extensions.queues`` (and ``functionTimeout``), in seconds.

    Defaults are the documented ones (batchSize 16, newBatchThreshold batchSize / 2 on one
    vCPU, visibilityTimeout 0, maxDequeueCount 5, maxPollingInterval 1 minute).
    """

    batch_size: int = 16
    new_batch_threshold: int = 8
    visibility_timeout: float = 0.0
    max_dequeue_count: int = 5
    max_polling_interval: float = 60.0
    function_timeout: float = 30 * 60.0
    base64: bool = True

    @property
    def concurrency(self) -> int:
        """Messages one instance runs at once at most."""
        return self.batch_size + self.new_batch_threshold

    @property
    def retry_budget(self) -> float:
        """``visibilityTimeout * maxDequeueCount``: how long failing deliveries are spread over."""
        return self.visibility_timeout * self.max_dequeue_count

    @classmethod
    def from_host_json(cls, host_json: Mapping[str, Any]) -> QueueSettings:
        """The settings a host.json document gives."""
        queues: Mapping[str, Any] = host_json.get("extensions", {}).get("queues", {})
        batch = int(queues.get("batchSize", 16))
        return cls(
            batch_size=batch,
            new_batch_threshold=int(queues.get("newBatchThreshold", batch // 2)),
            visibility_timeout=timespan_seconds(str(queues.get("visibilityTimeout", "00:00:00"))),
            max_dequeue_count=int(queues.get("maxDequeueCount", 5)),
            max_polling_interval=timespan_seconds(
                str(queues.get("maxPollingInterval", "00:01:00"))
            ),
            function_timeout=timespan_seconds(str(host_json.get("functionTimeout", "00:30:00"))),
            base64=str(queues.get("messageEncoding", "base64")).lower() == "base64",
        )

    @classmethod
    def of_app(cls, app_dir: Path) -> QueueSettings:
        """The settings of the app in ``app_dir`` (its host.json)."""
        return cls.from_host_json(json.loads((app_dir / "host.json").read_text()))

    def scaled(self, factor: float) -> QueueSettings:
        """Every duration times ``factor`` (counts unchanged)."""
        return replace(
            self,
            visibility_timeout=self.visibility_timeout * factor,
            max_polling_interval=self.max_polling_interval * factor,
            function_timeout=self.function_timeout * factor,
        )


def queue_client(connection_string: str, name: str, *, base64: bool = True) -> QueueClient:
    """Queue ``name`` of the account, created if missing (as the host creates its queues)."""
    options: dict[str, Any] = (
        {
            "message_encode_policy": TextBase64EncodePolicy(),
            "message_decode_policy": TextBase64DecodePolicy(),
        }
        if base64
        else {}
    )
    client = QueueClient.from_connection_string(connection_string, name, **options)
    with contextlib.suppress(ResourceExistsError):
        client.create_queue()
    return client


def _whole_seconds(seconds: float) -> int:
    # the Queue service takes visibility timeouts in whole seconds
    return max(0, round(seconds))


@dataclass
class HostCounts:
    """What a :class:`QueueHost` did."""

    deliveries: int = 0
    failures: int = 0
    poisoned: int = 0
    completed: int = 0
    receipts_lost: int = 0  # a message that came back (hold lapsed) before its invocation ended
    peak_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


class QueueHost:
    """``instances`` hosts running ``invoke`` for the messages of one queue, as the extension does.

    ``invoke(message)`` raising is a failed invocation. ``hold_seconds`` is how long a fetched
    message stays invisible while its invocation runs (default: the function timeout plus a
    tenth). Call :meth:`start`, then :meth:`stop` (waits for running invocations).
    """

    def __init__(
        self,
        connection_string: str,
        queue: str,
        settings: QueueSettings,
        invoke: Callable[[QueueMessage], None],
        *,
        instances: int = 1,
        hold_seconds: float | None = None,
        poison_queue: str | None = None,
    ) -> None:
        if instances < 1:
            raise ValueError("a queue host needs at least one instance")
        self.settings = settings
        self.queue = queue_client(connection_string, queue, base64=settings.base64)
        self.poison = queue_client(
            connection_string, poison_queue or f"{queue}-poison", base64=settings.base64
        )
        self.invoke = invoke
        self.instances = instances
        self.hold = hold_seconds if hold_seconds is not None else settings.function_timeout * 1.1
        self.counts = HostCounts()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pools: list[ThreadPoolExecutor] = []
        self._in_flight = 0

    def start(self) -> QueueHost:
        """Start every instance's fetch loop."""
        for number in range(self.instances):
            pool = ThreadPoolExecutor(
                self.settings.concurrency, thread_name_prefix=f"{self.queue.queue_name}-{number}"
            )
            self._pools.append(pool)
            thread = threading.Thread(
                target=self._instance, args=(pool,), name=f"host-{number}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self) -> None:
        """Stop fetching; wait for the invocations that run."""
        self._stop.set()
        for thread in self._threads:
            thread.join()
        for pool in self._pools:
            pool.shutdown(wait=True)

    @property
    def in_flight(self) -> int:
        """Invocations running now, over every instance."""
        with self.counts.lock:
            return self._in_flight

    def _instance(self, pool: ThreadPoolExecutor) -> None:
        running = [0]  # this instance's invocations
        lock = threading.Lock()
        idle = 0.0
        while not self._stop.is_set():
            with lock:
                busy = running[0]
            if busy > self.settings.new_batch_threshold:
                self._stop.wait(0.02)
                continue
            try:
                batch = list(
                    self.queue.receive_messages(
                        messages_per_page=self.settings.batch_size,
                        max_messages=self.settings.batch_size,
                        visibility_timeout=max(1, _whole_seconds(self.hold)),
                    )
                )
            except AzureError:
                batch = []
            if not batch:
                # the extension's backoff on an empty queue, up to maxPollingInterval
                idle = min(max(idle * 2, 0.05), max(0.05, self.settings.max_polling_interval))
                self._stop.wait(idle)
                continue
            idle = 0.0
            for message in batch:
                with lock:
                    running[0] += 1
                pool.submit(self._deliver, message, running, lock)

    def _deliver(self, message: QueueMessage, running: list[int], lock: threading.Lock) -> None:
        with self.counts.lock:
            self.counts.deliveries += 1
            self._in_flight += 1
            self.counts.peak_in_flight = max(self.counts.peak_in_flight, self._in_flight)
        try:
            try:
                self.invoke(message)
                ok = True
            except Exception:
                ok = False
            try:
                if ok:
                    self.queue.delete_message(message)
                elif (message.dequeue_count or 1) >= self.settings.max_dequeue_count:
                    self.poison.send_message(message.content)
                    self.queue.delete_message(message)
                else:
                    self.queue.update_message(
                        message, visibility_timeout=_whole_seconds(self.settings.visibility_timeout)
                    )
            except AzureError:
                with self.counts.lock:
                    self.counts.receipts_lost += 1
            with self.counts.lock:
                if ok:
                    self.counts.completed += 1
                else:
                    self.counts.failures += 1
                    if (message.dequeue_count or 1) >= self.settings.max_dequeue_count:
                        self.counts.poisoned += 1
        finally:
            with self.counts.lock:
                self._in_flight -= 1
            with lock:
                running[0] -= 1

    def idle(self) -> bool:
        """True when nothing runs and the queue has no message, visible or not."""
        if self.in_flight:
            return False
        properties = self.queue.get_queue_properties()
        return not properties.approximate_message_count


def wait_idle(hosts: list[QueueHost], *, timeout: float, settle: float = 0.5) -> bool:
    """Wait until every host is idle twice ``settle`` seconds apart; False at ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(h.idle() for h in hosts):
            time.sleep(settle)
            if all(h.idle() for h in hosts):
                return True
        time.sleep(settle)
    return False
