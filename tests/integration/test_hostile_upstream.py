"""What a hostile upstream registry gets from the gate: nothing it should not.

Each test puts :class:`devstack.hostile.HostileRegistry` in front of a real docker-registry
(the upstream), switches on one misbehaviour and copies or lists through the gate's OCI
client. The outcome is checked where it matters: a clean gate error, the target registry's
real contents (the stable tag did not move) and what the hostile server and a foreign witness
were sent (no credential, no request where it does not belong).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.configs import empty_task_gate_yaml
from devstack.hostile import OCI_INDEX, HostileRegistry
from devstack.images import tag_digests
from devstack.proxy import push_tiny_images
from devstack.registry import RegistryProcess
from gate.adapters.registry import tags as tags_module
from gate.adapters.registry.copy import MAX_INDEX_DEPTH, MAX_MANIFESTS
from gate.adapters.registry.guard import address_class
from gate.adapters.registry.http import MAX_REDIRECTS
from gate.adapters.registry.oci import OCI_MANIFEST, HostSettings, OciRegistry
from gate.adapters.registry.tags import MAX_PAGES
from gate.config.loading import load_config
from gate.domain.ref import ImageRef
from gate.errors import (
    AuthenticationError,
    ConfigError,
    GateError,
    RegistryError,
    RegistryMisbehaved,
    RetryLater,
)


@dataclass(frozen=True)
class Stage:
    """An upstream behind a hostile front, a target with ``node:15-alpine`` on ``old``, and
    the image ``new`` the gate is asked to promote."""

    hostile: HostileRegistry
    witness: HostileRegistry
    target: RegistryProcess
    old: str
    new: str

    def client(self, **options: object) -> OciRegistry:
        hosts = {
            self.hostile.host: HostSettings(insecure=True, username="u", password="p"),
            self.target.host: HostSettings(insecure=True),
        }
        defaults: dict[str, object] = {"max_attempts": 2, "backoff_initial": 0.01}
        return OciRegistry(hosts, **{**defaults, **options})  # type: ignore[arg-type]

    def promote(self, digest: str | None = None, **options: object) -> None:
        """Copy ``digest`` (default: ``new``) from the hostile upstream as ``15-alpine``."""
        with self.client(**options) as registry:
            registry.copy(
                ImageRef(self.hostile.host, "node", digest=digest or self.new),
                ImageRef(self.target.host, "node"),
                tags=["15-alpine"],
            )

    def stable_tag_unmoved(self) -> bool:
        return tag_digests(self.target.host, "node").get("15-alpine") == self.old

    def credentials_leaked(self) -> bool:
        return any(seen.authorization for seen in self.witness.seen)


@pytest.fixture
def stage(registries: tuple[RegistryProcess, RegistryProcess]) -> Iterator[Stage]:
    upstream, target = registries
    seeded = push_tiny_images(upstream.host, ["node"], ["14-alpine", "15-alpine"])
    old, new = seeded["node:14-alpine"], seeded["node:15-alpine"]
    with OciRegistry(
        {upstream.host: HostSettings(insecure=True), target.host: HostSettings(insecure=True)}
    ) as registry:
        registry.copy(
            ImageRef(upstream.host, "node", digest=old),
            ImageRef(target.host, "node"),
            tags=["15-alpine"],
        )
    with HostileRegistry(upstream.host) as hostile, HostileRegistry() as witness:
        hostile.foreign = witness.host
        yield Stage(hostile, witness, target, old, new)


def refused(stage: Stage, behaviour: str, *, digest: str | None = None) -> GateError:
    """Promote through ``behaviour``; the gate error it ends in (asserted: stable tag kept)."""
    stage.hostile.misbehave(behaviour)
    with pytest.raises(GateError) as caught:
        stage.promote(digest)
    assert stage.stable_tag_unmoved()
    assert not stage.credentials_leaked()
    return caught.value


# -- memory ---------------------------------------------------------------------------------


@pytest.mark.parametrize("behaviour", ["endless-manifest", "huge-manifest"])
def test_an_endless_or_huge_manifest_is_refused_past_4_mib(stage: Stage, behaviour: str) -> None:
    error = refused(stage, behaviour)

    assert isinstance(error, RegistryMisbehaved)
    assert "larger than 4 MiB" in error.message


def test_an_honest_upstream_through_the_hostile_front_promotes(stage: Stage) -> None:
    stage.promote()

    assert tag_digests(stage.target.host, "node")["15-alpine"] == stage.new
    assert not stage.credentials_leaked()


def test_an_endless_error_body_is_not_read_past_its_bound(stage: Stage) -> None:
    error = refused(stage, "error-endless")

    assert isinstance(error, RegistryError)
    assert "answered HTTP 400" in error.message


# -- time -----------------------------------------------------------------------------------


def test_a_trickling_manifest_is_cut_at_the_deadline(stage: Stage) -> None:
    stage.hostile.misbehave("trickle-manifest")
    with pytest.raises(RegistryMisbehaved) as caught:
        stage.promote(deadline=1.5)

    assert "took longer than 1.5 s" in caught.value.message
    assert caught.value.exit_code == 3
    assert stage.stable_tag_unmoved()


@pytest.mark.parametrize("behaviour", ["retry-after-seconds", "retry-after-date"])
def test_a_huge_retry_after_ends_in_retry_later_within_the_wait_budget(
    stage: Stage, behaviour: str
) -> None:
    stage.hostile.misbehave(behaviour)
    with pytest.raises(RetryLater) as caught:
        stage.promote(max_attempts=5, retry_after_max=0.05, wait_budget=0.12)

    assert "the gate waits at most 0.05 s a time and 0.12 s in all" in caught.value.message
    assert caught.value.retry_after is not None and caught.value.retry_after > 999_000
    # the pauses waited: two of 0.05 s, then the third would pass the budget
    assert len(stage.hostile.requests_to("/manifests/")) == 3
    assert stage.stable_tag_unmoved()


def open_uploads(registry: RegistryProcess) -> list[str]:
    """The upload sessions the registry keeps open: in distribution's filesystem layout, an
    upload directory with its ``startedat`` file, without which the session cannot be resumed
    (the handler of a PUT cut short may still write a hash state after the cancel)."""
    uploads = registry.root / "data/docker/registry/v2/repositories/node/_uploads"
    return sorted(p.parent.name for p in uploads.glob("*/startedat"))


def test_an_endless_token_answer_is_cut(stage: Stage) -> None:
    error = refused(stage, "realm-endless-token")

    assert isinstance(error, RegistryMisbehaved)
    assert "more than 1048576 bytes" in error.message


# -- blobs ----------------------------------------------------------------------------------


def test_a_flipped_byte_is_caught_by_the_gate_and_the_upload_cancelled(stage: Stage) -> None:
    error = refused(stage, "blob-flip")

    assert isinstance(error, RegistryMisbehaved)
    assert "does not match that digest" in error.message
    # the last chunk was held back: the target never saw a whole wrong blob, and the upload
    # session the gate opened for it was cancelled
    assert open_uploads(stage.target) == []


# -- traversal ------------------------------------------------------------------------------


def index(*children: str, note: str = "") -> bytes:
    """An OCI index naming ``children`` (``note`` makes otherwise equal indexes distinct)."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_INDEX, "digest": child, "size": 100} for child in children
            ],
            "annotations": {"note": note},
        }
    ).encode()


def fake_digest(n: int) -> str:
    return "sha256:" + hashlib.sha256(str(n).encode()).hexdigest()


def test_an_index_of_indexes_is_refused_once_it_names_too_many(stage: Stage) -> None:
    # three levels of 1,000: a billion manifests, if the gate followed them all
    second = stage.hostile.serve_manifest(index(*(fake_digest(n) for n in range(1000))))
    top = stage.hostile.serve_manifest(
        index(second, *(fake_digest(-n) for n in range(1, 1000)), note="top")
    )

    error = refused(stage, "honest", digest=top)

    assert isinstance(error, RegistryMisbehaved)
    assert f"name more than {MAX_MANIFESTS} manifests" in error.message
    assert len(stage.hostile.requests_to("/manifests/")) == 2


def test_a_1500_deep_index_chain_is_refused_at_depth_4(stage: Stage) -> None:
    digest = stage.hostile.serve_manifest(index())
    for level in range(1500):
        digest = stage.hostile.serve_manifest(index(digest, note=str(level)))

    error = refused(stage, "honest", digest=digest)

    assert isinstance(error, RegistryMisbehaved)
    assert f"nested more than {MAX_INDEX_DEPTH} deep" in error.message
    assert len(stage.hostile.requests_to("/manifests/")) == MAX_INDEX_DEPTH + 1


def test_an_index_of_10000_platforms_is_refused(stage: Stage) -> None:
    top = stage.hostile.serve_manifest(index(*[stage.new] * 10_000))

    error = refused(stage, "honest", digest=top)

    assert "an index of 10000 manifests" in error.message
    assert len(stage.hostile.requests_to("/manifests/")) == 1


def test_a_child_named_many_times_is_fetched_once(stage: Stage) -> None:
    top = stage.hostile.serve_manifest(index(*[stage.new] * 500))

    stage.promote(top)

    assert tag_digests(stage.target.host, "node")["15-alpine"] == top
    assert len(stage.hostile.requests_to(f"/manifests/{stage.new}")) == 1


# -- malformed answers ----------------------------------------------------------------------


def image(config: dict[str, object], *layers: dict[str, object]) -> bytes:
    return json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": list(layers)}
    ).encode()


GOOD = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": fake_digest(1)}


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (b"{not json", "content that is not JSON"),
        (b"[1, 2]", "JSON that is not an object"),
        (b"[" * 100_000 + b"]" * 100_000, "content that is not JSON"),
        (image({**GOOD, "size": "12"}), "size '12' is no byte count"),
        (image({**GOOD, "size": True}), "size 'True' is no byte count"),
        (image({**GOOD, "size": -1}), "size '-1' is no byte count"),
        (image(GOOD | {"size": 1}, {"digest": 7, "size": 1}), "without a digest"),
        (
            json.dumps({"mediaType": OCI_INDEX, "manifests": {"digest": 1}}).encode(),
            "'manifests' that is not a list",
        ),
    ],
)
def test_a_malformed_manifest_is_a_clean_refusal(stage: Stage, data: bytes, said: str) -> None:
    digest = stage.hostile.serve_manifest(data, OCI_MANIFEST)

    error = refused(stage, "honest", digest=digest)

    assert isinstance(error, RegistryMisbehaved)
    assert said in error.message
    assert error.exit_code == 3


@pytest.mark.parametrize(
    "data",
    [
        image({**GOOD, "size": 1}, {"digest": "sha256:../../../../etc/passwd", "size": 1}),
        index("../../etc/passwd"),
        index("sha256:" + "a" * 63 + "/"),
    ],
)
def test_a_traversal_looking_digest_never_reaches_a_url(stage: Stage, data: bytes) -> None:
    digest = stage.hostile.serve_manifest(data, OCI_MANIFEST)

    error = refused(stage, "honest", digest=digest)

    assert "is not one" in error.message
    assert not stage.hostile.requests_to("passwd")
    assert [seen.path for seen in stage.hostile.seen] == [f"/v2/node/manifests/{digest}"]


# -- tag lists ------------------------------------------------------------------------------


def listing(stage: Stage, behaviour: str) -> list[str]:
    stage.hostile.misbehave(behaviour)
    with stage.client() as registry:
        return registry.poll_tags(ImageRef(stage.hostile.host, "node"))


def test_a_tag_list_that_links_to_itself_is_stopped(stage: Stage) -> None:
    with pytest.raises(RegistryMisbehaved) as caught:
        listing(stage, "tags-self-link")

    assert "in a loop through the tag list" in caught.value.message
    assert len(stage.hostile.requests_to("/tags/list")) == 1  # the loop seen before it is taken


def test_a_tag_list_link_to_a_foreign_host_is_not_followed(stage: Stage) -> None:
    stage.hostile.basic = ("u", "p")
    with pytest.raises(RegistryMisbehaved) as caught:
        listing(stage, "tags-foreign-link")

    assert "on another origin" in caught.value.message
    assert stage.witness.seen == []
    # the registry's own challenge was answered with its own credentials
    assert stage.hostile.requests_to("/tags/list")[-1].authorization.startswith("Basic ")


def test_an_endless_tag_page_is_cut(stage: Stage) -> None:
    with pytest.raises(RegistryMisbehaved) as caught:
        listing(stage, "tags-huge-page")

    assert f"more than {4 << 20} bytes" in caught.value.message


def test_invalid_tag_names_are_skipped_not_fatal(
    stage: Stage, caplog: pytest.LogCaptureFixture
) -> None:
    assert listing(stage, "tags-invalid-name") == ["15-alpine", "16-alpine"]
    assert "listed 3 name(s)" in caplog.text


# -- where requests and credentials go ------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "said"),
    [
        ("blob-redirect-metadata", "points at 169.254.169.254, a metadata address"),
        ("blob-redirect-file", "names file:// URL"),
    ],
)
def test_a_blob_redirect_off_the_web_is_not_followed(
    stage: Stage, behaviour: str, said: str
) -> None:
    error = refused(stage, behaviour)

    assert isinstance(error, RegistryMisbehaved)
    assert said in error.message
    assert open_uploads(stage.target) == []


def test_a_blob_redirect_loop_is_cut_after_a_few_hops(stage: Stage) -> None:
    error = refused(stage, "blob-redirect-loop")

    assert isinstance(error, RegistryMisbehaved)
    # the blob GET and its redirects, then refused (a loop is no transient failure)
    assert stage.hostile.loops == MAX_REDIRECTS + 1
    assert "redirect" in error.message.lower()
    assert open_uploads(stage.target) == []


def test_credentials_never_go_to_a_foreign_token_realm(stage: Stage) -> None:
    error = refused(stage, "realm-foreign")

    assert isinstance(error, AuthenticationError)
    assert error.exit_code == 2
    assert "add its host to token_realms" in error.message
    assert stage.witness.seen == []


def test_a_realm_trusted_on_purpose_gets_the_credentials(stage: Stage) -> None:
    stage.hostile.misbehave("realm-foreign")
    hosts = {
        stage.hostile.host: HostSettings(
            insecure=True, username="u", password="p", token_realms=(stage.witness.host,)
        )
    }
    with OciRegistry(hosts, max_attempts=1) as registry, pytest.raises(GateError):
        registry.poll_tags(ImageRef(stage.hostile.host, "node"))

    assert [seen.path.split("?")[0] for seen in stage.witness.seen] == ["/token"]
    assert stage.witness.seen[0].authorization.startswith("Basic ")


@pytest.mark.parametrize(
    ("behaviour", "said"),
    [
        ("realm-link-local", "points at 169.254.169.254, a metadata address"),
        ("realm-file", "names file:// URL"),
    ],
)
def test_a_token_realm_off_the_web_is_not_contacted(
    stage: Stage, behaviour: str, said: str
) -> None:
    stage.hostile.misbehave(behaviour)
    anonymous = {stage.hostile.host: HostSettings(insecure=True)}
    with (
        OciRegistry(anonymous, max_attempts=1) as registry,
        pytest.raises(RegistryMisbehaved) as caught,
    ):
        registry.poll_tags(ImageRef(stage.hostile.host, "node"))

    assert said in caught.value.message
    assert "asked it for no token" in caught.value.message
    # with credentials too, and they went nowhere (``refused`` checks the witness)
    assert "asked it for no token" in refused(stage, behaviour).message


def test_a_referrer_digest_that_is_a_path_never_reaches_a_url(stage: Stage) -> None:
    with stage.client() as registry, pytest.raises(RegistryMisbehaved) as caught:
        registry.fetch_manifest(ImageRef(stage.hostile.host, "node"), "../../../etc/passwd")

    assert "neither a tag nor a digest" in caught.value.message
    assert stage.hostile.seen == []


# -- configuration --------------------------------------------------------------------------


def test_token_realms_are_configured_per_registry_host(tmp_path: Path) -> None:
    path = empty_task_gate_yaml(tmp_path, "registry.example", "127.0.0.1:5000")
    text = path.read_text().replace(
        "rules:",
        "registries:\n"
        "  - host: registry.example\n"
        "    username: robot\n"
        "    password_secret: robot-password\n"
        "    token_realms: [auth.example, tokens.example:8443]\n"
        "rules:",
        1,
    )
    path.write_text(text)

    settings = load_config(path).registries["registry.example"]

    assert settings.token_realms == ("auth.example", "tokens.example:8443")
    path.write_text(text.replace("auth.example,", "https://auth.example/token,"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "registries[0].token_realms[0]" in caught.value.message


def test_endless_tag_pages_stop_at_the_listing_budget(stage: Stage) -> None:
    stage.hostile.misbehave("tags-endless-pages")
    with stage.client() as registry, pytest.raises(RegistryMisbehaved) as caught:
        registry.poll_tags(ImageRef(stage.hostile.host, "node"), budget=0.0)

    assert "took more than 0 s (1 pages)" in caught.value.message
    assert len(stage.hostile.requests_to("/tags/list")) == 1


def test_endless_tag_pages_stop_at_the_page_cap(
    stage: Stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert MAX_PAGES == 1000
    monkeypatch.setattr(tags_module, "MAX_PAGES", 5)  # the same check, 200 times sooner
    stage.hostile.misbehave("tags-endless-pages")
    with stage.client() as registry, pytest.raises(RegistryMisbehaved) as caught:
        registry.poll_tags(ImageRef(stage.hostile.host, "node"), budget=3600.0)

    assert "runs past 5 pages" in caught.value.message
    assert len(stage.hostile.requests_to("/tags/list")) == 5


def test_a_loopback_registry_may_redirect_to_loopback(stage: Stage) -> None:
    # local development: a 127.0.0.1 registry whose blobs live on another loopback port
    stage.hostile.misbehave("blob-redirect-loopback")

    stage.promote()

    assert tag_digests(stage.target.host, "node")["15-alpine"] == stage.new
    assert stage.hostile.requests_to("/blobs/sha256:")
    assert not stage.credentials_leaked()


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("169.254.169.254", "metadata"),
        ("169.254.169.254:80", "metadata"),
        ("[::ffff:169.254.169.254]", "metadata"),
        ("metadata.google.internal", "metadata"),
        ("METADATA.GOOGLE.INTERNAL.", "metadata"),
        ("169.254.1.2", "link-local"),
        ("[fe80::1]:5000", "link-local"),
        ("127.0.0.1:5000", "loopback"),
        ("[::1]", "loopback"),
        ("localhost", "loopback"),
        ("0.0.0.0", "loopback"),
        ("registry-1.docker.io", None),
        ("10.0.0.5:5000", None),
    ],
)
def test_address_classes_the_gate_does_not_visit_by_default(host: str, kind: str | None) -> None:
    assert address_class(host) == kind
