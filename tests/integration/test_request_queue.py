"""The worker's request queue (gate/adapters/queues.py) against Azurite: what it puts back is
what the queue trigger reads, invisible for its delay; both connection forms the bindings use."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient

from devstack.azurite import AzuriteProcess
from gate.adapters.queues import StorageRequestQueue
from gate.compose import build_request_queue
from gate.entrypoints.messages import GateRequest
from gate.errors import ConfigError, QueueError
from tests.integration.test_ledger_contract import StorageTestIdentity, azurite_tls

__all__ = ["azurite_tls"]  # the TLS + OAuth Azurite fixture, shared with the ledger's tests


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteProcess]:
    with AzuriteProcess(tmp_path_factory.mktemp("azurite-queue")) as process:
        yield process


def raw_queue(connection_string: str, name: str) -> QueueClient:
    """The queue as the host's trigger reads it: raw text, which host.json says is base64."""
    client = QueueClient.from_connection_string(connection_string, name)
    try:
        client.create_queue()
    except ResourceExistsError:
        client.clear_messages()
    return client


def test_a_request_put_back_now_is_read_by_the_trigger_as_the_same_request(
    azurite: AzuriteProcess,
) -> None:
    raw = raw_queue(azurite.connection_string, "gate-requests")
    queue = build_request_queue({"AzureWebJobsStorage": azurite.connection_string})
    request = GateRequest(image="example.io/node:15@sha256:" + "a" * 64, postponed=2)

    queue.send_later(request.to_json(), delay_seconds=0)

    [message] = list(raw.receive_messages(messages_per_page=5, visibility_timeout=5))
    assert GateRequest.from_json(base64.b64decode(message.content)) == request


def test_a_request_put_back_later_stays_invisible_for_its_delay(azurite: AzuriteProcess) -> None:
    raw = raw_queue(azurite.connection_string, "gate-requests")
    queue = StorageRequestQueue.from_settings({"AzureWebJobsStorage": azurite.connection_string})

    queue.send_later(GateRequest(record_id="0123456789ab").to_json(), delay_seconds=120)

    assert list(raw.receive_messages(messages_per_page=5, visibility_timeout=5)) == []
    assert raw.get_queue_properties().approximate_message_count == 1


def test_the_identity_based_form_gets_a_storage_token_for_the_queue_service_uri(
    azurite_tls: tuple[AzuriteProcess, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, ca = azurite_tls
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))
    identity = StorageTestIdentity()
    settings = {"AzureWebJobsStorage__queueServiceUri": server.queue_endpoint}
    queue = StorageRequestQueue.from_settings(settings, credential=identity)
    reader = QueueClient(server.queue_endpoint, "gate-requests", credential=identity)
    reader.create_queue()

    queue.send_later(GateRequest(image="example.io/node:15").to_json(), delay_seconds=0)

    assert set(identity.scopes) == {"https://storage.azure.com/.default"}
    [message] = reader.peek_messages(max_messages=5)
    assert GateRequest.from_json(base64.b64decode(message.content)).image == "example.io/node:15"
    assert queue.name == "gate-requests"


def test_an_identity_the_queue_refuses_is_a_queue_error_naming_the_role(
    azurite_tls: tuple[AzuriteProcess, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, ca = azurite_tls
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))
    settings = {"AzureWebJobsStorage__queueServiceUri": server.queue_endpoint}
    queue = StorageRequestQueue.from_settings(
        settings, credential=StorageTestIdentity(audience="https://vault.azure.net")
    )

    with pytest.raises(QueueError, match="Storage Queue Data Contributor") as raised:
        queue.send_later(GateRequest(image="example.io/node:15").to_json(), delay_seconds=0)

    assert raised.value.retryable and "HTTP 40" in raised.value.message


def test_the_account_name_form_points_at_the_accounts_queue_endpoint() -> None:
    settings = {
        "AzureWebJobsStorage__accountName": "gatestorage",
        "AzureWebJobsStorage__credential": "managedidentity",
        "AzureWebJobsStorage__clientId": "00000000-0000-0000-0000-000000000001",
    }

    queue = StorageRequestQueue.from_settings(settings)

    assert queue.url == "https://gatestorage.queue.core.windows.net/gate-requests"
    assert type(queue.credential).__name__ == "ManagedIdentityCredential"


def test_no_storage_setting_is_a_config_error_naming_the_settings() -> None:
    with pytest.raises(ConfigError, match="AzureWebJobsStorage__queueServiceUri"):
        StorageRequestQueue.from_settings({})
