"""Scheduled re-validation and automatic demotion, over fakes of the ports and a real SQLite ledger."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path

import pytest

from devstack.configs import empty_task_gate_yaml
from gate.adapters.ledger.sqlite import SqliteLedger
from gate.config.loading import load_config
from gate.domain.records import GateRecord, Outcome, State, utcnow
from gate.entrypoints.messages import GateRequest
from gate.entrypoints.worker import Revalidation, handle, revalidations_due
from gate.errors import ConfigError, NotFound, UsageError
from gate.ports import ValidationRequest
from gate.usecases.gating import gate_image
from gate.usecases.keeper import Gatekeeper
from gate.usecases.revalidation import revalidate, revalidate_due, revalidation_due
from gate.usecases.rollback import rollback
from tests.fakes import FakeRegistry, FakeSecrets, FakeValidator

UP = "upstream.example.com"
ART = "artifacts.example.com"
STABLE = f"{ART}/node:15-alpine"


def write_config(tmp_path: Path, revalidate_option: str) -> Path:
    extra = [f"revalidate: {revalidate_option}"] if revalidate_option else []
    return empty_task_gate_yaml(tmp_path, UP, ART, rule=extra)


class Verdicts:
    """The validator's answer per digest: the digests in ``failing`` fail their validation."""

    def __init__(self) -> None:
        self.failing: set[str] = set()
        self.broken: set[str] = set()

    def __call__(self, request: ValidationRequest) -> Outcome:
        if request.image.digest in self.broken:
            return Outcome.FAILED
        return Outcome.REJECTED if request.image.digest in self.failing else Outcome.PASSED


def keeper_for(tmp_path: Path, option: str = "{every: 24h, on_failure: demote}") -> Gatekeeper:
    config = load_config(write_config(tmp_path, option))
    return Gatekeeper(
        config=config,
        registry=FakeRegistry(),
        validator=FakeValidator(decide=Verdicts()),
        ledger=SqliteLedger(config.data_dir / "gate.db"),
        secrets=FakeSecrets(),
    )


def parts(keeper: Gatekeeper) -> tuple[FakeRegistry, FakeValidator, Verdicts]:
    assert isinstance(keeper.registry, FakeRegistry)
    assert isinstance(keeper.validator, FakeValidator)
    assert isinstance(keeper.validator.decide, Verdicts)
    return keeper.registry, keeper.validator, keeper.validator.decide


def promote(keeper: Gatekeeper, name: str) -> GateRecord:
    registry, _, _ = parts(keeper)
    registry.push(f"{UP}/node:15-alpine", name)
    outcome = gate_image(keeper, f"{UP}/node:15-alpine")
    assert outcome.verdict == "promoted"
    return outcome.record


def test_revalidate_option_is_read_with_its_defaults(tmp_path: Path) -> None:
    rule = keeper_for(tmp_path, "{every: 6h}").config.rules[0]

    assert rule.revalidate is not None
    assert rule.revalidate.every_seconds == 6 * 3600
    assert rule.revalidate.on_failure == "demote" and rule.revalidate.candidates == 5


@pytest.mark.parametrize(
    ("option", "field"),
    [
        ("{every: 24 hours}", "every"),
        ("{every: 24h, on_failure: rollback}", "on_failure"),
        ("{every: 24h, candidates: 0}", "candidates"),
        ("{on_failure: alert}", "every"),
        ("{every: 24h, when: never}", "when"),
    ],
)
def test_bad_revalidate_option_names_the_rule_and_field(
    tmp_path: Path, option: str, field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, option))

    assert "revalidate" in caught.value.message and field in caught.value.message


def test_failing_stable_digest_is_demoted_to_newest_earlier_digest_that_passes_now(
    tmp_path: Path,
) -> None:
    keeper = keeper_for(tmp_path)
    registry, validator, verdicts = parts(keeper)
    orange, green, blue = (promote(keeper, c) for c in ("orange", "green", "blue"))
    unique_tags = {
        t: registry.tag_of(f"{ART}/node:{t}")
        for t in ("15-alpine-run1", "15-alpine-run2", "15-alpine-run3")
    }
    assert orange.digest and green.digest and blue.digest
    verdicts.failing = {blue.digest, green.digest}
    runs_before = len(validator.requests)

    [result] = revalidate(keeper, "node")

    assert registry.tag_of(STABLE) == orange.digest
    checked, green_check, orange_check, demoted = result.records
    assert checked is result.checked and demoted is result.decision
    assert (checked.action, checked.state, checked.digest) == (
        "revalidate",
        State.FAILING,
        blue.digest,
    )
    assert checked.of_record == blue.id and checked.actor == "revalidation"
    assert (green_check.state, green_check.of_record) == (State.FAILING, green.id)
    assert (orange_check.state, orange_check.of_record) == (State.REVALIDATED, orange.id)
    assert demoted.action == "demote" and demoted.state is State.DEMOTED
    assert demoted.actor == "revalidation" and demoted.of_record == checked.id
    assert demoted.digest == orange.digest and demoted.run_id == orange.run_id
    assert blue.digest in demoted.reason and orange.digest in demoted.reason
    # each check ran the rule's validation on the promoted copy in the target, by digest
    images = [str(r.image) for r in validator.requests[runs_before:]]
    assert images == [f"{ART}/node@{d}" for d in (blue.digest, green.digest, orange.digest)]
    # no run-ID tag moved or vanished
    assert {t: registry.tag_of(f"{ART}/node:{t}") for t in unique_tags} == unique_tags
    stored = keeper.ledger.get(demoted.id)
    assert stored.state is State.DEMOTED and stored.of_record == checked.id
    assert keeper.ledger.get(checked.id).of_record == blue.id


def test_passing_stable_digest_moves_nothing_and_is_recorded(tmp_path: Path) -> None:
    keeper = keeper_for(tmp_path)
    registry, _, _ = parts(keeper)
    promote(keeper, "orange")
    green = promote(keeper, "green")
    writes = list(registry.writes)

    [result] = revalidate(keeper)

    assert [r.state for r in result.records] == [State.REVALIDATED]
    assert result.decision is None and registry.writes == writes
    assert registry.tag_of(STABLE) == green.digest


def test_no_earlier_digest_passing_leaves_stable_tag_and_marks_rule_broken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keeper = keeper_for(tmp_path, "{every: 24h, on_failure: demote, candidates: 2}")
    registry, _, verdicts = parts(keeper)
    promoted = [promote(keeper, c) for c in ("red", "orange", "green", "blue")]
    verdicts.failing = {r.digest or "" for r in promoted[1:]}
    caplog.set_level(logging.INFO)

    [result] = revalidate(keeper, "node")

    # red would pass, but only the 2 newest earlier digests are candidates
    assert registry.tag_of(STABLE) == promoted[-1].digest
    assert [r.state for r in result.records] == [State.FAILING] * 3 + [State.BROKEN]
    broken = result.decision
    assert broken is not None and broken.state is State.BROKEN
    assert broken.digest == promoted[-1].digest and broken.of_record == result.records[0].id
    assert "broken" in broken.reason
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("rule node is broken" in w for w in warnings)
    decisions = [
        json.loads(r.getMessage()[len("GATE_DECISION ") :])
        for r in caplog.records
        if r.getMessage().startswith("GATE_DECISION ")
    ]
    assert decisions[-1]["verdict"] == "broken" and decisions[-1]["record_id"] == broken.id


def test_alert_moves_nothing_and_says_the_stable_digest_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keeper = keeper_for(tmp_path, "{every: 24h, on_failure: alert}")
    registry, validator, verdicts = parts(keeper)
    promote(keeper, "orange")
    green = promote(keeper, "green")
    verdicts.failing = {green.digest or ""}
    writes, runs = list(registry.writes), len(validator.requests)
    caplog.set_level(logging.INFO)

    [result] = revalidate(keeper, "node")

    assert registry.writes == writes and registry.tag_of(STABLE) == green.digest
    assert len(validator.requests) == runs + 1  # no candidate is tried
    [failing] = result.records
    assert failing.state is State.FAILING and result.decision is None
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("GATE_DECISION ") and '"failing"' in m for m in lines)
    assert any("fails its validation now; on_failure is alert" in m for m in lines)


def test_queued_revalidation_publishes_demotion_as_image_demoted_event(tmp_path: Path) -> None:
    from gate.usecases.audit import EVENT_TYPES

    keeper = keeper_for(tmp_path)
    registry, _, verdicts = parts(keeper)
    orange = promote(keeper, "orange")
    green = promote(keeper, "green")
    verdicts.failing = {green.digest or ""}
    published: list[GateRecord] = []
    [request], problems = revalidations_due(keeper)

    done = handle(keeper, GateRequest.from_json(request.to_json()), publish=published.append)

    assert isinstance(done, Revalidation) and problems == []
    assert done.errors == () and registry.tag_of(STABLE) == orange.digest
    assert [r.state for r in done.records] == [State.FAILING, State.REVALIDATED, State.DEMOTED]
    assert [EVENT_TYPES[r.state] for r in published] == [
        "GatedImport.RevalidationFailed",
        "GatedImport.ImageDemoted",
    ]


def test_schedule_comes_from_the_newest_revalidation_in_the_ledger(tmp_path: Path) -> None:
    keeper = keeper_for(tmp_path, "{every: 6h, on_failure: alert}")
    _, validator, _ = parts(keeper)
    promote(keeper, "green")
    rule = keeper.config.rules[0]
    assert revalidation_due(keeper, rule)

    first = revalidate_due(keeper)
    runs = len(validator.requests)

    assert [r.records[0].state for r in first] == [State.REVALIDATED]
    assert first[0].records[0].trigger == "schedule"
    assert not revalidation_due(keeper, rule)
    assert revalidate_due(keeper) == [] and len(validator.requests) == runs
    assert not revalidation_due(keeper, rule, utcnow() + timedelta(hours=5))
    assert revalidation_due(keeper, rule, utcnow() + timedelta(hours=6, seconds=1))


def test_a_revalidation_that_could_not_run_moves_nothing_and_is_tried_again(
    tmp_path: Path,
) -> None:
    keeper = keeper_for(tmp_path)
    registry, _, verdicts = parts(keeper)
    promote(keeper, "orange")
    green = promote(keeper, "green")
    verdicts.broken = {green.digest or ""}

    [result] = revalidate_due(keeper)

    assert [r.state for r in result.records] == [State.FAILED]
    assert registry.tag_of(STABLE) == green.digest
    assert revalidation_due(keeper, keeper.config.rules[0])


def test_rule_without_revalidate_is_never_scheduled_and_refused_by_name(tmp_path: Path) -> None:
    keeper = keeper_for(tmp_path, "")
    promote(keeper, "green")

    assert revalidate_due(keeper) == []
    with pytest.raises(UsageError, match="no revalidate: option"):
        revalidate(keeper, "node")
    with pytest.raises(UsageError, match=r"no rule .* has a revalidate: option"):
        revalidate(keeper)
    with pytest.raises(NotFound, match="no rule 'python'"):
        revalidate(keeper, "python")


def test_stable_tag_moved_outside_the_gate_is_not_revalidated(tmp_path: Path) -> None:
    keeper = keeper_for(tmp_path)
    registry, validator, _ = parts(keeper)
    promote(keeper, "green")
    sneaky = registry.push(STABLE, "sneaky")
    runs = len(validator.requests)

    [result] = revalidate(keeper, "node")

    assert result.records == () and "never promoted" in result.error
    assert len(validator.requests) == runs and registry.tag_of(STABLE) == sneaky


def test_a_rollback_after_a_demotion_steps_back_from_the_demoted_digest(tmp_path: Path) -> None:
    keeper = keeper_for(tmp_path)
    registry, _, verdicts = parts(keeper)
    red, orange, green = (promote(keeper, c) for c in ("red", "orange", "green"))
    verdicts.failing = {green.digest or ""}

    revalidate(keeper, "node")
    assert registry.tag_of(STABLE) == orange.digest
    back = rollback(keeper, f"{ART}/node", reason="orange breaks app X", actor="alice")

    assert back.digest == red.digest and registry.tag_of(STABLE) == red.digest


# -- re-validation as queued work ----------------------------------------------------------------


def test_the_timer_queues_one_request_per_due_rule_and_validates_nothing(tmp_path: Path) -> None:
    keeper = keeper_for(tmp_path)
    _, validator, _ = parts(keeper)
    promote(keeper, "green")
    runs = len(validator.requests)

    requests, errors = revalidations_due(keeper)

    assert requests == [GateRequest(revalidate="node", trigger="revalidate")] and errors == []
    assert len(validator.requests) == runs
    assert [r.action for r in keeper.ledger.history()] == ["gate"]  # nothing re-validated


def test_the_worker_revalidates_a_due_rule_once_however_often_it_is_queued(
    tmp_path: Path,
) -> None:
    keeper = keeper_for(tmp_path)
    _, validator, _ = parts(keeper)
    green = promote(keeper, "green")
    runs = len(validator.requests)
    # two timer runs queued the rule while it was due
    request = GateRequest(revalidate="node", trigger="revalidate")

    first = handle(keeper, request)
    second = handle(keeper, request)

    assert isinstance(first, Revalidation) and isinstance(second, Revalidation)
    assert [r.state for r in first.records] == [State.REVALIDATED]
    assert first.records[0].of_record == green.id and first.skipped == ""
    assert len(validator.requests) == runs + 1
    assert second.records == () and "is not due: it was re-validated at" in second.skipped
    assert first.pass_record is not None and first.pass_record.state is State.REVALIDATED
    assert keeper.ledger.get(first.pass_record.id).action == "revalidate"


def test_a_pass_another_worker_is_running_is_not_run_again(tmp_path: Path) -> None:
    from gate.usecases.revalidation import REVALIDATION_ACTOR

    keeper = keeper_for(tmp_path)
    _, validator, _ = parts(keeper)
    promote(keeper, "green")
    runs = len(validator.requests)
    running = GateRecord(
        id="0123456789abcdef0123456789abcdef",
        action="revalidate",
        rule="node",
        source=f"{ART}/node",
        target=f"{ART}/node",
        state=State.VALIDATING,
        actor=REVALIDATION_ACTOR,
    )
    keeper.ledger.add(running)

    done = handle(keeper, GateRequest(revalidate="node", trigger="revalidate"))

    assert isinstance(done, Revalidation) and done.records == ()
    assert done.skipped == f"record {running.id} is re-validating rule node already"
    assert len(validator.requests) == runs


def test_two_workers_that_start_the_same_pass_claim_it_once(tmp_path: Path) -> None:
    from gate.usecases.revalidation import last_revalidation, pass_id, pass_seconds

    keeper = keeper_for(tmp_path)
    _, validator, _ = parts(keeper)
    promote(keeper, "green")
    rule = keeper.config.rules[0]
    runs = len(validator.requests)
    now = utcnow()
    claimed_id = pass_id(
        rule.name, last_revalidation(keeper, rule), now, pass_seconds(keeper, rule)
    )
    # the other worker's pass record, closed already (as it stands when it could not finish)
    keeper.ledger.add(
        GateRecord(
            id=claimed_id,
            action="revalidate",
            rule="node",
            source=f"{ART}/node",
            target=f"{ART}/node",
            state=State.FAILED,
        )
    )

    done = handle(keeper, GateRequest(revalidate="node", trigger="revalidate"))

    assert isinstance(done, Revalidation) and done.records == ()
    assert done.skipped == f"record {claimed_id} has this re-validation pass of rule node"
    assert len(validator.requests) == runs
    # the same rule, last re-validation and window give the same id: one pass per due time
    assert pass_id("node", None, now, 3600) == pass_id("node", None, now, 3600)
    assert pass_id("node", None, now, 3600) != pass_id("python", None, now, 3600)
    assert len(claimed_id) == 32 and int(claimed_id, 16) >= 0


def test_a_pass_whose_worker_went_silent_is_closed_and_the_rule_revalidated(
    tmp_path: Path,
) -> None:
    from gate.usecases.revalidation import REVALIDATION_ACTOR, pass_seconds

    keeper = keeper_for(tmp_path)
    promote(keeper, "green")
    stale = pass_seconds(keeper, keeper.config.rules[0])
    silent = GateRecord(
        id="0123456789abcdef0123456789abcdee",
        action="revalidate",
        rule="node",
        source=f"{ART}/node",
        target=f"{ART}/node",
        state=State.VALIDATING,
        actor=REVALIDATION_ACTOR,
        created_at=utcnow() - timedelta(seconds=stale + 1),
    )
    keeper.ledger.add(silent)

    done = handle(keeper, GateRequest(revalidate="node", trigger="revalidate"))

    assert isinstance(done, Revalidation) and done.skipped == ""
    assert [r.state for r in done.records] == [State.REVALIDATED]
    closed = keeper.ledger.get(silent.id)
    assert closed.state is State.FAILED and "silent for over" in closed.reason


def test_a_pass_that_could_not_check_leaves_the_rule_due(tmp_path: Path) -> None:
    keeper = keeper_for(tmp_path)
    _, _, verdicts = parts(keeper)
    green = promote(keeper, "green")
    verdicts.broken = {green.digest or ""}

    done = handle(keeper, GateRequest(revalidate="node", trigger="revalidate"))

    assert isinstance(done, Revalidation) and done.pass_record is not None
    assert done.pass_record.state is State.FAILED
    assert "could not finish: re-validation could not run" in done.pass_record.reason
    assert revalidation_due(keeper, keeper.config.rules[0])


def test_a_queued_revalidation_of_a_rule_gone_from_the_config_does_nothing(
    tmp_path: Path,
) -> None:
    keeper = keeper_for(tmp_path)

    done = handle(keeper, GateRequest(revalidate="gone", trigger="revalidate"))

    assert isinstance(done, Revalidation) and done.records == ()
    assert done.skipped.startswith("rule 'gone' no longer re-validates")
    assert keeper.ledger.history() == []
