"""The ACR validator: a rule's task file runs in ACR as a task run with a user-assigned identity.

What ``az acr run --file acr-task.yaml --set IMAGE=... <folder>`` does, as a ``taskRuns``
resource, with the ``azure-mgmt-containerregistrytasks`` client (api-version
``2025-03-01-preview``):

1. the validation folder is packed into a deterministic ``tar.gz`` (sorted entries, fixed
   mtimes, no owner names, so the same folder always gives the same bytes);
2. ``registries.get_build_source_upload_url`` gives a write SAS URL and a ``relativePath``; the
   archive is PUT there as a block blob (the SAS URL is a credential: it is never logged);
3. ``task_runs.begin_create`` (``PUT …/registries/{r}/taskRuns/{name}``, a long-running
   operation followed through ``Azure-AsyncOperation``) with the runner's **user-assigned
   identity** (``identity.type=UserAssigned``, ``userAssignedIdentities={<its ARM id>: {}}``) and
   an ``EncodedTaskRunRequest``: the task file base64-encoded, the values (``IMAGE`` = the
   digest-pinned candidate, then the request's values, secret ones flagged ``isSecret``), the
   platform (the request's ``os/arch[/variant]`` when it names one, as ``PlatformProperties``
   ``os`` / ``architecture`` / ``variant``: the agent the run is scheduled on; else the
   validator's default), the run timeout, the uploaded ``relativePath`` as the source location, and
   ``credentials.customRegistries[host]`` naming that identity by its **client ID**, alone for an
   ACR it may pull from, with ``Vaultsecret`` user name and password URIs it reads from Key Vault
   for any other registry — only for the registries of the request's own rule (the candidate's
   upstream, and a configured registry the rule's folder or values name) — and
   ``credentials.sourceRegistry.loginMode`` ``None`` unless the task file uses the runner
   registry (:mod:`~gate.adapters.validation.acr_run_scope`). The created task run's
   ``runResult.runId`` is the run;
4. ``on_started(run_id)``, then ``runs.get`` with exponential backoff (``poll_initial``
   doubling up to ``poll_max``) until the run ends. A run waits for an agent in ACR's queue
   (status ``Queued``, no ``startTime`` yet: ``RunStatus`` and ``RunProperties`` of the REST
   specification), and that wait is not the run's: the validation timeout counts from when the
   run is first seen past ``Queued``. Past our own deadline (then, the request's timeout plus
   ``deadline_margin``, which covers the poll interval and ACR's own ending) the run is
   cancelled and the validation FAILS; ACR's own run timeout normally ends it first. The queue
   wait is bounded separately: a run still ``Queued`` ``max_queue_wait`` seconds
   (:data:`MAX_QUEUE_WAIT`) after following began is cancelled and the validation FAILS
   (not REJECTED: it says nothing about the image), its reason saying it never started. Both clocks are
   the gate's own (a resumed run starts them afresh); the run's ``createTime``/``startTime``
   are ACR's clock and are not compared with ours;
5. ``runs.get_log_sas_url`` and a GET of that blob: the log, secrets masked, is returned;
   ``log_location`` is ``acr://{registry}/runs/{run_id}``, never the SAS URL;
6. ``task_runs.delete`` of the task run resource, then ``task_runs.get``, which must answer
   404: a task run keeps its request, and ``TaskRuns_GetDetails`` answers it "with all
   secrets" (REST specification), so it must not stay. Tried ``DELETE_ATTEMPTS`` times; a task
   run still there never changes the verdict (the run and its log were read already; whether
   deleting a task run also removes its run record is not documented, hence the order), but its
   notice, with the ``az acr taskrun delete`` command that removes it, is added to the result's
   reason and log and logged.

Why a task run and not ``scheduleRun`` (sources in docs/design/task-runs.md): a run that must
log in to a registry or read Key Vault with a managed identity needs that identity *on the run*.
``scheduleRun`` takes a ``RunRequest``, which has no identity (REST specification
``containerregistry_build.json``, 2019-06-01-preview and 2025-03-01-preview), and nothing
documents that a quick run borrows the registry's own identity; ``az acr run`` has no identity
option either. A ``taskRuns`` resource wraps the same ``EncodedTaskRunRequest`` and adds a
top-level ``identity``; ACR documents that task runs with a managed identity take a
**user-assigned** one only (``container-registry-task-run-template``), and the Azure/acr samples
``quickdockerbuildwithidentity`` and ``quickdockerbuildusingidentitykeyvault`` pair exactly that
identity with ``customRegistries[login].identity = <client ID>`` (plus ``Vaultsecret`` URIs).
The same document says task runs need a *remote* source context; that concerns template
deployments, which cannot upload. We upload through ``listBuildSourceUploadUrl`` and pass its
``relativePath``, which the specification's ``sourceLocation`` accepts ("If it is relative URL,
the relative path should be obtained from calling listBuildSourceUploadUrl API"). This pairing
with a task run is **Spec-only**: not verified against the service. If ACR refused it, the PUT
(or the run, at "Downloading source code") would fail and every validation would be FAILED with
ACR's message; the record says so and nothing is promoted.

A PUT is idempotent where ``scheduleRun`` (a POST) is not: the SDK's retry of a PUT whose answer
was lost names the same resource again instead of scheduling a second run.

ARM calls per validation: upload URL 1, PUT 1, one ``Azure-AsyncOperation`` poll per
``Retry-After`` until the creation ends, the SDK's final GET of the task run 1, one ``runs.get``
per poll, log URL 1, DELETE 1 and its verifying GET 1 (the blob PUT and GET go to Storage, not
ARM). A run of ``T`` seconds takes about ``log2(T)`` polls while the interval grows, then one per
``poll_max``; a run waiting in ACR's queue is polled the same way. Each throttled (429) or failing
(5xx) answer adds one retry of that request, at most ``ARM_RETRY_STATUS`` per request, none
after a ``Retry-After`` beyond ``ARM_RETRY_AFTER_MAX`` (:mod:`gate.adapters.arm_retry`).

Outcomes: ``Succeeded`` is PASSED. ``Failed`` with a failing step in the log is REJECTED, the
reason naming the step and its last output lines, parsed from ACR's log lines
(``Container failed during run: STEP. No retries remaining.``, ``failed to run step ID: STEP:
exit status N``) — except exit status 125 (the container engine itself failed, as the local
validator treats it). ``Failed`` with no failing step (a registry login or source download
that failed before any step ran) is FAILED: it says nothing about the image, and a REJECTED
record would block the digest for good. ``Canceled``, ``Error`` and ``Timeout`` are FAILED.

Resuming (:class:`gate.ports.Resume`), because ACR runs outlive the worker that started them.
The task run's name is a deterministic key of the validation attempt: ``gate-{key}-{attempt}``
(:func:`task_run_name`; ``key`` is the gate record's id, ``attempt`` the number of the worker
that took the record on), so:

* with a ``run_id``: that run is followed (nothing is uploaded or created); if ACR no longer
  knows it (404), a new task run is created under this attempt's name;
* without one (the worker died between the PUT and recording the ID): ``GET taskRuns/{name}``
  for the earlier attempts' names, newest first (at most ``MAX_EARLIER_ATTEMPTS``); the first
  that exists names its run in ``runResult.runId``, and that run is adopted and followed. No
  heuristic is involved: a task run under that name was created for this record, by this gate.
  When none exists (the worker died before its PUT), a new task run is created.

Runs a worker started through ``scheduleRun`` before this design cannot be found that way; a
record that predates it and resumes without a run ID starts a new run (its orphan, if any, runs
to its end unobserved).

Secrets: values named in ``request.secret_values`` are sent with ``isSecret`` (ACR keeps them
out of its own displays), and replaced by ``***`` in the returned log, reason and every error
message of this module.

This module holds the validator: the ARM and Storage calls, polling, cancelling, log reading and
deleting. What it sends (the archive, task run names, the request body) is built in
:mod:`~gate.adapters.validation.acr_run_request`; how a run's log and end status become an
outcome is in :mod:`~gate.adapters.validation.acr_run_log`. The public names of both stay
importable from here.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from azure.core import PipelineClient
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
)
from azure.core.pipeline.policies import HeadersPolicy, UserAgentPolicy
from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest, HttpResponse
from azure.mgmt.containerregistrytasks import ContainerRegistryTasksMgmtClient
from azure.mgmt.containerregistrytasks.models import PlatformProperties, Run, TaskRun
from msgspec.structs import replace

from gate.adapters.arm_retry import arm_retry_policy
from gate.adapters.validation.acr_run_log import (
    ENGINE_ERROR_EXIT,
    StepFailure,
    judge,
    parse_step_failure,
    redact_urls,
)
from gate.adapters.validation.acr_run_request import (
    MAX_RUN_TIMEOUT,
    MIN_RUN_TIMEOUT,
    TAR_MTIME,
    TASK_RUN_NAME,
    pack_folder,
    platform_properties,
    registry_credentials,
    run_timeout_of,
    task_run,
    task_run_name,
)
from gate.adapters.validation.acr_run_scope import run_registries, runner_login_mode
from gate.adapters.validation.masking import Masker
from gate.domain.records import Outcome, ValidationResult
from gate.errors import ConfigError, ValidatorError
from gate.logsafe import get_logger
from gate.ports import OnStarted, Resume, ValidationRequest

log = get_logger(__name__)

TERMINAL_STATUSES = frozenset({"Succeeded", "Failed", "Canceled", "Error", "Timeout"})
"""Run statuses after which nothing more happens (``Queued``, ``Started``, ``Running`` go on)."""

QUEUED = "Queued"
"""The run status of a run waiting for an agent (``RunStatus`` of the REST specification)."""

MAX_QUEUE_WAIT = 900.0
"""How long (seconds) a run may wait in ACR's queue, not started, before it is cancelled.

Half the Functions invocation limit (``functionTimeout`` 30 min in host.json), leaving the
other half to the run itself at the default validation timeout (600 s) and its margin; a run
that waited this long means the runner registry is saturated, and cancelling it (a FAILED
validation, which says nothing against the image) frees its place instead of adding to the
queue.
"""

MAX_EARLIER_ATTEMPTS = 5
"""A resumed validation looks up the task runs of at most this many earlier attempts."""

DELETE_ATTEMPTS = 3
"""Deleting a task run is tried this many times (each verified by a GET) before it is reported."""

_BLOB_API_VERSION = "2021-08-06"
_TRANSPORT_KEYS = ("connection_verify", "connection_cert", "connection_timeout", "read_timeout")


def _arm_detail(exc: AzureError) -> str:
    """``status code: message`` of an ARM error, short, for messages."""
    if isinstance(exc, HttpResponseError):
        code = exc.error.code if exc.error is not None and exc.error.code else ""
        message = exc.error.message if exc.error is not None and exc.error.message else ""
        status = exc.status_code if exc.status_code is not None else "?"
        detail = " ".join(p for p in (str(status), code) if p)
        return f"{detail}: {message or exc.reason or 'no message'}"
    return f"{type(exc).__name__}: {exc.message}"


def _text(value: object) -> str:
    """An SDK enum member or string as its wire value (``str()`` of a member is its repr)."""
    if value is None:
        return ""
    return str(value.value) if isinstance(value, enum.Enum) else str(value)


def _status(run: Run) -> str:
    return _text(run.properties.status) if run.properties else ""


def _run_result(task_run: TaskRun) -> Run:
    """The run a task run started, as the task run last saw it (``_follow`` polls it on)."""
    result = task_run.properties.run_result if task_run.properties is not None else None
    return result if result is not None else Run()


def _run_id_of(task_run: TaskRun) -> str | None:
    """``properties.runResult.runId`` of a task run, if it started one."""
    props = task_run.properties
    result = props.run_result if props is not None else None
    run_props = result.properties if result is not None else None
    return run_props.run_id if run_props is not None and run_props.run_id else None


def _noting(result: ValidationResult, notices: list[str | None]) -> ValidationResult:
    """``result`` with the notices of task runs left behind added to its reason and log."""
    said = [n for n in notices if n]
    if not said:
        return result
    text = "; ".join(said)
    return replace(
        result,
        reason=f"{result.reason}; {text}" if result.reason else text,
        log=f"{result.log.rstrip()}\n{text}\n" if result.log else f"{text}\n",
    )


class AcrTaskRunValidator:
    """Runs a rule's ACR task file as an ACR task run; see the module documentation.

    ``credential`` is any ``TokenCredential`` (``DefaultAzureCredential`` in production);
    ``registry`` (in ``resource_group`` of ``subscription_id``) is the ACR that runs the task;
    ``identity_resource_id`` and ``identity_client_id`` name the runner's user-assigned identity
    (its ARM id, attached to every task run, and its client ID, which the run's registry
    credentials name); ``custom_registries`` maps registry login servers the task pulls from to
    Key Vault secret URIs of their (username, password), read by that identity, or to None for
    an ACR the identity may pull from itself (AcrPull): each run carries only those of its own
    rule (:func:`~gate.adapters.validation.acr_run_scope.run_registries`). ``login_server``
    is the runner registry's (what ``{{.Run.Registry}}`` is in a run): a run logs in there only
    when its task file uses it (``loginMode``, see :mod:`~gate.adapters.validation.
    acr_run_scope`). ``location`` (the runner registry's region, ``runner.location`` in the
    configuration) is each task run's ``location``. Custom registries need the identity; without any, the identity is optional
    (a task run without one pulls anonymously).
    ``client_kwargs`` go to the SDK client (``connection_verify``, ``credential_scopes``…), but
    its ``retry_*`` keys (``retry_status``, ``retry_after_max``…) configure the
    :class:`~gate.adapters.arm_retry.BoundedRetryPolicy` of every ARM request; the transport and
    retry settings apply to the blob upload and download too. ``sleep`` (polling, and the retry
    waits) and ``clock`` are injectable for tests.
    """

    def __init__(
        self,
        *,
        credential: Any,
        subscription_id: str,
        resource_group: str,
        registry: str,
        arm_endpoint: str = "https://management.azure.com",
        custom_registries: Mapping[str, tuple[str, str] | None] | None = None,
        login_server: str | None = None,
        location: str | None = None,
        identity_resource_id: str | None = None,
        identity_client_id: str | None = None,
        os: str = "Linux",
        architecture: str = "amd64",
        poll_initial: float = 2.0,
        poll_max: float = 30.0,
        deadline_margin: float = 300.0,
        max_queue_wait: float = MAX_QUEUE_WAIT,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        client_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if poll_initial <= 0 or poll_max < poll_initial:
            raise ConfigError(
                f"task-run polling interval {poll_initial:g}..{poll_max:g} s is invalid; use "
                "0 < poll_initial <= poll_max"
            )
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.registry = registry
        self.custom_registries = dict(custom_registries or {})
        self.login_server = login_server or None
        if bool(identity_resource_id) != bool(identity_client_id):
            raise ConfigError(
                "the runner identity needs both its ARM resource id and its client id; give "
                "both, or neither"
            )
        if self.custom_registries and not identity_resource_id:
            raise ConfigError(
                "validation runs that log in to "
                f"{', '.join(sorted(self.custom_registries))} need the runner's user-assigned "
                "identity (resource id and client id); configure it, with AcrPull on those "
                "registries and read access to their Key Vault secrets"
            )
        self.identity_resource_id = identity_resource_id or None
        self.identity_client_id = identity_client_id or None
        self.location = location or None
        self.os = os
        self.architecture = architecture
        self.poll_initial = poll_initial
        self.poll_max = poll_max
        self.deadline_margin = deadline_margin
        self.max_queue_wait = max_queue_wait
        self._sleep = sleep
        self._clock = clock
        kwargs = dict(client_kwargs or {})
        blob_retry = {k: v for k, v in kwargs.items() if k.startswith("retry_")}
        # Every ARM call (upload URL, the PUT and its operation polls, run GETs, cancel, log
        # URL, DELETE) goes through this policy: throttling (429 + Retry-After) and 5xx are
        # retried a bounded number of times, no wait longer than retry_after_max
        # (gate.adapters.arm_retry, which cites what azure-core does by itself).
        self._retry = arm_retry_policy(kwargs, sleep=sleep)
        self._client = ContainerRegistryTasksMgmtClient(
            credential, subscription_id, base_url=arm_endpoint, retry_policy=self._retry, **kwargs
        )
        transport = {k: kwargs[k] for k in _TRANSPORT_KEYS if k in kwargs}
        # Blobs go through azure-core as well: the same TLS trust (REQUESTS_CA_BUNDLE or
        # connection_verify) and bounded retries as the ARM client, and no logging policy that
        # could print a SAS URL.
        self._blobs: PipelineClient[HttpRequest, HttpResponse] = PipelineClient(
            "https://storage.invalid",
            policies=[
                HeadersPolicy(),
                UserAgentPolicy(sdk_moniker="gate-task-run"),
                arm_retry_policy(blob_retry, sleep=sleep),
            ],
            transport=RequestsTransport(**transport),
        )

    @property
    def arm_retries(self) -> int:
        """How many ARM requests were retried (throttled or failing) since this was made."""
        return self._retry.retries

    def close(self) -> None:
        """Close the HTTP sessions."""
        self._client.close()
        self._blobs.close()

    def __enter__(self) -> AcrTaskRunValidator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_location(self, run_id: str) -> str:
        """A stable, secret-free reference to a run's log (``az acr task logs`` finds it)."""
        return f"acr://{self.registry}/runs/{run_id}"

    # -- the port ----------------------------------------------------------------------------

    def validate(
        self, request: ValidationRequest, on_started: OnStarted, resume: Resume | None = None
    ) -> ValidationResult:
        """Run (or follow) the task run of ``request``; see the module documentation.

        Raises ConfigError (nothing scheduled, ``on_started`` not called) for a missing folder
        or task file or a timeout ACR cannot take, InvalidReference for an image without a
        digest, ValidatorError when ARM or Storage refuse or fail beyond the SDK's retries.
        """
        pinned = request.image.pinned()
        values = {"IMAGE": str(pinned), **request.values}
        mask = Masker(values[name] for name in request.secret_values if name in values)
        folder = Path(request.folder)
        task_path = folder / request.task_file
        if not folder.is_dir():
            raise ConfigError(
                f"validation folder {folder} does not exist; create it, or fix the rule's "
                "validation folder"
            )
        if not task_path.is_file():
            raise ConfigError(
                f"task file {task_path} does not exist; add it, or fix the rule's task_file"
            )
        run_timeout = run_timeout_of(request.timeout_seconds)
        platform = platform_properties(
            request.platform, default_os=self.os, default_architecture=self.architecture
        )
        try:
            return self._validate(request, on_started, resume, values, mask, run_timeout, platform)
        except AzureError as exc:
            raise ValidatorError(
                mask(
                    f"ACR task run on registry {self.registry} failed: {_arm_detail(exc)}; "
                    "check that the gate's identity may create, read and delete task runs on "
                    "the registry (Microsoft.ContainerRegistry/registries/taskruns/write, "
                    "…/read, …/delete, …/runs/read, …/runs/listLogSasUrl/action, "
                    "…/listBuildSourceUploadUrl/action) and assign the runner identity "
                    "(Managed Identity Operator on it), then retry"
                )
            ) from None

    def _validate(
        self,
        request: ValidationRequest,
        on_started: Callable[[str], None],
        resume: Resume | None,
        values: dict[str, str],
        mask: Masker,
        run_timeout: int,
        platform: PlatformProperties,
    ) -> ValidationResult:
        attempt = max(request.attempt, 1)
        if resume is not None and resume.run_id:
            try:
                run = self._client.runs.get(self.resource_group, self.registry, resume.run_id)
            except ResourceNotFoundError:
                log.warning(
                    "run %s is unknown to registry %s; starting a new run",
                    resume.run_id,
                    self.registry,
                )
            else:
                log.info("following run %s started earlier", resume.run_id)
                result = self._follow(resume.run_id, run, request, mask)
                # The attempt that started it may have left its task run behind.
                left = [self._delete(name) for name in self._earlier_names(request.key, attempt)]
                return _noting(result, left)
        elif resume is not None:
            found = self._earlier_run(request.key, attempt)
            if found is not None:
                name, run_id, run = found
                log.info(
                    "adopting run %s of task run %s, started by an earlier worker", run_id, name
                )
                on_started(run_id)
                result = self._follow(run_id, run, request, mask)
                return _noting(result, [self._delete(name)])

        name = task_run_name(request.key, attempt)
        relative_path = self._upload(pack_folder(Path(request.folder)))
        task = (Path(request.folder) / request.task_file).read_bytes()
        plain = {k: v for k, v in values.items() if k not in request.secret_values}
        # Only this rule's registries: another rule's broken secret cannot fail this run, and
        # this candidate gets no credential of another rule's upstream.
        registries = run_registries(
            self.custom_registries,
            candidate_host=request.image.registry,
            folder=Path(request.folder),
            values=plain,
        )
        login_mode = runner_login_mode(
            Path(request.folder), request.task_file, plain, self.login_server
        )
        poller = self._client.task_runs.begin_create(
            self.resource_group,
            self.registry,
            name,
            task_run(
                task=task,
                values=values,
                secret_values=request.secret_values,
                platform=platform,
                timeout=run_timeout,
                source_location=relative_path,
                credentials=registry_credentials(
                    registries, self.identity_client_id, login_mode=login_mode
                ),
                identity_resource_id=self.identity_resource_id,
                location=self.location,
            ),
            # without a Retry-After from ARM, poll the creation at our own pace
            polling_interval=self.poll_initial,
        )
        created = poller.result()
        new_id = _run_id_of(created)
        if not new_id:
            state = _text(created.properties.provisioning_state) if created.properties else ""
            raise ValidatorError(
                f"ACR created task run {name} on registry {self.registry} "
                f"(provisioning state {state or 'unknown'}) but it names no run; look at it "
                "with 'az acr taskrun show', then retry"
            )
        log.info("task run %s started run %s on registry %s", name, new_id, self.registry)
        on_started(new_id)
        result = self._follow(new_id, _run_result(created), request, mask)
        return _noting(result, [self._delete(name)])

    # -- task runs ---------------------------------------------------------------------------

    @staticmethod
    def _earlier_names(key: str, attempt: int) -> list[str]:
        """The task run names of the attempts before ``attempt``, newest first."""
        if not key:
            return []
        first = max(1, attempt - MAX_EARLIER_ATTEMPTS)
        return [task_run_name(key, n) for n in range(attempt - 1, first - 1, -1)]

    def _earlier_run(self, key: str, attempt: int) -> tuple[str, str, Run] | None:
        """(task run name, run ID, run) of the newest earlier attempt that started a run."""
        for name in self._earlier_names(key, attempt):
            try:
                task_run = self._client.task_runs.get(self.resource_group, self.registry, name)
            except ResourceNotFoundError:
                continue
            run_id = _run_id_of(task_run)
            if run_id:
                return name, run_id, _run_result(task_run)
            log.info("task run %s exists but names no run; not adopting it", name)
        if key:
            log.info("no earlier attempt of %s left a task run; starting a new run", key)
        return None

    def delete_command(self, name: str) -> str:
        """The ``az`` command that deletes task run ``name`` by hand."""
        return (
            f"az acr taskrun delete --registry {self.registry} --name {name} "
            f"--resource-group {self.resource_group} --yes"
        )

    def _delete(self, name: str) -> str | None:
        """Delete task run ``name`` and check it is gone; None, or the notice of a leftover.

        A task run keeps its run request, and ``TaskRuns_GetDetails`` answers it with its
        credentials and secret values, so it must not outlive the validation: the DELETE is
        tried ``DELETE_ATTEMPTS`` times (besides the SDK's own retries), each followed by a GET
        that must answer 404. A task run still there is logged and returned as a notice with
        the command that deletes it; the verdict stands either way.
        """
        why = ""
        for attempt in range(1, DELETE_ATTEMPTS + 1):
            try:
                self._client.task_runs.delete(self.resource_group, self.registry, name)
                self._client.task_runs.get(self.resource_group, self.registry, name)
            except ResourceNotFoundError:
                return None  # the GET's 404: gone
            except AzureError as exc:
                why = _arm_detail(exc)
            else:
                why = "it still exists after its deletion"
            if attempt < DELETE_ATTEMPTS:
                self._sleep(self.poll_initial * 2 ** (attempt - 1))
        command = self.delete_command(name)
        # one argument each: the log's cap on an argument's length must not cut the command
        log.warning(
            "task run %s on registry %s could not be deleted (%s); its registry credentials "
            "and secret values may remain in it: delete it with '%s'",
            name,
            self.registry,
            why,
            command,
        )
        return (
            f"task run {name} on registry {self.registry} could not be deleted ({why}); its "
            f"registry credentials and secret values may remain in it: delete it with '{command}'"
        )

    # -- scheduling --------------------------------------------------------------------------

    def _upload(self, archive: bytes) -> str:
        source = self._client.registries.get_build_source_upload_url(
            self.resource_group, self.registry
        )
        if not source.upload_url or not source.relative_path:
            raise ValidatorError(
                f"registry {self.registry} gave no source upload location; retry later"
            )
        response = self._send_blob(
            "uploading the validation folder",
            HttpRequest(
                "PUT",
                source.upload_url,
                headers={
                    "x-ms-blob-type": "BlockBlob",
                    "x-ms-version": _BLOB_API_VERSION,
                    "Content-Type": "application/gzip",
                },
                content=archive,
            ),
        )
        if response.status_code not in (200, 201):
            raise ValidatorError(
                f"uploading the validation folder for registry {self.registry} failed with "
                f"HTTP {response.status_code} ({response.headers.get('x-ms-error-code') or 'no code'}); "
                "the upload URL may have expired or the storage may be unreachable: retry"
            )
        return source.relative_path

    # -- following a run ---------------------------------------------------------------------

    def _follow(
        self,
        run_id: str,
        run: Run,
        request: ValidationRequest,
        mask: Masker,
        *,
        log_link: str | None = None,
    ) -> ValidationResult:
        """Poll ``run`` (as last seen) until it ends or our deadline passes; judge it.

        The validation timeout counts from when the run was first seen past ``Queued``: a run
        waiting for an agent has not used any of it. The wait in the queue is bounded on its
        own, by ``max_queue_wait`` from when following began.
        """
        delay = self.poll_initial
        status = _status(run)
        began = self._clock()
        queued_until = began + self.max_queue_wait
        deadline = None if status == QUEUED else began + self._allowance(request)
        while status not in TERMINAL_STATUSES:
            now = self._clock()
            if deadline is None:
                if now >= queued_until:
                    return self._queued_too_long(run_id, mask, log_link)
                limit = queued_until
            else:
                if now >= deadline:
                    return self._overdue(run_id, request, mask, log_link)
                limit = deadline
            self._sleep(min(delay, limit - now))
            delay = min(delay * 2, self.poll_max)
            try:
                run = self._client.runs.get(self.resource_group, self.registry, run_id)
            except ResourceNotFoundError:
                raise ValidatorError(
                    f"run {run_id} disappeared from registry {self.registry} while it was "
                    "followed; gate the image again"
                ) from None
            except ClientAuthenticationError:
                raise
            except HttpResponseError as exc:
                if exc.status_code in (401, 403):
                    raise
                # The run goes on in ACR whatever ARM answers us now: keep polling until the
                # deadline (the SDK has already retried this request).
                log.warning("polling run %s failed (%s); retrying", run_id, _arm_detail(exc))
                continue
            except AzureError as exc:
                log.warning("polling run %s failed (%s); retrying", run_id, _arm_detail(exc))
                continue
            status = _status(run)
            if deadline is None and status != QUEUED:
                deadline = self._clock() + self._allowance(request)
                log.info(
                    "run %s started after %.0f s in ACR's queue", run_id, self._clock() - began
                )
        text, fetched = self._fetch_log(run_id, log_link)
        text = mask(text)
        outcome, reason = judge(
            run_id, status, run, text, fetched, timeout_seconds=request.timeout_seconds
        )
        return ValidationResult(
            outcome=outcome,
            run_id=run_id,
            reason=mask(reason),
            log=text,
            log_location=self.log_location(run_id),
        )

    def _allowance(self, request: ValidationRequest) -> float:
        """Seconds a started run may take before it is cancelled: the timeout and the margin."""
        return request.timeout_seconds + self.deadline_margin

    def _cancel(self, run_id: str) -> str:
        """Cancel ``run_id``; what became of it, for the reason."""
        try:
            self._client.runs.cancel(self.resource_group, self.registry, run_id)
        except AzureError as exc:
            return f"cancelling it failed ({_arm_detail(exc)})"
        return "it was cancelled"

    def _queued_too_long(self, run_id: str, mask: Masker, log_link: str | None) -> ValidationResult:
        return self._cancelled(
            run_id,
            mask,
            log_link,
            lambda canceled: (
                f"run {run_id} waited in ACR's queue on registry {self.registry} for more than "
                f"{self.max_queue_wait:g} s without starting; {canceled}. The registry runs as "
                "many runs at once as ACR lets it: gate the image again later ('gate run "
                "--force'); if this recurs, spread the rules' validations over time or over "
                "another runner registry"
            ),
        )

    def _overdue(
        self, run_id: str, request: ValidationRequest, mask: Masker, log_link: str | None
    ) -> ValidationResult:
        return self._cancelled(
            run_id,
            mask,
            log_link,
            lambda canceled: (
                f"run {run_id} did not finish within the validation timeout of "
                f"{request.timeout_seconds:g} s (+{self.deadline_margin:g} s margin) after it "
                f"started; {canceled}; raise the rule's validation timeout_seconds, or make the "
                "steps faster"
            ),
        )

    def _cancelled(
        self, run_id: str, mask: Masker, log_link: str | None, why: Callable[[str], str]
    ) -> ValidationResult:
        """Cancel a run the gate stops waiting for: FAILED, with ``why(what the cancel did)``
        and the log so far."""
        canceled = self._cancel(run_id)
        text, _ = self._fetch_log(run_id, log_link)
        reason = why(canceled)
        log.warning("%s", reason)
        return ValidationResult(
            outcome=Outcome.FAILED,
            run_id=run_id,
            reason=mask(reason),
            log=mask(text),
            log_location=self.log_location(run_id),
        )

    def _fetch_log(self, run_id: str, log_link: str | None) -> tuple[str, bool]:
        """The run's log text and whether it could be read (a missing log is not fatal)."""
        try:
            link = log_link or self._log_link(run_id)
            return self._read_blob(link), True
        except (AzureError, ValidatorError) as exc:
            detail = _arm_detail(exc) if isinstance(exc, AzureError) else exc.message
            log.warning("could not read the log of run %s: %s", run_id, redact_urls(detail))
            return "", False

    def _log_link(self, run_id: str) -> str:
        result = self._client.runs.get_log_sas_url(self.resource_group, self.registry, run_id)
        if not result.log_link:
            raise ValidatorError(f"registry {self.registry} gave no log link for run {run_id}")
        return result.log_link

    def _read_blob(self, url: str) -> str:
        response = self._send_blob(
            "reading a run log",
            HttpRequest("GET", url, headers={"x-ms-version": _BLOB_API_VERSION}),
        )
        if response.status_code == 404:
            return ""  # the run has not written its log yet
        if response.status_code != 200:
            raise ValidatorError(
                f"reading a run log failed with HTTP {response.status_code} "
                f"({response.headers.get('x-ms-error-code') or 'no code'})"
            )
        return response.read().decode("utf-8", "replace")

    def _send_blob(self, what: str, request: HttpRequest) -> HttpResponse:
        """Send a request to a SAS URL; errors say what failed, never the URL's token."""
        try:
            return self._blobs.send_request(request)
        except AzureError as exc:
            # requests puts the whole URL, SAS token included, into its messages.
            raise ValidatorError(
                f"{what} failed: {type(exc).__name__}: {redact_urls(str(exc.message))}; check "
                "that the storage account is reachable, then retry"
            ) from None


__all__ = [
    "DELETE_ATTEMPTS",
    "ENGINE_ERROR_EXIT",
    "MAX_EARLIER_ATTEMPTS",
    "MAX_QUEUE_WAIT",
    "MAX_RUN_TIMEOUT",
    "MIN_RUN_TIMEOUT",
    "TAR_MTIME",
    "TASK_RUN_NAME",
    "TERMINAL_STATUSES",
    "AcrTaskRunValidator",
    "StepFailure",
    "pack_folder",
    "parse_step_failure",
    "redact_urls",
    "task_run_name",
]
