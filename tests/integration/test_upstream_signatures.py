"""require_signature: the candidate must carry a cosign key-based signature before validation.

The test upstream is signed in cosign's layout here, by hand (sigstore/cosign
specs/SIGNATURE_SPEC.md): a simple-signing payload blob, its ECDSA P-256 signature in the layer's
``dev.cosignproject.cosign/signature`` annotation, the manifest tagged ``sha256-<hex>.sig``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import textwrap
from copy import replace
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devstack.acr import AcrEmulator, TestCredential
from devstack.configs import local_gate_yaml
from devstack.images import ImageBuilder, tag_digests
from devstack.registry import RegistryProcess
from gate.adapters.registry.oci import HostSettings, OciRegistry
from gate.adapters.registry.referrers import CosignSignatureReader
from gate.adapters.signers import key_vault_public_keys
from gate.compose import local_gatekeeper
from gate.config.loading import load_config
from gate.domain.records import State
from gate.errors import ConfigError
from gate.usecases.gating import gate_image
from gate.usecases.keeper import Gatekeeper
from tests.fakes import FakeValidator

ROOT = Path(__file__).resolve().parents[2]
SEED_VALIDATION = ROOT / "examples" / "seed" / "validation"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def new_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key


def put_blob(host: str, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    started = httpx.post(f"http://{host}/v2/{repo}/blobs/uploads/")
    location = started.headers["Location"]
    if location.startswith("/"):
        location = f"http://{host}{location}"
    sep = "&" if "?" in location else "?"
    httpx.put(f"{location}{sep}digest={digest}", content=data).raise_for_status()
    return digest


def cosign_sign(
    host: str,
    repo: str,
    digest: str,
    key: ec.EllipticCurvePrivateKey | VaultKey,
    signed: str | None = None,
) -> None:
    """Attach a cosign signature of ``signed`` (default ``digest``) to ``repo@digest``."""
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": f"{host}/{repo}"},
                "image": {"docker-manifest-digest": signed or digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    ).encode()
    signature = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    config = put_blob(host, repo, b"{}")
    layer = put_blob(host, repo, payload)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config,
            "size": 2,
        },
        "layers": [
            {
                "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                "digest": layer,
                "size": len(payload),
                "annotations": {"dev.cosignproject.cosign/signature": signature},
            }
        ],
    }
    httpx.put(
        f"http://{host}/v2/{repo}/manifests/{digest.replace(':', '-')}.sig",
        content=json.dumps(manifest).encode(),
        headers={"Content-Type": OCI_MANIFEST},
    ).raise_for_status()


class Upstream:
    def __init__(self, tmp_path: Path, registries: tuple[RegistryProcess, RegistryProcess]):
        self.upstream, self.target = registries
        self.key = new_key(tmp_path / "cosign.pub")
        config = local_gate_yaml(
            tmp_path,
            self.upstream.host,
            self.target.host,
            validation=f'{{folder: "{SEED_VALIDATION}", timeout: 120}}',
            rule=["require_signature: {keys: [cosign.pub]}"],
        )
        self.validator = FakeValidator()
        self.keeper: Gatekeeper = replace(
            local_gatekeeper(load_config(config)), validator=self.validator
        )

    def gate(self) -> tuple[State, str]:
        record = gate_image(self.keeper, f"{self.upstream.host}/node:15-alpine").record
        return record.state, record.reason


@pytest.fixture
def up(tmp_path: Path, registries: tuple[RegistryProcess, RegistryProcess]) -> Upstream:
    return Upstream(tmp_path, registries)


def test_a_correctly_signed_upstream_is_validated_and_promoted(
    up: Upstream, image_builder: ImageBuilder
) -> None:
    digest = image_builder.image(f"{up.upstream.host}/node:15-alpine", env={"C": "Green"})
    cosign_sign(up.upstream.host, "node", digest, up.key)
    state, reason = up.gate()
    assert state is State.PROMOTED, reason
    assert len(up.validator.requests) == 1
    assert tag_digests(up.target.host, "node")["15-alpine"] == digest


def test_an_unsigned_upstream_is_rejected_before_any_validation(
    up: Upstream, image_builder: ImageBuilder
) -> None:
    digest = image_builder.image(f"{up.upstream.host}/node:15-alpine", env={"C": "Green"})
    state, reason = up.gate()
    assert state is State.REJECTED
    assert reason.startswith("unsigned:") and digest in reason
    assert up.validator.requests == []
    assert "15-alpine" not in tag_digests(up.target.host, "node")
    # the decision is recorded, and a repeat is a duplicate of it
    again = gate_image(up.keeper, f"{up.upstream.host}/node:15-alpine")
    assert again.duplicate and again.record.state is State.REJECTED


def test_a_signature_by_another_key_or_over_another_digest_does_not_verify(
    up: Upstream, image_builder: ImageBuilder, tmp_path: Path
) -> None:
    digest = image_builder.image(f"{up.upstream.host}/node:15-alpine", env={"C": "Green"})
    stranger = new_key(tmp_path / "stranger.pub")
    cosign_sign(up.upstream.host, "node", digest, stranger)
    state, reason = up.gate()
    assert state is State.REJECTED
    assert reason.startswith("signature does not verify:")
    assert up.validator.requests == []

    # the rule's key, but over another digest (a signature moved from another image)
    other = image_builder.image(f"{up.upstream.host}/node:15-alpine", env={"C": "Orange"})
    cosign_sign(up.upstream.host, "node", other, up.key, signed=digest)
    state, reason = up.gate()
    assert state is State.REJECTED and reason.startswith("signature does not verify:")
    assert up.validator.requests == []


def test_require_signature_names_existing_pem_keys_or_key_vault_key_uris(tmp_path: Path) -> None:
    body = textwrap.dedent(
        f"""\
        rules:
          - name: node
            source: 127.0.0.1:5000/node
            tags: ["15-alpine"]
            target: 127.0.0.1:5001/node
            validation: {{folder: "{SEED_VALIDATION}"}}
            require_signature: {{keys: [KEYS]}}
        """
    )
    config = tmp_path / "gate.yaml"
    config.write_text(body.replace("KEYS", "missing.pub"))
    with pytest.raises(ConfigError, match=r"require_signature.keys\[0\]: .*missing.pub"):
        load_config(config)
    config.write_text(body.replace("KEYS", "https://kv.vault.azure.net/keys/k"))
    assert load_config(config).rules[0].signature_keys == ("https://kv.vault.azure.net/keys/k",)
    config.write_text(body.replace("KEYS", "https://kv.vault.azure.net/secrets/k"))
    with pytest.raises(ConfigError, match="is not a Key Vault key URI"):
        load_config(config)
    config.write_text(body.replace("KEYS", ""))
    with pytest.raises(ConfigError, match="require_signature"):
        load_config(config)


class VaultKey:
    """A Key Vault key that signs like a private key object (the emulator's vault, through the
    real azure-keyvault-keys CryptographyClient): ES256 over the payload's SHA-256, re-encoded
    from the raw r || s Key Vault answers to the DER cosign writes."""

    def __init__(self, key_id: str, credential: object) -> None:
        from azure.keyvault.keys.crypto import CryptographyClient

        self.client = CryptographyClient(key_id, credential, verify_challenge_resource=False)  # type: ignore[arg-type]

    def sign(self, payload: bytes, _algorithm: object) -> bytes:
        from azure.keyvault.keys.crypto import SignatureAlgorithm
        from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

        raw = self.client.sign(SignatureAlgorithm.es256, hashlib.sha256(payload).digest()).signature
        return encode_dss_signature(int.from_bytes(raw[:32]), int.from_bytes(raw[32:]))


def test_a_rule_may_name_a_key_vault_key_as_the_signer(
    tmp_path: Path,
    registries: tuple[RegistryProcess, RegistryProcess],
    image_builder: ImageBuilder,
    acr_emulator: AcrEmulator,
    azure_credential: TestCredential,
) -> None:
    from azure.keyvault.keys import KeyClient

    upstream, target = registries
    vault = KeyClient(acr_emulator.key_vault_url, azure_credential, verify_challenge_resource=False)
    key = vault.create_ec_key("upstream-signer", curve="P-256")
    stranger = vault.create_ec_key("someone-else", curve="P-256")
    config = local_gate_yaml(
        tmp_path,
        upstream.host,
        target.host,
        validation=f'{{folder: "{SEED_VALIDATION}", timeout: 120}}',
        rule=[f'require_signature: {{keys: ["{str(key.id).rsplit("/", 1)[0]}"]}}'],
    )
    validator = FakeValidator()
    reads: list[str] = []

    def read_key(uri: str) -> list[object]:
        reads.append(uri)
        return key_vault_public_keys(uri, azure_credential, verify_challenge_resource=False)

    # the gate's own reader, reading the vault with the emulator's credential
    reader = CosignSignatureReader(
        OciRegistry({upstream.host: HostSettings(insecure=True)}), read_key
    )
    keeper = replace(local_gatekeeper(load_config(config)), validator=validator, signatures=reader)
    signed_by_stranger = image_builder.image(f"{upstream.host}/node:15-alpine", env={"C": "Red"})
    cosign_sign(
        upstream.host, "node", signed_by_stranger, VaultKey(str(stranger.id), azure_credential)
    )
    refused = gate_image(keeper, f"{upstream.host}/node:15-alpine").record
    signed = image_builder.image(f"{upstream.host}/node:15-alpine", env={"C": "Green"})
    cosign_sign(upstream.host, "node", signed, VaultKey(str(key.id), azure_credential))
    passed = gate_image(keeper, f"{upstream.host}/node:15-alpine").record

    assert refused.state is State.REJECTED and refused.reason.startswith("signature does not")
    assert passed.state is State.PROMOTED, passed.reason
    assert len(validator.requests) == 1  # the refused digest never reached a validation
    assert tag_digests(target.host, "node")["15-alpine"] == signed
    # the key is read once for the process, not once per candidate
    assert reads == [str(key.id).rsplit("/", 1)[0]]
