"""The gate's promotion signature against real docker-registry processes, checked independently.

The independent check reads cosign's ``sha256-<hex>.sig`` manifest with plain HTTP, takes each
simple-signing layer's bytes from the registry and its signature from the layer's annotation,
and verifies it with ``cryptography`` as cosign's verifier does (ECDSA P-256, SHA-256 over the
payload bytes); the payload's fields are checked against the simple-signing spec. Nothing of the
gate's own code is trusted there.
"""

from __future__ import annotations

import base64
import hashlib
import json
from copy import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from devstack.configs import Validation, local_gate_yaml
from devstack.images import ImageBuilder, tag_digests
from devstack.registry import RegistryProcess
from gate.adapters.signers import generate_key_pair
from gate.compose import local_gatekeeper
from gate.config.loading import load_config
from gate.domain.records import State
from gate.domain.ref import ImageRef
from gate.errors import RegistryError
from gate.usecases.gating import gate_image
from gate.usecases.keeper import Gatekeeper
from gate.usecases.rollback import rollback
from tests.e2e.test_attest import SEED_VALIDATION, gate_cli
from tests.fakes import FakeValidator

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE = "dev.cosignproject.cosign/signature"
UPSTREAM_TAG = "node:15-alpine"


class Signed:
    """Two registries, two key pairs (attestation, signature) and a gate whose validator
    passes."""

    def __init__(self, tmp_path: Path, registries: tuple[RegistryProcess, RegistryProcess]) -> None:
        self.upstream, self.target = registries
        self.key = tmp_path / "keys" / "attest.key"
        self.public = generate_key_pair(self.key)
        self.signature_key = tmp_path / "keys" / "sign.key"
        self.signature_public = generate_key_pair(self.signature_key)
        attestation = (
            f"attestation: {{key: '{self.key}', signature_key: '{self.signature_key}', "
            "verifier_id: 'https://gate.example/test'}"
        )
        self.config = local_gate_yaml(
            tmp_path,
            self.upstream.host,
            self.target.host,
            validation=Validation(SEED_VALIDATION, timeout=120),
            top=[attestation],
        )
        keeper = local_gatekeeper(load_config(self.config))
        self.keeper: Gatekeeper = replace(keeper, validator=FakeValidator())

    def http(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            kwargs.pop("method", "GET"), f"http://{self.target.host}/v2/node/{path}", **kwargs
        )

    def sig_manifest(self, digest: str) -> dict[str, Any] | None:
        response = self.http(
            f"manifests/{digest.replace(':', '-')}.sig", headers={"Accept": OCI_MANIFEST}
        )
        if response.status_code == 404:
            return None
        response.raise_for_status()
        manifest: dict[str, Any] = response.json()
        return manifest

    def verified_payloads(self, digest: str, pem: bytes) -> list[dict[str, Any]]:
        """The payloads of ``digest``'s ``.sig`` layers whose signature verifies with ``pem``."""
        manifest = self.sig_manifest(digest)
        if manifest is None:
            return []
        key = load_pem_public_key(pem)
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
        found = []
        for layer in manifest["layers"]:
            assert layer["mediaType"] == SIMPLE_SIGNING
            payload = self.http(f"blobs/{layer['digest']}").content
            assert "sha256:" + hashlib.sha256(payload).hexdigest() == layer["digest"]
            try:
                key.verify(
                    base64.b64decode(layer["annotations"][SIGNATURE]),
                    payload,
                    ec.ECDSA(hashes.SHA256()),
                )
            except InvalidSignature:
                continue
            found.append(json.loads(payload))
        return found

    def verify(self, image: str) -> tuple[int, dict[str, Any]]:
        done = gate_cli(
            "verify",
            image,
            "--key",
            str(self.public),
            "--signature-key",
            str(self.signature_public),
            "--json",
            config=self.config,
        )
        return done.returncode, json.loads(done.stdout)

    def promote(self, images: ImageBuilder, color: str, *, force: bool = False) -> str:
        digest = images.image(f"{self.upstream.host}/{UPSTREAM_TAG}", env={"COLOR": color})
        record = gate_image(self.keeper, f"{self.upstream.host}/{UPSTREAM_TAG}", force=force)
        assert record.record.state is State.PROMOTED, record.record.reason
        return digest


@pytest.fixture
def signed(tmp_path: Path, registries: tuple[RegistryProcess, RegistryProcess]) -> Signed:
    return Signed(tmp_path, registries)


def check_simple_signing(payload: dict[str, Any], name: str, digest: str) -> None:
    """The fields containers-signature(5) and cosign's SIGNATURE_SPEC.md name."""
    critical = payload["critical"]
    assert critical["type"] == "cosign container image signature"
    assert critical["image"] == {"docker-manifest-digest": digest}
    assert critical["identity"] == {"docker-reference": name}
    assert set(payload) == {"critical", "optional"}
    assert isinstance(payload["optional"], dict)


def test_a_promotion_signs_the_digest_as_cosign_sign_does_with_its_own_key(
    signed: Signed, image_builder: ImageBuilder
) -> None:
    digest = signed.promote(image_builder, "Green")

    assert tag_digests(signed.target.host, "node")["15-alpine"] == digest
    manifest = signed.sig_manifest(digest)
    assert manifest is not None and manifest["mediaType"] == OCI_MANIFEST
    [payload] = signed.verified_payloads(digest, signed.signature_public.read_bytes())
    check_simple_signing(payload, f"{signed.target.host}/node", digest)
    assert payload["optional"]["dev.gated-import-gate/rule"] == "node"
    # its own key: the attestation key verifies no signature layer
    assert signed.verified_payloads(digest, signed.public.read_bytes()) == []

    code, verdict = signed.verify(f"{signed.target.host}/node:15-alpine")
    assert code == 0, verdict["reason"]
    assert verdict["signed"] is True and verdict["digest"] == digest

    # a redelivered promotion adds no second layer
    again = gate_image(signed.keeper, f"{signed.upstream.host}/{UPSTREAM_TAG}", force=True)
    assert again.record.state is State.PROMOTED
    manifest = signed.sig_manifest(digest)
    assert manifest is not None and len(manifest["layers"]) == 1


def test_after_a_rollback_the_demoted_digest_carries_no_gate_signature_and_is_re_signed_on_re_promotion(
    signed: Signed, image_builder: ImageBuilder
) -> None:
    first = signed.promote(image_builder, "Green")
    second = signed.promote(image_builder, "Orange")
    pem = signed.signature_public.read_bytes()
    assert len(signed.verified_payloads(second, pem)) == 1

    record = rollback(signed.keeper, f"{signed.target.host}/node", reason="Orange breaks apps")

    assert record.digest == first
    assert "held only the gate's signature" in record.reason
    # docker-registry deleted the manifest, so the tag went with it
    assert signed.sig_manifest(second) is None
    assert signed.verified_payloads(second, pem) == []
    code, verdict = signed.verify(f"{signed.target.host}/node@{second}")
    assert code == 1
    assert verdict["signed"] is False and verdict["predicate"]["verificationResult"] == "FAILED"
    assert "no gate signature" in verdict["reason"] and "FAILED" in verdict["reason"]
    # the stable tag's digest stays signed, and verifies
    assert len(signed.verified_payloads(first, pem)) == 1
    code, verdict = signed.verify(f"{signed.target.host}/node:15-alpine")
    assert code == 0 and verdict["digest"] == first, verdict["reason"]

    # re-gated (the upstream tag still names Orange): a newer PASSED attestation, signed again
    again = gate_image(signed.keeper, f"{signed.upstream.host}/{UPSTREAM_TAG}", force=True)
    assert again.record.state is State.PROMOTED and again.record.digest == second
    [payload] = signed.verified_payloads(second, pem)
    check_simple_signing(payload, f"{signed.target.host}/node", second)
    code, verdict = signed.verify(f"{signed.target.host}/node@{second}")
    assert code == 0 and verdict["signed"] is True, verdict["reason"]


def test_a_rollback_keeps_other_signers_layers_and_re_signs_a_demoted_target(
    signed: Signed, image_builder: ImageBuilder, tmp_path: Path
) -> None:
    first = signed.promote(image_builder, "Green")
    second = signed.promote(image_builder, "Orange")
    pem = signed.signature_public.read_bytes()
    # someone else signs the second digest too (a layer the gate must leave alone)
    other = ec.generate_private_key(ec.SECP256R1())
    put_foreign_signature(signed, second, other)
    manifest = signed.sig_manifest(second)
    assert manifest is not None and len(manifest["layers"]) == 2

    rollback(signed.keeper, f"{signed.target.host}/node", reason="Orange breaks apps")

    manifest = signed.sig_manifest(second)
    assert manifest is not None and len(manifest["layers"]) == 1
    assert signed.verified_payloads(second, pem) == []
    other_pem = other.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert len(signed.verified_payloads(second, other_pem)) == 1

    # back to the demoted digest: the first loses its signature, the second is signed again,
    # and gate verify says why the two disagree (its newest attestation is still the demotion)
    back = rollback(signed.keeper, f"{signed.target.host}/node", reason="Green is worse", to=second)
    assert back.digest == second
    assert signed.verified_payloads(first, pem) == []
    assert len(signed.verified_payloads(second, pem)) == 1
    code, verdict = signed.verify(f"{signed.target.host}/node@{second}")
    assert code == 1 and verdict["signed"] is True
    assert "signed by the gate, but" in verdict["reason"] and "FAILED" in verdict["reason"]


def put_foreign_signature(signed: Signed, digest: str, key: ec.EllipticCurvePrivateKey) -> None:
    """Append a cosign-style layer signed by ``key`` to ``digest``'s ``.sig`` manifest, by hand."""
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": f"{signed.target.host}/node"},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": {"who": "someone else"},
        }
    ).encode()
    layer = put_blob(signed, payload)
    signature = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    manifest = signed.sig_manifest(digest)
    assert manifest is not None
    manifest["layers"].append(
        {
            "mediaType": SIMPLE_SIGNING,
            "digest": layer,
            "size": len(payload),
            "annotations": {SIGNATURE: signature},
        }
    )
    signed.http(
        f"manifests/{digest.replace(':', '-')}.sig",
        method="PUT",
        content=json.dumps(manifest).encode(),
        headers={"Content-Type": OCI_MANIFEST},
    ).raise_for_status()


def put_blob(signed: Signed, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    started = signed.http("blobs/uploads/", method="POST")
    location = started.headers["Location"]
    if location.startswith("/"):
        location = f"http://{signed.target.host}{location}"
    sep = "&" if "?" in location else "?"
    httpx.put(f"{location}{sep}digest={digest}", content=data).raise_for_status()
    return digest


class RefusingRemoval:
    """The gate's signature store, except that the registry refuses every removal."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def signatures(self, image: ImageRef) -> Any:
        return self._inner.signatures(image)

    def add_signature(self, image: ImageRef, payload: bytes, signature: str) -> str:
        result: str = self._inner.add_signature(image, payload, signature)
        return result

    def remove_signatures(self, image: ImageRef, layers: Any) -> str:
        raise RegistryError("registry refused the delete (test)")


def test_a_signature_that_cannot_be_removed_is_recorded_and_gate_verify_refuses_the_digest(
    signed: Signed, image_builder: ImageBuilder
) -> None:
    signed.promote(image_builder, "Green")
    second = signed.promote(image_builder, "Orange")
    signatory = signed.keeper.signatory
    assert signatory is not None
    store = RefusingRemoval(signatory.store)
    keeper = replace(signed.keeper, signatory=replace(signatory, store=store))

    record = rollback(keeper, f"{signed.target.host}/node", reason="Orange breaks apps")

    # the rollback happened, and its record says what did not
    assert record.state is State.ROLLED_BACK
    assert f"the gate's signature of {second} could NOT be removed" in record.reason
    assert "refused the delete" in record.reason
    assert len(signed.verified_payloads(second, signed.signature_public.read_bytes())) == 1
    code, verdict = signed.verify(f"{signed.target.host}/node@{second}")
    assert code == 1 and verdict["signed"] is True
    assert "should have been removed" in verdict["reason"]


def test_a_failure_to_sign_is_a_failed_promotion_and_the_stable_tag_stays(
    signed: Signed, image_builder: ImageBuilder
) -> None:
    class Refusing(RefusingRemoval):
        def add_signature(self, image: ImageRef, payload: bytes, signature: str) -> str:
            raise RegistryError("registry refused the signature (test)")

    signatory = signed.keeper.signatory
    assert signatory is not None
    store = Refusing(signatory.store)
    keeper = replace(signed.keeper, signatory=replace(signatory, store=store))
    digest = image_builder.image(f"{signed.upstream.host}/{UPSTREAM_TAG}", env={"COLOR": "Red"})

    record = gate_image(keeper, f"{signed.upstream.host}/{UPSTREAM_TAG}").record

    assert record.state is State.VALIDATED and "refused the signature" in record.reason
    tags = tag_digests(signed.target.host, "node")
    # the run-ID tag (and the attestation) only: the stable tag never reached an unsigned digest
    assert "15-alpine" not in tags and tags["15-alpine-run1"] == digest
    assert signed.sig_manifest(digest) is None


def test_gate_verify_without_a_signature_key_says_the_signature_was_not_checked(
    signed: Signed, image_builder: ImageBuilder, tmp_path: Path
) -> None:
    digest = signed.promote(image_builder, "Green")
    plain = tmp_path / "plain.yaml"
    plain.write_text(
        signed.config.read_text().replace(f", signature_key: '{signed.signature_key}'", "")
    )
    done = gate_cli("verify", f"{signed.target.host}/node@{digest}", config=plain)
    assert done.returncode == 0, done.stdout
    assert "gate signature not checked" in done.stdout


def test_where_the_registry_refuses_deletes_the_signature_manifest_is_emptied_and_said_so(
    tmp_path: Path, image_builder: ImageBuilder
) -> None:
    with (
        RegistryProcess(tmp_path / "up") as upstream,
        RegistryProcess(tmp_path / "target", delete_enabled=False) as target,
    ):
        signed = Signed(tmp_path, (upstream, target))
        signed.promote(image_builder, "Green")
        second = signed.promote(image_builder, "Orange")

        record = rollback(signed.keeper, f"{target.host}/node", reason="Orange breaks apps")

        assert "could not delete" in record.reason and "holding no signature" in record.reason
        manifest = signed.sig_manifest(second)
        assert manifest is not None and manifest["layers"] == []
        code, verdict = signed.verify(f"{target.host}/node@{second}")
        assert code == 1 and verdict["signed"] is False
