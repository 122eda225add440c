"""Record retention (ledger.keep): old final records go, the ones behind a live tag stay."""

from __future__ import annotations

import json
from copy import replace
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from gate.config.loading import load_config
from gate.domain.records import GateRecord, Outcome, State, new_record_id, utcnow
from gate.domain.ref import ImageRef
from gate.entrypoints import cli
from gate.errors import ConfigError, RegistryUnavailable
from gate.ports import HistoryQuery
from gate.usecases.gating import gate_image
from gate.usecases.keeper import Gatekeeper
from gate.usecases.retention import prune_records
from gate.usecases.rollback import rollback
from tests.fakes import FakeRegistry, FakeValidator, digest_of
from tests.unit.test_service import ART, UP, keeper_with, write_config

LATER = timedelta(days=500)  # past the default 400 days: every record made now is "old" then


def promote(keeper: Gatekeeper, name: str) -> GateRecord:
    registry = keeper.registry
    assert isinstance(registry, FakeRegistry)
    registry.push(f"{UP}/node:15-alpine", name)
    outcome = gate_image(keeper, f"{UP}/node:15-alpine")
    assert outcome.record.state is State.PROMOTED
    return outcome.record


def ids(keeper: Gatekeeper) -> set[str]:
    return {r.id for r in keeper.ledger.history(HistoryQuery(limit=-1))}


def test_old_records_go_but_every_promotion_whose_run_id_tag_is_live_stays(
    tmp_path: Path,
) -> None:
    keeper = keeper_with(tmp_path)
    green = promote(keeper, "green")
    blue = promote(keeper, "blue")
    assert isinstance(keeper.validator, FakeValidator)
    keeper.validator.decide = lambda request: Outcome.REJECTED
    assert isinstance(keeper.registry, FakeRegistry)
    keeper.registry.push(f"{UP}/node:15-alpine", "red")
    red = gate_image(keeper, f"{UP}/node:15-alpine").record

    report = prune_records(keeper, now=utcnow() + LATER)

    assert red.state is State.REJECTED
    assert (report.deleted, report.kept_live, report.errors) == (1, 2, ())
    assert ids(keeper) == {green.id, blue.id}


def test_a_promotion_whose_run_id_tag_was_deleted_goes_unless_the_stable_tag_is_its_digest(
    tmp_path: Path,
) -> None:
    keeper = keeper_with(tmp_path)
    green = promote(keeper, "green")
    blue = promote(keeper, "blue")
    registry = keeper.registry
    assert isinstance(registry, FakeRegistry)
    target = registry.tags[(ART, "node")]
    # a registry retention policy removed both run-ID tags; the stable tag is on blue
    del target[green.target_tags[0]], target[blue.target_tags[0]]

    report = prune_records(keeper, now=utcnow() + LATER)

    assert target["15-alpine"] == blue.digest
    assert (report.deleted, report.kept_live) == (1, 1)
    assert ids(keeper) == {blue.id}


def test_a_rollback_is_kept_while_the_stable_tag_is_where_it_put_it(tmp_path: Path) -> None:
    keeper = keeper_with(tmp_path)
    green = promote(keeper, "green")
    promote(keeper, "blue")
    back = rollback(
        keeper, f"{ART}/node:15-alpine", to=green.digest, reason="blue broke", actor="a"
    )

    kept = prune_records(keeper, now=utcnow() + LATER)
    orange = promote(keeper, "orange")  # the stable tag moves on: the rollback is history now
    assert isinstance(keeper.registry, FakeRegistry)
    for record in keeper.ledger.history(
        HistoryQuery(limit=-1)
    ):  # only the stable tag is left to judge by
        if record.action == "gate":
            del keeper.registry.tags[(ART, "node")][record.target_tags[0]]
    gone = prune_records(keeper, now=utcnow() + LATER)

    assert (kept.deleted, kept.kept_live) == (0, 3)
    assert (gone.deleted, gone.kept_live) == (3, 1)
    assert ids(keeper) == {orange.id}
    assert back.id not in ids(keeper)


def test_records_younger_than_keep_and_records_in_progress_are_never_deleted(
    tmp_path: Path,
) -> None:
    keeper = keeper_with(tmp_path)
    assert isinstance(keeper.registry, FakeRegistry)
    digest = keeper.registry.push(f"{UP}/node:15-alpine", "green")
    young = GateRecord(
        id=new_record_id(),
        rule="node",
        source=f"{UP}/node:15-alpine",
        target=f"{ART}/node",
        digest=digest_of("young"),
        state=State.REJECTED,
    )
    busy = replace(young, id=new_record_id(), digest=digest, state=State.VALIDATING)
    keeper.ledger.add(young)
    keeper.ledger.add(busy)

    now = prune_records(keeper)  # the default 400 days: both are new
    later = prune_records(keeper, now=utcnow() + LATER)

    assert now.deleted == 0
    assert later.deleted == 1
    assert ids(keeper) == {busy.id}


def test_an_unreadable_target_keeps_every_record_of_it_and_says_so(tmp_path: Path) -> None:
    keeper = keeper_with(tmp_path)
    promote(keeper, "green")
    assert isinstance(keeper.registry, FakeRegistry)
    keeper.registry.down = True
    before = ids(keeper)

    report = prune_records(keeper, now=utcnow() + LATER)

    assert report.deleted == 0
    assert report.errors and f"{ART}/node" in report.errors[0]
    assert "kept" in report.errors[0]
    assert ids(keeper) == before


def test_keep_null_keeps_everything_and_keep_is_at_least_a_day(tmp_path: Path) -> None:
    forever = keeper_with(tmp_path, "ledger: {keep: null}\n")
    promote(forever, "green")
    assert isinstance(forever.registry, FakeRegistry)
    forever.registry.tags[(ART, "node")].clear()

    report = prune_records(forever, now=utcnow() + LATER)

    assert report.cutoff is None and report.deleted == 0 and len(ids(forever)) == 1
    assert load_config(write_config(tmp_path)).retention.keep_seconds == 400 * 86400
    with pytest.raises(ConfigError, match=r"ledger\.keep: is 40s: keep records at least 1d"):
        load_config(write_config(tmp_path, extra_rule="ledger: {keep: 40s}\n"))


def test_gate_prune_prints_what_it_did_and_exits_3_when_a_target_is_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keeper = keeper_with(tmp_path)
    green = promote(keeper, "green")
    old = replace(
        green,
        id=new_record_id(),
        created_at=utcnow() - LATER,
        state=State.REJECTED,
        digest=digest_of("old"),
        target_tags=(),
    )
    keeper.ledger.add(old)
    monkeypatch.setattr(cli, "_keeper", lambda config, quiet=False: keeper)

    done = CliRunner().invoke(cli.main, ["prune", "--json"])
    assert isinstance(keeper.registry, FakeRegistry)
    keeper.registry.down = True
    refused = CliRunner().invoke(cli.main, ["prune"])

    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["deleted"] == 1
    assert ids(keeper) == {green.id}
    assert refused.exit_code == 3
    assert "0 record(s)" in refused.stdout and ImageRef.parse(f"{ART}/node").name in refused.stderr


def test_a_failure_to_resolve_is_listed_then_pruned_like_any_failed_record(
    tmp_path: Path,
) -> None:
    keeper = keeper_with(tmp_path)
    registry = keeper.registry
    assert isinstance(registry, FakeRegistry)
    registry.down = True
    with pytest.raises(RegistryUnavailable):
        gate_image(keeper, f"{UP}/node:15-alpine")
    (failed,) = keeper.ledger.history()
    registry.down = False
    config = str(write_config(tmp_path))

    listed = CliRunner().invoke(cli.main, ["history", "--config", config])
    shown = CliRunner().invoke(cli.main, ["show", failed.id, "--config", config])

    assert listed.exit_code == 0 and failed.id[:8] in listed.output
    assert shown.exit_code == 0 and failed.reason[:40] in shown.output
    report = prune_records(keeper, now=utcnow() + LATER)
    assert (report.deleted, report.errors) == (1, ())
    assert ids(keeper) == set()
