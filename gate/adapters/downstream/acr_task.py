"""The Azure downstream runner: queue a run of a persistent ACR task, and do not wait for it.

Implements :class:`gate.ports.DownstreamRunner`. ``start`` sends one ``scheduleRun`` with a
``TaskRunRequest`` naming the task by ARM id (``azure-mgmt-containerregistrytasks`` 1.0.0b1,
api-version ``2025-03-01-preview``: ``registries.schedule_run(rg, registry,
TaskRunRequest(task_id=...))``; ``taskId`` is required and is "the resource ID of task against
which run has to be queued" in the REST specification, operation ``Registries_ScheduleRun``,
example ``Registries_ScheduleRun_Task``). ``az acr task run`` sends the same request
(azure-cli ``acr/task.py``, ``acr_task_run``). The answer is the queued ``Run``: its
``runId`` is what the gate records. The run's result is the task's own business: the gate
never polls it.

The request overrides nothing: the task runs with its own definition, values and identity
(a ``TaskRunRequest`` has no identity of its own). ARM retries (429, 5xx) are azure-core's
``RetryPolicy`` (a ``scheduleRun`` POST is retried on an answer with ``Retry-After``, or on
500/503/504), 3 of them here, none after a ``Retry-After`` longer than
:data:`~gate.adapters.arm_retry.ARM_RETRY_AFTER_MAX` (:mod:`gate.adapters.arm_retry`).

Errors::

    ConfigError            the registry or task does not exist (404)
    AuthenticationError    401/403: the message names the permissions the identity lacks
    RegistryUnavailable    429/5xx after retries, connection failures
    RegistryError          any other refusal (the service's message)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.mgmt.containerregistrytasks import ContainerRegistryTasksMgmtClient
from azure.mgmt.containerregistrytasks.models import TaskRunRequest

from gate.adapters.arm_retry import arm_retry_policy
from gate.config.model import DownstreamTask
from gate.domain.records import DownstreamRun
from gate.domain.ref import ImageRef
from gate.errors import AuthenticationError, ConfigError, RegistryError, RegistryUnavailable

__all__ = ["AcrTaskDownstream"]

_DEFAULT_CLIENT_KWARGS: dict[str, Any] = {"retry_total": 4, "retry_status": 3}
_SCHEDULE_ROLE = (
    "'Microsoft.ContainerRegistry/registries/scheduleRun/action' and "
    "'Microsoft.ContainerRegistry/registries/tasks/read' on the task's registry "
    "(e.g. 'Contributor', or a custom role with those actions)"
)


class AcrTaskDownstream:
    """:class:`gate.ports.DownstreamRunner` on ACR Tasks: one ``scheduleRun`` per task.

    ``subscription_id`` is where the tasks' registries live (``DownstreamTask`` names registry
    and resource group); ``client_kwargs`` go to the SDK client (retries, transport).
    """

    def __init__(
        self,
        *,
        credential: TokenCredential,
        subscription_id: str,
        arm_endpoint: str = "https://management.azure.com",
        client_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.subscription_id = subscription_id
        kwargs = {**_DEFAULT_CLIENT_KWARGS, **(client_kwargs or {})}
        self._client = ContainerRegistryTasksMgmtClient(
            credential,
            subscription_id,
            base_url=arm_endpoint,
            retry_policy=arm_retry_policy(kwargs),  # takes the retry_* keys out of kwargs
            **kwargs,
        )

    def close(self) -> None:
        """Close the HTTP session."""
        self._client.close()

    def start(self, task: DownstreamTask, image: ImageRef) -> DownstreamRun:
        """Queue one run of ``task``; ``image`` (the promoted digest) is for the record only:
        the task itself names its base image, and its base-image trigger follows that."""
        doing = f"queueing a run of task {task.task} on registry {task.registry}"
        request = TaskRunRequest(task_id=task.task_id(self.subscription_id))
        try:
            run = self._client.registries.schedule_run(task.resource_group, task.registry, request)
        except AzureError as exc:
            raise _mapped(exc, doing, task) from None
        run_id = run.properties.run_id if run.properties else None
        if not run_id:
            raise RegistryError(f"{doing}: ARM answered without a run ID; retry later")
        return DownstreamRun(registry=task.registry, task=task.task, run_id=str(run_id))


def _mapped(exc: AzureError, doing: str, task: DownstreamTask) -> RegistryError | ConfigError:
    """The gate's error for an SDK error (no request bodies, no secrets: there are none)."""
    detail = _detail(exc)
    if isinstance(exc, ResourceNotFoundError):
        return ConfigError(
            f"{doing} failed: not found ({detail}); check the rule's downstream entry (task "
            f"'{task.task}' in registry '{task.registry}', resource group "
            f"'{task.resource_group}') and that the task exists"
        )
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return RegistryUnavailable(
            f"{doing} failed: ARM could not be reached ({type(exc).__name__}); retry later"
        )
    status = exc.status_code if isinstance(exc, HttpResponseError) else None
    if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
        return AuthenticationError(
            f"{doing} was refused ({status}): the gate's identity lacks {_SCHEDULE_ROLE}"
        )
    if status is not None and (status == 429 or status >= 500):
        return RegistryUnavailable(f"{doing} failed after retries ({detail}); retry later")
    return RegistryError(f"{doing} failed: {detail}")


def _detail(exc: AzureError) -> str:
    if isinstance(exc, HttpResponseError):
        code = exc.error.code if exc.error is not None and exc.error.code else ""
        message = exc.error.message if exc.error is not None and exc.error.message else ""
        status = exc.status_code if exc.status_code is not None else "?"
        return f"{status} {code}: {message or exc.reason or 'no message'}".replace(" :", ":")
    return f"{type(exc).__name__}: {exc.message}"
