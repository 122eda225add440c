"""The promotion signature: the gate signs each digest it promotes, with a key of its own, and
removes that signature when the digest stops being approved (demotion, rollback).

Why a signature beside the attestations: admission controllers (Kyverno's ``verifyImages``,
Ratify's cosign verifier, ``cosign verify --key``) check *signatures* out of the box, and a
demoted digest keeps its old PASSED attestation. "Signed by the gate's signature key" therefore
means "currently approved by the gate". The key is not the attestation key: cosign 3's
``verify --key`` accepts any Sigstore bundle signed by the key whose subject is the digest,
whatever its predicate type, so with one key a FAILED demotion attestation would count as an
approval too (the configuration refuses one key for both).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gate.domain.signatures import simple_signing_payload, verifies

if TYPE_CHECKING:
    from gate.domain.records import GateRecord
    from gate.domain.ref import ImageRef
    from gate.ports import ImageSigner, SignatureWriter


@dataclass(frozen=True)
class Signatory:
    """Signs promoted digests and removes the gate's signatures of demoted ones."""

    signer: ImageSigner
    store: SignatureWriter
    verifier_id: str

    def sign(self, image: ImageRef, record: GateRecord) -> str:
        """Sign ``image`` (target @ digest) unless a signature by the gate's key is there."""
        assert image.digest is not None
        key = self.signer.verifying_key
        if any(verifies(s, image.digest, key) for s in self.store.signatures(image)):
            # idempotent: a redelivered promotion or a re-signed rollback target adds no layer
            return f"already signed ({image.digest})"
        payload = simple_signing_payload(
            image,
            {
                "dev.gated-import-gate/verifier": self.verifier_id,
                "dev.gated-import-gate/rule": record.rule,
                "dev.gated-import-gate/record": record.id,
                "dev.gated-import-gate/run": record.run_id or "",
            },
        )
        signature = base64.b64encode(self.signer.sign_payload(payload)).decode()
        manifest = self.store.add_signature(image, payload, signature)
        return f"signed (signature manifest {manifest})"

    def unsign(self, image: ImageRef) -> str:
        """Remove every layer signed by the gate's key over ``image``'s digest."""
        assert image.digest is not None
        key = self.signer.verifying_key
        mine = [s.layer for s in self.store.signatures(image) if verifies(s, image.digest, key)]
        if not mine:
            return f"{image.digest} carried no gate signature"
        return self.store.remove_signatures(image, mine)
