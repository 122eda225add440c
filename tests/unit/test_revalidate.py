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
from gate.entrypoints.worker import revalidate as timer_revalidate
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


def test_timer_pass_publishes_demotion_as_image_demoted_event(tmp_path: Path) -> None:
    from gate.usecases.audit import EVENT_TYPES

    keeper = keeper_for(tmp_path)
    registry, _, verdicts = parts(keeper)
    orange = promote(keeper, "orange")
    green = promote(keeper, "green")
    verdicts.failing = {green.digest or ""}
    published: list[GateRecord] = []

    records, errors = timer_revalidate(keeper, published.append)

    assert errors == [] and registry.tag_of(STABLE) == orange.digest
    assert [r.state for r in records] == [State.FAILING, State.REVALIDATED, State.DEMOTED]
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
