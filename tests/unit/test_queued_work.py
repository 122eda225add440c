"""Queued work under load: a duplicate of a held claim is put off (never failed into the poison
queue), a poisoned request leaves a claimed or decided record alone, the poll skips held claims,
and host.json's retry budget is checked against the configuration."""

from __future__ import annotations

import json
import math
from datetime import timedelta
from pathlib import Path

import pytest

from gate.config.loading import load_config
from gate.domain.records import GateRecord, State, new_record_id, utcnow
from gate.entrypoints.messages import GateRequest
from gate.entrypoints.worker import Postponed, handle, poisoned, poll
from gate.errors import QueueError
from gate.usecases.gating import gate_image
from gate.usecases.keeper import Gatekeeper
from gate.usecases.polling import poll_upstreams
from gate.usecases.queueing import (
    HostQueueBudget,
    budget_needed,
    budget_problem,
    postpone_delay,
    postponement_limit,
    work_seconds,
)
from tests.fakes import FakeRequestQueue
from tests.unit.test_service import ART, UP, fakes, keeper_with

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def keeper(tmp_path: Path) -> Gatekeeper:
    return keeper_with(tmp_path)


def hold(
    keeper: Gatekeeper, digest: str, *, lease: float = 600, age: float = 0, holder: str = "busy"
) -> GateRecord:
    """A record of (node, digest) that a live worker holds for ``lease`` more seconds."""
    record = GateRecord(
        id=new_record_id(),
        rule="node",
        source=f"{UP}/node:15-alpine",
        target=f"{ART}/node",
        digest=digest,
        created_at=utcnow() - timedelta(seconds=age),
    )
    claim = keeper.ledger.claim(record, force=False, lease_seconds=lease, holder=holder)
    assert claim.acquired
    keeper.ledger.save(claim.record.advance(State.VALIDATING, run_id="run-of-the-busy"))
    return keeper.ledger.get(record.id)


def pinned(digest: str) -> str:
    return f"{UP}/node:15-alpine@{digest}"


# -- a duplicate is put off, never failed --------------------------------------------------------


def test_a_request_for_a_held_digest_is_put_back_with_a_delay_not_raised(
    keeper: Gatekeeper,
) -> None:
    registry, validator = fakes(keeper)
    digest = registry.push(f"{UP}/node:15-alpine", "green")
    holder = hold(keeper, digest)
    queue = FakeRequestQueue()

    done = handle(keeper, GateRequest(image=pinned(digest)), queue=queue, wait_seconds=0)

    assert isinstance(done, Postponed) and done.holder.id == holder.id
    assert done.requeued == GateRequest(image=pinned(digest), postponed=1)
    [(body, delay)] = queue.sent
    assert GateRequest.from_json(body) == done.requeued and delay == done.delay_seconds
    assert validator.requests == [] and registry.copies == []
    # nothing is recorded for the duplicate: the holder's record is the only one, unchanged
    assert keeper.ledger.history() == [keeper.ledger.get(holder.id)]
    assert keeper.ledger.get(holder.id).state is State.VALIDATING


def test_an_admitted_record_another_worker_holds_is_put_back_too(keeper: Gatekeeper) -> None:
    registry, _ = fakes(keeper)
    digest = registry.push(f"{UP}/node:15-alpine", "green")
    holder = hold(keeper, digest)
    queue = FakeRequestQueue()

    done = handle(
        keeper, GateRequest(record_id=holder.id, trigger="http"), queue=queue, wait_seconds=0
    )

    assert isinstance(done, Postponed) and done.requeued is not None
    assert done.requeued.record_id == holder.id and done.requeued.postponed == 1
    assert len(queue.sent) == 1


def test_postponements_are_bounded_then_the_request_is_settled_as_a_duplicate(
    keeper: Gatekeeper,
) -> None:
    registry, validator = fakes(keeper)
    digest = registry.push(f"{UP}/node:15-alpine", "green")
    holder = hold(keeper, digest, lease=3600)
    queue = FakeRequestQueue()
    body = GateRequest(image=pinned(digest), trigger="event").to_json()
    limit = postponement_limit(keeper.config)

    rounds = 0
    while True:
        done = handle(keeper, GateRequest.from_json(body), queue=queue, wait_seconds=0)
        assert isinstance(done, Postponed)
        if done.requeued is None:
            break
        rounds += 1
        body = queue.sent[-1][0]
        assert rounds <= limit, "postponed past its bound"

    assert rounds == limit == len(queue.sent)
    assert done.holder.id == holder.id and validator.requests == []
    assert [r.id for r in keeper.ledger.history()] == [holder.id]
    # the bound covers the longest holder twice over, a lease at least per postponement
    assert limit * keeper.config.lease.seconds >= 2 * budget_needed(keeper.config)


def test_without_a_queue_a_held_duplicate_is_settled_at_once(keeper: Gatekeeper) -> None:
    registry, _ = fakes(keeper)
    digest = registry.push(f"{UP}/node:15-alpine", "green")
    holder = hold(keeper, digest)

    done = handle(keeper, GateRequest(image=pinned(digest)), wait_seconds=0)

    assert done == Postponed(keeper.ledger.get(holder.id))


def test_a_queue_that_cannot_be_written_hands_the_delivery_back(keeper: Gatekeeper) -> None:
    registry, _ = fakes(keeper)
    digest = registry.push(f"{UP}/node:15-alpine", "green")
    hold(keeper, digest)

    with pytest.raises(QueueError) as raised:
        handle(
            keeper,
            GateRequest(image=pinned(digest)),
            queue=FakeRequestQueue(down=True),
            wait_seconds=0,
        )

    # retryable: the host puts the delivered message back, so the request is not lost
    assert raised.value.retryable


def test_the_delay_waits_for_a_fresh_holder_and_a_lease_for_an_overdue_one(
    keeper: Gatekeeper,
) -> None:
    registry, _ = fakes(keeper)
    digest = registry.push(f"{UP}/node:15-alpine", "green")
    rule = keeper.config.rules[0]
    longest = work_seconds(keeper.config, rule)
    lease = keeper.config.lease.seconds

    fresh = hold(keeper, digest, lease=lease)
    overdue = replace_times(fresh, age=longest + 600, lease_left=20)

    # a holder that just started: until it should be done
    assert postpone_delay(keeper, rule, fresh) == pytest.approx(longest, abs=2)
    # a holder past its time: one lease (its lease lapses sooner, then it is taken over)
    assert postpone_delay(keeper, rule, overdue) == lease
    # a holder whose lease runs long: until it lapses, at most the whole work time
    long_lease = replace_times(fresh, age=longest + 600, lease_left=longest * 3)
    assert postpone_delay(keeper, rule, long_lease) == longest
    assert longest == rule.validation.timeout_seconds + lease + 300


def replace_times(record: GateRecord, *, age: float, lease_left: float) -> GateRecord:
    from copy import replace

    now = utcnow()
    return replace(
        record,
        created_at=now - timedelta(seconds=age),
        lease_until=now + timedelta(seconds=lease_left),
    )


def test_a_message_without_the_counter_still_parses_and_counts_from_zero() -> None:
    old = GateRequest.from_json('{"image": "example.io/node:15", "trigger": "event"}')

    assert old.postponed == 0 and "postponed" not in old.to_json()
    assert json.loads(GateRequest(image="a", postponed=3).to_json())["postponed"] == 3


# -- the poison queue leaves claimed and decided records alone -----------------------------------


def test_a_poisoned_image_request_returns_the_held_record_and_adds_nothing(
    keeper: Gatekeeper,
) -> None:
    registry, _ = fakes(keeper)
    digest = registry.push(f"{UP}/node:15-alpine", "green")
    holder = hold(keeper, digest)

    left = poisoned(keeper, GateRequest(image=pinned(digest)), "gave up")

    assert left.id == holder.id and left.state is State.VALIDATING
    assert [r.id for r in keeper.ledger.history()] == [holder.id]


def test_a_poisoned_image_request_returns_the_decided_record(keeper: Gatekeeper) -> None:
    registry, _ = fakes(keeper)
    digest = registry.push(f"{UP}/node:15-alpine", "green")
    promoted = gate_image(keeper, f"{UP}/node:15-alpine").record

    left = poisoned(keeper, GateRequest(image=pinned(digest)), "gave up")

    assert left.id == promoted.id and left.state is State.PROMOTED
    assert len(keeper.ledger.history()) == 1


def test_a_poisoned_image_request_returns_a_validated_record_left_for_its_promotion(
    keeper: Gatekeeper,
) -> None:
    registry, validator = fakes(keeper)
    digest = registry.push(f"{UP}/node:15-alpine", "green")
    validator.during = lambda request: setattr(registry, "down", True)
    kept = gate_image(keeper, f"{UP}/node:15-alpine").record
    # passed, its promotion failed, its lease given up: claimed, held by none
    stored = keeper.ledger.get(kept.id)
    assert stored.state is State.VALIDATED and not stored.lease_live(utcnow(), 60)

    left = poisoned(keeper, GateRequest(image=pinned(digest)), "gave up")

    assert left.id == kept.id and keeper.ledger.get(kept.id).state is State.VALIDATED


def test_a_poisoned_request_for_an_untouched_digest_is_recorded_as_failed(
    keeper: Gatekeeper,
) -> None:
    registry, _ = fakes(keeper)
    digest = registry.push(f"{UP}/node:15-alpine", "green")

    failed = poisoned(keeper, GateRequest(image=pinned(digest)), "gave up")

    assert failed.state is State.FAILED and failed.reason == "poisoned: gave up"
    assert failed.digest == digest and keeper.ledger.history() == [failed]


# -- the poll skips held claims ----------------------------------------------------------------


def test_the_poll_skips_a_digest_whose_claim_is_held_and_queues_it_once_the_lease_lapses(
    keeper: Gatekeeper,
) -> None:
    registry, _ = fakes(keeper)
    digest = registry.push(f"{UP}/node:15-alpine", "green")
    holder = hold(keeper, digest, holder="busy")

    requests, errors = poll(keeper)
    [item] = poll_upstreams(keeper)

    assert requests == [] and errors == []
    assert item.digest == digest and item.skipped == f"held by record {holder.id} (validating)"

    # its worker died: the lease lapses and the next poll queues the digest to take it over
    assert keeper.ledger.renew(holder.id, "busy", utcnow() - timedelta(seconds=1))
    requests, errors = poll(keeper)
    assert requests == [GateRequest(image=pinned(digest), trigger="poll")] and errors == []


# -- host.json's retry budget ------------------------------------------------------------------


def host(visibility: str, deliveries: int) -> dict[str, object]:
    return {
        "extensions": {"queues": {"visibilityTimeout": visibility, "maxDequeueCount": deliveries}}
    }


def test_the_budget_check_refuses_a_host_json_shorter_than_the_longest_validation(
    keeper: Gatekeeper,
) -> None:
    needed = budget_needed(keeper.config)

    # the host.json this gate shipped before: 60 s x (5 - 1) retries, under one validation
    said = budget_problem(host("00:01:00", 5), keeper.config)

    assert needed == 600 + keeper.config.lease.seconds + 300
    assert "240 s" in said and f"{needed:g} s (rule 'node')" in said
    assert f"at least {math.ceil(needed / 4)} s" in said
    assert budget_problem(host("00:04:00", 5), keeper.config) == ""
    assert HostQueueBudget.from_host_json({}).seconds == 0  # the host's defaults: no delay


def test_a_visibility_timeout_that_is_no_timespan_is_refused() -> None:
    from gate.errors import ConfigError

    with pytest.raises(ConfigError, match="is not hh:mm:ss"):
        HostQueueBudget.from_host_json(host("ten minutes", 5))


@pytest.mark.parametrize("example", ["seed", "platforms", "policy"])
def test_the_shipped_host_json_covers_every_example_configuration(
    example: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GATE_UPSTREAM", "127.0.0.1:5001")
    monkeypatch.setenv("GATE_TARGET", "127.0.0.1:5002")
    config = load_config(ROOT / "examples" / example / "gate.yaml")
    shipped = json.loads((ROOT / "host.json").read_text())

    assert budget_problem(shipped, config) == ""
    # the worker puts requests back base64-encoded, as host.json tells the trigger to read them
    assert shipped["extensions"]["queues"]["messageEncoding"] == "base64"


def test_config_check_refuses_a_host_json_whose_retries_are_too_short(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from gate.entrypoints.cli import main
    from tests.unit.test_service import write_config

    config = write_config(tmp_path)
    short = tmp_path / "host.json"
    short.write_text(json.dumps(host("00:01:00", 5)))

    refused = CliRunner().invoke(main, ["config", "check", str(config), "--host-json", str(short)])
    passed = CliRunner().invoke(
        main, ["config", "check", str(config), "--host-json", str(ROOT / "host.json")]
    )

    assert refused.exit_code == 2 and "retries a failing gate request for 240 s" in refused.output
    assert "raise extensions.queues.visibilityTimeout to at least 240 s" in refused.output
    assert passed.exit_code == 0, passed.output
    assert "queue retries cover the longest validation (960 s)" in passed.output


def test_the_function_app_logs_a_host_json_too_short_for_its_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import function_app
    from tests.unit.test_service import write_config

    config = load_config(write_config(tmp_path))
    (tmp_path / "host.json").write_text(json.dumps(host("00:01:00", 5)))
    monkeypatch.setattr(function_app, "HERE", tmp_path)
    monkeypatch.setattr(function_app, "config", lambda: config)

    with caplog.at_level(logging.ERROR):
        function_app._check_queue_budget()

    [line] = [r.getMessage() for r in caplog.records if "queue retry budget" in r.getMessage()]
    assert "host.json retries a failing gate request for 240 s" in line
