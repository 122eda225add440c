"""Trigger payloads shaped as the Functions host sends them to a worker.

The host converts each trigger value to ``TypedData`` (azure-functions-host,
``src/WebJobs.Script.Grpc/MessageExtensions/GrpcMessageConversionExtensions.cs``): strings as
``string``, JSON objects as ``json``, numbers and dates in trigger metadata as ``json``, an HTTP
request as ``RpcHttp``. The HTTP shape here assumes the capabilities the worker library declares
at init (``RawHttpBodyBytes``, ``RpcHttpBodyOnly``, ``RpcHttpTriggerMetadataRemoved``), which
the tests check: body as bytes, no ``rawBody``, no trigger metadata.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode


@dataclass(frozen=True)
class HttpData:
    """An ``RpcHttp`` request: what ASP.NET Core saw, with lowercased header names."""

    method: str
    url: str
    headers: Mapping[str, str]
    query: Mapping[str, str]
    params: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Typed:
    """One ``TypedData`` value: ``kind`` is the oneof field (json, string, bytes, http)."""

    kind: str
    value: str | bytes | HttpData

    def to_proto(self, protos: Any) -> Any:
        """The protobuf message."""
        if isinstance(self.value, HttpData):
            http = self.value
            return protos.TypedData(
                http=protos.RpcHttp(
                    method=http.method,
                    url=http.url,
                    headers=dict(http.headers),
                    query=dict(http.query),
                    params=dict(http.params),
                    body=protos.TypedData(bytes=http.body) if http.body else None,
                )
            )
        return protos.TypedData(**{self.kind: self.value})


@dataclass(frozen=True)
class Trigger:
    """A trigger's input data plus the trigger metadata the host sends along."""

    data: Typed
    metadata: Mapping[str, Typed] = field(default_factory=dict)


def _json(value: Any) -> Typed:
    return Typed("json", json.dumps(value))


def _sys(method: str) -> Typed:
    # the host adds these binding-expression values to every invocation's trigger metadata
    return _json(
        {
            "MethodName": method,
            "UtcNow": datetime.now(UTC).isoformat(),
            "RandGuid": str(uuid.uuid4()),
        }
    )


def event_grid_event(event: Mapping[str, Any], function: str = "on_push") -> Trigger:
    """ONE Event Grid event (the runtime invokes the function once per array element)."""
    return Trigger(_json(dict(event)), {"sys": _sys(function)})


def queue_message(
    body: str,
    *,
    message_id: str | None = None,
    dequeue_count: int = 1,
    pop_receipt: str = "receipt",
    function: str = "gate_worker",
) -> Trigger:
    """A storage queue message: its text (already base64-decoded by the host) and metadata.

    The metadata names are the ones the queue trigger documents and ``azure.functions``'
    ``QueueMessageInConverter`` reads: ``Id``, ``DequeueCount``, ``InsertionTime``,
    ``ExpirationTime``, ``NextVisibleTime``, ``PopReceipt``.
    """
    now = datetime.now(UTC)
    return Trigger(
        Typed("string", body),
        {
            "Id": Typed("string", message_id or str(uuid.uuid4())),
            "DequeueCount": _json(dequeue_count),
            "InsertionTime": _json(now.isoformat()),
            "ExpirationTime": _json((now + timedelta(days=7)).isoformat()),
            "NextVisibleTime": _json((now + timedelta(minutes=5)).isoformat()),
            "PopReceipt": Typed("string", pop_receipt),
            "QueueTrigger": Typed("string", body),
            "sys": _sys(function),
        },
    )


def http_request(
    method: str,
    route: str,
    *,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    query: Mapping[str, str] | None = None,
    route_params: Mapping[str, str] | None = None,
    host: str = "localhost:7071",
) -> Trigger:
    """An HTTP request to ``/api/<route>`` (host.json ``routePrefix``) as ``RpcHttp``."""
    query = dict(query or {})
    sent = {name.lower(): value for name, value in (headers or {}).items()}
    sent.setdefault("host", host)
    if body:
        sent.setdefault("content-type", "application/json")
        sent["content-length"] = str(len(body))
    url = f"http://{host}/api/{route}" + (f"?{urlencode(query)}" if query else "")
    return Trigger(
        Typed("http", HttpData(method.upper(), url, sent, query, dict(route_params or {}), body))
    )


def timer(*, past_due: bool = False, function: str = "watch") -> Trigger:
    """A timer tick: the ``TimerInfo`` JSON ``azure.functions``' ``TimerRequestConverter`` reads."""
    now = datetime.now(UTC)
    return Trigger(
        _json(
            {
                "Schedule": {"AdjustForDST": True},
                "ScheduleStatus": {
                    "Last": (now - timedelta(minutes=15)).isoformat(),
                    "Next": (now + timedelta(minutes=15)).isoformat(),
                    "LastUpdated": now.isoformat(),
                },
                "IsPastDue": past_due,
            }
        ),
        {"sys": _sys(function)},
    )
