"""The load scenario (devstack/load.py), scaled down, on the working tree's host settings: the
deployed functions under a burst with duplicates, task runs longer than today's queue retry
budget and ARM throttling, against the ACR emulator (synthetic runs) and Azurite."""

from __future__ import annotations

from pathlib import Path

from devstack.load import TODAY, AlertConditions, Scenario, run_scenario, working_tree_setting


def test_burst_with_duplicates_gates_each_digest_once_without_poison(tmp_path: Path) -> None:
    # runs of 6 minutes (real time) outlast today's retry budget of 5 x 60 s
    # the lease is 4 min (12 s scaled), not the bench's 1 min (3 s): on a starved test machine a
    # 3 s lease can lapse between heartbeats, and a takeover promotes again; that is the lease's
    # behaviour, not the queue's, which is what this test is about
    scenario = Scenario(
        events=60,
        rules=5,
        instances=4,
        run_seconds=360.0,
        validation_timeout=1080.0,
        lease_seconds=240.0,
    )
    assert scenario.run_seconds > TODAY.queues.retry_budget

    figures = run_scenario(tmp_path, scenario, working_tree_setting())

    assert figures.finished
    assert len(figures.pairs) == scenario.digests and scenario.events > scenario.digests
    assert set(figures.validations) == figures.pairs
    assert set(figures.validations.values()) == {1}  # one validation per (rule, digest)
    assert set(figures.imports) == figures.pairs
    assert set(figures.imports.values()) == {1}  # one promotion (run-ID import) each
    assert figures.poison_messages == 0 and figures.poisoned_records == 0
    assert figures.failed_records == 0
    assert dict(figures.states) == {"promoted": scenario.digests}
    assert (figures.alert_poisoned, figures.alert_rejected_or_failed) == (0, 0)
    assert figures.throttled > 0  # ARM did throttle


def test_alert_conditions_count_the_rows_their_queries_would_return() -> None:
    conditions = AlertConditions.read()
    lines = [
        "dropped malformed event e1: not JSON",
        'GATE_DECISION {"verdict": "failed", "duplicate": false, "reason": "poisoned: x"}',
        'GATE_DECISION {"verdict": "failed", "duplicate": true, "reason": "boom"}',
        'GATE_DECISION {"verdict": "rejected", "duplicate": false, "reason": "red"}',
        'GATE_DECISION {"verdict": "promoted", "duplicate": false, "reason": ""}',
        "queued event e2: x",
    ]

    assert conditions.rows(lines) == (2, 2)
