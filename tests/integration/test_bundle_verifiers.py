"""The gate's Sigstore bundles, checked the way the verifiers consumers run check them.

- go-securesystemslib's DSSE rule, which cosign 3 reaches through sigstore-go
  (pkg/verify/signature.go, ``verifyEnvelope``): sigstore-go requires exactly one signature and
  hands go-securesystemslib a key with no id; go-securesystemslib (dsse/verify.go, ``Verify``)
  then derives the key's id as its SSH SHA-256 fingerprint (``SHA256KeyID``) and skips a
  signature whose ``keyid`` is set and differs from it; an empty ``keyid`` is tried. The rule is
  re-implemented here from that source, not taken from the gate's own verifier.
- sigstore-js, ``@sigstore/verify`` from npm (scripts/setup installs it into .tools/sigstore-js),
  run with node on a bundle the gate wrote: offline, key-based, no transparency log, the key
  looked up by the bundle's hint (tests/integration/js/verify-bundle.mjs).
- securesystemslib (Python), whose ``Envelope.verify`` tries a signature only with the key of
  the same id: with a key whose id is empty, it accepts an envelope whose ``keyid`` is empty.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devstack.acr import AcrEmulator, TestCredential
from devstack.images import ImageBuilder
from devstack.registry import RegistryProcess
from gate.adapters.signers import KeyFileSigner, KeyVaultSigner, generate_key_pair
from gate.domain.attestation import (
    PASSED,
    PAYLOAD_TYPE,
    Evidence,
    StoredAttestation,
    bundle,
    load_public_key,
    statement,
    verify,
)
from gate.domain.records import State
from gate.domain.ref import ImageRef
from gate.ports import Signer
from gate.usecases.attestation import Attestor
from gate.usecases.gating import gate_image
from tests.e2e.test_attest import Setup, push_upstream

ROOT = Path(__file__).resolve().parents[2]
SIGSTORE_JS = ROOT / ".tools" / "sigstore-js"
VERIFY_BUNDLE = Path(__file__).resolve().parent / "js" / "verify-bundle.mjs"
DIGEST = "sha256:" + "ab" * 32
SUBJECT = ImageRef("registry.example", "node", digest=DIGEST)


@dataclass
class KeptAttestations:
    """An attestation store that keeps what the gate attaches, in memory."""

    kept: list[StoredAttestation] = field(default_factory=list)

    def attach(self, subject: ImageRef, bundle: bytes, *, predicate_type: str, created: str) -> str:
        """Keep ``bundle``; its digest is the sha256 of its bytes."""
        assert subject.digest is not None
        digest = "sha256:" + hashlib.sha256(bundle).hexdigest()
        self.kept.append(StoredAttestation(digest, subject.digest, bundle, created))
        return digest

    def find(self, subject: ImageRef) -> list[StoredAttestation]:
        """What was kept for ``subject``."""
        return [a for a in self.kept if a.subject_digest == subject.digest]


def evidence() -> Evidence:
    return Evidence(
        subject=SUBJECT,
        result=PASSED,
        status="promoted",
        reason="passed validation run ca1",
        rule="node",
        record_id="r1",
        run_id="ca1",
        stable_tag="15-alpine",
    )


def written_bundle(signer: Signer) -> bytes:
    """The bundle the gate attaches for a promotion, signed by ``signer``."""
    store = KeptAttestations()
    Attestor(signer=signer, store=store, verifier_id="https://gate.example/local").attach(
        evidence()
    )
    [found] = store.kept
    return found.bundle


def ssh_sha256_fingerprint(public: ec.EllipticCurvePublicKey) -> str:
    """go-securesystemslib's ``SHA256KeyID``: ``ssh.FingerprintSHA256`` of the key, i.e.
    ``SHA256:`` and the unpadded base64 of the SHA-256 of its SSH wire encoding."""
    line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    wire = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(wire).digest()).decode().rstrip("=")


def go_securesystemslib_accepts(raw_bundle: bytes, public: ec.EllipticCurvePublicKey) -> int:
    """How many signatures of the bundle's envelope sigstore-go + go-securesystemslib accept
    with ``public`` (a verifier without a key id of its own); cosign needs 1."""
    envelope = json.loads(raw_bundle)["dsseEnvelope"]
    # sigstore-go, pkg/verify/signature.go: a bundle's envelope has exactly one signature
    assert len(envelope["signatures"]) == 1
    payload = base64.b64decode(envelope["payload"])
    payload_type = envelope["payloadType"].encode()
    pae = b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type, len(payload), payload)
    key_id = ssh_sha256_fingerprint(public)  # the verifier's KeyID() is "", so derived
    accepted = 0
    for signature in envelope["signatures"]:
        keyid = signature.get("keyid", "")
        if keyid != "" and keyid != key_id:
            continue  # dsse/verify.go: set and different from the key's id: skipped
        try:
            public.verify(base64.b64decode(signature["sig"]), pae, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            continue
        accepted += 1
    return accepted


def securesystemslib_accepts(raw_bundle: bytes, public: ec.EllipticCurvePublicKey) -> bool:
    """Whether securesystemslib's ``Envelope.verify`` accepts the envelope with ``public`` under
    an empty key id (it tries a signature only with the key of the same id)."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import VerificationError
    from securesystemslib.signer import SSlibKey

    derived = SSlibKey.from_crypto(public, scheme="ecdsa-sha2-nistp256")
    key = SSlibKey("", derived.keytype, derived.scheme, derived.keyval)
    envelope = Envelope.from_dict(json.loads(raw_bundle)["dsseEnvelope"])
    try:
        envelope.verify([key], 1)
    except VerificationError:
        return False
    return True


def sigstore_js(raw_bundle: bytes, pem: bytes, tmp_path: Path) -> dict[str, Any]:
    """Run @sigstore/verify on the bundle with the PEM key; its JSON answer and exit code."""
    node = shutil.which("node")
    if node is None or not (SIGSTORE_JS / "node_modules" / "@sigstore" / "verify").is_dir():
        pytest.fail("node or @sigstore/verify is missing: run scripts/setup (it installs both)")
    bundle_path = tmp_path / "bundle.json"
    pem_path = tmp_path / "key.pem"
    bundle_path.write_bytes(raw_bundle)
    pem_path.write_bytes(pem)
    done = subprocess.run(
        [node, str(VERIFY_BUNDLE), str(SIGSTORE_JS), str(bundle_path), str(pem_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.stdout, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    answer["exit"] = done.returncode
    return answer


def pem_of(public: ec.EllipticCurvePublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def cosign_hint(public: ec.EllipticCurvePublicKey) -> str:
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@dataclass(frozen=True)
class KeyFile:
    """A key pair ``gate keygen`` wrote, and the gate's signer of it."""

    path: Path
    signer: KeyFileSigner
    public: ec.EllipticCurvePublicKey


@pytest.fixture
def key_file(tmp_path: Path) -> KeyFile:
    public_path = generate_key_pair(tmp_path / "gate.key")
    public = serialization.load_pem_public_key(public_path.read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    return KeyFile(tmp_path / "gate.key", KeyFileSigner(tmp_path / "gate.key"), public)


def test_a_key_file_bundle_has_an_empty_keyid_and_cosigns_hint(
    key_file: KeyFile,
) -> None:
    signer, public = key_file.signer, key_file.public
    body = json.loads(written_bundle(signer))
    assert [s["keyid"] for s in body["dsseEnvelope"]["signatures"]] == [""]
    assert body["verificationMaterial"]["publicKey"]["hint"] == cosign_hint(public)
    assert signer.key_hint == cosign_hint(public)


def test_a_key_file_bundle_verifies_under_the_go_securesystemslib_rule(
    key_file: KeyFile,
) -> None:
    signer, public = key_file.signer, key_file.public
    assert go_securesystemslib_accepts(written_bundle(signer), public) == 1
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    assert go_securesystemslib_accepts(written_bundle(signer), other) == 0


def test_the_old_form_is_skipped_by_go_securesystemslib_but_gate_verify_reads_it(
    key_file: KeyFile,
) -> None:
    """Bundles written before: securesystemslib's key id in the signature, another hint."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import CryptoSigner, SSlibKey

    public = key_file.public
    private = serialization.load_pem_private_key(key_file.path.read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    sslib = SSlibKey.from_crypto(public, scheme="ecdsa-sha2-nistp256")
    envelope = Envelope(
        payload=statement(evidence(), "https://gate.example/local"),
        payload_type=PAYLOAD_TYPE,
        signatures={},
    )
    envelope.sign(CryptoSigner(private, sslib))
    old = bundle(envelope.to_dict(), sslib.keyid)
    assert json.loads(old)["dsseEnvelope"]["signatures"][0]["keyid"] == sslib.keyid

    # what cosign 3 met: the key id is set and differs from the derived one, so nothing counts
    assert go_securesystemslib_accepts(old, public) == 0
    stored = StoredAttestation("sha256:" + "cd" * 32, DIGEST, old)
    verdict = verify(SUBJECT, [stored], [load_public_key(pem_of(public), "gate.pub")])
    assert verdict.verified, verdict.reason


def test_gate_verify_accepts_the_new_form_and_rejects_another_key(
    key_file: KeyFile,
) -> None:
    signer, public = key_file.signer, key_file.public
    stored = StoredAttestation("sha256:" + "cd" * 32, DIGEST, written_bundle(signer))
    verdict = verify(SUBJECT, [stored], [load_public_key(pem_of(public), "gate.pub")])
    assert verdict.verified, verdict.reason
    other = pem_of(ec.generate_private_key(ec.SECP256R1()).public_key())
    refused = verify(SUBJECT, [stored], [load_public_key(other, "other.pub")])
    assert not refused.verified
    assert "does not verify with the given key" in refused.reason


def test_securesystemslib_verifies_a_key_file_bundle_under_an_empty_key_id(
    key_file: KeyFile,
) -> None:
    signer, public = key_file.signer, key_file.public
    assert securesystemslib_accepts(written_bundle(signer), public)
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    assert not securesystemslib_accepts(written_bundle(signer), other)


def test_sigstore_js_verifies_a_key_file_bundle_offline_by_key(
    key_file: KeyFile, tmp_path: Path
) -> None:
    signer, public = key_file.signer, key_file.public
    raw = written_bundle(signer)
    answer = sigstore_js(raw, pem_of(public), tmp_path)
    assert answer == {"verified": True, "hint": cosign_hint(public), "exit": 0}


def test_sigstore_js_refuses_a_tampered_bundle_and_another_key(
    key_file: KeyFile, tmp_path: Path
) -> None:
    signer, public = key_file.signer, key_file.public
    body = json.loads(written_bundle(signer))
    forged = json.loads(base64.b64decode(body["dsseEnvelope"]["payload"]))
    forged["predicate"]["verificationResult"] = "FAILED"
    body["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(forged).encode()).decode()
    tampered = sigstore_js(json.dumps(body).encode(), pem_of(public), tmp_path)
    assert tampered["exit"] == 1 and "SIGNATURE_ERROR" in tampered["error"]

    other = pem_of(ec.generate_private_key(ec.SECP256R1()).public_key())
    unknown = sigstore_js(written_bundle(signer), other, tmp_path)
    assert unknown["exit"] == 1 and "key not found" in unknown["error"]


def test_a_key_vault_bundle_verifies_with_every_verifier(
    acr_emulator: AcrEmulator, azure_credential: TestCredential, tmp_path: Path
) -> None:
    from azure.keyvault.keys import KeyClient

    vault = KeyClient(acr_emulator.key_vault_url, azure_credential, verify_challenge_resource=False)
    key = vault.create_ec_key("gate-attestation", curve="P-256")
    signer = KeyVaultSigner(str(key.id), azure_credential, verify_challenge_resource=False)
    jwk = key.key
    assert jwk.x is not None and jwk.y is not None
    public = ec.EllipticCurvePublicNumbers(
        int.from_bytes(jwk.x, "big"), int.from_bytes(jwk.y, "big"), ec.SECP256R1()
    ).public_key()

    raw = written_bundle(signer)
    body = json.loads(raw)
    assert [s["keyid"] for s in body["dsseEnvelope"]["signatures"]] == [""]
    # the same hint a key file of this key would give: derived from the key, not its URI
    assert body["verificationMaterial"]["publicKey"]["hint"] == cosign_hint(public)
    assert go_securesystemslib_accepts(raw, public) == 1
    assert securesystemslib_accepts(raw, public)
    answer = sigstore_js(raw, pem_of(public), tmp_path)
    assert answer == {"verified": True, "hint": cosign_hint(public), "exit": 0}
    stored = StoredAttestation("sha256:" + "cd" * 32, DIGEST, raw)
    verdict = verify(SUBJECT, [stored], [load_public_key(pem_of(public), "vault key")])
    assert verdict.verified, verdict.reason


@pytest.fixture
def promoting(tmp_path: Path, registries: tuple[RegistryProcess, RegistryProcess]) -> Setup:
    """Two local registries and a gatekeeper that attests with a key file (tests/e2e)."""
    return Setup(tmp_path, registries)


def test_a_promotions_stored_bundle_and_att_envelope_verify_as_consumers_read_them(
    promoting: Setup, image_builder: ImageBuilder, tmp_path: Path
) -> None:
    """The bundle a promotion stored in a registry, read back as cosign reads it, and the same
    envelope in cosign's older ``.att`` layout (go-securesystemslib there too)."""
    digest = push_upstream(image_builder, promoting, "Green")
    record = gate_image(promoting.keeper, f"{promoting.upstream.host}/node:15-alpine").record
    assert record.state is State.PROMOTED
    [descriptor] = promoting.referrers_index(digest)["manifests"]
    _, raw = promoting.bundle_of(descriptor)
    public = serialization.load_pem_public_key(promoting.public.read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)

    assert go_securesystemslib_accepts(raw, public) == 1
    assert securesystemslib_accepts(raw, public)
    answer = sigstore_js(raw, promoting.public.read_bytes(), tmp_path)
    assert answer == {"verified": True, "hint": cosign_hint(public), "exit": 0}

    att = promoting.http(
        f"manifests/{digest.replace(':', '-')}.att",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    att.raise_for_status()
    [layer] = att.json()["layers"]
    envelope = promoting.http(f"blobs/{layer['digest']}", follow_redirects=True).json()
    assert go_securesystemslib_accepts(json.dumps({"dsseEnvelope": envelope}).encode(), public) == 1
