"""An emulated ACR's data plane, as azure-containerregistry 1.2.0 calls it, over a real registry.

Authentication is ACR's (azure-containerregistry ``ContainerRegistryChallengePolicy`` and
``ACRExchangeClient``; the REST spec's ``Azure.ContainerRegistry`` routes):

1. a request without a valid ACR access token gets ``401`` with
   ``WWW-Authenticate: Bearer realm="https://{login}/oauth2/token",service="{login}",
   scope="repository:{repo}:{action}"`` (commas without spaces: the SDK's challenge parser
   drops bare commas only);
2. ``POST /oauth2/exchange`` (form: ``grant_type=access_token``, ``service``, ``access_token`` =
   an AAD token for ``https://containerregistry.azure.net`` or ARM) → ``{"refresh_token"}`` (a
   JWT: the SDK reads its ``exp``);
3. ``POST /oauth2/token`` (form: ``grant_type=refresh_token``, ``service``, ``scope``,
   ``refresh_token``) → ``{"access_token"}`` for that scope; ``GET /oauth2/token`` with basic
   auth (user ``00000000-0000-0000-0000-000000000000``, password = a refresh token), as
   ``docker login`` with an AAD identity does, for OCI clients.

Routes (actions: ``metadata_read`` / ``metadata_write`` for ``/acr/v1``, ``pull`` for ``/v2``
reads, ``push`` for ``/v2`` writes):
``GET /acr/v1/{repo}/_tags`` (``n``, ``last``, ``orderby`` = ``timedesc``/``timeasc``,
``digest``; ``Link: <…>; rel="next"``), ``GET|PATCH /acr/v1/{repo}/_tags/{tag}``,
``GET /acr/v1/{repo}/_manifests/{digest}``, ``HEAD|GET /v2/{repo}/manifests/{ref}``,
``GET /v2/{repo}/tags/list``, ``HEAD /v2/{repo}/blobs/{digest}`` (passed to the backing
registry) and ``GET /v2/{repo}/blobs/{digest}``: a ``307`` to a SAS URL of the emulator's blob
store, as ACR redirects blob downloads to its storage (see ``v2_blob``). Tags and manifests come
from the backing registry; the changeable attributes (lock flags) are kept by the emulator.
Errors use ACR's ``{"errors": [{"code", "message"}]}``.

Pushes (the OCI distribution API, as ``docker push`` makes them): ``POST
/v2/{repo}/blobs/uploads/`` (with ``mount``/``from``: a cross-repository mount, tried only when
the token may also pull ``from``, else a plain upload starts, as distribution does),
``PATCH|PUT /v2/{repo}/blobs/uploads/{id}`` and ``PUT /v2/{repo}/manifests/{ref}``, passed to
the backing registry. A manifest written under a tag is a push: it is recorded and fires the
base-image triggers of tasks (:mod:`devstack.acr.downstream`). A manifest with a
``subject`` is listed by ``GET /v2/{repo}/referrers/{digest}`` (OCI distribution spec v1.1
"Listing Referrers": 200 with an image index, empty when nothing refers to the digest,
``artifactType`` filter with ``OCI-Filters-Applied``), and its push is answered with
``OCI-Subject``, as a registry with the referrers API does. A tag whose
``writeEnabled`` is false refuses a manifest: ACR documents that a locked image cannot be
overwritten (container-registry-image-lock.md); the status and code here (409
``TAG_LOCKED``) are not confirmed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import httpx

from devstack.acr.core import (
    ACR_EXCHANGE_AUDIENCES,
    AcrEmulator,
    EmulatedRegistry,
    Request,
    Response,
    Route,
    Router,
    bearer,
)

ACR_API_VERSIONS = frozenset({"2021-07-01", "2019-08-15-preview", "2019-08-15"})
"""api-versions the ACR data plane accepts (the SDK sends 2021-07-01, or none on list paging)."""

_MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
_INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
_TAG_WRITABLE = {"deleteEnabled", "writeEnabled", "listEnabled", "readEnabled"}
# How long a download link of ACR stays valid: 20 minutes, as the dedicated data endpoints page
# says of its links (in its docs.azure.cn version; whether the storage links live as long is not
# documented)
_BLOB_LINK_LIFETIME = 20 * 60
_REPO = r"(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+|__[a-z0-9]+)*)"


def acr_error(status: int, code: str, message: str, **headers: str) -> Response:
    """ACR's data-plane error body."""
    return Response(
        status, {"errors": [{"code": code, "message": message, "detail": None}]}, dict(headers)
    )


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class _Backing:
    """Plain-HTTP reads from the backing registry."""

    def __init__(self, registry: EmulatedRegistry) -> None:
        self.base = registry.backing.url

    def get(
        self, path: str, method: str = "GET", accept: str | None = None, range_: str | None = None
    ) -> httpx.Response:
        headers = {"Accept": accept or _MANIFEST_ACCEPT}
        if range_:
            headers["Range"] = range_
        with httpx.Client(timeout=30.0) as client:
            return client.request(method, f"{self.base}{path}", headers=headers)

    def digest(self, repo: str, reference: str) -> str | None:
        response = self.get(f"/v2/{repo}/manifests/{quote(reference)}", method="HEAD")
        if response.status_code != 200:
            return None
        digest: str | None = response.headers.get("Docker-Content-Digest")
        return digest

    def tags(self, repo: str) -> list[str] | None:
        response = self.get(f"/v2/{repo}/tags/list")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return list(response.json().get("tags") or [])


def router(emulator: AcrEmulator, registry: EmulatedRegistry) -> Router:
    """The data-plane router of ``registry``."""
    routes = Router(f"acr-{registry.name}", emulator.faults)
    backing = _Backing(registry)
    book = emulator.tokens
    store = emulator.blobs
    # (repository, subject digest) -> descriptors of the manifests pushed with that subject
    referrers: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def service() -> str:
        return registry.login_server

    def challenge(scope: str | None) -> dict[str, str]:
        value = f'Bearer realm="https://{service()}/oauth2/token",service="{service()}"'
        if scope:
            value += f',scope="{scope}"'
        return {"WWW-Authenticate": value}

    def gate(req: Request, route: Route) -> Response | None:
        writes = req.method in ("POST", "PATCH", "PUT", "DELETE")
        action = "metadata_write" if writes else "metadata_read"
        if req.path.startswith("/v2/"):
            action = "push" if writes else "pull"
            if req.method == "DELETE" and "/manifests/" in req.path:
                # the token scope grammar's third action: a manifest delete asks for "delete",
                # not "push" (docker-registry's token scopes; ACR's AcrDelete role is separate
                # from AcrPush)
                action = "delete"
        match = re.match(
            r"/(?:acr/v1|v2)/" + _REPO + r"/(?:_tags|_manifests|manifests|tags|blobs|referrers)",
            req.path,
        )
        scope = f"repository:{match['repo']}:{action}" if match else None
        token = bearer(req)
        issued = book.lookup(token) if token else None
        if issued is None or issued.kind != "acr_access" or issued.service != service():
            return acr_error(
                401,
                "UNAUTHORIZED",
                "authentication required, visit https://aka.ms/acr/authorization for more information.",
                **challenge(scope),
            )
        if scope is not None and not _grants(issued.scope, scope):
            return acr_error(
                401,
                "UNAUTHORIZED",
                "authentication required, visit https://aka.ms/acr/authorization for more information.",
                **challenge(scope),
            )
        if (
            route.api_versions is not None
            and req.api_version
            and req.api_version not in route.api_versions
        ):
            return acr_error(400, "UNSUPPORTED", f"api-version {req.api_version} is not supported")
        return None

    routes.gate = gate

    # -- token endpoints (public: they are how one authenticates) ---------------------------

    @routes.route("GET", r"/v2/?", name="v2", api_versions=None)
    def v2(req: Request, m: re.Match[str]) -> Response:
        return Response(200, {})

    @routes.route(
        "POST", r"/oauth2/exchange", name="oauth2Exchange", api_versions=None, public=True
    )
    def exchange(req: Request, m: re.Match[str]) -> Response:
        form = req.form()
        if form.get("service") != service():
            return acr_error(
                400,
                "BAD_REQUEST",
                f"service '{form.get('service')}' is not this registry ({service()})",
            )
        grant = form.get("grant_type")
        if grant not in ("access_token", "access_token_refresh_token"):
            return acr_error(
                400, "UNSUPPORTED_GRANT", f"grant_type '{grant}' is not supported here"
            )
        aad = book.lookup(form.get("access_token", ""))
        if aad is None or aad.kind != "aad":
            return acr_error(401, "UNAUTHORIZED", "the AAD access token is invalid or expired")
        if aad.audience.rstrip("/") not in ACR_EXCHANGE_AUDIENCES:
            return acr_error(
                401, "UNAUTHORIZED", f"the AAD access token has the wrong audience '{aad.audience}'"
            )
        refresh = book.issue("acr_refresh", service(), lifetime=3 * 3600, service=service())
        return Response(200, {"refresh_token": refresh})

    @routes.route("POST", r"/oauth2/token", name="oauth2Token", api_versions=None, public=True)
    def token_post(req: Request, m: re.Match[str]) -> Response:
        form = req.form()
        if form.get("grant_type") != "refresh_token":
            return acr_error(
                400,
                "UNSUPPORTED_GRANT",
                f"grant_type '{form.get('grant_type')}' is not supported here",
            )
        scopes = " ".join(v for k, v in parse_qsl(req.body.decode()) if k == "scope")
        return _access(form.get("refresh_token", ""), form.get("service", ""), scopes)

    @routes.route("GET", r"/oauth2/token", name="oauth2TokenGet", api_versions=None, public=True)
    def token_get(req: Request, m: re.Match[str]) -> Response:
        scheme, _, encoded = req.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return acr_error(
                401,
                "UNAUTHORIZED",
                "anonymous pull is not enabled on this registry",
                **{"WWW-Authenticate": f'Basic realm="https://{service()}/oauth2/token"'},
            )
        _, _, password = base64.b64decode(encoded).decode().partition(":")
        # a client may ask for several scopes at once (a mount needs push here, pull there)
        scopes = " ".join(v for k, v in req.query_items if k == "scope")
        return _access(password, req.query.get("service", ""), scopes)

    def _access(refresh_token: str, svc: str, scope: str) -> Response:
        if svc != service():
            return acr_error(
                400, "BAD_REQUEST", f"service '{svc}' is not this registry ({service()})"
            )
        refresh = book.lookup(refresh_token)
        if refresh is None or refresh.kind != "acr_refresh" or refresh.service != service():
            return acr_error(401, "UNAUTHORIZED", "the refresh token is invalid or expired")
        access = book.issue("acr_access", service(), lifetime=1200, service=service(), scope=scope)
        return Response(200, {"access_token": access, "token": access})

    # -- /acr/v1 -------------------------------------------------------------------------

    def tag_body(repo: str, tag: str, digest: str) -> dict[str, Any]:
        state = registry.tag(repo, tag)
        return {
            "name": tag,
            "digest": digest,
            "createdTime": state.created,
            "lastUpdateTime": state.updated,
            "signed": False,
            "changeableAttributes": {
                "deleteEnabled": state.delete_enabled,
                "writeEnabled": state.write_enabled,
                "readEnabled": state.read_enabled,
                "listEnabled": state.list_enabled,
            },
        }

    def tag_unknown(repo: str, tag: str) -> Response:
        return acr_error(404, "TAG_UNKNOWN", f"the specified tag does not exist: {repo}:{tag}")

    @routes.route(
        "GET",
        r"/acr/v1/" + _REPO + r"/_tags/(?P<tag>[^/]+)",
        name="getTagProperties",
        api_versions=ACR_API_VERSIONS,
    )
    def get_tag(req: Request, m: re.Match[str]) -> Response:
        digest = backing.digest(m["repo"], m["tag"])
        if digest is None:
            return tag_unknown(m["repo"], m["tag"])
        return Response(
            200,
            {
                "registry": service(),
                "imageName": m["repo"],
                "tag": tag_body(m["repo"], m["tag"], digest),
            },
        )

    @routes.route(
        "PATCH",
        r"/acr/v1/" + _REPO + r"/_tags/(?P<tag>[^/]+)",
        name="updateTagAttributes",
        api_versions=ACR_API_VERSIONS,
    )
    def patch_tag(req: Request, m: re.Match[str]) -> Response:
        try:
            body = req.json() if req.body else {}
        except ValueError:
            return acr_error(400, "BAD_REQUEST", "the request body is not JSON")
        if not isinstance(body, dict):
            return acr_error(400, "BAD_REQUEST", "the request body must be a JSON object")
        unknown = set(body) - _TAG_WRITABLE
        if unknown:
            return acr_error(
                400, "BAD_REQUEST", f"unknown changeable attributes: {sorted(unknown)}"
            )
        if any(v is not None and not isinstance(v, bool) for v in body.values()):
            return acr_error(400, "BAD_REQUEST", "changeable attributes must be booleans")
        digest = backing.digest(m["repo"], m["tag"])
        if digest is None:
            return tag_unknown(m["repo"], m["tag"])
        state = registry.tag(m["repo"], m["tag"])
        with registry.lock:
            for key, attr in (
                ("deleteEnabled", "delete_enabled"),
                ("writeEnabled", "write_enabled"),
                ("listEnabled", "list_enabled"),
                ("readEnabled", "read_enabled"),
            ):
                if body.get(key) is not None:
                    setattr(state, attr, body[key])
            state.updated = _now()
        return Response(
            200,
            {
                "registry": service(),
                "imageName": m["repo"],
                "tag": tag_body(m["repo"], m["tag"], digest),
            },
        )

    @routes.route(
        "GET", r"/acr/v1/" + _REPO + r"/_tags", name="listTags", api_versions=ACR_API_VERSIONS
    )
    def list_tags(req: Request, m: re.Match[str]) -> Response:
        repo = m["repo"]
        names = backing.tags(repo)
        if names is None:
            return acr_error(404, "NAME_UNKNOWN", f"repository name not known to registry: {repo}")
        entries = []
        for name in names:
            digest = backing.digest(repo, name)
            if digest is None:
                continue
            if req.query.get("digest") and req.query["digest"] != digest:
                continue
            entries.append(tag_body(repo, name, digest))
        order = req.query.get("orderby", "")
        if order == "timedesc":
            entries.sort(key=lambda e: (e["lastUpdateTime"], e["name"]), reverse=True)
        elif order == "timeasc":
            entries.sort(key=lambda e: (e["lastUpdateTime"], e["name"]))
        else:
            entries.sort(key=lambda e: e["name"])
        last = req.query.get("last")
        if last:
            names_in_order = [e["name"] for e in entries]
            entries = (
                entries[names_in_order.index(last) + 1 :]
                if last in names_in_order
                else [e for e in entries if e["name"] > last]
            )
        headers: dict[str, str] = {}
        size = int(req.query.get("n") or 100)
        if len(entries) > size:
            entries = entries[:size]
            headers["Link"] = (
                f"</acr/v1/{repo}/_tags?last={quote(entries[-1]['name'])}&n={size}&orderby={order}>; "
                'rel="next"'
            )
        return Response(200, {"registry": service(), "imageName": repo, "tags": entries}, headers)

    @routes.route(
        "GET",
        r"/acr/v1/" + _REPO + r"/_manifests/(?P<digest>sha256:[a-f0-9]{64})",
        name="getManifestProperties",
        api_versions=ACR_API_VERSIONS,
    )
    def get_manifest(req: Request, m: re.Match[str]) -> Response:
        repo, digest = m["repo"], m["digest"]
        response = backing.get(f"/v2/{repo}/manifests/{digest}")
        if response.status_code != 200:
            return acr_error(404, "MANIFEST_UNKNOWN", f"manifest unknown: {repo}@{digest}")
        data = response.content
        manifest = json.loads(data)
        media_type = manifest.get("mediaType") or response.headers.get("Content-Type", "")
        tags = [t for t in backing.tags(repo) or [] if backing.digest(repo, t) == digest]
        attrs: dict[str, Any] = {
            "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
            "imageSize": len(data)
            + sum(int(layer.get("size", 0)) for layer in manifest.get("layers", [])),
            "createdTime": _now(),
            "lastUpdateTime": _now(),
            "mediaType": media_type,
            "tags": sorted(tags),
            "changeableAttributes": {
                "deleteEnabled": True,
                "writeEnabled": True,
                "readEnabled": True,
                "listEnabled": True,
            },
        }
        if media_type in _INDEX_TYPES:
            attrs["references"] = [
                {
                    "digest": child["digest"],
                    "architecture": (child.get("platform") or {}).get("architecture"),
                    "os": (child.get("platform") or {}).get("os"),
                }
                for child in manifest.get("manifests", [])
            ]
        else:
            config = manifest.get("config") or {}
            blob = backing.get(f"/v2/{repo}/blobs/{config.get('digest')}", accept="*/*")
            if blob.status_code == 200:
                try:
                    image_config = json.loads(blob.content)
                    attrs["architecture"] = image_config.get("architecture")
                    attrs["os"] = image_config.get("os")
                except ValueError:
                    pass
        return Response(200, {"registry": service(), "imageName": repo, "manifest": attrs})

    # -- /v2 passed through -----------------------------------------------------------------

    def passthrough(req: Request, path: str) -> Response:
        response = backing.get(
            path,
            method=req.method,
            accept=req.headers.get("accept"),
            range_=req.headers.get("range"),
        )
        return relay(req, response)

    def relay(req: Request, response: httpx.Response) -> Response:
        kept = ("content-type", "docker-content-digest", "link", "etag", "content-range")
        headers = {key: value for key, value in response.headers.items() if key.lower() in kept}
        if req.method == "HEAD":
            headers["Content-Length"] = response.headers.get("Content-Length", "0")
        return Response(response.status_code, response.content, headers)

    @routes.route(
        "GET", r"/v2/" + _REPO + r"/manifests/(?P<ref>[^/]+)", name="v2Manifest", api_versions=None
    )
    def v2_manifest(req: Request, m: re.Match[str]) -> Response:
        return passthrough(req, f"/v2/{m['repo']}/manifests/{quote(m['ref'])}")

    @routes.route("GET", r"/v2/" + _REPO + r"/tags/list", name="v2Tags", api_versions=None)
    def v2_tags(req: Request, m: re.Match[str]) -> Response:
        query = "&".join(f"{k}={quote(v)}" for k, v in req.query.items())
        return passthrough(req, f"/v2/{m['repo']}/tags/list" + (f"?{query}" if query else ""))

    @routes.route(
        "GET",
        r"/v2/" + _REPO + r"/blobs/(?P<digest>sha256:[a-f0-9]{64})",
        name="v2Blob",
        api_versions=None,
    )
    def v2_blob(req: Request, m: re.Match[str]) -> Response:
        # ACR does not serve a blob download from its login server: it answers with a 307 to
        # a short-lived download link on its storage (learn.microsoft.com, "Dedicated data
        # endpoints in Azure Container Registry", "How container image downloads work: login
        # server and 307 redirect to data endpoints"; without dedicated data endpoints the link
        # is on the registry's storage account, *.blob.core.windows.net, the endpoint that
        # "Configure rules to access an Azure container registry behind a firewall" has
        # clients allow). The link here is a read SAS of the emulator's blob store (its query
        # ends in sig=, as a Blob Storage SAS does; that ACR's link has exactly this query is
        # not documented), on another host:port, so a client that sends the registry's token
        # on is seen (BlobStore.authorized) and the SAS is checked when the bytes are read.
        # Range (RFC 7233) goes with the redirected request: azure-containerregistry's
        # download_blob asks for chunks that way and accepts only 206 (the generated get_chunk,
        # from the REST spec's "Get blob chunk"), which the blob store answers.
        path = f"/v2/{m['repo']}/blobs/{m['digest']}"
        if req.method == "HEAD":
            return passthrough(req, path)
        container = f"{registry.name}-data"
        # per repository, as distribution links blobs: a blob of another repository is unknown
        name = f"{m['repo']}/blobs/{m['digest'].replace(':', '/')}/data"
        if not store.has(container, name):
            response = backing.get(path, accept="*/*")
            if response.status_code != 200:
                return relay(req, response)
            store.put(container, name, response.content)
        return Response(
            307,
            None,
            {
                "Location": store.sas_url(
                    container, name, write=False, lifetime=_BLOB_LINK_LIFETIME
                ),
                "Docker-Content-Digest": m["digest"],
            },
        )

    # -- pushes (OCI distribution API) -------------------------------------------------------

    def forward(req: Request, path: str) -> Response:
        """The request as it came, to the backing registry; its answer as the registry gave it."""
        headers = {
            k: v for k, v in req.headers.items() if k in ("content-type", "content-range", "accept")
        }
        query = urlencode(req.query_items)
        with httpx.Client(timeout=60.0) as client:
            response = client.request(
                req.method,
                f"{backing.base}{path}" + (f"?{query}" if query else ""),
                headers=headers,
                content=req.body,
            )
        wanted = (
            "content-type",
            "docker-content-digest",
            "location",
            "range",
            "docker-upload-uuid",
        )
        kept = {
            key.lower(): value for key, value in response.headers.items() if key.lower() in wanted
        }
        location = kept.get("location", "")
        if location.startswith(backing.base):
            # the backing registry answers relative URLs; an absolute one must name us
            kept["location"] = location.removeprefix(backing.base)
        return Response(response.status_code, response.content, kept)

    @routes.route(
        "POST", r"/v2/" + _REPO + r"/blobs/uploads/?", name="v2StartUpload", api_versions=None
    )
    def start_upload(req: Request, m: re.Match[str]) -> Response:
        source = req.query.get("from")
        if req.query.get("mount") and source:
            issued = book.lookup(bearer(req) or "")
            if issued is None or not _grants(issued.scope, f"repository:{source}:pull"):
                # no right to read the other repository: upload instead (202), no mount
                req.query_items = [(k, v) for k, v in req.query_items if k not in ("mount", "from")]
        return forward(req, f"/v2/{m['repo']}/blobs/uploads/")

    @routes.route(
        "PATCH",
        r"/v2/" + _REPO + r"/blobs/uploads/(?P<upload>[^/]+)",
        name="v2PatchUpload",
        api_versions=None,
    )
    def patch_upload(req: Request, m: re.Match[str]) -> Response:
        return forward(req, f"/v2/{m['repo']}/blobs/uploads/{m['upload']}")

    @routes.route(
        "PUT",
        r"/v2/" + _REPO + r"/blobs/uploads/(?P<upload>[^/]+)",
        name="v2PutUpload",
        api_versions=None,
    )
    def put_upload(req: Request, m: re.Match[str]) -> Response:
        return forward(req, f"/v2/{m['repo']}/blobs/uploads/{m['upload']}")

    @routes.route(
        "PUT",
        r"/v2/" + _REPO + r"/manifests/(?P<ref>[^/]+)",
        name="v2PutManifest",
        api_versions=None,
    )
    def put_manifest(req: Request, m: re.Match[str]) -> Response:
        from devstack.acr import downstream

        repo, ref = m["repo"], m["ref"]
        is_tag = not ref.startswith("sha256:")
        with registry.lock:  # one writer per registry: the lock check and the write agree
            previous = backing.digest(repo, ref) if is_tag else None
            if is_tag and previous is not None and not registry.tag(repo, ref).write_enabled:
                return acr_error(
                    409,
                    "TAG_LOCKED",
                    f"The operation is disallowed on this registry, repository or image: "
                    f"{repo}:{ref} is locked (writeEnabled: false).",
                )
            response = forward(req, f"/v2/{repo}/manifests/{quote(ref)}")
            if response.status == 201:
                subject = _refers_to(repo, req.body, referrers)
                if subject:
                    # distribution spec v1.1: a registry with the referrers API answers a
                    # manifest with a subject with OCI-Subject (clients then skip the tag schema)
                    response.headers["OCI-Subject"] = subject
            if response.status != 201 or not is_tag:
                return response
            digest = response.headers.get("docker-content-digest") or (
                "sha256:" + hashlib.sha256(req.body).hexdigest()
            )
            state = registry.tag(repo, ref)
            state.updated = _now()
        downstream.tag_written(emulator, registry, repo, ref, digest, previous, via="push")
        return response

    @routes.route(
        "DELETE",
        r"/v2/" + _REPO + r"/manifests/(?P<digest>sha256:[a-f0-9]{64})",
        name="v2DeleteManifest",
        api_versions=None,
    )
    def delete_manifest(req: Request, m: re.Match[str]) -> Response:
        # "Delete Manifest" of ACR's data plane (azure-rest-api-specs, containerregistry.json:
        # DELETE /v2/{name}/manifests/{reference}, 202 Accepted, 404 when unknown): by digest,
        # and every tag on it goes with it, as in the backing registry. A tag that is locked
        # (deleteEnabled false) refuses, as ACR refuses to delete a locked image.
        repo, digest = m["repo"], m["digest"]
        with registry.lock:
            for tag in backing.tags(repo) or []:
                locked = not registry.tag(repo, tag).delete_enabled
                if locked and backing.digest(repo, tag) == digest:
                    return acr_error(
                        409,
                        "TAG_LOCKED",
                        f"The operation is disallowed on this registry, repository or image: "
                        f"{repo}:{tag} is locked (deleteEnabled: false).",
                    )
            response = forward(req, f"/v2/{repo}/manifests/{digest}")
            if response.status == 202:
                for key, listed in referrers.items():
                    if key[0] == repo:
                        listed[:] = [d for d in listed if d["digest"] != digest]
        return response

    @routes.route(
        "GET",
        r"/v2/" + _REPO + r"/referrers/(?P<digest>sha256:[a-f0-9]{64})",
        name="v2Referrers",
        api_versions=None,
    )
    def list_referrers(req: Request, m: re.Match[str]) -> Response:
        # OCI distribution spec v1.1 "Listing Referrers": 200 and an image index, also when
        # nothing refers to the digest; artifactType filters, said in OCI-Filters-Applied
        with registry.lock:
            found = list(referrers.get((m["repo"], m["digest"]), []))
        headers = {"Content-Type": "application/vnd.oci.image.index.v1+json"}
        wanted = req.query.get("artifactType")
        if wanted:
            found = [d for d in found if d.get("artifactType") == wanted]
            headers["OCI-Filters-Applied"] = "artifactType"
        body = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": found,
        }
        return Response(200, body, headers)

    return routes


def _refers_to(
    repo: str, body: bytes, referrers: dict[tuple[str, str], list[dict[str, Any]]]
) -> str | None:
    """Record a pushed manifest that has a ``subject``; return the subject's digest."""
    try:
        manifest = json.loads(body)
        subject = str(manifest["subject"]["digest"])
    except (ValueError, KeyError, TypeError):
        return None
    descriptor: dict[str, Any] = {
        "mediaType": manifest.get("mediaType", "application/vnd.oci.image.manifest.v1+json"),
        "digest": "sha256:" + hashlib.sha256(body).hexdigest(),
        "size": len(body),
    }
    # the image spec: artifactType, else the config's media type; annotations are copied
    artifact_type = manifest.get("artifactType") or (manifest.get("config") or {}).get("mediaType")
    if artifact_type:
        descriptor["artifactType"] = artifact_type
    if manifest.get("annotations"):
        descriptor["annotations"] = manifest["annotations"]
    listed = referrers.setdefault((repo, subject), [])
    if all(d["digest"] != descriptor["digest"] for d in listed):
        listed.append(descriptor)
    return subject


def _grants(granted: str, wanted: str) -> bool:
    """Whether a token's scope(s) cover ``wanted`` (``repository:REPO:ACTION``)."""
    _, repo, action = wanted.split(":", 2)
    for item in granted.split():
        parts = item.split(":")
        if len(parts) != 3 or parts[0] != "repository":
            continue
        actions = set(parts[2].split(","))
        if parts[1] == repo and (action in actions or "*" in actions):
            return True
        # ACR's pull/push imply metadata_read, as its documentation of repository scopes says.
        if parts[1] == repo and action == "metadata_read" and actions & {"pull", "push"}:
            return True
    return False
