"""The composition root: builds the gate's adapters from the configuration, in one place."""

from __future__ import annotations

from gate.config import GateConfig
from gate.service import Gatekeeper, Notify, quiet


def local_gatekeeper(config: GateConfig, *, notify: Notify = quiet) -> Gatekeeper:
    """The embedded local default: OCI registries over HTTP, podman/docker, a SQLite ledger."""
    # imported here so that a caller that only parses configuration stays light
    from gate.adapters.local_validator import LocalValidator
    from gate.adapters.oci import HostSettings, OciRegistry
    from gate.adapters.secrets import LocalSecrets
    from gate.adapters.sqlite_ledger import SqliteLedger

    secrets = LocalSecrets(config.secrets_dir)
    hosts = {
        host: HostSettings(
            insecure=settings.insecure,
            username=settings.username,
            password=secrets.get(settings.password_secret) if settings.password_secret else None,
        )
        for host, settings in config.registries.items()
    }
    insecure = frozenset(host for host, settings in config.registries.items() if settings.insecure)
    return Gatekeeper(
        config=config,
        registry=OciRegistry(hosts),
        validator=LocalValidator(
            config.validator.engine, insecure_registries=insecure, network=config.validator.network
        ),
        ledger=SqliteLedger(config.data_dir / "gate.db"),
        secrets=secrets,
        notify=notify,
    )
