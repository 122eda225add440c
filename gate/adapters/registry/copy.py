"""A whole image from one repository to another, by digest: the OCI client's ``copy``.

Immutable tags are checked before any write; then blobs (or, for an index, every child
manifest with its blobs), then the manifest with its bytes unchanged; then the tags.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Unpack

from gate.adapters.registry.blobs import Blobs
from gate.adapters.registry.endpoint import Endpoint
from gate.adapters.registry.http import RegistryHttp
from gate.adapters.registry.manifests import (
    DIGEST,
    IMAGE_TYPES,
    INDEX_TYPES,
    MANIFEST_TYPES,
    Manifests,
    check_digest,
)
from gate.domain.ref import ImageRef
from gate.errors import Conflict, InvalidReference, RegistryError
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


@dataclass
class _Stats:
    """Counters of one copy (mutable while the copy runs, frozen into a CopyReport)."""

    manifests: int = 0
    blobs_copied: int = 0
    blobs_skipped: int = 0
    blobs_mounted: int = 0
    bytes_copied: int = 0


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

    def _copy_manifest(
        self,
        src: Endpoint,
        src_repo: str,
        dst: Endpoint,
        dst_repo: str,
        digest: str,
        stats: _Stats,
        progress: ProgressCallback | None,
    ) -> tuple[bytes, str]:
        """Copy one manifest (children or blobs first) by digest; return its bytes and type."""
        http, manifests = self._http, self._manifests
        where = f"{src.name}/{src_repo}@{digest}"
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
        manifest = json.loads(data)
        media_type = str(manifest.get("mediaType") or media_type)
        already = http.retry(
            f"checking {dst.name}/{dst_repo}@{digest}",
            lambda: manifests.head(dst, dst_repo, digest),
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
        descriptor: Mapping[str, Any],
        stats: _Stats,
        progress: ProgressCallback | None,
    ) -> None:
        digest = str(descriptor["digest"])
        size = int(descriptor["size"])
        if not DIGEST.match(digest):
            raise RegistryError(
                f"a manifest of {src.name}/{src_repo} names a bad digest {digest!r}"
            )
        what = f"copying blob {digest} to {dst.name}/{dst_repo}"
        outcome = self._http.retry(
            what,
            lambda: self._blobs.transfer(src, src_repo, dst, dst_repo, digest, size, progress),
        )
        if outcome == "skipped":
            stats.blobs_skipped += 1
        elif outcome == "mounted":
            stats.blobs_mounted += 1
        else:
            stats.blobs_copied += 1
            stats.bytes_copied += size
