"""The attestation store (:class:`gate.ports.AttestationStore`) on an OCI registry.

Layout: cosign's bundle layout (sigstore/cosign ``specs/BUNDLE_SPEC.md``). The Sigstore bundle is
one blob; an OCI image manifest v1.1 names it as its only layer (media type
``application/vnd.dev.sigstore.bundle.v0.3+json``), carries ``artifactType`` of the same value,
the empty config descriptor (``application/vnd.oci.empty.v1+json``, the 2-byte ``{}``; OCI image
spec "Guidance for an empty descriptor"), the annotations ``dev.sigstore.bundle.content:
dsse-envelope``, ``dev.sigstore.bundle.predicateType`` and ``org.opencontainers.image.created``,
and ``subject``: the promoted manifest. The manifest is pushed by digest, never tagged.

Discovery: the OCI 1.1 referrers API (``GET /v2/<name>/referrers/<digest>``); where the registry
answers 404 there (no referrers API: ``docker-registry``), the referrers tag schema: an image
index tagged ``sha256-<hex>`` listing the referrers, which this store reads and rewrites after each
push (OCI distribution spec v1.1, "Referrers Tag Schema" / "Pushing Manifests with Subject").
That rewrite is read-modify-write; two gates attesting the same digest at the same instant could
lose one entry from the index (never from the registry), which is why one gate per target
repository is the supported setup.

Also, for verifiers that read only cosign's older tag-based layout (sigstore/cosign
``specs/ATTESTATION_SPEC.md``: Kyverno's ``type: Cosign`` attestations, cosign 2's
``verify-attestation``), the same DSSE envelope is appended as a layer
(``application/vnd.dsse.envelope.v1+json``, annotations ``predicateType`` and an empty
``dev.cosignproject.cosign/signature``, as cosign writes them) to the manifest tagged
``sha256-<hex>.att``. That copy is written after the bundle and is not what ``gate verify`` reads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gate.adapters.registry.oci import OCI_INDEX, OCI_MANIFEST, OciRegistry
from gate.domain.attestation import StoredAttestation
from gate.domain.ref import ImageRef
from gate.domain.signatures import CosignSignature, check_signer_key
from gate.errors import ConfigError, RegistryError
from gate.ports import ManifestReader

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = b"{}"
PREDICATE_ANNOTATION = "dev.sigstore.bundle.predicateType"
CONTENT_ANNOTATION = "dev.sigstore.bundle.content"
CREATED_ANNOTATION = "org.opencontainers.image.created"
# the subject manifest's own media type is what ``subject.mediaType`` must say (image spec)
_MANIFEST_TYPES = (
    OCI_INDEX,
    OCI_MANIFEST,
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


def tag_schema_tag(digest: str) -> str:
    """The referrers tag schema's tag of ``digest``: ``<alg>-<hex>`` (truncated to 128 chars)."""
    return digest.replace(":", "-", 1)[:128]


def put_layers_image(
    registry: OciRegistry, repo: ImageRef, tag: str, layers: list[dict[str, Any]]
) -> str:
    """Write a cosign-style image under ``tag``: an image config naming ``layers`` (as cosign's
    signature and attestation images carry one), then the manifest; returns its digest."""
    config = json.dumps(
        {
            "architecture": "",
            "os": "",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [x["digest"] for x in layers]},
        },
        separators=(",", ":"),
    ).encode()
    config_digest = registry.push_blob(repo, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(config),
        },
        "layers": layers,
    }
    data = json.dumps(manifest, separators=(",", ":")).encode()
    return registry.put_manifest(repo, tag, data, OCI_MANIFEST)


class OciAttestationStore:
    """Attestations as referrers of the promoted manifest, in the target repository."""

    def __init__(self, registry: OciRegistry, *, use_referrers_api: bool = True) -> None:
        self._registry = registry
        self._use_api = use_referrers_api

    def attach(self, subject: ImageRef, bundle: bytes, *, predicate_type: str, created: str) -> str:
        """Push ``bundle`` as a referrer of ``subject``; update the tag schema index if needed."""
        assert subject.digest is not None
        repo = ImageRef(subject.registry, subject.repository)
        found = self._registry.fetch_manifest(repo, subject.digest)
        if found is None:
            raise RegistryError(
                f"cannot attest {subject}: the manifest is not in the target repository"
            )
        subject_bytes, subject_type = found
        subject_type = str(json.loads(subject_bytes).get("mediaType") or subject_type)
        if subject_type not in _MANIFEST_TYPES:
            subject_type = OCI_MANIFEST
        config_digest = self._registry.push_blob(repo, EMPTY_BLOB)
        bundle_digest = self._registry.push_blob(repo, bundle)
        annotations = {
            CONTENT_ANNOTATION: "dsse-envelope",
            PREDICATE_ANNOTATION: predicate_type,
            CREATED_ANNOTATION: created,
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": BUNDLE_MEDIA_TYPE,
            "config": {
                "mediaType": EMPTY_MEDIA_TYPE,
                "digest": config_digest,
                "size": len(EMPTY_BLOB),
            },
            "layers": [
                {
                    "mediaType": BUNDLE_MEDIA_TYPE,
                    "digest": bundle_digest,
                    "size": len(bundle),
                    "annotations": {
                        "org.opencontainers.image.title": (
                            f"{tag_schema_tag(bundle_digest)}.sigstore.json"
                        )
                    },
                }
            ],
            "subject": {
                "mediaType": subject_type,
                "digest": subject.digest,
                "size": len(subject_bytes),
            },
            "annotations": annotations,
        }
        data = json.dumps(manifest, separators=(",", ":")).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self._registry.put_manifest(repo, digest, data, OCI_MANIFEST)
        if self._registry_index(subject) is None:
            self._add_to_tag_schema(
                subject,
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": digest,
                    "size": len(data),
                    "artifactType": BUNDLE_MEDIA_TYPE,
                    "annotations": annotations,
                },
            )
        self._add_to_cosign_att(subject, bundle, predicate_type)
        return digest

    def _add_to_cosign_att(self, subject: ImageRef, bundle: bytes, predicate_type: str) -> None:
        """Append the bundle's DSSE envelope to cosign's ``sha256-<hex>.att`` manifest."""
        assert subject.digest is not None
        repo = ImageRef(subject.registry, subject.repository)
        envelope = json.dumps(
            json.loads(bundle)["dsseEnvelope"], separators=(",", ":"), sort_keys=True
        ).encode()
        layer_digest = self._registry.push_blob(repo, envelope)
        tag = subject.digest.replace(":", "-", 1) + ".att"
        layers: list[dict[str, Any]] = []
        found = self._registry.fetch_manifest(repo, tag)
        if found is not None:
            try:
                layers = [
                    x for x in json.loads(found[0]).get("layers") or [] if isinstance(x, dict)
                ]
            except (ValueError, AttributeError):
                layers = []
        if any(x.get("digest") == layer_digest for x in layers):
            return
        layers.append(
            {
                "mediaType": DSSE_MEDIA_TYPE,
                "digest": layer_digest,
                "size": len(envelope),
                "annotations": {
                    "dev.cosignproject.cosign/signature": "",
                    "predicateType": predicate_type,
                },
            }
        )
        put_layers_image(self._registry, repo, tag, layers)

    def find(self, subject: ImageRef) -> list[StoredAttestation]:
        """Every bundle referrer of ``subject``: from the referrers API, else the tag schema."""
        assert subject.digest is not None
        repo = ImageRef(subject.registry, subject.repository)
        index = self._registry_index(subject)
        if index is None:
            index = self._tag_schema_index(subject)
        found = []
        for entry in index.get("manifests") or []:
            if not isinstance(entry, dict) or entry.get("artifactType") != BUNDLE_MEDIA_TYPE:
                continue
            item = self._load(repo, str(entry.get("digest", "")))
            if item is not None:
                found.append(item)
        return found

    # -- internals -----------------------------------------------------------------------------

    def _registry_index(self, subject: ImageRef) -> dict[str, Any] | None:
        if not self._use_api:
            return None
        data = self._registry.referrers(subject)
        if data is None:
            return None
        return _index(data, f"the referrers of {subject}")

    def _tag_schema_index(self, subject: ImageRef) -> dict[str, Any]:
        assert subject.digest is not None
        repo = ImageRef(subject.registry, subject.repository)
        found = self._registry.fetch_manifest(repo, tag_schema_tag(subject.digest))
        if found is None:
            return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        return _index(found[0], f"{repo.name}:{tag_schema_tag(subject.digest)}")

    def _add_to_tag_schema(self, subject: ImageRef, descriptor: dict[str, Any]) -> None:
        assert subject.digest is not None
        repo = ImageRef(subject.registry, subject.repository)
        index = self._tag_schema_index(subject)
        manifests = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
        if any(m.get("digest") == descriptor["digest"] for m in manifests):
            return
        index["manifests"] = [*manifests, descriptor]
        data = json.dumps(index, separators=(",", ":")).encode()
        self._registry.put_manifest(repo, tag_schema_tag(subject.digest), data, OCI_INDEX)

    def _load(self, repo: ImageRef, digest: str) -> StoredAttestation | None:
        found = self._registry.fetch_manifest(repo, digest)
        if found is None:
            return None
        try:
            manifest = json.loads(found[0])
            layer = manifest["layers"][0]
            subject_digest = str(manifest["subject"]["digest"])
            if layer.get("mediaType") != BUNDLE_MEDIA_TYPE:
                return None
            bundle = self._registry.fetch_blob(repo, str(layer["digest"]))
        except (ValueError, KeyError, IndexError, TypeError):
            return None
        created = str((manifest.get("annotations") or {}).get(CREATED_ANNOTATION, ""))
        return StoredAttestation(
            digest=digest, subject_digest=subject_digest, bundle=bundle, created=created
        )


def _index(data: bytes, what: str) -> dict[str, Any]:
    try:
        index = json.loads(data)
    except ValueError:
        index = None
    if not isinstance(index, dict):
        raise RegistryError(f"{what} is not an OCI image index")
    return index


SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"


class CosignSignatureReader:
    """:class:`gate.ports.SignatureStore`: cosign's tag-based signature layout (``.sig``).

    ``registry`` reads manifests and blobs (the OCI adapter, or the ACR adapter, which reads an
    ACR through its data plane); ``key_vault`` reads the public keys a Key Vault key URI stands
    for (:func:`gate.adapters.signers.key_vault_public_keys`: that version, or every enabled
    version of a versionless URI; None: only PEM files are accepted).
    """

    def __init__(
        self, registry: ManifestReader, key_vault: Callable[[str], Sequence[Any]] | None = None
    ) -> None:
        self._registry = registry
        self._key_vault = key_vault
        self._keys: dict[str, list[Any]] = {}

    def public_keys(self, sources: Sequence[str]) -> list[Any]:
        """The rule's keys, each source read once per reader: PEM files, or Key Vault key URIs
        (a versionless one gives a key per enabled version; a signature by any of them holds)."""
        from gate.domain.signatures import load_keys

        keys = []
        for source in sources:
            if source not in self._keys:
                if not source.startswith("https://"):
                    self._keys[source] = [load_keys([Path(source)])[0]]
                elif self._key_vault is None:
                    raise ConfigError(
                        f"{source}: this gate reads no Key Vault keys; name a PEM file instead"
                    )
                else:
                    self._keys[source] = [
                        check_signer_key(key, source) for key in self._key_vault(source)
                    ]
            keys.extend(self._keys[source])
        return keys

    def cosign_signatures(self, image: ImageRef) -> list[CosignSignature]:
        """The simple-signing layers of ``<repo>:sha256-<hex>.sig`` with their signatures."""
        assert image.digest is not None
        repo = ImageRef(image.registry, image.repository)
        found = self._registry.fetch_manifest(repo, image.digest.replace(":", "-", 1) + ".sig")
        if found is None:
            return []
        try:
            layers = json.loads(found[0]).get("layers") or []
        except (ValueError, AttributeError):
            raise RegistryError(
                f"{repo.name}: the cosign signature manifest of {image.digest} is not JSON"
            ) from None
        signatures = []
        for layer in layers:
            if not isinstance(layer, dict) or layer.get("mediaType") != SIMPLE_SIGNING:
                continue
            signature = (layer.get("annotations") or {}).get(SIGNATURE_ANNOTATION)
            if not signature:
                continue
            digest = str(layer.get("digest", ""))
            payload = self._registry.fetch_blob(repo, digest)
            signatures.append(
                CosignSignature(payload=payload, signature=str(signature), layer=digest)
            )
        return signatures


class SessionAttestationStore:
    """:class:`gate.ports.AttestationStore` over a client made afresh for each operation.

    For registries whose credentials expire (an ACR refresh token): ``session()`` returns a
    signed-in :class:`OciRegistry`, closed after the operation.
    """

    def __init__(
        self, session: Callable[[], OciRegistry], *, use_referrers_api: bool = True
    ) -> None:
        self._session = session
        self._use_api = use_referrers_api

    def attach(self, subject: ImageRef, bundle: bytes, *, predicate_type: str, created: str) -> str:
        """Sign in, then :meth:`OciAttestationStore.attach`."""
        with self._session() as registry:
            store = OciAttestationStore(registry, use_referrers_api=self._use_api)
            return store.attach(subject, bundle, predicate_type=predicate_type, created=created)

    def find(self, subject: ImageRef) -> list[StoredAttestation]:
        """Sign in, then :meth:`OciAttestationStore.find`."""
        with self._session() as registry:
            return OciAttestationStore(registry, use_referrers_api=self._use_api).find(subject)
