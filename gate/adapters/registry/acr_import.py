"""The Azure registry adapter: ACR's import API for copies, its data plane for tags.

Implements :class:`gate.ports.Registry` for a gate whose target is an Azure Container Registry:

* ``copy`` asks ACR to import the source **by digest** (``registries.begin_import_image``, an
  ARM long-running operation): first the immutable (run-ID) tags with ``mode="NoForce"``, then —
  once those tags are locked (``writeEnabled``/``deleteEnabled`` false through the data plane) —
  the stable tags with ``mode="Force"``. Locking before the stable tags move means a failure
  later still leaves the run-ID tag immutable. A ``NoForce`` import that fails because a run-ID
  tag exists is resolved by looking at that tag: at the same digest it is a resumed promotion
  (fine), at another digest it is :class:`~gate.errors.Conflict` and nothing else is written.
* The source is named by ARM id for ACRs of our tenant (``acr_sources``, and the target itself:
  that is how a rollback re-tags), else by ``registry_uri`` with credentials read from
  ``secrets`` (``upstream_credentials``: host → (username secret, password secret)); ACR pulls
  the content itself, nothing flows through the gate.
* ``resolve`` / ``list_tags`` use ``azure-containerregistry`` for ACR login servers (the sources
  and the target) and delegate every other registry to ``oci`` (the OCI adapter).

ARM calls: the adapter makes none of its own beyond the two imports (no registry GET); each
import costs the SDK's POST and its polls of the operation until it ends: the specification's
``Registries_ImportImage`` 202 carries ``Location`` only, and that is the header the SDK's
generated ``_import_image_initial`` reads (azure-mgmt-containerregistry 15.0.0), so
``ARMPolling`` follows ``Location`` (its ``LocationPolling``: every ``Retry-After`` until the
URL stops answering 202). Its ``AzureAsyncOperationPolling`` comes first in its algorithms
(azure-mgmt-core ``ARMPolling``), so a 202 that also carries ``Azure-AsyncOperation``, as the
emulator's does, is polled there instead, then ends with one GET of ``Location``. Throttling and 5xx are retried by
azure-core's ``RetryPolicy`` (which honours ``Retry-After``), bounded here to 3 retries of a
429/5xx answer (``retry_status=3``, ``retry_total=4``) unless ``client_kwargs`` says otherwise.

Errors (never carrying a secret; the upstream password is also scrubbed from service messages)::

    InvalidReference       the source is not pinned by digest
    ConfigError            the target is not this adapter's registry; the target ACR does not exist
    Conflict               a run-ID tag exists at another digest
    ManifestUnknown        the tag or digest is not in the ACR
    AuthenticationError    401/403: the message names the role the identity lacks
    RegistryUnavailable    429/5xx after retries, connection failures
    RegistryError          the import operation failed (the operation's own message)
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, Protocol, TypeVar, Unpack

from azure.containerregistry import ContainerRegistryClient
from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.mgmt.containerregistry import ContainerRegistryManagementClient
from azure.mgmt.containerregistry.models import (
    ImportImageParameters,
    ImportSource,
    ImportSourceCredentials,
)

from gate.domain.ref import ImageRef
from gate.errors import (
    AuthenticationError,
    ConfigError,
    Conflict,
    InvalidReference,
    ManifestUnknown,
    RegistryError,
    RegistryUnavailable,
)
from gate.logsafe import get_logger
from gate.ports import (
    CopyOptions,
    CopyReport,
    ManifestReader,
    Registry,
    Secrets,
    copy_options,
)

__all__ = ["AcrImportRegistry", "UpstreamRegistry"]

log = get_logger(__name__)


class UpstreamRegistry(Registry, ManifestReader, Protocol):
    """What ``oci`` must be: the port for every registry that is not an ACR, and a reader of
    its manifests and small blobs (a rule's ``platforms:`` reads the candidate's index)."""


T = TypeVar("T")

DEFAULT_ARM_ENDPOINT = "https://management.azure.com"
DEFAULT_ACR_AUDIENCE = "https://containerregistry.azure.net"
# The management client's default ``credential_scopes`` (its _configuration.py).
DEFAULT_ARM_SCOPE = "https://management.azure.com/.default"
# Bounded retries (azure-core's default is 10 in all, up to 2 min apart): at most 3 retries of
# a 429/5xx answer, 4 retries in all.
_DEFAULT_CLIENT_KWARGS: dict[str, Any] = {"retry_total": 4, "retry_status": 3}
# Used only when the operation does not send Retry-After (ARM does): the SDK's default is 30 s.
_DEFAULT_POLLING_INTERVAL = 5.0

# the role ACR's import documentation names for both ends of an import from an ACR
# (learn.microsoft.com/azure/container-registry/container-registry-import-images)
_IMPORT_ROLE = (
    "'Container Registry Data Importer and Data Reader' on the target registry and, for an ACR "
    "source, on that registry too (or a role with "
    "'Microsoft.ContainerRegistry/registries/importImage/action' on the target, such as "
    "'Contributor')"
)
_READ_ROLE = "'AcrPull' (or 'Container Registry Repository Reader') on the registry"
_LOCK_ROLE = (
    "a role with 'Microsoft.ContainerRegistry/registries/repositories/metadata/write' on the "
    "registry, e.g. the deployment's 'Gated import tagLock', 'AcrPush' or 'Container Registry "
    "Repository Writer'"
)


class AcrImportRegistry:
    """:class:`gate.ports.Registry` on ACR: import by digest, tags through the data plane.

    ``target_login_server`` is the target ACR as image references name it
    (``myacr.azurecr.io``); ``target_registry`` / ``target_resource_group`` /
    ``subscription_id`` locate it in ARM. ``acr_sources`` maps the login servers of other ACRs
    the identity may import from to their ARM ids. ``client_kwargs`` go to every SDK client
    (retry settings, ``connection_verify``, transport); ``polling_interval`` is the LRO delay
    when the service sends no ``Retry-After``.
    """

    def __init__(
        self,
        *,
        credential: TokenCredential,
        subscription_id: str,
        target_resource_group: str,
        target_registry: str,
        target_login_server: str,
        secrets: Secrets,
        oci: UpstreamRegistry,
        arm_endpoint: str = DEFAULT_ARM_ENDPOINT,
        acr_sources: Mapping[str, str] | None = None,
        upstream_credentials: Mapping[str, tuple[str, str]] | None = None,
        audience: str = DEFAULT_ACR_AUDIENCE,
        polling_interval: float = _DEFAULT_POLLING_INTERVAL,
        client_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self._credential = credential
        self.subscription_id = subscription_id
        self.target_resource_group = target_resource_group
        self.target_registry = target_registry
        self.target_login_server = target_login_server
        self._secrets = secrets
        self._oci = oci
        self._acr_sources = dict(acr_sources or {})
        self._upstream_credentials = dict(upstream_credentials or {})
        self._audience = audience
        self._client_kwargs = {**_DEFAULT_CLIENT_KWARGS, **(client_kwargs or {})}
        self._arm = ContainerRegistryManagementClient(
            credential,
            subscription_id,
            base_url=arm_endpoint,
            polling_interval=polling_interval,
            **self._client_kwargs,
        )
        self._data_planes: dict[str, ContainerRegistryClient] = {}
        self._lock = threading.Lock()

    @property
    def target_resource_id(self) -> str:
        """The target ACR's ARM id."""
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.target_resource_group}"
            f"/providers/Microsoft.ContainerRegistry/registries/{self.target_registry}"
        )

    def close(self) -> None:
        """Close the SDK clients."""
        self._arm.close()
        with self._lock:
            for client in self._data_planes.values():
                client.close()
            self._data_planes.clear()

    # -- the port --------------------------------------------------------------------------

    def resolve(self, ref: ImageRef) -> str:
        """Return the digest ``ref`` points at now (ACR: data plane; others: the OCI adapter)."""
        if not self._is_acr(ref.registry):
            return self._oci.resolve(ref)
        client = self._data_plane(ref.registry)
        doing = f"resolving {ref}"
        if ref.digest is not None:
            props = self._call(
                doing,
                _READ_ROLE,
                lambda: client.get_manifest_properties(ref.repository, ref.digest or ""),
            )
            return str(props.digest)
        tag = ref.tag or "latest"
        tag_props = self._call(
            doing, _READ_ROLE, lambda: client.get_tag_properties(ref.repository, tag)
        )
        return str(tag_props.digest)

    def list_tags(self, repository: ImageRef) -> list[str]:
        """Return every tag of ``repository`` (ACR: data plane; others: the OCI adapter)."""
        if not self._is_acr(repository.registry):
            return self._oci.list_tags(repository)
        client = self._data_plane(repository.registry)
        return self._call(
            f"listing tags of {repository.name}",
            _READ_ROLE,
            lambda: [str(t.name) for t in client.list_tag_properties(repository.repository)],
        )

    def fetch_manifest(self, repository: ImageRef, reference: str) -> tuple[bytes, str] | None:
        """A manifest's JSON and media type, None if there is none (a rule's ``platforms:``
        reads the candidate's index with it).

        ACR: the data plane's ``get_manifest``, which asks for indexes too and checks the
        content against a requested digest (azure-containerregistry 1.2,
        ``_container_registry_client.py``); the bytes returned are its parsed JSON again, as
        the SDK keeps no raw body. Other registries: the OCI adapter, which returns the bytes.
        """
        if not self._is_acr(repository.registry):
            return self._oci.fetch_manifest(repository, reference)
        client = self._data_plane(repository.registry)
        try:
            got = self._call(
                f"reading manifest {repository.name}@{reference}",
                _READ_ROLE,
                lambda: client.get_manifest(repository.repository, reference),
            )
        except ManifestUnknown:
            return None
        return json.dumps(got.manifest).encode(), str(got.media_type).split(";")[0].strip()

    def fetch_blob(self, repository: ImageRef, digest: str, *, limit: int = 4 << 20) -> bytes:
        """A small blob (an image config), checked against ``digest`` (ACR: the data plane's
        ``download_blob``, which checks it; others: the OCI adapter)."""
        if not self._is_acr(repository.registry):
            return self._oci.fetch_blob(repository, digest, limit=limit)
        client = self._data_plane(repository.registry)

        def read() -> bytes:
            data = b"".join(client.download_blob(repository.repository, digest))
            if len(data) > limit:
                raise RegistryError(f"blob {digest} of {repository.name} is over {limit} bytes")
            return data

        return self._call(f"reading blob {digest} of {repository.name}", _READ_ROLE, read)

    def check_push(self, target: ImageRef) -> None:
        """Check what can be checked of an import into ``target`` without importing.

        ARM offers no dry run of an import (``ImportImageParameters`` of
        azure-mgmt-containerregistry has ``source``, ``target_tags``,
        ``untagged_target_repositories`` and ``mode``, nothing that validates only), so
        whether the identity holds the import permission is learnt from the import itself.
        Checked here: ``target`` is this adapter's registry, and the gate's identity gets an
        ARM token (the scope the management client asks for, ``credential_scopes`` of its
        configuration), so an identity that cannot sign in fails before a validation.
        """
        if target.registry != self.target_login_server:
            raise ConfigError(
                f"cannot import into {target.name}: this registry adapter imports into "
                f"{self.target_login_server} only; set the rule's target to that registry"
            )
        scopes = list(self._client_kwargs.get("credential_scopes") or [DEFAULT_ARM_SCOPE])
        self._sign_in(scopes, f"signing in to ARM to import into {target.name}")

    def _sign_in(self, scopes: Sequence[str], doing: str) -> str:
        """An AAD access token of the gate's identity for ``scopes``."""
        try:
            return self._credential.get_token(*scopes).token
        except ClientAuthenticationError as exc:
            raise AuthenticationError(
                f"{doing} failed: no AAD token ({type(exc).__name__}); check the identity "
                "(AZURE_CLIENT_ID) and that it can sign in"
            ) from None
        except AzureError as exc:
            raise RegistryUnavailable(
                f"{doing} failed: the identity endpoint failed ({type(exc).__name__}); retry later"
            ) from None

    def copy(
        self, source: ImageRef, target: ImageRef, **options: Unpack[CopyOptions]
    ) -> CopyReport:
        """:meth:`gate.ports.Registry.copy` by ACR import: the run-ID tags with ``NoForce``,
        then locked, then ``tags`` with ``Force``. ``progress`` is not called: ACR moves the
        bytes, not the gate."""
        immutable_tags, tags, _ = copy_options(options)  # ACR moves the bytes: no progress
        if source.digest is None:
            raise InvalidReference(
                f"cannot import {source}: the source must be pinned by digest; "
                "resolve the tag first and import registry/repository@sha256:..."
            )
        if target.registry != self.target_login_server:
            raise ConfigError(
                f"cannot import into {target.name}: this registry adapter imports into "
                f"{self.target_login_server} only; set the rule's target to that registry"
            )
        digest = source.digest
        repo = target.repository
        import_source, scrub = self._import_source(source)

        if immutable_tags:
            pending = list(immutable_tags)
            if options.get("resumed", False):
                # a resumed promotion: an earlier import may have ended after the gate stopped
                # waiting for it (an error polling the operation). The run-ID tag is this
                # record's alone, so at the digest it is done; one data-plane GET per tag
                # instead of an import that NoForce refuses.
                pending = self._missing_immutable(repo, digest, pending)
            if pending:
                self._import_immutable(import_source, digest, repo, pending, scrub)
            for tag in immutable_tags:  # locked again when resumed: the lock may not have run
                self._lock_tag(repo, tag)
        try:
            if tags:
                self._import(import_source, [f"{repo}:{t}" for t in tags], "Force", scrub)
            if not immutable_tags and not tags:
                self._import(import_source, [], "NoForce", scrub, untagged=[repo])
        except _ImportFailed as failed:
            raise failed.error from None
        return CopyReport(digest=digest, tags=(*immutable_tags, *tags))

    def _lock_tag(self, repo: str, tag: str) -> None:
        """Make a tag immutable: no write (re-tag, overwrite), no delete."""
        client = self._data_plane(self.target_login_server)
        try:
            client.update_tag_properties(repo, tag, can_write=False, can_delete=False)
        except AzureError as exc:
            self._raise(exc, f"locking tag {self.target_login_server}/{repo}:{tag}", _LOCK_ROLE)

    # -- import ----------------------------------------------------------------------------

    def _import_source(self, source: ImageRef) -> tuple[ImportSource, Callable[[str], str]]:
        """The ImportSource for ``source`` and a function that removes its secret from text."""
        image = f"{source.repository}@{source.digest}"
        resource_id = self._acr_sources.get(source.registry)
        if source.registry == self.target_login_server:
            resource_id = self.target_resource_id
        if resource_id is not None:
            return ImportSource(resource_id=resource_id, source_image=image), _no_scrub
        credentials = None
        secret_value = ""
        names = self._upstream_credentials.get(source.registry)
        if names is not None:
            username_secret, password_secret = names
            secret_value = self._secrets.get(password_secret)
            credentials = ImportSourceCredentials(
                username=self._secrets.get(username_secret), password=secret_value
            )

        def scrub(text: str) -> str:
            return text.replace(secret_value, "***") if secret_value else text

        return (
            ImportSource(registry_uri=source.registry, source_image=image, credentials=credentials),
            scrub,
        )

    def _import_immutable(
        self,
        source: ImportSource,
        digest: str,
        repo: str,
        immutable_tags: Sequence[str],
        scrub: Callable[[str], str],
    ) -> None:
        """Import the run-ID tags with NoForce; accept those already at ``digest``."""
        pending = list(immutable_tags)
        while pending:
            try:
                self._import(source, [f"{repo}:{t}" for t in pending], "NoForce", scrub)
                return
            except _ImportFailed as failed:
                # NoForce refuses when a tag exists; which one, and where it points, decides.
                existing = self._existing_tags(repo, pending)
                if not existing:
                    raise failed.error from None
                for tag, current in existing.items():
                    if current != digest:
                        raise Conflict(
                            f"tag '{tag}' of {self.target_login_server}/{repo} already points at "
                            f"{current}, not {digest}; run-ID tags are never moved: use a new "
                            "run ID (or delete the tag on purpose if it is wrong)"
                        ) from None
                log.info(
                    "run-ID tags %s of %s/%s already at %s: resuming",
                    sorted(existing),
                    self.target_login_server,
                    repo,
                    digest,
                )
                pending = [t for t in pending if t not in existing]

    def _missing_immutable(self, repo: str, digest: str, tags: Sequence[str]) -> list[str]:
        """The run-ID tags of ``tags`` not yet at ``digest``; one at another digest is
        :class:`~gate.errors.Conflict` before anything is written."""
        existing = self._existing_tags(repo, tags)
        for tag, current in existing.items():
            if current != digest:
                raise Conflict(
                    f"tag '{tag}' of {self.target_login_server}/{repo} already points at "
                    f"{current}, not {digest}; run-ID tags are never moved: use a new "
                    "run ID (or delete the tag on purpose if it is wrong)"
                )
        return [t for t in tags if t not in existing]

    def _existing_tags(self, repo: str, tags: Sequence[str]) -> dict[str, str]:
        """The tags of ``tags`` that exist in the target, with their digests."""
        client = self._data_plane(self.target_login_server)
        found: dict[str, str] = {}
        for tag in tags:
            try:
                props = client.get_tag_properties(repo, tag)
            except ResourceNotFoundError:
                continue
            except AzureError as exc:
                self._raise(
                    exc, f"checking tag {self.target_login_server}/{repo}:{tag}", _READ_ROLE
                )
            found[tag] = str(props.digest)
        return found

    def _import(
        self,
        source: ImportSource,
        target_tags: list[str],
        mode: str,
        scrub: Callable[[str], str],
        untagged: list[str] | None = None,
    ) -> None:
        """One import operation, to its end; a failed operation raises :class:`_ImportFailed`."""
        where = source.resource_id or source.registry_uri
        doing = (
            f"importing {where}/{source.source_image} into {self.target_login_server} "
            f"as {', '.join(target_tags) or 'untagged'} ({mode})"
        )
        log.info("%s", doing)
        parameters = ImportImageParameters(
            source=source,
            target_tags=target_tags or None,
            untagged_target_repositories=untagged,
            mode=mode,
        )
        try:
            poller = self._arm.registries.begin_import_image(
                self.target_resource_group, self.target_registry, parameters
            )
            poller.result()
        except ResourceNotFoundError as exc:
            raise ConfigError(
                f"{doing} failed: {scrub(_message(exc))}. Check the target registry settings "
                f"(registry '{self.target_registry}' in resource group "
                f"'{self.target_resource_group}' of subscription {self.subscription_id}) and, "
                "for an ACR source, its ARM id in the source registries"
            ) from None
        except HttpResponseError as exc:
            status = exc.status_code or 0
            if (
                isinstance(exc, ClientAuthenticationError)
                or status in (401, 403, 429)
                or status >= 500
            ):
                self._raise(exc, doing, _IMPORT_ROLE, scrub)
            raise _ImportFailed(RegistryError(f"{doing} failed: {scrub(_message(exc))}")) from None
        except AzureError as exc:
            self._raise(exc, doing, _IMPORT_ROLE, scrub)

    # -- helpers ---------------------------------------------------------------------------

    def _is_acr(self, registry: str) -> bool:
        return registry == self.target_login_server or registry in self._acr_sources

    def _data_plane(self, login_server: str) -> ContainerRegistryClient:
        with self._lock:
            client = self._data_planes.get(login_server)
            if client is None:
                client = ContainerRegistryClient(
                    f"https://{login_server}",
                    self._credential,
                    audience=self._audience,
                    **self._client_kwargs,
                )
                self._data_planes[login_server] = client
            return client

    def _call(self, doing: str, role: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except AzureError as exc:
            self._raise(exc, doing, role)

    def _raise(
        self,
        exc: AzureError,
        doing: str,
        role: str,
        scrub: Callable[[str], str] | None = None,
    ) -> NoReturn:
        """Map an SDK error to the gate's error tree."""
        clean = scrub or _no_scrub
        if isinstance(exc, ResourceNotFoundError):
            raise ManifestUnknown(
                f"{doing} failed: not found ({clean(_message(exc))}); check the repository and "
                "tag or digest"
            ) from None
        if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
            raise RegistryUnavailable(
                f"{doing} failed: the service could not be reached ({type(exc).__name__}). "
                "Check the endpoint, DNS, private endpoints and firewall, then retry"
            ) from None
        status = exc.status_code if isinstance(exc, HttpResponseError) else None
        if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
            raise AuthenticationError(
                f"{doing} was refused ({status}): the gate's identity lacks {role}. Grant it, "
                "or check that the credential is the intended identity (AZURE_CLIENT_ID)"
            ) from None
        if status is not None and (status == 429 or status >= 500):
            raise RegistryUnavailable(
                f"{doing} failed: the service answered {status} after retries "
                f"({clean(_message(exc))}); retry later"
            ) from None
        raise RegistryError(f"{doing} failed: {clean(_message(exc))}") from None


class _ImportFailed(Exception):
    """An import operation that ended Failed (or was refused as a request); internal."""

    def __init__(self, error: RegistryError) -> None:
        super().__init__(error.message)
        self.error = error


def _no_scrub(text: str) -> str:
    return text


def _message(exc: AzureError) -> str:
    """The service's own error code and message, else the exception's text."""
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    message = getattr(error, "message", None)
    if code or message:
        return f"{code or 'error'}: {message or ''}".strip()
    return str(exc.message or exc).splitlines()[0]
