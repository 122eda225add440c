"""Upstream signatures: a rule may require the candidate to carry a cosign key-based signature.

Checked before anything is validated, against the digest the gate resolved. The layout is
cosign's (sigstore/cosign ``specs/SIGNATURE_SPEC.md``): a manifest tagged ``sha256-<hex>.sig``
in the image's repository; each layer a "simple signing" payload
(``application/vnd.dev.cosign.simplesigning.v1+json``) whose ``critical.image`` names the
signed manifest digest, with its ECDSA P-256 / SHA-256 signature (DER, base64) in the layer's
``dev.cosignproject.cosign/signature`` annotation. Keyless signatures (Fulcio certificates,
Rekor entries) are not checked: only the rule's keys count.

The gate's own promotion signature is written in the same layout (:func:`simple_signing_payload`)
and found again by :func:`verifies` with the gate's signature key.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gate.domain.ref import ImageRef
from gate.errors import ConfigError

COSIGN_TYPE = "cosign container image signature"
UNSIGNED = "unsigned"
DOES_NOT_VERIFY = "signature does not verify"


@dataclass(frozen=True)
class CosignSignature:
    """One cosign signature as stored: the signed payload, its base64 signature, and the digest
    of the layer that holds it ('' when not known)."""

    payload: bytes
    signature: str
    layer: str = ""


def signature_tag(digest: str) -> str:
    """cosign's tag of the signatures of ``digest``: ``sha256-<hex>.sig``."""
    return digest.replace(":", "-", 1) + ".sig"


def load_keys(paths: Sequence[Path]) -> list[Any]:
    """The rule's PEM public keys (ECDSA P-256); :class:`ConfigError` for one that is not."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    keys = []
    for path in paths:
        try:
            key = load_pem_public_key(path.read_bytes())
        except (OSError, ValueError):
            raise ConfigError(
                f"{path} is not a readable PEM public key; require_signature.keys names the "
                "signer's public key (cosign.pub)"
            ) from None
        keys.append(check_signer_key(key, str(path)))
    return keys


def check_signer_key(key: Any, where: str) -> Any:
    """``key`` if it is an ECDSA P-256 public key (cosign's key type); else ConfigError."""
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ConfigError(f"{where} is not an ECDSA P-256 public key (cosign's key type)")
    return key


def _signed_digest(payload: bytes) -> str | None:
    try:
        body = json.loads(payload)
        critical = body["critical"]
        if critical.get("type") != COSIGN_TYPE:
            return None
        image = {str(k).lower(): v for k, v in critical["image"].items()}
        return str(image["docker-manifest-digest"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def simple_signing_payload(image: ImageRef, optional: Mapping[str, str]) -> bytes:
    """The payload the gate signs for ``image`` (repository @ digest), as ``cosign sign`` writes
    it: containers-signature(5)'s JSON with cosign's ``critical.type`` (cosign's
    ``specs/SIGNATURE_SPEC.md``, "Simple Signing"); ``optional`` holds the gate's claims
    (verifiers that match annotations, e.g. Kyverno's ``annotations:``, read them there)."""
    assert image.digest is not None
    body = {
        "critical": {
            "identity": {"docker-reference": image.name},
            "image": {"docker-manifest-digest": image.digest},
            "type": COSIGN_TYPE,
        },
        "optional": dict(optional) or None,
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def verifies(item: CosignSignature, digest: str, key: Any) -> bool:
    """Whether ``item`` is a signature by ``key`` over a simple-signing payload naming ``digest``
    (ECDSA, SHA-256 over the payload bytes, as cosign's verifier checks it)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    if _signed_digest(item.payload) != digest:
        return False
    try:
        signature = base64.b64decode(item.signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        key.verify(signature, item.payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def refusal(image: ImageRef, found: Sequence[CosignSignature], keys: Sequence[Any]) -> str:
    """Why ``image`` (pinned) is refused, or '' when one signature by one of ``keys`` holds."""
    assert image.digest is not None
    if not found:
        return (
            f"{UNSIGNED}: {image.name}@{image.digest} carries no cosign signature "
            f"({image.name}:{signature_tag(image.digest)} does not exist); the rule requires one"
        )
    if any(verifies(item, image.digest, key) for item in found for key in keys):
        return ""
    return (
        f"{DOES_NOT_VERIFY}: none of the {len(found)} cosign signature(s) of "
        f"{image.name}@{image.digest} is by a key of the rule over this digest"
    )
