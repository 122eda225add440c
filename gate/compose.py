"""The composition root: builds the gate's adapters from the configuration, in one place.

Without an ``azure:`` section the gate runs on its embedded local default (OCI registries over
HTTP, podman/docker, a SQLite ledger, secrets from the environment). With one, promotion is an
ACR import (or, with ``azure.registry.promote: push``, a data-plane push), validation an ACR
task run, a rule's ``downstream`` tasks are queued as ACR task runs (locally, downstream task
files run on the local validator), secrets come from Key Vault and, when ``azure.ledger`` is
set, records live in Table Storage. Adapters are imported here, only when
chosen, so a process that never touches Azure never loads an Azure SDK.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from gate.adapters.registry.oci import HostSettings, OciRegistry
    from gate.adapters.registry.referrers import OciAttestationStore
    from gate.adapters.validation.local import LocalValidator
    from gate.config.model import AzureSettings, GateConfig
    from gate.domain.attestation import Attestor
    from gate.ports import (
        DownstreamRunner,
        Ledger,
        ManifestReader,
        Registry,
        Secrets,
        SignatureStore,
        Signer,
        Validator,
    )
    from gate.service import Gatekeeper, Notify


class _Lazy[T]:
    """A port built on its first use, then used as itself (attribute access goes through).

    ``gate history`` never touches the registry or the validator, and an HTTP ``GET`` never
    the ACR clients: with their ports lazy, such commands import no HTTP client, create no
    TLS context and probe no container engine.
    """

    def __init__(self, build: Callable[[], T]) -> None:
        self._build: Callable[[], T] | None = build
        self._port: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        """The port itself (built now if it was not yet)."""
        if self._build is not None:
            with self._lock:  # watch passes poll from several threads
                if self._build is not None:
                    self._port = self._build()
                    self._build = None
        return cast(T, self._port)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)

    # isinstance() consults __class__ when type() does not match (so do runtime-checkable
    # protocols, through the class's members): a check is a use, and sees the port's own class
    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return type(self.get())


def lazy[T](build: Callable[[], T]) -> T:
    """``build()``'s port, built when first used (the composition root's only deferral)."""
    return cast(T, _Lazy(build))


def build_ledger(config: GateConfig, *, credential: Any = None) -> Ledger:
    """The ledger alone (``gate history`` and ``gate show`` need nothing else)."""
    azure = config.azure
    if azure is None or azure.ledger is None:
        return _sqlite(config)
    return _table(azure, credential)


def build_gatekeeper(
    config: GateConfig,
    *,
    notify: Notify | None = None,
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
    from gate.adapters.registry.oci import OciRegistry

    return OciRegistry(_oci_hosts(config, secrets))


def _oci_hosts(config: GateConfig, secrets: Secrets) -> dict[str, HostSettings]:
    from gate.adapters.registry.oci import HostSettings

    hosts = {}
    for host, settings in config.registries.items():
        username = settings.username
        if settings.username_secret:
            username = secrets.get(settings.username_secret)
        hosts[host] = HostSettings(
            insecure=settings.insecure,
            username=username,
            password=secrets.get(settings.password_secret) if settings.password_secret else None,
            token_realms=settings.token_realms,
        )
    return hosts


def _sqlite(config: GateConfig) -> Ledger:
    from gate.adapters.ledger.sqlite import SqliteLedger

    return SqliteLedger(config.data_dir / "gate.db")


def _attestor(config: GateConfig, registry: OciRegistry) -> Attestor | None:
    """The promotion attestor the ``attestation:`` section asks for (None without one)."""
    if config.attestation is None:
        return None
    from gate.adapters.registry.referrers import OciAttestationStore
    from gate.adapters.signers import KeyFileSigner
    from gate.domain.attestation import Attestor

    assert config.attestation.key is not None  # the configuration requires it locally
    return Attestor(
        signer=KeyFileSigner(config.attestation.key),
        store=OciAttestationStore(registry, use_referrers_api=config.attestation.referrers_api),
        verifier_id=config.attestation.verifier_id,
    )


def _signatures(
    config: GateConfig, registry: Registry, credential: Any = None
) -> SignatureStore | None:
    """The upstream signature reader, when a rule requires signatures (built on first use).

    Key Vault key URIs among a rule's keys are read with ``credential`` (default: azure-identity's
    DefaultAzureCredential, made when the first such key is read).
    """
    if not any(rule.signature_keys for rule in config.rules):
        return None

    def read_key_vault_key(uri: str) -> Any:
        from gate.adapters.signers import key_vault_public_key

        nonlocal credential
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        return key_vault_public_key(uri, credential)

    def make() -> SignatureStore:
        from gate.adapters.registry.referrers import CosignSignatureReader

        return CosignSignatureReader(cast("ManifestReader", registry), read_key_vault_key)

    return lazy(make)


def attestation_reader(config: GateConfig) -> tuple[OciRegistry, OciAttestationStore]:
    """The registry client and attestation store ``gate verify`` reads with (local secrets)."""
    from gate.adapters.registry.referrers import OciAttestationStore
    from gate.adapters.secrets.local import LocalSecrets

    registry = _oci(config, LocalSecrets(config.secrets_dir))
    use_api = config.attestation.referrers_api if config.attestation else True
    return registry, OciAttestationStore(registry, use_referrers_api=use_api)


def local_gatekeeper(config: GateConfig, *, notify: Notify | None = None) -> Gatekeeper:
    """The embedded local default: OCI registries over HTTP, podman/docker, a SQLite ledger.

    The registry client and the validator are built on first use (see :class:`_Lazy`).
    """
    from gate.adapters.secrets.local import LocalSecrets

    secrets = LocalSecrets(config.secrets_dir)
    registry = lazy(lambda: _oci(config, secrets))

    def make_validator() -> LocalValidator:
        from gate.adapters.validation.local import LocalValidator

        insecure = frozenset(host for host, s in config.registries.items() if s.insecure)
        return LocalValidator(
            config.validator.engine,
            insecure_registries=insecure,
            network=config.validator.network,
            keep_images=config.validator.keep_images,
        )

    validator = _Lazy(make_validator)
    downstream: DownstreamRunner | None = None
    if any(task.local for rule in config.rules for task in rule.downstream):

        def make_downstream() -> DownstreamRunner:
            # downstream task files run on the same engine, with the same settings, as
            # validations
            from gate.adapters.downstream.local import LocalTaskDownstream

            return LocalTaskDownstream(validator.get())

        downstream = lazy(make_downstream)
    from gate.service import Gatekeeper, quiet

    return Gatekeeper(
        config=config,
        registry=registry,
        attestor=_attestor(config, registry),
        signatures=_signatures(config, registry),
        validator=cast("Validator", validator),
        ledger=_sqlite(config),
        secrets=secrets,
        notify=notify or quiet,
        downstream=downstream,
    )


def azure_gatekeeper(
    config: GateConfig,
    azure: AzureSettings,
    *,
    notify: Notify | None = None,
    credential: Any = None,
    secrets: Secrets | None = None,
    signer: Signer | None = None,
) -> Gatekeeper:
    """ACR import, ACR task runs, Key Vault and (optionally) Table Storage.

    The ACR clients are built on first use (an HTTP ``GET`` of records never needs them).
    """
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    if secrets is None and azure.key_vault_url:
        from gate.adapters.secrets.keyvault import KeyVaultSecrets

        secrets = KeyVaultSecrets(azure.key_vault_url, credential)
    elif secrets is None:
        from gate.adapters.secrets.local import LocalSecrets

        secrets = LocalSecrets(config.secrets_dir)
    # task runs get Key Vault secret *URIs* (read by the runner's identity), never values
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

    def make_registry() -> Registry:
        from gate.adapters.registry.acr_import import AcrImportRegistry

        registry_class = AcrImportRegistry
        push_options: dict[str, Any] = {}
        if azure.registry.promote == "push":
            # the gate pushes (docker push's calls): push triggers, webhooks and events follow
            from gate.adapters.registry.acr_push import AcrPushRegistry

            registry_class = AcrPushRegistry
            push_options["upstream_hosts"] = _oci_hosts(config, checked_secrets)
        return registry_class(
            **push_options,
            credential=credential,
            subscription_id=azure.subscription_id,
            target_resource_group=azure.registry.resource_group,
            target_registry=azure.registry.name,
            target_login_server=azure.registry.login_server,
            arm_endpoint=azure.arm_endpoint,
            acr_sources=acr_sources,
            upstream_credentials=upstream_credentials,
            secrets=checked_secrets,
            oci=_oci(config, checked_secrets),
        )

    def make_validator() -> Validator:
        from gate.adapters.validation.acr_task_run import AcrTaskRunValidator

        identity = azure.runner_identity
        return AcrTaskRunValidator(
            credential=credential,
            subscription_id=azure.subscription_id,
            resource_group=azure.runner.resource_group,
            registry=azure.runner.name,
            arm_endpoint=azure.arm_endpoint,
            custom_registries=custom_registries,
            # the user-assigned identity every validation task run carries (config requires
            # it when a run logs in anywhere)
            identity_resource_id=identity.resource_id if identity else None,
            identity_client_id=identity.client_id if identity else None,
        )

    def make_downstream() -> DownstreamRunner:
        from gate.adapters.downstream.acr_task import AcrTaskDownstream

        return AcrTaskDownstream(
            credential=credential,
            subscription_id=azure.subscription_id,
            arm_endpoint=azure.arm_endpoint,
        )

    checked_secrets: Secrets = secrets
    registry = _Lazy(make_registry)
    attestor = None
    if config.attestation is not None and config.attestation.key_vault_key is not None:
        attestor = lazy(lambda: _azure_attestor(config, registry.get(), credential, signer))
    from gate.service import Gatekeeper, quiet

    return Gatekeeper(
        config=config,
        registry=cast("Registry", registry),
        validator=lazy(make_validator),
        ledger=build_ledger(config, credential=credential),
        secrets=secrets,
        notify=notify or quiet,
        downstream=lazy(make_downstream) if any(r.downstream for r in config.rules) else None,
        attestor=attestor,
        signatures=_signatures(config, cast("Registry", registry), credential),
    )


def _table(azure: AzureSettings, credential: Any) -> Ledger:
    from gate.adapters.ledger.table import TableLedger

    assert azure.ledger is not None
    if credential is None and azure.ledger.table_endpoint:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    return TableLedger(
        endpoint=azure.ledger.table_endpoint,
        credential=credential if azure.ledger.table_endpoint else None,
        connection_string=azure.ledger.connection_string,
        table=azure.ledger.table,
        log_container=azure.ledger.log_container,
    )


def _azure_attestor(
    config: GateConfig, registry: Any, credential: Any, signer: Signer | None
) -> Attestor:
    """The Key Vault key signs; the attestation is pushed with the identity's ACR token."""
    settings = config.attestation
    assert settings is not None and settings.key_vault_key is not None
    from gate.adapters.registry.acr_push import ACR_TOKEN_USER, AcrPushRegistry
    from gate.adapters.registry.oci import HostSettings, OciRegistry
    from gate.adapters.registry.referrers import SessionAttestationStore
    from gate.adapters.signers import KeyVaultSigner
    from gate.domain.attestation import Attestor

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
