"""The promotion signature on the Azure side: a second Key Vault key signs (real
azure-keyvault-keys client against the emulator's vault), the ``.sig`` manifest is pushed into
the emulated ACR and, on a demotion by re-validation, deleted through its data plane."""

from __future__ import annotations

import base64
import hashlib
import json
import textwrap
from copy import replace
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from devstack.acr import AcrEmulator, TestCredential
from devstack.images import ImageBuilder, tag_digests
from gate.adapters.signers import KeyVaultSigner
from gate.compose import build_gatekeeper
from gate.config.loading import load_config
from gate.config.model import Revalidation
from gate.domain.records import Outcome, State
from gate.ports import ValidationRequest
from gate.usecases.gating import gate_image
from gate.usecases.revalidation import revalidate
from tests.e2e.test_attest import SEED_VALIDATION as SEED
from tests.fakes import FakeValidator

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def public_key(vault: Any, name: str) -> ec.EllipticCurvePublicKey:
    jwk = vault.get_key(name).key
    return ec.EllipticCurvePublicNumbers(
        int.from_bytes(jwk.x, "big"), int.from_bytes(jwk.y, "big"), ec.SECP256R1()
    ).public_key()


def signed_payloads(host: str, digest: str, key: ec.EllipticCurvePublicKey) -> list[dict[str, Any]]:
    """The ``.sig`` layers of ``digest`` in the backing registry that ``key`` signed (checked
    with ``cryptography`` over the layer's bytes, as cosign's verifier does)."""
    tag = digest.replace(":", "-") + ".sig"
    response = httpx.get(f"http://{host}/v2/node/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    if response.status_code == 404:
        return []
    response.raise_for_status()
    found = []
    for layer in response.json()["layers"]:
        payload = httpx.get(f"http://{host}/v2/node/blobs/{layer['digest']}").content
        assert "sha256:" + hashlib.sha256(payload).hexdigest() == layer["digest"]
        signature = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
        key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        found.append(json.loads(payload))
    return found


def test_a_demotion_under_the_key_vault_signer_deletes_the_demoted_digests_signature(
    tmp_path: Path,
    acr_emulator: AcrEmulator,
    azure_credential: TestCredential,
    image_builder: ImageBuilder,
) -> None:
    from azure.keyvault.keys import KeyClient

    upstream = acr_emulator.add_registry("publicregistry", "public-rg")
    base = acr_emulator.add_registry("baseartifacts", "base-rg")
    vault = KeyClient(acr_emulator.key_vault_url, azure_credential, verify_challenge_resource=False)
    attest_key = vault.create_ec_key("gate-attestation", curve="P-256")
    sign_key = vault.create_ec_key("gate-signature", curve="P-256")
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
              key_vault_key: "{attest_key.id}"
              signature_key_vault_key: "{sign_key.id}"
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
    failing: set[str] = set()

    def decide(request: ValidationRequest) -> Outcome:
        return Outcome.REJECTED if request.image.digest in failing else Outcome.PASSED

    # the emulated vault is on loopback: only a test turns the SDK's resource check off
    options = {"verify_challenge_resource": False}
    keeper = build_gatekeeper(
        load_config(config),
        credential=azure_credential,
        signer=KeyVaultSigner(str(attest_key.id), azure_credential, **options),
        image_signer=KeyVaultSigner(
            str(sign_key.id), azure_credential, what="the signature key", **options
        ),
    )
    rule = replace(keeper.config.rules[0], revalidate=Revalidation(every="1d"))
    keeper = replace(
        keeper,
        config=replace(keeper.config, rules=(rule,)),
        validator=FakeValidator(decide=decide),
    )
    source = f"{upstream.backing.host}/node:15-alpine"
    first = image_builder.image(source, env={"COLOR": "Green"})
    assert gate_image(keeper, source).record.state is State.PROMOTED
    second = image_builder.image(source, env={"COLOR": "Orange"})
    promoted = gate_image(keeper, source).record
    assert promoted.state is State.PROMOTED and "signed by the gate" in promoted.reason

    signature_key = public_key(vault, "gate-signature")
    [payload] = signed_payloads(base.backing.host, second, signature_key)
    assert payload["critical"]["image"] == {"docker-manifest-digest": second}
    assert payload["critical"]["identity"] == {"docker-reference": f"{base.login_server}/node"}
    assert payload["critical"]["type"] == "cosign container image signature"
    # two promotions, each an attestation and a signature: four signs by the vault
    assert [c.name for c in acr_emulator.vault_calls].count("signWithKey") == 4

    failing.add(second)
    [result] = revalidate(keeper, "node")

    demoted = result.decision
    assert demoted is not None and demoted.state is State.DEMOTED and demoted.digest == first
    assert "held only the gate's signature" in demoted.reason, demoted.reason
    assert "v2DeleteManifest" in [c.name for c in base.calls]
    assert tag_digests(base.backing.host, "node")["15-alpine"] == first
    assert signed_payloads(base.backing.host, second, signature_key) == []
    # the digest the stable tag moved to keeps its signature (it was never removed)
    assert len(signed_payloads(base.backing.host, first, signature_key)) == 1
