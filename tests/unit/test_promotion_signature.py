"""The promotion signature's values: the simple-signing payload, the check of one signature, and
how gate verify combines the signature with the newest attestation."""

from __future__ import annotations

import base64
import json

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from gate.domain.attestation import FAILED, PASSED, Verdict
from gate.domain.ref import ImageRef
from gate.domain.signatures import CosignSignature, simple_signing_payload, verifies

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
IMAGE = ImageRef("art.example.com", "base/node", digest=DIGEST)


def signed(key: ec.EllipticCurvePrivateKey, payload: bytes) -> CosignSignature:
    signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    return CosignSignature(payload=payload, signature=base64.b64encode(signature).decode())


def test_the_payload_is_cosigns_simple_signing_json_naming_the_digest() -> None:
    body = json.loads(simple_signing_payload(IMAGE, {"dev.gated-import-gate/rule": "node"}))

    assert body == {
        "critical": {
            "identity": {"docker-reference": "art.example.com/base/node"},
            "image": {"docker-manifest-digest": DIGEST},
            "type": "cosign container image signature",
        },
        "optional": {"dev.gated-import-gate/rule": "node"},
    }
    assert json.loads(simple_signing_payload(IMAGE, {}))["optional"] is None


def test_a_signature_counts_only_by_that_key_over_that_digest_and_those_bytes() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    other_key = ec.generate_private_key(ec.SECP256R1())
    payload = simple_signing_payload(IMAGE, {})
    good = signed(key, payload)

    assert verifies(good, DIGEST, key.public_key())
    assert not verifies(good, DIGEST, other_key.public_key())
    assert not verifies(good, OTHER, key.public_key())
    tampered = payload.replace(b"base/node", b"base/evil")
    assert not verifies(CosignSignature(tampered, good.signature), DIGEST, key.public_key())
    assert not verifies(CosignSignature(payload, "not base64!"), DIGEST, key.public_key())
    other_digest = signed(key, simple_signing_payload(IMAGE.with_digest(OTHER), {}))
    assert not verifies(other_digest, DIGEST, key.public_key())


def verdict(result: str | None, verified: bool, reason: str) -> Verdict:
    predicate = None if result is None else {"verificationResult": result}
    return Verdict(str(IMAGE), DIGEST, verified, reason, predicate=predicate)


def test_gate_verify_admits_only_a_signed_digest_whose_newest_attestation_passed() -> None:
    passed = verdict(PASSED, True, "PASSED by urn:gated-import-gate")

    both = passed.with_signature(True)
    assert both.verified and both.signed is True and "signed by the gate" in both.reason

    unsigned = passed.with_signature(False)
    assert not unsigned.verified and unsigned.signed is False
    assert "no gate signature" in unsigned.reason and "demoted" in unsigned.reason


def test_gate_verify_explains_a_signature_beside_a_failed_or_missing_attestation() -> None:
    failed = verdict(FAILED, False, "the newest attestation says FAILED: demoted")

    stale = failed.with_signature(True)
    assert not stale.verified
    assert stale.reason.startswith("signed by the gate, but the newest attestation says FAILED")
    assert "should have been removed" in stale.reason

    none = verdict(None, False, "no attestation of the gate is attached").with_signature(True)
    assert not none.verified and "signed by the gate, but no attestation" in none.reason
    neither = failed.with_signature(False)
    assert not neither.verified and neither.reason.endswith("carries no gate signature")
    # too old, yet signed: no claim that a removal was missed
    old = verdict(PASSED, False, "the newest attestation is from 2020").with_signature(True)
    assert not old.verified and "should have been removed" not in old.reason
    assert old.to_dict()["signed"] is True
