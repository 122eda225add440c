"""Attestations as the use cases make and check them: sign and attach the evidence of a
promotion or a demotion (:class:`Attestor`), and judge what is attached to an image
(:func:`verify_image`). The statement, its wrapping and the verdict's rules are the domain's
(:mod:`gate.domain.attestation`)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from gate.domain.attestation import (
    FAILED,
    PASSED,
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    Evidence,
    Verdict,
    bundle,
    folder_digest,
    now_text,
    policy_uri,
    statement,
    verify,
)
from gate.domain.ref import ImageRef
from gate.domain.signatures import verifies

if TYPE_CHECKING:
    from gate.config.model import Rule
    from gate.domain.records import GateRecord
    from gate.ports import AttestationStore, Registry, SignatureStore, Signer


@dataclass(frozen=True)
class Attestor:
    """Signs and attaches the gate's evidence: a signer, a store, and who the verifier is."""

    signer: Signer
    store: AttestationStore
    verifier_id: str

    def attach(self, evidence: Evidence) -> str:
        """Sign ``evidence`` and attach it to its subject; return the attestation's digest."""
        payload = statement(evidence, self.verifier_id)
        envelope = self.signer.sign_dsse(PAYLOAD_TYPE, payload)
        return self.store.attach(
            evidence.subject,
            bundle(envelope, self.signer.key_hint),
            predicate_type=PREDICATE_TYPE,
            created=now_text(evidence.time),
        )

    def promotion(self, rule: Rule, image: ImageRef, record: GateRecord) -> str:
        """Attest that ``image`` (target repository @ digest) passed ``record``'s validation."""
        folder = rule.validation.folder
        task = folder / rule.validation.task
        upstream = ImageRef.parse(record.source)
        return self.attach(
            Evidence(
                subject=image,
                result=PASSED,
                status="promoted",
                reason=f"passed validation run {record.run_id}",
                rule=rule.name,
                record_id=record.id,
                run_id=record.run_id,
                stable_tag=record.target_tags[-1],
                upstream=upstream.name,
                upstream_digest=record.digest or "",
                policy_uri=policy_uri(rule.name, str(rule.validation.task)),
                policy_digest=folder_digest(folder),
                task_digest=hashlib.sha256(task.read_bytes()).hexdigest() if task.is_file() else "",
                log_sha256=hashlib.sha256(record.log.encode()).hexdigest(),
            )
        )

    def demotion(self, image: ImageRef, record: GateRecord, reason: str) -> str:
        """Attest that ``image`` is no longer the gate's verdict for its stable tag."""
        return self.attach(
            Evidence(
                subject=image,
                result=FAILED,
                status="demoted",
                reason=reason,
                rule=record.rule,
                record_id=record.id,
                # the rollback record's run is the restored digest's, not this one's
                run_id=None,
                stable_tag=record.target_tags[-1] if record.target_tags else "",
            )
        )


def verify_image(
    registry: Registry,
    store: AttestationStore,
    image: str | ImageRef,
    keys: Sequence[Any],
    *,
    max_age: timedelta | None = None,
    now: datetime | None = None,
    signatures: SignatureStore | None = None,
    signature_key: Any = None,
) -> Verdict:
    """Resolve ``image`` to its digest (once), find its attestations and judge them; with
    ``signatures`` and ``signature_key``, also whether the digest carries the gate's promotion
    signature (both must agree: :meth:`Verdict.with_signature`)."""
    ref = image if isinstance(image, ImageRef) else ImageRef.parse(image)
    digest = ref.digest or registry.resolve(ref)
    if ref.digest:
        registry.resolve(ref.pinned())
    pinned = ImageRef(ref.registry, ref.repository, ref.tag, digest)
    verdict = verify(pinned, store.find(pinned), keys, max_age=max_age, now=now)
    if signatures is None or signature_key is None:
        return verdict
    found = signatures.cosign_signatures(pinned)
    return verdict.with_signature(any(verifies(s, digest, signature_key) for s in found))
