"""What the gate's commands make of a hostile upstream: a record, an exit code, no traceback.

:mod:`tests.integration.test_hostile_upstream` proves the registry client against
:class:`devstack.hostile.HostileRegistry`; these tests run ``gate run`` and ``gate watch
--once`` (or :func:`~gate.usecases.gating.gate_image`) through it and read the ledger.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.configs import GateYaml, Registry, Rule, write_empty_task
from devstack.hostile import HostileRegistry
from devstack.proxy import push_tiny_images
from devstack.registry import RegistryProcess
from gate.adapters.ledger.sqlite import SqliteLedger
from gate.adapters.registry.oci import HostSettings, OciRegistry
from gate.config.loading import load_config
from gate.domain.records import GateRecord, State
from gate.domain.ref import ImageRef
from gate.errors import RetryLater
from gate.usecases.gating import gate_image
from gate.usecases.keeper import Gatekeeper
from tests.fakes import FakeSecrets, FakeValidator

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Stage:
    """An honest upstream with ``node:{14,15,16}-alpine``, a hostile front to it, a target,
    and a folder for gate.yaml (its validation an empty task, its ledger in ``data``)."""

    upstream: RegistryProcess
    hostile: HostileRegistry
    target: RegistryProcess
    folder: Path
    digests: dict[str, str]

    def config(self, *rules: Rule, top: tuple[str, ...] = ()) -> Path:
        hosts = (self.hostile.host, self.upstream.host, self.target.host)
        return GateYaml(
            data_dir="data",
            registries=tuple(Registry(h) for h in hosts),
            rules=rules or (Rule(f"{self.hostile.host}/node", f"{self.target.host}/node"),),
            top=top,
        ).write(self.folder)

    def gate(self, *args: str, config: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gate", *args, "--config", str(config)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
            timeout=300,
        )

    def history(self, config: Path) -> list[GateRecord]:
        done = self.gate("history", "--json", config=config)
        assert done.returncode == 0, done.stderr
        return [GateRecord.from_dict(json.loads(line)) for line in done.stdout.splitlines()]


@pytest.fixture
def stage(tmp_path: Path, registries: tuple[RegistryProcess, RegistryProcess]) -> Iterator[Stage]:
    upstream, target = registries
    seeded = push_tiny_images(upstream.host, ["node"], ["14-alpine", "15-alpine", "16-alpine"])
    write_empty_task(tmp_path)
    with HostileRegistry(upstream.host) as hostile:
        yield Stage(upstream, hostile, target, tmp_path, seeded)


def error_line(stderr: str) -> str:
    """The message of the CLI's ``error:`` line (asserting there is one and no traceback)."""
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("error: ")]
    return line.removeprefix("error: ")


@pytest.mark.parametrize(
    ("behaviour", "said"),
    [("realm-link-local", "a metadata address"), ("realm-file", "file:// URL")],
)
def test_gate_run_records_a_failure_to_resolve_and_exits_3(
    stage: Stage, behaviour: str, said: str
) -> None:
    config = stage.config()
    stage.hostile.misbehave(behaviour)

    done = stage.gate("run", f"{stage.hostile.host}/node:15-alpine", config=config)

    assert done.returncode == 3
    message = error_line(done.stderr)
    assert said in message
    (failed,) = stage.history(config)
    assert failed.state is State.FAILED and failed.digest is None
    assert failed.reason == message and failed.trigger == "manual"
    assert failed.source == f"{stage.hostile.host}/node:15-alpine"
    shown = stage.gate("show", failed.id, config=config)
    assert shown.returncode == 0 and failed.id in shown.stdout
    # nothing was copied: the target never saw the image
    assert stage.hostile.requests_to("/blobs/") == []

    # the record holds no digest: it does not stand in the way of the next run
    stage.hostile.misbehave("honest")
    again = stage.gate("run", f"{stage.hostile.host}/node:15-alpine", config=config)
    assert "Traceback" not in again.stderr
    latest, first = stage.history(config)
    assert first.id == failed.id
    assert latest.digest == stage.digests["node:15-alpine"]


def test_a_huge_retry_after_while_resolving_is_recorded_as_retry_later(stage: Stage) -> None:
    config = load_config(stage.config())
    hosts = {
        stage.hostile.host: HostSettings(insecure=True),
        stage.target.host: HostSettings(insecure=True),
    }
    # the same caps as the defaults' (20 s a time, 40 s in all), only shorter
    with OciRegistry(
        hosts, max_attempts=5, backoff_initial=0.01, retry_after_max=0.05, wait_budget=0.12
    ) as registry:
        validator = FakeValidator()
        keeper = Gatekeeper(
            config=config,
            registry=registry,
            validator=validator,
            ledger=SqliteLedger(config.data_dir / "gate.db"),
            secrets=FakeSecrets(),
        )
        stage.hostile.misbehave("retry-after-seconds")
        with pytest.raises(RetryLater) as caught:
            gate_image(keeper, f"{stage.hostile.host}/node:15-alpine")

        (failed,) = keeper.ledger.history()
    assert caught.value.exit_code == 3
    assert failed.state is State.FAILED and failed.digest is None
    # the error names the record, so the worker does not record the same failure again
    assert caught.value.recorded == failed.id
    assert failed.reason == caught.value.message and "pause of 999999 s" in failed.reason
    assert not validator.requests


def test_an_endless_tag_listing_ends_within_the_poll_budget_and_the_pass_goes_on(
    stage: Stage,
) -> None:
    config = stage.config(
        Rule(f"{stage.hostile.host}/node", f"{stage.target.host}/node", tags=("*-alpine",)),
        Rule(f"{stage.upstream.host}/node", f"{stage.target.host}/other", name="other"),
        top=("poll: {budget: 2}",),
    )
    stage.hostile.misbehave("tags-endless-pages")

    done = stage.gate("watch", "--once", config=config)

    assert done.returncode == 3 and "Traceback" not in done.stderr
    (problem,) = [line for line in done.stderr.splitlines() if "error" in line]
    assert f"{stage.hostile.host}/node" in problem and "took more than" in problem
    # one page a round trip, stopped at the budget: far fewer than the page cap of 1000
    assert 1 <= len(stage.hostile.requests_to("/tags/list")) < 1000
    # the other registry was polled and its tag gated in the same pass
    (other,) = stage.history(config)
    assert other.rule == "other" and other.digest == stage.digests["node:15-alpine"]


def test_one_invalid_tag_name_skips_that_tag_not_the_pass(stage: Stage) -> None:
    config = stage.config(
        Rule(f"{stage.hostile.host}/node", f"{stage.target.host}/node", tags=("*",)),
    )
    stage.hostile.misbehave("tags-invalid-name")

    done = stage.gate("watch", "--once", config=config)

    assert "Traceback" not in done.stderr
    # the listing names 15-alpine, three invalid names and 16-alpine: both valid tags are gated
    gated = {(ImageRef.parse(r.source).tag, r.digest) for r in stage.history(config)}
    assert gated == {
        ("15-alpine", stage.digests["node:15-alpine"]),
        ("16-alpine", stage.digests["node:16-alpine"]),
    }
    assert stage.hostile.requests_to("etc/passwd") == []
