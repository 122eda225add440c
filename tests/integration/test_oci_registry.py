"""The OCI registry adapter against real docker-registry processes, and (for what a real
registry cannot be made to do: bearer challenges, 429, flaky answers) httpx.MockTransport."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import stamina
from stamina.instrumentation import RetryDetails, get_on_retry_hooks, set_on_retry_hooks

from devstack.images import MANIFEST_ACCEPT, ImageBuilder
from devstack.registry import RegistryProcess, free_port
from gate.adapters.registry.auth import RegistryAuth, TokenCache
from gate.adapters.registry.endpoint import Endpoint
from gate.adapters.registry.http import RetryPolicy
from gate.adapters.registry.oci import HostSettings, OciRegistry, parse_challenge, parse_retry_after
from gate.domain.ref import ImageRef
from gate.errors import (
    AuthenticationError,
    Conflict,
    InvalidReference,
    ManifestUnknown,
    RegistryError,
    RegistryUnavailable,
)

Registries = tuple[RegistryProcess, RegistryProcess]


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    """Retries without waiting (stamina's test mode), as many as each client is set to make."""
    with stamina.set_testing(True, attempts=1000, cap=True):
        yield


@pytest.fixture
def retries() -> Iterator[list[RetryDetails]]:
    """The retries stamina schedules while the test runs (what failed, how long it waits)."""
    scheduled: list[RetryDetails] = []
    before = get_on_retry_hooks()
    set_on_retry_hooks([scheduled.append])
    try:
        yield scheduled
    finally:
        set_on_retry_hooks(before)


def oci_for(*processes: RegistryProcess, **options: object) -> OciRegistry:
    hosts = {p.host: HostSettings(insecure=True) for p in processes}
    return OciRegistry(hosts, **options)  # type: ignore[arg-type]


def ref(text: str) -> ImageRef:
    return ImageRef.parse(text)


def raw_manifest(process: RegistryProcess, repo: str, reference: str) -> httpx.Response:
    return httpx.get(
        f"{process.url}/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
    )


def blob_exists(process: RegistryProcess, repo: str, digest: str) -> bool:
    return httpx.head(f"{process.url}/v2/{repo}/blobs/{digest}").status_code == 200


# -- resolve ----------------------------------------------------------------------------------


@pytest.mark.parametrize("manifest_format", ["oci", "docker"])
def test_resolve_returns_digest_of_single_image(
    registry: RegistryProcess, image_builder: ImageBuilder, manifest_format: str
) -> None:
    pushed = image_builder.image(f"{registry.host}/team/app:1", manifest_format=manifest_format)
    with oci_for(registry) as oci:
        assert oci.resolve(ref(f"{registry.host}/team/app:1")) == pushed


@pytest.mark.parametrize(
    ("manifest_format", "media_type"),
    [
        ("oci", "application/vnd.oci.image.index.v1+json"),
        ("docker", "application/vnd.docker.distribution.manifest.list.v2+json"),
    ],
)
def test_resolve_returns_digest_of_index_not_of_a_child(
    registry: RegistryProcess, image_builder: ImageBuilder, manifest_format: str, media_type: str
) -> None:
    pushed = image_builder.index(f"{registry.host}/team/multi:1", manifest_format=manifest_format)
    assert raw_manifest(registry, "team/multi", pushed).headers["Content-Type"] == media_type
    with oci_for(registry) as oci:
        assert oci.resolve(ref(f"{registry.host}/team/multi:1")) == pushed


def test_resolve_of_existing_digest_returns_it(
    registry: RegistryProcess, image_builder: ImageBuilder
) -> None:
    pushed = image_builder.image(f"{registry.host}/team/app:1")
    with oci_for(registry) as oci:
        assert oci.resolve(ref(f"{registry.host}/team/app@{pushed}")) == pushed


def test_resolve_of_missing_digest_raises_manifest_unknown(
    registry: RegistryProcess, image_builder: ImageBuilder
) -> None:
    image_builder.image(f"{registry.host}/team/app:1")
    missing = "sha256:" + "0" * 64
    with oci_for(registry) as oci, pytest.raises(ManifestUnknown) as raised:
        oci.resolve(ref(f"{registry.host}/team/app@{missing}"))
    assert missing in raised.value.message


def test_resolve_of_unknown_tag_raises_manifest_unknown_naming_the_ref(
    registry: RegistryProcess, image_builder: ImageBuilder
) -> None:
    image_builder.image(f"{registry.host}/team/app:1")
    with oci_for(registry) as oci, pytest.raises(ManifestUnknown) as raised:
        oci.resolve(ref(f"{registry.host}/team/app:nope"))
    assert f"{registry.host}/team/app:nope" in raised.value.message
    assert raised.value.exit_code == 2


# -- copy -------------------------------------------------------------------------------------


def test_copy_between_registries_preserves_digest_and_bytes(
    registries: Registries, image_builder: ImageBuilder
) -> None:
    source, target = registries
    digest = image_builder.image(f"{source.host}/team/app:1", env={"A": "1"})
    with oci_for(source, target) as oci:
        report = oci.copy(
            ref(f"{source.host}/team/app@{digest}"),
            ref(f"{target.host}/base/app"),
            immutable_tags=["run-1"],
            tags=["stable"],
        )
        assert oci.resolve(ref(f"{target.host}/base/app:stable")) == digest
        assert oci.resolve(ref(f"{target.host}/base/app:run-1")) == digest
    assert report.digest == digest
    assert report.tags == ("run-1", "stable")
    assert report.manifests == 1
    assert report.blobs_copied == 2  # config and the one layer
    assert report.bytes_copied > 0
    original = raw_manifest(source, "team/app", digest)
    copied = raw_manifest(target, "base/app", "stable")
    assert copied.content == original.content
    assert copied.headers["Content-Type"] == original.headers["Content-Type"]
    for blob in [original.json()["config"], *original.json()["layers"]]:
        assert blob_exists(target, "base/app", blob["digest"])


def test_copy_of_index_copies_every_child_by_digest(
    registries: Registries, image_builder: ImageBuilder
) -> None:
    source, target = registries
    digest = image_builder.index(
        f"{source.host}/team/multi:1", architectures=("amd64", "arm64", "ppc64le")
    )
    children = [m["digest"] for m in raw_manifest(source, "team/multi", digest).json()["manifests"]]
    with oci_for(source, target) as oci:
        report = oci.copy(
            ref(f"{source.host}/team/multi@{digest}"), ref(f"{target.host}/base/multi"), tags=["1"]
        )
        assert oci.resolve(ref(f"{target.host}/base/multi:1")) == digest
    assert report.manifests == 4
    assert len(children) == 3
    for child in children:
        response = raw_manifest(target, "base/multi", child)
        assert response.status_code == 200
        assert hashlib.sha256(response.content).hexdigest() == child.removeprefix("sha256:")
        for blob in [response.json()["config"], *response.json()["layers"]]:
            assert blob_exists(target, "base/multi", blob["digest"])


def test_copy_skips_blobs_already_in_target(
    registries: Registries, image_builder: ImageBuilder
) -> None:
    source, target = registries
    digest = image_builder.image(f"{source.host}/team/app:1")
    with oci_for(source, target) as oci:
        first = oci.copy(ref(f"{source.host}/team/app@{digest}"), ref(f"{target.host}/base/app"))
        second = oci.copy(
            ref(f"{source.host}/team/app@{digest}"), ref(f"{target.host}/base/app"), tags=["2"]
        )
    assert first.bytes_copied > 0
    assert second.bytes_copied == 0
    assert second.blobs_copied == 0
    assert second.manifests == 0
    assert second.blobs_skipped == 2
    assert second.tags == ("2",)


def test_copy_skips_blobs_shared_with_another_image_in_target(
    registries: Registries, image_builder: ImageBuilder
) -> None:
    source, target = registries
    first = image_builder.image(f"{source.host}/team/app:1", extra_layer_bytes=100_000)
    with oci_for(source, target) as oci:
        oci.copy(ref(f"{source.host}/team/app@{first}"), ref(f"{target.host}/base/app"))
        # a new image whose config differs: its manifest and config are new, layers are not
        original = raw_manifest(source, "team/app", first)
        manifest = original.json()
        config = httpx.get(f"{source.url}/v2/team/app/blobs/{manifest['config']['digest']}")
        changed = json.loads(config.content)
        changed["config"]["Env"].append("CHANGED=1")
        new_config = json.dumps(changed).encode()
        new_config_digest = "sha256:" + hashlib.sha256(new_config).hexdigest()
        upload = httpx.post(f"{source.url}/v2/team/app/blobs/uploads/")
        location = httpx.URL(source.url).join(upload.headers["Location"])
        put = httpx.put(
            location.copy_add_param("digest", new_config_digest),
            content=new_config,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert put.status_code == 201
        manifest["config"] = {**manifest["config"], "digest": new_config_digest}
        manifest["config"]["size"] = len(new_config)
        body = json.dumps(manifest).encode()
        second = "sha256:" + hashlib.sha256(body).hexdigest()
        pushed = httpx.put(
            f"{source.url}/v2/team/app/manifests/{second}",
            content=body,
            headers={"Content-Type": original.headers["Content-Type"]},
        )
        assert pushed.status_code == 201
        report = oci.copy(ref(f"{source.host}/team/app@{second}"), ref(f"{target.host}/base/app"))
    assert report.blobs_copied == 1
    assert report.bytes_copied == len(new_config)
    assert report.blobs_skipped == 2


def test_copy_mounts_blobs_across_repositories_of_one_registry(
    registry: RegistryProcess, image_builder: ImageBuilder
) -> None:
    digest = image_builder.image(f"{registry.host}/upstream/app:1")
    with oci_for(registry) as oci:
        report = oci.copy(
            ref(f"{registry.host}/upstream/app@{digest}"),
            ref(f"{registry.host}/base/app"),
            tags=["stable"],
        )
        assert oci.resolve(ref(f"{registry.host}/base/app:stable")) == digest
    assert report.blobs_mounted == 2
    assert report.bytes_copied == 0
    manifest = raw_manifest(registry, "base/app", digest).json()
    for blob in [manifest["config"], *manifest["layers"]]:
        assert blob_exists(registry, "base/app", blob["digest"])


def test_copy_refuses_immutable_tag_at_another_digest_and_writes_nothing(
    registries: Registries, image_builder: ImageBuilder
) -> None:
    source, target = registries
    old = image_builder.image(f"{source.host}/team/app:old", env={"V": "old"})
    new = image_builder.image(f"{source.host}/team/app:new", env={"V": "new"})
    with oci_for(source, target) as oci:
        oci.copy(
            ref(f"{source.host}/team/app@{old}"),
            ref(f"{target.host}/base/app"),
            immutable_tags=["run-1"],
            tags=["stable"],
        )
        with pytest.raises(Conflict) as raised:
            oci.copy(
                ref(f"{source.host}/team/app@{new}"),
                ref(f"{target.host}/base/app"),
                immutable_tags=["run-1"],
                tags=["stable"],
            )
        assert oci.resolve(ref(f"{target.host}/base/app:stable")) == old
        assert oci.resolve(ref(f"{target.host}/base/app:run-1")) == old
    assert "run-1" in raised.value.message
    assert old in raised.value.message
    assert raw_manifest(target, "base/app", new).status_code == 404


def test_copy_accepts_immutable_tag_already_at_the_same_digest(
    registries: Registries, image_builder: ImageBuilder
) -> None:
    source, target = registries
    digest = image_builder.image(f"{source.host}/team/app:1")
    with oci_for(source, target) as oci:
        for _ in range(2):
            report = oci.copy(
                ref(f"{source.host}/team/app@{digest}"),
                ref(f"{target.host}/base/app"),
                immutable_tags=["run-1"],
            )
            assert report.tags == ("run-1",)
        assert oci.resolve(ref(f"{target.host}/base/app:run-1")) == digest


def test_copy_moves_mutable_tags_to_the_new_digest(
    registries: Registries, image_builder: ImageBuilder
) -> None:
    source, target = registries
    old = image_builder.image(f"{source.host}/team/app:old", env={"V": "old"})
    new = image_builder.image(f"{source.host}/team/app:new", env={"V": "new"})
    with oci_for(source, target) as oci:
        oci.copy(ref(f"{source.host}/team/app@{old}"), ref(f"{target.host}/base/app"), tags=["s"])
        oci.copy(ref(f"{source.host}/team/app@{new}"), ref(f"{target.host}/base/app"), tags=["s"])
        assert oci.resolve(ref(f"{target.host}/base/app:s")) == new


def test_copy_reports_progress_up_to_each_blob_size(
    registries: Registries, image_builder: ImageBuilder
) -> None:
    source, target = registries
    digest = image_builder.image(f"{source.host}/team/app:1", extra_layer_bytes=3_000_000)
    seen: dict[str, tuple[int, int]] = {}

    def progress(what: str, done: int, total: int) -> None:
        assert done <= total
        seen[what] = (done, total)

    with oci_for(source, target, chunk_size=256 * 1024) as oci:
        report = oci.copy(
            ref(f"{source.host}/team/app@{digest}"), ref(f"{target.host}/b/app"), progress=progress
        )
    manifest = raw_manifest(source, "team/app", digest).json()
    sizes = {d["digest"]: d["size"] for d in [manifest["config"], *manifest["layers"]]}
    assert seen == {d: (size, size) for d, size in sizes.items()}
    assert report.bytes_copied == sum(sizes.values())


def test_copy_requires_a_digest_pinned_source(registries: Registries) -> None:
    source, target = registries
    with oci_for(source, target) as oci, pytest.raises(InvalidReference):
        oci.copy(ref(f"{source.host}/team/app:1"), ref(f"{target.host}/base/app"))


class FailingUploads(httpx.BaseTransport):
    """Passes requests to the real registries (recording them), but answers the first
    ``failures`` blob PUTs with 503 after reading part of their body (an upload dying midway)."""

    def __init__(self, failures: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.failures = failures
        self.posts = 0
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "POST" and "/blobs/uploads/" in request.url.path:
            self.posts += 1
        if request.method == "PUT" and "/blobs/uploads/" in request.url.path and self.failures:
            self.failures -= 1
            assert isinstance(request.stream, httpx.SyncByteStream)
            next(iter(request.stream))
            return httpx.Response(503)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_copy_restarts_a_failed_streaming_upload_cleanly(
    registries: Registries, image_builder: ImageBuilder, retries: list[RetryDetails]
) -> None:
    source, target = registries
    digest = image_builder.image(f"{source.host}/team/app:1", extra_layer_bytes=2_000_000)
    transport = FailingUploads(failures=2)
    with oci_for(source, target, transport=transport, chunk_size=65536) as oci:
        report = oci.copy(ref(f"{source.host}/team/app@{digest}"), ref(f"{target.host}/b/app"))
        assert oci.resolve(ref(f"{target.host}/b/app@{digest}")) == digest
    assert len(retries) == 2
    assert transport.posts == report.blobs_copied + 2  # a fresh upload session per attempt
    manifest = raw_manifest(target, "b/app", digest).json()
    for blob in manifest["layers"]:
        assert blob_exists(target, "b/app", blob["digest"])


# -- tags -------------------------------------------------------------------------------------


def test_list_tags_returns_every_tag(
    registry: RegistryProcess, image_builder: ImageBuilder
) -> None:
    digest = image_builder.image(f"{registry.host}/team/app:t0")
    names = ["t0", "t1", "t2", "t3", "t4"]
    with oci_for(registry) as oci:
        oci.copy(
            ref(f"{registry.host}/team/app@{digest}"),
            ref(f"{registry.host}/team/app"),
            tags=names[1:],
        )
        assert sorted(oci.list_tags(ref(f"{registry.host}/team/app"))) == names


def test_list_tags_follows_link_pagination() -> None:
    # distribution 2.8 does not paginate tags/list; registries that do answer with Link.
    pages = {
        None: (["a", "b"], '</v2/team/app/tags/list?n=2&last=b>; rel="next"'),
        "b": (["c", "d"], '</v2/team/app/tags/list?n=2&last=d>; rel="next"'),
        "d": (["e"], None),
    }
    seen: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        names, link = pages[request.url.params.get("last")]
        headers = {"Link": link} if link else {}
        return httpx.Response(200, json={"name": "team/app", "tags": names}, headers=headers)

    with OciRegistry(transport=httpx.MockTransport(handler), tags_page_size=2) as oci:
        assert oci.list_tags(ref("registry.example/team/app")) == ["a", "b", "c", "d", "e"]
    assert [u.params.get("n") for u in seen] == ["2", "2", "2"]
    assert {u.host for u in seen} == {"registry.example"}


def test_list_tags_of_unknown_repository_raises_manifest_unknown(
    registry: RegistryProcess,
) -> None:
    with oci_for(registry) as oci, pytest.raises(ManifestUnknown) as raised:
        oci.list_tags(ref(f"{registry.host}/no/such"))
    assert "no/such" in raised.value.message


# -- basic auth against a real registry ---------------------------------------------------------


def test_basic_auth_registry_accepts_configured_credentials(
    tmp_path: Path, image_builder: ImageBuilder
) -> None:
    with (
        RegistryProcess(tmp_path / "r", username="ci", password="pa55 word") as secured,
        RegistryProcess(tmp_path / "open") as open_registry,
    ):
        digest = image_builder.image(f"{open_registry.host}/team/app:1")
        hosts = {
            secured.host: HostSettings(insecure=True, username="ci", password="pa55 word"),
            open_registry.host: HostSettings(insecure=True),
        }
        with OciRegistry(hosts) as oci:
            oci.copy(
                ref(f"{open_registry.host}/team/app@{digest}"),
                ref(f"{secured.host}/base/app"),
                tags=["1"],
            )
            assert oci.resolve(ref(f"{secured.host}/base/app:1")) == digest


def test_basic_auth_registry_without_credentials_says_what_to_configure(
    tmp_path: Path,
) -> None:
    with (
        RegistryProcess(tmp_path / "r", username="ci", password="pa55") as secured,
        oci_for(secured) as oci,
        pytest.raises(AuthenticationError) as raised,
    ):
        oci.resolve(ref(f"{secured.host}/base/app:1"))
    assert secured.host in raised.value.message
    assert "username" in raised.value.message
    assert raised.value.exit_code == 2


def test_basic_auth_refusal_names_host_but_not_password(tmp_path: Path) -> None:
    with RegistryProcess(tmp_path / "r", username="ci", password="right") as secured:
        hosts = {secured.host: HostSettings(insecure=True, username="ci", password="wr0ng-s3cret")}
        with OciRegistry(hosts) as oci, pytest.raises(AuthenticationError) as raised:
            oci.resolve(ref(f"{secured.host}/base/app:1"))
    assert secured.host in raised.value.message
    assert "wr0ng-s3cret" not in str(raised.value)
    assert "wr0ng-s3cret" not in repr(raised.value)


# -- unreachable ------------------------------------------------------------------------------


def test_unreachable_registry_raises_registry_unavailable_after_bounded_attempts(
    retries: list[RetryDetails],
) -> None:
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    with (
        OciRegistry({host: HostSettings(insecure=True)}, max_attempts=3) as oci,
        pytest.raises(RegistryUnavailable) as raised,
    ):
        oci.resolve(ref(f"{host}/team/app:1"))
    assert len(retries) == 2
    assert host in raised.value.message
    assert "3 attempts" in raised.value.message
    assert raised.value.retryable


# -- MockTransport: what a real registry cannot be made to do -----------------------------------

DIGEST = "sha256:" + "a" * 64
TOKEN = "t0ken-value-secret"


def manifest_ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})


class BearerRegistry:
    """registry.example answers 401 with a bearer challenge unless given the token;
    auth.example issues it (optionally only for basic credentials)."""

    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        self.credentials = credentials
        self.token_requests: list[httpx.Request] = []
        self.registry_requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            self.token_requests.append(request)
            if self.credentials is not None:
                user, password = self.credentials
                expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
                if request.headers.get("Authorization") != expected:
                    return httpx.Response(401)
            return httpx.Response(200, json={"token": TOKEN, "expires_in": 300})
        self.registry_requests.append(request)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            repo = request.url.path.split("/manifests/")[0].removeprefix("/v2/")
            challenge = (
                'Bearer realm="https://auth.example/token",service="registry.example",'
                f'scope="repository:{repo}:pull"'
            )
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return manifest_ok(request)


def test_bearer_challenge_fetches_anonymous_token_once_and_caches_it() -> None:
    fake = BearerRegistry()
    with OciRegistry(transport=httpx.MockTransport(fake)) as oci:
        assert oci.resolve(ref("registry.example/team/app:1")) == DIGEST
        assert oci.resolve(ref("registry.example/team/app:2")) == DIGEST
    assert len(fake.token_requests) == 1
    token_request = fake.token_requests[0]
    assert token_request.url.params.get_list("scope") == ["repository:team/app:pull"]
    assert token_request.url.params["service"] == "registry.example"
    assert "Authorization" not in token_request.headers
    assert [r.url.scheme for r in fake.registry_requests] == ["https"] * 3


def test_bearer_challenge_uses_basic_credentials_at_the_realm() -> None:
    fake = BearerRegistry(credentials=("robot", "hunter2-pass"))
    hosts = {"registry.example": realm_trusted("robot", "hunter2-pass")}
    with OciRegistry(hosts, transport=httpx.MockTransport(fake)) as oci:
        assert oci.resolve(ref("registry.example/team/app:1")) == DIGEST
    assert len(fake.token_requests) == 1


def realm_trusted(username: str, password: str) -> HostSettings:
    """Credentials of registry.example, whose token realm auth.example is configured trusted."""
    return HostSettings(username=username, password=password, token_realms=("auth.example",))


def test_credentials_do_not_go_to_a_realm_on_another_host_unless_it_is_trusted() -> None:
    fake = BearerRegistry(credentials=("robot", "hunter2-pass"))
    hosts = {"registry.example": HostSettings(username="robot", password="hunter2-pass")}
    with (
        OciRegistry(hosts, transport=httpx.MockTransport(fake)) as oci,
        pytest.raises(AuthenticationError) as raised,
    ):
        oci.resolve(ref("registry.example/team/app:1"))
    assert fake.token_requests == []
    assert "add its host to token_realms of host 'registry.example'" in raised.value.message


def test_bearer_token_refused_raises_authentication_error_without_secrets() -> None:
    fake = BearerRegistry(credentials=("robot", "right"))
    hosts = {"registry.example": realm_trusted("robot", "hunter2-pass")}
    with (
        OciRegistry(hosts, transport=httpx.MockTransport(fake)) as oci,
        pytest.raises(AuthenticationError) as raised,
    ):
        oci.resolve(ref("registry.example/team/app:1"))
    assert len(fake.token_requests) == 1  # refused by the realm, not before asking it
    text = f"{raised.value} {raised.value!r} {raised.value.__cause__!r}"
    assert "registry.example" in raised.value.message
    assert "hunter2-pass" not in text
    assert TOKEN not in text


def test_token_that_does_not_grant_access_raises_authentication_error_without_token() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            return httpx.Response(200, json={"access_token": TOKEN})
        challenge = 'Bearer realm="https://auth.example/token",service="r"'
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    with (
        OciRegistry(transport=httpx.MockTransport(handler)) as oci,
        pytest.raises(AuthenticationError) as raised,
    ):
        oci.resolve(ref("registry.example/team/app:1"))
    assert TOKEN not in str(raised.value)
    assert "registry.example" in raised.value.message


def test_docker_hub_is_reached_at_registry_1() -> None:
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return manifest_ok(request)

    with OciRegistry(transport=httpx.MockTransport(handler)) as oci:
        assert oci.resolve(ref("node:20")) == DIGEST
    assert hosts == ["registry-1.docker.io"]


def sequence(
    *responses: Callable[[httpx.Request], httpx.Response],
) -> tuple[Callable[[httpx.Request], httpx.Response], list[httpx.Request]]:
    seen: list[httpx.Request] = []
    answers: Iterator[Callable[[httpx.Request], httpx.Response]] = iter(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return next(answers)(request)

    return handler, seen


def status(code: int, **headers: str) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(code, headers=headers)


def test_429_with_retry_after_is_honoured_then_succeeds(retries: list[RetryDetails]) -> None:
    handler, seen = sequence(status(429, **{"Retry-After": "7"}), manifest_ok)
    with OciRegistry(transport=httpx.MockTransport(handler)) as oci:
        assert oci.resolve(ref("registry.example/team/app:1")) == DIGEST
    assert len(retries) == 1
    # the wait the policy gives stamina for that failure (test mode skips the wait itself)
    assert RetryPolicy().backoff(retries[0].caused_by) == 7.0
    assert len(seen) == 2


def test_retry_after_longer_than_the_cap_is_capped(retries: list[RetryDetails]) -> None:
    handler, _ = sequence(status(503, **{"Retry-After": "86400"}), manifest_ok)
    transport = httpx.MockTransport(handler)
    with OciRegistry(transport=transport, retry_after_max=30) as oci:
        oci.resolve(ref("registry.example/team/app:1"))
    assert len(retries) == 1
    assert RetryPolicy(retry_after_max=30).backoff(retries[0].caused_by) == 30.0


def test_retry_after_cap_is_the_wait_stamina_makes(retries: list[RetryDetails]) -> None:
    # out of test mode, with a cap of 10 ms: the wait scheduled is the capped Retry-After
    handler, _ = sequence(status(503, **{"Retry-After": "86400"}), manifest_ok)
    with (
        stamina.set_testing(False),
        OciRegistry(transport=httpx.MockTransport(handler), retry_after_max=0.01) as oci,
    ):
        oci.resolve(ref("registry.example/team/app:1"))
    assert [r.wait_for for r in retries] == [0.01]


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_server_errors_are_retried_then_raise_registry_unavailable(
    retries: list[RetryDetails],
) -> None:
    handler, seen = sequence(*[status(500)] * 4)
    transport = httpx.MockTransport(handler)
    with (
        OciRegistry(transport=transport, max_attempts=4) as oci,
        pytest.raises(RegistryUnavailable) as raised,
    ):
        oci.resolve(ref("registry.example/team/app:1"))
    assert len(seen) == 4
    assert len(retries) == 3
    assert "registry.example" in raised.value.message
    assert "HTTP 500" in raised.value.message
    assert "4 attempts" in raised.value.message


def test_backoff_is_exponential_with_jitter_within_each_ceiling(
    retries: list[RetryDetails],
) -> None:
    # out of test mode, scaled down (backoff_initial 8 ms) so that the real waits are short
    handler, _ = sequence(*[status(500)] * 4)
    with (
        stamina.set_testing(False),
        OciRegistry(
            transport=httpx.MockTransport(handler), max_attempts=4, backoff_initial=0.008
        ) as oci,
        pytest.raises(RegistryUnavailable),
    ):
        oci.resolve(ref("registry.example/team/app:1"))
    waits = [r.wait_for for r in retries]
    assert len(waits) == 3
    # each ceiling doubles (8, 16, 32 ms), the wait lies in its upper half
    assert 0.004 <= waits[0] <= 0.008
    assert 0.008 <= waits[1] <= 0.016
    assert 0.016 <= waits[2] <= 0.032


def test_backoff_never_exceeds_backoff_max(retries: list[RetryDetails]) -> None:
    # out of test mode, scaled down: ceilings 4, 8, 16 ms against a maximum of 6 ms
    handler, _ = sequence(*[status(503)] * 4)
    with (
        stamina.set_testing(False),
        OciRegistry(
            transport=httpx.MockTransport(handler),
            max_attempts=4,
            backoff_initial=0.004,
            backoff_max=0.006,
        ) as oci,
        pytest.raises(RegistryUnavailable),
    ):
        oci.resolve(ref("registry.example/team/app:1"))
    waits = [r.wait_for for r in retries]
    assert len(waits) == 3
    # stamina sums the capped exponential and the jitter in floating point: 0.002 + 0.004 may
    # come out one unit in the last place above 0.006
    assert all(w <= 0.006 + 1e-12 for w in waits)
    assert waits[-1] == pytest.approx(0.006)


def test_connection_errors_are_retried(retries: list[RetryDetails]) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    handler, seen = sequence(refuse, manifest_ok)
    with OciRegistry(transport=httpx.MockTransport(handler)) as oci:
        assert oci.resolve(ref("registry.example/team/app:1")) == DIGEST
    assert len(seen) == 2
    assert len(retries) == 1


@pytest.mark.parametrize(("code", "error"), [(404, ManifestUnknown), (400, RegistryError)])
def test_client_errors_are_not_retried(
    code: int, error: type[Exception], retries: list[RetryDetails]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(code, json={"errors": [{"code": "X", "message": "no"}]})

    with (
        OciRegistry(transport=httpx.MockTransport(handler)) as oci,
        pytest.raises(error),
    ):
        oci.resolve(ref("registry.example/team/app:1"))
    assert retries == []


def test_copy_refuses_manifest_whose_bytes_do_not_match_the_digest() -> None:
    real = json.dumps({"schemaVersion": 2, "mediaType": "x", "config": {}, "layers": []}).encode()
    digest = "sha256:" + hashlib.sha256(real).hexdigest()
    writes: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method in ("PUT", "POST", "PATCH"):
            writes.append(request)
            return httpx.Response(201)
        if request.url.host == "source.example":
            return httpx.Response(200, content=real + b" ", headers={"Content-Type": "x"})
        return httpx.Response(404)

    with (
        OciRegistry(transport=httpx.MockTransport(handler)) as oci,
        pytest.raises(RegistryError) as raised,
    ):
        oci.copy(ref(f"source.example/team/app@{digest}"), ref("target.example/base/app"))
    assert "does not match" in raised.value.message
    assert writes == []


def test_parse_challenge_reads_quoted_and_plain_parameters() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.example/token",service=registry.example,'
        'scope="repository:a/b:pull,push"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }


# -- credentials go only to the host they are for ----------------------------------------------

BASIC = "Basic " + base64.b64encode(b"robot:hunter2-pass").decode()
ROBOT = {"registry.example": HostSettings(username="robot", password="hunter2-pass")}


def test_credentials_are_not_sent_to_an_upload_location_on_another_host() -> None:
    elsewhere: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "uploads.example":
            elsewhere.append(request)
            return httpx.Response(201)
        if request.headers.get("Authorization") != BASIC:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        if request.method == "HEAD":
            return httpx.Response(404)
        return httpx.Response(202, headers={"Location": "https://uploads.example/u?_state=s"})

    with OciRegistry(ROBOT, transport=httpx.MockTransport(handler)) as oci:
        digest = oci.push_blob(ref("registry.example/team/app"), b"{}")
    assert digest == "sha256:" + hashlib.sha256(b"{}").hexdigest()
    assert [r.method for r in elsewhere] == ["PUT"]
    assert "Authorization" not in elsewhere[0].headers
    assert elsewhere[0].url.params["digest"] == digest


def test_a_challenge_from_where_a_blob_redirects_is_not_answered() -> None:
    fake = BearerRegistry()
    content = b'{"architecture": "amd64"}'
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    storage: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "storage.example":
            storage.append(request)
            challenge = 'Bearer realm="https://elsewhere.example/token",service="s"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        if request.url.host == "elsewhere.example":
            raise AssertionError("a realm named by another host was asked for a token")
        answer = fake(request)
        if answer.status_code == 200 and request.url.host == "registry.example":
            return httpx.Response(307, headers={"Location": "https://storage.example/b?sig=x"})
        return answer

    with (
        OciRegistry(transport=httpx.MockTransport(handler)) as oci,
        pytest.raises(AuthenticationError) as raised,
    ):
        oci.fetch_blob(ref("registry.example/team/app"), digest)
    assert len(storage) == 1
    assert "Authorization" not in storage[0].headers
    assert "registry.example" in raised.value.message
    assert TOKEN not in str(raised.value)


def test_an_unreachable_token_service_is_retried_and_named(
    retries: list[RetryDetails],
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            raise httpx.ConnectError("connection refused", request=request)
        challenge = 'Bearer realm="https://auth.example/token",service="registry.example"'
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    with (
        OciRegistry(transport=httpx.MockTransport(handler), max_attempts=3) as oci,
        pytest.raises(RegistryUnavailable) as raised,
    ):
        oci.resolve(ref("registry.example/team/app:1"))
    assert len(retries) == 2
    assert "auth.example" in raised.value.message
    assert "ConnectError at its token service" in raised.value.message


def test_a_known_realm_gets_its_token_before_the_first_request() -> None:
    fake = BearerRegistry()
    with OciRegistry(transport=httpx.MockTransport(fake)) as oci:
        oci.resolve(ref("registry.example/team/app:1"))
        oci.resolve(ref("registry.example/team/other:1"))  # another scope: a new token
    assert len(fake.token_requests) == 2
    # a 401 and its retry, then the second repository's request already with its token
    assert len(fake.registry_requests) == 3
    assert fake.registry_requests[2].headers["Authorization"] == f"Bearer {TOKEN}"
    assert fake.token_requests[1].headers["User-Agent"] == "gated-import-gate"


def test_poll_heads_carry_the_cached_token_and_ask_the_realm_once_per_scope() -> None:
    fake = BearerRegistry()
    with OciRegistry(transport=httpx.MockTransport(fake)) as oci:
        for tag in ("1", "2", "3", "4"):
            assert oci.poll_digest(ref(f"registry.example/team/app:{tag}")).digest == DIGEST
    assert len(fake.token_requests) == 1
    # the first HEAD is challenged and sent again with the token; the others carry it at once
    assert len(fake.registry_requests) == 5
    assert [r.headers.get("Authorization") for r in fake.registry_requests[1:]] == [
        f"Bearer {TOKEN}"
    ] * 4
    assert all(r.method == "HEAD" for r in fake.registry_requests)


def test_a_poll_whose_token_the_registry_stops_taking_gets_a_new_one() -> None:
    accepted = {"token": TOKEN}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            return httpx.Response(200, json={"token": accepted["token"], "expires_in": 300})
        if request.headers.get("Authorization") != f"Bearer {accepted['token']}":
            challenge = 'Bearer realm="https://auth.example/token",service="registry.example"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return manifest_ok(request)

    with OciRegistry(transport=httpx.MockTransport(handler)) as oci:
        assert oci.poll_digest(ref("registry.example/team/app:1")).digest == DIGEST
        accepted["token"] = "rotated-token"  # the registry revoked the first token
        assert oci.poll_digest(ref("registry.example/team/app:1")).digest == DIGEST


def test_poll_heads_send_basic_credentials_only_to_their_own_host() -> None:
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.host, request.headers.get("Authorization")))
        if request.url.host == "private.example" and not request.headers.get("Authorization"):
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        return manifest_ok(request)

    hosts = {"private.example": HostSettings(username="robot", password="hunter2-pass")}
    with OciRegistry(hosts, transport=httpx.MockTransport(handler)) as oci:
        oci.poll_digest(ref("private.example/team/app:1"))
        oci.poll_digest(ref("private.example/team/app:2"))
        oci.poll_digest(ref("public.example/team/app:1"))
    basic = "Basic " + base64.b64encode(b"robot:hunter2-pass").decode()
    assert seen == [
        ("private.example", None),
        ("private.example", basic),
        ("private.example", basic),  # known to want basic: no second challenge
        ("public.example", None),
    ]


class Streamed(httpx.SyncByteStream):
    """A body that arrives as a stream, as from the network (``content=`` would be read)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self.data


class Unbuffered(httpx.BaseTransport):
    """httpx.MockTransport, but leaving a streamed request body to the handler (MockTransport
    reads it into memory first, which makes any body replayable)."""

    def __init__(self, handler: Callable[[httpx.Request], httpx.Response]) -> None:
        self.handler = handler

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.handler(request)


def test_a_token_refused_midway_through_a_streamed_upload_restarts_that_blob(
    retries: list[RetryDetails],
) -> None:
    layer = b"layer bytes " * 1000
    config = b'{"architecture": "amd64", "os": "linux"}'
    blobs = {"sha256:" + hashlib.sha256(b).hexdigest(): b for b in (config, layer)}
    config_digest, layer_digest = blobs
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"digest": config_digest, "size": len(config)},
            "layers": [{"digest": layer_digest, "size": len(layer)}],
        }
    ).encode()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    token_requests: list[httpx.Request] = []
    uploaded: list[bytes] = []
    cancelled: list[str] = []
    refusals = [1]  # the first blob PUT is refused once, its body already read

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.url.host == "auth.example":
            token_requests.append(request)
            return httpx.Response(200, json={"token": TOKEN, "expires_in": 300})
        if request.url.host == "source.example":
            if "/manifests/" in path:
                return httpx.Response(
                    200, content=manifest, headers={"Content-Type": "application/json"}
                )
            return httpx.Response(200, stream=Streamed(blobs[path.rsplit("/", 1)[1]]))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            challenge = 'Bearer realm="https://auth.example/token",service="target.example"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        if request.method == "HEAD":
            return httpx.Response(404)
        if request.method == "POST":
            return httpx.Response(202, headers={"Location": "/v2/b/app/blobs/uploads/1"})
        if request.method == "DELETE":
            cancelled.append(path)  # the refused upload's session, cancelled before the restart
            return httpx.Response(204)
        if "/blobs/uploads/" in path:
            assert isinstance(request.stream, httpx.SyncByteStream)
            body = b"".join(request.stream)  # as a server reads it: the stream, not a copy
            if refusals:
                refusals.pop()
                challenge = 'Bearer realm="https://auth.example/token",error="invalid_token"'
                return httpx.Response(401, headers={"WWW-Authenticate": challenge})
            uploaded.append(body)
        return httpx.Response(201)

    with OciRegistry(transport=Unbuffered(handler)) as oci:
        report = oci.copy(ref(f"source.example/team/app@{digest}"), ref("target.example/b/app"))
    assert report.blobs_copied == 2
    assert len(retries) == 1
    assert "401 during an upload" in str(retries[0].caused_by)
    assert sorted(uploaded) == sorted(blobs.values())
    assert cancelled == ["/v2/b/app/blobs/uploads/1"]
    # the refused token was dropped: the restart asked the realm for a fresh one up front
    assert len(token_requests) == 3


# -- bounds on what is read ---------------------------------------------------------------------


class Endless(httpx.SyncByteStream):
    """A body of 1 MiB chunks that never ends; counts the chunks taken from it."""

    def __init__(self) -> None:
        self.taken = 0

    def __iter__(self) -> Iterator[bytes]:
        while True:
            self.taken += 1
            yield b" " * (1 << 20)


def test_an_oversized_manifest_is_refused_after_reading_just_past_the_bound() -> None:
    body = Endless()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, stream=body, headers={"Content-Type": "application/vnd.oci.image.index.v1+json"}
        )

    with (
        OciRegistry(transport=Unbuffered(handler)) as oci,
        pytest.raises(RegistryError, match="larger than 4 MiB"),
    ):
        oci.fetch_manifest(ref("registry.example/team/app"), "1")
    assert body.taken == 5


def test_a_blob_over_the_limit_is_refused_after_reading_just_past_it() -> None:
    body = Endless()
    with (
        OciRegistry(transport=Unbuffered(lambda r: httpx.Response(200, stream=body))) as oci,
        pytest.raises(RegistryError, match="is over 3145728 bytes"),
    ):
        oci.fetch_blob(ref("registry.example/team/app"), DIGEST, limit=3 << 20)
    assert body.taken == 4


def test_the_auth_flow_serves_any_httpx_client() -> None:
    fake = BearerRegistry()
    ep = Endpoint(
        "registry.example", "registry.example", "https://registry.example", HostSettings()
    )
    cache = TokenCache()
    with httpx.Client(transport=httpx.MockTransport(fake)) as client:
        for _ in range(2):
            auth = RegistryAuth(
                cache, ep, ("repository:team/app:pull",), build_request=client.build_request
            )
            answer = client.head("https://registry.example/v2/team/app/manifests/1", auth=auth)
            assert answer.status_code == 200
    assert len(fake.token_requests) == 1  # the second request used the cached token
    assert len(fake.registry_requests) == 3
