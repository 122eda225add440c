"""Blobs over the distribution API: small ones by value, layers streamed between registries.

A layer streams from source to target in bounded chunks (memory does not grow with layer
size), checked against the size its manifest declares; it is skipped when the target has it
and mounted when source and target are one registry. A blob GET follows redirects (registries
serve blobs from storage); httpx drops the ``Authorization`` header on a redirect to another
origin and the auth flow answers no challenge from there.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from typing import Literal
from urllib.parse import quote

import httpx

from gate.adapters.registry.endpoint import Endpoint, Transient
from gate.adapters.registry.http import RegistryHttp, append_query, error_detail
from gate.adapters.registry.manifests import DIGEST, check_digest
from gate.domain.ref import ImageRef
from gate.errors import GateError, RegistryError, RegistryMisbehaved
from gate.ports import ProgressCallback, Unstaged

_PROGRESS_STEP = 1024 * 1024
UNSTAGE_BUDGET_SECONDS = 30.0
"""How long removing staged blobs may take in all; what is left after that is for the
registry's garbage collection."""

Outcome = Literal["skipped", "mounted", "copied"]


class Blobs:
    """The blob and upload endpoints (``/v2/<name>/blobs/...``) of every registry.

    ``chunk_size`` re-chunks streamed blobs; None passes on the chunks the connection
    delivers (64 KiB), which is bounded and avoids copying every byte once more.
    """

    def __init__(self, http: RegistryHttp, *, chunk_size: int | None = None) -> None:
        self._http = http
        self._chunk_size = chunk_size

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
        http = self._http
        ep = http.endpoint(target.registry)
        repo = target.repository
        push = (f"repository:{repo}:pull,push",)
        uploads = f"{ep.base}/v2/{repo}/blobs/uploads/"
        what = f"checking that {target.name} takes a push"

        def start() -> str:
            with closing(http.request(ep, "POST", uploads, scopes=push)) as response:
                http.expect(response, (202,), ep, f"{what} (starting an upload)")
                return http.location(ep, response)

        location = http.retry(what, start)
        try:
            with closing(http.request(ep, "DELETE", location, scopes=push)):
                pass
        except (Transient, RegistryError):
            pass

    def push_blob(self, repository: ImageRef, data: bytes) -> str:
        """Upload ``data`` as a blob of ``repository`` (monolithic POST + PUT); its digest.

        OCI distribution spec, "Pushing a blob monolithically" (POST then PUT ``?digest=``);
        a blob already there is not sent again.
        """
        http = self._http
        ep = http.endpoint(repository.registry)
        repo = repository.repository
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        push = (f"repository:{repo}:pull,push",)

        def attempt() -> None:
            blob_url = f"{ep.base}/v2/{repo}/blobs/{digest}"
            with closing(http.request(ep, "HEAD", blob_url, scopes=push)) as head:
                if head.status_code == 200:
                    return
            uploads = f"{ep.base}/v2/{repo}/blobs/uploads/"
            with closing(http.request(ep, "POST", uploads, scopes=push)) as started:
                http.expect(started, (202,), ep, f"starting an upload to {repo}")
                location = http.location(ep, started)
            try:
                with closing(
                    http.request(
                        ep,
                        "PUT",
                        append_query(location, "digest", digest),
                        scopes=push,
                        headers={"Content-Type": "application/octet-stream"},
                        content=data,
                    )
                ) as put:
                    http.expect(put, (201,), ep, f"uploading blob {digest} to {repo}")
            except BaseException:
                self.cancel(ep, location, push)
                raise

        http.retry(f"uploading a blob to {repository.name}", attempt)
        return digest

    def delete_blobs(
        self,
        repository: ImageRef,
        digests: Sequence[str],
        *,
        budget: float = UNSTAGE_BUDGET_SECONDS,
    ) -> Unstaged:
        """Delete blobs of ``repository``, one ``DELETE`` each, within ``budget`` seconds.

        OCI distribution spec, "Deleting Blobs" (end-10, ``DELETE /v2/<name>/blobs/<digest>``):
        ``202 Accepted`` on success, ``404`` when the blob is not there, and ``400`` or ``405``
        when the registry has blob deletion disabled; a body with code ``UNSUPPORTED`` says the
        same. A registry that refuses, or answers anything else, or cannot be reached, is not
        asked again: the rest is left for its garbage collection and the result says why. The
        token scope asks for ``delete``, the action distribution's authorisation names for
        ``DELETE`` requests (registry/handlers/app.go, ``appendAccessRecords``). Nothing raises.
        """
        http = self._http
        deleted = 0
        try:
            ep = http.endpoint(repository.registry)
        except GateError as exc:
            return Unstaged(left=len(digests), note=exc.message)
        repo = repository.repository
        scopes = (f"repository:{repo}:delete",)
        ends = time.monotonic() + budget
        for n, digest in enumerate(digests):
            left = len(digests) - n
            if not DIGEST.match(digest):
                return Unstaged(deleted, left, f"{digest[:80]!r} is not a digest")
            if time.monotonic() > ends:
                return Unstaged(deleted, left, f"the {budget:g} s allowed for deleting passed")
            url = f"{ep.base}/v2/{repo}/blobs/{digest}"
            try:
                with closing(http.request(ep, "DELETE", url, scopes=scopes)) as response:
                    status, detail = response.status_code, error_detail(response)
            except (Transient, GateError) as exc:
                reason = exc.message if isinstance(exc, GateError) else exc.reason
                return Unstaged(deleted, left, f"registry {ep.name}: {reason}")
            if status in (202, 404):
                deleted += status == 202
                continue
            if status in (400, 405) or "UNSUPPORTED" in detail:
                why = f"registry {ep.name} does not delete blobs (HTTP {status})"
            else:
                why = f"registry {ep.name} answered HTTP {status} to a blob DELETE"
            return Unstaged(deleted, left, why + (f": {detail}" if detail else ""))
        return Unstaged(deleted, 0, "")

    def fetch_blob(self, repository: ImageRef, digest: str, *, limit: int = 4 << 20) -> bytes:
        """A small blob of ``repository``, checked against ``digest`` (at most ``limit`` bytes)."""
        http = self._http
        ep = http.endpoint(repository.registry)
        repo = repository.repository
        if not DIGEST.match(digest):
            raise RegistryError(f"{digest!r} is not a digest")

        def attempt() -> bytes:
            url = f"{ep.base}/v2/{repo}/blobs/{digest}"
            response = http.request(
                ep,
                "GET",
                url,
                scopes=(f"repository:{repo}:pull",),
                stream=True,
                follow_redirects=True,
            )
            with closing(response):
                http.expect(response, (200,), ep, f"reading blob {digest} of {repo}")
                data = http.read_at_most(ep, response, limit)
            if len(data) > limit:
                raise RegistryMisbehaved(
                    f"blob {digest} of {repository.name} is over {limit} bytes"
                )
            return data

        data = http.retry(f"reading blob {digest} of {repository.name}", attempt)
        if not check_digest(data, digest):
            raise RegistryError(
                f"registry {ep.name} served blob {digest} of {repository.name} with content "
                "that does not match its digest; refusing it"
            )
        return data

    def transfer(
        self,
        src: Endpoint,
        src_repo: str,
        dst: Endpoint,
        dst_repo: str,
        digest: str,
        size: int,
        progress: ProgressCallback | None,
    ) -> Outcome:
        """One attempt at a blob: skip, mount or stream. Every attempt starts from scratch."""
        http = self._http
        push = (f"repository:{dst_repo}:pull,push",)
        blob_url = f"{dst.base}/v2/{dst_repo}/blobs/{digest}"
        with closing(http.request(dst, "HEAD", blob_url, scopes=push)) as head:
            if head.status_code == 200:
                return "skipped"
            if head.status_code != 404:
                http.expect(head, (200, 404), dst, f"checking blob {digest} in {dst_repo}")

        uploads = f"{dst.base}/v2/{dst_repo}/blobs/uploads/"
        if src.host == dst.host and src.base == dst.base and src_repo != dst_repo:
            scopes = (*push, f"repository:{src_repo}:pull")
            mount_url = f"{uploads}?mount={quote(digest, safe=':')}&from={quote(src_repo)}"
            with closing(http.request(dst, "POST", mount_url, scopes=scopes)) as response:
                if response.status_code == 201:
                    return "mounted"
                http.expect(response, (202,), dst, f"mounting blob {digest} into {dst_repo}")
                location = http.location(dst, response)
        else:
            with closing(http.request(dst, "POST", uploads, scopes=push)) as response:
                http.expect(response, (202,), dst, f"starting an upload to {dst_repo}")
                location = http.location(dst, response)
        try:
            self._stream_into(src, src_repo, dst, dst_repo, digest, size, location, progress)
        except BaseException:
            # The target would keep the open session (and its partial bytes) until it purges
            # stale uploads: cancel it now. Whatever failed is what the caller hears about.
            self.cancel(dst, location, push)
            raise
        return "copied"

    def cancel(self, ep: Endpoint, location: str, scopes: tuple[str, ...]) -> None:
        """Cancel the upload session at ``location`` (``DELETE``, the Docker Registry HTTP
        API's "Cancel blob upload"); a cancel that fails is ignored, registries purge stale
        sessions themselves."""
        try:
            with closing(self._http.request(ep, "DELETE", location, scopes=scopes)):
                pass
        except (Transient, RegistryError):
            pass

    def _stream_into(
        self,
        src: Endpoint,
        src_repo: str,
        dst: Endpoint,
        dst_repo: str,
        digest: str,
        size: int,
        location: str,
        progress: ProgressCallback | None,
    ) -> None:
        """Stream blob ``digest`` from the source into the upload session at ``location``."""
        http = self._http
        push = (f"repository:{dst_repo}:pull,push",)
        source_url = f"{src.base}/v2/{src_repo}/blobs/{digest}"
        pull = (f"repository:{src_repo}:pull",)
        with closing(
            http.request(
                src,
                "GET",
                source_url,
                scopes=pull,
                stream=True,
                follow_redirects=True,
                blob_size=size,
            )
        ) as body:
            if body.status_code == 404:
                raise RegistryError(
                    f"blob {digest} is missing from {src.name}/{src_repo} although its manifest "
                    "names it; the source image is broken upstream: pick another digest"
                )
            http.expect(body, (200,), src, f"reading blob {digest} from {src_repo}")
            declared = body.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > size:
                raise RegistryMisbehaved(
                    f"registry {src.name} answered blob {digest} of {src_repo} with "
                    f"{declared} bytes, more than the {size} its manifest declares; the source "
                    "image is inconsistent: pick another digest"
                )
            chunks = self._stream(body, src, digest, size, progress)
            with closing(
                http.request(
                    dst,
                    "PUT",
                    append_query(location, "digest", digest),
                    scopes=push,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(size),
                    },
                    content=chunks,
                )
            ) as put:
                http.expect(put, (201,), dst, f"uploading blob {digest} to {dst_repo}")

    def _stream(
        self,
        body: httpx.Response,
        src: Endpoint,
        digest: str,
        size: int,
        progress: ProgressCallback | None,
    ) -> Iterator[bytes]:
        """The source blob as bounded chunks, checked against its declared size and hashed as
        it passes; the last chunk is held back until the hash matches ``digest``, so the target
        never receives a whole blob that is not the one the manifest names."""
        algorithm, _, expected = digest.partition(":")
        hasher = hashlib.new(algorithm)
        done = reported = 0
        if progress is not None:
            progress(digest, 0, size)
        # iter_raw: the bytes exactly as stored; a Content-Encoding must not be undone.
        for chunk in body.iter_raw(self._chunk_size):
            done += len(chunk)
            if done > size:
                raise RegistryMisbehaved(
                    f"blob {digest} from {src.name} is longer than the {size} bytes its "
                    "manifest declares; the source image is inconsistent: pick another digest"
                )
            # At most one report per MiB: a progress bar need not redraw per network read.
            if progress is not None and (done - reported >= _PROGRESS_STEP or done == size):
                progress(digest, done, size)
                reported = done
            hasher.update(chunk)
            if done == size and hasher.hexdigest() != expected:
                raise RegistryMisbehaved(
                    f"registry {src.name} served blob {digest} with content that does not "
                    "match that digest; refusing it. The registry or a proxy in between is "
                    "corrupting content: report it and retry once it is fixed."
                )
            yield chunk
        if done != size:
            raise Transient(src.host, f"blob {digest} ended after {done} of {size} bytes")
