"""The gate's service layer over fakes of its ports and the real SQLite ledger."""

from __future__ import annotations

import json
import logging
import time
from copy import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from devstack.configs import GateYaml, Rule, Validation, write_empty_task
from gate.adapters.ledger.sqlite import SqliteLedger
from gate.config.loading import load_config
from gate.domain.records import GateRecord, Outcome, State, new_record_id, utcnow
from gate.domain.ref import ImageRef
from gate.errors import (
    Conflict,
    ManifestUnknown,
    NoMatchingRule,
    NotFound,
    RegistryUnavailable,
    UsageError,
)
from gate.ports import CopyReport, HistoryQuery, ValidationRequest
from gate.usecases.gating import admit, gate_image, gate_record
from gate.usecases.keeper import Gatekeeper
from gate.usecases.polling import poll_upstreams
from gate.usecases.rollback import rollback
from gate.usecases.watch import watch_once
from tests.fakes import FakeRegistry, FakeSecrets, FakeValidator, digest_of

UP = "upstream.example.com"
ART = "artifacts.example.com"


def write_config(
    tmp_path: Path, tags: tuple[str, ...] = ("15-alpine",), extra_rule: str = ""
) -> Path:
    """Rule ``node`` over fakes, with a value and a secret value; ``extra_rule`` is top-level
    YAML text added to the file."""
    write_empty_task(tmp_path)
    validation = Validation(values={"EXTRA": "yes"}, secret_values={"TOKEN": "test-token"})
    rule = Rule(f"{UP}/node", f"{ART}/node", tags=tags, validation=validation)
    return GateYaml("data", (rule,), top=tuple(extra_rule.splitlines())).write(tmp_path)


@pytest.fixture
def keeper(tmp_path: Path) -> Gatekeeper:
    return keeper_with(tmp_path)


def keeper_with(tmp_path: Path, top_level: str = "") -> Gatekeeper:
    """A keeper over fakes and a real SQLite ledger; ``top_level`` adds settings to gate.yaml."""
    config = load_config(write_config(tmp_path, extra_rule=top_level))
    return Gatekeeper(
        config=config,
        registry=FakeRegistry(),
        validator=FakeValidator(),
        ledger=SqliteLedger(config.data_dir / "gate.db"),
        secrets=FakeSecrets({"test-token": "s3cret-value"}),
    )


def fakes(keeper: Gatekeeper) -> tuple[FakeRegistry, FakeValidator]:
    assert isinstance(keeper.registry, FakeRegistry)
    assert isinstance(keeper.validator, FakeValidator)
    return keeper.registry, keeper.validator


def test_passing_image_is_promoted_under_unique_then_stable_tag(keeper: Gatekeeper) -> None:
    registry, _validator = fakes(keeper)
    digest = registry.push(f"{UP}/node:15-alpine", "green")

    outcome = gate_image(keeper, f"{UP}/node:15-alpine")

    assert outcome.verdict == "promoted" and outcome.exit_code == 0
    record = outcome.record
    assert record.digest == digest and record.run_id == "run1"
    assert record.target_tags == ("15-alpine-run1", "15-alpine")
    assert registry.writes == [
        (f"{ART}/node", "15-alpine-run1", digest),
        (f"{ART}/node", "15-alpine", digest),
    ]
    assert keeper.ledger.get(record.id).state is State.PROMOTED


def test_validation_gets_the_pinned_image_and_rule_values(keeper: Gatekeeper) -> None:
    registry, validator = fakes(keeper)
    digest = registry.push(f"{UP}/node:15-alpine", "green")

    gate_image(keeper, f"{UP}/node:15-alpine")

    (request,) = validator.requests
    assert str(request.image) == f"{UP}/node@{digest}"
    assert request.values["IMAGE"] == f"{UP}/node@{digest}"
    assert request.values["REGISTRY_FROM_URL"] == f"{UP}/"
    assert request.values["EXTRA"] == "yes"
    assert request.values["TOKEN"] == "s3cret-value"
    assert request.secret_values == frozenset({"TOKEN"})
    assert request.run_registry == ART


def test_tag_moving_during_validation_promotes_the_validated_digest(keeper: Gatekeeper) -> None:
    registry, validator = fakes(keeper)
    green = registry.push(f"{UP}/node:15-alpine", "green")
    validator.during = lambda request: registry.push(f"{UP}/node:15-alpine", "red")

    outcome = gate_image(keeper, f"{UP}/node:15-alpine")

    assert registry.tag_of(f"{UP}/node:15-alpine") != green  # upstream did move
    assert outcome.record.digest == green
    assert registry.tag_of(f"{ART}/node:15-alpine") == green
    assert registry.resolves == 1  # resolved once, copied by digest


def test_duplicate_request_neither_validates_nor_copies_again(keeper: Gatekeeper) -> None:
    registry, validator = fakes(keeper)
    digest = registry.push(f"{UP}/node:15-alpine", "green")
    first = gate_image(keeper, f"{UP}/node:15-alpine")

    again = gate_image(keeper, f"{UP}/node@{digest}")

    assert again.duplicate and again.record.id == first.record.id
    assert len(validator.requests) == 1 and len(registry.copies) == 1


def test_force_regates_a_decided_digest(keeper: Gatekeeper) -> None:
    registry, validator = fakes(keeper)
    registry.push(f"{UP}/node:15-alpine", "green")
    first = gate_image(keeper, f"{UP}/node:15-alpine")

    forced = gate_image(keeper, f"{UP}/node:15-alpine", force=True)

    assert not forced.duplicate and forced.record.id != first.record.id
    assert forced.record.forced and len(validator.requests) == 2


@pytest.mark.parametrize("outcome", [Outcome.REJECTED, Outcome.FAILED])
def test_rejected_or_failed_validation_leaves_stable_tag_untouched(
    keeper: Gatekeeper, outcome: Outcome
) -> None:
    registry, validator = fakes(keeper)
    green = registry.push(f"{UP}/node:15-alpine", "green")
    gate_image(keeper, f"{UP}/node:15-alpine")
    registry.push(f"{UP}/node:15-alpine", "red")
    validator.decide = lambda request: outcome

    result = gate_image(keeper, f"{UP}/node:15-alpine")

    assert result.verdict == outcome.value
    assert result.exit_code == (1 if outcome is Outcome.REJECTED else 3)
    assert registry.tag_of(f"{ART}/node:15-alpine") == green
    assert len(registry.copies) == 1


def test_failed_validation_may_be_retried_without_force(keeper: Gatekeeper) -> None:
    registry, validator = fakes(keeper)
    registry.push(f"{UP}/node:15-alpine", "green")
    validator.decide = lambda request: Outcome.FAILED
    assert gate_image(keeper, f"{UP}/node:15-alpine").verdict == "failed"

    validator.decide = lambda request: Outcome.PASSED
    retried = gate_image(keeper, f"{UP}/node:15-alpine")

    assert retried.verdict == "promoted" and not retried.duplicate


def test_unknown_repository_is_refused_and_nothing_recorded(keeper: Gatekeeper) -> None:
    registry, _validator = fakes(keeper)
    registry.push(f"{UP}/python:3.12", "py")

    with pytest.raises(NoMatchingRule, match=r"no rule .* watches"):
        gate_image(keeper, f"{UP}/python:3.12")
    with pytest.raises(NoMatchingRule):
        gate_image(keeper, f"{UP}/node:16-alpine")

    assert keeper.ledger.history() == [] and registry.resolves == 0


def test_promotion_error_keeps_the_pass_and_the_stable_tag_unmoved(keeper: Gatekeeper) -> None:
    registry, validator = fakes(keeper)
    registry.push(f"{UP}/node:15-alpine", "green")

    def go_down(request: ValidationRequest) -> None:
        registry.down = True

    validator.during = go_down
    outcome = gate_image(keeper, f"{UP}/node:15-alpine")

    assert outcome.verdict == "validated" and outcome.exit_code == 3
    assert "promotion failed" in outcome.record.reason and "down" in outcome.record.reason
    assert outcome.record.validated_at is not None and outcome.record.run_id == "run1"
    assert registry.tag_of(f"{ART}/node:15-alpine") is None
    # nobody works on it any more: its lease is given up for the next attempt
    stored = keeper.ledger.get(outcome.record.id)
    assert stored.lease_until is not None and stored.lease_until <= utcnow()


def test_rerun_after_a_failed_promotion_promotes_without_validating_again(
    keeper: Gatekeeper,
) -> None:
    registry, validator = fakes(keeper)
    digest = registry.push(f"{UP}/node:15-alpine", "green")
    validator.during = lambda request: setattr(registry, "down", True)
    first = gate_image(keeper, f"{UP}/node:15-alpine")
    validator.during = None
    registry.down = False

    again = gate_image(keeper, f"{UP}/node:15-alpine")

    assert first.verdict == "validated" and again.verdict == "promoted"
    assert again.record.id == first.record.id and again.record.attempts == 2
    assert len(validator.requests) == 1
    assert again.record.run_id == "run1" and again.record.digest == digest
    assert registry.tag_of(f"{ART}/node:15-alpine-run1") == digest
    assert registry.tag_of(f"{ART}/node:15-alpine") == digest


def test_a_pass_older_than_validation_fresh_for_is_validated_again_in_a_new_record(
    tmp_path: Path,
) -> None:
    keeper = keeper_with(tmp_path, "validation_fresh_for: 0\n")
    registry, validator = fakes(keeper)
    digest = registry.push(f"{UP}/node:15-alpine", "green")
    validator.during = lambda request: setattr(registry, "down", True)
    first = gate_image(keeper, f"{UP}/node:15-alpine")
    validator.during = None
    registry.down = False

    again = gate_image(keeper, f"{UP}/node:15-alpine")

    assert first.verdict == "validated" and again.verdict == "promoted"
    assert again.record.id != first.record.id and len(validator.requests) == 2
    expired = keeper.ledger.get(first.record.id)
    assert expired.state is State.FAILED and "validation_fresh_for" in expired.reason
    assert registry.tag_of(f"{ART}/node:15-alpine") == digest
    assert again.record.run_id == "run2"


def test_a_worker_whose_lease_was_taken_over_writes_no_verdict(keeper: Gatekeeper) -> None:
    registry, validator = fakes(keeper)
    registry.push(f"{UP}/node:15-alpine", "green")
    taken: list[GateRecord] = []

    def stalls_until_taken_over(request: ValidationRequest) -> None:
        # this worker stalls past its lease; another one takes the record over meanwhile
        (mine,) = keeper.ledger.history()
        assert keeper.ledger.renew(mine.id, mine.lease_holder, utcnow() - timedelta(seconds=1))
        rival = GateRecord(
            id="rival1", rule="node", source="x", target=f"{ART}/node", digest=mine.digest
        )
        claim = keeper.ledger.claim(rival, force=False, lease_seconds=60, holder="rival")
        assert claim.acquired and claim.resumed
        taken.append(claim.record)

    validator.during = stalls_until_taken_over
    outcome = gate_image(keeper, f"{UP}/node:15-alpine")

    assert outcome.duplicate and outcome.record == taken[0]
    assert keeper.ledger.get(taken[0].id) == taken[0]  # untouched: no verdict, no run id
    assert registry.copies == []


def test_the_heartbeat_holds_a_validation_that_outlasts_its_lease(tmp_path: Path) -> None:
    keeper = keeper_with(tmp_path, "lease: {seconds: 0.6, heartbeat: 0.1}\n")
    registry, validator = fakes(keeper)
    registry.push(f"{UP}/node:15-alpine", "green")
    rivals: list[bool] = []

    def slow(request: ValidationRequest) -> None:
        for _ in range(3):
            time.sleep(0.5)
            rival = GateRecord(
                id=new_record_id(),
                rule="node",
                source="x",
                target=f"{ART}/node",
                digest=request.image.digest,
            )
            claim = keeper.ledger.claim(rival, force=True, lease_seconds=0.6, holder="rival")
            rivals.append(claim.acquired)

    validator.during = slow
    outcome = gate_image(keeper, f"{UP}/node:15-alpine")

    assert rivals == [False, False, False]
    assert outcome.verdict == "promoted" and outcome.record.attempts == 1


class StopsBeforeTheStableTag(FakeRegistry):
    """Writes the run-ID tag, then fails before the stable tag moves (``times`` copies)."""

    times: int = 1

    def copy(self, source: ImageRef, target: ImageRef, **kw: Any) -> CopyReport:
        if self.times <= 0:
            return super().copy(source, target, **kw)
        self.times -= 1
        super().copy(source, target, immutable_tags=kw.get("immutable_tags", ()))
        raise RegistryUnavailable(f"{target.registry} went away before the stable tag moved")


def test_a_partly_promoted_digest_is_recorded_partial_and_finished_by_the_next_attempt(
    keeper: Gatekeeper,
) -> None:
    keeper = replace(keeper, registry=StopsBeforeTheStableTag())
    registry, validator = fakes(keeper)
    digest = registry.push(f"{UP}/node:15-alpine", "green")
    registry.push(f"{ART}/node:15-alpine", "older")

    first = gate_image(keeper, f"{UP}/node:15-alpine")

    assert first.verdict == "validated" and first.record.partial
    assert first.record.promoted_tags == ("15-alpine-run1",)
    assert registry.tag_of(f"{ART}/node:15-alpine") == digest_of("older")

    again = gate_image(keeper, f"{UP}/node:15-alpine")

    assert again.verdict == "promoted" and not again.record.partial
    assert len(validator.requests) == 1
    assert registry.tag_of(f"{ART}/node:15-alpine") == digest
    assert registry.tag_of(f"{ART}/node:15-alpine-run1") == digest


def silent_record(keeper: Gatekeeper, digest: str, state: State, **changes: object) -> GateRecord:
    """An in-progress record left behind by a worker that died: its lease has lapsed."""
    ghost = GateRecord(
        id="0ddba11ed0dead",
        rule="node",
        source=f"{UP}/node:15-alpine",
        target=f"{ART}/node",
        digest=digest,
    )
    held = keeper.ledger.claim(ghost, force=False, lease_seconds=60, holder="dead-worker").record
    keeper.ledger.save(held.advance(state, **changes))  # type: ignore[arg-type]
    assert keeper.ledger.renew(held.id, "dead-worker", utcnow() - timedelta(seconds=1))
    return held


def test_silent_in_progress_record_is_adopted_not_duplicated(keeper: Gatekeeper) -> None:
    registry, _validator = fakes(keeper)
    digest = registry.push(f"{UP}/node:15-alpine", "green")
    silent_record(keeper, digest, State.VALIDATING, run_id="run-of-the-dead")

    claim = keeper.ledger.claim(
        GateRecord(id="new1", rule="node", source="x", target=f"{ART}/node", digest=digest),
        force=False,
        lease_seconds=60,
        holder="new-worker",
    )

    assert claim.acquired and claim.resumed and claim.record.id == "0ddba11ed0dead"
    assert [r.id for r in keeper.ledger.history()] == ["0ddba11ed0dead"]


def test_adopted_validation_follows_the_recorded_run(
    keeper: Gatekeeper, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, validator = fakes(keeper)
    digest = registry.push(f"{UP}/node:15-alpine", "green")
    silent_record(keeper, digest, State.VALIDATING, run_id="run-of-the-dead")

    outcome = gate_image(keeper, f"{UP}/node:15-alpine")

    assert outcome.record.id == "0ddba11ed0dead" and outcome.verdict == "promoted"
    assert [r.run_id for r in validator.resumed] == ["run-of-the-dead"]
    assert outcome.record.target_tags == ("15-alpine-run-of-the-dead", "15-alpine")


def test_adopted_promotion_is_finished_without_validating_again(
    keeper: Gatekeeper, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, validator = fakes(keeper)
    digest = registry.push(f"{UP}/node:15-alpine", "green")
    silent_record(
        keeper, digest, State.PROMOTING, run_id="run7", target_tags=("15-alpine-run7", "15-alpine")
    )

    outcome = gate_image(keeper, f"{UP}/node:15-alpine")

    assert outcome.verdict == "promoted" and validator.requests == []
    assert registry.tag_of(f"{ART}/node:15-alpine-run7") == digest
    assert registry.tag_of(f"{ART}/node:15-alpine") == digest


def test_watch_gates_only_new_digests(keeper: Gatekeeper) -> None:
    registry, validator = fakes(keeper)
    registry.push(f"{UP}/node:15-alpine", "green")

    first = watch_once(keeper)
    second = watch_once(keeper)
    registry.push(f"{UP}/node:15-alpine", "orange")
    third = watch_once(keeper)

    assert [i.outcome.verdict for i in first if i.outcome] == ["promoted"]
    assert [i.skipped for i in second] == ["already promoted"]
    assert [i.outcome.record.trigger for i in third if i.outcome] == ["poll"]
    assert len(validator.requests) == 2


def test_watch_expands_glob_selectors_from_the_tag_list(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, tags=("15-*", "lts")))
    registry = FakeRegistry()
    for tag in ("15-alpine", "15-slim", "16-alpine", "lts"):
        registry.push(f"{UP}/node:{tag}", tag)
    keeper = Gatekeeper(
        config,
        registry,
        FakeValidator(),
        SqliteLedger(tmp_path / "l.db"),
        FakeSecrets({"test-token": "t"}),
    )

    items = watch_once(keeper)

    assert sorted(i.source for i in items) == sorted(
        f"{UP}/node:{t}" for t in ("15-alpine", "15-slim", "lts")
    )
    assert {(w[1], w[2]) for w in registry.writes if not w[1].count("-run")} >= {
        ("15-alpine", registry.tags[(UP, "node")]["15-alpine"]),
        ("15-slim", registry.tags[(UP, "node")]["15-slim"]),
    }


def test_watch_reports_an_unreachable_registry_per_rule(keeper: Gatekeeper) -> None:
    registry, _ = fakes(keeper)
    registry.down = True

    (item,) = watch_once(keeper)

    assert "down" in item.error and item.outcome is None


def promote(keeper: Gatekeeper, name: str) -> str:
    registry, _ = fakes(keeper)
    registry.push(f"{UP}/node:15-alpine", name)
    outcome = gate_image(keeper, f"{UP}/node:15-alpine")
    assert outcome.verdict == "promoted"
    return outcome.record.digest or ""


def test_rollback_moves_stable_tag_to_previous_promotion_and_records_why(
    keeper: Gatekeeper,
) -> None:
    registry, _ = fakes(keeper)
    orange, green = promote(keeper, "orange"), promote(keeper, "green")

    record = rollback(keeper, f"{ART}/node", reason="green breaks app X", actor="alice")

    assert registry.tag_of(f"{ART}/node:15-alpine") == orange
    assert record.state is State.ROLLED_BACK and record.actor == "alice"
    assert "green breaks app X" in record.reason and green in record.reason
    assert keeper.ledger.history(HistoryQuery(limit=1))[0].id == record.id


def test_rollback_to_named_run_or_digest(keeper: Gatekeeper) -> None:
    registry, _ = fakes(keeper)
    orange, green, _blue = (promote(keeper, c) for c in ("orange", "green", "blue"))

    rollback(keeper, f"{ART}/node:15-alpine", to="run1", reason="back to orange")
    assert registry.tag_of(f"{ART}/node:15-alpine") == orange
    rollback(keeper, f"{ART}/node", to=green, reason="forward to green")
    assert registry.tag_of(f"{ART}/node:15-alpine") == green


def test_rollback_refuses_a_digest_the_gate_never_validated(keeper: Gatekeeper) -> None:
    registry, _ = fakes(keeper)
    promote(keeper, "orange")
    current = promote(keeper, "green")
    unvalidated = registry.push(f"{ART}/node:sneaky", "sneaky")

    with pytest.raises(Conflict, match="never promoted"):
        rollback(keeper, f"{ART}/node", to=unvalidated, reason="try")

    assert registry.tag_of(f"{ART}/node:15-alpine") == current


def test_rollback_needs_a_reason_and_a_history(keeper: Gatekeeper) -> None:
    with pytest.raises(UsageError, match="reason"):
        rollback(keeper, f"{ART}/node", reason="  ")
    with pytest.raises(NotFound):
        rollback(keeper, f"{ART}/node", reason="why")
    with pytest.raises(NotFound, match="no rule"):
        rollback(keeper, f"{ART}/python", reason="why")


def test_admitted_request_is_recorded_received_and_gated_by_the_worker(keeper: Gatekeeper) -> None:
    registry, validator = fakes(keeper)
    digest = registry.push(f"{UP}/node:15-alpine", "green")

    admitted = admit(keeper, f"{UP}/node:15-alpine", trigger="http")

    assert not admitted.duplicate and admitted.record.state is State.RECEIVED
    assert admitted.record.attempts == 0 and admitted.record.digest == digest
    assert validator.requests == [] and registry.copies == []

    done = gate_record(keeper, admitted.record.id)

    assert done.verdict == "promoted" and done.record.id == admitted.record.id
    assert done.record.attempts == 1 and done.record.trigger == "http"
    assert registry.tag_of(f"{ART}/node:15-alpine") == digest


def test_redelivered_worker_message_does_no_work_twice(keeper: Gatekeeper) -> None:
    registry, validator = fakes(keeper)
    registry.push(f"{UP}/node:15-alpine", "green")
    admitted = admit(keeper, f"{UP}/node:15-alpine")
    first = gate_record(keeper, admitted.record.id)

    again = gate_record(keeper, admitted.record.id)

    assert first.verdict == "promoted" and again.duplicate
    assert len(validator.requests) == 1 and len(registry.copies) == 1


def test_worker_leaves_a_record_another_worker_holds(keeper: Gatekeeper) -> None:
    registry, validator = fakes(keeper)
    registry.push(f"{UP}/node:15-alpine", "green")
    admitted = admit(keeper, f"{UP}/node:15-alpine")
    held = keeper.ledger.claim(
        admitted.record, force=False, lease_seconds=600, holder="first-worker"
    )
    assert held.acquired  # the first worker took it and is busy

    second = gate_record(keeper, admitted.record.id)

    assert second.duplicate and second.record.state is State.RECEIVED
    assert validator.requests == []


def test_second_admission_of_a_digest_returns_the_first(keeper: Gatekeeper) -> None:
    registry, _ = fakes(keeper)
    registry.push(f"{UP}/node:15-alpine", "green")

    first = admit(keeper, f"{UP}/node:15-alpine")
    second = admit(keeper, f"{UP}/node:15-alpine")

    assert second.duplicate and second.record.id == first.record.id
    assert len(keeper.ledger.history()) == 1


def test_admission_refuses_an_unwatched_image_and_records_nothing(keeper: Gatekeeper) -> None:
    with pytest.raises(NoMatchingRule):
        admit(keeper, f"{UP}/python:3.12")
    assert keeper.ledger.history() == []


def test_poison_fails_an_untouched_request_but_leaves_a_live_workers_record(
    keeper: Gatekeeper,
) -> None:
    from gate.entrypoints.messages import GateRequest
    from gate.entrypoints.worker import poisoned

    registry, _ = fakes(keeper)
    registry.push(f"{UP}/node:15-alpine", "green")
    untouched = admit(keeper, f"{UP}/node:15-alpine").record
    assert poisoned(keeper, GateRequest(record_id=untouched.id), "gave up").state is State.FAILED

    registry.push(f"{UP}/node:15-alpine", "blue")
    held = admit(keeper, f"{UP}/node:15-alpine").record
    # a worker took it
    keeper.ledger.claim(held, force=False, lease_seconds=600, holder="first-worker")

    left = poisoned(keeper, GateRequest(record_id=held.id), "gave up")

    assert left.state is State.RECEIVED and keeper.ledger.get(held.id).state is State.RECEIVED


def test_worker_hands_back_a_failed_promotion_at_once_and_the_redelivery_promotes_it(
    keeper: Gatekeeper,
) -> None:
    from gate.entrypoints.messages import GateRequest
    from gate.entrypoints.worker import RetryLater, handle

    registry, validator = fakes(keeper)
    digest = registry.push(f"{UP}/node:15-alpine", "green")
    admitted = admit(keeper, f"{UP}/node:15-alpine").record
    validator.during = lambda request: setattr(registry, "down", True)
    request = GateRequest(record_id=admitted.id)

    began = time.monotonic()
    with pytest.raises(RetryLater, match="promotion failed"):
        handle(keeper, request, wait_seconds=30)
    assert time.monotonic() - began < 5  # handed back at once, not after the wait
    validator.during = None
    registry.down = False
    done = handle(keeper, request, wait_seconds=30)

    assert done.verdict == "promoted" and done.record.id == admitted.id
    assert len(validator.requests) == 1
    assert registry.tag_of(f"{ART}/node:15-alpine") == digest
    # the retry told the registry that an earlier attempt may have copied it already
    assert registry.resumed_copies and set(registry.resumed_copies) == {f"{ART}/node"}


def test_poison_leaves_a_validated_record_for_the_next_attempt(keeper: Gatekeeper) -> None:
    from gate.entrypoints.messages import GateRequest
    from gate.entrypoints.worker import poisoned

    registry, validator = fakes(keeper)
    registry.push(f"{UP}/node:15-alpine", "green")
    validator.during = lambda request: setattr(registry, "down", True)
    kept = gate_image(keeper, f"{UP}/node:15-alpine").record
    assert kept.state is State.VALIDATED

    left = poisoned(keeper, GateRequest(record_id=kept.id), "gave up")

    assert left.state is State.VALIDATED
    assert keeper.ledger.get(kept.id).state is State.VALIDATED


def test_poison_fails_a_record_whose_holder_died(keeper: Gatekeeper) -> None:
    from gate.entrypoints.messages import GateRequest
    from gate.entrypoints.worker import poisoned

    registry, _ = fakes(keeper)
    digest = registry.push(f"{UP}/node:15-alpine", "green")
    ghost = silent_record(keeper, digest, State.VALIDATING, run_id="run-of-the-dead")

    failed = poisoned(keeper, GateRequest(record_id=ghost.id), "gave up")

    assert failed.state is State.FAILED and "gave up" in failed.reason


def test_a_failure_to_resolve_is_recorded_and_blocks_nothing(
    keeper: Gatekeeper, caplog: pytest.LogCaptureFixture
) -> None:
    registry, validator = fakes(keeper)
    digest = registry.push(f"{UP}/node:15-alpine", "green")
    registry.down = True

    with (
        caplog.at_level(logging.INFO, logger="gate.audit"),
        pytest.raises(RegistryUnavailable) as caught,
    ):
        gate_image(keeper, f"{UP}/node:15-alpine", trigger="poll")

    (failed,) = keeper.ledger.history()
    assert failed.state is State.FAILED and failed.digest is None
    assert failed.reason == caught.value.message
    assert (failed.rule, failed.source, failed.trigger) == ("node", f"{UP}/node:15-alpine", "poll")
    assert failed.target == f"{ART}/node" and "resolve" in failed.timings
    (line,) = [r.getMessage() for r in caplog.records if "GATE_DECISION" in r.getMessage()]
    audited = json.loads(line.split(" ", 1)[1])
    assert audited["record_id"] == failed.id and audited["verdict"] == "failed"
    assert audited["digest"] is None
    # the record holds no digest: the next gate of the rule is not blocked by it
    registry.down = False
    outcome = gate_image(keeper, f"{UP}/node:15-alpine")
    assert outcome.verdict == "promoted" and not outcome.duplicate
    assert outcome.record.digest == digest and len(validator.requests) == 1
    assert len(keeper.ledger.history()) == 2


def test_a_digest_missing_upstream_is_recorded_as_failed(keeper: Gatekeeper) -> None:
    missing = digest_of("never pushed")

    with pytest.raises(ManifestUnknown) as caught:
        gate_image(keeper, f"{UP}/node@{missing}")

    (failed,) = keeper.ledger.history()
    assert failed.state is State.FAILED and failed.digest is None
    assert failed.reason == caught.value.message and failed.trigger == "manual"
    assert failed.source == f"{UP}/node@{missing}"


def test_an_admission_that_cannot_resolve_records_nothing(keeper: Gatekeeper) -> None:
    with pytest.raises(ManifestUnknown):
        admit(keeper, f"{UP}/node@{digest_of('never pushed')}", actor="alice")

    assert keeper.ledger.history() == []


def test_a_tag_listing_is_given_what_is_left_of_the_pass_budget(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, tags=("15-*",), extra_rule="poll: {budget: 30}"))
    registry = FakeRegistry()
    registry.push(f"{UP}/node:15-alpine", "green")
    keeper = Gatekeeper(
        config=config,
        registry=registry,
        polling=registry,
        validator=FakeValidator(),
        ledger=SqliteLedger(config.data_dir / "gate.db"),
        secrets=FakeSecrets({"test-token": "s3cret-value"}),
    )

    (item,) = poll_upstreams(keeper)

    assert item.digest == registry.tags[(UP, "node")]["15-alpine"] and not item.error
    (budget,) = registry.tag_budgets
    assert budget is not None and 0 < budget <= 30


def test_the_queue_worker_records_a_failure_to_resolve(keeper: Gatekeeper) -> None:
    from gate.entrypoints.messages import GateRequest
    from gate.entrypoints.worker import handle

    registry, validator = fakes(keeper)
    registry.down = True

    with pytest.raises(RegistryUnavailable) as caught:
        handle(keeper, GateRequest(image=f"{UP}/node:15-alpine", trigger="event"))

    assert caught.value.retryable  # the queue delivers it again, as before
    (failed,) = keeper.ledger.history()
    assert failed.state is State.FAILED and failed.digest is None
    assert failed.trigger == "event" and failed.reason == caught.value.message
    assert validator.requests == []
