"""Staging while validating and pulling once, on real registries and real podman.

The candidate's blobs reach the target while it is validated, and nothing else does before
the verdict; a pass writes manifests and tags (the run-ID tag first), a rejection writes none
and takes its staged blobs back where the registry deletes blobs. The downstream run builds on
the image the validation pulled: podman pulls once, and a stale local name is never used.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from devstack.configs import Validation, local_gate_yaml
from devstack.images import MANIFEST_ACCEPT, ImageBuilder, tag_digests
from devstack.registry import RegistryProcess
from gate.compose import local_gatekeeper
from gate.config.loading import load_config
from gate.domain.records import State, ValidationResult
from gate.ports import OnStarted, Resume, ValidationRequest, Validator
from gate.usecases.gating import gate_image
from gate.usecases.keeper import Gatekeeper

ROOT = Path(__file__).resolve().parents[2]
SEED_VALIDATION = ROOT / "examples" / "seed" / "validation"
SEED_HELLO_WORLD = ROOT / "examples" / "seed" / "hello-world"

pytestmark = pytest.mark.usefixtures("podman_env")


def keeper_for(
    tmp_path: Path, upstream: str, target: str, *, downstream: bool = False
) -> Gatekeeper:
    lines = [f'downstream: [{{file: "{SEED_HELLO_WORLD}"}}]'] if downstream else []
    config = local_gate_yaml(
        tmp_path, upstream, target, validation=Validation(SEED_VALIDATION, timeout=120), rule=lines
    )
    return local_gatekeeper(load_config(config))


def layers(registry: RegistryProcess, digest: str, repo: str = "node") -> list[str]:
    """The config and layer digests of manifest ``digest``."""
    manifest = httpx.get(
        f"{registry.url}/v2/{repo}/manifests/{digest}", headers={"Accept": MANIFEST_ACCEPT}
    ).json()
    return [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]


def blob_present(registry: RegistryProcess, digest: str, repo: str = "node") -> bool:
    return httpx.head(f"{registry.url}/v2/{repo}/blobs/{digest}").status_code == 200


def has_manifest(registry: RegistryProcess, digest: str, repo: str = "node") -> bool:
    response = httpx.head(
        f"{registry.url}/v2/{repo}/manifests/{digest}", headers={"Accept": MANIFEST_ACCEPT}
    )
    return response.status_code == 200


@dataclass
class Seen:
    """What the target held while the validation ran, looked at before its verdict."""

    blobs: list[bool] = field(default_factory=list)
    manifest: bool = True
    tags: dict[str, str] = field(default_factory=lambda: {"unset": "unset"})


class Watching:
    """A :class:`Validator` that runs the real one, then, before handing its verdict back,
    waits (bounded) for the candidate's blobs to be in the target and notes what is there."""

    def __init__(
        self, real: Validator, upstream: RegistryProcess, target: RegistryProcess, seen: Seen
    ) -> None:
        self.real, self.upstream, self.target, self.seen = real, upstream, target, seen

    def validate(
        self, request: ValidationRequest, on_started: OnStarted, resume: Resume | None = None
    ) -> ValidationResult:
        result = self.real.validate(request, on_started, resume)
        assert request.image.digest is not None
        wanted = layers(self.upstream, request.image.digest)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            present = [blob_present(self.target, d) for d in wanted]
            if all(present):
                break
            time.sleep(0.1)
        self.seen.blobs = present
        self.seen.manifest = has_manifest(self.target, request.image.digest)
        self.seen.tags = tag_digests(self.target.host, "node")
        return result


def test_the_candidates_blobs_are_staged_in_the_target_before_the_verdict_and_nothing_else(
    tmp_path: Path,
    registries: tuple[RegistryProcess, RegistryProcess],
    image_builder: ImageBuilder,
) -> None:
    upstream, target = registries
    green = image_builder.image(
        f"{upstream.host}/node:15-alpine", env={"BACKGROUND_COLOR": "Green"}
    )
    keeper = keeper_for(tmp_path, upstream.host, target.host)
    seen = Seen()
    keeper = replace(keeper, validator=Watching(keeper.validator, upstream, target, seen))

    outcome = gate_image(keeper, f"{upstream.host}/node:15-alpine")

    assert outcome.record.state is State.PROMOTED, outcome.record.reason
    assert seen.blobs and all(seen.blobs)
    assert not seen.manifest and seen.tags == {}
    unique, stable = outcome.record.target_tags
    assert tag_digests(target.host, "node") == {unique: green, stable: green}


class Notifications:
    """A registry notifications endpoint on loopback: the manifest events, in order."""

    def __init__(self) -> None:
        self.events: list[dict[str, object]] = []
        events = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                events.extend(json.loads(body).get("events", []))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/events"

    def tags_pushed(self) -> list[str]:
        pushed = []
        for event in self.events:
            found = event.get("target")
            if event.get("action") == "push" and isinstance(found, dict) and found.get("tag"):
                pushed.append(str(found["tag"]))
        return pushed

    def __enter__(self) -> Notifications:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_pass_writes_the_manifest_and_tags_the_run_id_tag_before_the_stable_tag(
    tmp_path: Path, registry: RegistryProcess, image_builder: ImageBuilder
) -> None:
    upstream = registry
    with (
        Notifications() as notes,
        RegistryProcess(tmp_path / "target", notify_url=notes.url) as target,
    ):
        green = image_builder.image(
            f"{upstream.host}/node:15-alpine", env={"BACKGROUND_COLOR": "Green"}
        )
        outcome = gate_image(keeper_for(tmp_path, upstream.host, target.host), green_ref(upstream))
        unique, stable = outcome.record.target_tags
        deadline = time.monotonic() + 30
        while len(notes.tags_pushed()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)

        assert outcome.record.state is State.PROMOTED, outcome.record.reason
        assert has_manifest(target, green)
        assert notes.tags_pushed() == [unique, stable]


def green_ref(upstream: RegistryProcess) -> str:
    return f"{upstream.host}/node:15-alpine"


@pytest.mark.parametrize("deletes", [True, False], ids=["registry-deletes", "registry-refuses"])
def test_a_rejection_leaves_no_tag_and_no_manifest_and_its_staged_blobs_go_where_allowed(
    tmp_path: Path, registry: RegistryProcess, image_builder: ImageBuilder, deletes: bool
) -> None:
    upstream = registry
    red = image_builder.image(f"{upstream.host}/node:15-alpine", env={"BACKGROUND_COLOR": "Red"})
    with RegistryProcess(tmp_path / "target", delete_enabled=deletes) as target:
        keeper = keeper_for(tmp_path, upstream.host, target.host)
        seen = Seen()
        watched = replace(keeper, validator=Watching(keeper.validator, upstream, target, seen))
        notes: list[tuple[str, str]] = []
        watched = replace(watched, notify=lambda event, _r, message: notes.append((event, message)))

        outcome = gate_image(watched, f"{upstream.host}/node:15-alpine")

        assert outcome.record.state is State.REJECTED
        assert all(seen.blobs)  # they were staged while it was validated
        assert tag_digests(target.host, "node") == {}
        assert not has_manifest(target, red)
        left = [blob_present(target, d) for d in layers(upstream, red)]
        [said] = [message for event, message in notes if event == "unstaged"]
        if deletes:
            assert not any(left)
            assert f"{len(left)} staged blob(s) deleted" in said
        else:
            assert all(left)
            assert "left for the registry's garbage collection" in said
            assert "does not delete blobs (HTTP 405)" in said


def pulls_since(since: str) -> list[str]:
    """The images podman pulled since ``since``, from its own event log."""
    listed = subprocess.run(
        [
            "podman",
            "events",
            "--stream=false",
            "--since",
            since,
            "--filter",
            "event=pull",
            "--format",
            "{{.Name}}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()


def store_names() -> set[str]:
    listed = subprocess.run(
        ["podman", "images", "--format", "{{.Repository}}:{{.Tag}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(listed.stdout.split())


def test_the_downstream_build_uses_the_image_the_validation_pulled_one_pull_in_all(
    tmp_path: Path,
    registries: tuple[RegistryProcess, RegistryProcess],
    image_builder: ImageBuilder,
) -> None:
    upstream, target = registries
    image_builder.image(f"{upstream.host}/node:15-alpine", env={"BACKGROUND_COLOR": "Green"})
    keeper = keeper_for(tmp_path, upstream.host, target.host, downstream=True)
    since = datetime.now(UTC).isoformat()

    outcome = gate_image(keeper, f"{upstream.host}/node:15-alpine")

    assert outcome.record.state is State.PROMOTED, outcome.record.reason
    [run] = outcome.record.downstream
    assert run.outcome == "succeeded", run.error
    assert run.output == "hello-world serves background colour: Green"
    # podman logs a build's commit as a "pull" of the built name too: only node counts here
    pulled = [p for p in pulls_since(since) if p.partition("/")[2].startswith(("node@", "node:"))]
    assert [p.partition("@")[0] for p in pulled] == [f"{upstream.host}/node"]
    # the run removes what it kept: neither the candidate nor the target name stays
    assert not {n for n in store_names() if n.startswith((upstream.host, target.host))}


def test_a_stale_local_name_of_the_target_is_never_built_on(
    tmp_path: Path,
    registries: tuple[RegistryProcess, RegistryProcess],
    image_builder: ImageBuilder,
) -> None:
    upstream, target = registries
    orange = image_builder.image(f"{upstream.host}/old:1", env={"BACKGROUND_COLOR": "Orange"})
    stale = f"{target.host}/node:15-alpine"
    subprocess.run(
        ["podman", "pull", "-q", "--tls-verify=false", f"{upstream.host}/old@{orange}"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["podman", "tag", f"{upstream.host}/old@{orange}", stale], check=True)
    green = image_builder.image(
        f"{upstream.host}/node:15-alpine", env={"BACKGROUND_COLOR": "Green"}
    )
    keeper = keeper_for(tmp_path, upstream.host, target.host, downstream=True)
    try:
        outcome = gate_image(keeper, f"{upstream.host}/node:15-alpine")

        assert outcome.record.state is State.PROMOTED, outcome.record.reason
        [run] = outcome.record.downstream
        assert run.output == "hello-world serves background colour: Green", run.error
        # the name was the user's: it stays, on the promoted digest now (as a pull leaves it)
        held = subprocess.run(
            ["podman", "image", "inspect", "--format", "{{.Digest}}", stale],
            capture_output=True,
            text=True,
            check=True,
        )
        assert held.stdout.strip() == green
    finally:
        for name in (stale, f"{upstream.host}/old@{orange}"):
            subprocess.run(["podman", "rmi", "-f", name], capture_output=True, check=False)
