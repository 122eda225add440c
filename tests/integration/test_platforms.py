"""Every platform of a multi-arch image validated: real registries, real podman (arm64 under QEMU
user emulation), and the ACR task-run validator against the ACR emulator.

The validation checks that the image runs as the architecture it was built for (``uname -m``
against the child's ``IMAGE_ARCH``) and that it holds ``/etc/healthy``; an index whose arm64
child lacks that file fails on arm64 only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from devstack.acr import AcrEmulator, EmulatedRegistry
from devstack.acr.tasks import runs_of, wait_for_runs
from devstack.configs import local_gate_yaml
from devstack.images import MANIFEST_ACCEPT, ImageBuilder, busybox_for, tag_digests
from devstack.registry import RegistryProcess
from gate.adapters.validation.acr_task_run import AcrTaskRunValidator
from gate.compose import build_gatekeeper, local_gatekeeper
from gate.config.loading import load_config
from gate.domain.platforms import Platform, PlatformError, select_platforms
from gate.domain.records import GateRecord, Outcome, PlatformResult, State, utcnow
from gate.domain.ref import ImageRef
from gate.errors import ConfigError
from gate.ports import ValidationRequest
from gate.usecases import audit
from gate.usecases.gating import gate_image
from gate.usecases.revalidation import revalidate
from tests.e2e.test_azure_gate import azure_config, quick

ROOT = Path(__file__).resolve().parents[2]
BINFMT_AARCH64 = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
HEALTHY = {"/etc/healthy": b"yes\n"}


def arm64_runs_here() -> str:
    """Why an arm64 child cannot run on this machine ('' when it can)."""
    if os.uname().machine == "aarch64":
        return ""
    if not busybox_for("arm64")[1]:
        return "no arm64 busybox under .tools/busybox/arm64 (scripts/setup installs it)"
    if not BINFMT_AARCH64.is_file() or "enabled" not in BINFMT_AARCH64.read_text():
        return "no binfmt_misc handler for aarch64 (scripts/setup registers qemu-user-static's)"
    return ""


needs_arm64 = pytest.mark.skipif(bool(arm64_runs_here()), reason=arm64_runs_here() or "-")

CHECK = """\
echo "platform check: uname -m says $(uname -m), image built for $IMAGE_ARCH"
case "$IMAGE_ARCH" in
  amd64) want=x86_64 ;;
  arm64) want=aarch64 ;;
  *) want=unknown ;;
esac
[ "$(uname -m)" = "$want" ] || { echo "runs as $(uname -m), expected $want"; exit 3; }
[ -f /etc/healthy ] || { echo "/etc/healthy is missing"; exit 4; }
echo "healthy on $(uname -m)"
"""


def validation_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "validation"
    folder.mkdir()
    (folder / "check.sh").write_text(CHECK)
    (folder / "acr-task.yaml").write_text(
        textwrap.dedent(
            """\
            version: v1.1.0
            steps:
              - id: check-platform
                cmd: "{{.Values.IMAGE}} sh /workspace/check.sh"
                timeout: 120
            """
        )
    )
    return folder


def config_for(tmp_path: Path, upstream: str, target: str, platforms: str, *rule: str) -> Path:
    folder = validation_folder(tmp_path)
    return local_gate_yaml(
        tmp_path,
        upstream,
        target,
        validation=f'{{folder: "{folder}", timeout: 300}}',
        rule=[f"platforms: {platforms}", *rule],
    )


def children_of(registry: RegistryProcess, digest: str) -> dict[str, str]:
    """architecture -> child digest of the index ``digest`` in ``node``."""
    return children_of_host(registry.host, digest)


def children_of_host(host: str, digest: str) -> dict[str, str]:
    """architecture -> child digest of the index ``digest`` in ``node`` (plain http)."""
    index = httpx.get(
        f"http://{host}/v2/node/manifests/{digest}", headers={"Accept": MANIFEST_ACCEPT}
    ).json()
    return {m["platform"]["architecture"]: m["digest"] for m in index["manifests"]}


def has_manifest(registry: RegistryProcess, digest: str) -> bool:
    return has_manifest_at(registry.host, digest)


def has_manifest_at(host: str, digest: str) -> bool:
    response = httpx.head(
        f"http://{host}/v2/node/manifests/{digest}", headers={"Accept": MANIFEST_ACCEPT}
    )
    return response.status_code == 200


def gate(config: Path, upstream: RegistryProcess) -> tuple[GateRecord, GateRecord]:
    """Gate node:15-alpine; the record returned and the record as the ledger stored it."""
    keeper = local_gatekeeper(load_config(config))
    record = gate_image(keeper, f"{upstream.host}/node:15-alpine").record
    return record, keeper.ledger.get(record.id)


@pytest.fixture
def local(
    registries: tuple[RegistryProcess, RegistryProcess], podman_env: dict[str, str]
) -> Iterator[tuple[RegistryProcess, RegistryProcess]]:
    yield registries


# -- the gate on real registries and podman ----------------------------------------------------


@needs_arm64
def test_index_whose_arm64_variant_fails_is_rejected_and_nothing_is_promoted(
    tmp_path: Path, local: tuple[RegistryProcess, RegistryProcess], image_builder: ImageBuilder
) -> None:
    upstream, target = local
    index = image_builder.index(f"{upstream.host}/node:15-alpine", files_by_arch={"amd64": HEALTHY})
    children = children_of(upstream, index)
    config = config_for(tmp_path, upstream.host, target.host, "[linux/amd64, linux/arm64]")

    record, stored = gate(config, upstream)

    assert record.state is State.REJECTED and record.digest == index, record.reason
    assert "linux/arm64" in record.reason and "/etc/healthy is missing" in record.reason
    assert "passed: linux/amd64" in record.reason
    amd64, arm64 = stored.platforms
    assert (amd64.platform, amd64.digest, amd64.verdict) == (
        "linux/amd64",
        children["amd64"],
        Outcome.PASSED.value,
    )
    assert (arm64.platform, arm64.digest, arm64.verdict) == (
        "linux/arm64",
        children["arm64"],
        Outcome.REJECTED.value,
    )
    assert amd64.run_id and arm64.run_id and amd64.run_id != arm64.run_id
    # the arm64 child really ran as arm64 (QEMU), and found its own file system lacking
    assert "uname -m says aarch64, image built for arm64" in stored.log
    assert "uname -m says x86_64, image built for amd64" in stored.log
    assert tag_digests(target.host, "node") == {}
    assert not any(has_manifest(target, d) for d in (index, *children.values()))


@needs_arm64
def test_index_whose_every_platform_passes_is_promoted_whole_with_both_results(
    tmp_path: Path, local: tuple[RegistryProcess, RegistryProcess], image_builder: ImageBuilder
) -> None:
    upstream, target = local
    index = image_builder.index(
        f"{upstream.host}/node:15-alpine", files=HEALTHY, variants={"arm64": "v8"}
    )
    children = children_of(upstream, index)
    config = config_for(
        tmp_path,
        upstream.host,
        target.host,
        "[linux/amd64, linux/arm64]",
        "revalidate: {every: 24h, on_failure: alert}",
    )

    record, stored = gate(config, upstream)

    assert record.state is State.PROMOTED, record.reason
    tags = tag_digests(target.host, "node")
    assert tags["15-alpine"] == index
    assert tags[record.target_tags[0]] == index
    assert all(has_manifest(target, child) for child in children.values())
    assert [(p.platform, p.digest, p.verdict) for p in stored.platforms] == [
        ("linux/amd64", children["amd64"], "passed"),
        ("linux/arm64", children["arm64"], "passed"),
    ]
    # the run-ID tag names the first platform's run; each platform had its own
    assert stored.run_id == stored.platforms[0].run_id
    assert len({p.run_id for p in stored.platforms}) == 2
    assert "healthy on aarch64" in stored.log and "healthy on x86_64" in stored.log
    assert "found as linux/arm64/v8" in stored.log
    # the audit line and gate show carry both results
    assert [(p["platform"], p["verdict"]) for p in audit.decision(stored)["platforms"]] == [
        ("linux/amd64", "passed"),
        ("linux/arm64", "passed"),
    ]
    shown = subprocess.run(
        [sys.executable, "-m", "gate", "show", record.id, "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    for result in stored.platforms:
        assert f"platform  {result.platform} {result.digest} passed run {result.run_id}" in shown
    # a re-validation checks every platform again, on the promoted copy in the target
    (again,) = revalidate(local_gatekeeper(load_config(config)), "node")
    (check,) = again.records
    assert check.state is State.REVALIDATED, check.reason
    assert [(p.platform, p.digest, p.verdict) for p in check.platforms] == [
        ("linux/amd64", children["amd64"], "passed"),
        ("linux/arm64", children["arm64"], "passed"),
    ]


def test_listed_platform_missing_from_the_index_is_rejected_before_any_run(
    tmp_path: Path, local: tuple[RegistryProcess, RegistryProcess], image_builder: ImageBuilder
) -> None:
    upstream, target = local
    index = image_builder.index(
        f"{upstream.host}/node:15-alpine", architectures=("amd64",), files=HEALTHY
    )
    config = config_for(tmp_path, upstream.host, target.host, "[linux/amd64, linux/arm64]")

    record, stored = gate(config, upstream)

    assert record.state is State.REJECTED and record.digest == index
    assert "linux/arm64 required by the rule are missing from the image index" in record.reason
    assert "offers linux/amd64" in record.reason
    assert "remove them from the rule's platforms" in record.reason
    assert stored.run_id is None and stored.platforms == ()
    assert tag_digests(target.host, "node") == {}


def test_single_platform_image_is_rejected_when_the_rule_lists_another_platform(
    tmp_path: Path, local: tuple[RegistryProcess, RegistryProcess], image_builder: ImageBuilder
) -> None:
    upstream, target = local
    image_builder.image(
        f"{upstream.host}/node:15-alpine", files=HEALTHY, env={"IMAGE_ARCH": "amd64"}
    )
    config = config_for(tmp_path, upstream.host, target.host, "[linux/amd64, linux/arm64]")

    record, _ = gate(config, upstream)

    assert record.state is State.REJECTED
    assert "single-platform image (linux/amd64)" in record.reason
    assert "list only linux/amd64" in record.reason
    assert tag_digests(target.host, "node") == {}


def test_single_platform_image_of_the_only_listed_platform_is_validated_and_promoted(
    tmp_path: Path, local: tuple[RegistryProcess, RegistryProcess], image_builder: ImageBuilder
) -> None:
    upstream, target = local
    digest = image_builder.image(
        f"{upstream.host}/node:15-alpine", files=HEALTHY, env={"IMAGE_ARCH": "amd64"}
    )
    config = config_for(tmp_path, upstream.host, target.host, "[linux/amd64]")

    record, stored = gate(config, upstream)

    assert record.state is State.PROMOTED, record.reason
    assert [(p.platform, p.digest, p.verdict) for p in stored.platforms] == [
        ("linux/amd64", digest, "passed")
    ]
    assert tag_digests(target.host, "node")["15-alpine"] == digest


# -- configuration -------------------------------------------------------------------------------


def write_rule(tmp_path: Path, platforms: str) -> Path:
    (tmp_path / "checks").mkdir(exist_ok=True)
    (tmp_path / "checks" / "acr-task.yaml").write_text("version: v1.1.0\nsteps: []\n")
    path = tmp_path / "gate.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            rules:
              - name: node
                source: 127.0.0.1:5001/node
                tags: ["15-alpine"]
                target: 127.0.0.1:6000/base/node
                validation: {{folder: checks}}
                platforms: {platforms}
            """
        )
    )
    return path


def test_platforms_are_read_into_the_rule(tmp_path: Path) -> None:
    config = load_config(write_rule(tmp_path, "[linux/amd64, linux/arm64/v8, linux/arm/v7]"))

    assert config.rules[0].platforms == (
        Platform("linux", "amd64"),
        Platform("linux", "arm64", "v8"),
        Platform("linux", "arm", "v7"),
    )


def test_editors_accept_the_platforms_example_and_flag_a_malformed_platform() -> None:
    schema = jsonschema.Draft202012Validator(
        json.loads((ROOT / "schema" / "gate.schema.json").read_text())
    )
    example = yaml.safe_load((ROOT / "examples" / "platforms" / "gate.yaml").read_text())

    assert [e.message for e in schema.iter_errors(example)] == []
    example["rules"][0]["platforms"] = ["linux"]
    assert list(schema.iter_errors(example)) != []


def test_a_rule_without_platforms_validates_once_as_before(tmp_path: Path) -> None:
    path = write_rule(tmp_path, "[]")

    assert load_config(path).rules[0].platforms == ()


@pytest.mark.parametrize(
    ("written", "says"),
    [
        ("[linux]", r"platforms\[0\].*does not match"),
        ("[Linux/AMD64]", r"platforms\[0\].*does not match"),
        ("[linux/x86_64]", r"platforms\[0\].*'x86_64' is not how images name.*'linux/amd64'"),
        ("[linux/amd64, linux/aarch64]", r"platforms\[1\].*write 'linux/arm64'"),
        ("[linux/sparc]", r"platforms\[0\].*unknown architecture 'sparc'"),
        ("[beos/amd64]", r"platforms\[0\].*unknown operating system 'beos'"),
        ("[linux/arm64, linux/arm64]", r"platforms\[1\].*lists linux/arm64 twice"),
        ("linux/amd64", r"platforms.*expected a list"),
    ],
)
def test_a_bad_platform_is_a_config_error_that_names_the_entry(
    tmp_path: Path, written: str, says: str
) -> None:
    with pytest.raises(ConfigError, match=r"rules\[0\]|rule 'node'") as caught:
        load_config(write_rule(tmp_path, written))

    assert caught.match(says)


# -- picking children (the manifests as registries serve them) ----------------------------------


def _index(*platforms: dict[str, str]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": f"sha256:{str(i) * 64}",
                    "size": 1,
                    "platform": p,
                }
                for i, p in enumerate(platforms, start=1)
            ],
        }
    ).encode()


def _no_blob(digest: str) -> bytes:
    raise AssertionError(f"an index needs no blob, read {digest}")


def test_arm64_without_variant_matches_a_v8_child_and_attestations_are_skipped() -> None:
    index = _index(
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
        {"os": "unknown", "architecture": "unknown"},
    )
    picked = select_platforms(
        index,
        "application/vnd.oci.image.index.v1+json",
        "sha256:" + "f" * 64,
        [Platform.parse("linux/arm64"), Platform.parse("linux/amd64")],
        _no_blob,
    )

    assert not isinstance(picked, str)
    assert [(str(p.platform), p.digest, p.found) for p in picked] == [
        ("linux/arm64", "sha256:" + "2" * 64, "linux/arm64/v8"),
        ("linux/amd64", "sha256:" + "1" * 64, "linux/amd64"),
    ]


def test_a_listed_variant_the_index_lacks_is_missing() -> None:
    index = _index({"os": "linux", "architecture": "arm", "variant": "v6"})

    said = select_platforms(
        index,
        "application/vnd.oci.image.index.v1+json",
        "sha256:" + "f" * 64,
        [Platform.parse("linux/arm/v7")],
        _no_blob,
    )

    assert isinstance(said, str) and "linux/arm/v7" in said and "offers linux/arm/v6" in said


def test_platform_strings_round_trip_and_bad_ones_say_how_to_write_them() -> None:
    assert str(Platform.parse("linux/arm/v7")) == "linux/arm/v7"
    with pytest.raises(PlatformError, match="write 'linux/arm64'"):
        Platform.parse("linux/aarch64")


def test_records_keep_their_platform_results_and_older_records_load() -> None:
    record = GateRecord(
        id="0" * 32,
        rule="node",
        source="127.0.0.1:5001/node:15-alpine",
        target="127.0.0.1:6000/node",
        platforms=(
            PlatformResult("linux/amd64", "sha256:" + "1" * 64, "passed", "ca1", "ok"),
            PlatformResult("linux/arm64", "sha256:" + "2" * 64, "rejected", "ca2", "exit 4"),
        ),
    )
    raw = json.loads(json.dumps(record.to_dict()))

    assert GateRecord.from_dict(raw).platforms == record.platforms
    del raw["platforms"]  # a record written before per-platform validation
    assert GateRecord.from_dict(raw).platforms == ()


# -- Azure: the task runs carry each platform ---------------------------------------------------


def task_run_validator(emulator: AcrEmulator, registry: EmulatedRegistry) -> AcrTaskRunValidator:
    return AcrTaskRunValidator(
        credential=emulator.credential(),
        subscription_id=emulator.subscription_id,
        resource_group=registry.resource_group,
        registry=registry.name,
        arm_endpoint=emulator.arm_endpoint,
        poll_initial=0.05,
        poll_max=0.5,
        client_kwargs={"retry_backoff_factor": 0.01},
    )


@needs_arm64
def test_acr_task_runs_carry_each_platform_and_the_emulated_agent_runs_it(
    tmp_path: Path,
    acr_emulator: AcrEmulator,
    podman_env: dict[str, str],
    image_builder: ImageBuilder,
) -> None:
    upstream = acr_emulator.add_registry("upstream")
    runner = acr_emulator.add_registry("runner")
    host = upstream.backing.host
    index = image_builder.index(f"{host}/node:15-alpine", files_by_arch={"amd64": HEALTHY})
    children = children_of_host(host, index)
    folder = validation_folder(tmp_path)

    results = {}
    with task_run_validator(acr_emulator, runner) as validator:
        for arch in ("amd64", "arm64"):
            request = ValidationRequest(
                image=ImageRef.parse(f"{host}/node@{children[arch]}"),
                folder=folder,
                task_file="acr-task.yaml",
                key=f"{'a' * 32}-linux-{arch}",
                platform=f"linux/{arch}",
            )
            results[arch] = validator.validate(request, lambda _run_id: None)
    wait_for_runs(acr_emulator, runner.name)

    platforms = [run.body.get("platform") for run in runs_of(acr_emulator, runner.name)]
    assert platforms == [
        {"os": "Linux", "architecture": "amd64"},
        {"os": "Linux", "architecture": "arm64"},
    ]
    assert results["amd64"].outcome is Outcome.PASSED, results["amd64"].log
    assert results["arm64"].outcome is Outcome.REJECTED
    assert "uname -m says aarch64, image built for arm64" in results["arm64"].log
    assert "/etc/healthy is missing" in results["arm64"].log


def test_a_platform_acr_tasks_cannot_run_is_refused_before_any_task_run(
    tmp_path: Path, acr_emulator: AcrEmulator
) -> None:
    runner = acr_emulator.add_registry("runner")
    request = ValidationRequest(
        image=ImageRef.parse(f"{runner.login_server}/node@sha256:{'1' * 64}"),
        folder=validation_folder(tmp_path),
        task_file="acr-task.yaml",
        platform="linux/ppc64le",
    )

    with (
        task_run_validator(acr_emulator, runner) as validator,
        pytest.raises(ConfigError, match="linux/ppc64le cannot run as an ACR task run"),
    ):
        validator.validate(request, lambda _run_id: None)

    assert runs_of(acr_emulator, runner.name) == []
    assert acr_emulator.arm_calls("createTaskRun") == []


@needs_arm64
def test_the_shipped_platforms_example_promotes_an_index_that_runs_on_both(
    tmp_path: Path, local: tuple[RegistryProcess, RegistryProcess], image_builder: ImageBuilder
) -> None:
    upstream, target = local
    index = image_builder.index(f"{upstream.host}/node:15-alpine")
    env = {
        "GATE_UPSTREAM": upstream.host,
        "GATE_TARGET": target.host,
        "GATE_DATA_DIR": str(tmp_path / "data"),
    }
    config = load_config(ROOT / "examples" / "platforms" / "gate.yaml", env=env)
    keeper = local_gatekeeper(config)

    record = gate_image(keeper, f"{upstream.host}/node:15-alpine").record

    assert record.state is State.PROMOTED, record.reason
    assert tag_digests(target.host, "node")["15-alpine"] == index
    log = keeper.ledger.get(record.id).log
    assert "scheduled for amd64, runs as amd64 (x86_64)" in log
    assert "scheduled for arm64, runs as arm64 (aarch64)" in log


@needs_arm64
def test_gate_on_azure_runs_a_task_run_per_platform_and_imports_the_index_whole(
    tmp_path: Path,
    acr_emulator: AcrEmulator,
    podman_env: dict[str, str],
    image_builder: ImageBuilder,
) -> None:
    # the upstream ACR is private: reading its index takes the gate's identity (data plane), and
    # each task run pulls its child as the runner's user-assigned identity
    up = acr_emulator.add_registry("publicregistry", "public-rg", private=True)
    base = acr_emulator.add_registry("baseartifacts", "base-rg")
    runner = acr_emulator.add_identity("gate-runner", pull_from=(up,))
    folder = validation_folder(tmp_path)
    rule = ["platforms: [linux/amd64, linux/arm64]"]
    path = azure_config(tmp_path, acr_emulator, up, base, None, runner, folder=folder, rule=rule)
    built = build_gatekeeper(load_config(path), credential=acr_emulator.credential())
    keeper = quick(built, acr_emulator, base)
    source = f"{up.login_server}/node:15-alpine"

    broken = image_builder.index(
        f"{up.backing.host}/node:15-alpine", files_by_arch={"amd64": HEALTHY}
    )
    rejected = gate_image(keeper, source).record
    healthy = image_builder.index(f"{up.backing.host}/node:15-alpine", files=HEALTHY)
    promoted = gate_image(keeper, source).record
    wait_for_runs(acr_emulator, base.name)

    assert (rejected.digest, rejected.state) == (broken, State.REJECTED), rejected.reason
    assert rejected.reason.startswith("rejected on linux/arm64")
    assert (promoted.digest, promoted.state) == (healthy, State.PROMOTED), promoted.reason
    assert [p.verdict for p in keeper.ledger.get(promoted.id).platforms] == ["passed", "passed"]
    runs = runs_of(acr_emulator, base.name)
    assert [run.body["platform"]["architecture"] for run in runs] == [
        "amd64",
        "arm64",
        "amd64",
        "arm64",
    ]
    children = children_of_host(up.backing.host, healthy)
    images = [
        next(v["value"] for v in run.body["values"] if v["name"] == "IMAGE") for run in runs[2:]
    ]
    assert images == [f"{up.login_server}/node@{children[a]}" for a in ("amd64", "arm64")]
    tags = tag_digests(base.backing.host, "node")
    assert tags["15-alpine"] == healthy and broken not in tags.values()
    assert all(has_manifest_at(base.backing.host, d) for d in children.values())


class Crash(BaseException):
    """The worker process dies (nothing after this point runs)."""


class CrashWhenArm64Starts:
    """The Ledger port, but the process dies when it would record the arm64 run's start."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.dead = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def save(self, record: GateRecord) -> None:
        # once dead, nothing more is written (not even the failure the gate tries to record)
        self.dead = self.dead or any(
            p.platform == "linux/arm64" and p.run_id for p in record.platforms
        )
        if self.dead:
            raise Crash
        self.inner.save(record)


class CountingValidator:
    """The Validator port around the real one: which platforms were run."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.platforms: list[str] = []

    def validate(self, request: ValidationRequest, on_started: Any, resume: Any = None) -> Any:
        self.platforms.append(request.platform)
        return self.inner.validate(request, on_started, resume)


@needs_arm64
def test_a_resumed_record_runs_again_only_the_platforms_that_had_not_passed(
    tmp_path: Path, local: tuple[RegistryProcess, RegistryProcess], image_builder: ImageBuilder
) -> None:
    upstream, target = local
    index = image_builder.index(f"{upstream.host}/node:15-alpine", files=HEALTHY)
    config = config_for(tmp_path, upstream.host, target.host, "[linux/amd64, linux/arm64]")
    keeper = local_gatekeeper(load_config(config))
    source = f"{upstream.host}/node:15-alpine"
    with pytest.raises(Crash):
        gate_image(dataclasses.replace(keeper, ledger=CrashWhenArm64Starts(keeper.ledger)), source)
    (stuck,) = keeper.ledger.history()
    assert stuck.state is State.VALIDATING
    assert [(p.platform, p.verdict) for p in stuck.platforms] == [
        ("linux/amd64", "passed"),
        ("linux/arm64", ""),
    ]
    # the dead worker's lease lapses; the next request takes the record over
    assert keeper.ledger.renew(stuck.id, stuck.lease_holder, utcnow())
    counting = CountingValidator(keeper.validator)

    record = gate_image(dataclasses.replace(keeper, validator=counting), source).record

    assert record.id == stuck.id and record.state is State.PROMOTED, record.reason
    assert counting.platforms == ["linux/arm64"]
    stored = keeper.ledger.get(record.id)
    assert stored.platforms[0] == stuck.platforms[0]  # amd64's pass kept, not run again
    assert stored.platforms[1].verdict == "passed"
    assert "passed in run" in stored.log and "an earlier attempt" in stored.log
    assert tag_digests(target.host, "node")["15-alpine"] == index
