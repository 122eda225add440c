"""ARM routes of the emulator for ACR quick runs (``azure-mgmt-containerregistrytasks``).

Routes (api-version ``2025-03-01-preview``, what the 1.0.0b1 SDK sends; the runs routes also
take ``2019-06-01-preview``), all under ``…/registries/{name}``:

* ``POST listBuildSourceUploadUrl`` → ``{"uploadUrl": <write SAS>, "relativePath":
  "source/{yyyyMMddHHmm}/{uuid}.tar.gz"}`` (the shape of the specification's example); the
  client PUTs the ``tar.gz`` to the SAS URL (the core's blob store).
* ``POST scheduleRun`` with an ``EncodedTaskRunRequest`` → ``200`` and the ``Run`` (Queued,
  ``runType`` QuickRun). The body is checked against the specification's shapes (TypeSpec
  ``RegistryTasks/models.tsp``: ``encodedTaskContent`` and ``platform.os`` required,
  ``timeout`` 300…28800, enums for OS/architecture/variant/secret type), plus what the service
  must check for the run to make sense: base64 that decodes, a ``Vaultsecret`` whose value is a
  Key Vault secret URI and whose credential names an ``identity``. Anything else is the 400
  ``InvalidRequestContent`` of :mod:`devstack.acr.schema`; only ``EncodedTaskRunRequest``
  is implemented (other run request types get a 400 saying so).
* ``GET runs/{runId}``, ``GET runs`` (``$filter`` with clauses joined by ``and``: ``RunType``,
  ``Status``, ``TaskName``, ``RunId`` ``eq '…'`` and ``CreateTime``/``FinishTime``
  ``ge|gt|le|lt <ISO 8601>``; anything else is a 400; ``$top``; newest first),
  ``POST runs/{runId}/listLogSasUrl`` → ``{"logLink": <read SAS>}``, ``POST
  runs/{runId}/cancel`` → ``200`` with no body (the specification's ``ArmResourceActionSync``
  with ``OkResponse``: not an LRO, the SDK accepts only 200).

A scheduled run really runs, in a background thread: the uploaded source is downloaded and
unpacked, custom-registry credentials are resolved (a credential's ``identity`` only as a
user-assigned identity attached to the run — a task run's, see :mod:`devstack.acr.
task_runs`; a quick run has none — ``Vaultsecret`` through :meth:`AcrEmulator.secret_by_uri`
only if that identity may read the vault, an emulated ACR only if it has AcrPull there;
anything else fails the run at login, before any step; the exact wording of ACR's login errors
is not confirmed), the run is logged in to its own registry unless
``credentials.sourceRegistry.loginMode`` is ``None`` (the run's ``sourceRegistryAuth`` says
which), a private emulated registry the run did not log in to refuses the pull of a ``cmd``
step's image that no build step of the file makes (exit status 125), a ``push`` step to an
emulated registry the run did not log in to (its own, with ``loginMode`` ``None``) fails with
``unauthorized`` (exit status 1), the task file runs on the emulated agent
(:mod:`devstack.acr.runner`, podman) with the request's values, and the log is written to the
blob store in ACR's format (runner lines ``YYYY/MM/DD HH:MM:SS …``, ``Executing step ID: …``,
``Container failed during run: …``, ``failed to run step ID: …: exit status N``, ``Run ID: …
was successful after …`` / ``failed after … Error: …``). The backing registries are loopback
and need no login, so resolved credentials are only checked, never used to pull. What steps
print of secret values is *not* masked in the stored log (ACR's documentation does not say it
masks step output), so clients must mask it themselves.

Status: Queued → Running → Succeeded / Failed / Canceled / Error / Timeout (the
specification's ``RunStatus``; ``startTime`` is set when a run leaves ``Queued``). A run stays
``Queued`` while its registry already runs ``AcrEmulator.concurrent_runs[registry]`` runs (set
with :meth:`AcrEmulator.set_concurrent_runs`; none by default: every run starts at once), and
starts, oldest waiting first as far as the threads' wake-up order goes, when one of them ends;
a queued run can be cancelled and then never starts. Faults (flags of
:class:`Faults`, taken once per scheduled run): ``run_outcome="Failed"`` (the first step fails
with exit status 1), ``"Error"`` (an internal error, ``runErrorMessage``), ``"Timeout"``;
``run_delay=seconds`` keeps the run Running that long before its steps (a slow run; a cancel
ends it at once).

Not confirmed against the service: the 400 codes and messages for range and semantic errors
(``InvalidParameter`` here), the exact ``$filter`` grammar (the OData v4 datetime literal,
ordering of the list), whether ``customRegistries`` of a queued run is already filled (here:
only once logged in, as the specification's wording "were logged in during this run" says),
and what cancelling a finished run answers (here: 200, nothing changes).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import tarfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from devstack.acr.arm import REGISTRY_PATH
from devstack.acr.core import (
    AcrEmulator,
    EmulatedIdentity,
    EmulatedRegistry,
    Request,
    Response,
    arm_error,
)
from devstack.acr.runner import Agent, RunVariables, TaskError, host_architecture, parse_task
from devstack.acr.schema import SET_VALUE, Field, check_body, string

TASKS_API_VERSIONS = frozenset({"2025-03-01-preview"})
RUNS_API_VERSIONS = frozenset({"2025-03-01-preview", "2019-06-01-preview"})
TERMINAL = frozenset({"Succeeded", "Failed", "Canceled", "Error", "Timeout"})

# -- EncodedTaskRunRequest, from the REST specification (2025-03-01-preview) -------------------

_SECRET_OBJECT = Field(
    "object", properties={"value": string(), "type": string(enum=("Opaque", "Vaultsecret"))}
)
ENCODED_TASK_RUN_REQUEST = Field(
    "object",
    properties={
        "type": string(required=True),
        "isArchiveEnabled": Field("boolean"),
        "agentPoolName": string(),
        "logTemplate": string(),
        "encodedTaskContent": string(required=True),
        "encodedValuesContent": string(),
        "values": Field("array", items=SET_VALUE),
        "timeout": Field("integer"),
        "platform": Field(
            "object",
            required=True,
            properties={
                "os": string(required=True, enum=("Windows", "Linux")),
                "architecture": string(enum=("amd64", "x86", "386", "arm", "arm64")),
                "variant": string(enum=("v6", "v7", "v8")),
            },
        ),
        "agentConfiguration": Field("object", properties={"cpu": Field("integer")}),
        "sourceLocation": string(),
        "credentials": Field(
            "object",
            properties={
                "sourceRegistry": Field(
                    "object",
                    properties={
                        "identity": string(),
                        "loginMode": string(enum=("None", "Default")),
                    },
                ),
                "customRegistries": Field(
                    "object",
                    additional=Field(
                        "object",
                        properties={
                            "userName": _SECRET_OBJECT,
                            "password": _SECRET_OBJECT,
                            "identity": string(),
                        },
                    ),
                ),
            },
        ),
    },
)
# (a TaskRunRequest is answered by devstack.acr.downstream)
_OTHER_RUN_REQUESTS = ("DockerBuildRequest", "FileTaskRunRequest", "TaskRunRequest")
_MIN_TIMEOUT, _MAX_TIMEOUT, _DEFAULT_TIMEOUT = 300, 28800, 3600


def _now() -> datetime:
    return datetime.now(UTC)


def _rfc3339(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def _stamp() -> str:
    """The runner's log-line prefix (Go's ``log`` package: ``2006/01/02 15:04:05``)."""
    return _now().strftime("%Y/%m/%d %H:%M:%S")


@dataclass
class EmulatedRun:
    """One quick run and what ACR knows of it."""

    run_id: str
    registry: EmulatedRegistry
    body: dict[str, Any]
    log_container: str
    log_name: str
    outcome_fault: str | None = None
    delay: float = 0.0
    status: str = "Queued"
    create_time: datetime = field(default_factory=_now)
    start_time: datetime | None = None
    finish_time: datetime | None = None
    last_updated: datetime = field(default_factory=_now)
    error_message: str | None = None
    logged_in: list[str] = field(default_factory=list)
    identities: tuple[EmulatedIdentity, ...] = ()  # a task run's user-assigned identities
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    # a run of a persistent task (devstack.acr.downstream): its name, and the
    # imageUpdateTrigger of a run a base-image update started
    run_type: str = "QuickRun"
    task: str | None = None
    image_update: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``Run`` resource as ARM answers it."""
        props: dict[str, Any] = {
            "runId": self.run_id,
            "status": self.status,
            "lastUpdatedTime": _rfc3339(self.last_updated),
            "runType": self.run_type,
            "createTime": _rfc3339(self.create_time),
            "platform": self.body.get("platform"),
            "agentConfiguration": self.body.get("agentConfiguration") or {"cpu": 2},
            "sourceRegistryAuth": login_mode(self.body),
            "customRegistries": list(self.logged_in),
            "provisioningState": "Succeeded",
            "isArchiveEnabled": bool(self.body.get("isArchiveEnabled", False)),
        }
        if self.start_time is not None:
            props["startTime"] = _rfc3339(self.start_time)
        if self.finish_time is not None:
            props["finishTime"] = _rfc3339(self.finish_time)
        if self.error_message:
            props["runErrorMessage"] = self.error_message
        if self.task is not None:
            props["task"] = self.task
        if self.image_update is not None:
            props["imageUpdateTrigger"] = self.image_update
        return {
            "id": f"{self.registry.resource_id}/runs/{self.run_id}",
            "name": self.run_id,
            "type": "Microsoft.ContainerRegistry/registries/runs",
            "properties": props,
        }


class RunBook:
    """Every run and source upload of the emulator, per registry. Thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.agents = threading.Condition(self.lock)  # notified when a run ends
        self.runs: dict[tuple[str, str], EmulatedRun] = {}  # (registry, run id) -> run
        self.counters: dict[str, int] = {}
        self.uploads: set[tuple[str, str]] = set()  # (registry, relative path)

    def next_id(self, registry: str) -> str:
        """ACR-like run IDs: ``ca1``, ``ca2``… per registry."""
        with self.lock:
            self.counters[registry] = self.counters.get(registry, 0) + 1
            return f"ca{self.counters[registry]}"

    def of(self, registry: str) -> list[EmulatedRun]:
        """The runs of ``registry``."""
        with self.lock:
            return [run for (name, _), run in self.runs.items() if name == registry]


def runs_of(emulator: AcrEmulator, registry: str) -> list[EmulatedRun]:
    """Every run scheduled on ``registry`` (tests count and inspect them)."""
    book: RunBook = emulator.state["quick_runs"]
    return book.of(registry)


def wait_for_runs(emulator: AcrEmulator, registry: str, timeout: float = 300.0) -> None:
    """Block until every run of ``registry`` has finished (its thread included)."""
    for run in runs_of(emulator, registry):
        run.done.wait(timeout)


def login_mode(body: dict[str, Any]) -> str:
    """``credentials.sourceRegistry.loginMode`` of a run request (``Default`` when absent)."""
    source = (body.get("credentials") or {}).get("sourceRegistry") or {}
    return str(source.get("loginMode") or "Default")


def _container(registry: EmulatedRegistry) -> str:
    return f"acr-{registry.name.lower()}"


def start_run(
    emulator: AcrEmulator,
    registry: EmulatedRegistry,
    body: dict[str, Any],
    identities: tuple[EmulatedIdentity, ...] = (),
) -> tuple[EmulatedRun, dict[str, Any]]:
    """Queue a checked ``EncodedTaskRunRequest`` as a run of ``registry`` and start it.

    ``identities`` are the user-assigned identities of the task run that asked for it (none for
    a quick run); only they can resolve a custom registry credential's ``identity``. Returns
    the run and its ``Run`` resource as it was when queued.
    """
    book: RunBook = emulator.state["quick_runs"]
    run_id = book.next_id(registry.name)
    outcome = emulator.faults.take("run_outcome")
    run = EmulatedRun(
        run_id=run_id,
        registry=registry,
        body=body,
        log_container=_container(registry),
        log_name=f"logs/{run_id}/rawtext.log",
        outcome_fault=str(outcome) if outcome else None,
        delay=float(emulator.faults.take("run_delay", 0.0) or 0.0),
        identities=identities,
    )
    with book.lock:
        book.runs[(registry.name, run_id)] = run
        answer = run.to_json()  # Queued, whatever the thread does next
    threading.Thread(
        target=_execute, args=(emulator, book, run), name=f"run-{run_id}", daemon=True
    ).start()
    return run, answer


def registry_or_404(emulator: AcrEmulator, m: re.Match[str]) -> EmulatedRegistry | Response:
    """The registry a route's ``sub``/``rg``/``name`` groups name, or ARM's 404 for it."""
    found = emulator.find_registry(m["sub"], m["rg"], m["name"])
    if found is None:
        return arm_error(
            404,
            "ResourceNotFound",
            f"The Resource 'Microsoft.ContainerRegistry/registries/{m['name']}' under "
            f"resource group '{m['rg']}' was not found. For more details please go to "
            "https://aka.ms/ARMResourceNotFoundFix",
        )
    return found


def install(emulator: AcrEmulator) -> None:
    """Register the quick-run routes on ``emulator.arm``."""
    book: RunBook = emulator.state.setdefault("quick_runs", RunBook())
    router = emulator.arm

    def registry_of(m: re.Match[str]) -> EmulatedRegistry | Response:
        return registry_or_404(emulator, m)

    def run_of(m: re.Match[str]) -> EmulatedRun | Response:
        registry = registry_of(m)
        if isinstance(registry, Response):
            return registry
        with book.lock:
            run = book.runs.get((registry.name, m["run"]))
        if run is None:
            return arm_error(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.ContainerRegistry/registries/{registry.name}/runs/"
                f"{m['run']}' under resource group '{m['rg']}' was not found.",
            )
        return run

    @router.route(
        "POST",
        REGISTRY_PATH + r"/listBuildSourceUploadUrl",
        name="listBuildSourceUploadUrl",
        api_versions=TASKS_API_VERSIONS,
    )
    def upload_url(req: Request, m: re.Match[str]) -> Response:
        registry = registry_of(m)
        if isinstance(registry, Response):
            return registry
        relative = f"source/{_now():%Y%m%d%H%M}/{uuid.uuid4()}.tar.gz"
        with book.lock:
            book.uploads.add((registry.name, relative))
        url = emulator.blobs.sas_url(_container(registry), relative, write=True)
        return Response(200, {"uploadUrl": url, "relativePath": relative})

    @router.route(
        "POST",
        REGISTRY_PATH + r"/scheduleRun",
        name="scheduleRun",
        api_versions=TASKS_API_VERSIONS,
    )
    def schedule_run(req: Request, m: re.Match[str]) -> Response:
        registry = registry_of(m)
        if isinstance(registry, Response):
            return registry
        if _request_type(req) == "TaskRunRequest":
            from devstack.acr import downstream

            return downstream.schedule_task_run(emulator, registry, req)
        refused = _check_type(req)
        if refused is not None:
            return refused
        body, refused = check_body(req, ENCODED_TASK_RUN_REQUEST)
        if refused is not None:
            return refused
        refused = _check_semantics(body)
        if refused is not None:
            return refused
        # a quick run carries no identity: credentials naming one fail at login
        _run, answer = start_run(emulator, registry, body)
        return Response(200, answer)

    runs_path = REGISTRY_PATH + r"/runs"
    run_path = runs_path + r"/(?P<run>[^/]+)"

    @router.route("GET", run_path, name="getRun", api_versions=RUNS_API_VERSIONS)
    def get_run(req: Request, m: re.Match[str]) -> Response:
        run = run_of(m)
        if isinstance(run, Response):
            return run
        with book.lock:
            return Response(200, run.to_json())

    @router.route("GET", runs_path, name="listRuns", api_versions=RUNS_API_VERSIONS)
    def list_runs(req: Request, m: re.Match[str]) -> Response:
        registry = registry_of(m)
        if isinstance(registry, Response):
            return registry
        predicate = _parse_filter(req.query.get("$filter", ""))
        if isinstance(predicate, Response):
            return predicate
        top_text = req.query.get("$top")
        top: int | None = None
        if top_text is not None:
            if not top_text.isdigit() or int(top_text) <= 0:
                return arm_error(
                    400, "InvalidParameter", f"The value '{top_text}' of $top is invalid."
                )
            top = int(top_text)
        with book.lock:
            runs = sorted(book.of(registry.name), key=lambda r: r.create_time, reverse=True)
            value = [r.to_json() for r in runs if predicate(r)]
        return Response(200, {"value": value[:top] if top else value})

    @router.route(
        "POST", run_path + r"/listLogSasUrl", name="listLogSasUrl", api_versions=RUNS_API_VERSIONS
    )
    def log_link(req: Request, m: re.Match[str]) -> Response:
        run = run_of(m)
        if isinstance(run, Response):
            return run
        url = emulator.blobs.sas_url(run.log_container, run.log_name, write=False)
        return Response(200, {"logLink": url})

    @router.route("POST", run_path + r"/cancel", name="cancelRun", api_versions=RUNS_API_VERSIONS)
    def cancel_run(req: Request, m: re.Match[str]) -> Response:
        run = run_of(m)
        if isinstance(run, Response):
            return run
        with book.lock:
            if run.status not in TERMINAL:
                run.status = "Canceled"
                run.finish_time = run.last_updated = _now()
                run.cancel.set()
                emulator.blobs.append(
                    run.log_container,
                    run.log_name,
                    f"{_stamp()} Run ID: {run.run_id} was canceled\n".encode(),
                )
        return Response(200, None)


# -- request checks -----------------------------------------------------------------------------


def _request_type(req: Request) -> Any:
    try:
        body = req.json()
    except (ValueError, UnicodeDecodeError):
        return None
    return body.get("type") if isinstance(body, dict) else None


def _check_type(req: Request) -> Response | None:
    try:
        body = req.json()
    except (ValueError, UnicodeDecodeError):
        return None  # check_body gives the deserialiser's error
    if not isinstance(body, dict) or "type" not in body:
        return None
    kind = body["type"]
    if kind in _OTHER_RUN_REQUESTS:
        return arm_error(
            400,
            "InvalidParameter",
            f"The run request type '{kind}' is valid but the emulator implements only "
            "'EncodedTaskRunRequest'.",
        )
    if kind != "EncodedTaskRunRequest":
        return arm_error(
            400,
            "InvalidRequestContent",
            "The request content was invalid and could not be deserialized: 'Could not create "
            f"an instance of type RunRequest: unknown type discriminator {kind!r}. Path 'type'.'.",
        )
    return None


def _decodes(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _invalid(message: str) -> Response:
    return arm_error(400, "InvalidParameter", message)


def _check_semantics(body: dict[str, Any]) -> Response | None:
    if not body["encodedTaskContent"] or not _decodes(body["encodedTaskContent"]):
        return _invalid("The encodedTaskContent is not valid base64-encoded content.")
    if body.get("encodedValuesContent") and not _decodes(body["encodedValuesContent"]):
        return _invalid("The encodedValuesContent is not valid base64-encoded content.")
    timeout = body.get("timeout")
    if timeout is not None and not _MIN_TIMEOUT <= timeout <= _MAX_TIMEOUT:
        return _invalid(
            f"The timeout {timeout} is out of range: it must be between {_MIN_TIMEOUT} and "
            f"{_MAX_TIMEOUT} seconds."
        )
    custom = (body.get("credentials") or {}).get("customRegistries") or {}
    for host, creds in custom.items():
        if creds is None:
            return _invalid(f"The credentials of custom registry '{host}' are null.")
        secrets = [creds.get("userName"), creds.get("password")]
        for secret in secrets:
            if secret is None:
                continue
            if (secret.get("type") or "Opaque").lower() == "vaultsecret":
                if not creds.get("identity"):
                    return _invalid(
                        f"The custom registry '{host}' uses a Key Vault secret but names no "
                        "identity to read it with."
                    )
                split = urlsplit(secret.get("value") or "")
                parts = [p for p in split.path.split("/") if p]
                if split.scheme != "https" or len(parts) not in (2, 3) or parts[0] != "secrets":
                    return _invalid(
                        f"The Key Vault secret of custom registry '{host}' is not a secret URI "
                        "(https://<vault>/secrets/<name>[/<version>])."
                    )
        if creds.get("password") is not None and creds.get("userName") is None:
            return _invalid(f"The custom registry '{host}' has a password but no userName.")
    return None


_CLAUSE_EQ = re.compile(r"^(?P<name>RunType|Status|TaskName|RunId) eq '(?P<value>[^']*)'$")
_CLAUSE_TIME = re.compile(
    r"^(?P<name>CreateTime|FinishTime) (?P<op>ge|gt|le|lt) (?P<value>\d{4}-\d{2}-\d{2}T[0-9:.]+Z)$"
)


def _parse_filter(text: str) -> Any:
    """A predicate over runs for ``$filter``, or the 400 for a form the emulator does not know."""
    text = text.strip()
    if not text:
        return lambda run: True
    checks = []
    for clause in re.split(r"\s+and\s+", text):
        eq = _CLAUSE_EQ.match(clause.strip())
        when = _CLAUSE_TIME.match(clause.strip())
        if eq is not None:
            checks.append(_eq_check(eq["name"], eq["value"]))
        elif when is not None:
            moment = datetime.fromisoformat(when["value"].replace("Z", "+00:00"))
            checks.append(_time_check(when["name"], when["op"], moment))
        else:
            return arm_error(
                400,
                "InvalidFilter",
                f"The $filter clause '{clause}' is not supported by the emulator (it knows "
                "RunType/Status/TaskName/RunId eq '...' and CreateTime/FinishTime ge|gt|le|lt "
                "<ISO 8601 UTC>, joined by 'and').",
            )
    return lambda run: all(check(run) for check in checks)


def _eq_check(name: str, value: str) -> Any:
    def check(run: EmulatedRun) -> bool:
        actual = {
            "RunType": run.run_type,
            "Status": run.status,
            "TaskName": run.task or "",
            "RunId": run.run_id,
        }
        return actual[name].lower() == value.lower()

    return check


def _time_check(name: str, op: str, moment: datetime) -> Any:
    def check(run: EmulatedRun) -> bool:
        actual = run.create_time if name == "CreateTime" else run.finish_time
        if actual is None:
            return False
        return {
            "ge": actual >= moment,
            "gt": actual > moment,
            "le": actual <= moment,
            "lt": actual < moment,
        }[op]

    return check


# -- running ------------------------------------------------------------------------------------


class _RunFailed(Exception):
    """The run ends with ``status``; ``message`` is the runner's last words (and the Error)."""

    def __init__(self, status: str, message: str, error: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.error = status, message, error


def _execute(emulator: AcrEmulator, book: RunBook, run: EmulatedRun) -> None:
    began = time.monotonic()

    def write(text: str) -> None:
        emulator.blobs.append(run.log_container, run.log_name, text.encode("utf-8"))

    def runner(text: str) -> None:
        write(f"{_stamp()} {text}\n")

    def finish(status: str, closing: str, error: str | None = None) -> None:
        with book.lock:
            if run.status in TERMINAL:  # cancelled meanwhile: that stands
                return
            run.status = status
            run.error_message = error
            run.finish_time = run.last_updated = _now()
        seconds = max(1, round(time.monotonic() - began))
        if status == "Succeeded":
            write(f"Run ID: {run.run_id} was successful after {seconds}s\n")
        else:
            write(f"\nRun ID: {run.run_id} failed after {seconds}s. Error: {closing}\n")

    try:
        if not _wait_for_an_agent(emulator, book, run):
            return  # cancelled while queued
        emulator.blobs.put(run.log_container, run.log_name, b"")
        workspace = emulator.workdir / "quick-runs" / run.registry.name / run.run_id
        source = workspace / "source"
        source.mkdir(parents=True)
        runner("Downloading source code...")
        _download_source(emulator, book, run, source)
        runner("Finished downloading source code")
        runner(f"Using acb_vol_{uuid.uuid4()} as the home volume")
        runner("Setting up Docker configuration...")
        runner("Successfully set up Docker configuration")
        _login(emulator, book, run, runner, write)
        if emulator.synthetic_runs is not None:
            from devstack.acr import synthetic

            synthetic.execute(emulator.synthetic_runs, run, runner, write, finish)
            return
        if run.delay and run.cancel.wait(run.delay):
            return
        if run.cancel.is_set():
            return
        task_path = workspace / "task.yaml"
        task_path.write_bytes(base64.b64decode(run.body["encodedTaskContent"]))
        if run.outcome_fault:
            _fake_outcome(run, task_path, runner, write, finish)
            return
        _run_steps(emulator, run, source, task_path, runner, write, finish)
    except _RunFailed as failed:
        write(failed.message + "\n")
        finish(failed.status, "failed during run, err: exit status 1", failed.error)
    except Exception as exc:  # an emulator bug ends the run as ACR's internal errors do
        traceback.print_exc()
        finish("Error", f"emulator error: {exc!r}", f"emulator error: {exc!r}")
    finally:
        run.done.set()
        with book.agents:
            book.agents.notify_all()  # a queued run of this registry may start now


def _wait_for_an_agent(emulator: AcrEmulator, book: RunBook, run: EmulatedRun) -> bool:
    """Keep ``run`` Queued until its registry runs fewer than its limit of runs; then start it.

    The limit is ``AcrEmulator.concurrent_runs[registry]`` (none: every run starts at once).
    False when the run was cancelled while it waited (it never started).
    """
    name = run.registry.name
    with book.agents:
        while run.status not in TERMINAL:
            limit = emulator.concurrent_runs.get(name)
            running = sum(1 for other in book.of(name) if other.status == "Running")
            if limit is None or running < limit:
                run.status = "Running"
                run.start_time = run.last_updated = _now()
                return True
            book.agents.wait(0.2)  # woken when a run ends; the timeout covers a changed limit
    return False


def _download_source(emulator: AcrEmulator, book: RunBook, run: EmulatedRun, source: Path) -> None:
    location = run.body.get("sourceLocation")
    if not location:
        return
    with book.lock:
        issued = (run.registry.name, location) in book.uploads
    data = emulator.blobs.get(_container(run.registry), location) if issued else None
    if data is None:
        raise _RunFailed(
            "Error",
            f"failed to download the source context {location}: it was not uploaded",
            "The source location is not accessible.",
        )
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(source, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise _RunFailed(
            "Error", f"failed to extract the source context: {exc}", "Invalid source context."
        ) from None


def _login(emulator: AcrEmulator, book: RunBook, run: EmulatedRun, runner: Any, write: Any) -> None:
    """Log in to each custom registry as its credentials say, or fail the run before any step.

    An ``identity`` resolves only to a user-assigned identity attached to the run (a task run's;
    a quick run has none, so ``[system]`` or any client ID fails here); a ``Vaultsecret`` only
    if that identity may read the vault; identity alone logs in to an emulated ACR only if the
    identity has AcrPull on it. ACR's own wording for these failures is not confirmed; the
    lines follow the runner's ``failed to login, ran out of retries`` form.
    """
    custom = (run.body.get("credentials") or {}).get("customRegistries") or {}
    for host, creds in custom.items():
        runner(f"Logging in to registry: {host}")

        def refuse(why: str, host: str = host) -> _RunFailed:
            return _RunFailed(
                "Failed",
                f"failed to login, ran out of retries: failed to login to {host}: {why}\n"
                ": exit status 1",
            )

        wanted = creds.get("identity")
        identity = None
        if wanted:
            identity = next(
                (i for i in run.identities if i.client_id.lower() == str(wanted).lower()), None
            )
            if identity is None:
                raise refuse(
                    f"the identity '{wanted}' is not an identity of this run (a quick run has "
                    "none; a task run has the user-assigned identities it was created with)"
                )
        secrets = [creds.get("userName"), creds.get("password")]
        try:
            for secret in secrets:
                if secret is None:
                    continue
                if (secret.get("type") or "Opaque").lower() == "vaultsecret":
                    if identity is None or not identity.reads_vault:
                        raise refuse(
                            f"failed to get the credentials of {host} from Key Vault: the "
                            "identity may not read secrets of the vault (403 Forbidden)"
                        )
                    emulator.secret_by_uri(secret["value"])
        except (KeyError, ConnectionError) as exc:
            raise _RunFailed(
                "Failed",
                f"failed to login, ran out of retries: failed to get the credentials of "
                f"{host} from Key Vault: {exc}\n: exit status 1",
            ) from None
        target = emulator.registry_by_login_server(host)
        if (
            target is not None
            and identity is not None
            and not any(secrets)
            and not identity.may_pull(target)
        ):
            raise refuse(
                f"the identity has no pull permission on registry {target.name} (AcrPull): "
                "unauthorized"
            )
        runner(f"Successfully logged into {host}")
        with book.lock:
            run.logged_in.append(host)


def _values(run: EmulatedRun) -> tuple[dict[str, str], frozenset[str]]:
    values: dict[str, str] = {}
    encoded = run.body.get("encodedValuesContent")
    if encoded:
        loaded = yaml.safe_load(base64.b64decode(encoded)) or {}
        if isinstance(loaded, dict):
            values.update({str(k): str(v) for k, v in loaded.items()})
    secret: set[str] = set()
    for item in run.body.get("values") or []:
        values[item["name"]] = item["value"]
        if item.get("isSecret"):
            secret.add(item["name"])
    return values, frozenset(secret)


def _platform_parts(raw: Any) -> list[str]:
    if not isinstance(raw, dict):
        return []
    return [str(raw.get(k) or "").lower() for k in ("os", "architecture", "variant")]


def _agent_platform(raw: Any) -> str:
    """The run's ``platform`` as podman's ``os/arch[/variant]``: the agent it runs on.

    '' when that is this host's own platform (podman's default): the emulator's agent is this
    machine, and another architecture runs under QEMU user emulation.
    """
    platform = "/".join(p for p in _platform_parts(raw) if p)
    return "" if platform in ("", "linux", f"linux/{host_architecture()}") else platform


def _run_variables(run: EmulatedRun) -> RunVariables:
    parts = [*_platform_parts(run.body.get("platform")), "", ""]
    return RunVariables(
        run_id=run.run_id,
        registry=run.registry.login_server,
        date=_now(),
        os=parts[0] or "linux",
        architecture=parts[1] or host_architecture(),
    )


def _registry_of(image: str) -> str:
    """The registry part of an image name ('' for a Docker Hub short name)."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return ""


def _fake_outcome(run: EmulatedRun, task_path: Path, runner: Any, write: Any, finish: Any) -> None:
    outcome = run.outcome_fault
    if outcome == "Failed":
        step = "acb_step_0"
        try:
            values, _ = _values(run)
            task = parse_task(task_path.read_text("utf-8"), values, _run_variables(run))
            step = task.steps[0].id
        except (TaskError, IndexError):
            pass
        runner(
            f"Executing step ID: {step}. Timeout(sec): 600, Working directory: '', "
            "Network: 'acb_default_network'"
        )
        runner(f"Launching container with name: {step}")
        write("injected failure: the step exited non-zero\n")
        runner(f"Container failed during run: {step}. No retries remaining.")
        write(f"failed to run step ID: {step}: exit status 1\n")
        finish("Failed", "failed during run, err: exit status 1")
    elif outcome == "Timeout":
        finish("Timeout", "context deadline exceeded")
    else:
        message = "The run encountered an internal error (injected fault). Please retry."
        finish("Error", message, message)


def _run_steps(
    emulator: AcrEmulator,
    run: EmulatedRun,
    source: Path,
    task_path: Path,
    runner: Any,
    write: Any,
    finish: Any,
) -> None:
    values, _secret = _values(run)
    # The agent pulls from its own registry (unless loginMode is None: no login there), and
    # from registries it logged in to, with credentials; the emulated ones serve their content
    # from their backing registries, so references to them are pointed there. Any other
    # registry is pulled anonymously.
    logged = set(run.logged_in)
    if login_mode(run.body).lower() != "none":
        logged.add(run.registry.login_server)
    agent_hosts = {
        r.login_server: r.backing.host
        for r in emulator.registries.values()
        if r.login_server in logged or not r.private
    }
    # A private registry the run did not log in to refuses the agent's pull (docker exits 125).
    refused = {
        r.login_server
        for r in emulator.registries.values()
        if r.private and r.login_server not in logged
    }
    # Any emulated registry the run did not log in to refuses a push (ACR's agents push with
    # the run's login; an anonymous push is refused even where anonymous pull is allowed).
    unpushable = {
        r.login_server for r in emulator.registries.values() if r.login_server not in logged
    }
    for name, value in list(values.items()):
        for login, backing in agent_hosts.items():
            value = value.replace(f"{login}/", f"{backing}/")
        values[name] = value
    timeout = float(run.body.get("timeout") or _DEFAULT_TIMEOUT)
    try:
        task = parse_task(task_path.read_text("utf-8"), values, _run_variables(run))
    except TaskError as exc:
        write(f"failed to parse the task file: {exc.message}\n")
        finish("Failed", "failed to initialize the task")
        return
    for step in task.steps:
        denied = [i for i in step.images if _registry_of(i) in unpushable]
        if step.kind == "push" and denied:
            runner(
                f"Executing step ID: {step.id}. Timeout(sec): {step.timeout}, Working "
                "directory: '', Network: ''"
            )
            runner(f"Pushing image: {denied[0]}, attempt 1")
            write(f"unauthorized: authentication required for {_registry_of(denied[0])}\n")
            write(f"failed to run step ID: {step.id}: exit status 1\n")
            finish("Failed", "failed during run, err: exit status 1")
            return
        if step.kind != "cmd" or step.image in task.built:
            continue  # a push is checked above; a build tags, and a built image is not pulled
        if _registry_of(step.image) in refused:
            runner(
                f"Executing step ID: {step.id}. Timeout(sec): {step.timeout}, Working "
                "directory: '', Network: 'acb_default_network'"
            )
            runner(f"Launching container with name: {step.id}")
            write(f"Unable to find image '{step.image}' locally\n")
            write(
                "docker: Error response from daemon: Head "
                f'"https://{_registry_of(step.image)}/v2/": unauthorized: '
                "authentication required.\n"
            )
            runner(f"Container failed during run: {step.id}. No retries remaining.")
            write(f"failed to run step ID: {step.id}: exit status 125\n")
            finish("Failed", "failed during run, err: exit status 1")
            return
    # What docker run prints when the agent has not got an image yet (always, on a fresh agent).
    for name in task.images:
        write(f"Unable to find image '{name}' locally\n")
    # Nothing masked here: whether ACR masks what steps print of secret values is not
    # documented, so the emulator assumes it does not and the client must.
    agent = Agent(
        write,
        insecure=frozenset(r.backing.host for r in emulator.registries.values()),
        platform=_agent_platform(run.body.get("platform")),
        scratch=task_path.parent,
        cancel=run.cancel,
    )
    try:
        ending = agent.run(task, source, timeout)
    except TaskError as exc:
        write(f"failed to initialize the task: {exc.message}\n")
        finish("Failed", "failed to initialize the task")
        return
    if ending.status != "Canceled":
        finish(ending.status, ending.closing, ending.error)
