"""A whole image from one repository to another, by digest: the OCI client's ``copy``.

Immutable tags are checked before any write; then blobs (or, for an index, every child
manifest with its blobs), then the manifest with its bytes unchanged; then the tags.

What the source serves is bounded before it is followed: indexes nest at most
:data:`MAX_INDEX_DEPTH` deep, name at most :data:`MAX_CHILDREN` children, a copy reads at most
:data:`MAX_MANIFESTS` distinct manifests, and a child named twice is fetched once. Every
digest and size is checked against the OCI grammar before it is used (in a URL, as a bound).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Unpack

from gate.adapters.registry.blobs import Blobs
from gate.adapters.registry.endpoint import Endpoint
from gate.adapters.registry.http import RegistryHttp
from gate.adapters.registry.manifests import (
    IMAGE_TYPES,
    INDEX_TYPES,
    MANIFEST_TYPES,
    Manifests,
    check_digest,
)
from gate.domain.ref import ImageRef, parse_digest
from gate.errors import Conflict, InvalidReference, RegistryError, RegistryMisbehaved
from gate.ports import CopyOptions, CopyReport, ProgressCallback, copy_options

# Foreign (e.g. Windows base) layers live outside the registry; they are never copied.
_FOREIGN_LAYER_TYPES = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)


MAX_INDEX_DEPTH = 4
"""How deep indexes may nest (an index of images is depth 1)."""
MAX_CHILDREN = 1000
"""The most children one index may name (the largest public multi-platform indexes, with an
attestation per platform, name a few dozen)."""
MAX_MANIFESTS = 1000
"""The most distinct manifests the indexes of one copy may name (counted as they are read,
so a tree of indexes too large is refused before most of it is fetched)."""


@dataclass
class _Stats:
    """Counters of one copy (mutable while the copy runs, frozen into a CopyReport), and the
    manifests it has read (each fetched once)."""

    manifests: int = 0
    blobs_copied: int = 0
    blobs_skipped: int = 0
    blobs_mounted: int = 0
    bytes_copied: int = 0
    read: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    named: set[str] = field(default_factory=set)
    # staging: blobs only, no manifest written; each blob written is reported as it lands
    stage_only: bool = False
    on_uploaded: Callable[[str], None] | None = None


def _malformed(where: str, what: str) -> RegistryMisbehaved:
    return RegistryMisbehaved(
        f"the source registry served {where} with {what}; the gate does not copy a manifest "
        "it cannot read as the OCI image spec describes. Pick another digest, or report it "
        "to the image's publisher."
    )


def _object(data: bytes, where: str) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError):
        raise _malformed(where, "content that is not JSON") from None
    if not isinstance(manifest, dict):
        raise _malformed(where, "JSON that is not an object")
    return manifest


def _digest_of(descriptor: object, where: str) -> str:
    digest = descriptor.get("digest") if isinstance(descriptor, dict) else None
    if not isinstance(digest, str):
        raise _malformed(where, f"a descriptor without a digest ({str(descriptor)[:100]!r})")
    try:
        return parse_digest(digest)
    except InvalidReference:
        raise _malformed(where, f"a descriptor whose digest {digest[:150]!r} is not one") from None


def _size_of(descriptor: Mapping[str, Any], where: str) -> int:
    size = descriptor.get("size")
    # bool is an int to Python, never a size to the spec
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _malformed(where, f"a descriptor whose size {str(size)[:50]!r} is no byte count")
    return size


def _list_of(manifest: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = manifest.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _malformed(where, f"'{key}' that is not a list")
    return value


class Copier:
    """Copies images between repositories of any registries the client reaches."""

    def __init__(self, http: RegistryHttp, manifests: Manifests, blobs: Blobs) -> None:
        self._http = http
        self._manifests = manifests
        self._blobs = blobs

    def copy(
        self, source: ImageRef, target: ImageRef, **options: Unpack[CopyOptions]
    ) -> CopyReport:
        """:meth:`gate.ports.Registry.copy` over the distribution API."""
        immutable_tags, tags, progress = copy_options(options)
        if source.digest is None:
            raise InvalidReference(
                f"cannot copy {source}: the source must be pinned by digest; "
                "resolve the tag first and copy registry/repository@sha256:..."
            )
        http, manifests = self._http, self._manifests
        digest = source.digest
        src = http.endpoint(source.registry)
        dst = http.endpoint(target.registry)
        target_repo = target.repository

        # Immutable tags are checked before any write: a conflict leaves the target untouched.
        present: set[str] = set()
        for tag in immutable_tags:
            current = http.retry(
                f"checking tag {tag} of {target.name}",
                partial(manifests.head, dst, target_repo, tag),
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
            http.retry(
                f"tagging {target.name}:{tag}",
                partial(manifests.put, dst, target_repo, tag, data, media_type),
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

    def stage(
        self,
        source: ImageRef,
        target: ImageRef,
        *,
        progress: ProgressCallback | None = None,
        on_uploaded: Callable[[str], None] | None = None,
    ) -> CopyReport:
        """:meth:`gate.ports.BlobStager.stage`: the blobs of :meth:`copy`, in the same order,
        skipped, mounted or streamed and checked the same way; no manifest and no tag."""
        if source.digest is None:
            raise InvalidReference(
                f"cannot stage {source}: the source must be pinned by digest; "
                "resolve the tag first and stage registry/repository@sha256:..."
            )
        stats = _Stats(stage_only=True, on_uploaded=on_uploaded)
        self._copy_manifest(
            self._http.endpoint(source.registry),
            source.repository,
            self._http.endpoint(target.registry),
            target.repository,
            source.digest,
            stats,
            progress,
        )
        return CopyReport(
            digest=source.digest,
            blobs_copied=stats.blobs_copied,
            blobs_skipped=stats.blobs_skipped,
            blobs_mounted=stats.blobs_mounted,
            bytes_copied=stats.bytes_copied,
        )

    def _copy_manifest(
        self,
        src: Endpoint,
        src_repo: str,
        dst: Endpoint,
        dst_repo: str,
        digest: str,
        stats: _Stats,
        progress: ProgressCallback | None,
        depth: int = 0,
    ) -> tuple[bytes, str]:
        """Copy one manifest (children or blobs first) by digest; return its bytes and type."""
        http, manifests = self._http, self._manifests
        where = f"{src.name}/{src_repo}@{digest}"
        if digest in stats.read:
            return stats.read[digest]  # named twice: copied the first time
        data, media_type = http.retry(
            f"fetching {where}", lambda: manifests.get(src, src_repo, digest)
        )
        if not check_digest(data, digest):
            # Never promote bytes that are not the digest that was validated.
            raise RegistryError(
                f"registry {src.name} served a manifest for {where} whose content does not "
                "match that digest; refusing to copy it. The registry or a proxy in between "
                "is corrupting content: report it and retry once it is fixed."
            )
        manifest = _object(data, where)
        media_type = str(manifest.get("mediaType") or media_type)
        stats.read[digest] = (data, media_type)
        if media_type in INDEX_TYPES:
            children = _list_of(manifest, "manifests", where)
            if depth + 1 > MAX_INDEX_DEPTH:
                raise RegistryMisbehaved(
                    f"{where} is an index nested more than {MAX_INDEX_DEPTH} deep; the gate "
                    "copies no deeper chain of indexes. Pick another digest."
                )
            if len(children) > MAX_CHILDREN:
                raise RegistryMisbehaved(
                    f"{where} is an index of {len(children)} manifests, more than the "
                    f"{MAX_CHILDREN} the gate copies. Pick another digest."
                )
            digests = [_digest_of(child, where) for child in children]
            stats.named.update(digests)
            if len(stats.named) > MAX_MANIFESTS:
                raise RegistryMisbehaved(
                    f"the indexes of the source image name more than {MAX_MANIFESTS} "
                    f"manifests (counted up to {where}); the gate copies no image that large. "
                    "Pick another digest."
                )
        elif media_type in IMAGE_TYPES:
            descriptors = [manifest.get("config"), *_list_of(manifest, "layers", where)]
            blobs = [
                (_digest_of(d, where), _size_of(d, where), d)
                for d in descriptors
                if not (isinstance(d, dict) and d.get("mediaType") in _FOREIGN_LAYER_TYPES)
            ]
        else:
            raise RegistryError(
                f"{where} has media type '{media_type}', which the gate cannot copy; "
                f"only {', '.join(MANIFEST_TYPES)} are supported"
            )
        already = http.retry(
            f"checking {dst.name}/{dst_repo}@{digest}",
            lambda: manifests.head(dst, dst_repo, digest),
        )
        if media_type in INDEX_TYPES:
            # An index is copied whole: every child (recursively) before the index itself.
            for child_digest in digests:
                self._copy_manifest(
                    src, src_repo, dst, dst_repo, child_digest, stats, progress, depth + 1
                )
        else:
            if already is not None:
                # The registry checked the blobs of this manifest when it was pushed.
                stats.blobs_skipped += len(descriptors)
                return data, media_type
            for blob_digest, size, _ in blobs:
                self._copy_blob(src, src_repo, dst, dst_repo, blob_digest, size, stats, progress)
        if already is None and not stats.stage_only:
            http.retry(
                f"writing {dst.name}/{dst_repo}@{digest}",
                lambda: manifests.put(dst, dst_repo, digest, data, media_type),
            )
            stats.manifests += 1
        return data, media_type

    def _copy_blob(
        self,
        src: Endpoint,
        src_repo: str,
        dst: Endpoint,
        dst_repo: str,
        digest: str,
        size: int,
        stats: _Stats,
        progress: ProgressCallback | None,
    ) -> None:
        what = f"copying blob {digest} to {dst.name}/{dst_repo}"
        outcome = self._http.retry(
            what,
            lambda: self._blobs.transfer(src, src_repo, dst, dst_repo, digest, size, progress),
        )
        if outcome == "skipped":
            stats.blobs_skipped += 1
            return
        if outcome == "mounted":
            stats.blobs_mounted += 1
        else:
            stats.blobs_copied += 1
            stats.bytes_copied += size
        if stats.on_uploaded is not None:
            stats.on_uploaded(digest)
