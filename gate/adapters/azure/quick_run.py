"""The ACR quick-run validator: a rule's task file runs as an ACR quick run in Azure.

What ``az acr run --file acr-task.yaml --set IMAGE=... <folder>`` does, with the
``azure-mgmt-containerregistrytasks`` client (api-version ``2025-03-01-preview``):

1. the validation folder is packed into a deterministic ``tar.gz`` (sorted entries, fixed
   mtimes, no owner names, so the same folder always gives the same bytes);
2. ``registries.get_build_source_upload_url`` gives a write SAS URL and a ``relativePath``; the
   archive is PUT there as a block blob (the SAS URL is a credential: it is never logged);
3. ``registries.schedule_run`` with an ``EncodedTaskRunRequest``: the task file base64-encoded,
   the values (``IMAGE`` = the digest-pinned candidate, then the request's values, secret ones
   flagged ``isSecret``), the platform, the run timeout, the uploaded ``relativePath`` as the
   source location, and Key Vault references (``Vaultsecret``) for the custom registries'
   credentials, read by the registry's managed identity. It answers a ``Run`` (not an LRO);
4. ``on_started(run_id)``, then ``runs.get`` with exponential backoff (``poll_initial``
   doubling up to ``poll_max``) until the run ends. Past our own deadline (the request's
   timeout plus ``deadline_margin``, which covers time queued for an agent) the run is
   cancelled and the validation FAILS; ACR's own run timeout normally ends it first;
5. ``runs.get_log_sas_url`` and a GET of that blob: the log, secrets masked, is returned;
   ``log_location`` is ``acr://{registry}/runs/{run_id}``, never the SAS URL.

ARM calls per validation: upload URL 1, schedule 1, one ``runs.get`` per poll, log URL 1 (the
blob PUT and GET go to Storage, not ARM). A run of ``T`` seconds takes about ``log2(T)`` polls
while the interval grows, then one per ``poll_max``.

Outcomes: ``Succeeded`` is PASSED. ``Failed`` with a failing step in the log is REJECTED, the
reason naming the step and its last output lines, parsed from ACR's log lines
(``Container failed during run: STEP. No retries remaining.``, ``failed to run step ID: STEP:
exit status N``) — except exit status 125 (the container engine itself failed, as the local
validator treats it). ``Failed`` with no failing step (a registry login or source download
that failed before any step ran) is FAILED: it says nothing about the image, and a REJECTED
record would block the digest for good. ``Canceled``, ``Error`` and ``Timeout`` are FAILED.

Resuming (:class:`gate.ports.Resume`), because ACR runs outlive the worker that started them:

* with a ``run_id``: that run is followed (nothing is uploaded or scheduled); if ACR no longer
  knows it (404), a new run is scheduled;
* without one (the worker died between ``scheduleRun`` and recording the ID), the orphan has
  to be found. ACR keeps no client metadata on a run: ``runs.get`` returns neither the values,
  nor the source location, nor the timeout of the request; what it does return is the run
  type, create time, platform and the custom registries logged into. So candidates are the
  ``QuickRun`` runs of the registry created since ``resume.since`` (minus
  ``CLOCK_SKEW_SECONDS``), on our platform, with no task, logged into no registry we did not
  configure (``$filter=RunType eq 'QuickRun' and CreateTime ge …``, ``$top``). A candidate is
  adopted only on positive evidence that it validates *our* image: its log contains the
  candidate's digest (``sha256:…``), which the step that runs the candidate prints when the
  engine pulls it (``Unable to find image '…@sha256:…' locally``). Candidates are examined
  oldest first; one still queued or running without the digest in its log yet is looked at
  again (statuses refreshed with one list call per round, log links fetched once per
  candidate) until it shows the digest or ends, within the request's timeout. When no run can
  be identified a new run is scheduled: a second run costs agent minutes, adopting a stranger's
  run could promote an image that was never validated.

  Where this is weak: a task file that never makes the engine print the candidate's digest
  (it validates the image only through a script, say) makes orphans unrecognisable, so they
  are left to run and a new run is scheduled; two validations of the *same digest* by
  different rules (different task files) in the same window cannot be told apart, and the
  older one is adopted; a candidate that is slow to reach its first step holds up the lookup;
  the ``CreateTime`` literal (``2025-01-31T12:00:00Z``, OData v4 style) is not confirmed
  against the service.

Secrets: values named in ``request.secret_values`` are sent with ``isSecret`` (ACR keeps them
out of its own displays), and replaced by ``***`` in the returned log, reason and every error
message of this module.
"""

from __future__ import annotations

import base64
import enum
import gzip
import io
import itertools
import logging
import math
import re
import stat
import tarfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from azure.core import PipelineClient
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
)
from azure.core.pipeline.policies import HeadersPolicy, RetryPolicy, UserAgentPolicy
from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest, HttpResponse
from azure.mgmt.containerregistrytasks import ContainerRegistryTasksMgmtClient
from azure.mgmt.containerregistrytasks.models import (
    Credentials,
    CustomRegistryCredentials,
    EncodedTaskRunRequest,
    PlatformProperties,
    Run,
    SecretObject,
    SetValue,
)

from gate.errors import ConfigError, ValidatorError
from gate.model import Outcome, ValidationResult
from gate.ports import Resume, ValidationRequest

log = logging.getLogger(__name__)

MASK = "***"

TERMINAL_STATUSES = frozenset({"Succeeded", "Failed", "Canceled", "Error", "Timeout"})
"""Run statuses after which nothing more happens (``Queued``, ``Started``, ``Running`` go on)."""

MIN_RUN_TIMEOUT = 300
MAX_RUN_TIMEOUT = 28800
"""The run timeout bounds of ``EncodedTaskRunRequest.timeout`` in the REST specification."""

CLOCK_SKEW_SECONDS = 300.0
"""How much earlier than ``Resume.since`` an orphan's ``createTime`` (ACR's clock) may be."""

MAX_ORPHAN_CANDIDATES = 20
"""At most this many runs are examined when looking for an orphan (``$top``)."""

ENGINE_ERROR_EXIT = 125
"""The exit status docker uses when it, not the container, failed (pull errors and the like)."""

TAR_MTIME = 0
"""Every entry of the source archive carries this mtime, so equal folders give equal bytes."""

_BLOB_API_VERSION = "2021-08-06"
_TRANSPORT_KEYS = ("connection_verify", "connection_cert", "connection_timeout", "read_timeout")
_RETRY_KEYS = ("retry_total", "retry_backoff_factor", "retry_backoff_max", "retry_mode")
_REASON_LINES = 3
_REASON_CHARS = 400
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
_ACB_LINE = re.compile(r"^\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} ")
_STEP_FAILED = re.compile(r"^failed to run step ID: (?P<step>.+?): (?P<error>.+)$", re.M)
_EXIT_STATUS = re.compile(r"^exit status (?P<code>-?\d+)$")
_URL_QUERY = re.compile(r"(https?://[^\s?'\"]+)\?[^\s'\"]*")
_RUN_END = re.compile(
    r"^Run ID: \S+ (?:was successful|failed) after \S+?(?:\. Error: (?P<error>.*))?$", re.M
)


def pack_folder(folder: Path) -> bytes:
    """The folder as a deterministic ``tar.gz``: what ACR unpacks into ``/workspace``.

    Entries are sorted by path; mtimes are ``TAR_MTIME``; owners are 0 without names; modes
    are 0755 for folders and executables, 0644 for other files (only the executable bit means
    anything to a run). Symbolic links are kept as links; sockets, fifos and devices are left
    out. The gzip header carries no name and a zero mtime.
    """
    root = Path(folder)
    raw = io.BytesIO()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(root).as_posix())
            if not (info.isfile() or info.isdir() or info.issym()):
                continue
            info.mtime = TAR_MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            executable = info.isdir() or bool(info.mode & stat.S_IXUSR)
            info.mode = 0o755 if executable else 0o644
            if info.isfile():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    return raw.getvalue()


class _Masker:
    """Replaces secret values by ``***``, longest first (a secret inside another goes too)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text


@dataclass(frozen=True)
class StepFailure:
    """The step a failed ACR run stopped at, as its log tells: ``error`` is ACR's words
    (``exit status 1``, ``context deadline exceeded``), ``tail`` the step's last output lines."""

    step: str
    error: str
    tail: str

    @property
    def exit_code(self) -> int | None:
        """The step's exit status, when the error is one."""
        match = _EXIT_STATUS.match(self.error.strip())
        return int(match["code"]) if match else None

    def describe(self) -> str:
        """``step 'X' exited with code N: <last lines>`` (the local validator's wording)."""
        code = self.exit_code
        what = (
            f"step '{self.step}' exited with code {code}"
            if code is not None
            else f"step '{self.step}' failed: {self.error.strip()}"
        )
        return f"{what}: {self.tail}" if self.tail else what


def parse_step_failure(log_text: str) -> StepFailure | None:
    """The failing step of an ACR run log, or None if no step failed in it.

    ACR's runner logs ``failed to run step ID: STEP: ERROR`` when a step fails (after
    ``Container failed during run: STEP. No retries remaining.`` for a container that exited
    non-zero). The tail is the step's own output: the non-blank lines between
    ``Launching container with name: STEP`` and the failure, without the runner's timestamped
    lines, the last few joined by `` / ``.
    """
    text = _ANSI.sub("", log_text)
    failures = list(_STEP_FAILED.finditer(text))
    if not failures:
        return None
    failure = failures[-1]
    step, error = failure["step"].strip(), failure["error"].strip()
    lines = text[: failure.start()].splitlines()
    end = len(lines)
    for index in range(len(lines) - 1, -1, -1):
        if f"Container failed during run: {step}." in lines[index]:
            end = index
            break
    start = 0
    for index in range(end - 1, -1, -1):
        if f"Launching container with name: {step}" in lines[index]:
            start = index + 1
            break
    output = [
        line.strip() for line in lines[start:end] if line.strip() and not _ACB_LINE.match(line)
    ]
    tail = " / ".join(output[-_REASON_LINES:])
    if len(tail) > _REASON_CHARS:
        tail = "..." + tail[-_REASON_CHARS:]
    return StepFailure(step=step, error=error, tail=tail)


def _run_error(log_text: str) -> str:
    """The ``Error: ...`` of ACR's closing ``Run ID: X failed after Ns. Error: ...`` line."""
    found = [m["error"] for m in _RUN_END.finditer(log_text) if m["error"]]
    return found[-1].strip() if found else ""


def redact_urls(text: str) -> str:
    """``text`` with the query of every URL cut (a SAS token is a credential)."""
    return _URL_QUERY.sub(r"\1?<redacted>", text)


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


class AcrQuickRunValidator:
    """Runs a rule's ACR task file as an ACR quick run; see the module documentation.

    ``credential`` is any ``TokenCredential`` (``DefaultAzureCredential`` in production);
    ``registry`` (in ``resource_group`` of ``subscription_id``) is the ACR that runs the task;
    ``custom_registries`` maps registry login servers the task pulls from to Key Vault secret
    URIs of their (username, password), read by the registry's ``identity`` (``[system]`` for
    its system-assigned identity, else a user-assigned identity's client ID), or to None for an
    ACR that identity may pull from itself. ``client_kwargs``
    go to the SDK client (``connection_verify``, ``retry_total``, ``credential_scopes``…);
    the transport and retry settings among them apply to the blob upload and download too.
    ``sleep`` and ``clock`` are injectable for tests.
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
        identity: str = "[system]",
        os: str = "Linux",
        architecture: str = "amd64",
        poll_initial: float = 2.0,
        poll_max: float = 30.0,
        deadline_margin: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        client_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if poll_initial <= 0 or poll_max < poll_initial:
            raise ConfigError(
                f"quick-run polling interval {poll_initial:g}..{poll_max:g} s is invalid; use "
                "0 < poll_initial <= poll_max"
            )
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.registry = registry
        self.custom_registries = dict(custom_registries or {})
        self.identity = identity
        self.os = os
        self.architecture = architecture
        self.poll_initial = poll_initial
        self.poll_max = poll_max
        self.deadline_margin = deadline_margin
        self._sleep = sleep
        self._clock = clock
        kwargs = dict(client_kwargs or {})
        self._client = ContainerRegistryTasksMgmtClient(
            credential, subscription_id, base_url=arm_endpoint, **kwargs
        )
        transport = {k: kwargs[k] for k in _TRANSPORT_KEYS if k in kwargs}
        retry = {k: kwargs[k] for k in _RETRY_KEYS if k in kwargs}
        # Blobs go through azure-core as well: the same TLS trust (REQUESTS_CA_BUNDLE or
        # connection_verify) and retries as the ARM client, and no logging policy that could
        # print a SAS URL.
        self._blobs: PipelineClient[HttpRequest, HttpResponse] = PipelineClient(
            "https://storage.invalid",
            policies=[
                HeadersPolicy(),
                UserAgentPolicy(sdk_moniker="gate-quick-run"),
                RetryPolicy(**retry),
            ],
            transport=RequestsTransport(**transport),
        )

    def close(self) -> None:
        """Close the HTTP sessions."""
        self._client.close()
        self._blobs.close()

    def __enter__(self) -> AcrQuickRunValidator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_location(self, run_id: str) -> str:
        """A stable, secret-free reference to a run's log (``az acr task logs`` finds it)."""
        return f"acr://{self.registry}/runs/{run_id}"

    # -- the port ----------------------------------------------------------------------------

    def validate(
        self,
        request: ValidationRequest,
        on_started: Callable[[str], None],
        resume: Resume | None = None,
    ) -> ValidationResult:
        """Run (or follow) the quick run of ``request``; see the module documentation.

        Raises ConfigError (nothing scheduled, ``on_started`` not called) for a missing folder
        or task file or a timeout ACR cannot take, InvalidReference for an image without a
        digest, ValidatorError when ARM or Storage refuse or fail beyond the SDK's retries.
        """
        pinned = request.image.pinned()
        values = {"IMAGE": str(pinned), **request.values}
        mask = _Masker(values[name] for name in request.secret_values if name in values)
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
        run_timeout = self._run_timeout(request.timeout_seconds)
        try:
            return self._validate(request, on_started, resume, values, mask, run_timeout)
        except AzureError as exc:
            raise ValidatorError(
                mask(
                    f"ACR quick run on registry {self.registry} failed: {_arm_detail(exc)}; "
                    "check that the identity may run tasks on the registry (Contributor or a "
                    "role with Microsoft.ContainerRegistry/registries/scheduleRun/action), "
                    "then retry"
                )
            ) from None

    def _validate(
        self,
        request: ValidationRequest,
        on_started: Callable[[str], None],
        resume: Resume | None,
        values: dict[str, str],
        mask: _Masker,
        run_timeout: int,
    ) -> ValidationResult:
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
                return self._follow(resume.run_id, run, request, mask)
        elif resume is not None:
            found = self._find_orphan(request, resume.since)
            if found is not None:
                orphan, orphan_id, link = found
                log.info("adopting run %s, started before the worker stopped", orphan_id)
                on_started(orphan_id)
                return self._follow(orphan_id, orphan, request, mask, log_link=link)

        relative_path = self._upload(pack_folder(Path(request.folder)))
        task = (Path(request.folder) / request.task_file).read_bytes()
        run = self._client.registries.schedule_run(
            self.resource_group,
            self.registry,
            EncodedTaskRunRequest(
                encoded_task_content=base64.b64encode(task).decode("ascii"),
                values_property=[
                    SetValue(name=name, value=value, is_secret=name in request.secret_values)
                    for name, value in values.items()
                ],
                platform=PlatformProperties(os=self.os, architecture=self.architecture),
                timeout=run_timeout,
                source_location=relative_path,
                credentials=self._credentials(),
            ),
        )
        new_id = run.properties.run_id if run.properties else None
        if not new_id:
            raise ValidatorError(
                f"ACR scheduled a quick run on registry {self.registry} but answered no run "
                "ID; look for it with 'az acr task list-runs', then retry"
            )
        log.info("scheduled quick run %s on registry %s", new_id, self.registry)
        on_started(new_id)
        return self._follow(new_id, run, request, mask)

    # -- scheduling --------------------------------------------------------------------------

    def _run_timeout(self, seconds: float) -> int:
        if seconds > MAX_RUN_TIMEOUT:
            raise ConfigError(
                f"validation timeout {seconds:g} s is longer than an ACR run may take "
                f"({MAX_RUN_TIMEOUT} s); lower the rule's validation timeout_seconds"
            )
        # ACR refuses shorter run timeouts; our own deadline still applies the shorter one.
        return max(MIN_RUN_TIMEOUT, math.ceil(seconds))

    def _credentials(self) -> Credentials | None:
        if not self.custom_registries:
            return None
        registries: dict[str, CustomRegistryCredentials] = {}
        for host, secret_uris in sorted(self.custom_registries.items()):
            if secret_uris is None:
                # an ACR: the registry's identity logs in itself (needs AcrPull there)
                registries[host] = CustomRegistryCredentials(identity=self.identity)
                continue
            username_uri, password_uri = secret_uris
            registries[host] = CustomRegistryCredentials(
                user_name=SecretObject(type="Vaultsecret", value=username_uri),
                password=SecretObject(type="Vaultsecret", value=password_uri),
                identity=self.identity,
            )
        return Credentials(custom_registries=registries)

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
        mask: _Masker,
        *,
        log_link: str | None = None,
    ) -> ValidationResult:
        """Poll ``run`` (as last seen) until it ends or our deadline passes; judge it."""
        deadline = self._clock() + request.timeout_seconds + self.deadline_margin
        delay = self.poll_initial
        status = _status(run)
        while status not in TERMINAL_STATUSES:
            now = self._clock()
            if now >= deadline:
                return self._overdue(run_id, request, mask, log_link)
            self._sleep(min(delay, deadline - now))
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
        text, fetched = self._fetch_log(run_id, log_link)
        text = mask(text)
        outcome, reason = self._judge(run_id, status, run, text, fetched, request)
        return ValidationResult(
            outcome=outcome,
            run_id=run_id,
            reason=mask(reason),
            log=text,
            log_location=self.log_location(run_id),
        )

    def _overdue(
        self, run_id: str, request: ValidationRequest, mask: _Masker, log_link: str | None
    ) -> ValidationResult:
        canceled = "it was cancelled"
        try:
            self._client.runs.cancel(self.resource_group, self.registry, run_id)
        except AzureError as exc:
            canceled = f"cancelling it failed ({_arm_detail(exc)})"
        text, _ = self._fetch_log(run_id, log_link)
        reason = (
            f"run {run_id} did not finish within the validation timeout of "
            f"{request.timeout_seconds:g} s (+{self.deadline_margin:g} s for queueing); "
            f"{canceled}; raise the rule's validation timeout_seconds, or make the steps faster"
        )
        log.warning("%s", reason)
        return ValidationResult(
            outcome=Outcome.FAILED,
            run_id=run_id,
            reason=mask(reason),
            log=mask(text),
            log_location=self.log_location(run_id),
        )

    def _judge(
        self,
        run_id: str,
        status: str,
        run: Run,
        text: str,
        fetched: bool,
        request: ValidationRequest,
    ) -> tuple[Outcome, str]:
        run_error = (run.properties.run_error_message if run.properties else None) or ""
        if status == "Succeeded":
            return Outcome.PASSED, f"run {run_id} succeeded"
        if status == "Failed":
            failure = parse_step_failure(text)
            if failure is not None and failure.exit_code != ENGINE_ERROR_EXIT:
                return Outcome.REJECTED, failure.describe()
            if failure is not None:
                return (
                    Outcome.FAILED,
                    f"the container engine could not run step '{failure.step}' "
                    f"({failure.error}): {failure.tail or 'no output'}; check that the step's "
                    "images exist and the registry's identity may pull them, then retry",
                )
            why = (
                _run_error(text)
                or run_error
                or ("its log could not be read" if not fetched else "no step failed in its log")
            )
            return (
                Outcome.FAILED,
                f"run {run_id} failed before any step failed ({why}); check the registry "
                "credentials and the run log (az acr task logs), then retry",
            )
        if status == "Canceled":
            return (
                Outcome.FAILED,
                f"run {run_id} was cancelled before it finished; gate the image again",
            )
        if status == "Timeout":
            return (
                Outcome.FAILED,
                f"run {run_id} passed its ACR run timeout of "
                f"{self._run_timeout(request.timeout_seconds)} s; raise the rule's validation "
                "timeout_seconds, or make the steps faster",
            )
        detail = f": {run_error}" if run_error else ""
        return (
            Outcome.FAILED,
            f"ACR could not carry out run {run_id} (status {status or 'unknown'}){detail}; "
            "retry later",
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

    # -- finding an orphan -------------------------------------------------------------------

    def _find_orphan(
        self, request: ValidationRequest, since: datetime
    ) -> tuple[Run, str, str] | None:
        """(run, run ID, log link) of the run an earlier worker scheduled for ``request``
        and never recorded, or None; see the module documentation."""
        digest = request.image.digest
        if not digest:
            return None
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        window = since.astimezone(UTC) - timedelta(seconds=CLOCK_SKEW_SECONDS)
        candidates = self._candidates(window)
        if not candidates:
            return None
        links: dict[str, str] = {}
        deadline = self._clock() + request.timeout_seconds
        delay = self.poll_initial
        while True:
            undecided: set[str] = set()
            for run, run_id in candidates:
                status = _status(run)
                try:
                    if run_id not in links:
                        links[run_id] = self._log_link(run_id)
                    text = self._read_blob(links[run_id])
                except (AzureError, ValidatorError) as exc:
                    # Unreadable now is not evidence either way: look again next round.
                    log.info(
                        "cannot read the log of candidate run %s yet: %s",
                        run_id,
                        redact_urls(str(exc)),
                    )
                    text = ""
                if digest in text:
                    return run, run_id, links[run_id]
                if status not in TERMINAL_STATUSES:
                    undecided.add(run_id)
            now = self._clock()
            if not undecided or now >= deadline:
                log.info(
                    "no run since %s shows %s in its log; starting a new run",
                    window.isoformat(),
                    digest,
                )
                return None
            self._sleep(min(delay, deadline - now))
            delay = min(delay * 2, self.poll_max)
            candidates = [c for c in self._candidates(window) if c[1] in undecided]

    def _candidates(self, window: datetime) -> list[tuple[Run, str]]:
        """(run, run ID) of the quick runs that could be ours, oldest first."""
        query = f"RunType eq 'QuickRun' and CreateTime ge {window.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        pages = self._client.runs.list(
            self.resource_group, self.registry, filter=query, top=MAX_ORPHAN_CANDIDATES
        )
        wanted_hosts = {h.lower() for h in self.custom_registries}
        found: list[tuple[datetime, str, Run]] = []
        for run in itertools.islice(pages, MAX_ORPHAN_CANDIDATES):
            props = run.properties
            if props is None or not props.run_id or props.create_time is None:
                continue
            created = props.create_time
            if created.tzinfo is None:
                created = created.replace(tzinfo=UTC)
            platform = props.platform
            if (
                _text(props.run_type) != "QuickRun"
                or created < window
                or props.task
                or (platform is not None and _text(platform.os).lower() != self.os.lower())
                or (
                    platform is not None
                    and platform.architecture is not None
                    and _text(platform.architecture).lower() != self.architecture.lower()
                )
                or not {h.lower() for h in props.custom_registries or []} <= wanted_hosts
            ):
                continue
            found.append((created, props.run_id, run))
        found.sort(key=lambda item: (item[0], item[1]))
        return [(run, run_id) for _, run_id, run in found]


__all__ = [
    "AcrQuickRunValidator",
    "StepFailure",
    "pack_folder",
    "parse_step_failure",
    "redact_urls",
]
