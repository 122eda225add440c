"""The ``azure:`` section: the registries promotions go to and validations run in, the runs'
identity, Key Vault and the Table Storage ledger.
"""

# no ``from __future__ import annotations``: msgspec reads these classes' annotations on the
# first check, and text annotations would have it compile each one then (a third of the check)
import re
from typing import Annotated, Literal

import msgspec
from msgspec.structs import force_setattr

from gate.config.common import Refusal, Section, Text, doc, https_url

_IDENTITY_ID = re.compile(
    r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
    r"Microsoft\.ManagedIdentity/userAssignedIdentities/[^/]+",
    flags=re.IGNORECASE,
)
_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


PROMOTE_MODES = ("import", "push")


class AcrEntry(Section, frozen=True, kw_only=True):
    """An Azure Container Registry by ARM coordinates."""

    name: Annotated[
        str,
        msgspec.Meta(
            pattern="^[A-Za-z0-9]{5,50}$", description="Registry name (5-50 letters and digits)."
        ),
    ]
    resource_group: Annotated[Text, doc("Resource group of the registry.")]
    login_server_given: Annotated[str | None, doc("Login server (default NAME.azurecr.io).")] = (
        msgspec.field(default=None, name="login_server")
    )
    location: Annotated[
        Annotated[str, msgspec.Meta(pattern="^[a-z0-9]+$")] | None,
        doc("Azure region of the registry (e.g. westeurope): its task runs' location."),
    ] = None

    @property
    def login_server(self) -> str:
        """The registry's login server: as given, else ``NAME.azurecr.io``."""
        return self.login_server_given or f"{self.name.lower()}.azurecr.io"


AzureRegistry = AcrEntry
"""An Azure Container Registry by ARM coordinates, as the use cases read it."""


class TargetRegistryEntry(AcrEntry, frozen=True, kw_only=True):
    """The base-artifacts registry promotions go to."""

    promote: Annotated[
        Literal["import", "push"],
        doc("import: server-side ACR import; push: the gate pushes over the data plane."),
    ] = "import"


class RunnerIdentityEntry(Section, frozen=True, kw_only=True):
    """The user-assigned identity validation runs carry (pulls upstreams, reads Key Vault)."""

    resource_id: Annotated[Text, doc("ARM id of the user-assigned identity.")]
    client_id: Annotated[Text, doc("Client id of that identity.")]

    def __post_init__(self) -> None:
        if not _IDENTITY_ID.fullmatch(self.resource_id):
            raise Refusal(
                f"'{self.resource_id}' is not the ARM id of a user-assigned identity "
                "(/subscriptions/<sub>/resourceGroups/<rg>/providers/"
                "Microsoft.ManagedIdentity/userAssignedIdentities/<name>); ACR task runs take "
                "user-assigned identities only",
                "resource_id",
            )
        if not _GUID.fullmatch(self.client_id):
            raise Refusal(
                f"'{self.client_id}' is not a client id (a GUID); copy it from "
                "'az identity show --query clientId'",
                "client_id",
            )


RunnerIdentity = RunnerIdentityEntry
"""The user-assigned identity attached to every validation run (ACR task run)."""


class RunnerEntry(AcrEntry, frozen=True, kw_only=True):
    """The registry validation runs execute in, and the identity they carry."""

    identity: Annotated[RunnerIdentityEntry | None, doc("The runs' user-assigned identity.")] = None


class LedgerEntry(Section, frozen=True, kw_only=True):
    """Where records live in Azure: Table Storage and a blob container for validation logs."""

    table_endpoint: Annotated[str | None, doc("Table endpoint (identity-based access).")] = None
    connection_string: Annotated[str | None, doc("Storage connection string (Azurite).")] = None
    table: Annotated[Text, doc("Table name.")] = "gaterecords"
    log_container: Annotated[Text, doc("Blob container of validation logs.")] = "gatelogs"

    def __post_init__(self) -> None:
        # "exactly one of" is the azure section's rule: AzureLedger() names the defaults
        if self.table_endpoint:
            force_setattr(self, "table_endpoint", https_url(self.table_endpoint, "table_endpoint"))
        else:
            force_setattr(self, "table_endpoint", None)
        if not self.connection_string:
            force_setattr(self, "connection_string", None)

    def __repr__(self) -> str:  # a connection string holds the account key: never in a repr
        return (
            f"AzureLedger(table_endpoint={self.table_endpoint!r}, table={self.table!r}, "
            f"log_container={self.log_container!r})"
        )


AzureLedger = LedgerEntry


class AzureSection(Section, frozen=True, kw_only=True):
    """The Azure side: where promotions go, where validations run, secrets and records."""

    subscription_id: Annotated[Text, doc("Subscription of the registries.")]
    registry: Annotated[TargetRegistryEntry, doc("The base-artifacts registry.")]
    runner_entry: Annotated[
        RunnerEntry | None, doc("Registry of validation runs (default registry).")
    ] = msgspec.field(default=None, name="runner")
    arm_endpoint: Annotated[Text, doc("ARM endpoint.")] = "https://management.azure.com"
    key_vault_url: Annotated[str | None, doc("Key Vault of registry credentials.")] = None
    ledger: Annotated[LedgerEntry | None, doc("Table Storage ledger (else local SQLite).")] = None

    def __post_init__(self) -> None:
        ledger = self.ledger
        if ledger is not None and (ledger.table_endpoint is None) == (
            ledger.connection_string is None
        ):
            raise Refusal(
                "give exactly one of table_endpoint (identity-based, for Azure) or "
                "connection_string (for Azurite)",
                "ledger",
            )
        force_setattr(self, "arm_endpoint", https_url(self.arm_endpoint, "arm_endpoint"))
        if self.key_vault_url:
            force_setattr(self, "key_vault_url", https_url(self.key_vault_url, "key_vault_url"))
        else:
            force_setattr(self, "key_vault_url", None)

    @property
    def runner(self) -> AcrEntry:
        """The registry validation runs execute in: ``runner``, else ``registry``."""
        return self.runner_entry if self.runner_entry is not None else self.registry

    @property
    def runner_identity(self) -> RunnerIdentityEntry | None:
        """The user-assigned identity validation runs carry (``runner.identity``)."""
        return self.runner_entry.identity if self.runner_entry is not None else None


AzureSettings = AzureSection
