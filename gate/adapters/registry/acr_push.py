"""Promotion by push: the gate copies the validated digest into the ACR over its data plane.

Why a second way to promote: the walkthrough's gate ``docker push``-ed into base-artifacts, and
ACR documents that base-image-update triggers, webhooks (``push``) and Event Grid
``ImagePushed`` follow a *push*. Whether an ACR *import* raises any of them is not documented
(Azure/acr issue #459 asks for import to fire base-image triggers and is open). In push mode
the gate makes the same OCI distribution calls ``docker push`` makes (blob uploads, then
``PUT /v2/{repo}/manifests/{tag}``), so whatever ACR does for a push, it does for the gate's.

How it signs in (no secret stored anywhere):

1. an AAD access token of the gate's identity for ``https://containerregistry.azure.net``;
2. ``POST https://{login}/oauth2/exchange`` (form ``grant_type=access_token``, ``service``,
   ``access_token``) → ``{"refresh_token"}``: ACR's documented AAD exchange (Azure/acr
   ``docs/AAD-OAuth.md``; the same request as azure-containerregistry 1.2's
   ``ACRExchangeClient.exchange_aad_token_for_refresh_token``);
3. the refresh token is a password for user ``00000000-0000-0000-0000-000000000000``, exactly
   what ``az acr login --expose-token`` hands to ``docker login`` (learn.microsoft.com,
   container-registry-authentication, "az acr login with --expose-token"). The OCI adapter
   then follows the registry's bearer challenge and fetches access tokens at
   ``/oauth2/token`` with those credentials, as the docker client does with a username and
   password (distribution's token authentication).

A refresh token is fetched per promotion (it lives for hours; one promotion takes minutes).

The guarantees are the import adapter's: the source is pinned by digest and the manifest
bytes are written unchanged (the OCI adapter checks them against the digest), an index is
copied whole; the run-ID tags are written first and never overwritten (:class:`Conflict` if
one exists at another digest, checked before anything is written), then locked
(``update_tag_properties``, azure-containerregistry), then the stable tags are moved.
``resolve`` / ``list_tags`` and the tag lock are the import adapter's (it is a subclass).

Push rights: the identity needs ``AcrPush`` on the target registry, or, on a registry in
"RBAC Registry + ABAC Repository Permissions" mode, ``Container Registry Repository Writer``
with a condition on the gated repositories (docs/deploy.md, "Roles, and why each is needed").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Unpack

import httpx

from gate.adapters.registry.acr_import import AcrImportRegistry
from gate.adapters.registry.oci import HostSettings, OciRegistry
from gate.domain.ref import ImageRef
from gate.errors import (
    AuthenticationError,
    ConfigError,
    InvalidReference,
    RegistryError,
    RegistryUnavailable,
)
from gate.logsafe import get_logger
from gate.ports import CopyOptions, CopyReport, copy_options

__all__ = ["ACR_TOKEN_USER", "AcrPushRegistry"]

log = get_logger(__name__)

ACR_TOKEN_USER = "00000000-0000-0000-0000-000000000000"
"""The user name that goes with an ACR refresh token used as a password."""

_PUSH_ROLE = (
    "'AcrPush' on the registry, or on a registry in ABAC mode 'Container Registry Repository "
    "Writer' for the gated repositories"
)


class AcrPushRegistry(AcrImportRegistry):
    """:class:`gate.ports.Registry` on ACR that promotes by pushing (see the module docs).

    Takes the import adapter's arguments, plus ``upstream_hosts``: how to reach upstream
    registries that are not ACRs of ours (their credentials read from secrets already), and
    ``oci_options`` for the OCI adapter the copies run on (retries, timeout, transport).
    ACRs of ours (the target, and the login servers of ``acr_sources``) are reached with the
    identity's refresh token.
    """

    def __init__(
        self,
        *,
        upstream_hosts: Mapping[str, HostSettings] | None = None,
        oci_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._upstream_hosts = dict(upstream_hosts or {})
        self._oci_options = dict(oci_options or {})

    def copy(
        self, source: ImageRef, target: ImageRef, **options: Unpack[CopyOptions]
    ) -> CopyReport:
        """:meth:`gate.ports.Registry.copy` as a push through the OCI adapter with ACR
        tokens; the run-ID tags are locked before ``tags`` are pushed."""
        immutable_tags, tags, progress = copy_options(options)
        if source.digest is None:
            raise InvalidReference(
                f"cannot push {source}: the source must be pinned by digest; "
                "resolve the tag first and push registry/repository@sha256:..."
            )
        if target.registry != self.target_login_server:
            raise ConfigError(
                f"cannot push into {target.name}: this registry adapter promotes into "
                f"{self.target_login_server} only; set the rule's target to that registry"
            )
        hosts = dict(self._upstream_hosts)
        for login in {self.target_login_server, source.registry}:
            if self._is_acr(login):
                hosts[login] = HostSettings(
                    username=ACR_TOKEN_USER, password=self._refresh_token(login)
                )
        pinned = source.pinned()
        with OciRegistry(hosts, **self._oci_options) as oci:
            try:
                log.info("pushing %s to %s as %s", pinned, target.name, ", ".join(immutable_tags))
                first = oci.copy(pinned, target, immutable_tags=immutable_tags, progress=progress)
                for tag in immutable_tags:
                    self._lock_tag(target.repository, tag)
                if not tags:
                    return first
                log.info("pushing %s to %s as %s", pinned, target.name, ", ".join(tags))
                # everything is there by now: this pass only writes the tags
                second = oci.copy(pinned, target, tags=tags)
            except AuthenticationError as exc:
                if self.target_login_server not in exc.message:
                    raise
                raise AuthenticationError(
                    f"pushing to {self.target_login_server} was refused ({exc.message}); "
                    f"promote: push needs {_PUSH_ROLE}"
                ) from None
        return CopyReport(
            digest=first.digest,
            manifests=first.manifests + second.manifests,
            blobs_copied=first.blobs_copied + second.blobs_copied,
            blobs_skipped=first.blobs_skipped,
            blobs_mounted=first.blobs_mounted + second.blobs_mounted,
            bytes_copied=first.bytes_copied + second.bytes_copied,
            tags=(*first.tags, *second.tags),
        )

    def check_push(self, target: ImageRef) -> None:
        """Sign in as a push does and start (then cancel) a blob upload in ``target``.

        The same refresh-token exchange and ``/oauth2/token`` scope
        (``repository:<repo>:pull,push``) as a promotion, then the OCI adapter's upload check:
        the upload ``POST`` is the first request of every push, so it needs the rights the
        promotion's uploads need. Nothing is written.
        """
        if target.registry != self.target_login_server:
            raise ConfigError(
                f"cannot push into {target.name}: this registry adapter promotes into "
                f"{self.target_login_server} only; set the rule's target to that registry"
            )
        hosts = {
            self.target_login_server: HostSettings(
                username=ACR_TOKEN_USER, password=self._refresh_token(self.target_login_server)
            )
        }
        with OciRegistry(hosts, **self._oci_options) as oci:
            try:
                oci.check_push(target)
            except AuthenticationError as exc:
                raise AuthenticationError(
                    f"pushing to {self.target_login_server} was refused ({exc.message}); "
                    f"promote: push needs {_PUSH_ROLE}"
                ) from None

    def _refresh_token(self, login_server: str) -> str:
        """Exchange the identity's AAD token for an ACR refresh token of ``login_server``."""
        doing = f"signing in to {login_server} with the gate's identity"
        aad = self._sign_in([f"{self._audience}/.default"], doing)
        timeout = float(self._oci_options.get("timeout", 30.0))
        try:
            with httpx.Client(timeout=timeout, transport=self._oci_options.get("transport")) as c:
                response = c.post(
                    f"https://{login_server}/oauth2/exchange",
                    data={
                        "grant_type": "access_token",
                        "service": login_server,
                        "access_token": aad,
                    },
                )
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(
                f"{doing} failed: {login_server} could not be reached ({type(exc).__name__}); "
                "check DNS, private endpoints and firewall, then retry"
            ) from None
        if response.status_code in (401, 403):
            raise AuthenticationError(
                f"{doing} was refused ({response.status_code}): the identity lacks {_PUSH_ROLE}"
            )
        if response.status_code == 429 or response.status_code >= 500:
            raise RegistryUnavailable(
                f"{doing} failed: {login_server} answered {response.status_code}; retry later"
            )
        try:
            token = str(response.json().get("refresh_token") or "")
        except (ValueError, AttributeError):
            token = ""
        if response.status_code != 200 or not token:
            raise RegistryError(
                f"{doing} failed: {login_server}/oauth2/exchange answered "
                f"{response.status_code} without a refresh token"
            )
        return token
