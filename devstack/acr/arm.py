"""ARM routes of the emulator: ``registries/importImage`` and its async operation.

``POST …/registries/{name}/importImage?api-version=2025-11-01`` (the only version
azure-mgmt-containerregistry 15.0.0 sends) checks ``ImportImageParameters`` against the REST
specification's shape, answers ``202`` with ``Azure-AsyncOperation`` (…/operationStatuses/{id})
and ``Location`` (…/operationResults/{id}) plus ``Retry-After``, and copies in a background
thread with the emulator's own registry client (:mod:`devstack.acr.oci`), from the source's backing
registry to the target's, by digest when ``sourceImage`` is ``repo@sha256:…``.

The SDK's ``ARMPolling`` then polls ``Azure-AsyncOperation`` (``{"status": "InProgress" |
"Succeeded" | "Failed", "error": {...}}``, ``Retry-After`` while in progress) and, because the
operation is a POST with a ``Location``, makes one final GET of ``Location`` (204 when done). One
import therefore costs 1 POST + N status polls + 1 final GET.

Import semantics (``ImportMode`` documentation in the specification):

* ``NoForce`` (also the default when ``mode`` is absent): if any target tag exists, the operation
  fails before anything is copied, with the message ACR gives ("Tag repo:tag already exists in
  target registry." — seen in azure-cli's issue tracker; the error *code* is not published, the
  emulator uses ``Conflict``).
* ``Force``: existing tags are moved, except tags whose ``writeEnabled`` is false (locked through
  the data plane): the operation fails and nothing is written (code ``TagLocked``, not confirmed).
* fault ``import_fails_midway``: the content is copied, then the operation fails; no tag written.

Events: an import records no push and, by default, fires no base-image trigger: whether ACR
does either for an import is not documented (Azure/acr issue #459 is an open request for
triggers after ``az acr import``). ``AcrEmulator.import_fires_base_image_triggers = True``
models the other possibility (:mod:`devstack.acr.downstream`).

Not confirmed against the service: the code and HTTP status of a failed operation's final GET
(the emulator answers the operation's error with 409 for conflicts and 400 otherwise), and the
synchronous errors for an unknown source registry (404 ``ResourceNotFound``) or a source naming
both or neither of ``resourceId`` / ``registryUri`` (400 ``InvalidParameter``). The spec
documents only a ``Location`` header on the 202; the ``Azure-AsyncOperation`` header is ARM's
usual practice and what the SDK polls first.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import traceback
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from devstack.acr import downstream
from devstack.acr.core import (
    AcrEmulator,
    EmulatedRegistry,
    Request,
    Response,
    arm_error,
)
from devstack.acr.oci import Distribution, Endpoint, RegistryFailure
from devstack.acr.schema import IMPORT_IMAGE_PARAMETERS, check_body

IMPORT_API_VERSIONS = frozenset({"2025-11-01"})
"""api-versions of ``importImage`` the emulator accepts: what the pinned SDK sends."""

REGISTRY_PATH = (
    r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
    r"/providers/Microsoft\.ContainerRegistry/registries/(?P<name>[^/]+)"
)
_SOURCE_IMAGE = re.compile(
    r"(?P<repo>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[a-f0-9]{64}))?"
)
_TARGET_TAG = re.compile(
    r"(?P<repo>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
)


def _loopback(host: str) -> bool:
    """Whether ``host`` (``name[:port]``) is this machine, which serves plain HTTP here."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Operation:
    """One asynchronous ARM operation."""

    id: str
    kind: str
    status: str = "InProgress"
    start_time: str = field(default_factory=_now)
    end_time: str | None = None
    error: dict[str, str] | None = None
    http_status: int = 200
    done: threading.Event = field(default_factory=threading.Event)

    def finish(self, error: tuple[int, str, str] | None = None) -> None:
        """End the operation: Succeeded, or Failed with (http status, code, message)."""
        if error is None:
            self.status = "Succeeded"
        else:
            self.status = "Failed"
            self.http_status, code, message = error
            self.error = {"code": code, "message": message}
        self.end_time = _now()
        self.done.set()

    def body(self, path: str) -> dict[str, Any]:
        """The ``Azure-AsyncOperation`` body."""
        body: dict[str, Any] = {
            "id": path,
            "name": self.id,
            "status": self.status,
            "startTime": self.start_time,
        }
        if self.end_time:
            body["endTime"] = self.end_time
        if self.error:
            body["error"] = self.error
        return body


@dataclass(frozen=True)
class ImportPlan:
    """A checked import request."""

    target: EmulatedRegistry
    source: Endpoint
    repository: str
    tag: str | None
    digest: str | None
    target_tags: tuple[tuple[str, str], ...]
    untagged: tuple[str, ...]
    force: bool


class ImportFailed(Exception):
    """The import operation ends Failed with this (http status, code, message)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def install(emulator: AcrEmulator) -> None:
    """Register the import and async-operation routes on ``emulator.arm``."""
    operations: dict[str, Operation] = emulator.state.setdefault("operations", {})
    router = emulator.arm
    retry_after = str(emulator.lro_retry_after)

    @router.route(
        "POST",
        REGISTRY_PATH + r"/importImage",
        name="importImage",
        api_versions=IMPORT_API_VERSIONS,
    )
    def import_image(req: Request, m: re.Match[str]) -> Response:
        target = emulator.find_registry(m["sub"], m["rg"], m["name"])
        if target is None:
            return _not_found(m["rg"], m["name"])
        body, refused = check_body(req, IMPORT_IMAGE_PARAMETERS)
        if refused is not None:
            return refused
        plan_or_error = _plan(emulator, target, body)
        if isinstance(plan_or_error, Response):
            return plan_or_error
        # Accepted bodies, for tests that check what the client asked for (they hold secrets:
        # never print them).
        emulator.state.setdefault("import_requests", []).append(body)
        operation = Operation(id=f"registries-{uuid.uuid4()}", kind="import")
        operations[operation.id] = operation
        threading.Thread(
            target=_run_import,
            args=(emulator, plan_or_error, operation),
            name=f"import-{operation.id}",
            daemon=True,
        ).start()
        version = req.api_version or ""
        return Response(
            202,
            None,
            {
                "Azure-AsyncOperation": emulator.operation_url(
                    "operationStatuses", operation.id, version
                ),
                "Location": emulator.operation_url("operationResults", operation.id, version),
                "Retry-After": retry_after,
            },
        )

    location_path = (
        r"/subscriptions/(?P<sub>[^/]+)/providers/Microsoft\.ContainerRegistry"
        r"/locations/(?P<loc>[^/]+)/{kind}/(?P<id>[^/]+)"
    )

    def find(m: re.Match[str]) -> Operation | None:
        if m["sub"].lower() != emulator.subscription_id.lower():
            return None
        return operations.get(m["id"])

    @router.route(
        "GET",
        location_path.format(kind="operationStatuses"),
        name="operationStatus",
        api_versions=IMPORT_API_VERSIONS,
    )
    def operation_status(req: Request, m: re.Match[str]) -> Response:
        operation = find(m)
        if operation is None:
            return arm_error(
                404, "OperationNotFound", f"The operation '{m['id']}' could not be found."
            )
        headers = {"Retry-After": retry_after} if operation.status == "InProgress" else {}
        return Response(200, operation.body(req.path), headers)

    @router.route(
        "GET",
        location_path.format(kind="operationResults"),
        name="operationResult",
        api_versions=IMPORT_API_VERSIONS,
    )
    def operation_result(req: Request, m: re.Match[str]) -> Response:
        operation = find(m)
        if operation is None:
            return arm_error(
                404, "OperationNotFound", f"The operation '{m['id']}' could not be found."
            )
        if operation.status == "InProgress":
            url = emulator.operation_url("operationResults", operation.id, req.api_version or "")
            return Response(202, None, {"Location": url, "Retry-After": retry_after})
        if operation.error is not None:
            return arm_error(
                operation.http_status, operation.error["code"], operation.error["message"]
            )
        return Response(204)


def _not_found(resource_group: str, name: str) -> Response:
    return arm_error(
        404,
        "ResourceNotFound",
        f"The Resource 'Microsoft.ContainerRegistry/registries/{name}' under resource group "
        f"'{resource_group}' was not found. For more details please go to "
        "https://aka.ms/ARMResourceNotFoundFix",
    )


def _invalid(message: str) -> Response:
    return arm_error(400, "InvalidParameter", message)


def _plan(
    emulator: AcrEmulator, target: EmulatedRegistry, body: dict[str, Any]
) -> ImportPlan | Response:
    source = body["source"]
    resource_id, registry_uri = source.get("resourceId"), source.get("registryUri")
    if bool(resource_id) == bool(registry_uri):
        return _invalid(
            "Exactly one of 'source.resourceId' (an Azure container registry) or "
            "'source.registryUri' (any other registry) must be specified."
        )
    image = _SOURCE_IMAGE.fullmatch(source["sourceImage"])
    if image is None:
        return _invalid(
            f"The source image '{source['sourceImage']}' is invalid: give repository[:tag] or "
            "repository@sha256:digest, without the registry."
        )
    if resource_id:
        found = emulator.registry_by_id(resource_id)
        if found is None:
            parts = resource_id.rstrip("/").split("/")
            return _not_found(parts[4] if len(parts) > 4 else "?", parts[-1])
        endpoint = Endpoint(found.backing.host)
    else:
        uri = str(registry_uri).removeprefix("https://").removeprefix("http://").rstrip("/")
        emulated = emulator.registry_by_login_server(uri)
        credentials = source.get("credentials") or {}
        if emulated is not None:
            endpoint = Endpoint(emulated.backing.host)
        else:
            endpoint = Endpoint(
                uri,
                insecure=_loopback(uri),
                username=credentials.get("username"),
                password=credentials.get("password"),
            )
    targets: list[tuple[str, str]] = []
    for text in body.get("targetTags") or []:
        parsed = _TARGET_TAG.fullmatch(text)
        if parsed is None:
            return _invalid(f"The target tag '{text}' is invalid: give repository[:tag].")
        targets.append((parsed["repo"], parsed["tag"] or image["tag"] or "latest"))
    untagged = tuple(body.get("untaggedTargetRepositories") or [])
    for repo in untagged:
        if _TARGET_TAG.fullmatch(repo) is None or ":" in repo:
            return _invalid(f"The untagged target repository '{repo}' is invalid.")
    if not targets and not untagged:
        if image["digest"] and not image["tag"]:
            untagged = (image["repo"],)
        else:
            targets.append((image["repo"], image["tag"] or "latest"))
    mode = str(body.get("mode") or "NoForce").lower()
    return ImportPlan(
        target=target,
        source=endpoint,
        repository=image["repo"],
        tag=image["tag"],
        digest=image["digest"],
        target_tags=tuple(targets),
        untagged=untagged,
        force=mode == "force",
    )


def _run_import(emulator: AcrEmulator, plan: ImportPlan, operation: Operation) -> None:
    try:
        _copy(emulator, plan)
    except ImportFailed as failed:
        operation.finish((failed.status, failed.code, failed.message))
    except Exception as exc:  # the operation must end whatever happens
        traceback.print_exc()
        operation.finish((500, "InternalServerError", f"The import failed: {exc}"))
    else:
        operation.finish()


def _by_repository(tags: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for repo, tag in tags:
        grouped.setdefault(repo, []).append(tag)
    return grouped


def _copy(emulator: AcrEmulator, plan: ImportPlan) -> None:
    target = plan.target
    dest = Endpoint(target.backing.host)
    source_label = f"{plan.repository}{':' + plan.tag if plan.tag else ''}{'@' + plan.digest if plan.digest else ''}"
    with Distribution(timeout=60.0) as registry:
        try:
            digest = registry.resolve(
                plan.source, plan.repository, plan.digest or plan.tag or "latest"
            )
        except RegistryFailure as exc:
            raise ImportFailed(
                400, "SourceRegistryError", f"Could not read the source image: {exc.message}"
            ) from None
        if digest is None:
            raise ImportFailed(
                404, "NotFound", f"Image '{source_label}' was not found in the source registry."
            )
        # The target's tags are checked and written under the registry's lock: two imports
        # into one registry cannot both see a tag free and both write it.
        with target.lock:
            previous: dict[tuple[str, str], str | None] = {}
            for repo, tag in plan.target_tags:
                current = registry.resolve(dest, repo, tag)
                previous[(repo, tag)] = current
                if current is None:
                    continue
                if not plan.force:
                    raise ImportFailed(
                        409,
                        "Conflict",
                        f"Tag {repo}:{tag} already exists in target registry.",
                    )
                if not target.tag(repo, tag).write_enabled:
                    raise ImportFailed(
                        409,
                        "TagLocked",
                        f"Tag {repo}:{tag} is locked (writeEnabled: false) and cannot be "
                        "overwritten.",
                    )
            midway = emulator.faults.take("import_fails_midway", False)
            grouped = _by_repository(plan.target_tags)
            repositories = list(dict.fromkeys([*grouped, *plan.untagged]))
            for repo in repositories:
                tags = () if midway else tuple(grouped.get(repo, ()))
                try:
                    registry.copy(plan.source, plan.repository, digest, dest, repo, tags)
                except RegistryFailure as exc:
                    raise ImportFailed(
                        500, "InternalServerError", f"Copying {source_label} failed: {exc.message}"
                    ) from None
                if midway:
                    raise ImportFailed(
                        500,
                        "InternalServerError",
                        f"The import of {source_label} failed after copying content: an "
                        "internal error occurred (injected fault import_fails_midway).",
                    )
                for tag in tags:
                    state = target.tag(repo, tag)
                    state.updated = _now()
                    # no push event; base-image triggers only if the emulator is told that
                    # imports fire them (undocumented: see devstack.acr.downstream)
                    downstream.tag_written(
                        emulator, target, repo, tag, digest, previous.get((repo, tag)), via="import"
                    )
