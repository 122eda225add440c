"""What the host's storage queue extension does, over a real storage account (Azurite).

Output bindings put each collected item on the binding's queue; the queue trigger hands each
message to the function with its ``DequeueCount``, deletes it when the invocation succeeds, lets
it come back when it fails, and after ``maxDequeueCount`` failed deliveries moves it to
``<queue>-poison``. Messages are base64 text unless host.json says ``messageEncoding: none``
(learn.microsoft.com/azure/azure-functions/functions-bindings-storage-queue-trigger, "Poison
messages"; functions-bindings-storage-queue, "host.json settings").
"""

from __future__ import annotations

from pathlib import Path

from azure.storage.queue import QueueClient

from devstack.functions_queues import QueueSettings, queue_client
from tests.functions_host.host import FunctionsHost, Invocation
from tests.functions_host.payloads import queue_message


class StorageQueues:
    """Queues of one storage account, handled with the app's host.json queue settings."""

    def __init__(self, connection_string: str, app_dir: Path) -> None:
        settings = QueueSettings.of_app(app_dir)
        self.connection_string = connection_string
        self.base64 = settings.base64
        self.max_dequeue_count = settings.max_dequeue_count

    def client(self, name: str) -> QueueClient:
        """The queue ``name``, created if missing (as the host creates its queues)."""
        return queue_client(self.connection_string, name, base64=self.base64)

    def clear(self, *names: str) -> None:
        """Empty queues (tests share one account)."""
        for name in names:
            self.client(name).clear_messages()

    def peek(self, name: str) -> list[str]:
        """The texts waiting on queue ``name``, without taking them."""
        return [m.content for m in self.client(name).peek_messages(max_messages=32)]

    def put(self, invocation: Invocation, binding: str) -> list[str]:
        """Write what ``invocation`` left in its queue output ``binding``; returns the texts."""
        if not invocation.ok:
            return []  # a failed invocation's outputs are not written
        queue = self.client(str(invocation.function.binding(binding)["queueName"]))
        messages = invocation.queue_messages(binding)
        for text in messages:
            queue.send_message(text)
        return messages

    def deliver(self, host: FunctionsHost, function: str) -> list[Invocation]:
        """Run the queue trigger of ``function`` until its queue is empty; the invocations."""
        name = str(host.functions[function].trigger["queueName"])
        queue = self.client(name)
        invocations: list[Invocation] = []
        while batch := list(queue.receive_messages(messages_per_page=16, visibility_timeout=60)):
            for message in batch:
                invocation = host.invoke(
                    function,
                    queue_message(
                        message.content,
                        message_id=message.id,
                        dequeue_count=message.dequeue_count or 1,
                        pop_receipt=message.pop_receipt or "",
                        function=function,
                    ),
                )
                invocations.append(invocation)
                if invocation.ok:
                    queue.delete_message(message)
                elif (message.dequeue_count or 1) >= self.max_dequeue_count:
                    self.client(f"{name}-poison").send_message(message.content)
                    queue.delete_message(message)
                else:  # back on the queue now rather than after the visibility timeout
                    queue.update_message(message, visibility_timeout=0)
        return invocations
