"""The gate's promotion signatures (:class:`gate.ports.SignatureWriter`) in cosign's tag-based
signature layout, in the target repository.

Layout (sigstore/cosign ``specs/SIGNATURE_SPEC.md``, "Tag-based Discovery" and "OCI Image
Manifest V1"): one OCI image manifest tagged ``sha256-<hex>.sig`` per signed digest; each layer a
simple-signing payload blob (``application/vnd.dev.cosign.simplesigning.v1+json``) with its
base64 signature in the layer's ``dev.cosignproject.cosign/signature`` annotation; several
signers' layers may share the manifest.

Why this layout and not a Sigstore bundle referrer: it is what the admission verifiers read by
default. Kyverno's ``verifyImages`` (kyverno/kyverno ``pkg/cosign/cosign.go``,
``VerifySignature``) calls cosign's ``VerifyImageSignatures``, which reads the ``.sig`` tag;
Ratify's ORAS store lists the ``.sig`` tag as a referrer of type
``application/vnd.dev.cosign.artifact.sig.v1+json`` for its cosign verifier
(ratify-project/ratify ``pkg/referrerstore/oras/cosign.go``, ``getCosignReferences``). cosign 3's
``verify`` reads it when the digest has no Sigstore bundle referrers, or with
``--new-bundle-format=false`` (sigstore/cosign ``cmd/cosign/cli/verify/verify.go`` lines
158-164: ``GetBundles`` first, bundles only when there are some; 239-256:
``VerifyImageSignatures`` otherwise, which reads ``SignatureTag``, ``pkg/cosign/verify.go``
line 687);
the gate's attestations are such referrers, so by hand it is ``cosign verify
--new-bundle-format=false``.

Removal rewrites the manifest without the gate's layers, or deletes it (``DELETE`` by digest,
which removes the tag with it) when no other layer is left; where the registry refuses the delete,
the tag is overwritten with a manifest without layers (and the record says so). Like the tag-schema index, the
rewrite is read-modify-write: one gate per target repository.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from gate.adapters.registry.oci import OciRegistry
from gate.adapters.registry.referrers import (
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING,
    CosignSignatureReader,
    put_layers_image,
)
from gate.domain.ref import ImageRef
from gate.domain.signatures import CosignSignature, signature_tag
from gate.errors import RegistryError, RegistryUnavailable


class OciSignatureStore:
    """cosign ``.sig`` signature manifests in the target repository, read and written."""

    def __init__(self, registry: OciRegistry) -> None:
        self._registry = registry

    def signatures(self, image: ImageRef) -> list[CosignSignature]:
        """Every simple-signing layer of ``image``'s ``.sig`` manifest, with its layer digest."""
        return CosignSignatureReader(self._registry).cosign_signatures(image)

    def add_signature(self, image: ImageRef, payload: bytes, signature: str) -> str:
        """Append one layer to ``<repo>:sha256-<hex>.sig`` (creating it); its new digest."""
        repo, tag = _where(image)
        layer_digest = self._registry.push_blob(repo, payload)
        layers = [x for x in self._layers(repo, tag) if x.get("digest") != layer_digest]
        layers.append(
            {
                "mediaType": SIMPLE_SIGNING,
                "digest": layer_digest,
                "size": len(payload),
                "annotations": {SIGNATURE_ANNOTATION: signature},
            }
        )
        return self._write(repo, tag, layers)

    def remove_signatures(self, image: ImageRef, layers: Sequence[str]) -> str:
        """Drop ``layers`` from the ``.sig`` manifest; delete it when nothing else is left."""
        repo, tag = _where(image)
        found = self._registry.fetch_manifest(repo, tag)
        if found is None:
            return f"{repo.name}:{tag} does not exist: nothing to remove"
        gone = set(layers)
        kept = [x for x in _manifest_layers(found[0], repo, tag) if x.get("digest") not in gone]
        if kept:
            digest = self._write(repo, tag, kept)
            return (
                f"removed the gate's signature from {repo.name}:{tag} "
                f"({len(kept)} other signature(s) kept, now {digest})"
            )
        digest = "sha256:" + hashlib.sha256(found[0]).hexdigest()
        try:
            self._registry.delete_manifest(repo, digest)
        except RegistryUnavailable:
            raise
        except RegistryError as exc:
            # deletion disabled, or the identity may push but not delete (ACR's Repository
            # Writer has no content/delete): the tag then names a manifest without layers,
            # which verifiers read as "no signatures" (cosign's VerifyImageSignatures fails
            # with no signatures found); said in the record, never silently
            emptied = self._write(repo, tag, [])
            return (
                f"could not delete {repo.name}:{tag} ({exc.message}); overwrote it with a "
                f"signature manifest holding no signature ({emptied})"
            )
        return f"deleted {repo.name}:{tag} ({digest}), which held only the gate's signature"

    # -- internals -----------------------------------------------------------------------------

    def _layers(self, repo: ImageRef, tag: str) -> list[dict[str, Any]]:
        found = self._registry.fetch_manifest(repo, tag)
        return [] if found is None else _manifest_layers(found[0], repo, tag)

    def _write(self, repo: ImageRef, tag: str, layers: list[dict[str, Any]]) -> str:
        return put_layers_image(self._registry, repo, tag, layers)


class SessionSignatureStore:
    """:class:`OciSignatureStore` over a client made afresh for each operation (ACR tokens)."""

    def __init__(self, session: Callable[[], OciRegistry]) -> None:
        self._session = session

    def signatures(self, image: ImageRef) -> list[CosignSignature]:
        """Sign in, then :meth:`OciSignatureStore.signatures`."""
        with self._session() as registry:
            return OciSignatureStore(registry).signatures(image)

    def add_signature(self, image: ImageRef, payload: bytes, signature: str) -> str:
        """Sign in, then :meth:`OciSignatureStore.add_signature`."""
        with self._session() as registry:
            return OciSignatureStore(registry).add_signature(image, payload, signature)

    def remove_signatures(self, image: ImageRef, layers: Sequence[str]) -> str:
        """Sign in, then :meth:`OciSignatureStore.remove_signatures`."""
        with self._session() as registry:
            return OciSignatureStore(registry).remove_signatures(image, layers)


def _where(image: ImageRef) -> tuple[ImageRef, str]:
    assert image.digest is not None
    return ImageRef(image.registry, image.repository), signature_tag(image.digest)


def _manifest_layers(data: bytes, repo: ImageRef, tag: str) -> list[dict[str, Any]]:
    try:
        layers = json.loads(data).get("layers") or []
    except (ValueError, AttributeError):
        raise RegistryError(
            f"{repo.name}:{tag} is not a JSON image manifest; the gate does not rewrite it "
            "(delete or fix that tag by hand)"
        ) from None
    return [x for x in layers if isinstance(x, dict)]
