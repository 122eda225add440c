"""Signer adapters (:class:`gate.ports.Signer`): an ECDSA P-256 key file, or a Key Vault key.

Both sign DSSE envelopes through ``securesystemslib`` (``dsse.Envelope.sign`` computes the
pre-authentication encoding and asks the signer for an ECDSA-SHA256 signature, DER-encoded, as
cosign and ``cryptography`` expect). Both leave the signature's ``keyid`` empty and name their key
by the same hint (:func:`gate.domain.attestation.public_key_hint`), as cosign does: a verifier
holding the public key then accepts either signer's envelopes alike.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gate.domain.attestation import public_key_hint
from gate.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from securesystemslib.signer import Signer as SslibSigner  # type: ignore[attr-defined]

_SCHEME = "ecdsa-sha2-nistp256"


def _without_keyid(envelope: Any) -> dict[str, object]:
    """The envelope's JSON with every signature's ``keyid`` empty, as cosign writes it.

    sigstore-go verifies a bundle's envelope through go-securesystemslib with a key that has no
    id of its own; go-securesystemslib then derives one (an SSH-style fingerprint) and skips any
    signature whose ``keyid`` is set and differs from it (``dsse/verify.go``, ``Verify``), so
    securesystemslib's key id there would leave cosign 3 with no valid signature. An empty one
    is tried with the key, by every DSSE verifier.
    """
    result: dict[str, object] = envelope.to_dict()
    signatures = result["signatures"]
    assert isinstance(signatures, list)
    result["signatures"] = [{**signature, "keyid": ""} for signature in signatures]
    return result


def _envelope(signer: SslibSigner, payload_type: str, payload: bytes) -> dict[str, object]:
    from securesystemslib.dsse import Envelope

    envelope = Envelope(payload=payload, payload_type=payload_type, signatures={})
    envelope.sign(signer)
    return _without_keyid(envelope)


class KeyFileSigner:
    """Signs with an unencrypted PKCS#8 PEM ECDSA P-256 private key (``gate keygen`` writes one)."""

    def __init__(self, path: Path) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        from securesystemslib.signer import (  # type: ignore[attr-defined]
            CryptoSigner,
            SSlibKey,
        )

        try:
            key = load_pem_private_key(path.read_bytes(), password=None)
        except OSError as exc:
            raise ConfigError(
                f"cannot read the attestation key {path}: {exc.strerror}; create one with "
                "'gate keygen' or fix attestation.key in the configuration"
            ) from None
        except (ValueError, TypeError):
            raise ConfigError(
                f"{path} is not an unencrypted PEM private key; create one with 'gate keygen'"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ConfigError(f"{path} is not an ECDSA P-256 key; create one with 'gate keygen'")
        public = SSlibKey.from_crypto(key.public_key(), scheme=_SCHEME)
        self._signer = CryptoSigner(key, public)
        self._hint = public_key_hint(key.public_key())

    @property
    def key_hint(self) -> str:
        """The bundle's key hint: base64 SHA-256 of the public key's DER (as cosign writes)."""
        return self._hint

    def sign_dsse(self, payload_type: str, payload: bytes) -> dict[str, object]:
        """The DSSE envelope of ``payload``, signed with the key file."""
        return _envelope(self._signer, payload_type, payload)


def generate_key_pair(private_path: Path, *, force: bool = False) -> Path:
    """Write a new ECDSA P-256 pair: ``private_path`` (PKCS#8 PEM, mode 0600) and ``.pub``.

    Returns the public key's path. Refuses to overwrite an existing file unless ``force``.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    public_path = private_path.with_suffix(".pub")
    for path in (private_path, public_path):
        if path.exists() and not force:
            raise UsageError(f"{path} exists already; choose another name or pass --force")
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    # the private key is created readable by its owner only, never widened afterwards
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private_pem)
    public_path.write_bytes(public_pem)
    return public_path


def _vault_client(key_id: str, credential: object, **client_options: object) -> tuple[Any, Any]:
    """(``KeyClient`` of the key's vault, the parsed ``KeyVaultKeyIdentifier``) of a key URI."""
    from azure.keyvault.keys import KeyClient, KeyVaultKeyIdentifier

    try:
        parsed = KeyVaultKeyIdentifier(key_id)
    except ValueError:
        raise ConfigError(
            f"'{key_id}' is not a Key Vault key URI (https://VAULT.vault.azure.net/keys/NAME)"
        ) from None
    return KeyClient(parsed.vault_url, credential, **client_options), parsed  # type: ignore[arg-type]


def _read_key(
    client: Any, name: str, version: str | None, key_id: str, what: str, role: str
) -> Any:
    """One ``get`` of a key (``GET {vault}/keys/{name}[/{version}]``, which answers its JSON Web
    Key: azure-keyvault-keys ``KeyClient.get_key``): the ``KeyVaultKey``, checked EC P-256."""
    from azure.core.exceptions import AzureError

    try:
        key = client.get_key(name, version)
    except AzureError as exc:
        raise ConfigError(
            f"cannot read {what} {key_id}: {type(exc).__name__}; check that the key exists and "
            f"the identity has '{role}' on it"
        ) from None
    jwk: Any = key.key
    if jwk.kty not in ("EC", "EC-HSM") or jwk.crv != "P-256" or not jwk.x or not jwk.y:
        raise ConfigError(f"{key_id} is not an EC P-256 key; create one with --curve P-256")
    return key


def _public_of(key: Any) -> Any:
    """The ``cryptography`` public key of a ``KeyVaultKey``'s EC P-256 JSON Web Key."""
    from cryptography.hazmat.primitives.asymmetric import ec

    jwk: Any = key.key
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(jwk.x, "big"), int.from_bytes(jwk.y, "big"), ec.SECP256R1()
    )
    return numbers.public_key()


def _key_vault_key(
    key_id: str, credential: object, what: str, role: str, **client_options: object
) -> Any:
    """The ``KeyVaultKey`` that ``key_id`` names (its latest version when it names none).

    The private half never leaves the vault; the answer holds the public JSON Web Key.
    """
    client, parsed = _vault_client(key_id, credential, **client_options)
    with client:
        return _read_key(client, parsed.name, parsed.version, key_id, what, role)


def key_vault_public_keys(key_id: str, credential: object, **client_options: object) -> list[Any]:
    """The public keys a signature by the Key Vault key ``key_id`` may be checked with.

    A URI with a version names exactly that version: one key (one ``get``), refused when that
    version is disabled. A versionless URI
    names the key, and a key has versions: a new one is added when the key is rotated or
    re-created, the earlier ones stay listed, and ``get`` without a version answers only the
    latest (learn.microsoft.com/azure/key-vault/keys/javascript-developer-guide-get-key: "get
    the latest version of a key or a specific version", and every version through
    ``listPropertiesOfKeyVersions``). A signature made before a rotation is still the key's, so
    every **enabled** version counts, and a disabled one does not: ``enabled`` says "whether the
    key is enabled and useable for cryptographic operations" (azure-keyvault-keys
    ``KeyProperties.enabled``; .NET ``KeyProperties.Enabled`` on learn.microsoft.com), and an
    owner disables a version to withdraw it. One ``list_properties_of_key_versions`` (``GET
    {vault}/keys/{name}/versions``) and one ``get`` per enabled version; none enabled is a
    ConfigError. The caller's identity needs the key's ``read`` data action
    (Microsoft.KeyVault/vaults/keys/read, e.g. 'Key Vault Crypto User').
    """
    from azure.core.exceptions import AzureError

    what, role = "the verification key", "Key Vault Crypto User"
    client, parsed = _vault_client(key_id, credential, **client_options)
    with client:
        if parsed.version:
            key = _read_key(client, parsed.name, parsed.version, key_id, what, role)
            if key.properties.enabled is False:
                raise ConfigError(
                    f"{key_id} is a disabled version of its key; enable it, or name the key "
                    "without a version to accept any of its enabled versions"
                )
            return [_public_of(key)]
        try:
            versions = [
                p.version
                for p in client.list_properties_of_key_versions(parsed.name)
                if p.enabled and p.version
            ]
        except AzureError as exc:
            raise ConfigError(
                f"cannot list the versions of {what} {key_id}: {type(exc).__name__}; check that "
                f"the key exists and the identity has '{role}' on it"
            ) from None
        if not versions:
            raise ConfigError(f"{key_id} has no enabled version; enable one, or name another key")
        return [
            _public_of(_read_key(client, parsed.name, version, key_id, what, role))
            for version in sorted(versions)
        ]


def key_vault_public_key(key_id: str, credential: object, **client_options: object) -> Any:
    """The public key of a Key Vault EC P-256 key (its latest version when the URI names none),
    to verify what it signed (``gate verify --key-vault-key``). The caller's identity needs the
    key's ``read`` data action (Microsoft.KeyVault/vaults/keys/read, e.g. 'Key Vault Crypto
    User')."""
    return _public_of(
        _key_vault_key(
            key_id, credential, "the verification key", "Key Vault Crypto User", **client_options
        )
    )


class KeyVaultSigner:
    """Signs with a Key Vault EC P-256 key through the app's identity; the key stays there.

    ``key_id`` is the key's URI (``https://VAULT.vault.azure.net/keys/NAME[/VERSION]``). The
    digest is computed here and sent to Key Vault's ``sign`` operation (ES256), which answers the
    raw ``r || s``; it is re-encoded as DER, the form DSSE verifiers (cosign, ``cryptography``,
    securesystemslib) expect (securesystemslib's own ``AzureSigner`` does the same conversion; it
    is not used because it always builds a ``DefaultAzureCredential``). The identity needs the
    key's ``sign`` and ``get`` data actions: 'Key Vault Crypto User' on that key.
    """

    def __init__(self, key_id: str, credential: object, **client_options: object) -> None:
        from azure.keyvault.keys.crypto import CryptographyClient
        from securesystemslib.signer import SSlibKey  # type: ignore[attr-defined]

        key = _key_vault_key(
            key_id, credential, "the attestation key", "Key Vault Crypto User", **client_options
        )
        public = _public_of(key)
        self.public_key = SSlibKey.from_crypto(public, scheme=_SCHEME)
        self._key_id = str(key.id)  # with its version: every signature names the exact key
        self._hint = public_key_hint(public)
        # One client for every signature, made from the key just read: a CryptographyClient
        # made from a key URI GETs the key on its first operation, one made from a KeyVaultKey
        # keeps that key's material and GETs nothing (azure-keyvault-keys 4.11
        # crypto/_client.py, CryptographyClient.__init__ and _initialize); with only the public
        # half, sign goes to the vault (the EC provider supports no private-key operation
        # without a private key: crypto/_providers/ec.py).
        self._crypto = CryptographyClient(key, credential, **client_options)  # type: ignore[arg-type]

    @property
    def key_uri(self) -> str:
        """The Key Vault key URI, version included, that signs."""
        return self._key_id

    @property
    def key_hint(self) -> str:
        """The bundle's key hint: base64 SHA-256 of the public key's DER, as for a key file.

        Not the key URI: protobuf-specs asks a bundle's hint to equal its envelope's key hint,
        and a hint derived from the key lets a verifier with only the PEM match it.
        """
        return self._hint

    def sign_dsse(self, payload_type: str, payload: bytes) -> dict[str, object]:
        """The DSSE envelope of ``payload``, its PAE signed by Key Vault (ES256)."""
        import hashlib

        from azure.core.exceptions import AzureError
        from azure.keyvault.keys.crypto import SignatureAlgorithm
        from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
        from securesystemslib.dsse import Envelope
        from securesystemslib.signer import Signature  # type: ignore[attr-defined]

        from gate.errors import InfrastructureError

        envelope = Envelope(payload=payload, payload_type=payload_type, signatures={})
        digest = hashlib.sha256(envelope.pae()).digest()
        try:
            raw = self._crypto.sign(SignatureAlgorithm.es256, digest).signature
        except AzureError as exc:
            raise InfrastructureError(
                f"Key Vault did not sign with {self._key_id}: {type(exc).__name__}; check the "
                "vault is reachable and the identity has 'Key Vault Crypto User' on the key"
            ) from None
        if len(raw) != 64:
            raise InfrastructureError(f"Key Vault answered a {len(raw)}-byte ES256 signature")
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        keyid = self.public_key.keyid
        envelope.signatures[keyid] = Signature(keyid, der.hex())
        return _without_keyid(envelope)
