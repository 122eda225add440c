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
"""

from __future__ import annotations

import re
import time

from tests.acr_emulator.core import (
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

    return routes
