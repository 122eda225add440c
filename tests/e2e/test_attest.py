"""Promotion attestations against real docker-registry processes, checked independently.

The independent check reads the registry with plain HTTP (the OCI referrers tag schema, the
manifest, the bundle blob), recomputes DSSE's pre-authentication encoding by hand and verifies
the ECDSA P-256 signature with ``cryptography``: nothing of the gate's own code is trusted there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from copy import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from devstack.configs import Validation, local_gate_yaml
from devstack.images import ImageBuilder, tag_digests
from devstack.registry import RegistryProcess
from gate.adapters.signers import generate_key_pair
from gate.compose import attestation_reader, local_gatekeeper
from gate.config.loading import load_config
from gate.domain.attestation import load_public_key
from gate.domain.records import State
from gate.domain.ref import ImageRef
from gate.errors import RegistryError
from gate.usecases.attestation import verify_image
from gate.usecases.gating import gate_image
from gate.usecases.keeper import Gatekeeper
from gate.usecases.rollback import rollback
from tests.fakes import FakeValidator

ROOT = Path(__file__).resolve().parents[2]
SEED_VALIDATION = ROOT / "examples" / "seed" / "validation"
BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def write_config(tmp_path: Path, upstream: str, target: str, key: Path | None) -> Path:
    attestation = f"attestation: {{key: '{key}', verifier_id: 'https://gate.example/test'}}"
    return local_gate_yaml(
        tmp_path,
        upstream,
        target,
        validation=Validation(SEED_VALIDATION, timeout=120),
        top=[attestation] if key else [],
    )


def gate_cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gate", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        cwd=ROOT,
        check=False,
        timeout=120,
    )


class Setup:
    """Two registries, a key pair, and a local gatekeeper whose validator passes."""

    def __init__(self, tmp_path: Path, registries: tuple[RegistryProcess, RegistryProcess]) -> None:
        self.upstream, self.target = registries
        self.key = tmp_path / "keys" / "gate.key"
        self.public = generate_key_pair(self.key)
        self.config = write_config(tmp_path, self.upstream.host, self.target.host, self.key)
        keeper = local_gatekeeper(load_config(self.config))
        self.keeper: Gatekeeper = replace(keeper, validator=FakeValidator())

    def http(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            kwargs.pop("method", "GET"), f"http://{self.target.host}/v2/node/{path}", **kwargs
        )

    def referrers_index(self, digest: str) -> dict[str, Any]:
        response = self.http(f"manifests/{digest.replace(':', '-')}", headers={"Accept": OCI_INDEX})
        response.raise_for_status()
        index: dict[str, Any] = response.json()
        return index

    def put_index(self, digest: str, manifests: list[dict[str, Any]]) -> None:
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        self.http(
            f"manifests/{digest.replace(':', '-')}",
            method="PUT",
            content=json.dumps(body).encode(),
            headers={"Content-Type": OCI_INDEX},
        ).raise_for_status()

    def put_blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        started = self.http("blobs/uploads/", method="POST")
        location = started.headers["Location"]
        if location.startswith("/"):
            location = f"http://{self.target.host}{location}"
        sep = "&" if "?" in location else "?"
        httpx.put(f"{location}{sep}digest={digest}", content=data).raise_for_status()
        return digest

    def put_artifact(self, subject: str, bundle: bytes) -> dict[str, Any]:
        """Push ``bundle`` as a referrer of ``subject`` (by hand); its index descriptor."""
        config = self.put_blob(b"{}")
        layer = self.put_blob(bundle)
        subject_bytes = self.http(f"manifests/{subject}", headers={"Accept": OCI_MANIFEST}).content
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": BUNDLE,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": config,
                "size": 2,
            },
            "layers": [{"mediaType": BUNDLE, "digest": layer, "size": len(bundle)}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": len(subject_bytes)},
        }
        data = json.dumps(manifest).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.http(
            f"manifests/{digest}",
            method="PUT",
            content=data,
            headers={"Content-Type": OCI_MANIFEST},
        ).raise_for_status()
        return {
            "mediaType": OCI_MANIFEST,
            "digest": digest,
            "size": len(data),
            "artifactType": BUNDLE,
        }

    def bundle_of(self, descriptor: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """An attestation's manifest (as stored) and its bundle blob, read by plain HTTP."""
        manifest_bytes = self.http(
            f"manifests/{descriptor['digest']}", headers={"Accept": OCI_MANIFEST}
        ).content
        assert "sha256:" + hashlib.sha256(manifest_bytes).hexdigest() == descriptor["digest"]
        manifest = json.loads(manifest_bytes)
        blob = self.http(f"blobs/{manifest['layers'][0]['digest']}", follow_redirects=True)
        blob.raise_for_status()
        return manifest, blob.content

    def verify(self, image: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return gate_cli(
            "verify", image, "--key", str(self.public), "--json", *extra, config=self.config
        )


@pytest.fixture
def setup(tmp_path: Path, registries: tuple[RegistryProcess, RegistryProcess]) -> Setup:
    return Setup(tmp_path, registries)


def push_upstream(images: ImageBuilder, setup: Setup, color: str) -> str:
    return images.image(f"{setup.upstream.host}/node:15-alpine", env={"BACKGROUND_COLOR": color})


def independent_check(pem: bytes, bundle: bytes) -> dict[str, Any]:
    """Verify a bundle's DSSE envelope with ``cryptography`` only; return the statement."""
    body = json.loads(bundle)
    assert body["mediaType"] == BUNDLE
    envelope = body["dsseEnvelope"]
    payload = base64.b64decode(envelope["payload"])
    payload_type = envelope["payloadType"].encode()
    # DSSE v1 PAE: "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body
    pae = b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type, len(payload), payload)
    key = load_pem_public_key(pem)
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    [signature] = envelope["signatures"]
    key.verify(base64.b64decode(signature["sig"]), pae, ec.ECDSA(hashes.SHA256()))
    statement: dict[str, Any] = json.loads(payload)
    return statement


def test_a_promotion_carries_an_attestation_that_verifies_independently(
    setup: Setup, image_builder: ImageBuilder
) -> None:
    digest = push_upstream(image_builder, setup, "Green")
    record = gate_image(setup.keeper, f"{setup.upstream.host}/node:15-alpine").record
    assert record.state is State.PROMOTED
    assert tag_digests(setup.target.host, "node")["15-alpine"] == digest

    # docker-registry has no referrers API: the attestation is listed under the tag schema
    assert setup.http(f"referrers/{digest}").status_code == 404
    [descriptor] = setup.referrers_index(digest)["manifests"]
    assert descriptor["artifactType"] == BUNDLE
    assert f"attestation {descriptor['digest']}" in record.reason
    assert record.attestation == descriptor["digest"]
    assert setup.keeper.ledger.get(record.id).attestation == descriptor["digest"]
    manifest, bundle = setup.bundle_of(descriptor)
    assert manifest["subject"]["digest"] == digest
    assert manifest["artifactType"] == BUNDLE
    assert manifest["layers"][0]["mediaType"] == BUNDLE
    assert manifest["annotations"]["dev.sigstore.bundle.predicateType"] == (
        "https://slsa.dev/verification_summary/v1"
    )

    statement = independent_check(setup.public.read_bytes(), bundle)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/verification_summary/v1"
    assert statement["subject"] == [
        {"name": f"{setup.target.host}/node", "digest": {"sha256": digest.split(":")[1]}}
    ]
    predicate = statement["predicate"]
    assert predicate["verificationResult"] == "PASSED"
    assert predicate["verifier"]["id"] == "https://gate.example/test"
    assert predicate["resourceUri"] == (
        f"pkg:oci/node@{digest.replace(':', '%3A')}?repository_url={setup.target.host}/node"
    )
    assert len(predicate["policy"]["digest"]["sha256"]) == 64
    assert predicate["verifiedLevels"] == ["SLSA_BUILD_LEVEL_0"]
    gate = predicate["urn:gated-import-gate:evidence:v1"]
    assert predicate["policy"]["uri"] == f"gate-rule:{gate['rule']}/acr-task.yaml"
    assert gate["recordId"] == record.id and gate["runId"] == record.run_id
    assert gate["upstream"] == f"{setup.upstream.host}/node" and gate["upstreamDigest"] == digest
    assert gate["validationLogDigest"]["sha256"] == hashlib.sha256(b"fake log").hexdigest()
    task = SEED_VALIDATION / "acr-task.yaml"
    assert gate["taskFileDigest"]["sha256"] == hashlib.sha256(task.read_bytes()).hexdigest()

    # the same envelope in cosign's older tag-based layout, for verifiers that read only that
    att = setup.http(f"manifests/{digest.replace(':', '-')}.att", headers={"Accept": OCI_MANIFEST})
    att.raise_for_status()
    [layer] = att.json()["layers"]
    assert layer["mediaType"] == "application/vnd.dsse.envelope.v1+json"
    assert layer["annotations"]["predicateType"] == "https://slsa.dev/verification_summary/v1"
    envelope = setup.http(f"blobs/{layer['digest']}", follow_redirects=True).json()
    assert envelope == json.loads(bundle)["dsseEnvelope"]

    verified = setup.verify(f"{setup.target.host}/node:15-alpine")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    answer = json.loads(verified.stdout)
    assert answer["verified"] is True and answer["digest"] == digest
    assert answer["attestation"] == descriptor["digest"]


def test_tampered_payload_signature_or_subject_fail_verification(
    setup: Setup, image_builder: ImageBuilder
) -> None:
    digest = push_upstream(image_builder, setup, "Green")
    assert gate_image(setup.keeper, f"{setup.upstream.host}/node:15-alpine").record.state is (
        State.PROMOTED
    )
    [genuine] = setup.referrers_index(digest)["manifests"]
    _, bundle = setup.bundle_of(genuine)
    image = f"{setup.target.host}/node@{digest}"

    def replaced_by(changed: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        setup.put_index(digest, [setup.put_artifact(digest, json.dumps(changed).encode())])
        return setup.verify(image)

    # the payload says FAILED -> PASSED is the attacker's wish; here: another verifier id
    body = json.loads(bundle)
    statement = json.loads(base64.b64decode(body["dsseEnvelope"]["payload"]))
    statement["predicate"]["verifier"]["id"] = "https://attacker.example"
    tampered = json.loads(bundle)
    tampered["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    result = replaced_by(tampered)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "signature does not verify" in json.loads(result.stdout)["reason"]

    # a flipped bit in the signature
    signature = bytearray(base64.b64decode(body["dsseEnvelope"]["signatures"][0]["sig"]))
    signature[-1] ^= 1
    tampered = json.loads(bundle)
    tampered["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(signature)).decode()
    with pytest.raises(InvalidSignature):
        independent_check(setup.public.read_bytes(), json.dumps(tampered).encode())
    result = replaced_by(tampered)
    assert result.returncode == 1
    assert "signature does not verify" in json.loads(result.stdout)["reason"]

    # the untouched index verifies again
    setup.put_index(digest, [genuine])
    assert setup.verify(image).returncode == 0

    # the genuine attestation of this digest, attached to another digest of the target
    other = image_builder.image(f"{setup.target.host}/node:other", env={"BACKGROUND_COLOR": "Blue"})
    setup.put_index(other, [setup.put_artifact(other, bundle)])
    result = setup.verify(f"{setup.target.host}/node@{other}")
    assert result.returncode == 1
    assert "another subject" in json.loads(result.stdout)["reason"]

    # an attestation whose manifest names another subject than the digest it is listed under
    setup.put_index(other, [genuine])
    result = setup.verify(f"{setup.target.host}/node@{other}")
    assert result.returncode == 1
    assert f"subject is {digest}" in json.loads(result.stdout)["reason"]


def test_an_image_without_attestation_or_with_another_key_is_not_verified(
    setup: Setup, image_builder: ImageBuilder, tmp_path: Path
) -> None:
    unattested = image_builder.image(f"{setup.target.host}/node:raw", env={"BACKGROUND_COLOR": "X"})
    result = setup.verify(f"{setup.target.host}/node:raw")
    assert result.returncode == 1
    answer = json.loads(result.stdout)
    assert answer["digest"] == unattested and "no attestation" in answer["reason"]

    push_upstream(image_builder, setup, "Green")
    gate_image(setup.keeper, f"{setup.upstream.host}/node:15-alpine")
    other_public = generate_key_pair(tmp_path / "other" / "k.key")
    result = gate_cli(
        "verify",
        f"{setup.target.host}/node:15-alpine",
        "--key",
        str(other_public),
        config=setup.config,
    )
    assert result.returncode == 1
    assert "signature does not verify" in result.stdout

    bad = gate_cli(
        "verify",
        f"{setup.target.host}/node:15-alpine",
        "--key",
        str(setup.key),
        config=setup.config,
    )
    assert bad.returncode == 2 and "not a PEM public key" in bad.stderr
    bad = gate_cli(
        "verify", f"{setup.target.host}/node:15-alpine", "--max-age", "soon", config=setup.config
    )
    assert bad.returncode == 2 and "not an age" in bad.stderr


def test_verification_refuses_an_attestation_older_than_max_age(
    setup: Setup, image_builder: ImageBuilder
) -> None:
    push_upstream(image_builder, setup, "Green")
    gate_image(setup.keeper, f"{setup.upstream.host}/node:15-alpine")
    registry, store = attestation_reader(load_config(setup.config))
    key = load_public_key(setup.public.read_bytes(), "test key")
    image = f"{setup.target.host}/node:15-alpine"
    assert verify_image(registry, store, image, [key], max_age=timedelta(days=30)).verified
    later = datetime.now(UTC) + timedelta(days=31)
    verdict = verify_image(registry, store, image, [key], max_age=timedelta(days=30), now=later)
    assert not verdict.verified and "older than the allowed" in verdict.reason


def test_after_a_rollback_the_demoted_digest_no_longer_verifies(
    setup: Setup, image_builder: ImageBuilder
) -> None:
    first = push_upstream(image_builder, setup, "Green")
    assert gate_image(setup.keeper, f"{setup.upstream.host}/node:15-alpine").record.state is (
        State.PROMOTED
    )
    second = push_upstream(image_builder, setup, "Orange")
    assert gate_image(setup.keeper, f"{setup.upstream.host}/node:15-alpine").record.state is (
        State.PROMOTED
    )
    assert setup.verify(f"{setup.target.host}/node@{second}").returncode == 0

    record = rollback(setup.keeper, f"{setup.target.host}/node", reason="Orange breaks apps")
    assert record.digest == first
    assert "demotion attestation sha256:" in record.reason
    assert record.attestation.startswith("sha256:") and record.attestation in record.reason
    assert len(setup.referrers_index(second)["manifests"]) == 2
    att = setup.http(f"manifests/{second.replace(':', '-')}.att", headers={"Accept": OCI_MANIFEST})
    assert len(att.json()["layers"]) == 2

    demoted = setup.verify(f"{setup.target.host}/node@{second}")
    assert demoted.returncode == 1
    reason = json.loads(demoted.stdout)["reason"]
    assert "FAILED" in reason and "demoted" in reason and "Orange breaks apps" in reason
    # the stable tag is back on the first digest, whose attestation still says PASSED
    assert setup.verify(f"{setup.target.host}/node:15-alpine").returncode == 0


class BrokenStore:
    """An attestation store that cannot write (a registry refusing the artifact)."""

    def attach(self, subject: ImageRef, bundle: bytes, *, predicate_type: str, created: str) -> str:
        raise RegistryError("registry refused the attestation (test)")

    def find(self, subject: ImageRef) -> list[Any]:
        return []


def test_a_failed_attestation_is_a_failed_promotion_and_the_stable_tag_stays(
    setup: Setup, image_builder: ImageBuilder
) -> None:
    digest = push_upstream(image_builder, setup, "Green")
    assert setup.keeper.attestor is not None
    keeper = replace(setup.keeper, attestor=replace(setup.keeper.attestor, store=BrokenStore()))
    record = gate_image(keeper, f"{setup.upstream.host}/node:15-alpine").record
    # not promoted: the failure is the promotion's (a passed validation is kept for the retry)
    assert record.state in (State.FAILED, State.VALIDATED)
    assert "refused the attestation" in record.reason
    tags = tag_digests(setup.target.host, "node")
    assert "15-alpine" not in tags
    # the run-ID tag was written first, and only it
    assert list(tags.values()) == [digest]
    assert setup.verify(f"{setup.target.host}/node@{digest}").returncode == 1


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    key = tmp_path / "k" / "gate.key"
    result = subprocess.run(
        [sys.executable, "-m", "gate", "keygen", str(key)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert b"PUBLIC KEY" in key.with_suffix(".pub").read_bytes()
    again = subprocess.run(
        [sys.executable, "-m", "gate", "keygen", str(key)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert again.returncode == 2 and "exists already" in again.stderr


def test_consumer_examples_ask_for_what_the_gate_writes() -> None:
    import yaml

    from gate.config.schema import AttestationSection
    from gate.domain import attestation as attest

    examples = ROOT / "examples" / "consumers"
    [policy] = yaml.safe_load_all((examples / "kyverno-policy.yaml").read_text())
    [image_rule] = policy["spec"]["rules"][0]["verifyImages"]
    [wanted] = image_rule["attestations"]
    assert wanted["type"] == attest.PREDICATE_TYPE
    checks = {c["key"]: c["value"] for c in wanted["conditions"][0]["all"]}
    assert checks["{{ verificationResult }}"] == attest.PASSED
    assert checks["{{ verifier.id }}"] == AttestationSection(key_text="k").verifier_id
    workflow = yaml.safe_load((examples / "ci-verify.yml").read_text())
    steps = " ".join(str(s.get("run", "")) for s in workflow["jobs"]["build"]["steps"])
    assert "gate verify" in steps and "--key" in steps and "--max-age" in steps
    # the second rule admits only digests carrying the gate's promotion signature
    [signature_rule] = policy["spec"]["rules"][1]["verifyImages"]
    assert "attestations" not in signature_rule and signature_rule.get("type", "Cosign") == "Cosign"
    [entry] = signature_rule["attestors"][0]["entries"]
    assert "SIGNATURE-PUBLIC-KEY" in entry["keys"]["publicKeys"]
    assert entry["keys"]["rekor"]["ignoreTlog"] is True
    provider, verifier = yaml.safe_load_all((examples / "ratify-verifier.yaml").read_text())
    assert [k["name"] for k in provider["spec"]["parameters"]["keys"]] == ["gate-signature"]
    [policy_entry] = verifier["spec"]["parameters"]["trustPolicies"]
    assert policy_entry["keys"] == [{"provider": provider["metadata"]["name"]}]
    assert verifier["spec"]["artifactTypes"] == "application/vnd.dev.cosign.artifact.sig.v1+json"
