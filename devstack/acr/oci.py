"""The emulator's own registry client: what ``importImage`` needs of the OCI distribution spec.

Written from the OCI distribution specification (v1.1), not from the gate's client, so that a
bug in the gate's copy cannot hide in the fake it is tested against:

* ``HEAD /v2/<name>/manifests/<reference>`` with an ``Accept`` of every manifest type tells
  whether a manifest exists and its digest (``Docker-Content-Digest``; computed from a ``GET``
  when a registry leaves it out);
* ``GET /v2/<name>/manifests/<digest>`` gives the bytes, checked against the digest;
* ``HEAD``/``GET /v2/<name>/blobs/<digest>`` (redirects followed) and the two-request upload,
  ``POST /v2/<name>/blobs/uploads/`` then ``PUT <Location>?digest=<digest>`` with the bytes;
* ``PUT /v2/<name>/manifests/<reference>`` with the manifest's own ``Content-Type``.

An index is copied whole: every child manifest before the index. Layers marked
non-distributable (foreign) stay behind, as registries never serve them. Authentication is what
a ``docker-registry`` asks for: ``Basic`` with the given credentials, or a ``Bearer`` challenge
answered at its realm (``service`` and ``scope`` as the token specification has them).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import httpx

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
_INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
_ACCEPT = ", ".join(MANIFEST_TYPES)
_FOREIGN = ("nondistributable", "foreign")
# One more try for what a busy registry answers now and not a moment later.
_TRANSIENT = frozenset({429, 500, 502, 503, 504})
_ATTEMPTS = 2


class RegistryFailure(Exception):
    """A registry refused or failed a request of the copy; ``message`` says which and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ManifestMissing(RegistryFailure):
    """The registry has no such manifest (404)."""


@dataclass(frozen=True)
class Endpoint:
    """One registry: ``host`` (``127.0.0.1:5000``), plain HTTP when ``insecure``, credentials."""

    host: str
    insecure: bool = True
    username: str | None = None
    password: str | None = None

    @property
    def base(self) -> str:
        """``http(s)://host``."""
        return f"{'http' if self.insecure else 'https'}://{self.host}"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for part in rest.split(","):
        key, equals, value = part.strip().partition("=")
        if equals:
            params[key.strip().lower()] = value.strip().strip('"')
    return scheme.lower(), params


class Distribution:
    """A small, thread-safe client of registries speaking the OCI distribution API."""

    def __init__(self, *, timeout: float = 60.0) -> None:
        self._http = httpx.Client(timeout=timeout, follow_redirects=True)
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str], str] = {}

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> Distribution:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ------------------------------------------------------------------------

    def _send(
        self,
        ep: Endpoint,
        method: str,
        url: str,
        scope: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """One request, authenticated as the registry's challenge asks, retried once."""
        error = RegistryFailure(f"{method} {url} failed")
        for _ in range(_ATTEMPTS):
            wanted = dict(headers or {})
            with self._lock:
                token = self._tokens.get((ep.host, scope))
            if token is not None:
                wanted["Authorization"] = token
            try:
                response = self._http.request(method, url, headers=wanted, content=content)
                if response.status_code == 401:
                    # no token yet, or one that expired: answer the challenge once
                    authorization = self._authorize(ep, scope, response)
                    if authorization is not None:
                        wanted["Authorization"] = authorization
                        response = self._http.request(method, url, headers=wanted, content=content)
            except httpx.HTTPError as exc:
                error = RegistryFailure(f"{method} {url} failed: {exc}")
                continue
            if response.status_code not in _TRANSIENT:
                return response
            error = RegistryFailure(f"{method} {url} answered {response.status_code}")
        raise error

    def _authorize(self, ep: Endpoint, scope: str, refused: httpx.Response) -> str | None:
        scheme, params = _challenge(refused.headers.get("WWW-Authenticate", ""))
        basic = None
        if ep.username is not None:
            pair = f"{ep.username}:{ep.password or ''}".encode()
            basic = "Basic " + base64.b64encode(pair).decode("ascii")
        if scheme == "basic":
            authorization = basic
        elif scheme == "bearer" and "realm" in params:
            query = {
                "scope": scope,
                **({"service": params["service"]} if "service" in params else {}),
            }
            answer = self._http.get(
                params["realm"], params=query, headers={"Authorization": basic} if basic else {}
            )
            if answer.status_code != 200:
                raise RegistryFailure(
                    f"the token service {params['realm']} of {ep.host} answered "
                    f"{answer.status_code} for scope {scope}"
                )
            body = answer.json()
            authorization = f"Bearer {body.get('token') or body.get('access_token')}"
        else:
            return None
        if authorization is not None:
            with self._lock:
                self._tokens[(ep.host, scope)] = authorization
        return authorization

    @staticmethod
    def _fail(what: str, response: httpx.Response) -> RegistryFailure:
        detail = response.text.strip().replace("\n", " ")[:300]
        return RegistryFailure(f"{what}: {response.status_code} {detail}".rstrip())

    # -- manifests -----------------------------------------------------------------------

    def resolve(self, ep: Endpoint, repository: str, reference: str) -> str | None:
        """The digest ``reference`` (a tag or digest) points at, or None if there is none."""
        url = f"{ep.base}/v2/{repository}/manifests/{reference}"
        pull = f"repository:{repository}:pull"
        response = self._send(ep, "HEAD", url, pull, headers={"Accept": _ACCEPT})
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._fail(f"HEAD {ep.host}/{repository}:{reference}", response)
        digest: str | None = response.headers.get("Docker-Content-Digest")
        if digest:
            return digest
        data, _ = self.manifest(ep, repository, reference)
        return _sha256(data)

    def manifest(self, ep: Endpoint, repository: str, reference: str) -> tuple[bytes, str]:
        """A manifest's bytes and media type (ManifestMissing if there is none)."""
        url = f"{ep.base}/v2/{repository}/manifests/{reference}"
        pull = f"repository:{repository}:pull"
        response = self._send(ep, "GET", url, pull, headers={"Accept": _ACCEPT})
        if response.status_code == 404:
            raise ManifestMissing(f"{ep.host}/{repository} has no manifest {reference}")
        if response.status_code != 200:
            raise self._fail(f"GET {ep.host}/{repository}:{reference}", response)
        data = response.content
        if reference.startswith("sha256:") and _sha256(data) != reference:
            raise RegistryFailure(
                f"{ep.host}/{repository}@{reference} served bytes of another digest"
            )
        media_type = str(json.loads(data).get("mediaType") or "")
        return data, media_type or response.headers.get("Content-Type", OCI_MANIFEST)

    def put_manifest(
        self, ep: Endpoint, repository: str, reference: str, data: bytes, media_type: str
    ) -> None:
        """Write a manifest under a tag or its digest."""
        url = f"{ep.base}/v2/{repository}/manifests/{reference}"
        push = f"repository:{repository}:pull,push"
        response = self._send(
            ep, "PUT", url, push, headers={"Content-Type": media_type}, content=data
        )
        if response.status_code not in (200, 201):
            raise self._fail(f"PUT {ep.host}/{repository}:{reference}", response)

    # -- blobs ---------------------------------------------------------------------------

    def _copy_blob(
        self, src: Endpoint, src_repo: str, dst: Endpoint, dst_repo: str, digest: str
    ) -> None:
        push = f"repository:{dst_repo}:pull,push"
        there = self._send(dst, "HEAD", f"{dst.base}/v2/{dst_repo}/blobs/{digest}", push)
        if there.status_code == 200:
            return
        pull = f"repository:{src_repo}:pull"
        got = self._send(src, "GET", f"{src.base}/v2/{src_repo}/blobs/{digest}", pull)
        if got.status_code != 200:
            raise self._fail(f"GET blob {src.host}/{src_repo}@{digest}", got)
        if _sha256(got.content) != digest:
            raise RegistryFailure(f"{src.host}/{src_repo} served blob {digest} with other bytes")
        started = self._send(dst, "POST", f"{dst.base}/v2/{dst_repo}/blobs/uploads/", push)
        if started.status_code != 202 or "Location" not in started.headers:
            raise self._fail(f"starting an upload to {dst.host}/{dst_repo}", started)
        location = urljoin(dst.base + "/", started.headers["Location"])
        location += ("&" if "?" in location else "?") + f"digest={digest}"
        done = self._send(
            dst,
            "PUT",
            location,
            push,
            headers={"Content-Type": "application/octet-stream"},
            content=got.content,
        )
        if done.status_code != 201:
            raise self._fail(f"uploading blob {digest} to {dst.host}/{dst_repo}", done)

    # -- copy ----------------------------------------------------------------------------

    def copy(
        self,
        src: Endpoint,
        src_repo: str,
        digest: str,
        dst: Endpoint,
        dst_repo: str,
        tags: tuple[str, ...] = (),
    ) -> None:
        """Copy manifest ``digest`` (an index whole) and its blobs, then write ``tags``."""
        data, media_type = self._copy_manifest(src, src_repo, digest, dst, dst_repo)
        for tag in tags:
            self.put_manifest(dst, dst_repo, tag, data, media_type)

    def _copy_manifest(
        self, src: Endpoint, src_repo: str, digest: str, dst: Endpoint, dst_repo: str
    ) -> tuple[bytes, str]:
        data, media_type = self.manifest(src, src_repo, digest)
        manifest: dict[str, Any] = json.loads(data)
        if media_type in _INDEX_TYPES:
            for child in manifest.get("manifests") or []:
                self._copy_manifest(src, src_repo, str(child["digest"]), dst, dst_repo)
        else:
            for descriptor in [manifest.get("config"), *(manifest.get("layers") or [])]:
                if not isinstance(descriptor, dict):
                    continue
                if any(word in str(descriptor.get("mediaType", "")) for word in _FOREIGN):
                    continue
                self._copy_blob(src, src_repo, dst, dst_repo, str(descriptor["digest"]))
        self.put_manifest(dst, dst_repo, digest, data, media_type)
        return data, media_type
