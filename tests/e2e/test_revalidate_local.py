"""Scheduled re-validation end to end: real registries, podman validations, the ``gate`` CLI.

The validation folder's test rejects an image whose ``BACKGROUND_COLOR`` equals the value
``FORBIDDEN``, which the configuration takes from the environment: flipping it between runs
makes a digest that passed at promotion fail its current validation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from copy import replace  # the gatekeeper is a dataclass, its settings are Structs
from pathlib import Path
from typing import Any

import pytest
from azure.functions.timer import TimerRequest

import function_app
from devstack.configs import Validation, local_gate_yaml
from devstack.images import ImageBuilder, tag_digests
from devstack.registry import RegistryProcess
from gate.adapters.ledger.sqlite import SqliteLedger
from gate.config.model import Revalidation
from gate.domain.records import Outcome, State
from gate.ports import HistoryQuery, ValidationRequest
from gate.usecases.gating import gate_image
from gate.usecases.revalidation import revalidate
from tests.e2e.test_attest import Setup, push_upstream
from tests.fakes import FakeValidator
from tests.unit.test_function_events import Collect

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("podman_env")

DOCKERFILE = """\
ARG REGISTRY_FROM_URL=
ARG SOURCE_DIGEST
FROM ${REGISTRY_FROM_URL}node@${SOURCE_DIGEST}
ARG FORBIDDEN=none
ENV FORBIDDEN=${FORBIDDEN}
COPY ./test.sh /test.sh
CMD ["/bin/sh", "/test.sh"]
"""

TEST_SH = """\
#!/bin/sh
if [ "$BACKGROUND_COLOR" = "$FORBIDDEN" ]; then
  echo "forbidden color: $BACKGROUND_COLOR"
  exit 1
fi
echo "color $BACKGROUND_COLOR is allowed"
"""

TASK = """\
version: v1.1.0
steps:
  - id: build-test-image
    build: >
      --build-arg REGISTRY_FROM_URL={{.Values.REGISTRY_FROM_URL}}
      --build-arg SOURCE_DIGEST={{.Values.SOURCE_DIGEST}}
      --build-arg FORBIDDEN={{.Values.FORBIDDEN}}
      -f ./Dockerfile -t {{.Run.Registry}}/node-revalidate:test .
  - id: validate-base-image
    when: ['build-test-image']
    cmd: "{{.Run.Registry}}/node-revalidate:test"
"""


def write_config(tmp_path: Path, upstream: str, target: str, on_failure: str) -> Path:
    folder = tmp_path / "validation"
    folder.mkdir()
    (folder / "Dockerfile").write_text(DOCKERFILE)
    (folder / "test.sh").write_text(TEST_SH)
    (folder / "acr-task.yaml").write_text(TASK)
    return local_gate_yaml(
        tmp_path,
        upstream,
        target,
        validation=Validation(timeout=120, values={"FORBIDDEN": "${FORBIDDEN_COLOR:-none}"}),
        rule=[f"revalidate: {{every: 24h, on_failure: {on_failure}, candidates: 3}}"],
    )


def gate_cli(*args: str, config: Path, forbidden: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FORBIDDEN_COLOR"}
    if forbidden:
        env["FORBIDDEN_COLOR"] = forbidden
    return subprocess.run(
        [sys.executable, "-m", "gate", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
        timeout=600,
    )


def promote(
    images: ImageBuilder, upstream: RegistryProcess, config: Path, color: str
) -> dict[str, Any]:
    images.image(f"{upstream.host}/node:15-alpine", env={"BACKGROUND_COLOR": color})
    done = gate_cli("run", f"{upstream.host}/node:15-alpine", "--json", config=config)
    assert done.returncode == 0, done.stderr
    outcome: dict[str, Any] = json.loads(done.stdout)
    assert outcome["verdict"] == "promoted"
    return outcome


def test_a_failing_stable_digest_is_demoted_to_the_newest_earlier_one_that_passes_now(
    tmp_path: Path,
    registries: tuple[RegistryProcess, RegistryProcess],
    image_builder: ImageBuilder,
) -> None:
    upstream, target = registries
    config = write_config(tmp_path, upstream.host, target.host, "demote")
    green, orange, blue = (
        promote(image_builder, upstream, config, c) for c in ("Green", "Orange", "Blue")
    )
    before = tag_digests(target.host, "node")
    assert before["15-alpine"] == blue["digest"]

    # today's validation forbids Blue: the stable digest fails, Orange (the one before) passes
    done = gate_cli("revalidate", "node", "--json", config=config, forbidden="Blue")

    assert done.returncode == 0, done.stderr
    [result] = [json.loads(line) for line in done.stdout.splitlines()]
    states = [(r["action"], r["state"], r["digest"]) for r in result["records"]]
    assert states == [
        ("revalidate", "failing", blue["digest"]),
        ("revalidate", "revalidated", orange["digest"]),
        ("demote", "demoted", orange["digest"]),
    ]
    failing, _passing, demoted = result["records"]
    assert demoted["event"] == "GatedImport.ImageDemoted"
    assert failing["event"] == "GatedImport.RevalidationFailed"
    assert demoted["of_record"] == failing["record_id"]
    assert failing["of_record"] == blue["record_id"]
    after = tag_digests(target.host, "node")
    assert after["15-alpine"] == orange["digest"]
    # every run-ID tag stays where the promotions put it
    assert {t: d for t, d in after.items() if t != "15-alpine"} == {
        t: d for t, d in before.items() if t != "15-alpine"
    }
    ledger = SqliteLedger(tmp_path / "data" / "gate.db")
    stored = ledger.get(demoted["record_id"])
    assert stored.state is State.DEMOTED and stored.actor == "revalidation"
    assert stored.run_id == orange["run_id"] and green["digest"] not in stored.reason
    assert "forbidden color: Blue" in ledger.get(failing["record_id"]).log


def test_alert_moves_nothing_when_the_stable_digest_fails_now(
    tmp_path: Path,
    registries: tuple[RegistryProcess, RegistryProcess],
    image_builder: ImageBuilder,
) -> None:
    upstream, target = registries
    config = write_config(tmp_path, upstream.host, target.host, "alert")
    promote(image_builder, upstream, config, "Green")
    orange = promote(image_builder, upstream, config, "Orange")
    before = tag_digests(target.host, "node")

    done = gate_cli("revalidate", "--json", config=config, forbidden="Orange")

    assert done.returncode == 1, done.stderr
    [result] = [json.loads(line) for line in done.stdout.splitlines()]
    [failing] = result["records"]
    assert (failing["state"], failing["digest"]) == ("failing", orange["digest"])
    assert failing["event"] == "GatedImport.RevalidationFailed"
    assert tag_digests(target.host, "node") == before


def revalidation_records(tmp_path: Path) -> list[tuple[str, str]]:
    ledger = SqliteLedger(tmp_path / "data" / "gate.db")
    return [
        (r.action, r.state.value)
        for r in reversed(ledger.history(HistoryQuery(limit=100)))
        if r.action in ("revalidate", "demote")
    ]


def test_alert_is_scheduled_from_the_ledger_by_gate_watch(
    tmp_path: Path,
    registries: tuple[RegistryProcess, RegistryProcess],
    image_builder: ImageBuilder,
) -> None:
    upstream, target = registries
    config = write_config(tmp_path, upstream.host, target.host, "alert")
    green = promote(image_builder, upstream, config, "Green")

    first = gate_cli("watch", "--once", config=config, forbidden="Green")
    second = gate_cli("watch", "--once", config=config, forbidden="Green")

    # the first pass finds the rule due (never re-validated) and reports the failure
    assert first.returncode == 1, first.stderr
    assert "FAILING" in first.stdout and green["digest"] in first.stdout
    # the second finds the failing record younger than 24h: nothing is validated again
    assert second.returncode == 0, second.stderr
    assert "FAILING" not in second.stdout
    assert revalidation_records(tmp_path) == [("revalidate", "failing")]
    assert tag_digests(target.host, "node")["15-alpine"] == green["digest"]


def test_the_functions_timer_queues_a_due_rule_and_the_worker_demotes_once(
    tmp_path: Path,
    registries: tuple[RegistryProcess, RegistryProcess],
    image_builder: ImageBuilder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import azure.functions as func

    upstream, target = registries
    config = write_config(tmp_path, upstream.host, target.host, "demote")
    green = promote(image_builder, upstream, config, "Green")
    promote(image_builder, upstream, config, "Orange")
    monkeypatch.setenv("GATE_CONFIG", str(config))
    monkeypatch.setenv("FORBIDDEN_COLOR", "Orange")
    monkeypatch.delenv("GATE_OUTCOME_TOPIC_ENDPOINT", raising=False)
    for cached in (function_app.settings, function_app.config, function_app.keeper):
        cached.cache_clear()
    try:
        first, second, third = Collect(), Collect(), Collect()
        function_app.watch(TimerRequest(past_due=False), first)
        # a second tick before the worker ran: the rule is still due and queued again
        function_app.watch(TimerRequest(past_due=False), second)
        untouched = revalidation_records(tmp_path)
        for n, body in enumerate([*first.value, *second.value]):
            function_app.gate_worker(func.QueueMessage(id=f"m-{n}", body=body.encode()))
        function_app.watch(TimerRequest(past_due=False), third)
    finally:
        for cached in (function_app.settings, function_app.config, function_app.keeper):
            cached.cache_clear()

    # both upstream digests were decided: the ticks queue the re-validation only, and run none
    assert first.value == second.value == ['{"revalidate": "node", "trigger": "revalidate"}']
    assert untouched == []
    assert tag_digests(target.host, "node")["15-alpine"] == green["digest"]
    # two requests, one pass (the pass's record first, then its checks and the demotion)
    assert revalidation_records(tmp_path) == [
        ("revalidate", "revalidated"),
        ("revalidate", "failing"),
        ("revalidate", "revalidated"),
        ("demote", "demoted"),
    ]
    assert third.value is None  # not due any more


def test_a_demotion_is_attested_so_the_demoted_digest_no_longer_verifies(
    tmp_path: Path,
    registries: tuple[RegistryProcess, RegistryProcess],
    image_builder: ImageBuilder,
) -> None:
    setup = Setup(tmp_path, registries)
    failing: set[str] = set()

    def decide(request: ValidationRequest) -> Outcome:
        return Outcome.REJECTED if request.image.digest in failing else Outcome.PASSED

    rule = replace(setup.keeper.config.rules[0], revalidate=Revalidation(every="1d"))
    keeper = replace(
        setup.keeper,
        config=replace(setup.keeper.config, rules=(rule,)),
        validator=FakeValidator(decide=decide),
    )
    upstream = f"{setup.upstream.host}/node:15-alpine"
    first = push_upstream(image_builder, setup, "Green")
    assert gate_image(keeper, upstream).record.state is State.PROMOTED
    second = push_upstream(image_builder, setup, "Orange")
    assert gate_image(keeper, upstream).record.state is State.PROMOTED
    failing.add(second)

    [result] = revalidate(keeper, "node")

    demoted = result.decision
    assert demoted is not None and demoted.state is State.DEMOTED and demoted.digest == first
    assert demoted.attestation.startswith("sha256:")
    assert f"demotion attestation {demoted.attestation}" in demoted.reason
    refused = setup.verify(f"{setup.target.host}/node@{second}")
    assert refused.returncode == 1
    reason = json.loads(refused.stdout)["reason"]
    assert "demoted" in reason and "re-validation" in reason
    assert setup.verify(f"{setup.target.host}/node:15-alpine").returncode == 0
