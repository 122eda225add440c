"""The registry adapter: the OCI distribution API over HTTP (``httpx``, synchronous).

Implements :class:`gate.ports.Registry`. Everything moves by digest: manifests are fetched by
digest, checked against it, and written back with their exact bytes, so the digest in the
target is the digest that was validated. Blobs stream from source to target in bounded chunks
(memory does not grow with layer size), are skipped when the target has them and mounted when
source and target share a registry.

Transient failures (connection errors, timeouts, 429, 500/502/503/504) are retried a bounded
number of times with exponential backoff and jitter, honouring ``Retry-After``; every other
answer is final. Authentication follows the registry's challenge: bearer tokens (anonymous or
with basic credentials at the token realm, cached per host and scope) or plain basic auth.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote, urljoin, urlsplit

import httpx

from gate.domain.ref import ImageRef
from gate.errors import (
    AuthenticationError,
    Conflict,
    InvalidReference,
    ManifestUnknown,
    RegistryError,
    RegistryUnavailable,
)
from gate.ports import CopyReport, PolledDigest, ProgressCallback, RateLimited

T = TypeVar("T")

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
_ACCEPT = ", ".join(MANIFEST_TYPES)
# Foreign (e.g. Windows base) layers live outside the registry; they are never copied.
_FOREIGN_LAYER_TYPES = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_DOCKER_HUB = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_DIGEST = re.compile(r"^(sha256|sha512):[a-f0-9]{64,128}$")
_MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_PROGRESS_STEP = 1024 * 1024
# A token is renewed this long before the expiry the realm announced.
_TOKEN_MARGIN = 10.0


@dataclass(frozen=True)
class HostSettings:
    """How to reach one registry host.

    ``insecure`` allows plain HTTP (the configuration permits it for loopback hosts only);
    ``username``/``password`` are used for basic auth or at a bearer-token realm.
    """

    insecure: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _Endpoint:
    """A registry as the references name it, and where its API actually lives."""

    name: str
    host: str
    base: str
    settings: HostSettings

    @property
    def has_credentials(self) -> bool:
        return self.settings.username is not None and self.settings.password is not None


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float


@dataclass
class _Stats:
    """Counters of one copy (mutable while the copy runs, frozen into a CopyReport)."""

    manifests: int = 0
    blobs_copied: int = 0
    blobs_skipped: int = 0
    blobs_mounted: int = 0
    bytes_copied: int = 0


class _Transient(Exception):
    """A failure worth retrying (connection error, timeout, 429, 5xx); internal only."""

    def __init__(
        self, host: str, reason: str, retry_after: float | None = None, status: int = 0
    ) -> None:
        super().__init__(reason)
        self.host = host
        self.reason = reason
        self.retry_after = retry_after
        self.status = status


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


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Split ``WWW-Authenticate: Scheme k="v",k2=v2`` into (lower-case scheme, params)."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        key.lower(): quoted if quoted or plain == "" else plain
        for key, quoted, plain in re.findall(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]*))', rest)
    }
    return scheme.lower(), params


def _error_detail(response: httpx.Response) -> str:
    """The registry's own error codes and messages (the distribution JSON error body)."""
    try:
        body = json.loads(response.read() or b"{}")
    except (ValueError, httpx.HTTPError):
        return ""
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return ""
    parts = [
        f"{e.get('code', '?')}: {e.get('message', '')}".strip()
        for e in errors
        if isinstance(e, dict)
    ]
    return "; ".join(parts)


def _append_query(url: str, key: str, value: str) -> str:
    # The upload Location carries opaque state in its query (e.g. ``_state=``); httpx's
    # ``params=`` would replace that query, so the parameter is appended by hand.
    separator = "&" if urlsplit(url).query else "?"
    return f"{url}{separator}{key}={quote(value, safe=':')}"


def _check_digest(data: bytes, digest: str) -> bool:
    algorithm, _, expected = digest.partition(":")
    if algorithm not in ("sha256", "sha512"):
        return False
    return hashlib.new(algorithm, data).hexdigest() == expected


class _TlsOnFirstUse(httpx.BaseTransport):
    """Plain-HTTP requests through a transport with no TLS set-up; the TLS transport, whose
    set-up loads the CA bundle (about 20 ms of a command's start-up), is made on the first
    ``https://`` request. Both are httpx's own :class:`httpx.HTTPTransport` with its defaults
    (certificates verified, ``SSL_CERT_FILE``/``SSL_CERT_DIR`` honoured)."""

    def __init__(self) -> None:
        # a plain-HTTP request never reaches TLS; verify=False only skips loading the bundle
        self._plain = httpx.HTTPTransport(verify=False)
        self._tls: httpx.HTTPTransport | None = None
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme == "http":
            return self._plain.handle_request(request)
        with self._lock:
            if self._tls is None:
                self._tls = httpx.HTTPTransport()
        return self._tls.handle_request(request)

    def close(self) -> None:
        self._plain.close()
        if self._tls is not None:
            self._tls.close()


class OciRegistry:
    """:class:`gate.ports.Registry` over the OCI distribution API.

    ``hosts`` maps a registry name as written in references (``docker.io``, ``ghcr.io``,
    ``127.0.0.1:5000``) to its :class:`HostSettings`; unlisted hosts are reached over HTTPS
    anonymously. ``transport`` replaces the network (tests); ``sleep`` is how backoff waits.
    ``chunk_size`` re-chunks streamed blobs; the default passes on the chunks the connection
    delivers (64 KiB), which is bounded and avoids copying every byte once more.
    The poll methods (:meth:`poll_digest`, :meth:`poll_tags`) may run on several threads at
    once: they share the connection pool (httpcore's pool serialises its bookkeeping under a
    lock, ``ConnectionPool._optional_thread_lock``) and the token cache (a dict; a race costs
    at most one token fetched twice). Copies are not thread-safe: one copy at a time.
    """

    def __init__(
        self,
        hosts: Mapping[str, HostSettings] | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        max_attempts: int = 5,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        retry_after_max: float = 120.0,
        chunk_size: int | None = None,
        tags_page_size: int = 1000,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._hosts = dict(hosts or {})
        self._max_attempts = max_attempts
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._retry_after_max = retry_after_max
        self._chunk_size = chunk_size
        self._tags_page_size = tags_page_size
        self._sleep = sleep
        self._client = httpx.Client(
            transport=transport or _TlsOnFirstUse(),
            timeout=httpx.Timeout(timeout),
            headers={"User-Agent": "gated-import-gate"},
        )
        self._tokens: dict[tuple[str, tuple[str, ...]], _Token] = {}
        self._bearer_realms: dict[str, dict[str, str]] = {}
        self._basic_hosts: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

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
        ep = self._endpoint(ref.registry)
        digest = self._retry(f"resolving {ref}", self._head_fn(ep, ref.repository, ref.reference))
        if digest is None:
            raise ManifestUnknown(
                f"{ref} does not exist: registry {ref.registry} has no manifest "
                f"'{ref.reference}' in repository '{ref.repository}'. Check the repository "
                "and tag (or digest) for typos, and that the image was not deleted upstream."
            )
        return digest

    def list_tags(self, repository: ImageRef) -> list[str]:
        """Return every tag of ``repository`` (registry and repository of the ref; tag ignored).

        Follows the ``Link: <...>; rel="next"`` header page by page (OCI distribution spec,
        "Listing Tags": the ``n``/``last`` query and the ``Link`` header of the next page).
        """
        return self._list_tags(repository, wait_limits=True)

    def _list_tags(self, repository: ImageRef, *, wait_limits: bool) -> list[str]:
        ep = self._endpoint(repository.registry)
        scopes = (f"repository:{repository.repository}:pull",)
        url: str | None = f"{ep.base}/v2/{repository.repository}/tags/list?n={self._tags_page_size}"
        tags: list[str] = []
        while url is not None:
            page_url = url

            def page(page_url: str = page_url) -> tuple[list[str], str | None]:
                response = self._request(ep, "GET", page_url, scopes=scopes)
                with closing(response):
                    if response.status_code == 404:
                        raise ManifestUnknown(
                            f"repository '{repository.repository}' does not exist on registry "
                            f"{repository.registry}; check the repository name of the rule"
                        )
                    self._expect(response, (200,), ep, f"listing tags of {repository.name}")
                    body = response.json()
                    next_link = response.links.get("next", {}).get("url")
                names = body.get("tags") if isinstance(body, dict) else None
                return (
                    [str(t) for t in names or []],
                    urljoin(page_url, next_link) if next_link else None,
                )

            names, url = self._retry(
                f"listing tags of {repository.name}", page, wait_limits=wait_limits
            )
            tags.extend(names)
        return tags

    def poll_digest(self, ref: ImageRef) -> PolledDigest:
        """One HEAD for the digest of ``ref``; a ``429`` raises :class:`RateLimited` at once.

        Without a ``Docker-Content-Digest`` header the manifest is fetched once to hash it
        (some registries omit it; every registry the distribution spec describes sends it).
        """
        ep = self._endpoint(ref.registry)
        digest, spent = self._retry(
            f"polling {ref}",
            lambda: self._head_answer(ep, ref.repository, ref.reference),
            wait_limits=False,
        )
        if digest is None:
            raise ManifestUnknown(
                f"{ref} does not exist: registry {ref.registry} has no manifest "
                f"'{ref.reference}' in repository '{ref.repository}'. Check the tag for typos, "
                "and that the image was not deleted upstream."
            )
        return PolledDigest(digest, spent)

    def poll_tags(self, repository: ImageRef) -> list[str]:
        """:meth:`list_tags`, raising :class:`RateLimited` at the first ``429``."""
        return self._list_tags(repository, wait_limits=False)

    def check_push(self, target: ImageRef) -> None:
        """Start a blob upload in ``target``'s repository and cancel it: proves push rights.

        ``POST /v2/<name>/blobs/uploads/`` (OCI distribution spec, endpoint end-4a: 202 and a
        ``Location``) asks for the push access every blob upload and manifest ``PUT`` of a
        promotion asks for, with the same credentials and token scope. The session is then
        cancelled with ``DELETE`` on its ``Location`` (the Docker Registry HTTP API's "Cancel
        blob upload", 204; distribution implements it, the OCI spec does not list it), so
        nothing is written to the repository. A cancel that fails is ignored: registries
        expire abandoned upload sessions (distribution's upload purging).
        """
        ep = self._endpoint(target.registry)
        repo = target.repository
        push = (f"repository:{repo}:pull,push",)
        uploads = f"{ep.base}/v2/{repo}/blobs/uploads/"
        what = f"checking that {target.name} takes a push"

        def start() -> str:
            with closing(self._request(ep, "POST", uploads, scopes=push)) as response:
                self._expect(response, (202,), ep, f"{what} (starting an upload)")
                return self._location(ep, response)

        location = self._retry(what, start)
        try:
            with closing(self._request(ep, "DELETE", location, scopes=push)):
                pass
        except (_Transient, RegistryError):
            pass

    def copy(
        self,
        source: ImageRef,
        target: ImageRef,
        *,
        immutable_tags: Sequence[str] = (),
        tags: Sequence[str] = (),
        progress: ProgressCallback | None = None,
    ) -> CopyReport:
        """:meth:`gate.ports.Registry.copy` over the distribution API: blobs stream from source
        to target, are skipped when the target has them and mounted within one registry."""
        if source.digest is None:
            raise InvalidReference(
                f"cannot copy {source}: the source must be pinned by digest; "
                "resolve the tag first and copy registry/repository@sha256:..."
            )
        digest = source.digest
        src = self._endpoint(source.registry)
        dst = self._endpoint(target.registry)
        target_repo = target.repository

        # Immutable tags are checked before any write: a conflict leaves the target untouched.
        present: set[str] = set()
        for tag in immutable_tags:
            current = self._retry(
                f"checking tag {tag} of {target.name}", self._head_fn(dst, target_repo, tag)
            )
            if current is None:
                continue
            if current != digest:
                raise Conflict(
                    f"tag '{tag}' of {target.name} already points at {current}, not {digest}; "
                    "immutable tags are never moved: use a new run-ID tag (or delete the "
                    "tag on purpose if it is wrong)"
                )
            present.add(tag)

        stats = _Stats()
        data, media_type = self._copy_manifest(
            src, source.repository, dst, target_repo, digest, stats, progress
        )

        written: list[str] = []
        for tag in (*immutable_tags, *tags):
            if tag in present:
                written.append(tag)
                continue
            self._retry(
                f"tagging {target.name}:{tag}",
                self._put_manifest_fn(dst, target_repo, tag, data, media_type),
            )
            written.append(tag)
        return CopyReport(
            digest=digest,
            manifests=stats.manifests,
            blobs_copied=stats.blobs_copied,
            blobs_skipped=stats.blobs_skipped,
            blobs_mounted=stats.blobs_mounted,
            bytes_copied=stats.bytes_copied,
            tags=tuple(written),
        )

    # -- artifacts (attestations): small blobs and manifests by value -----------------------

    def push_blob(self, repository: ImageRef, data: bytes) -> str:
        """Upload ``data`` as a blob of ``repository`` (monolithic POST + PUT); its digest.

        OCI distribution spec, "Pushing a blob monolithically" (POST then PUT ``?digest=``);
        a blob already there is not sent again.
        """
        ep = self._endpoint(repository.registry)
        repo = repository.repository
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        push = (f"repository:{repo}:pull,push",)

        def attempt() -> None:
            blob_url = f"{ep.base}/v2/{repo}/blobs/{digest}"
            with closing(self._request(ep, "HEAD", blob_url, scopes=push)) as head:
                if head.status_code == 200:
                    return
            uploads = f"{ep.base}/v2/{repo}/blobs/uploads/"
            with closing(self._request(ep, "POST", uploads, scopes=push)) as started:
                self._expect(started, (202,), ep, f"starting an upload to {repo}")
                location = self._location(ep, started)
            with closing(
                self._request(
                    ep,
                    "PUT",
                    _append_query(location, "digest", digest),
                    scopes=push,
                    headers={"Content-Type": "application/octet-stream"},
                    content=data,
                )
            ) as put:
                self._expect(put, (201,), ep, f"uploading blob {digest} to {repo}")

        self._retry(f"uploading a blob to {repository.name}", attempt)
        return digest

    def put_manifest(
        self, repository: ImageRef, reference: str, data: bytes, media_type: str
    ) -> str:
        """Write manifest ``data`` as ``reference`` (a tag or its digest); return its digest."""
        ep = self._endpoint(repository.registry)
        self._retry(
            f"writing {repository.name}:{reference}",
            self._put_manifest_fn(ep, repository.repository, reference, data, media_type),
        )
        return "sha256:" + hashlib.sha256(data).hexdigest()

    def fetch_manifest(self, repository: ImageRef, reference: str) -> tuple[bytes, str] | None:
        """The bytes and media type of manifest ``reference``, None if there is none.

        A manifest fetched by digest is checked against it.
        """
        ep = self._endpoint(repository.registry)
        repo = repository.repository
        try:
            data, media_type = self._retry(
                f"fetching {repository.name}:{reference}",
                lambda: self._get_manifest(ep, repo, reference),
            )
        except ManifestUnknown:
            return None
        if _DIGEST.match(reference) and not _check_digest(data, reference):
            raise RegistryError(
                f"registry {ep.name} served {repository.name}@{reference} with content that "
                "does not match that digest; refusing it"
            )
        return data, media_type

    def fetch_blob(self, repository: ImageRef, digest: str, *, limit: int = 4 << 20) -> bytes:
        """A small blob of ``repository``, checked against ``digest`` (at most ``limit`` bytes)."""
        ep = self._endpoint(repository.registry)
        repo = repository.repository
        if not _DIGEST.match(digest):
            raise RegistryError(f"{digest!r} is not a digest")

        def attempt() -> bytes:
            url = f"{ep.base}/v2/{repo}/blobs/{digest}"
            response = self._request(
                ep, "GET", url, scopes=(f"repository:{repo}:pull",), follow_redirects=True
            )
            with closing(response):
                self._expect(response, (200,), ep, f"reading blob {digest} of {repo}")
                data = response.read()
            if len(data) > limit:
                raise RegistryError(f"blob {digest} of {repository.name} is over {limit} bytes")
            return data

        data = self._retry(f"reading blob {digest} of {repository.name}", attempt)
        if not _check_digest(data, digest):
            raise RegistryError(
                f"registry {ep.name} served blob {digest} of {repository.name} with content "
                "that does not match its digest; refusing it"
            )
        return data

    def referrers(self, subject: ImageRef) -> bytes | None:
        """The referrers index of ``subject`` (repository @ digest) from the referrers API.

        ``GET /v2/<name>/referrers/<digest>`` (OCI distribution spec v1.1, "Listing Referrers"):
        a registry that supports it answers 200 with an image index, even an empty one; 404
        means it does not (the caller falls back to the referrers tag schema).
        """
        ep = self._endpoint(subject.registry)
        repo = subject.repository
        assert subject.digest is not None
        url = f"{ep.base}/v2/{repo}/referrers/{subject.digest}"

        def attempt() -> bytes | None:
            response = self._request(
                ep,
                "GET",
                url,
                scopes=(f"repository:{repo}:pull",),
                headers={"Accept": OCI_INDEX},
            )
            with closing(response):
                if response.status_code == 404:
                    return None
                self._expect(response, (200,), ep, f"listing referrers of {subject}")
                return response.read()

        return self._retry(f"listing referrers of {subject}", attempt)

    # -- copy internals --------------------------------------------------------------------

    def _copy_manifest(
        self,
        src: _Endpoint,
        src_repo: str,
        dst: _Endpoint,
        dst_repo: str,
        digest: str,
        stats: _Stats,
        progress: ProgressCallback | None,
    ) -> tuple[bytes, str]:
        """Copy one manifest (children or blobs first) by digest; return its bytes and type."""
        where = f"{src.name}/{src_repo}@{digest}"
        data, media_type = self._retry(
            f"fetching {where}", lambda: self._get_manifest(src, src_repo, digest)
        )
        if not _check_digest(data, digest):
            # Never promote bytes that are not the digest that was validated.
            raise RegistryError(
                f"registry {src.name} served a manifest for {where} whose content does not "
                "match that digest; refusing to copy it. The registry or a proxy in between "
                "is corrupting content: report it and retry once it is fixed."
            )
        manifest = json.loads(data)
        media_type = str(manifest.get("mediaType") or media_type)
        already = self._retry(
            f"checking {dst.name}/{dst_repo}@{digest}",
            self._head_fn(dst, dst_repo, digest),
        )
        if media_type in INDEX_TYPES:
            # An index is copied whole: every child (recursively) before the index itself.
            for child in manifest.get("manifests") or []:
                self._copy_manifest(
                    src, src_repo, dst, dst_repo, str(child["digest"]), stats, progress
                )
        elif media_type in IMAGE_TYPES:
            if already is not None:
                # The registry checked the blobs of this manifest when it was pushed.
                stats.blobs_skipped += 1 + len(manifest.get("layers") or [])
                return data, media_type
            descriptors = [manifest["config"], *(manifest.get("layers") or [])]
            for descriptor in descriptors:
                if descriptor.get("mediaType") in _FOREIGN_LAYER_TYPES:
                    continue
                self._copy_blob(src, src_repo, dst, dst_repo, descriptor, stats, progress)
        else:
            raise RegistryError(
                f"{where} has media type '{media_type}', which the gate cannot copy; "
                f"only {', '.join(MANIFEST_TYPES)} are supported"
            )
        if already is None:
            self._retry(
                f"writing {dst.name}/{dst_repo}@{digest}",
                self._put_manifest_fn(dst, dst_repo, digest, data, media_type),
            )
            stats.manifests += 1
        return data, media_type

    def _copy_blob(
        self,
        src: _Endpoint,
        src_repo: str,
        dst: _Endpoint,
        dst_repo: str,
        descriptor: Mapping[str, Any],
        stats: _Stats,
        progress: ProgressCallback | None,
    ) -> None:
        digest = str(descriptor["digest"])
        size = int(descriptor["size"])
        if not _DIGEST.match(digest):
            raise RegistryError(
                f"a manifest of {src.name}/{src_repo} names a bad digest {digest!r}"
            )
        what = f"copying blob {digest} to {dst.name}/{dst_repo}"
        outcome = self._retry(
            what, lambda: self._transfer_blob(src, src_repo, dst, dst_repo, digest, size, progress)
        )
        if outcome == "skipped":
            stats.blobs_skipped += 1
        elif outcome == "mounted":
            stats.blobs_mounted += 1
        else:
            stats.blobs_copied += 1
            stats.bytes_copied += size

    def _transfer_blob(
        self,
        src: _Endpoint,
        src_repo: str,
        dst: _Endpoint,
        dst_repo: str,
        digest: str,
        size: int,
        progress: ProgressCallback | None,
    ) -> str:
        """One attempt at a blob: skip, mount or stream. Every attempt starts from scratch."""
        push = (f"repository:{dst_repo}:pull,push",)
        blob_url = f"{dst.base}/v2/{dst_repo}/blobs/{digest}"
        with closing(self._request(dst, "HEAD", blob_url, scopes=push)) as head:
            if head.status_code == 200:
                return "skipped"
            if head.status_code != 404:
                self._expect(head, (200, 404), dst, f"checking blob {digest} in {dst_repo}")

        uploads = f"{dst.base}/v2/{dst_repo}/blobs/uploads/"
        if src.host == dst.host and src.base == dst.base and src_repo != dst_repo:
            scopes = (*push, f"repository:{src_repo}:pull")
            mount_url = f"{uploads}?mount={quote(digest, safe=':')}&from={quote(src_repo)}"
            with closing(self._request(dst, "POST", mount_url, scopes=scopes)) as response:
                if response.status_code == 201:
                    return "mounted"
                self._expect(response, (202,), dst, f"mounting blob {digest} into {dst_repo}")
                location = self._location(dst, response)
        else:
            with closing(self._request(dst, "POST", uploads, scopes=push)) as response:
                self._expect(response, (202,), dst, f"starting an upload to {dst_repo}")
                location = self._location(dst, response)

        source_url = f"{src.base}/v2/{src_repo}/blobs/{digest}"
        pull = (f"repository:{src_repo}:pull",)
        with closing(
            self._request(src, "GET", source_url, scopes=pull, stream=True, follow_redirects=True)
        ) as body:
            if body.status_code == 404:
                raise RegistryError(
                    f"blob {digest} is missing from {src.name}/{src_repo} although its manifest "
                    "names it; the source image is broken upstream: pick another digest"
                )
            self._expect(body, (200,), src, f"reading blob {digest} from {src_repo}")
            chunks = self._stream(body, src, digest, size, progress)
            with closing(
                self._request(
                    dst,
                    "PUT",
                    _append_query(location, "digest", digest),
                    scopes=push,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(size),
                    },
                    content=chunks,
                )
            ) as put:
                self._expect(put, (201,), dst, f"uploading blob {digest} to {dst_repo}")
        return "copied"

    def _stream(
        self,
        body: httpx.Response,
        src: _Endpoint,
        digest: str,
        size: int,
        progress: ProgressCallback | None,
    ) -> Iterator[bytes]:
        """The source blob as bounded chunks, checked against its declared size."""
        done = reported = 0
        if progress is not None:
            progress(digest, 0, size)
        # iter_raw: the bytes exactly as stored; a Content-Encoding must not be undone.
        for chunk in body.iter_raw(self._chunk_size):
            done += len(chunk)
            if done > size:
                raise RegistryError(
                    f"blob {digest} from {src.name} is longer than the {size} bytes its "
                    "manifest declares; the source image is inconsistent: pick another digest"
                )
            # At most one report per MiB: a progress bar need not redraw per network read.
            if progress is not None and (done - reported >= _PROGRESS_STEP or done == size):
                progress(digest, done, size)
                reported = done
            yield chunk
        if done != size:
            raise _Transient(src.host, f"blob {digest} ended after {done} of {size} bytes")

    def _location(self, ep: _Endpoint, response: httpx.Response) -> str:
        location = str(response.headers.get("Location", ""))
        if not location:
            raise RegistryError(
                f"registry {ep.name} started an upload without a Location header; "
                "it does not follow the distribution API"
            )
        # Registries may answer with a relative Location (``http.relativeurls``).
        return urljoin(f"{ep.base}/", location)

    def _get_manifest(self, ep: _Endpoint, repo: str, reference: str) -> tuple[bytes, str]:
        url = f"{ep.base}/v2/{repo}/manifests/{reference}"
        response = self._request(
            ep, "GET", url, scopes=(f"repository:{repo}:pull",), headers={"Accept": _ACCEPT}
        )
        with closing(response):
            if response.status_code == 404:
                raise ManifestUnknown(
                    f"{ep.name}/{repo}@{reference} does not exist; check the digest and that "
                    "the image was not deleted from the source registry"
                )
            self._expect(response, (200,), ep, f"fetching manifest {repo}@{reference}")
            data = response.read()
        if len(data) > _MAX_MANIFEST_BYTES:
            raise RegistryError(
                f"manifest {ep.name}/{repo}@{reference} is larger than 4 MiB; refusing it"
            )
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return data, media_type

    def _head_fn(self, ep: _Endpoint, repo: str, reference: str) -> Callable[[], str | None]:
        return lambda: self._head(ep, repo, reference)

    def _head(self, ep: _Endpoint, repo: str, reference: str) -> str | None:
        """The digest of ``repo:reference`` (or ``@reference``), None if it does not exist."""
        return self._head_answer(ep, repo, reference)[0]

    def _head_answer(self, ep: _Endpoint, repo: str, reference: str) -> tuple[str | None, str]:
        """:meth:`_head`, and the spent-quota note of the answer (:func:`quota_spent`)."""
        url = f"{ep.base}/v2/{repo}/manifests/{reference}"
        scopes = (f"repository:{repo}:pull",)
        with closing(
            self._request(ep, "HEAD", url, scopes=scopes, headers={"Accept": _ACCEPT})
        ) as head:
            if head.status_code == 404:
                return None, ""
            self._expect(head, (200,), ep, f"looking up {repo}:{reference}")
            digest = str(head.headers.get("Docker-Content-Digest", ""))
            spent = quota_spent(head.headers)
        if _DIGEST.match(reference):
            return reference, spent
        if digest and _DIGEST.match(digest):
            return digest, spent
        # Some registries omit the header: the digest is the sha256 of the manifest bytes.
        data, _ = self._get_manifest(ep, repo, reference)
        return "sha256:" + hashlib.sha256(data).hexdigest(), spent

    def _put_manifest_fn(
        self, ep: _Endpoint, repo: str, reference: str, data: bytes, media_type: str
    ) -> Callable[[], None]:
        def put() -> None:
            url = f"{ep.base}/v2/{repo}/manifests/{reference}"
            response = self._request(
                ep,
                "PUT",
                url,
                scopes=(f"repository:{repo}:pull,push",),
                headers={"Content-Type": media_type},
                content=data,
            )
            with closing(response):
                self._expect(response, (200, 201), ep, f"writing manifest {repo}:{reference}")

        return put

    # -- HTTP, auth, retries ---------------------------------------------------------------

    def _endpoint(self, registry: str) -> _Endpoint:
        settings = self._hosts.get(registry)
        host = registry
        if registry in _DOCKER_HUB:
            host = "registry-1.docker.io"
            if settings is None:
                settings = next(
                    (self._hosts[h] for h in sorted(_DOCKER_HUB) if h in self._hosts), None
                )
        settings = settings or HostSettings()
        scheme = "http" if settings.insecure else "https"
        return _Endpoint(name=registry, host=host, base=f"{scheme}://{host}", settings=settings)

    def _retry(self, what: str, attempt: Callable[[], T], *, wait_limits: bool = True) -> T:
        """Run ``attempt`` until it succeeds, retrying transient failures a bounded number of
        times with exponential backoff and jitter (or the server's ``Retry-After``).

        ``wait_limits=False`` (polls) raises :class:`RateLimited` at the first ``429`` instead.
        """
        for number in range(1, self._max_attempts + 1):
            try:
                return attempt()
            except _Transient as exc:
                if exc.status == 429 and not wait_limits:
                    after = "" if exc.retry_after is None else f" for {exc.retry_after:g} s"
                    raise RateLimited(
                        f"{what}: registry {exc.host} answered HTTP 429 (too many requests), "
                        f"asking for a pause{after}; polling it resumes after that",
                        registry=exc.host,
                        retry_after=exc.retry_after,
                    ) from None
                if number == self._max_attempts:
                    raise RegistryUnavailable(
                        f"{what} failed: registry {exc.host} answered {exc.reason} on all "
                        f"{self._max_attempts} attempts. Check that {exc.host} is reachable "
                        "from here (network, proxy, DNS, TLS) and healthy, then retry later."
                    ) from None
                if exc.retry_after is not None:
                    delay = min(exc.retry_after, self._retry_after_max)
                else:
                    ceiling = min(self._backoff_max, self._backoff_initial * 2 ** (number - 1))
                    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _request(
        self,
        ep: _Endpoint,
        method: str,
        url: str,
        *,
        scopes: tuple[str, ...],
        headers: Mapping[str, str] | None = None,
        content: bytes | Iterator[bytes] | None = None,
        stream: bool = False,
        follow_redirects: bool = False,
    ) -> httpx.Response:
        """Send one request, answering an auth challenge once. Transient failures raise
        :class:`_Transient`; any other status is returned for the caller to judge."""
        replayable = content is None or isinstance(content, bytes)
        for round_ in range(2):
            request_headers = dict(headers or {})
            authorization = self._authorization(ep, scopes)
            if authorization is not None:
                request_headers["Authorization"] = authorization
            request = self._client.build_request(
                method, url, headers=request_headers, content=content
            )
            try:
                # Streamed so that a blob GET is read chunk by chunk; small bodies are read
                # by the caller (``response.read()``) or discarded by closing.
                response = self._client.send(
                    request, stream=True, follow_redirects=follow_redirects
                )
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                raise _Transient(ep.host, f"{type(exc).__name__} ({exc})") from exc
            if response.status_code in _RETRY_STATUSES:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                response.close()
                raise _Transient(
                    ep.host, f"HTTP {response.status_code}", retry_after, response.status_code
                )
            if response.status_code != 401:
                if not stream:
                    try:
                        response.read()
                    except (httpx.TimeoutException, httpx.NetworkError) as exc:
                        response.close()
                        raise _Transient(ep.host, f"{type(exc).__name__} ({exc})") from exc
                return response
            challenge = response.headers.get("WWW-Authenticate", "")
            response.close()
            if round_ == 0 and not replayable:
                # The body was (partly) consumed: drop the token and restart the whole upload.
                self._forget(ep, scopes)
                raise _Transient(ep.host, "HTTP 401 during an upload (token expired?)")
            if round_ == 1 or (authorization is not None and not challenge):
                break
            self._forget(ep, scopes)
            self._answer_challenge(ep, challenge, scopes)
        raise self._refused(ep, scopes)

    def _authorization(self, ep: _Endpoint, scopes: tuple[str, ...]) -> str | None:
        if ep.host in self._basic_hosts:
            return self._basic(ep)
        key = (ep.host, tuple(sorted(scopes)))
        token = self._tokens.get(key)
        if token is not None and token.expires_at > time.monotonic():
            return f"Bearer {token.value}"
        realm = self._bearer_realms.get(ep.host)
        if realm is not None:
            # The host is known to want bearer tokens: fetch one up front, saving a 401.
            self._tokens[key] = self._fetch_token(ep, realm, scopes)
            return f"Bearer {self._tokens[key].value}"
        return None

    def _forget(self, ep: _Endpoint, scopes: tuple[str, ...]) -> None:
        self._tokens.pop((ep.host, tuple(sorted(scopes))), None)

    def _basic(self, ep: _Endpoint) -> str:
        pair = f"{ep.settings.username}:{ep.settings.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    def _answer_challenge(self, ep: _Endpoint, header: str, scopes: tuple[str, ...]) -> None:
        scheme, params = parse_challenge(header)
        if scheme == "bearer" and params.get("realm"):
            realm = {"realm": params["realm"], "service": params.get("service", "")}
            self._bearer_realms[ep.host] = realm
            key = (ep.host, tuple(sorted(scopes)))
            # The challenge names the scope this request needs; ask for ours and that one.
            wanted = scopes
            if params.get("scope") and params["scope"] not in scopes:
                wanted = (*scopes, params["scope"])
            self._tokens[key] = self._fetch_token(ep, realm, wanted)
        elif scheme == "basic":
            if not ep.has_credentials:
                raise self._needs_credentials(ep, scopes)
            self._basic_hosts.add(ep.host)
        else:
            raise AuthenticationError(
                f"registry {ep.name} asked for authentication the gate does not support "
                f"('{scheme or 'no challenge'}'); only bearer-token and basic auth are supported"
            )

    def _fetch_token(
        self, ep: _Endpoint, realm: Mapping[str, str], scopes: tuple[str, ...]
    ) -> _Token:
        realm_url = realm["realm"]
        if (
            ep.has_credentials
            and urlsplit(realm_url).scheme != "https"
            and not ep.settings.insecure
        ):
            raise AuthenticationError(
                f"registry {ep.name} sends clients to a token service over plain HTTP "
                f"({realm_url}); the gate will not send credentials there. Use an HTTPS realm."
            )
        params: list[tuple[str, str | int | float | bool | None]] = []
        if realm.get("service"):
            params.append(("service", realm["service"]))
        params.extend(("scope", scope) for scope in scopes)
        auth = (
            httpx.BasicAuth(ep.settings.username or "", ep.settings.password or "")
            if ep.has_credentials
            else None
        )
        try:
            response = self._client.get(realm_url, params=params, auth=auth)
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            host = urlsplit(realm_url).netloc
            raise _Transient(host, f"{type(exc).__name__} at its token service") from exc
        if response.status_code in _RETRY_STATUSES:
            raise _Transient(
                urlsplit(realm_url).netloc,
                f"HTTP {response.status_code} at its token service",
                parse_retry_after(response.headers.get("Retry-After")),
            )
        if response.status_code in (401, 403):
            raise (
                self._refused(ep, scopes)
                if ep.has_credentials
                else self._needs_credentials(ep, scopes)
            )
        if response.status_code != 200:
            raise RegistryError(
                f"the token service of registry {ep.name} answered HTTP {response.status_code}"
                f" for {', '.join(scopes)}; check the registry's status"
            )
        try:
            body = response.json()
            value = str(body.get("token") or body.get("access_token") or "")
            lifetime = float(body.get("expires_in") or 60)
        except (ValueError, AttributeError):
            value, lifetime = "", 0.0
        if not value:
            raise RegistryError(
                f"the token service of registry {ep.name} answered without a token; "
                "it does not follow the distribution token API"
            )
        return _Token(value, time.monotonic() + max(lifetime - _TOKEN_MARGIN, 1.0))

    def _needs_credentials(self, ep: _Endpoint, scopes: tuple[str, ...]) -> AuthenticationError:
        return AuthenticationError(
            f"registry {ep.name} requires credentials for {', '.join(scopes)} and none are "
            f"configured; add username and password_secret for host '{ep.name}' under "
            "'registries' in the gate configuration"
        )

    def _refused(self, ep: _Endpoint, scopes: tuple[str, ...]) -> AuthenticationError:
        if not ep.has_credentials:
            return self._needs_credentials(ep, scopes)
        return AuthenticationError(
            f"registry {ep.name} refused the credentials of user '{ep.settings.username}' for "
            f"{', '.join(scopes)}; check the username and the password secret configured for "
            f"host '{ep.name}' and that the account may access that repository"
        )

    def _expect(
        self,
        response: httpx.Response,
        statuses: tuple[int, ...],
        ep: _Endpoint,
        what: str,
    ) -> None:
        """Raise the matching gate error unless ``response`` has one of ``statuses``."""
        if response.status_code in statuses:
            return
        detail = _error_detail(response)
        suffix = f" ({detail})" if detail else ""
        if response.status_code == 403:
            raise AuthenticationError(
                f"registry {ep.name} denied {what}{suffix}; check that the account configured "
                f"for host '{ep.name}' has that permission"
            )
        if response.status_code == 404:
            raise ManifestUnknown(f"{what}: registry {ep.name} answered 404 not found{suffix}")
        raise RegistryError(
            f"{what} failed: registry {ep.name} answered HTTP {response.status_code}{suffix}"
        )
