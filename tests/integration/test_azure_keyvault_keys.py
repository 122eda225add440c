"""Key Vault keys against the emulated vault with the real azure-keyvault-keys clients: how many
requests signing takes, and which versions of a key a rule's key URI accepts."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from devstack.acr import AcrEmulator, TestCredential
from gate.adapters.registry.referrers import CosignSignatureReader
from gate.adapters.signers import KeyVaultSigner, key_vault_public_keys
from gate.errors import ConfigError
from tests.fakes import FakeRegistry

# the emulator's vault is on 127.0.0.1: its challenge names no vault domain to verify
LOOPBACK = {"verify_challenge_resource": False}


def answered(emulator: AcrEmulator, route: str) -> int:
    """Key Vault requests of ``route`` answered 200 (the challenge's 401 probes left out)."""
    return sum(1 for c in emulator.vault_calls if c.name == route and c.status == 200)


def vault_signature(key_id: str, credential: TestCredential, payload: bytes) -> bytes:
    """The DER ECDSA signature of ``payload`` by the vault key ``key_id`` (signed in the vault)."""
    from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm

    client = CryptographyClient(key_id, credential, **LOOPBACK)  # type: ignore[arg-type]
    raw = client.sign(SignatureAlgorithm.es256, hashlib.sha256(payload).digest()).signature
    return encode_dss_signature(int.from_bytes(raw[:32]), int.from_bytes(raw[32:]))


def verifies(keys: list[Any], payload: bytes, signature: bytes) -> bool:
    for key in keys:
        try:
            key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            continue
        return True
    return False


def test_a_key_vault_signer_reads_its_key_once_however_many_envelopes_it_signs(
    acr_emulator: AcrEmulator, azure_credential: TestCredential
) -> None:
    from azure.keyvault.keys import KeyClient

    vault = KeyClient(acr_emulator.key_vault_url, azure_credential, **LOOPBACK)
    key = vault.create_ec_key("gate-attestation", curve="P-256")
    before = answered(acr_emulator, "getKey")
    signer = KeyVaultSigner(str(key.id).rsplit("/", 1)[0], azure_credential, **LOOPBACK)
    envelopes = [signer.sign_dsse("text/plain", f"payload {n}".encode()) for n in range(3)]

    assert answered(acr_emulator, "getKey") - before == 1  # the signer's own read, no more
    assert answered(acr_emulator, "signWithKey") == 3
    assert len({str(e["signatures"]) for e in envelopes}) == 3
    assert signer.key_uri == str(key.id)  # the versionless URI resolved to the latest version


def test_a_versioned_key_uri_accepts_exactly_that_version(
    acr_emulator: AcrEmulator, azure_credential: TestCredential
) -> None:
    from azure.keyvault.keys import KeyClient

    vault = KeyClient(acr_emulator.key_vault_url, azure_credential, **LOOPBACK)
    old = vault.create_ec_key("upstream-signer", curve="P-256")
    new = vault.create_ec_key("upstream-signer", curve="P-256")  # a second version
    payload = b"signed by the old version"
    by_old = vault_signature(str(old.id), azure_credential, payload)

    old_keys = key_vault_public_keys(str(old.id), azure_credential, **LOOPBACK)
    new_keys = key_vault_public_keys(str(new.id), azure_credential, **LOOPBACK)

    assert len(old_keys) == len(new_keys) == 1
    assert verifies(old_keys, payload, by_old)
    assert not verifies(new_keys, payload, by_old)


def test_a_versionless_key_uri_accepts_every_enabled_version_and_no_disabled_one(
    acr_emulator: AcrEmulator, azure_credential: TestCredential
) -> None:
    from azure.keyvault.keys import KeyClient

    vault = KeyClient(acr_emulator.key_vault_url, azure_credential, **LOOPBACK)
    versions = [vault.create_ec_key("upstream-signer", curve="P-256") for _ in range(3)]
    first, withdrawn, latest = versions
    payload = b"an upstream image's simple-signing payload"
    signatures = {k.id: vault_signature(str(k.id), azure_credential, payload) for k in versions}
    # the middle version signed, then its owner withdrew it
    vault.update_key_properties("upstream-signer", withdrawn.properties.version, enabled=False)
    gets = answered(acr_emulator, "getKey")

    reader = CosignSignatureReader(
        FakeRegistry(), lambda uri: key_vault_public_keys(uri, azure_credential, **LOOPBACK)
    )
    uri = f"{acr_emulator.key_vault_url}/keys/upstream-signer"
    keys = reader.public_keys([uri])
    again = reader.public_keys([uri])

    assert len(keys) == 2 and again == keys  # the two enabled versions, read once
    assert verifies(keys, payload, signatures[first.id])  # signed before the rotation
    assert verifies(keys, payload, signatures[latest.id])
    assert not verifies(keys, payload, signatures[withdrawn.id])
    # one listing of the versions and one read per enabled version, for the reader's life
    assert answered(acr_emulator, "getKeyVersions") == 1
    assert answered(acr_emulator, "getKey") - gets == 2
    with pytest.raises(ConfigError, match="is a disabled version of its key"):
        key_vault_public_keys(str(withdrawn.id), azure_credential, **LOOPBACK)


def test_a_key_without_an_enabled_version_is_refused_saying_so(
    acr_emulator: AcrEmulator, azure_credential: TestCredential
) -> None:
    from azure.keyvault.keys import KeyClient

    vault = KeyClient(acr_emulator.key_vault_url, azure_credential, **LOOPBACK)
    only = vault.create_ec_key("retired-signer", curve="P-256")
    vault.update_key_properties("retired-signer", only.properties.version, enabled=False)
    uri = f"{acr_emulator.key_vault_url}/keys/retired-signer"

    with pytest.raises(ConfigError, match="has no enabled version; enable one"):
        key_vault_public_keys(uri, azure_credential, **LOOPBACK)
