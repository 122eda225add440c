"""The request queue over Azure Queue Storage (azure-storage-queue), reached as the bindings are.

The worker puts a request back on ``gate-requests`` with a visibility delay (Put Message's
``visibilitytimeout``), which an output binding cannot do. It reads the same connection the
queue bindings use, ``AzureWebJobsStorage`` (gate/config/app_settings.py), in either form the
Functions host accepts (learn.microsoft.com/azure/azure-functions/functions-reference,
"Connecting to host storage with an identity"; functions-bindings-storage-queue, "Identity-based
connections"):

* a connection string in ``AzureWebJobsStorage`` (Azurite: ``UseDevelopmentStorage=true``);
* identity-based: ``AzureWebJobsStorage__queueServiceUri`` (or ``__accountName``, whose queue
  endpoint is ``https://{account}.queue.core.windows.net``), with ``__credential=managedidentity``
  and ``__clientId`` for a user-assigned identity (what infra/app/function.bicep sets).

Bodies are base64 text, as host.json's ``messageEncoding: base64`` tells the trigger to read
them (functions-bindings-storage-queue, "host.json settings").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gate.config.app_settings import QUEUE, STORAGE_CONNECTION
from gate.errors import ConfigError, QueueError

MAX_DELAY_SECONDS = 7 * 24 * 3600 - 1
"""Put Message: ``visibilitytimeout`` "cannot be larger than 7 days" and must be earlier than
the message's expiry, 7 days by default (learn.microsoft.com/rest/api/storageservices/put-message)."""

# bounded waits: a queue that does not answer must not hold the worker (azure-core's transport
# and retry keyword arguments: azure-sdk-for-python sdk/core/azure-core/README.md, "Configurations")
_CLIENT_OPTIONS: dict[str, Any] = {"connection_timeout": 10, "read_timeout": 30, "retry_total": 3}


class StorageRequestQueue:
    """:class:`gate.ports.RequestQueue` over one storage queue (a ``QueueClient``)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    @property
    def name(self) -> str:
        """The queue's name."""
        return str(self._client.queue_name)

    @property
    def url(self) -> str:
        """The queue's URL (no credential in it)."""
        return str(self._client.url).split("?", 1)[0]

    @property
    def credential(self) -> Any:
        """The credential the queue is reached with (None for a connection string's key)."""
        return self._client.credential

    @classmethod
    def from_settings(
        cls,
        env: Mapping[str, str],
        *,
        connection: str = STORAGE_CONNECTION,
        queue: str = QUEUE,
        credential: Any = None,
        base64: bool = True,
    ) -> StorageRequestQueue:
        """The queue ``queue`` of the storage the app setting prefix ``connection`` names."""
        from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

        options = dict(_CLIENT_OPTIONS)
        if base64:
            options["message_encode_policy"] = TextBase64EncodePolicy()
            options["message_decode_policy"] = TextBase64DecodePolicy()
        text = env.get(connection, "").strip()
        if text:
            return cls(QueueClient.from_connection_string(text, queue, **options))
        uri = env.get(f"{connection}__queueServiceUri", "").strip()
        account = env.get(f"{connection}__accountName", "").strip()
        if not uri and account:
            uri = f"https://{account}.queue.core.windows.net"
        if not uri:
            raise ConfigError(
                f"no storage for the request queue: set the app setting {connection} (a "
                f"connection string) or {connection}__queueServiceUri / {connection}__accountName "
                "(identity-based), as the queue bindings use"
            )
        if credential is None:
            credential = _credential(env, connection)
        return cls(QueueClient(account_url=uri, queue_name=queue, credential=credential, **options))

    def send_later(self, body: str, *, delay_seconds: float) -> None:
        """Put ``body`` on the queue, invisible for ``delay_seconds`` (rounded up, clamped)."""
        from azure.core.exceptions import AzureError

        delay = min(MAX_DELAY_SECONDS, max(0, int(-(-delay_seconds // 1))))
        try:
            self._client.send_message(body, visibility_timeout=delay)
        except AzureError as exc:
            # the SDK's text may carry the request URL (a SAS in it): say the type and status
            status = getattr(exc, "status_code", None)
            said = f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "")
            raise QueueError(
                f"putting a request back on queue {self.name} failed: {said}; check that the "
                "storage account is reachable and the app's identity may send queue messages "
                "(Storage Queue Data Contributor)"
            ) from None


def _credential(env: Mapping[str, str], connection: str) -> Any:
    """The identity the bindings use: a managed identity when ``__credential`` says so."""
    if env.get(f"{connection}__credential", "").strip().lower() == "managedidentity":
        from azure.identity import ManagedIdentityCredential

        client_id = env.get(f"{connection}__clientId", "").strip() or None
        return ManagedIdentityCredential(client_id=client_id)
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()
