"""What a hostile upstream registry gets from the gate: nothing it should not.

Each test puts :class:`devstack.hostile.HostileRegistry` in front of a real docker-registry
(the upstream), switches on one misbehaviour and copies or lists through the gate's OCI
client. The outcome is checked where it matters: a clean gate error, the target registry's
real contents (the stable tag did not move) and what the hostile server and a foreign witness
were sent (no credential, no request where it does not belong).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from devstack.hostile import HostileRegistry
from devstack.images import tag_digests
from devstack.proxy import push_tiny_images
from devstack.registry import RegistryProcess
from gate.adapters.registry.oci import HostSettings, OciRegistry
from gate.domain.ref import ImageRef
from gate.errors import GateError, RegistryError, RegistryMisbehaved, RetryLater


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

    assert isinstance(error, RegistryError)
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

    assert "more than the gate waits (0.05 s a time, 0.12 s in all)" in caught.value.message
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
