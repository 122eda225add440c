"""Who calls the HTTP API, and what they may do: the app roles and the client principal.

In Azure, App Service authentication (Microsoft Entra ID) checks the caller's bearer token and
hands the function the caller's claims in the ``X-MS-CLIENT-PRINCIPAL`` request header: Base64
of ``{"auth_typ", "name_typ", "role_typ", "claims": [{"typ", "val"}, ...]}``. External requests
cannot set that header; only the platform does, and only when authentication is on
(learn.microsoft.com/azure/app-service/configure-authentication-user-identities, "Access user
claims in app code" and "Decode the client principal header"). The platform checks the token,
not the roles: the app does (learn.microsoft.com/azure/app-service/
configure-authentication-provider-aad, "Daemon client application": "the access token will
include a ``roles`` claim ... this is not performed by App Service Authentication").

App Service validates a token's signature, lifetime, issuer and audience against the
``authsettingsV2`` it was deployed with, but with the ``common`` endpoint it validates neither
issuer nor tenant ("Issuer URL": configure-authentication-provider-aad), and a configuration
drift (another audience allowed, another identity provider added) would widen who gets in. So
the app checks again, from the claims, what it was deployed to trust (:class:`EntraTrust`):
the identity provider is Microsoft Entra ID (``auth_typ`` is ``aad``: "the name of the identity
provider used by App Service Authentication", configure-authentication-user-identities; ``aad``
is that provider's name, as in ``/.auth/login/aad``), the token's tenant (``tid``) is the gate's
tenant, and its audience (``aud``) is one of the gate's.

This module is pure: it decodes the header and decides by role; ``gate.entrypoints.http_api``
answers, and ``function_app.py`` decides whether the header is trusted at all
(``GATE_AUTH_MODE``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gate.config.app_settings import EntraTrust
from gate.errors import UsageError

GATE_READ = "Gate.Read"
"""App role that may read records and history (``GET`` routes)."""
GATE_OPERATE = "Gate.Operate"
"""App role that may also re-gate and roll back (``POST`` routes); it includes reading."""
APP_ROLES = (GATE_READ, GATE_OPERATE)
"""The app roles the app registration defines (the deployer steps in docs/guide/functions.md, "Who may call the API", create them)."""

ROUTE_ROLES: dict[str, tuple[str, ...]] = {
    "get_gate": (GATE_READ, GATE_OPERATE),
    "list_gates": (GATE_READ, GATE_OPERATE),
    "post_gate": (GATE_OPERATE,),
    "post_rollback": (GATE_OPERATE,),
}
"""Each HTTP function of ``function_app.py`` and the roles any one of which lets a caller in."""

PRINCIPAL_HEADER = "x-ms-client-principal"
"""The platform's header with the caller's claims (header names are case-insensitive)."""

OBJECT_ID_CLAIMS = ("http://schemas.microsoft.com/identity/claims/objectidentifier", "oid")
"""The Entra object id: the token's ``oid`` claim, under the name the platform's default claims
mapping gives it (the docs: claims "might have different names than ... in a token"), or as is."""

ROLES_CLAIM = "roles"
"""The claim an Entra access token carries app roles in (configure-authentication-provider-aad).
Claims of the payload's own ``role_typ`` count as roles too (the docs' decoding sample)."""

NAME_CLAIMS = ("name", "preferred_username", "upn", "appid", "azp")
"""Fallbacks for the display name after the payload's ``name_typ`` claim: a user's name or sign-in
name; a pipeline's service principal has neither, and is named by its application id."""

FUNCTION_KEY_ACTOR = "function-key"
"""The actor of a call authenticated only by a function key (authentication off)."""

IDENTITY_PROVIDER = "aad"
"""The ``auth_typ`` App Service writes for Microsoft Entra ID, the only provider the gate trusts."""

TENANT_CLAIMS = ("http://schemas.microsoft.com/identity/claims/tenantid", "tid")
"""The token's tenant: ``tid``, under the name the default claims mapping gives it, or as is."""

AUDIENCE_CLAIM = "aud"
"""The token's audience: the client id (v2 tokens) or the Application ID URI (v1 tokens)."""

MAX_HEADER_CHARS = 64 * 1024
"""A client-principal header longer than this is refused rather than decoded."""


class PrincipalError(UsageError):
    """The client-principal header cannot be read as a caller, or names a caller the gate was
    not deployed to trust; the API answers 401."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: Entra object id (empty for a function key), name, app roles."""

    object_id: str
    name: str
    roles: frozenset[str] = frozenset()

    def may(self, allowed: Iterable[str]) -> bool:
        """True when the caller holds any one of the ``allowed`` roles."""
        return not self.roles.isdisjoint(allowed)


FUNCTION_KEY = Principal(object_id="", name=FUNCTION_KEY_ACTOR, roles=frozenset(APP_ROLES))
"""A caller the Functions host let in by a function key: without authentication, a key is all
there is to check, and it grants every route (as it did before roles existed)."""


def decode_principal(header: str, trust: EntraTrust) -> Principal:
    """The caller in an ``X-MS-CLIENT-PRINCIPAL`` header, if ``trust`` admits them;
    :class:`PrincipalError` says why not."""
    if len(header) > MAX_HEADER_CHARS:
        raise PrincipalError(f"the client principal header is over {MAX_HEADER_CHARS} characters")
    try:
        raw = base64.b64decode(header.strip(), validate=True)
        payload: Any = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise PrincipalError(
            "the client principal header is not Base64-encoded JSON; only App Service "
            "authentication sets it: call with an Entra ID bearer token instead"
        ) from None
    except RecursionError:
        raise PrincipalError("the client principal header nests too deeply") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("claims"), list):
        raise PrincipalError("the client principal has no claims list")
    claims: list[tuple[str, str]] = []
    for claim in payload["claims"]:
        if not (
            isinstance(claim, dict)
            and isinstance(claim.get("typ"), str)
            and isinstance(claim.get("val"), str)
        ):
            raise PrincipalError("a claim of the client principal is not {typ, val} strings")
        claims.append((claim["typ"], claim["val"]))
    role_types = {ROLES_CLAIM, _text(payload, "role_typ")} - {""}
    name_types = (_text(payload, "name_typ"), *NAME_CLAIMS)
    object_id = _first(claims, OBJECT_ID_CLAIMS)
    if not object_id:
        raise PrincipalError(
            "the client principal has no object id claim (oid); the gate records who acts by it"
        )
    _check_trusted(payload, claims, trust)
    return Principal(
        object_id=object_id,
        name=_first(claims, [t for t in name_types if t]) or object_id,
        roles=frozenset(value for typ, value in claims if typ in role_types),
    )


def _check_trusted(
    payload: dict[str, Any], claims: list[tuple[str, str]], trust: EntraTrust
) -> None:
    """Refuse a principal of another identity provider, tenant or audience than the gate's."""
    provider = _text(payload, "auth_typ")
    if provider != IDENTITY_PROVIDER:
        raise PrincipalError(
            f"the caller was authenticated by identity provider {provider[:40]!r}; the gate "
            f"accepts only Microsoft Entra ID ({IDENTITY_PROVIDER!r}): call with an Entra ID "
            "bearer token, and remove other providers from the app's authentication settings"
        )
    tenant = _first(claims, TENANT_CLAIMS)
    if tenant.lower() != trust.tenant_id.lower():
        raise PrincipalError(
            f"the caller's token is from tenant {tenant[:60] or 'none'!r}, not the gate's tenant "
            f"{trust.tenant_id}: sign in to the gate's tenant "
            f"(az login --tenant {trust.tenant_id}) and get a new token"
        )
    audiences = {value for typ, value in claims if typ == AUDIENCE_CLAIM}
    if audiences.isdisjoint(trust.audiences):
        shown = ", ".join(sorted(a[:80] for a in audiences)) or "none"
        raise PrincipalError(
            f"the caller's token is for audience {shown}, not the gate's "
            f"({', '.join(sorted(trust.audiences))}): get a token with "
            "'az account get-access-token --resource <the gate's application ID URI>'"
        )


def _text(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    return value if isinstance(value, str) else ""


def _first(claims: list[tuple[str, str]], types: Iterable[str]) -> str:
    """The value of the first claim type in ``types`` that the claims have, non-empty."""
    for wanted in types:
        for typ, value in claims:
            if typ == wanted and value.strip():
                return value.strip()
    return ""


def missing_role(function: str, principal: Principal) -> str | None:
    """Why ``principal`` may not call ``function`` (None: it may), naming the role to ask for."""
    allowed = ROUTE_ROLES[function]
    if principal.may(allowed):
        return None
    needed = " or ".join(allowed)
    held = ", ".join(sorted(principal.roles)) or "none"
    return (
        f"this call needs the app role {needed}; you hold {held}. Ask an owner of the gate's "
        f"app registration to assign you {allowed[0]} "
        "(Enterprise applications > the gate > Users and groups, or an app role assignment for "
        "a pipeline's identity), then get a new token"
    )
