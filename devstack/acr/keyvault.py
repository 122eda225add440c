"""Key Vault secrets, as azure-keyvault-secrets 4.12 reads them.

``GET /secrets/{name}[/{version}]?api-version=…`` with Key Vault's challenge flow: the SDK's
``ChallengeAuthPolicy`` first sends the request without a token, expects ``401`` with
``WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/{tenant}",
resource="https://vault.azure.net"``, asks its credential for ``https://vault.azure.net/.default``
and retries. The SDK checks that the vault's host ends with the challenge resource's domain
(``verify_challenge_resource``); a loopback vault cannot pass that check, so clients of the
emulator pass ``verify_challenge_resource=False`` (an SDK option, set by the test, never by
production code).

Answers: 200 ``SecretBundle`` (``value``, ``id``, ``attributes``), 404 ``SecretNotFound`` with
Key Vault's message, 400 ``BadParameter`` for an api-version the SDK does not know, and — with
the ``keyvault_down`` fault — 503 to everything.

Keys, as azure-keyvault-keys 4.11 calls them (its generated operations' routes; api-version
2025-07-01 by default): ``POST /keys/{name}/create`` (EC P-256 only: the one kind the gate signs
with), ``GET /keys/{name}[/{version}]`` → ``KeyBundle`` (``key``: a JSON Web Key with ``kid``,
``kty``, ``crv``, ``x``, ``y``, ``key_ops``), ``POST /keys/{name}/{version}/sign`` (``alg``
``ES256``, ``value``: base64url of a SHA-256 digest) → ``{"kid", "value"}`` where the value is the
raw ``r || s`` (32 + 32 bytes), as JWS has it and as securesystemslib's ``AzureSigner`` decodes
it. The private key never leaves the emulated vault, as in Key Vault. ``GET
/keys/{name}/versions`` → ``KeyListResult`` (a ``KeyItem`` per version: ``kid``,
``attributes``; one page) and ``PATCH /keys/{name}/{version}`` (``attributes.enabled`` only,
what ``KeyClient.update_key_properties(name, version, enabled=False)`` sends) let a key have
several versions, some disabled; a disabled version still answers ``get`` (with ``enabled``
false) and refuses ``sign`` with 403 — what Key Vault answers for either is not confirmed.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from typing import Any

from devstack.acr.core import (
    VAULT_AUDIENCE,
    AcrEmulator,
    Request,
    Response,
    Route,
    Router,
    arm_error,
    bearer,
)

VAULT_API_VERSIONS = frozenset(
    {"2026-04-01", "2025-07-01", "7.6", "7.5", "7.4", "7.3", "7.2", "7.1", "7.0", "2016-10-01"}
)
"""The api-versions azure-keyvault-secrets 4.12 can send (its ``ApiVersion`` enum)."""


def router(emulator: AcrEmulator) -> Router:
    """The Key Vault router."""
    routes = Router("keyvault", emulator.faults)

    def gate(req: Request, route: Route) -> Response | None:
        token = bearer(req)
        issued = emulator.tokens.lookup(token) if token else None
        if issued is None or issued.kind != "aad" or issued.audience.rstrip("/") != VAULT_AUDIENCE:
            return arm_error(
                401,
                "Unauthorized",
                "AKV10000: Request is missing a Bearer or PoP token."
                if token is None
                else "AKV10022: Invalid audience or token.",
                **{
                    "WWW-Authenticate": (
                        f'Bearer authorization="https://login.microsoftonline.com/{emulator.tenant_id}", '
                        f'resource="{VAULT_AUDIENCE}"'
                    )
                },
            )
        version = req.api_version
        if not version or version not in VAULT_API_VERSIONS:
            return arm_error(
                400,
                "BadParameter",
                f"The specified version ({version}) is not recognized. Consider using the latest "
                "supported version (2026-04-01).",
            )
        return None

    routes.gate = gate
    # A vault that is down answers nothing useful, whatever the route or credentials.
    routes.outage = lambda req: (
        arm_error(503, "ServiceUnavailable", "The service is unavailable (fault injected).")
        if emulator.faults.keyvault_down
        else None
    )

    @routes.route(
        "GET",
        r"/secrets/(?P<name>[0-9A-Za-z-]{1,127})(?:/(?P<version>[0-9a-f]{32})?)?",
        name="getSecret",
        api_versions=VAULT_API_VERSIONS,
    )
    def get_secret(req: Request, m: re.Match[str]) -> Response:
        versions = emulator.secrets.get(m["name"])
        chosen = None
        if versions:
            chosen = (
                versions[-1]
                if not m["version"]
                else next((v for v in versions if v[0] == m["version"]), None)
            )
        if chosen is None:
            return arm_error(
                404,
                "SecretNotFound",
                f"A secret with (name/id) {m['name']}{'/' + m['version'] if m['version'] else ''} "
                "was not found in this key vault. If you recently deleted this secret you may be "
                "able to recover it using the correct recovery command. For help resolving this "
                "issue, please see https://go.microsoft.com/fwlink/?linkid=2125182",
            )
        version, value = chosen
        now = int(time.time())
        return Response(
            200,
            {
                "value": value,
                "id": f"{emulator.key_vault_url}/secrets/{m['name']}/{version}",
                "attributes": {
                    "enabled": True,
                    "created": now,
                    "updated": now,
                    "recoveryLevel": "Recoverable+Purgeable",
                    "recoverableDays": 90,
                },
                "tags": {},
            },
        )

    # -- keys ----------------------------------------------------------------------------

    keys: dict[str, list[tuple[str, Any]]] = {}
    disabled: set[tuple[str, str]] = set()  # (name, version) of versions updated to disabled

    def b64url(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    def unb64url(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    def key_bundle(name: str, version: str, private: Any) -> dict[str, Any]:
        numbers = private.public_key().public_numbers()
        now = int(time.time())
        return {
            "key": {
                "kid": f"{emulator.key_vault_url}/keys/{name}/{version}",
                "kty": "EC",
                "crv": "P-256",
                "x": b64url(numbers.x.to_bytes(32, "big")),
                "y": b64url(numbers.y.to_bytes(32, "big")),
                "key_ops": ["sign", "verify"],
            },
            "attributes": {
                "enabled": (name, version) not in disabled,
                "created": now,
                "updated": now,
                "recoveryLevel": "Recoverable+Purgeable",
                "recoverableDays": 90,
            },
            "tags": {},
        }

    def key_not_found(name: str, version: str | None) -> Response:
        return arm_error(
            404,
            "KeyNotFound",
            f"A key with (name/id) {name}{'/' + version if version else ''} was not found in "
            "this key vault.",
        )

    def find_key(name: str, version: str | None) -> tuple[str, Any] | None:
        versions = keys.get(name) or []
        if not versions:
            return None
        if not version:
            return versions[-1]
        return next((v for v in versions if v[0] == version), None)

    @routes.route(
        "POST",
        r"/keys/(?P<name>[0-9A-Za-z-]{1,127})/create",
        name="createKey",
        api_versions=VAULT_API_VERSIONS,
    )
    def create_key(req: Request, m: re.Match[str]) -> Response:
        from cryptography.hazmat.primitives.asymmetric import ec

        body = req.json() if req.body else {}
        if body.get("kty") not in ("EC", "EC-HSM") or body.get("crv", "P-256") != "P-256":
            return arm_error(400, "BadParameter", "The emulated vault creates EC P-256 keys only.")
        version = secrets.token_hex(16)
        private = ec.generate_private_key(ec.SECP256R1())
        keys.setdefault(m["name"], []).append((version, private))
        return Response(200, key_bundle(m["name"], version, private))

    @routes.route(
        "GET",
        r"/keys/(?P<name>[0-9A-Za-z-]{1,127})(?:/(?P<version>[0-9a-f]{32})?)?",
        name="getKey",
        api_versions=VAULT_API_VERSIONS,
    )
    def get_key(req: Request, m: re.Match[str]) -> Response:
        found = find_key(m["name"], m["version"])
        if found is None:
            return key_not_found(m["name"], m["version"])
        return Response(200, key_bundle(m["name"], found[0], found[1]))

    @routes.route(
        "GET",
        r"/keys/(?P<name>[0-9A-Za-z-]{1,127})/versions",
        name="getKeyVersions",
        api_versions=VAULT_API_VERSIONS,
    )
    def key_versions(req: Request, m: re.Match[str]) -> Response:
        # KeyListResult: one KeyItem (kid, attributes, tags) per version; one page, no nextLink
        versions = keys.get(m["name"]) or []
        if not versions:
            return key_not_found(m["name"], None)
        items = []
        for version, private in versions:
            bundle = key_bundle(m["name"], version, private)
            items.append(
                {"kid": bundle["key"]["kid"], "attributes": bundle["attributes"], "tags": {}}
            )
        return Response(200, {"value": items, "nextLink": None})

    @routes.route(
        "PATCH",
        r"/keys/(?P<name>[0-9A-Za-z-]{1,127})/(?P<version>[0-9a-f]{32})",
        name="updateKey",
        api_versions=VAULT_API_VERSIONS,
    )
    def update_key(req: Request, m: re.Match[str]) -> Response:
        # only attributes.enabled is implemented (what KeyClient.update_key_properties sends)
        found = find_key(m["name"], m["version"])
        if found is None:
            return key_not_found(m["name"], m["version"])
        enabled = ((req.json() if req.body else {}).get("attributes") or {}).get("enabled")
        if enabled is False:
            disabled.add((m["name"], found[0]))
        elif enabled is True:
            disabled.discard((m["name"], found[0]))
        return Response(200, key_bundle(m["name"], found[0], found[1]))

    @routes.route(
        "POST",
        r"/keys/(?P<name>[0-9A-Za-z-]{1,127})/(?P<version>[0-9a-f]{32})/sign",
        name="signWithKey",
        api_versions=VAULT_API_VERSIONS,
    )
    def sign(req: Request, m: re.Match[str]) -> Response:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, utils

        found = find_key(m["name"], m["version"])
        if found is None:
            return key_not_found(m["name"], m["version"])
        if (m["name"], found[0]) in disabled:  # the code and wording are not confirmed
            return arm_error(403, "Forbidden", "Operation sign is not allowed on a disabled key.")
        body = req.json() if req.body else {}
        if body.get("alg") != "ES256":
            return arm_error(
                400, "BadParameter", f"Algorithm {body.get('alg')!r} is not valid for an EC key."
            )
        digest = unb64url(str(body.get("value", "")))
        if len(digest) != 32:
            return arm_error(400, "BadParameter", "ES256 signs a 32-byte SHA-256 digest.")
        der = found[1].sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        r, s_ = utils.decode_dss_signature(der)
        raw = r.to_bytes(32, "big") + s_.to_bytes(32, "big")
        return Response(
            200,
            {"kid": f"{emulator.key_vault_url}/keys/{m['name']}/{found[0]}", "value": b64url(raw)},
        )

    return routes
