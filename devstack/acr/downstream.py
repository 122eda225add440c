"""Persistent ACR tasks in the emulator, their base-image triggers, and the pushes that fire them.

What ACR documents, and the emulator does:

* a task with a base-image trigger runs when its base image is **pushed**, to the same or
  another ACR (container-registry-tasks-base-images.md; the Tasks overview: "when the updated
  base image is pushed to your registry"); the run's ``imageUpdateTrigger`` names the image
  (``ImageUpdateTrigger`` / ``ImageDescriptor`` in the REST specification);
* ``scheduleRun`` with a ``TaskRunRequest`` (``taskId`` required: "the resource ID of task
  against which run has to be queued") queues a run of an existing task, as
  ``az acr task run`` does. ``taskId`` naming no task of that registry is the 404
  ``ResourceNotFound`` ARM answers for a missing resource (the code and wording for this
  case are not confirmed). The specification's example ``Registries_ScheduleRun_Task`` sends
  a bare task name, so a bare name of this registry's task is accepted too.

What is **not** documented, and how the emulator models it: whether an ``importImage`` fires
base-image triggers (or webhooks, or Event Grid ``ImagePushed``). By default it does not;
``AcrEmulator.import_fires_base_image_triggers = True`` models the other possibility.

A trigger fires when a tag is written at a digest other than the one it pointed at before (a
base image that did not change is no update). A task's steps really run, like a quick run's
(:func:`devstack.acr.tasks.start_run`, podman through the emulated agent of
:mod:`devstack.acr.runner`), with the task's values; runs are kept with the quick runs, so
``runs.get`` answers for them.
Not confirmed: ``runType`` of a task run (``AutoRun`` here, for manual and triggered runs
alike; the enum has ``QuickBuild``, ``QuickRun``, ``AutoBuild``, ``AutoRun``).
"""

from __future__ import annotations

import base64
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from devstack.acr.core import AcrEmulator, EmulatedRegistry, Request, Response, arm_error
from devstack.acr.schema import SET_VALUE, Field, check_body, string

TASK_RUN_REQUEST = Field(
    "object",
    properties={
        "type": string(required=True),
        "isArchiveEnabled": Field("boolean"),
        "agentPoolName": string(),
        "logTemplate": string(),
        "taskId": string(required=True),
        "overrideTaskStepProperties": Field(
            "object",
            properties={
                "contextPath": string(),
                "file": string(),
                "arguments": Field("array", items=SET_VALUE),
                "target": string(),
                "values": Field("array", items=SET_VALUE),
                "updateTriggerToken": string(),
            },
        ),
    },
)
"""``TaskRunRequest`` of the 2025-03-01-preview specification (``OverrideTaskStepProperties``)."""


@dataclass
class EmulatedTask:
    """A persistent task: a task file of ``cmd`` steps, its values, its base-image trigger."""

    registry: EmulatedRegistry
    name: str
    task_yaml: str
    values: dict[str, str] = field(default_factory=dict)
    base_image: str | None = None  # "login_server/repository:tag" the trigger follows
    base_image_trigger: bool = True

    @property
    def resource_id(self) -> str:
        """The task's ARM id."""
        return f"{self.registry.resource_id}/tasks/{self.name}"


@dataclass(frozen=True)
class PushEvent:
    """A manifest written under a tag through the data plane (what ACR calls a push)."""

    registry: str
    repository: str
    tag: str
    digest: str
    previous: str | None


@dataclass(frozen=True)
class TaskRunRecord:
    """One run of a persistent task: which, why, and the run (``runs_of`` has it too)."""

    task: str
    registry: str
    run_id: str
    trigger: str  # "Manual" (scheduleRun) or "Image Update" (base-image trigger)
    run: Any


@dataclass
class TaskBook:
    """The emulator's tasks, pushes and task runs. Thread-safe."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    tasks: dict[tuple[str, str], EmulatedTask] = field(default_factory=dict)
    pushes: list[PushEvent] = field(default_factory=list)
    runs: list[TaskRunRecord] = field(default_factory=list)


def book(emulator: AcrEmulator) -> TaskBook:
    """The task book of ``emulator`` (created on first use)."""
    found: TaskBook = emulator.state.setdefault("persistent_tasks", TaskBook())
    return found


def add_task(
    emulator: AcrEmulator,
    registry: str,
    name: str,
    task_yaml: str,
    *,
    values: dict[str, str] | None = None,
    base_image: str | None = None,
    base_image_trigger: bool = True,
) -> EmulatedTask:
    """Create task ``name`` on ``registry`` running ``task_yaml`` (``cmd`` steps) with
    ``values``; ``base_image`` (``login_server/repo:tag``) is what its trigger follows."""
    found = emulator.registries[registry]
    task = EmulatedTask(found, name, task_yaml, dict(values or {}), base_image, base_image_trigger)
    with book(emulator).lock:
        book(emulator).tasks[(registry.lower(), name.lower())] = task
    return task


def task_runs(emulator: AcrEmulator, task: str | None = None) -> list[TaskRunRecord]:
    """Runs of persistent tasks (of ``task`` only, when given), in the order they started."""
    with book(emulator).lock:
        return [r for r in book(emulator).runs if task is None or r.task == task]


def pushes(emulator: AcrEmulator) -> list[PushEvent]:
    """Every data-plane manifest push under a tag, in order."""
    with book(emulator).lock:
        return list(book(emulator).pushes)


def tag_written(
    emulator: AcrEmulator,
    registry: EmulatedRegistry,
    repository: str,
    tag: str,
    digest: str,
    previous: str | None,
    *,
    via: str,
) -> None:
    """A tag now points at ``digest``: record a push, and fire the base-image triggers.

    ``via`` is ``push`` (the data plane) or ``import``; an import fires nothing unless
    ``emulator.import_fires_base_image_triggers`` (undocumented, see the module docs).
    """
    tasks = book(emulator)
    if via == "push":
        with tasks.lock:
            tasks.pushes.append(PushEvent(registry.name, repository, tag, digest, previous))
    elif not emulator.import_fires_base_image_triggers:
        return
    if previous == digest:
        return  # the base image did not change
    image = f"{registry.login_server}/{repository}:{tag}"
    with tasks.lock:
        triggered = [
            t for t in tasks.tasks.values() if t.base_image_trigger and t.base_image == image
        ]
    for task in triggered:
        _start(
            emulator,
            task,
            trigger="Image Update",
            image_update={
                "id": str(uuid.uuid4()),
                "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "images": [
                    {
                        "registry": registry.login_server,
                        "repository": repository,
                        "tag": tag,
                        "digest": digest,
                    }
                ],
            },
        )


def schedule_task_run(emulator: AcrEmulator, registry: EmulatedRegistry, req: Request) -> Response:
    """``scheduleRun`` with a ``TaskRunRequest``: queue a run of an existing task."""
    body, refused = check_body(req, TASK_RUN_REQUEST)
    if refused is not None:
        return refused
    emulator.state.setdefault("task_run_requests", []).append(body)  # for tests to read
    task_id = str(body["taskId"])
    wanted = task_id.rstrip("/")
    with book(emulator).lock:
        candidates = [t for t in book(emulator).tasks.values() if t.registry is registry]
    task = next(
        (
            t
            for t in candidates
            if t.resource_id.lower() == wanted.lower() or t.name.lower() == wanted.lower()
        ),
        None,
    )
    if task is None:
        name = wanted.rsplit("/", 1)[-1]
        return arm_error(
            404,
            "ResourceNotFound",
            f"The Resource 'Microsoft.ContainerRegistry/registries/{registry.name}/tasks/{name}' "
            f"under resource group '{registry.resource_group}' was not found. For more details "
            "please go to https://aka.ms/ARMResourceNotFoundFix",
        )
    overrides = body.get("overrideTaskStepProperties") or {}
    values = {v["name"]: v["value"] for v in overrides.get("values") or []}
    record = _start(emulator, task, trigger="Manual", extra_values=values)
    from devstack.acr.tasks import RunBook

    runs: RunBook = emulator.state["quick_runs"]
    with runs.lock:
        return Response(200, record.run.to_json())


def _start(
    emulator: AcrEmulator,
    task: EmulatedTask,
    *,
    trigger: str,
    image_update: dict[str, Any] | None = None,
    extra_values: dict[str, str] | None = None,
) -> TaskRunRecord:
    from devstack.acr.tasks import RunBook, start_run

    values = {**task.values, **(extra_values or {})}
    body = {
        "type": "EncodedTaskRunRequest",
        "encodedTaskContent": base64.b64encode(task.task_yaml.encode()).decode(),
        "values": [{"name": k, "value": v, "isSecret": False} for k, v in values.items()],
        "platform": {"os": "Linux", "architecture": "amd64"},
    }
    runs: RunBook = emulator.state["quick_runs"]
    with runs.lock:  # the run's thread cannot report before it is a task run
        run, _queued = start_run(emulator, task.registry, body)
        run.run_type = "AutoRun"
        run.task = task.name
        run.image_update = image_update
    record = TaskRunRecord(task.name, task.registry.name, run.run_id, trigger, run)
    with book(emulator).lock:
        book(emulator).runs.append(record)
    return record
