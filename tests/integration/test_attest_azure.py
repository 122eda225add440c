"""Attestations on the Azure side: a Key Vault key signs (real azure-keyvault-keys client against
the emulator's vault) and the emulated ACR's referrers API finds them (no tag schema written)."""

from __future__ import annotations

import base64
import hashlib
import json
import textwrap
from copy import replace
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devstack.acr import AcrEmulator, TestCredential
from devstack.images import ImageBuilder, tag_digests
from devstack.registry import RegistryProcess
from gate.adapters.registry.oci import HostSettings, OciRegistry
from gate.adapters.registry.referrers import OciAttestationStore, tag_schema_tag
from gate.adapters.signers import KeyVaultSigner
from gate.compose import build_gatekeeper
from gate.config.loading import load_config
from gate.domain.attestation import PASSED, Evidence, load_public_key, verify
from gate.domain.records import State
from gate.domain.ref import ImageRef
from gate.entrypoints import cli
from gate.usecases.attestation import Attestor
from gate.usecases.gating import gate_image
from tests.e2e.test_attest import SEED_VALIDATION as SEED
from tests.e2e.test_attest import independent_check
from tests.fakes import FakeValidator

ACR_TOKEN_USER = "00000000-0000-0000-0000-000000000000"


def acr_client(emulator: AcrEmulator, login: str, credential: TestCredential) -> OciRegistry:
    """An OCI client of the emulated ACR, signed in as docker login does with an identity."""
    aad = credential.get_token("https://containerregistry.azure.net/.default").token
    response = httpx.post(
        f"https://{login}/oauth2/exchange",
        data={"grant_type": "access_token", "service": login, "access_token": aad},
    )
    response.raise_for_status()
    refresh = response.json()["refresh_token"]
    return OciRegistry({login: HostSettings(username=ACR_TOKEN_USER, password=refresh)})


def test_a_key_vault_key_signs_and_acr_lists_the_attestation_by_referrers_api(
    acr_emulator: AcrEmulator, azure_credential: TestCredential, image_builder: ImageBuilder
) -> None:
    from azure.keyvault.keys import KeyClient

    acr = acr_emulator.add_registry("contosobase")
    digest = image_builder.image(f"{acr.backing.host}/node:15-alpine", env={"COLOR": "Green"})
    vault = KeyClient(acr_emulator.key_vault_url, azure_credential, verify_challenge_resource=False)
    key = vault.create_ec_key("gate-attestation", curve="P-256")
    signer = KeyVaultSigner(str(key.id), azure_credential, verify_challenge_resource=False)
    assert signer.key_uri.startswith(f"{acr_emulator.key_vault_url}/keys/gate-attestation/")

    subject = ImageRef(acr.login_server, "node", digest=digest)
    with acr_client(acr_emulator, acr.login_server, azure_credential) as oci:
        store = OciAttestationStore(oci)
        attestor = Attestor(signer=signer, store=store, verifier_id="https://gate.example/azure")
        attestation = attestor.attach(
            Evidence(
                subject=subject,
                result=PASSED,
                status="promoted",
                reason="passed validation run ca1",
                rule="node",
                record_id="r1",
                run_id="ca1",
                stable_tag="15-alpine",
            )
        )
        found = store.find(subject)

    # the emulated ACR answered the referrers API, so no tag-schema index was written
    names = [c.name for c in acr.calls]
    assert "v2Referrers" in names
    schema_tag = httpx.get(
        f"http://{acr.backing.host}/v2/node/manifests/{tag_schema_tag(digest)}",
        headers={"Accept": "application/vnd.oci.image.index.v1+json"},
    )
    assert schema_tag.status_code == 404
    assert [f.digest for f in found] == [attestation]
    assert [c.name for c in acr_emulator.vault_calls].count("signWithKey") == 1

    # the independent check, with the public key as Key Vault gives it (JWK -> PEM)
    jwk = vault.get_key("gate-attestation").key
    assert jwk.x is not None and jwk.y is not None
    public = ec.EllipticCurvePublicNumbers(
        int.from_bytes(jwk.x, "big"), int.from_bytes(jwk.y, "big"), ec.SECP256R1()
    ).public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    statement = independent_check(pem, found[0].bundle)
    assert statement["subject"][0]["digest"] == {"sha256": digest.split(":")[1]}
    assert statement["predicate"]["verifier"]["id"] == "https://gate.example/azure"
    hint = json.loads(found[0].bundle)["verificationMaterial"]["publicKey"]["hint"]
    assert hint == signer.key_hint
    # the hint is cosign's, derived from the key (not the key URI), and no signature names
    # another key id
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert hint == base64.b64encode(hashlib.sha256(der).digest()).decode()
    keyids = [s["keyid"] for s in json.loads(found[0].bundle)["dsseEnvelope"]["signatures"]]
    assert keyids == [""]
    signature = base64.b64decode(
        json.loads(found[0].bundle)["dsseEnvelope"]["signatures"][0]["sig"]
    )
    assert signature[0] == 0x30  # DER, not Key Vault's raw r || s

    verdict = verify(subject, found, [load_public_key(pem, "vault key")])
    assert verdict.verified, verdict.reason


def test_the_emulated_referrers_api_answers_an_empty_index_for_an_unreferred_digest(
    acr_emulator: AcrEmulator, azure_credential: TestCredential, image_builder: ImageBuilder
) -> None:
    acr = acr_emulator.add_registry("contosobase")
    digest = image_builder.image(f"{acr.backing.host}/node:15-alpine", env={"COLOR": "Green"})
    with acr_client(acr_emulator, acr.login_server, azure_credential) as oci:
        subject = ImageRef(acr.login_server, "node", digest=digest)
        # nothing refers to it yet: 200 and an empty index, not 404
        empty = oci.referrers(subject)
        assert empty is not None and json.loads(empty)["manifests"] == []


def test_the_azure_gate_in_push_mode_attests_with_its_key_vault_key(
    tmp_path: Path,
    acr_emulator: AcrEmulator,
    azure_credential: TestCredential,
    image_builder: ImageBuilder,
) -> None:
    from azure.keyvault.keys import KeyClient

    upstream = acr_emulator.add_registry("publicregistry", "public-rg")
    base = acr_emulator.add_registry("baseartifacts", "base-rg")
    digest = image_builder.image(
        f"{upstream.backing.host}/node:15-alpine", env={"BACKGROUND_COLOR": "Green"}
    )
    vault = KeyClient(acr_emulator.key_vault_url, azure_credential, verify_challenge_resource=False)
    key = vault.create_ec_key("gate-attestation", curve="P-256")
    config = tmp_path / "gate.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            data_dir: {tmp_path / "data"}
            registries:
              - host: "{upstream.backing.host}"
                insecure: true
            azure:
              subscription_id: "{acr_emulator.subscription_id}"
              arm_endpoint: "{acr_emulator.arm_endpoint}"
              registry:
                name: {base.name}
                resource_group: {base.resource_group}
                login_server: "{base.login_server}"
                promote: push
            attestation:
              key_vault_key: "{key.id}"
              verifier_id: https://gate.example/azure
            rules:
              - name: node
                source: "{upstream.backing.host}/node"
                tags: ["15-alpine"]
                target: "{base.login_server}/node"
                validation: {{folder: "{SEED}", timeout: 300}}
            """
        )
    )
    # the emulated vault is on loopback: only a test turns the SDK's resource check off
    signer = KeyVaultSigner(str(key.id), azure_credential, verify_challenge_resource=False)
    keeper = build_gatekeeper(load_config(config), credential=azure_credential, signer=signer)
    keeper = replace(keeper, validator=FakeValidator())

    record = gate_image(keeper, f"{upstream.backing.host}/node:15-alpine").record

    assert record.state is State.PROMOTED, record.reason
    assert "attestation sha256:" in record.reason
    assert tag_digests(base.backing.host, "node")["15-alpine"] == digest
    assert "v2Referrers" in [c.name for c in base.calls]
    assert [c.name for c in acr_emulator.vault_calls].count("signWithKey") == 1
    subject = ImageRef(base.login_server, "node", digest=digest)
    with acr_client(acr_emulator, base.login_server, azure_credential) as oci:
        found = OciAttestationStore(oci).find(subject)
    jwk = vault.get_key("gate-attestation").key
    assert jwk.x is not None and jwk.y is not None
    pem = (
        ec.EllipticCurvePublicNumbers(
            int.from_bytes(jwk.x, "big"), int.from_bytes(jwk.y, "big"), ec.SECP256R1()
        )
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    statement = independent_check(pem, found[0].bundle)
    assert statement["predicate"]["urn:gated-import-gate:evidence:v1"]["recordId"] == record.id
    assert verify(subject, found, [load_public_key(pem, "vault key")]).verified


def test_gate_verify_checks_with_the_key_vault_keys_public_half(
    acr_emulator: AcrEmulator,
    azure_credential: TestCredential,
    image_builder: ImageBuilder,
    registry: RegistryProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from azure.keyvault.keys import KeyClient

    vault = KeyClient(acr_emulator.key_vault_url, azure_credential, verify_challenge_resource=False)
    key = vault.create_ec_key("gate-attestation", curve="P-256")
    other = vault.create_ec_key("someone-else", curve="P-256")
    digest = image_builder.image(f"{registry.host}/node:15-alpine", env={"COLOR": "Green"})
    subject = ImageRef(registry.host, "node", digest=digest)
    signer = KeyVaultSigner(str(key.id), azure_credential, verify_challenge_resource=False)
    with OciRegistry({registry.host: HostSettings(insecure=True)}) as oci:
        Attestor(signer=signer, store=OciAttestationStore(oci), verifier_id="urn:t").attach(
            Evidence(
                subject=subject,
                result=PASSED,
                status="promoted",
                reason="passed validation run r1",
                rule="node",
                record_id="r1",
                run_id="r1",
                stable_tag="15-alpine",
            )
        )
    config = tmp_path / "gate.yaml"
    config.write_text(
        f"registries:\n  - {{host: '{registry.host}', insecure: true}}\n"
        f"rules:\n  - name: node\n    source: {registry.host}/up\n    tags: [a]\n"
        f"    target: {registry.host}/node\n    validation: {{folder: {SEED}}}\n"
    )
    # the emulator's vault is on 127.0.0.1: its challenge names no vault domain to verify
    monkeypatch.setattr(
        cli, "_key_vault_access", lambda: (azure_credential, {"verify_challenge_resource": False})
    )
    image = f"{registry.host}/node@{digest}"

    def verify_with(*options: str) -> Result:
        return CliRunner().invoke(cli.main, ["verify", image, "-c", str(config), *options])

    by_key = verify_with("--key-vault-key", str(key.id).rsplit("/", 1)[0], "--json")
    by_other = verify_with("--key-vault-key", str(other.id))
    both = verify_with("--key-vault-key", str(key.id), "--key", str(tmp_path / "x.pub"))

    assert by_key.exit_code == 0, by_key.output
    assert json.loads(by_key.stdout)["verified"] is True
    assert by_other.exit_code == 1 and "NOT VERIFIED" in by_other.stdout
    assert both.exit_code == 2 and "not both" in both.stderr
    assert [c.name for c in acr_emulator.vault_calls].count("getKey") >= 3
