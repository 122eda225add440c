"""Process settings read from the environment, in one place (the Functions app's app settings).

The gate configuration file says *what* to gate; these say how this process runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gate.errors import ConfigError

QUEUE = "gate-requests"
"""The storage queue between the triggers and the worker (a binding name: fixed)."""
POISON_QUEUE = f"{QUEUE}-poison"
"""Where the Functions host moves a request after ``maxDequeueCount`` failed deliveries."""
STORAGE_CONNECTION = "AzureWebJobsStorage"
"""The app-setting prefix of the storage the queues live in (identity-based in Azure)."""
WATCH_SCHEDULE_SETTING = "GATE_WATCH_SCHEDULE"
"""App setting holding the timer's NCRONTAB schedule (the binding reads ``%GATE_WATCH_SCHEDULE%``)."""
AUTH_MODE_SETTING = "GATE_AUTH_MODE"
"""App setting saying how HTTP callers are authenticated: ``entra`` when App Service
authentication (Microsoft Entra ID) is on in front of the app (infra sets it with the
``authsettingsV2`` it deploys), else ``function-key``. Only with ``entra`` is the
``X-MS-CLIENT-PRINCIPAL`` header trusted: the platform strips client-sent copies of it only
when authentication is on (gate/entrypoints/principal.py)."""
AUTH_TENANT_SETTING = "GATE_AUTH_TENANT_ID"
"""With ``entra``: the directory (tenant) id (a GUID) whose tokens the gate accepts."""
AUTH_AUDIENCES_SETTING = "GATE_AUTH_AUDIENCES"
"""With ``entra``: the token audiences the gate accepts, comma-separated (its app registration's
client id and Application ID URI)."""
TENANT_ID_PATTERN = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
"""A directory (tenant) id is a GUID; ``common``, ``organizations`` or a domain name is not one
tenant, and would let App Service accept tokens of any tenant."""

AUTH_ENTRA = "entra"
AUTH_FUNCTION_KEY = "function-key"
AUTH_MODES = (AUTH_ENTRA, AUTH_FUNCTION_KEY)


@dataclass(frozen=True)
class EntraTrust:
    """Whom App Service authentication must have vouched for: a token of Microsoft Entra ID, of
    the gate's tenant (a GUID), for one of the gate's audiences (its client id and Application ID
    URI). Built from the app settings (:mod:`gate.config.app_settings`)."""

    tenant_id: str
    audiences: frozenset[str]

    def __post_init__(self) -> None:
        if not TENANT_ID_PATTERN.fullmatch(self.tenant_id):
            raise ConfigError(
                f"the gate's tenant id {self.tenant_id[:60]!r} is not a directory (tenant) id; "
                "set the app setting GATE_AUTH_TENANT_ID (infra: authTenantId) to the GUID of the "
                "tenant of the gate's app registration, not 'common' or a domain name"
            )
        if not self.audiences or not all(a.strip() for a in self.audiences):
            raise ConfigError(
                "the gate accepts no token audience; set the app setting GATE_AUTH_AUDIENCES to "
                "its app registration's client id and Application ID URI, comma-separated"
            )


@dataclass(frozen=True)
class Settings:
    """How the serverless gate runs: its configuration file and the knobs of its triggers."""

    config_path: Path
    max_body_bytes: int = 64 * 1024
    worker_wait_seconds: float = 20.0
    outcome_topic_endpoint: str | None = None
    page_size: int = 50
    auth_mode: str = AUTH_FUNCTION_KEY
    entra: EntraTrust | None = None
    """Whom the client-principal header must name (set exactly when ``auth_mode`` is entra)."""

    @property
    def trusts_principal(self) -> bool:
        """True when App Service authentication vouches for the client-principal header."""
        return self.auth_mode == AUTH_ENTRA and self.entra is not None

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, base: Path | None = None
    ) -> Settings:
        """Read ``GATE_*`` settings; relative paths resolve against ``base`` (the app folder)."""
        env = os.environ if env is None else env
        base = base or Path.cwd()
        path = Path(env.get("GATE_CONFIG", "gate.yaml"))
        auth_mode = env.get("GATE_AUTH_MODE", AUTH_FUNCTION_KEY).strip() or AUTH_FUNCTION_KEY
        if auth_mode not in AUTH_MODES:
            # fail closed: a typo must neither trust a forged header nor drop the role checks
            raise ConfigError(
                f"app setting {AUTH_MODE_SETTING} is {auth_mode[:40]!r}; set it to "
                f"{AUTH_ENTRA!r} (App Service authentication on) or {AUTH_FUNCTION_KEY!r}"
            )
        entra = None
        if auth_mode == AUTH_ENTRA:
            # fail closed as well: without a tenant and audiences to check, App Service's own
            # checks would be the only ones (and with a 'common' issuer it checks no tenant)
            audiences = env.get("GATE_AUTH_AUDIENCES", "")
            entra = EntraTrust(
                tenant_id=env.get("GATE_AUTH_TENANT_ID", "").strip(),
                audiences=frozenset(a.strip() for a in audiences.split(",") if a.strip()),
            )
        try:
            return cls(
                config_path=path if path.is_absolute() else base / path,
                max_body_bytes=int(env.get("GATE_MAX_BODY_BYTES", 64 * 1024)),
                worker_wait_seconds=float(env.get("GATE_WORKER_WAIT_SECONDS", 20)),
                outcome_topic_endpoint=env.get("GATE_OUTCOME_TOPIC_ENDPOINT") or None,
                page_size=int(env.get("GATE_PAGE_SIZE", 50)),
                auth_mode=auth_mode,
                entra=entra,
            )
        except ValueError as exc:
            raise ConfigError(
                f"an app setting GATE_* has a value that is not a number ({exc}); fix it"
            ) from None
