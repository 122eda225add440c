"""Manifests over the distribution API: resolve a reference, read and write by digest.

A manifest fetched by digest is checked against it and written back with its exact bytes, so
the digest in the target is the digest that was validated.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from contextlib import closing

from gate.adapters.registry.endpoint import Endpoint
from gate.adapters.registry.http import RegistryHttp
from gate.domain.ref import ImageRef, parse_digest
from gate.errors import InvalidReference, ManifestUnknown, RegistryError, RegistryMisbehaved
from gate.ports import PolledDigest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
ACCEPT = ", ".join(MANIFEST_TYPES)
DIGEST = re.compile(r"^(sha256|sha512):[a-f0-9]{64,128}$")
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")


def manifest_url(ep: Endpoint, repo: str, reference: str) -> str:
    """``/v2/<repo>/manifests/<reference>`` of ``ep``, once ``reference`` is checked to be a
    tag or a digest as the OCI grammar has them: a reference read from a registry's answer
    (an index's child, a referrer) must not become a path of its choosing."""
    if not _TAG.fullmatch(reference):
        try:
            parse_digest(reference)
        except InvalidReference:
            raise RegistryMisbehaved(
                f"{reference[:150]!r} is neither a tag nor a digest; the gate puts no such "
                f"reference into a request to registry {ep.name}. If it came from a "
                "registry's answer, that registry is misbehaving: report it."
            ) from None
    return f"{ep.base}/v2/{repo}/manifests/{reference}"


def check_digest(data: bytes, digest: str) -> bool:
    """Whether ``data`` hashes to ``digest`` (sha256 or sha512)."""
    algorithm, _, expected = digest.partition(":")
    if algorithm not in ("sha256", "sha512"):
        return False
    return hashlib.new(algorithm, data).hexdigest() == expected


def quota_spent(headers: Mapping[str, str]) -> str:
    """Docker Hub's pull quota, when the answer says it is spent; empty otherwise.

    Docker Hub answers manifest requests (GET and HEAD) with ``ratelimit-limit: 100;w=21600``
    and ``ratelimit-remaining: 76;w=21600`` (pulls per window of ``w`` seconds; Docker docs,
    "Docker Hub pull usage and limits", View pull rate and limit). It documents no reset time,
    so a spent quota stops polling that registry for the rest of the pass only.
    """
    remaining = headers.get("ratelimit-remaining")
    if remaining is None:
        return ""
    count = remaining.split(";")[0].strip()
    if not count.isdigit() or int(count) > 0:
        return ""
    limit = headers.get("ratelimit-limit", "?")
    return f"pull quota spent (ratelimit-remaining {remaining.strip()}, limit {limit.strip()})"


class Manifests:
    """The manifest endpoints (``/v2/<name>/manifests/<reference>``) of every registry."""

    def __init__(self, http: RegistryHttp) -> None:
        self._http = http

    # -- operations (each retried as a whole) ---------------------------------------------

    def resolve(self, ref: ImageRef) -> str:
        """The digest ``ref`` points at now (one HEAD request; digest refs are checked)."""
        ep = self._http.endpoint(ref.registry)
        digest = self._http.retry(
            f"resolving {ref}", lambda: self.head(ep, ref.repository, ref.reference)
        )
        if digest is None:
            raise ManifestUnknown(
                f"{ref} does not exist: registry {ref.registry} has no manifest "
                f"'{ref.reference}' in repository '{ref.repository}'. Check the repository "
                "and tag (or digest) for typos, and that the image was not deleted upstream."
            )
        return digest

    def poll_digest(self, ref: ImageRef) -> PolledDigest:
        """One HEAD for the digest of ``ref``; a ``429`` raises ``RateLimited`` at once."""
        ep = self._http.endpoint(ref.registry)
        digest, spent = self._http.retry(
            f"polling {ref}",
            lambda: self.head_answer(ep, ref.repository, ref.reference),
            wait_limits=False,
        )
        if digest is None:
            raise ManifestUnknown(
                f"{ref} does not exist: registry {ref.registry} has no manifest "
                f"'{ref.reference}' in repository '{ref.repository}'. Check the tag for typos, "
                "and that the image was not deleted upstream."
            )
        return PolledDigest(digest, spent)

    def put_manifest(
        self, repository: ImageRef, reference: str, data: bytes, media_type: str
    ) -> str:
        """Write manifest ``data`` as ``reference`` (a tag or its digest); return its digest."""
        ep = self._http.endpoint(repository.registry)
        self._http.retry(
            f"writing {repository.name}:{reference}",
            lambda: self.put(ep, repository.repository, reference, data, media_type),
        )
        return "sha256:" + hashlib.sha256(data).hexdigest()

    def fetch_manifest(self, repository: ImageRef, reference: str) -> tuple[bytes, str] | None:
        """The bytes and media type of manifest ``reference``, None if there is none.

        A manifest fetched by digest is checked against it.
        """
        ep = self._http.endpoint(repository.registry)
        repo = repository.repository
        try:
            data, media_type = self._http.retry(
                f"fetching {repository.name}:{reference}",
                lambda: self.get(ep, repo, reference),
            )
        except ManifestUnknown:
            return None
        if DIGEST.match(reference) and not check_digest(data, reference):
            raise RegistryError(
                f"registry {ep.name} served {repository.name}@{reference} with content that "
                "does not match that digest; refusing it"
            )
        return data, media_type

    def delete_manifest(self, repository: ImageRef, digest: str) -> bool:
        """Delete manifest ``digest`` of ``repository`` (and so every tag on it); False when it
        is not there (404).

        ``DELETE /v2/<name>/manifests/<digest>`` answers ``202 Accepted`` (OCI distribution spec
        v1.1, "Deleting Manifests"; ACR: "Delete Manifest" of the container registry data plane,
        azure-rest-api-specs ``containerregistry.json``, ``202``); a registry with deletion
        disabled answers ``400`` or ``405`` (same section), raised as :class:`RegistryError`. The
        token scope's action is ``delete`` (the distribution token scope grammar, as
        ``docker-registry`` and ACR ask for it).
        """
        ep = self._http.endpoint(repository.registry)
        repo = repository.repository
        url = manifest_url(ep, repo, parse_digest(digest))

        def attempt() -> bool:
            response = self._http.request(ep, "DELETE", url, scopes=(f"repository:{repo}:delete",))
            with closing(response):
                if response.status_code == 404:
                    return False
                self._http.expect(response, (202, 200), ep, f"deleting {repo}@{digest}")
                return True

        return self._http.retry(f"deleting {repository.name}@{digest}", attempt)

    def referrers(self, subject: ImageRef) -> bytes | None:
        """The referrers index of ``subject`` (repository @ digest), None when the registry
        has no referrers API (404)."""
        http = self._http
        ep = http.endpoint(subject.registry)
        repo = subject.repository
        assert subject.digest is not None
        url = f"{ep.base}/v2/{repo}/referrers/{subject.digest}"

        def attempt() -> bytes | None:
            response = http.request(
                ep,
                "GET",
                url,
                scopes=(f"repository:{repo}:pull",),
                headers={"Accept": OCI_INDEX},
                limit=MAX_MANIFEST_BYTES,
            )
            with closing(response):
                if response.status_code == 404:
                    return None
                http.expect(response, (200,), ep, f"listing referrers of {subject}")
                return response.read()

        return http.retry(f"listing referrers of {subject}", attempt)

    # -- single attempts ------------------------------------------------------------------

    def get(self, ep: Endpoint, repo: str, reference: str) -> tuple[bytes, str]:
        """One GET of manifest ``repo:reference``: its bytes (at most 4 MiB) and media type."""
        url = manifest_url(ep, repo, reference)
        response = self._http.request(
            ep,
            "GET",
            url,
            scopes=(f"repository:{repo}:pull",),
            headers={"Accept": ACCEPT},
            stream=True,
        )
        with closing(response):
            if response.status_code == 404:
                raise ManifestUnknown(
                    f"{ep.name}/{repo}@{reference} does not exist; check the digest and that "
                    "the image was not deleted from the source registry"
                )
            self._http.expect(response, (200,), ep, f"fetching manifest {repo}@{reference}")
            data = self._http.read_at_most(ep, response, MAX_MANIFEST_BYTES)
        if len(data) > MAX_MANIFEST_BYTES:
            raise RegistryMisbehaved(
                f"manifest {ep.name}/{repo}@{reference} is larger than 4 MiB; refusing it"
            )
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return data, media_type

    def head(self, ep: Endpoint, repo: str, reference: str) -> str | None:
        """The digest of ``repo:reference`` (or ``@reference``), None if it does not exist."""
        return self.head_answer(ep, repo, reference)[0]

    def head_answer(self, ep: Endpoint, repo: str, reference: str) -> tuple[str | None, str]:
        """:meth:`head`, and the spent-quota note of the answer (:func:`quota_spent`)."""
        url = manifest_url(ep, repo, reference)
        scopes = (f"repository:{repo}:pull",)
        with closing(self._http.head(ep, url, scopes=scopes, accept=ACCEPT)) as head:
            if head.status_code == 404:
                return None, ""
            self._http.expect(head, (200,), ep, f"looking up {repo}:{reference}")
            digest = str(head.headers.get("Docker-Content-Digest", ""))
            spent = quota_spent(head.headers)
        if DIGEST.match(reference):
            return reference, spent
        if digest and DIGEST.match(digest):
            return digest, spent
        # Some registries omit the header: the digest is the sha256 of the manifest bytes.
        data, _ = self.get(ep, repo, reference)
        return "sha256:" + hashlib.sha256(data).hexdigest(), spent

    def put(self, ep: Endpoint, repo: str, reference: str, data: bytes, media_type: str) -> None:
        """One PUT of manifest ``data`` as ``repo:reference``."""
        url = manifest_url(ep, repo, reference)
        response = self._http.request(
            ep,
            "PUT",
            url,
            scopes=(f"repository:{repo}:pull,push",),
            headers={"Content-Type": media_type},
            content=data,
        )
        with closing(response):
            self._http.expect(response, (200, 201), ep, f"writing manifest {repo}:{reference}")
