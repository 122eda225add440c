"""KeyVaultSecrets against the emulated vault: the real SecretClient and its challenge flow."""

from __future__ import annotations

import logging

import pytest

from devstack.acr import AcrEmulator
from gate.adapters.secrets.keyvault import KeyVaultSecrets, SecretStoreUnavailable
from gate.errors import ConfigError, InfrastructureError

SECRET_VALUE = "v4ult-s3cret-value-1234"
FAST = {"retry_backoff_factor": 0.01, "retry_backoff_max": 0.05}


def vault(emulator: AcrEmulator) -> KeyVaultSecrets:
    # A loopback vault cannot pass the SDK's check that the challenge's resource matches the
    # vault's domain; production vaults keep the check on.
    return KeyVaultSecrets(
        emulator.key_vault_url, emulator.credential(), verify_challenge_resource=False, **FAST
    )


def secret_reads(emulator: AcrEmulator) -> int:
    return sum(
        1 for call in emulator.vault_calls if call.name == "getSecret" and call.status == 200
    )


def test_get_returns_the_latest_version_after_the_challenge(acr_emulator: AcrEmulator) -> None:
    acr_emulator.set_secret("upstream-password", "old")
    acr_emulator.set_secret("upstream-password", SECRET_VALUE)

    assert vault(acr_emulator).get("upstream-password") == SECRET_VALUE
    statuses = [call.status for call in acr_emulator.vault_calls]
    assert statuses == [401, 200]  # unauthenticated probe, challenge, then the token
    assert ("https://vault.azure.net/.default",) in acr_emulator.credential().scopes


def test_get_is_cached_for_the_life_of_the_adapter(acr_emulator: AcrEmulator) -> None:
    acr_emulator.set_secret("upstream-password", SECRET_VALUE)
    secrets = vault(acr_emulator)

    values = {secrets.get("upstream-password") for _ in range(3)}

    assert values == {SECRET_VALUE}
    assert secret_reads(acr_emulator) == 1


def test_secret_uri_names_the_secret_without_a_version(acr_emulator: AcrEmulator) -> None:
    acr_emulator.set_secret("upstream-password", SECRET_VALUE)
    secrets = vault(acr_emulator)

    uri = secrets.secret_uri("upstream-password")

    assert uri == f"{acr_emulator.key_vault_url}/secrets/upstream-password"
    assert acr_emulator.secret_by_uri(uri) == SECRET_VALUE  # what an ACR identity would read
    assert acr_emulator.vault_calls == []  # building the URI reads nothing


def test_missing_secret_is_a_config_error_naming_vault_and_secret(
    acr_emulator: AcrEmulator,
) -> None:
    with pytest.raises(ConfigError) as raised:
        vault(acr_emulator).get("no-such-secret")

    assert "no-such-secret" in raised.value.message
    assert acr_emulator.key_vault_url in raised.value.message


def test_vault_down_raises_a_retryable_infrastructure_error_saying_what_to_check(
    acr_emulator: AcrEmulator,
) -> None:
    acr_emulator.set_secret("upstream-password", SECRET_VALUE)
    acr_emulator.faults.add(keyvault_down=True)

    with pytest.raises(SecretStoreUnavailable) as raised:
        vault(acr_emulator).get("upstream-password")

    assert isinstance(raised.value, InfrastructureError)
    assert raised.value.retryable
    assert acr_emulator.key_vault_url in raised.value.message
    assert "503" in raised.value.message
    assert len(acr_emulator.vault_calls) == 4  # the first try and 3 bounded retries


def test_unreachable_vault_raises_secret_store_unavailable(acr_emulator: AcrEmulator) -> None:
    secrets = KeyVaultSecrets(
        "https://127.0.0.1:9", acr_emulator.credential(), verify_challenge_resource=False, **FAST
    )

    with pytest.raises(SecretStoreUnavailable) as raised:
        secrets.get("upstream-password")

    assert "could not be reached" in raised.value.message


def test_no_secret_value_in_logs_or_errors(
    acr_emulator: AcrEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    acr_emulator.set_secret("upstream-password", SECRET_VALUE)
    caplog.set_level(logging.DEBUG)
    secrets = vault(acr_emulator)

    assert secrets.get("upstream-password") == SECRET_VALUE
    with pytest.raises(ConfigError) as raised:
        secrets.get("other")

    assert caplog.records, "the SDK logs requests at INFO"
    assert SECRET_VALUE not in caplog.text
    assert SECRET_VALUE not in raised.value.message
