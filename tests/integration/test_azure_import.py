"""AcrImportRegistry against the emulator: the real Azure SDK clients over HTTPS.

The emulated ACRs are backed by real docker-registry processes; an import really copies, so the
assertions read the backing registries (through the OCI adapter over plain HTTP), not the
adapter's own report.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from azure.containerregistry import ContainerRegistryClient

from devstack.acr import AcrEmulator, EmulatedRegistry
from devstack.images import ImageBuilder
from devstack.registry import RegistryProcess
from gate.adapters.registry.acr_import import AcrImportRegistry
from gate.adapters.registry.oci import HostSettings, OciRegistry
from gate.adapters.secrets.keyvault import KeyVaultSecrets, SecretStoreUnavailable
from gate.adapters.secrets.local import LocalSecrets
from gate.domain.ref import ImageRef
from gate.errors import (
    AuthenticationError,
    Conflict,
    InvalidReference,
    ManifestUnknown,
    RegistryError,
    RegistryUnavailable,
)
from gate.ports import Secrets
from tests.emulated import oci_hosts

# Fast retries: the emulator's faults are immediate, the SDK's default backoff is not.
FAST = {"retry_backoff_factor": 0.01, "retry_backoff_max": 0.05}
UPSTREAM_PASSWORD = "upstr3am-pa55word-value"


@dataclass
class Setup:
    """Two emulated ACRs (a source of our tenant and the gate's target) and the adapter."""

    emulator: AcrEmulator
    source: EmulatedRegistry
    target: EmulatedRegistry
    registry: AcrImportRegistry
    oci: OciRegistry

    def digest_at(self, acr: EmulatedRegistry, repository: str, tag: str) -> str | None:
        """What ``repository:tag`` points at in ``acr``'s backing registry (None: no such tag)."""
        try:
            return self.oci.resolve(ImageRef(acr.backing.host, repository, tag))
        except ManifestUnknown:
            return None

    def src(self, repository: str, digest: str) -> ImageRef:
        return ImageRef(self.source.login_server, repository, digest=digest)

    def dst(self, repository: str = "base/app") -> ImageRef:
        return ImageRef(self.target.login_server, repository)


def make_registry(
    emulator: AcrEmulator,
    target: EmulatedRegistry,
    oci: OciRegistry,
    *,
    acr_sources: dict[str, str] | None = None,
    secrets: Secrets | None = None,
    upstream_credentials: dict[str, tuple[str, str]] | None = None,
) -> AcrImportRegistry:
    return AcrImportRegistry(
        credential=emulator.credential(),
        subscription_id=emulator.subscription_id,
        target_resource_group=target.resource_group,
        target_registry=target.name,
        target_login_server=target.login_server,
        arm_endpoint=emulator.arm_endpoint,
        acr_sources=acr_sources or {},
        upstream_credentials=upstream_credentials or {},
        secrets=secrets or LocalSecrets(env={}),
        oci=oci,
        client_kwargs=FAST,
    )


@pytest.fixture
def setup(acr_emulator: AcrEmulator) -> Iterator[Setup]:
    source = acr_emulator.add_registry("sourceacr", resource_group="shared")
    target = acr_emulator.add_registry("gateacr")
    with OciRegistry(oci_hosts(acr_emulator)) as oci:
        registry = make_registry(
            acr_emulator, target, oci, acr_sources={source.login_server: source.resource_id}
        )
        yield Setup(acr_emulator, source, target, registry, oci)
        registry.close()


def push(image_builder: ImageBuilder, acr: EmulatedRegistry, name: str, **options: object) -> str:
    """Build a small image into ``acr``'s backing registry; return its digest."""
    return image_builder.image(f"{acr.backing.host}/{name}", **options)


def imports(emulator: AcrEmulator) -> list[dict[str, object]]:
    """The importImage bodies the emulator accepted."""
    return list(emulator.state.get("import_requests", []))


# -- copying ----------------------------------------------------------------------------------


def test_copy_imports_by_digest_from_an_acr_source_with_run_id_and_stable_tags(
    setup: Setup, image_builder: ImageBuilder
) -> None:
    digest = push(image_builder, setup.source, "library/node:20")

    report = setup.registry.copy(
        setup.src("library/node", digest), setup.dst(), immutable_tags=["run-1"], tags=["20"]
    )

    assert report.digest == digest
    assert report.tags == ("run-1", "20")
    assert setup.digest_at(setup.target, "base/app", "run-1") == digest
    assert setup.digest_at(setup.target, "base/app", "20") == digest
    bodies = imports(setup.emulator)
    assert [b["mode"] for b in bodies] == ["NoForce", "Force"]
    assert {b["source"]["sourceImage"] for b in bodies} == {f"library/node@{digest}"}  # type: ignore[index]
    assert {b["source"]["resourceId"] for b in bodies} == {setup.source.resource_id}  # type: ignore[index]
    assert [b["targetTags"] for b in bodies] == [["base/app:run-1"], ["base/app:20"]]


def test_copy_makes_only_the_two_imports_and_their_polls_on_arm(
    setup: Setup, image_builder: ImageBuilder
) -> None:
    digest = push(image_builder, setup.source, "library/node:20")

    setup.registry.copy(
        setup.src("library/node", digest), setup.dst(), immutable_tags=["run-1"], tags=["20"]
    )

    names = {call.name for call in setup.emulator.calls}
    assert names == {"importImage", "operationStatus", "operationResult"}
    assert len(setup.emulator.arm_calls("importImage")) == 2
    assert len(setup.emulator.arm_calls("operationResult")) == 2  # one final GET per import
    assert all(call.api_version == "2025-11-01" for call in setup.emulator.calls)


def test_run_id_tag_is_locked_after_promotion(setup: Setup, image_builder: ImageBuilder) -> None:
    digest = push(image_builder, setup.source, "library/node:20")

    setup.registry.copy(
        setup.src("library/node", digest), setup.dst(), immutable_tags=["run-1"], tags=["20"]
    )

    client = ContainerRegistryClient(
        f"https://{setup.target.login_server}", setup.emulator.credential()
    )
    with client:
        run_tag = client.get_tag_properties("base/app", "run-1")
        stable = client.get_tag_properties("base/app", "20")
    assert (run_tag.can_write, run_tag.can_delete) == (False, False)
    assert (stable.can_write, stable.can_delete) == (True, True)


def test_second_promotion_reusing_a_run_id_tag_is_a_conflict_and_leaves_the_stable_tag(
    setup: Setup, image_builder: ImageBuilder
) -> None:
    first = push(image_builder, setup.source, "library/node:20", env={"V": "1"})
    second = push(image_builder, setup.source, "library/node:20", env={"V": "2"})
    setup.registry.copy(
        setup.src("library/node", first), setup.dst(), immutable_tags=["run-1"], tags=["20"]
    )

    with pytest.raises(Conflict) as raised:
        setup.registry.copy(
            setup.src("library/node", second), setup.dst(), immutable_tags=["run-1"], tags=["20"]
        )

    assert "run-1" in raised.value.message
    assert first in raised.value.message
    assert setup.digest_at(setup.target, "base/app", "run-1") == first
    assert setup.digest_at(setup.target, "base/app", "20") == first
    # The refused promotion stopped before its Force import: no stable tag was moved.
    assert [b["mode"] for b in imports(setup.emulator)] == ["NoForce", "Force", "NoForce"]


def test_locked_run_id_tag_is_never_overwritten_even_by_a_forced_import(
    setup: Setup, image_builder: ImageBuilder
) -> None:
    first = push(image_builder, setup.source, "library/node:20", env={"V": "1"})
    second = push(image_builder, setup.source, "library/node:20", env={"V": "2"})
    setup.registry.copy(setup.src("library/node", first), setup.dst(), immutable_tags=["run-1"])

    # A careless client (not the gate) asking ACR to force the run-ID tag elsewhere.
    with pytest.raises(RegistryError) as raised:
        setup.registry.copy(setup.src("library/node", second), setup.dst(), tags=["run-1"])

    assert "locked" in raised.value.message
    assert setup.digest_at(setup.target, "base/app", "run-1") == first


def test_resumed_promotion_with_run_id_tag_already_at_the_digest_succeeds(
    setup: Setup, image_builder: ImageBuilder
) -> None:
    digest = push(image_builder, setup.source, "library/node:20")
    source = setup.src("library/node", digest)
    setup.registry.copy(source, setup.dst(), immutable_tags=["run-1"])

    report = setup.registry.copy(source, setup.dst(), immutable_tags=["run-1"], tags=["20"])

    assert report.tags == ("run-1", "20")
    assert setup.digest_at(setup.target, "base/app", "20") == digest
    assert setup.digest_at(setup.target, "base/app", "run-1") == digest


def test_resumed_copy_finding_its_run_id_tag_at_the_digest_imports_it_no_more_and_locks_it(
    setup: Setup, image_builder: ImageBuilder
) -> None:
    # an earlier attempt whose import ACR finished after the gate stopped waiting: the run-ID
    # tag is there, unlocked (the lock never ran)
    digest = push(image_builder, setup.source, "library/node:20")
    source = setup.src("library/node", digest)
    setup.registry.copy(source, setup.dst(), tags=["run-1"])

    report = setup.registry.copy(
        source, setup.dst(), immutable_tags=["run-1"], tags=["20"], resumed=True
    )

    assert report.tags == ("run-1", "20")
    # only the stable tag's import: no NoForce import for a run-ID tag already at the digest
    assert [b["mode"] for b in imports(setup.emulator)] == ["Force", "Force"]
    client = ContainerRegistryClient(
        f"https://{setup.target.login_server}", setup.emulator.credential()
    )
    with client:
        run_tag = client.get_tag_properties("base/app", "run-1")
    assert (run_tag.can_write, run_tag.can_delete) == (False, False)
    assert setup.digest_at(setup.target, "base/app", "20") == digest


def test_resumed_copy_whose_run_id_tag_is_at_another_digest_is_a_conflict_before_any_import(
    setup: Setup, image_builder: ImageBuilder
) -> None:
    first = push(image_builder, setup.source, "library/node:20", env={"V": "1"})
    second = push(image_builder, setup.source, "library/node:20", env={"V": "2"})
    setup.registry.copy(setup.src("library/node", first), setup.dst(), immutable_tags=["run-1"])

    with pytest.raises(Conflict, match="run-1"):
        setup.registry.copy(
            setup.src("library/node", second),
            setup.dst(),
            immutable_tags=["run-1"],
            tags=["20"],
            resumed=True,
        )

    assert [b["mode"] for b in imports(setup.emulator)] == ["NoForce"]
    assert setup.digest_at(setup.target, "base/app", "run-1") == first


def test_stable_tag_moves_to_the_new_digest_and_old_run_id_tag_stays(
    setup: Setup, image_builder: ImageBuilder
) -> None:
    first = push(image_builder, setup.source, "library/node:20", env={"V": "1"})
    second = push(image_builder, setup.source, "library/node:20", env={"V": "2"})
    setup.registry.copy(
        setup.src("library/node", first), setup.dst(), immutable_tags=["run-1"], tags=["20"]
    )

    setup.registry.copy(
        setup.src("library/node", second), setup.dst(), immutable_tags=["run-2"], tags=["20"]
    )

    assert setup.digest_at(setup.target, "base/app", "20") == second
    assert setup.digest_at(setup.target, "base/app", "run-1") == first
    assert setup.digest_at(setup.target, "base/app", "run-2") == second


def test_rollback_re_tags_within_the_target_by_its_own_resource_id(
    setup: Setup, image_builder: ImageBuilder
) -> None:
    first = push(image_builder, setup.source, "library/node:20", env={"V": "1"})
    second = push(image_builder, setup.source, "library/node:20", env={"V": "2"})
    for run, digest in (("run-1", first), ("run-2", second)):
        setup.registry.copy(
            setup.src("library/node", digest), setup.dst(), immutable_tags=[run], tags=["20"]
        )

    setup.registry.copy(
        ImageRef(setup.target.login_server, "base/app", digest=first), setup.dst(), tags=["20"]
    )

    assert setup.digest_at(setup.target, "base/app", "20") == first
    rollback = imports(setup.emulator)[-1]
    assert rollback["source"] == {  # the target imports from itself
        "resourceId": setup.target.resource_id,
        "sourceImage": f"base/app@{first}",
    }
    assert rollback["mode"] == "Force"


def test_copy_from_an_oci_upstream_uses_credentials_read_from_key_vault(
    acr_emulator: AcrEmulator,
    image_builder: ImageBuilder,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = acr_emulator.add_registry("gateacr")
    acr_emulator.set_secret("upstream-user", "puller")
    acr_emulator.set_secret("upstream-password", UPSTREAM_PASSWORD)
    with (
        RegistryProcess(tmp_path / "open") as open_registry,
        RegistryProcess(
            tmp_path / "upstream", username="puller", password=UPSTREAM_PASSWORD
        ) as upstream,
    ):
        hosts = {
            **oci_hosts(acr_emulator),
            open_registry.host: HostSettings(insecure=True),
            upstream.host: HostSettings(
                insecure=True, username="puller", password=UPSTREAM_PASSWORD
            ),
        }
        with OciRegistry(hosts) as oci:
            digest = image_builder.image(f"{open_registry.host}/team/tool:1")
            oci.copy(
                ImageRef(open_registry.host, "team/tool", digest=digest),
                ImageRef(upstream.host, "team/tool"),
                tags=["1"],
            )
            secrets = KeyVaultSecrets(
                acr_emulator.key_vault_url,
                acr_emulator.credential(),
                verify_challenge_resource=False,
                **FAST,
            )
            registry = make_registry(
                acr_emulator,
                target,
                oci,
                secrets=secrets,
                upstream_credentials={upstream.host: ("upstream-user", "upstream-password")},
            )
            caplog.set_level(logging.DEBUG)

            registry.copy(
                ImageRef(upstream.host, "team/tool", digest=digest),
                ImageRef(target.login_server, "mirror/tool"),
                immutable_tags=["run-7"],
                tags=["1"],
            )

            assert oci.resolve(ImageRef(target.backing.host, "mirror/tool", "1")) == digest
            assert oci.resolve(ImageRef(target.backing.host, "mirror/tool", "run-7")) == digest
    body = imports(acr_emulator)[0]
    assert body["source"] == {
        "registryUri": upstream.host,
        "sourceImage": f"team/tool@{digest}",
        "credentials": {"username": "puller", "password": UPSTREAM_PASSWORD},
    }
    assert caplog.records, "the SDK and the adapter log at DEBUG/INFO"
    assert UPSTREAM_PASSWORD not in caplog.text


def test_upstream_secret_unreadable_because_key_vault_is_down_fails_before_any_import(
    acr_emulator: AcrEmulator, image_builder: ImageBuilder
) -> None:
    target = acr_emulator.add_registry("gateacr")
    acr_emulator.faults.add(keyvault_down=True)
    secrets = KeyVaultSecrets(
        acr_emulator.key_vault_url,
        acr_emulator.credential(),
        verify_challenge_resource=False,
        **FAST,
    )
    with OciRegistry(oci_hosts(acr_emulator)) as oci:
        registry = make_registry(
            acr_emulator,
            target,
            oci,
            secrets=secrets,
            upstream_credentials={"ghcr.io": ("user", "password")},
        )
        with pytest.raises(SecretStoreUnavailable) as raised:
            registry.copy(
                ImageRef("ghcr.io", "team/tool", digest="sha256:" + "a" * 64),
                ImageRef(target.login_server, "mirror/tool"),
                tags=["1"],
            )
    assert acr_emulator.key_vault_url in raised.value.message
    assert acr_emulator.calls == []


# -- faults -----------------------------------------------------------------------------------


def test_throttled_import_is_retried_after_retry_after_and_succeeds(
    setup: Setup, image_builder: ImageBuilder
) -> None:
    digest = push(image_builder, setup.source, "library/node:20")
    setup.emulator.faults.add(route="importImage", status=429, retry_after=1, times=1)

    setup.registry.copy(setup.src("library/node", digest), setup.dst(), tags=["20"])

    assert [c.status for c in setup.emulator.arm_calls("importImage")] == [429, 202]
    assert setup.digest_at(setup.target, "base/app", "20") == digest


def test_server_errors_are_retried_then_raise_registry_unavailable(
    setup: Setup, image_builder: ImageBuilder
) -> None:
    digest = push(image_builder, setup.source, "library/node:20")
    setup.emulator.faults.add(route="importImage", status=500, times=50)

    with pytest.raises(RegistryUnavailable) as raised:
        setup.registry.copy(setup.src("library/node", digest), setup.dst(), tags=["20"])

    statuses = [c.status for c in setup.emulator.arm_calls("importImage")]
    assert statuses == [500] * 4  # the first try and the adapter's 3 bounded status retries
    assert "500" in raised.value.message
    assert setup.digest_at(setup.target, "base/app", "20") is None


def test_import_failing_midway_leaves_no_tag(setup: Setup, image_builder: ImageBuilder) -> None:
    digest = push(image_builder, setup.source, "library/node:20")
    setup.emulator.faults.add(import_fails_midway=True)

    with pytest.raises(RegistryError) as raised:
        setup.registry.copy(
            setup.src("library/node", digest), setup.dst(), immutable_tags=["run-1"], tags=["20"]
        )

    assert not isinstance(raised.value, Conflict)
    assert "after copying content" in raised.value.message
    assert setup.digest_at(setup.target, "base/app", "run-1") is None
    assert setup.digest_at(setup.target, "base/app", "20") is None
    # The content did arrive (by digest): only the tags are missing.
    assert (
        setup.oci.resolve(ImageRef(setup.target.backing.host, "base/app", digest=digest)) == digest
    )


def test_refused_import_raises_authentication_error_naming_the_role(
    setup: Setup, image_builder: ImageBuilder
) -> None:
    digest = push(image_builder, setup.source, "library/node:20")
    setup.emulator.faults.add(
        route="importImage",
        status=403,
        code="AuthorizationFailed",
        message="The client does not have authorization to perform action "
        "'Microsoft.ContainerRegistry/registries/importImage/action'.",
    )

    with pytest.raises(AuthenticationError) as raised:
        setup.registry.copy(setup.src("library/node", digest), setup.dst(), tags=["20"])

    assert "importImage/action" in raised.value.message
    # the built-in role the import documentation names, for the target and an ACR source
    assert "Container Registry Data Importer and Data Reader" in raised.value.message


def test_copy_requires_a_digest_pinned_source(setup: Setup) -> None:
    with pytest.raises(InvalidReference):
        setup.registry.copy(
            ImageRef(setup.source.login_server, "library/node", tag="20"), setup.dst(), tags=["20"]
        )
    assert setup.emulator.calls == []


# -- resolve and list -------------------------------------------------------------------------


def test_resolve_and_list_tags_of_an_acr_use_its_data_plane(
    setup: Setup, image_builder: ImageBuilder
) -> None:
    digest = push(image_builder, setup.source, "library/node:20")
    image_builder.image(f"{setup.source.backing.host}/library/node:22", env={"V": "22"})

    resolved = setup.registry.resolve(ImageRef(setup.source.login_server, "library/node", "20"))
    checked = setup.registry.resolve(setup.src("library/node", digest))
    tags = setup.registry.list_tags(ImageRef(setup.source.login_server, "library/node"))

    assert resolved == checked == digest
    assert sorted(tags) == ["20", "22"]
    names = {call.name for call in setup.source.calls}
    assert {"getTagProperties", "getManifestProperties", "listTags", "oauth2Exchange"} <= names
    assert setup.emulator.calls == []  # no ARM call to read tags


def test_resolve_of_a_missing_tag_raises_manifest_unknown(setup: Setup) -> None:
    with pytest.raises(ManifestUnknown):
        setup.registry.resolve(ImageRef(setup.target.login_server, "base/app", "nope"))


def test_resolve_of_a_non_acr_registry_goes_to_the_oci_adapter(
    acr_emulator: AcrEmulator, image_builder: ImageBuilder, registry: RegistryProcess
) -> None:
    target = acr_emulator.add_registry("gateacr")
    digest = image_builder.image(f"{registry.host}/team/tool:1")
    with OciRegistry({registry.host: HostSettings(insecure=True)}) as oci:
        adapter = make_registry(acr_emulator, target, oci)
        assert adapter.resolve(ImageRef(registry.host, "team/tool", "1")) == digest
        assert adapter.list_tags(ImageRef(registry.host, "team/tool")) == ["1"]
    assert target.calls == []


# -- the emulator answers as ARM does ---------------------------------------------------------


def _import_url(emulator: AcrEmulator, registry: EmulatedRegistry) -> str:
    return (
        f"{emulator.arm_endpoint}/subscriptions/{emulator.subscription_id}/resourceGroups/"
        f"{registry.resource_group}/providers/Microsoft.ContainerRegistry/registries/"
        f"{registry.name}/importImage"
    )


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"source": {"registryUri": "docker.io"}}, "Required property 'sourceImage'"),
        ({"source": {"sourceImage": "a", "registryUri": "docker.io"}, "mode": "Always"}, "'mode'"),
        (
            {"source": {"sourceImage": "a", "registryUri": "docker.io"}, "targetTag": ["a"]},
            "targetTag",
        ),
        ({"source": {"sourceImage": "a", "credentials": {"username": "u"}}}, "'password'"),
    ],
)
def test_malformed_import_body_gets_400_invalid_request_content(
    setup: Setup, body: dict[str, object], detail: str
) -> None:
    token = setup.emulator.credential().get_token("https://management.azure.com/.default").token
    response = httpx.post(
        _import_url(setup.emulator, setup.target),
        params={"api-version": "2025-11-01"},
        json=body,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "InvalidRequestContent"
    assert detail in error["message"]
    assert imports(setup.emulator) == []


def test_arm_refuses_requests_without_a_token_or_api_version(setup: Setup) -> None:
    url = _import_url(setup.emulator, setup.target)
    anonymous = httpx.post(url, params={"api-version": "2025-11-01"}, json={})
    token = setup.emulator.credential().get_token("https://management.azure.com/.default").token
    unversioned = httpx.post(url, json={}, headers={"Authorization": f"Bearer {token}"})
    forged = httpx.post(
        url,
        params={"api-version": "2025-11-01"},
        json={},
        headers={"Authorization": "Bearer not-a-token-we-issued"},
    )

    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith(
        f'Bearer authorization_uri="https://login.microsoftonline.com/{setup.emulator.tenant_id}"'
    )
    assert unversioned.status_code == 400
    assert unversioned.json()["error"]["code"] == "MissingApiVersionParameter"
    assert forged.status_code == 401
    assert forged.json()["error"]["code"] == "InvalidAuthenticationToken"


def test_data_plane_pages_tag_lists_as_the_sdk_asks(
    setup: Setup, image_builder: ImageBuilder
) -> None:
    for version in ("1", "2", "3"):
        image_builder.image(
            f"{setup.source.backing.host}/library/node:{version}", env={"V": version}
        )
    client = ContainerRegistryClient(
        f"https://{setup.source.login_server}", setup.emulator.credential()
    )

    with client:
        by_name = [t.name for t in client.list_tag_properties("library/node", results_per_page=2)]
        newest_first = [
            t.name
            for t in client.list_tag_properties(
                "library/node", order_by="timedesc", results_per_page=1
            )
        ]

    assert by_name == ["1", "2", "3"]
    assert sorted(newest_first) == ["1", "2", "3"]
    pages = [c for c in setup.source.calls if c.name == "listTags" and c.status == 200]
    assert len(pages) == 2 + 3


def test_oci_adapter_resolves_through_the_acr_data_plane_with_an_acr_refresh_token(
    setup: Setup, image_builder: ImageBuilder
) -> None:
    digest = push(image_builder, setup.source, "library/node:20")
    login = setup.source.login_server
    aad = setup.emulator.credential().get_token("https://containerregistry.azure.net/.default")
    exchanged = httpx.post(
        f"https://{login}/oauth2/exchange",
        data={"grant_type": "access_token", "service": login, "access_token": aad.token},
    )
    refresh = exchanged.json()["refresh_token"]
    # What `docker login` does with an Entra identity: the refresh token as the password.
    hosts = {login: HostSettings(username="00000000-0000-0000-0000-000000000000", password=refresh)}

    with OciRegistry(hosts) as oci:
        assert oci.resolve(ImageRef(login, "library/node", "20")) == digest
        assert oci.list_tags(ImageRef(login, "library/node")) == ["20"]
