"""Staging while validating (gate.usecases.staging), over fakes of the gate's own ports."""

from __future__ import annotations

import logging
import threading
from copy import replace
from pathlib import Path

import pytest

from gate.domain.records import GateRecord, LeaseLost, Outcome, State, new_record_id
from gate.ports import ValidationRequest
from gate.usecases.gating import gate_image
from gate.usecases.keeper import Gatekeeper
from tests.fakes import FakeRegistry, FakeStager, FakeValidator
from tests.unit.test_service import ART, UP, keeper_with


def staged_keeper(tmp_path: Path, **stager: object) -> tuple[Gatekeeper, FakeStager]:
    keeper = keeper_with(tmp_path)
    assert isinstance(keeper.registry, FakeRegistry)
    fake = FakeStager(keeper.registry, **stager)  # type: ignore[arg-type]
    return replace(keeper, stager=fake), fake


def test_staging_runs_during_the_validation_and_the_promotion_copies_after_it_ends(
    tmp_path: Path,
) -> None:
    hold = threading.Event()
    keeper, stager = staged_keeper(tmp_path, hold=hold)
    assert isinstance(keeper.registry, FakeRegistry)
    digest = keeper.registry.push(f"{UP}/node:15-alpine", "green")
    running: list[bool] = []

    def during(request: ValidationRequest) -> None:
        running.append(stager.copied_when_done == [])  # not done yet: held
        hold.set()

    keeper = replace(keeper, validator=FakeValidator(during=during))

    outcome = gate_image(keeper, f"{UP}/node:15-alpine")

    assert outcome.record.state is State.PROMOTED
    assert running == [True]
    assert stager.copied_when_done == [[]]  # nothing was copied before the staging ended
    assert keeper.registry.copies == [(f"{UP}/node@{digest}", f"{ART}/node")]
    assert stager.unstaged == []


def test_a_rejection_stops_the_staging_and_deletes_the_blobs_it_uploaded(
    tmp_path: Path,
) -> None:
    keeper, stager = staged_keeper(tmp_path, hold=threading.Event())
    assert isinstance(keeper.registry, FakeRegistry)
    keeper.registry.push(f"{UP}/node:15-alpine", "red")
    notes: list[tuple[str, str]] = []
    keeper = replace(
        keeper,
        validator=FakeValidator(decide=lambda request: Outcome.REJECTED),
        notify=lambda event, _record, message: notes.append((event, message)),
    )

    outcome = gate_image(keeper, f"{UP}/node:15-alpine")

    assert outcome.record.state is State.REJECTED
    assert keeper.registry.copies == []
    assert stager.unstaged == [(f"{ART}/node", stager.blobs)]
    assert ("unstaged", f"rejected: 2 staged blob(s) deleted from {ART}/node") in notes


def test_blobs_are_left_for_garbage_collection_while_another_gate_of_the_target_runs(
    tmp_path: Path,
) -> None:
    keeper, stager = staged_keeper(tmp_path)
    assert isinstance(keeper.registry, FakeRegistry)
    keeper.registry.push(f"{UP}/node:15-alpine", "red")
    other = GateRecord(
        id=new_record_id(),
        rule="other",
        source=f"{UP}/other:1",
        digest="sha256:" + "3" * 64,
        target=f"{ART}/node",
        state=State.VALIDATING,
    )
    keeper.ledger.add(other)
    notes: list[tuple[str, str]] = []
    keeper = replace(
        keeper,
        validator=FakeValidator(decide=lambda request: Outcome.REJECTED),
        notify=lambda event, _record, message: notes.append((event, message)),
    )

    gate_image(keeper, f"{UP}/node:15-alpine")

    assert stager.unstaged == []
    [said] = [message for event, message in notes if event == "unstaged"]
    assert "2 left for the registry's garbage collection" in said
    assert f"another gate of {ART}/node is in progress" in said


def test_a_staging_that_fails_costs_nothing_but_time_the_promotion_copies_as_usual(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keeper, _stager = staged_keeper(tmp_path, fail=True)
    assert isinstance(keeper.registry, FakeRegistry)
    digest = keeper.registry.push(f"{UP}/node:15-alpine", "green")

    with caplog.at_level(logging.WARNING):
        outcome = gate_image(keeper, f"{UP}/node:15-alpine")

    assert outcome.record.state is State.PROMOTED
    assert keeper.registry.tag_of(f"{ART}/node:15-alpine") == digest
    assert "the promotion copies what is missing" in caplog.text


def test_a_lost_lease_stops_the_staging_as_it_stops_a_copy(tmp_path: Path) -> None:
    from gate.domain.ref import ImageRef
    from gate.usecases.staging import Staging

    _keeper, stager = staged_keeper(tmp_path, hold=threading.Event())
    checks: list[int] = []

    def lease_check() -> None:
        checks.append(1)
        raise LeaseLost("record r1 was taken over by another worker; this worker stops")

    source = ImageRef.parse(f"{UP}/node@sha256:" + "4" * 64)
    staging = Staging(stager, source, ImageRef.parse(f"{ART}/node"), lease_check).start()
    staging.keep()  # returns: the staging ended on its own, at its first progress report

    assert isinstance(staging.error, LeaseLost)
    assert checks == [1]
    assert stager.copied_when_done == []  # it never got to the end
