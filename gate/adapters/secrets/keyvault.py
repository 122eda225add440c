"""Secrets from Azure Key Vault (``azure-keyvault-secrets``): the Azure :class:`~gate.ports.Secrets`.

Values are read once and kept for the life of the process (a promotion reads the same upstream
password several times; Key Vault throttles per vault). No value ever reaches a log line or an
error message: errors name the vault and the secret, and say what to check.

Errors::

    ConfigError                 the secret does not exist, or the identity may not read it
    SecretStoreUnavailable      the vault could not be reached or kept failing (retryable)
"""

from __future__ import annotations

import threading
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.keyvault.secrets import SecretClient

from gate.errors import ConfigError, InfrastructureError

# Bounded retries: azure-core's default (10 attempts, up to 2 minutes apart) would hold a gate
# run for many minutes when a vault is down. Callers may override through client_kwargs.
_DEFAULT_CLIENT_KWARGS: dict[str, Any] = {"retry_total": 3}


class SecretStoreUnavailable(InfrastructureError):
    """Key Vault could not be reached, or answered 429/5xx after the SDK's retries."""


class KeyVaultSecrets:
    """:class:`gate.ports.Secrets` backed by one Key Vault.

    ``vault_url`` is ``https://<vault>.vault.azure.net``; ``credential`` anything with
    ``get_token`` (``DefaultAzureCredential`` in Azure). ``client_kwargs`` go to
    :class:`~azure.keyvault.secrets.SecretClient` (retry settings, ``api_version``,
    ``verify_challenge_resource``, ``connection_verify``).
    """

    def __init__(self, vault_url: str, credential: TokenCredential, **client_kwargs: Any) -> None:
        self.vault_url = vault_url.rstrip("/")
        self._client = SecretClient(
            self.vault_url, credential, **{**_DEFAULT_CLIENT_KWARGS, **client_kwargs}
        )
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()

    def secret_uri(self, name: str) -> str:
        """The secret's URI without a version (``{vault_url}/secrets/{name}``): always the latest."""
        return f"{self.vault_url}/secrets/{name}"

    def get(self, name: str) -> str:
        """Return secret ``name`` (read once per process); errors never carry the value."""
        with self._lock:
            cached = self._cache.get(name)
        if cached is not None:
            return cached
        value = self._read(name)
        with self._lock:
            self._cache[name] = value
        return value

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()

    def _read(self, name: str) -> str:
        where = f"secret '{name}' of Key Vault {self.vault_url}"
        try:
            secret = self._client.get_secret(name)
        except ResourceNotFoundError:
            raise ConfigError(
                f"{where} does not exist: create it (az keyvault secret set --vault-name "
                f"<vault> --name {name} --file <file>) or correct the secret name in the "
                "gate configuration"
            ) from None
        except ClientAuthenticationError:
            raise ConfigError(
                f"reading {where} was refused: the gate's identity could not authenticate to the "
                "vault. Check the managed identity (AZURE_CLIENT_ID) and that the vault is in "
                "the identity's tenant"
            ) from None
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise SecretStoreUnavailable(
                f"Key Vault {self.vault_url} could not be reached while reading secret '{name}' "
                f"({type(exc).__name__}). Check the vault URL, DNS and network access (private "
                "endpoint, firewall), then retry"
            ) from None
        except HttpResponseError as exc:
            status = exc.status_code or 0
            if status == 403:
                raise ConfigError(
                    f"reading {where} is forbidden: grant the gate's identity the 'Key Vault "
                    "Secrets User' role on the vault (or a 'get' access policy for secrets), and "
                    "check the vault's network rules"
                ) from None
            if status == 429 or status >= 500:
                raise SecretStoreUnavailable(
                    f"Key Vault {self.vault_url} answered {status} while reading secret '{name}', "
                    "after retries. Check the vault's health and throttling, then retry later"
                ) from None
            raise SecretStoreUnavailable(
                f"Key Vault {self.vault_url} refused reading secret '{name}' with {status} "
                f"({_code(exc)}). Check the vault URL and its api-version support"
            ) from None
        if secret.value is None:
            raise ConfigError(f"{where} has no value: set one, or fix the secret name")
        return secret.value


def _code(exc: HttpResponseError) -> str:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    return str(code) if code else "no error code"
