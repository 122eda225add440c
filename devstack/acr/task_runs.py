"""ARM routes of the emulator for ``registries/taskRuns`` (a run with a user-assigned identity).

Routes (api-version ``2025-03-01-preview``, what ``azure-mgmt-containerregistrytasks`` 1.0.0b1
sends), under ``…/registries/{name}/taskRuns/{taskRunName}``:

* ``PUT`` (TaskRuns_Create) with a ``TaskRun``: ``{identity?, properties: {runRequest,
  forceUpdateTag?}, location?}``. ``location`` ("The location of the resource") is optional in
  the specification (2019-06-01-preview and 2025-03-01-preview; the Bicep type of
  ``registries/taskRuns`` marks it neither Required nor ReadOnly, where the registry's own is
  Required), so a PUT without one is taken; given, it is kept and echoed in every answer.
  Whether ARM refuses a location other than the registry's is not documented: not checked. The name must match the specification's ``taskRunName``
  (5-50 characters of ``[a-zA-Z0-9-]``); ``runRequest`` is checked as ``scheduleRun`` checks an
  ``EncodedTaskRunRequest`` (the only run request type implemented here). A new task run
  queues its run at once, with the task run's user-assigned identities attached, and answers
  ``201`` with the resource (``provisioningState`` ``Creating``, ``runResult`` the queued run, as
  the specification's ``TaskRuns_Create`` example shows) and ``Azure-AsyncOperation`` (the
  specification's ``final-state-via: azure-async-operation``) plus ``Retry-After``; the SDK's
  ``ARMPolling`` polls that URL (``Succeeded`` as soon as the run is queued), then GETs the
  resource. A PUT of an existing name with the same ``runRequest``, identity and
  ``forceUpdateTag`` changes nothing (``200``, no new run); a different one queues a new run
  (``200``), which is how the specification describes ``forceUpdateTag``.
* ``GET`` (TaskRuns_Get): ``200`` with the resource (``provisioningState`` ``Succeeded``,
  ``runResult`` the run as it stands now), ``404`` ``ResourceNotFound`` for an unknown name.
* ``POST …/taskRuns/{name}/listDetails`` (TaskRuns_GetDetails, "Gets the detailed information
  for a given task run that includes all secrets"): ``200`` with the resource and its
  ``runRequest`` as it was sent, credentials and secret values included. ``GET`` and the PUT's
  answer leave out the ``value`` of secret values and of the credentials' secret objects (the
  specification's examples carry none, so which fields ARM hides is not confirmed).
* ``DELETE`` (TaskRuns_Delete, synchronous in 2025-03-01-preview): ``200``, or ``204`` when
  there is no such task run. The run record stays (``runs.get`` still answers). A test makes
  it fail ``N`` times with ``faults.add(route="deleteTaskRun", status=500, times=N)``, or
  answer ``200`` ``N`` times and keep the task run with
  ``faults.add(task_run_survives_delete=True, times=N)`` (what a client that trusts the answer
  instead of checking with a ``GET`` would miss).
* ``GET …/taskRuns/{name}/operationStatuses/{id}``: the async operation of a PUT.

Platform: ``runRequest.platform`` (``os``, ``architecture``, ``variant``; the specification's
enums are checked as for ``scheduleRun``) is kept with the task run and its run, and the run
executes on it: the emulated agent is this machine, so another architecture runs under QEMU
user emulation (:func:`devstack.acr.tasks._agent_platform`). acr-builder passes the
platform only to ``build`` steps (a ``cmd`` step is ``docker run <cmd>``); the gate names each
platform's child manifest by digest in ``cmd`` steps, which runs that child either way where the
agent can execute it. Whether ACR's agents can execute arm64 is not documented.

Identity (``IdentityProperties``): ACR documents that task runs take a **user-assigned**
identity only, so ``SystemAssigned`` in ``type`` is refused with ``400 InvalidParameter``; every
key of ``userAssignedIdentities`` must be an identity created with
:meth:`AcrEmulator.add_identity`, else ``400 FailedIdentityOperation`` (the code ARM's managed
identity checks commonly answer). Neither code nor message is confirmed against the service,
nor is the ``InvalidResourceName`` 400 for a bad name, the async operation's URL (its
``operationStatuses`` segment follows the ``registries/taskruns/operationStatuses/read``
operation of the resource provider's operations list), the 200 for a repeated PUT, or whether
deleting a task run leaves its run record (here it does).
"""

from __future__ import annotations

import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from devstack.acr.arm import REGISTRY_PATH
from devstack.acr.core import (
    AcrEmulator,
    EmulatedIdentity,
    EmulatedRegistry,
    Request,
    Response,
    arm_error,
)
from devstack.acr.schema import Field, check_body, string
from devstack.acr.tasks import (
    ENCODED_TASK_RUN_REQUEST,
    TASKS_API_VERSIONS,
    EmulatedRun,
    RunBook,
    _check_semantics,
    registry_or_404,
    start_run,
)

TASK_RUN_NAME = re.compile(r"^[a-zA-Z0-9-]{5,50}$")
IDENTITY_TYPES = ("SystemAssigned", "UserAssigned", "SystemAssigned, UserAssigned", "None")

TASK_RUN = Field(
    "object",
    properties={
        "identity": Field(
            "object",
            properties={
                "type": string(enum=IDENTITY_TYPES),
                # request bodies send {} per identity; principalId/clientId are read-only
                "userAssignedIdentities": Field("object", additional=Field("object")),
            },
        ),
        "properties": Field(
            "object",
            properties={
                "runRequest": ENCODED_TASK_RUN_REQUEST,  # its type is checked first
                "forceUpdateTag": string(),
            },
        ),
        "location": string(),
    },
)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class EmulatedTaskRun:
    """One ``taskRuns`` resource: its request, identity and the run it started last."""

    name: str
    registry: EmulatedRegistry
    run_request: dict[str, Any]
    identity: dict[str, Any] | None
    identities: tuple[EmulatedIdentity, ...]
    force_update_tag: str | None
    run: EmulatedRun
    provisioning: str = "Creating"
    location: str | None = None
    runs: list[str] = field(default_factory=list)  # every run it started, oldest first

    def resource_id(self) -> str:
        """The task run's ARM id."""
        return f"{self.registry.resource_id}/taskRuns/{self.name}"

    def to_json(self, run_json: dict[str, Any], *, details: bool = False) -> dict[str, Any]:
        """The ``TaskRun`` resource as ARM answers it; with ``details``, secrets included.

        Without ``details`` (``TaskRuns_Get``, the PUT's answer) the values of secret values
        and of the credentials' secret objects are left out; ``TaskRuns_GetDetails`` answers
        the request as it was sent.
        """
        request = self.run_request if details else _without_secrets(self.run_request)
        body: dict[str, Any] = {
            "id": self.resource_id(),
            "name": self.name,
            "type": "Microsoft.ContainerRegistry/registries/TaskRuns",
            "properties": {
                "provisioningState": self.provisioning,
                "runRequest": {**request, "isArchiveEnabled": False},
                "runResult": run_json,
            },
        }
        if self.force_update_tag is not None:
            body["properties"]["forceUpdateTag"] = self.force_update_tag
        if self.location:
            body["location"] = self.location
        if self.identity is not None:
            identity: dict[str, Any] = {"type": self.identity.get("type")}
            if self.identities:
                identity["userAssignedIdentities"] = {
                    i.resource_id: {"principalId": i.principal_id, "clientId": i.client_id}
                    for i in self.identities
                }
            body["identity"] = identity
        return body


def _without_secrets(run_request: dict[str, Any]) -> dict[str, Any]:
    """``run_request`` without the values of its secret values and credential secret objects."""
    values = [
        {k: v for k, v in item.items() if k != "value"} if item.get("isSecret") else item
        for item in run_request.get("values") or []
    ]
    credentials = run_request.get("credentials")
    custom = (credentials or {}).get("customRegistries") or {}
    hidden: dict[str, Any] = {}
    for host, creds in custom.items():
        hidden[host] = {
            key: ({"type": part.get("type")} if isinstance(part, dict) else part)
            for key, part in creds.items()
        }
    answer = {**run_request, "values": values}
    if credentials is not None:
        answer["credentials"] = (
            {**credentials, "customRegistries": hidden} if custom else credentials
        )
    return answer


@dataclass
class TaskRunBook:
    """Every task run of the emulator, per registry, and the async operations of their PUTs."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    task_runs: dict[tuple[str, str], EmulatedTaskRun] = field(default_factory=dict)
    operations: dict[str, str] = field(default_factory=dict)  # operation id -> status


def task_runs_of(emulator: AcrEmulator, registry: str) -> dict[str, EmulatedTaskRun]:
    """The task runs that exist now on ``registry`` (deleted ones are gone), by lower-case name."""
    book: TaskRunBook = emulator.state["task_runs"]
    with book.lock:
        return {name: tr for (reg, name), tr in book.task_runs.items() if reg == registry}


def install(emulator: AcrEmulator) -> None:
    """Register the taskRuns routes on ``emulator.arm`` (after :func:`tasks.install`)."""
    book: TaskRunBook = emulator.state.setdefault("task_runs", TaskRunBook())
    runs: RunBook = emulator.state["quick_runs"]
    router = emulator.arm
    path = REGISTRY_PATH + r"/taskRuns/(?P<task_run>[^/]+)"

    def registry_of(m: re.Match[str]) -> EmulatedRegistry | Response:
        return registry_or_404(emulator, m)

    def name_of(m: re.Match[str]) -> str | Response:
        name = m["task_run"]
        if not TASK_RUN_NAME.match(name):
            return arm_error(
                400,
                "InvalidResourceName",
                f"The resource name '{name}' is invalid. It must be 5 to 50 characters long and "
                "contain only letters, digits and hyphens (^[a-zA-Z0-9-]*$).",
            )
        return name

    def current(task_run: EmulatedTaskRun, *, details: bool = False) -> dict[str, Any]:
        with runs.lock:
            return task_run.to_json(task_run.run.to_json(), details=details)

    @router.route("PUT", path, name="createTaskRun", api_versions=TASKS_API_VERSIONS)
    def create(req: Request, m: re.Match[str]) -> Response:
        registry = registry_of(m)
        if isinstance(registry, Response):
            return registry
        name = name_of(m)
        if isinstance(name, Response):
            return name
        refused = _check_kind(req)
        if refused is not None:
            return refused
        body, refused = check_body(req, TASK_RUN)
        if refused is not None:
            return refused
        run_request = (body.get("properties") or {}).get("runRequest")
        if not isinstance(run_request, dict):
            return arm_error(
                400,
                "InvalidRequestContent",
                "The request content was invalid and could not be deserialized: 'Required "
                "property 'runRequest' not found in JSON. Path 'properties'.'.",
            )
        refused = _check_semantics(run_request)
        if refused is not None:
            return refused
        identity = body.get("identity")
        identities, refused = _identities(emulator, identity)
        if refused is not None:
            return refused
        tag = (body.get("properties") or {}).get("forceUpdateTag")
        key = (registry.name, name.lower())
        with book.lock:
            existing = book.task_runs.get(key)
            if (
                existing is not None
                and existing.run_request == run_request
                and existing.identity == identity
                and existing.force_update_tag == tag
            ):
                return Response(200, current(existing))  # nothing changed: no new run
            run, run_json = start_run(emulator, registry, run_request, identities)
            task_run = EmulatedTaskRun(
                name=name,
                registry=registry,
                run_request=run_request,
                identity=identity,
                identities=identities,
                force_update_tag=tag,
                run=run,
                location=body.get("location"),
                runs=[*(existing.runs if existing else []), run.run_id],
            )
            book.task_runs[key] = task_run
            answer = task_run.to_json(run_json)
            # the creation is done once the run is queued; ARMPolling learns it on its 1st poll
            task_run.provisioning = "Succeeded"
            operation = f"taskruns-{uuid.uuid4()}"
            book.operations[operation] = "Succeeded"
        if existing is not None:
            return Response(200, answer)
        status_url = (
            f"{emulator.arm_endpoint}{task_run.resource_id()}/operationStatuses/{operation}"
            f"?api-version={req.api_version}"
        )
        return Response(
            201,
            answer,
            {"Azure-AsyncOperation": status_url, "Retry-After": str(emulator.lro_retry_after)},
        )

    @router.route("GET", path, name="getTaskRun", api_versions=TASKS_API_VERSIONS)
    def get(req: Request, m: re.Match[str]) -> Response:
        registry = registry_of(m)
        if isinstance(registry, Response):
            return registry
        with book.lock:
            task_run = book.task_runs.get((registry.name, m["task_run"].lower()))
        if task_run is None:
            return arm_error(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.ContainerRegistry/registries/{registry.name}/taskRuns/"
                f"{m['task_run']}' under resource group '{m['rg']}' was not found.",
            )
        return Response(200, current(task_run))

    @router.route(
        "POST", path + r"/listDetails", name="getTaskRunDetails", api_versions=TASKS_API_VERSIONS
    )
    def details(req: Request, m: re.Match[str]) -> Response:
        registry = registry_of(m)
        if isinstance(registry, Response):
            return registry
        with book.lock:
            task_run = book.task_runs.get((registry.name, m["task_run"].lower()))
        if task_run is None:
            return arm_error(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.ContainerRegistry/registries/{registry.name}/taskRuns/"
                f"{m['task_run']}' under resource group '{m['rg']}' was not found.",
            )
        return Response(200, current(task_run, details=True))

    @router.route("DELETE", path, name="deleteTaskRun", api_versions=TASKS_API_VERSIONS)
    def delete(req: Request, m: re.Match[str]) -> Response:
        registry = registry_of(m)
        if isinstance(registry, Response):
            return registry
        if emulator.faults.take("task_run_survives_delete"):
            return Response(200)  # answered as done, yet the task run is still there
        with book.lock:
            gone = book.task_runs.pop((registry.name, m["task_run"].lower()), None)
        return Response(200 if gone is not None else 204)

    @router.route(
        "GET",
        path + r"/operationStatuses/(?P<operation>[^/]+)",
        name="taskRunOperationStatus",
        api_versions=TASKS_API_VERSIONS,
    )
    def operation_status(req: Request, m: re.Match[str]) -> Response:
        with book.lock:
            status = book.operations.get(m["operation"])
        if status is None:
            return arm_error(
                404, "OperationNotFound", f"The operation '{m['operation']}' could not be found."
            )
        return Response(
            200,
            {"id": req.path, "name": m["operation"], "status": status, "startTime": _now()},
        )


def _check_kind(req: Request) -> Response | None:
    """A 400 for a run request type other than ``EncodedTaskRunRequest`` (not implemented)."""
    try:
        body = req.json()
    except (ValueError, UnicodeDecodeError):
        return None  # check_body gives the deserialiser's error
    request = (body.get("properties") or {}).get("runRequest") if isinstance(body, dict) else None
    kind = request.get("type") if isinstance(request, dict) else None
    if kind is None or kind == "EncodedTaskRunRequest":
        return None
    return arm_error(
        400,
        "InvalidParameter",
        f"The run request type '{kind}' of a task run is not implemented by the emulator (it "
        "implements 'EncodedTaskRunRequest').",
    )


def _identities(
    emulator: AcrEmulator, identity: dict[str, Any] | None
) -> tuple[tuple[EmulatedIdentity, ...], Response | None]:
    """The user-assigned identities a task run asks for, or the 400 that refuses them."""
    if not identity:
        return (), None
    kind = str(identity.get("type") or "None")
    named = identity.get("userAssignedIdentities") or {}
    if "systemassigned" in kind.lower().replace(" ", ""):
        return (), arm_error(
            400,
            "InvalidParameter",
            f"The identity type '{kind}' is not supported for task runs: a task run takes a "
            "user-assigned identity only.",
        )
    if kind.lower() == "none":
        if named:
            return (), arm_error(
                400,
                "InvalidParameter",
                "userAssignedIdentities must be empty when the identity type is 'None'.",
            )
        return (), None
    if not named:
        return (), arm_error(
            400,
            "InvalidParameter",
            "The identity type 'UserAssigned' needs at least one entry in userAssignedIdentities.",
        )
    found: list[EmulatedIdentity] = []
    for resource_id in named:
        known = emulator.identity_by_id(resource_id)
        if known is None:
            return (), arm_error(
                400,
                "FailedIdentityOperation",
                f"Identity operation for resource failed: the user-assigned identity "
                f"'{resource_id}' was not found.",
            )
        found.append(known)
    return tuple(found), None
