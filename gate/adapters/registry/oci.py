"""The registry adapter: the OCI distribution API over HTTP (``httpx``, synchronous).

Implements :class:`gate.ports.Registry`. Everything moves by digest: manifests are fetched by
digest, checked against it, and written back with their exact bytes, so the digest in the
target is the digest that was validated. Blobs stream from source to target in bounded chunks
(memory does not grow with layer size), are skipped when the target has them and mounted when
source and target share a registry.

:class:`OciRegistry` composes one module per concern, over one HTTP layer and one auth layer:

* :mod:`~gate.adapters.registry.http`: the client, its bounds, and retries (transient
  failures, i.e. connection errors, timeouts, 429, 500/502/503/504, are retried a bounded
  number of times with exponential backoff and jitter, honouring ``Retry-After``; every other
  answer is final);
* :mod:`~gate.adapters.registry.auth`: the registry's challenge, as an ``httpx.Auth`` flow
  (bearer tokens, anonymous or with basic credentials at the token realm, cached per host and
  scope; or plain basic auth);
* :mod:`~gate.adapters.registry.manifests`, :mod:`~gate.adapters.registry.blobs`,
  :mod:`~gate.adapters.registry.tags` and :mod:`~gate.adapters.registry.copy`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Unpack

import httpx

from gate.adapters.registry.auth import parse_challenge
from gate.adapters.registry.blobs import Blobs
from gate.adapters.registry.copy import Copier
from gate.adapters.registry.endpoint import HostSettings, parse_retry_after
from gate.adapters.registry.http import RegistryHttp, RetryPolicy
from gate.adapters.registry.manifests import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    IMAGE_TYPES,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Manifests,
    quota_spent,
)
from gate.adapters.registry.tags import Tags
from gate.domain.ref import ImageRef
from gate.ports import CopyOptions, CopyReport, PolledDigest, ProgressCallback, Unstaged

__all__ = [
    "DOCKER_LIST",
    "DOCKER_MANIFEST",
    "IMAGE_TYPES",
    "INDEX_TYPES",
    "MANIFEST_TYPES",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "HostSettings",
    "OciRegistry",
    "parse_challenge",
    "parse_retry_after",
    "quota_spent",
]


class OciRegistry:
    """:class:`gate.ports.Registry` over the OCI distribution API.

    ``hosts`` maps a registry name as written in references (``docker.io``, ``ghcr.io``,
    ``127.0.0.1:5000``) to its :class:`HostSettings`; unlisted hosts are reached over HTTPS
    anonymously. ``transport`` replaces the network (tests). ``timeout`` bounds each network
    operation and ``deadline`` (default: ``timeout``) each whole answer. ``max_attempts``,
    ``backoff_initial``, ``backoff_max``, ``retry_after_max`` and ``wait_budget`` bound the
    retries (:class:`~gate.adapters.registry.http.RetryPolicy`).
    ``chunk_size`` re-chunks streamed blobs; the default passes on the chunks the connection
    delivers (64 KiB), which is bounded and avoids copying every byte once more.
    The poll methods (:meth:`poll_digest`, :meth:`poll_tags`) may run on several threads at
    once: they share the connection pools (one per registry origin: httpcore's pools serialise
    their bookkeeping under a lock, ``ConnectionPool._optional_thread_lock``; poll HEADs over
    HTTP/1.1 take a connection each from a stack under its own lock) and the token cache (a
    dict; a race costs at most one token fetched twice). Copies are not thread-safe: one copy at a time.
    """

    def __init__(
        self,
        hosts: Mapping[str, HostSettings] | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        deadline: float | None = None,
        max_attempts: int = 5,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        retry_after_max: float = 20.0,
        wait_budget: float = 40.0,
        chunk_size: int | None = None,
        tags_page_size: int = 1000,
        listing_budget: float = 240.0,
    ) -> None:
        policy = RetryPolicy(
            max_attempts=max_attempts,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            retry_after_max=retry_after_max,
            wait_budget=wait_budget,
        )
        self._http = RegistryHttp(
            hosts, transport=transport, timeout=timeout, deadline=deadline, policy=policy
        )
        self._manifests = Manifests(self._http)
        self._blobs = Blobs(self._http, chunk_size=chunk_size)
        self._tags = Tags(self._http, page_size=tags_page_size, budget=listing_budget)
        self._copier = Copier(self._http, self._manifests, self._blobs)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> OciRegistry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the port --------------------------------------------------------------------------

    def resolve(self, ref: ImageRef) -> str:
        """Return the digest ``ref`` points at now (one HEAD request; digest refs are checked)."""
        return self._manifests.resolve(ref)

    def list_tags(self, repository: ImageRef) -> list[str]:
        """Return every tag of ``repository`` (registry and repository of the ref; tag ignored).

        Follows the ``Link: <...>; rel="next"`` header page by page (OCI distribution spec,
        "Listing Tags": the ``n``/``last`` query and the ``Link`` header of the next page).
        """
        return self._tags.list(repository, wait_limits=True)

    def poll_digest(self, ref: ImageRef) -> PolledDigest:
        """One HEAD for the digest of ``ref``; a ``429`` raises :class:`RateLimited` at once.

        Without a ``Docker-Content-Digest`` header the manifest is fetched once to hash it
        (some registries omit it; every registry the distribution spec describes sends it).
        """
        return self._manifests.poll_digest(ref)

    def poll_tags(self, repository: ImageRef, *, budget: float | None = None) -> list[str]:
        """:meth:`list_tags`, raising :class:`RateLimited` at the first ``429``; no page is
        asked for after ``budget`` seconds (default ``listing_budget``), e.g. what is left of
        a poll pass's ``poll.budget``."""
        return self._tags.list(repository, wait_limits=False, budget=budget)

    def check_push(self, target: ImageRef) -> None:
        """Start a blob upload in ``target``'s repository and cancel it: proves push rights
        without writing anything (:meth:`~gate.adapters.registry.blobs.Blobs.check_push`)."""
        self._blobs.check_push(target)

    def copy(
        self, source: ImageRef, target: ImageRef, **options: Unpack[CopyOptions]
    ) -> CopyReport:
        """:meth:`gate.ports.Registry.copy` over the distribution API: blobs stream from source
        to target, are skipped when the target has them and mounted within one registry."""
        return self._copier.copy(source, target, **options)

    def stage(
        self,
        source: ImageRef,
        target: ImageRef,
        *,
        progress: ProgressCallback | None = None,
        on_uploaded: Callable[[str], None] | None = None,
    ) -> CopyReport:
        """:meth:`gate.ports.BlobStager.stage`: the blobs :meth:`copy` would move, no manifest."""
        return self._copier.stage(source, target, progress=progress, on_uploaded=on_uploaded)

    def unstage(self, target: ImageRef, digests: Sequence[str]) -> Unstaged:
        """:meth:`gate.ports.BlobStager.unstage` with blob ``DELETE`` requests
        (:meth:`~gate.adapters.registry.blobs.Blobs.delete_blobs`)."""
        return self._blobs.delete_blobs(target, digests)

    # -- artifacts (attestations): small blobs and manifests by value -----------------------

    def push_blob(self, repository: ImageRef, data: bytes) -> str:
        """Upload ``data`` as a blob of ``repository`` (monolithic POST + PUT); its digest.

        OCI distribution spec, "Pushing a blob monolithically" (POST then PUT ``?digest=``);
        a blob already there is not sent again.
        """
        return self._blobs.push_blob(repository, data)

    def put_manifest(
        self, repository: ImageRef, reference: str, data: bytes, media_type: str
    ) -> str:
        """Write manifest ``data`` as ``reference`` (a tag or its digest); return its digest."""
        return self._manifests.put_manifest(repository, reference, data, media_type)

    def fetch_manifest(self, repository: ImageRef, reference: str) -> tuple[bytes, str] | None:
        """The bytes and media type of manifest ``reference``, None if there is none.

        A manifest fetched by digest is checked against it.
        """
        return self._manifests.fetch_manifest(repository, reference)

    def fetch_blob(self, repository: ImageRef, digest: str, *, limit: int = 4 << 20) -> bytes:
        """A small blob of ``repository``, checked against ``digest`` (at most ``limit`` bytes)."""
        return self._blobs.fetch_blob(repository, digest, limit=limit)

    def delete_manifest(self, repository: ImageRef, digest: str) -> bool:
        """Delete manifest ``digest`` of ``repository`` (its tags with it); False when absent."""
        return self._manifests.delete_manifest(repository, digest)

    def referrers(self, subject: ImageRef) -> bytes | None:
        """The referrers index of ``subject`` (repository @ digest) from the referrers API.

        ``GET /v2/<name>/referrers/<digest>`` (OCI distribution spec v1.1, "Listing Referrers"):
        a registry that supports it answers 200 with an image index, even an empty one; 404
        means it does not (the caller falls back to the referrers tag schema).
        """
        return self._manifests.referrers(subject)
