"""Outcome events on an Event Grid custom topic: one CloudEvent per final decision."""

from __future__ import annotations

from typing import Any


class OutcomePublisher:
    """Publishes CloudEvents to an Event Grid custom topic (identity auth)."""

    def __init__(self, endpoint: str, credential: Any, *, source: str = "/gated-import") -> None:
        from azure.eventgrid import EventGridPublisherClient

        self._client = EventGridPublisherClient(endpoint, credential)
        self._source = source

    def publish(self, event_type: str, subject: str, data: dict[str, Any]) -> None:
        """Send one event."""
        from azure.core.messaging import CloudEvent

        self._client.send(
            CloudEvent(source=self._source, type=event_type, subject=subject, data=data)
        )
