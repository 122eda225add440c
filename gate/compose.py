"""The composition root: builds the gate's adapters from the configuration, in one place.

Without an ``azure:`` section the gate runs on its embedded local default (OCI registries over
HTTP, podman/docker, a SQLite ledger, secrets from the environment). With one, promotion is an
ACR import (or, with ``azure.registry.promote: push``, a data-plane push), validation an ACR
quick run, a rule's ``downstream`` tasks are queued as ACR task runs (locally, downstream task
files run on the local validator), secrets come from Key Vault and, when ``azure.ledger`` is
set, records live in Table Storage. Adapters are imported here, only when
chosen, so a process that never touches Azure never loads an Azure SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gate.config import AzureSettings, GateConfig
from gate.service import Gatekeeper, Notify, quiet

if TYPE_CHECKING:
    from gate.adapters.oci import HostSettings, OciRegistry
    from gate.adapters.oci_referrers import OciAttestationStore
    from gate.attest import Attestor
    from gate.ports import Ledger, Secrets, SignatureStore, Signer


def build_gatekeeper(
    config: GateConfig,
    *,
    notify: Notify = quiet,
    credential: Any = None,
    secrets: Secrets | None = None,
    signer: Signer | None = None,
) -> Gatekeeper:
    """The gatekeeper the configuration asks for (local, or Azure when it has ``azure:``).

    ``credential`` is for Azure (anything with ``get_token``); the default is
    ``DefaultAzureCredential`` (managed identity in Azure, ``az login`` on a laptop).
    ``secrets`` replaces the secret store the configuration implies (Key Vault or local);
    ``signer`` the attestation signer (Azure: the Key Vault key of ``attestation:``).
    """
    if config.azure is None:
        return local_gatekeeper(config, notify=notify)
    return azure_gatekeeper(
        config, config.azure, notify=notify, credential=credential, secrets=secrets, signer=signer
    )


def _oci(config: GateConfig, secrets: Secrets) -> OciRegistry:
    from gate.adapters.oci import OciRegistry

    return OciRegistry(_oci_hosts(config, secrets))


def _oci_hosts(config: GateConfig, secrets: Secrets) -> dict[str, HostSettings]:
    from gate.adapters.oci import HostSettings

    hosts = {}
    for host, settings in config.registries.items():
        username = settings.username
        if settings.username_secret:
            username = secrets.get(settings.username_secret)
        hosts[host] = HostSettings(
            insecure=settings.insecure,
            username=username,
            password=secrets.get(settings.password_secret) if settings.password_secret else None,
        )
    return hosts


def _sqlite(config: GateConfig) -> Ledger:
    from gate.adapters.sqlite_ledger import SqliteLedger

    return SqliteLedger(config.data_dir / "gate.db")


def _attestor(config: GateConfig, registry: OciRegistry) -> Attestor | None:
    """The promotion attestor the ``attestation:`` section asks for (None without one)."""
    if config.attestation is None:
        return None
    from gate.adapters.oci_referrers import OciAttestationStore
    from gate.adapters.signers import KeyFileSigner
    from gate.attest import Attestor

    assert config.attestation.key is not None  # the configuration requires it locally
    return Attestor(
        signer=KeyFileSigner(config.attestation.key),
        store=OciAttestationStore(registry, use_referrers_api=config.attestation.referrers_api),
        verifier_id=config.attestation.verifier_id,
    )


def _signatures(config: GateConfig, registry: OciRegistry) -> SignatureStore | None:
    """The upstream signature reader, when a rule requires signatures."""
    if not any(rule.signature_keys for rule in config.rules):
        return None
    from gate.adapters.oci_referrers import CosignSignatureReader

    return CosignSignatureReader(registry)


def attestation_reader(config: GateConfig) -> tuple[OciRegistry, OciAttestationStore]:
    """The registry client and attestation store ``gate verify`` reads with (local secrets)."""
    from gate.adapters.oci_referrers import OciAttestationStore
    from gate.adapters.secrets import LocalSecrets

    registry = _oci(config, LocalSecrets(config.secrets_dir))
    use_api = config.attestation.referrers_api if config.attestation else True
    return registry, OciAttestationStore(registry, use_referrers_api=use_api)


def local_gatekeeper(config: GateConfig, *, notify: Notify = quiet) -> Gatekeeper:
    """The embedded local default: OCI registries over HTTP, podman/docker, a SQLite ledger."""
    from gate.adapters.local_validator import LocalValidator
    from gate.adapters.secrets import LocalSecrets

    secrets = LocalSecrets(config.secrets_dir)
    insecure = frozenset(host for host, settings in config.registries.items() if settings.insecure)
    registry = _oci(config, secrets)
    validator = LocalValidator(
        config.validator.engine,
        insecure_registries=insecure,
        network=config.validator.network,
        keep_images=config.validator.keep_images,
    )
    downstream = None
    if any(task.local for rule in config.rules for task in rule.downstream):
        # downstream task files run on the same engine, with the same settings, as validations
        from gate.adapters.local_downstream import LocalTaskDownstream

        downstream = LocalTaskDownstream(validator)
    return Gatekeeper(
        config=config,
        registry=registry,
        attestor=_attestor(config, registry),
        signatures=_signatures(config, registry),
        validator=validator,
        ledger=_sqlite(config),
        secrets=secrets,
        notify=notify,
        downstream=downstream,
    )


def azure_gatekeeper(
    config: GateConfig,
    azure: AzureSettings,
    *,
    notify: Notify = quiet,
    credential: Any = None,
    secrets: Secrets | None = None,
    signer: Signer | None = None,
) -> Gatekeeper:
    """ACR import, ACR quick runs, Key Vault and (optionally) Table Storage."""
    from gate.adapters.azure.acr_import import AcrImportRegistry
    from gate.adapters.azure.quick_run import AcrQuickRunValidator

    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    if secrets is None and azure.key_vault_url:
        from gate.adapters.azure.keyvault import KeyVaultSecrets

        secrets = KeyVaultSecrets(azure.key_vault_url, credential)
    elif secrets is None:
        from gate.adapters.secrets import LocalSecrets

        secrets = LocalSecrets(config.secrets_dir)
    # quick runs get Key Vault secret *URIs* (read by the runner's identity), never values
    secret_uri = getattr(secrets, "secret_uri", None)

    acr_sources = {h: s.resource_id for h, s in config.registries.items() if s.resource_id}
    upstream_credentials: dict[str, tuple[str, str]] = {}
    custom_registries: dict[str, tuple[str, str] | None] = {}
    for host, settings in config.registries.items():
        if settings.resource_id:
            # an ACR in our tenant: the runner identity pulls from it (AcrPull)
            custom_registries[host] = None
            continue
        user_secret = settings.username_secret
        if user_secret is None or settings.password_secret is None:
            continue  # anonymous (the configuration refuses a literal username with azure:)
        upstream_credentials[host] = (user_secret, settings.password_secret)
        if secret_uri is not None:
            # the runner identity reads these itself: no secret passes through us
            custom_registries[host] = (
                secret_uri(user_secret),
                secret_uri(settings.password_secret),
            )

    registry_class = AcrImportRegistry
    push_options: dict[str, Any] = {}
    if azure.registry.promote == "push":
        # the gate pushes (docker push's calls): push triggers, webhooks and events follow
        from gate.adapters.azure.acr_push import AcrPushRegistry

        registry_class = AcrPushRegistry
        push_options["upstream_hosts"] = _oci_hosts(config, secrets)
    registry = registry_class(
        **push_options,
        credential=credential,
        subscription_id=azure.subscription_id,
        target_resource_group=azure.registry.resource_group,
        target_registry=azure.registry.name,
        target_login_server=azure.registry.login_server,
        arm_endpoint=azure.arm_endpoint,
        acr_sources=acr_sources,
        upstream_credentials=upstream_credentials,
        secrets=secrets,
        oci=_oci(config, secrets),
    )
    validator = AcrQuickRunValidator(
        credential=credential,
        subscription_id=azure.subscription_id,
        resource_group=azure.runner.resource_group,
        registry=azure.runner.name,
        arm_endpoint=azure.arm_endpoint,
        custom_registries=custom_registries,
        # the user-assigned identity every validation task run carries (config requires it
        # when a run logs in anywhere)
        identity_resource_id=azure.runner_identity.resource_id if azure.runner_identity else None,
        identity_client_id=azure.runner_identity.client_id if azure.runner_identity else None,
    )
    downstream = None
    if any(rule.downstream for rule in config.rules):
        from gate.adapters.azure.downstream import AcrTaskDownstream

        downstream = AcrTaskDownstream(
            credential=credential,
            subscription_id=azure.subscription_id,
            arm_endpoint=azure.arm_endpoint,
        )
    ledger: Ledger
    if azure.ledger is not None:
        from gate.adapters.azure.table_ledger import TableLedger

        ledger = TableLedger(
            endpoint=azure.ledger.table_endpoint,
            credential=credential if azure.ledger.table_endpoint else None,
            connection_string=azure.ledger.connection_string,
            table=azure.ledger.table,
            log_container=azure.ledger.log_container,
        )
    else:
        ledger = _sqlite(config)
    return Gatekeeper(
        config=config,
        registry=registry,
        validator=validator,
        ledger=ledger,
        secrets=secrets,
        notify=notify,
        downstream=downstream,
        attestor=_azure_attestor(config, registry, credential, signer),
    )


def _azure_attestor(
    config: GateConfig, registry: Any, credential: Any, signer: Signer | None
) -> Attestor | None:
    """The Key Vault key signs; the attestation is pushed with the identity's ACR token."""
    settings = config.attestation
    if settings is None or settings.key_vault_key is None:
        return None
    from gate.adapters.azure.acr_push import ACR_TOKEN_USER, AcrPushRegistry
    from gate.adapters.oci import HostSettings, OciRegistry
    from gate.adapters.oci_referrers import SessionAttestationStore
    from gate.adapters.signers import KeyVaultSigner
    from gate.attest import Attestor

    # the configuration requires promote: push for attestations (the artifact is pushed)
    assert isinstance(registry, AcrPushRegistry)
    login = registry.target_login_server

    def session() -> OciRegistry:
        # a refresh token per attestation, as the push adapter takes one per promotion
        token = registry._refresh_token(login)
        return OciRegistry({login: HostSettings(username=ACR_TOKEN_USER, password=token)})

    return Attestor(
        signer=signer or KeyVaultSigner(settings.key_vault_key, credential),
        store=SessionAttestationStore(session, use_referrers_api=settings.referrers_api),
        verifier_id=settings.verifier_id,
    )
