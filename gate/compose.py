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
from typing import TYPE_CHECKING, Any, Unpack, cast

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from gate.adapters.registry.acr_import import AcrImportRegistry
    from gate.adapters.registry.oci import HostSettings, OciRegistry
    from gate.adapters.registry.referrers import OciAttestationStore
    from gate.adapters.validation.local import LocalValidator
    from gate.config.model import AzureSettings, DownstreamTask, GateConfig, Rule
    from gate.domain.attestation import StoredAttestation
    from gate.domain.records import DownstreamRun, GateRecord, ValidationResult
    from gate.domain.ref import ImageRef
    from gate.domain.signatures import CosignSignature
    from gate.ports import (
        AttestationStore,
        CopyOptions,
        CopyReport,
        DownstreamRunner,
        Ledger,
        ManifestReader,
        OnStarted,
        PolledDigest,
        RequestQueue,
        Resume,
        Secrets,
        SecretUris,
        SignatureStore,
        Signer,
        ValidationRequest,
        Validator,
    )
    from gate.usecases.attestation import Attestor
    from gate.usecases.keeper import Gatekeeper, Notify

if TYPE_CHECKING:
    # named in string form by the bases of the Deferred subclasses (bases run at import time)
    from gate.ports import Attester, PollingRegistry, Registry  # noqa: F401


class Once[T]:
    """Builds a port on its first call, then returns that same port (thread-safe).

    ``gate history`` never touches the registry or the validator, and an HTTP ``GET`` never
    the ACR clients: with their ports built on first use, such commands import no HTTP client,
    create no TLS context and probe no container engine.
    """

    def __init__(self, build: Callable[[], T]) -> None:
        self._build: Callable[[], T] | None = build
        self._port: T | None = None
        self._lock = threading.Lock()

    def __call__(self) -> T:
        if self._build is not None:
            with self._lock:  # watch passes poll from several threads
                if self._build is not None:
                    self._port = self._build()
                    self._build = None
        return cast(T, self._port)


class Deferred[P]:
    """A port whose adapter is built on its first use; :meth:`port` is that adapter.

    The subclasses below implement one port each by handing every call to the adapter, so that
    the gatekeeper holds a real implementation of the port (type-checked) before anything is
    built.
    """

    def __init__(self, port: Callable[[], P]) -> None:
        self._port = port

    def port(self) -> P:
        """The adapter itself (built now if it was not yet)."""
        return self._port()


class LazyRegistry(Deferred["Registry"]):
    """A :class:`~gate.ports.Registry` built on first use."""

    def resolve(self, ref: ImageRef) -> str:
        """See :meth:`gate.ports.Registry.resolve`."""
        return self.port().resolve(ref)

    def list_tags(self, repository: ImageRef) -> list[str]:
        """See :meth:`gate.ports.Registry.list_tags`."""
        return self.port().list_tags(repository)

    def check_push(self, target: ImageRef) -> None:
        """See :meth:`gate.ports.Registry.check_push`."""
        self.port().check_push(target)

    def copy(
        self, source: ImageRef, target: ImageRef, **options: Unpack[CopyOptions]
    ) -> CopyReport:
        """See :meth:`gate.ports.Registry.copy`."""
        return self.port().copy(source, target, **options)


class LazyPolling(Deferred["PollingRegistry"]):
    """A :class:`~gate.ports.PollingRegistry` built on first use."""

    def poll_digest(self, ref: ImageRef) -> PolledDigest:
        """See :meth:`gate.ports.PollingRegistry.poll_digest`."""
        return self.port().poll_digest(ref)

    def poll_tags(self, repository: ImageRef, *, budget: float | None = None) -> list[str]:
        """See :meth:`gate.ports.PollingRegistry.poll_tags`."""
        return self.port().poll_tags(repository, budget=budget)


class LazyManifests(Deferred["ManifestReader"]):
    """A :class:`~gate.ports.ManifestReader` built on first use."""

    def fetch_manifest(self, repository: ImageRef, reference: str) -> tuple[bytes, str] | None:
        """See :meth:`gate.ports.ManifestReader.fetch_manifest`."""
        return self.port().fetch_manifest(repository, reference)

    def fetch_blob(self, repository: ImageRef, digest: str, *, limit: int = 4 << 20) -> bytes:
        """See :meth:`gate.ports.ManifestReader.fetch_blob`."""
        return self.port().fetch_blob(repository, digest, limit=limit)


class LazyValidator(Deferred["Validator"]):
    """A :class:`~gate.ports.Validator` built on first use."""

    def validate(
        self, request: ValidationRequest, on_started: OnStarted, resume: Resume | None = None
    ) -> ValidationResult:
        """See :meth:`gate.ports.Validator.validate`."""
        return self.port().validate(request, on_started, resume)


class LazyDownstream(Deferred["DownstreamRunner"]):
    """A :class:`~gate.ports.DownstreamRunner` built on first use."""

    def start(self, task: DownstreamTask, image: ImageRef) -> DownstreamRun:
        """See :meth:`gate.ports.DownstreamRunner.start`."""
        return self.port().start(task, image)


class LazySignatures(Deferred["SignatureStore"]):
    """A :class:`~gate.ports.SignatureStore` built on first use."""

    def cosign_signatures(self, image: ImageRef) -> list[CosignSignature]:
        """See :meth:`gate.ports.SignatureStore.cosign_signatures`."""
        return self.port().cosign_signatures(image)

    def public_keys(self, sources: Sequence[str]) -> list[Any]:
        """See :meth:`gate.ports.SignatureStore.public_keys`."""
        return self.port().public_keys(sources)


class LazyAttestationStore(Deferred["AttestationStore"]):
    """An :class:`~gate.ports.AttestationStore` built on first use."""

    def attach(self, subject: ImageRef, bundle: bytes, *, predicate_type: str, created: str) -> str:
        """See :meth:`gate.ports.AttestationStore.attach`."""
        return self.port().attach(subject, bundle, predicate_type=predicate_type, created=created)

    def find(self, subject: ImageRef) -> list[StoredAttestation]:
        """See :meth:`gate.ports.AttestationStore.find`."""
        return self.port().find(subject)


class LazyAttester(Deferred["Attester"]):
    """An :class:`~gate.ports.Attester` built on first use."""

    def promotion(self, rule: Rule, image: ImageRef, record: GateRecord) -> str:
        """See :meth:`gate.ports.Attester.promotion`."""
        return self.port().promotion(rule, image, record)

    def demotion(self, image: ImageRef, record: GateRecord, reason: str) -> str:
        """See :meth:`gate.ports.Attester.demotion`."""
        return self.port().demotion(image, record, reason)


class LazyRequestQueue(Deferred["RequestQueue"]):
    """A :class:`~gate.ports.RequestQueue` built on first use (most requests never need it)."""

    def send_later(self, body: str, *, delay_seconds: float) -> None:
        """See :meth:`gate.ports.RequestQueue.send_later`."""
        self.port().send_later(body, delay_seconds=delay_seconds)


def build_request_queue(
    env: Mapping[str, str] | None = None, *, credential: Any = None
) -> RequestQueue:
    """The worker's request queue (``gate-requests``) on the storage its bindings use, built
    (and azure-storage-queue imported) when a request is first put back.

    ``env`` holds the app settings (default: this process's environment, read then): a
    connection string in ``AzureWebJobsStorage`` (Azurite in tests) or its identity-based
    ``__`` settings (gate/adapters/queues.py).
    """

    def make() -> RequestQueue:
        import os

        from gate.adapters.queues import StorageRequestQueue

        settings = os.environ if env is None else env
        return StorageRequestQueue.from_settings(settings, credential=credential)

    return LazyRequestQueue(Once(make))


def build_ledger(config: GateConfig, *, credential: Any = None, existing: bool = False) -> Ledger:
    """The ledger alone (``gate history`` and ``gate show`` need nothing else); with
    ``existing``, a local ledger that is not there yet is refused instead of created (a reading
    command pointed at the wrong ``data_dir`` would otherwise report an empty history)."""
    azure = config.azure
    if azure is None or azure.ledger is None:
        from gate.adapters.ledger.sqlite import SqliteLedger

        ledger = _sqlite(config)
        if existing and isinstance(ledger, SqliteLedger):
            ledger.require()
        return ledger
    return _table(azure, credential)


def write_key_pair(private_key: Path, *, force: bool = False) -> Path:
    """Write a new attestation key pair (``gate keygen``); returns the public key's path."""
    from gate.adapters.signers import generate_key_pair

    return generate_key_pair(private_key, force=force)


def vault_public_key(key_id: str, credential: object, **client_options: object) -> Any:
    """The public key of the Key Vault key ``key_id`` (``gate verify --key-vault-key``)."""
    from gate.adapters.signers import key_vault_public_key

    return key_vault_public_key(key_id, credential, **client_options)


def build_gatekeeper(
    config: GateConfig,
    *,
    notify: Notify | None = None,
    credential: Any = None,
    secrets: Secrets | None = None,
    secret_uris: SecretUris | None = None,
    signer: Signer | None = None,
) -> Gatekeeper:
    """The gatekeeper the configuration asks for (local, or Azure when it has ``azure:``).

    ``credential`` is for Azure (anything with ``get_token``); the default is
    ``DefaultAzureCredential`` (managed identity in Azure, ``az login`` on a laptop).
    ``secrets`` replaces the secret store the configuration implies (Key Vault or local), and
    ``secret_uris`` names its secrets for quick runs (see :func:`azure_gatekeeper`); ``signer``
    the attestation signer (Azure: the Key Vault key of ``attestation:``).
    """
    if config.azure is None:
        return local_gatekeeper(config, notify=notify)
    return azure_gatekeeper(
        config,
        config.azure,
        notify=notify,
        credential=credential,
        secrets=secrets,
        secret_uris=secret_uris,
        signer=signer,
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


def _attestor(config: GateConfig, registry: Callable[[], OciRegistry]) -> Attestor | None:
    """The promotion attestor the ``attestation:`` section asks for (None without one).

    The key is read now (a bad key stops the gate before it does anything); the store, which
    needs the registry client, is built on first use.
    """
    settings = config.attestation
    if settings is None:
        return None
    from gate.adapters.signers import KeyFileSigner
    from gate.usecases.attestation import Attestor

    def make_store() -> AttestationStore:
        from gate.adapters.registry.referrers import OciAttestationStore

        return OciAttestationStore(registry(), use_referrers_api=settings.referrers_api)

    assert settings.key is not None  # the configuration requires it locally
    return Attestor(
        signer=KeyFileSigner(settings.key),
        store=LazyAttestationStore(Once(make_store)),
        verifier_id=settings.verifier_id,
    )


def _signatures(
    config: GateConfig, manifests: ManifestReader, credential: Any = None
) -> SignatureStore | None:
    """The upstream signature reader, when a rule requires signatures (built on first use).

    Key Vault key URIs among a rule's keys are read with ``credential`` (default: azure-identity's
    DefaultAzureCredential, made when the first such key is read).
    """
    if not any(rule.signature_keys for rule in config.rules):
        return None

    def read_key_vault_key(uri: str) -> list[Any]:
        from gate.adapters.signers import key_vault_public_keys

        nonlocal credential
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        return key_vault_public_keys(uri, credential)

    def make() -> SignatureStore:
        from gate.adapters.registry.referrers import CosignSignatureReader

        return CosignSignatureReader(manifests, read_key_vault_key)

    return LazySignatures(Once(make))


def attestation_reader(config: GateConfig) -> tuple[OciRegistry, OciAttestationStore]:
    """The registry client and attestation store ``gate verify`` reads with (local secrets)."""
    from gate.adapters.registry.referrers import OciAttestationStore
    from gate.adapters.secrets.local import LocalSecrets

    registry = _oci(config, LocalSecrets(config.secrets_dir))
    use_api = config.attestation.referrers_api if config.attestation else True
    return registry, OciAttestationStore(registry, use_referrers_api=use_api)


def local_gatekeeper(config: GateConfig, *, notify: Notify | None = None) -> Gatekeeper:
    """The embedded local default: OCI registries over HTTP, podman/docker, a SQLite ledger.

    The registry client and the validator are built on first use (see :class:`Deferred`).
    """
    from gate.adapters.secrets.local import LocalSecrets

    secrets = LocalSecrets(config.secrets_dir)
    oci = Once(lambda: _oci(config, secrets))

    def make_validator() -> LocalValidator:
        from gate.adapters.validation.local import LocalValidator

        insecure = frozenset(host for host, s in config.registries.items() if s.insecure)
        return LocalValidator(
            config.validator.engine,
            insecure_registries=insecure,
            network=config.validator.network,
            keep_images=config.validator.keep_images,
        )

    validator = Once(make_validator)
    downstream: DownstreamRunner | None = None
    if any(task.local for rule in config.rules for task in rule.downstream):

        def make_downstream() -> DownstreamRunner:
            # downstream task files run on the same engine, with the same settings, as
            # validations
            from gate.adapters.downstream.local import LocalTaskDownstream

            return LocalTaskDownstream(validator())

        downstream = LazyDownstream(Once(make_downstream))
    from gate.usecases.keeper import Gatekeeper, quiet

    return Gatekeeper(
        config=config,
        registry=LazyRegistry(oci),
        manifests=LazyManifests(oci),
        polling=LazyPolling(oci),
        attestor=_attestor(config, oci),
        signatures=_signatures(config, LazyManifests(oci)),
        validator=LazyValidator(validator),
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
    secret_uris: SecretUris | None = None,
    signer: Signer | None = None,
) -> Gatekeeper:
    """ACR import, ACR task runs, Key Vault and (optionally) Table Storage.

    The ACR clients are built on first use (an HTTP ``GET`` of records never needs them).
    Quick runs read upstream registry credentials themselves, by the URIs ``secret_uris``
    gives (default: the Key Vault store built here); without them such credentials are not
    handed to quick runs.
    """
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    if secrets is None and azure.key_vault_url:
        from gate.adapters.secrets.keyvault import KeyVaultSecrets

        vault = KeyVaultSecrets(azure.key_vault_url, credential)
        secrets = vault
        if secret_uris is None:
            secret_uris = vault
    elif secrets is None:
        from gate.adapters.secrets.local import LocalSecrets

        secrets = LocalSecrets(config.secrets_dir)
    # task runs get Key Vault secret *URIs* (read by the runner's identity), never values

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
        if secret_uris is not None:
            # the runner identity reads these itself: no secret passes through us
            custom_registries[host] = (
                secret_uris.secret_uri(user_secret),
                secret_uris.secret_uri(settings.password_secret),
            )

    def make_registry() -> AcrImportRegistry:
        from gate.adapters.registry.acr_import import AcrImportRegistry

        registry_class: type[AcrImportRegistry] = AcrImportRegistry
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
            # every upstream's; each run carries only its own rule's (acr_run_scope)
            custom_registries=custom_registries,
            # what {{.Run.Registry}} is in a run: whether its task file uses the runner registry
            login_server=azure.runner.login_server,
            # the location of its task runs (TaskRun.location): the runner registry's region
            location=azure.runner.location,
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
    acr = Once(make_registry)
    attestor = None
    if config.attestation is not None and config.attestation.key_vault_key is not None:
        attestor = LazyAttester(Once(lambda: _azure_attestor(config, acr(), credential, signer)))
    downstream = None
    if any(r.downstream for r in config.rules):
        downstream = LazyDownstream(Once(make_downstream))
    from gate.usecases.keeper import Gatekeeper, quiet

    return Gatekeeper(
        config=config,
        registry=LazyRegistry(acr),
        # the ACR adapters read manifests; they have no polling capability (polled one at a time)
        manifests=LazyManifests(acr),
        validator=LazyValidator(Once(make_validator)),
        ledger=build_ledger(config, credential=credential),
        secrets=secrets,
        notify=notify or quiet,
        downstream=downstream,
        attestor=attestor,
        signatures=_signatures(config, LazyManifests(acr), credential),
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
    from gate.usecases.attestation import Attestor

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
