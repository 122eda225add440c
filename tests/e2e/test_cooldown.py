"""A rule's cooldown: a young digest is validated at once but promoted only once old enough and
still the upstream tag's digest; one the tag moved away from is superseded, never promoted.

Service-level tests run over fakes of the ports, the real SQLite ledger and a clock the test
moves; the last test runs the real CLI against real registries and podman.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from copy import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devstack.azurite import AzuriteProcess
from devstack.configs import empty_task_gate_yaml
from devstack.images import ImageBuilder
from devstack.registry import RegistryProcess
from gate.adapters.ledger.sqlite import SqliteLedger
from gate.adapters.ledger.table import TableLedger
from gate.config.loading import load_config
from gate.domain.records import State
from gate.entrypoints import http_api
from gate.entrypoints.messages import GateRequest
from gate.entrypoints.render import history_table
from gate.entrypoints.worker import handle, poll
from gate.errors import ConfigError
from gate.ports import HistoryQuery
from gate.usecases.gating import gate_image, gate_record
from gate.usecases.keeper import Gatekeeper
from gate.usecases.watch import watch_once
from tests.e2e.test_end_to_end import gate_cli, push, tags_of, validation_starts
from tests.fakes import FakeRegistry, FakeSecrets, FakeValidator

UP = "upstream.example.com"
ART = "artifacts.example.com"
TAG = f"{UP}/node:15-alpine"
ROOT = Path(__file__).resolve().parents[2]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def write_config(tmp_path: Path, cooldown: str = "6h", top: tuple[str, ...] = ()) -> Path:
    return empty_task_gate_yaml(tmp_path, UP, ART, rule=[f"cooldown: {cooldown}"], top=top)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keeper(tmp_path: Path, clock: Clock) -> Gatekeeper:
    config = load_config(write_config(tmp_path))
    return Gatekeeper(
        config=config,
        registry=FakeRegistry(),
        validator=FakeValidator(),
        ledger=SqliteLedger(config.data_dir / "gate.db"),
        secrets=FakeSecrets({}),
        clock=clock,
    )


def fakes(keeper: Gatekeeper) -> tuple[FakeRegistry, FakeValidator]:
    assert isinstance(keeper.registry, FakeRegistry)
    assert isinstance(keeper.validator, FakeValidator)
    return keeper.registry, keeper.validator


def promoted_writes(registry: FakeRegistry) -> list[tuple[str, str, str]]:
    return [w for w in registry.writes if w[0] == f"{ART}/node"]


def test_cooldown_is_read_as_a_duration(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path, "6h")).rules[0].cooldown_seconds == 6 * 3600
    assert load_config(write_config(tmp_path, "30m")).rules[0].cooldown_seconds == 1800
    assert load_config(write_config(tmp_path, "2d")).rules[0].cooldown_seconds == 2 * 86400


def test_rule_without_cooldown_has_none(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("    cooldown: 6h\n", ""))

    assert load_config(path).rules[0].cooldown_seconds == 0


@pytest.mark.parametrize("bad", ["6 hours", "6", "-1h", "1.5h", "6H"])
def test_cooldown_that_is_not_a_duration_is_refused_naming_the_field(
    tmp_path: Path, bad: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, json.dumps(bad)))

    assert "cooldown" in caught.value.message and "gate.yaml" in caught.value.message


def test_young_digest_is_validated_but_waits_with_its_eligible_time(
    keeper: Gatekeeper, clock: Clock
) -> None:
    registry, validator = fakes(keeper)
    digest = registry.push(TAG, "green")

    outcome = gate_image(keeper, TAG)

    record = keeper.ledger.get(outcome.record.id)
    assert record.state is State.WAITING and outcome.exit_code == 3
    assert record.digest == digest and record.run_id == "run1"
    assert len(validator.requests) == 1
    assert record.first_seen == clock.now
    assert record.eligible_at == clock.now + timedelta(hours=6)
    assert promoted_writes(registry) == []
    assert "cooldown 6h" in record.reason and "run1 passed" in record.reason
    assert not record.lease_live(datetime.now(UTC), 60)  # gives its lease up: the next poll acts


def test_watch_after_the_cooldown_promotes_without_validating_again(
    keeper: Gatekeeper, clock: Clock
) -> None:
    registry, validator = fakes(keeper)
    digest = registry.push(TAG, "green")
    waiting = gate_image(keeper, TAG).record

    clock.advance(hours=5, minutes=59)
    early = watch_once(keeper)
    assert [i.outcome.record.state for i in early if i.outcome] == [State.WAITING]
    assert promoted_writes(registry) == []

    clock.advance(minutes=1)
    (item,) = watch_once(keeper)

    assert item.outcome is not None
    record = item.outcome.record
    assert record.id == waiting.id and record.state is State.PROMOTED
    assert len(validator.requests) == 1  # the pass from before the cooldown is the one used
    assert promoted_writes(registry) == [
        (f"{ART}/node", "15-alpine-run1", digest),
        (f"{ART}/node", "15-alpine", digest),
    ]
    assert "cooldown (6h) passed" in record.reason
    assert keeper.ledger.get(record.id).state is State.PROMOTED


def test_digest_the_tag_moved_away_from_is_superseded_and_never_promoted(
    keeper: Gatekeeper, clock: Clock
) -> None:
    registry, validator = fakes(keeper)
    first = registry.push(TAG, "green")
    old = gate_image(keeper, TAG).record
    clock.advance(hours=1)
    second = registry.push(TAG, "blue")

    items = watch_once(keeper)

    by_digest = {i.digest: i.outcome.record for i in items if i.outcome}
    assert by_digest[first].id == old.id and by_digest[first].state is State.SUPERSEDED
    assert by_digest[second].state is State.WAITING
    assert by_digest[second].eligible_at == clock.now + timedelta(hours=6)
    assert f"moved on to {second}" in keeper.ledger.get(old.id).reason
    assert len(validator.requests) == 2

    clock.advance(hours=7)
    watch_once(keeper)
    again = gate_image(keeper, f"{UP}/node@{first}")

    assert promoted_writes(registry) == [
        (f"{ART}/node", "15-alpine-run2", second),
        (f"{ART}/node", "15-alpine", second),
    ]
    assert again.duplicate and again.record.state is State.SUPERSEDED
    assert len(validator.requests) == 2


def test_digest_pulled_back_upstream_after_its_cooldown_is_superseded(
    keeper: Gatekeeper, clock: Clock
) -> None:
    registry, _validator = fakes(keeper)
    registry.push(TAG, "green")
    waiting = gate_image(keeper, TAG).record
    registry.push(TAG, "blue")  # the push was pulled back: the tag names another digest

    clock.advance(hours=6)
    outcome = gate_record(keeper, waiting.id)

    assert outcome.record.state is State.SUPERSEDED
    assert promoted_writes(registry) == []


def test_redelivered_request_keeps_the_first_sighting(keeper: Gatekeeper, clock: Clock) -> None:
    registry, validator = fakes(keeper)
    registry.push(TAG, "green")
    first = gate_image(keeper, TAG, trigger="event").record
    seen = clock.now

    clock.advance(hours=2)
    again = gate_image(keeper, TAG, trigger="event").record

    assert again.id == first.id and again.state is State.WAITING
    assert again.first_seen == seen and again.eligible_at == seen + timedelta(hours=6)
    assert len(validator.requests) == 1


def test_force_skips_the_cooldown_and_says_so(keeper: Gatekeeper) -> None:
    registry, _validator = fakes(keeper)
    digest = registry.push(TAG, "green")

    outcome = gate_image(keeper, TAG, force=True)

    assert outcome.record.state is State.PROMOTED and outcome.record.forced
    assert "cooldown (6h) skipped: forced" in outcome.record.reason
    assert registry.tag_of(f"{ART}/node:15-alpine") == digest


def test_forcing_a_waiting_digest_promotes_it_without_validating_again(
    keeper: Gatekeeper,
) -> None:
    registry, validator = fakes(keeper)
    digest = registry.push(TAG, "green")
    waiting = gate_image(keeper, TAG).record

    outcome = gate_image(keeper, TAG, force=True)

    assert outcome.record.id == waiting.id and outcome.record.state is State.PROMOTED
    assert outcome.record.forced and "skipped: forced" in outcome.record.reason
    assert len(validator.requests) == 1
    assert registry.tag_of(f"{ART}/node:15-alpine") == digest


def test_http_lists_a_waiting_digest_and_force_true_promotes_it(
    keeper: Gatekeeper, clock: Clock
) -> None:
    registry, validator = fakes(keeper)
    registry.push(TAG, "green")
    waiting = gate_image(keeper, TAG).record

    listed = http_api.list_gates(keeper, {"state": "waiting"}, page_size=50)
    assert listed.status == 200
    (shown,) = listed.body["records"]
    assert shown["id"] == waiting.id
    assert shown["eligible_at"] == (clock.now + timedelta(hours=6)).isoformat()
    assert shown["first_seen"] == clock.now.isoformat()

    body = json.dumps({"image": TAG, "force": True}).encode()
    answer, queued = http_api.post_gate(keeper, body, max_body_bytes=4096)
    assert answer.status == 202 and queued is not None and queued.record_id == waiting.id
    outcome = handle(keeper, queued)

    assert outcome.record.state is State.PROMOTED and len(validator.requests) == 1
    assert "cooldown (6h) skipped: forced" in outcome.record.reason


def test_queue_worker_returns_a_waiting_digest_without_retrying(keeper: Gatekeeper) -> None:
    registry, _validator = fakes(keeper)
    registry.push(TAG, "green")
    began = time.monotonic()

    outcome = handle(keeper, GateRequest(image=TAG, trigger="event"), wait_seconds=5)

    assert outcome.record.state is State.WAITING
    assert time.monotonic() - began < 5  # no worker sits out a cooldown


def test_timer_queues_waiting_digests_once_their_cooldown_ended(
    keeper: Gatekeeper, clock: Clock
) -> None:
    registry, validator = fakes(keeper)
    first = registry.push(TAG, "green")
    waiting = handle(keeper, GateRequest(image=TAG, trigger="event")).record
    registry.push(TAG, "blue")

    before, _ = poll(keeper)
    clock.advance(hours=6)
    after, errors = poll(keeper)

    assert all(r.record_id is None for r in before)  # nothing due yet: only the new digest
    due = [r for r in after if r.record_id]
    assert errors == [] and [r.record_id for r in due] == [waiting.id]
    outcome = handle(keeper, due[0])
    assert outcome.record.state is State.SUPERSEDED and outcome.record.digest == first
    assert len(validator.requests) == 1


def test_history_shows_when_a_waiting_digest_becomes_eligible(
    keeper: Gatekeeper, clock: Clock
) -> None:
    registry, _validator = fakes(keeper)
    registry.push(TAG, "green")
    gate_image(keeper, TAG)

    (record,) = keeper.ledger.history()
    table = history_table([record])
    verdicts = [str(cell) for cell in table.columns[4].cells]

    eligible = (clock.now + timedelta(hours=6)).strftime("%m-%d %H:%M:%S")
    assert verdicts == [f"waiting until {eligible}"]
    assert record.to_dict()["eligible_at"] == (clock.now + timedelta(hours=6)).isoformat()


def test_pass_waiting_longer_than_fresh_for_is_still_promoted_once(
    tmp_path: Path, clock: Clock
) -> None:
    config = load_config(write_config(tmp_path, top=("validation_fresh_for: 3600",)))
    keeper = Gatekeeper(
        config=config,
        registry=FakeRegistry(),
        validator=FakeValidator(),
        ledger=SqliteLedger(config.data_dir / "gate.db"),
        secrets=FakeSecrets({}),
        clock=clock,
    )
    registry, validator = fakes(keeper)
    registry.push(TAG, "green")
    clock.now = datetime.now(UTC)
    waiting = gate_image(keeper, TAG).record
    # the pass is older than validation_fresh_for (1h), but its cooldown ended just now: the
    # freshness of a held-back pass counts from its eligible time
    clock.advance(hours=6)
    stale = replace(
        keeper.ledger.get(waiting.id),
        validated_at=datetime.now(UTC) - timedelta(hours=2),
        eligible_at=datetime.now(UTC) - timedelta(minutes=1),
    )
    keeper.ledger.save(stale)

    outcome = gate_record(keeper, waiting.id)

    assert outcome.record.state is State.PROMOTED and len(validator.requests) == 1


@pytest.mark.parametrize("store", ["sqlite", "table"])
def test_waiting_and_superseded_records_live_in_either_ledger(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Clock, store: str
) -> None:
    from tests.integration.test_ledger_contract import TableStore

    config = load_config(write_config(tmp_path))
    ledger = (
        SqliteLedger(config.data_dir / "gate.db")
        if store == "sqlite"
        else TableStore(request.getfixturevalue("azurite")).open()
    )
    if isinstance(ledger, TableLedger):
        request.addfinalizer(ledger.close)
    keeper = Gatekeeper(
        config=config,
        registry=FakeRegistry(),
        validator=FakeValidator(),
        ledger=ledger,
        secrets=FakeSecrets({}),
        clock=clock,
    )
    registry, validator = fakes(keeper)
    first = registry.push(TAG, "green")
    old = gate_image(keeper, TAG).record
    stored = keeper.ledger.get(old.id)
    assert stored.state is State.WAITING and stored.first_seen == clock.now
    assert stored.eligible_at == clock.now + timedelta(hours=6)
    assert [r.id for r in keeper.ledger.history(HistoryQuery(state=State.WAITING))] == [old.id]

    registry.push(TAG, "blue")
    clock.advance(hours=7)
    watch_once(keeper)  # the new digest waits; the old one is superseded
    clock.advance(hours=7)
    watch_once(keeper)  # the new one is promoted

    assert keeper.ledger.get(old.id).state is State.SUPERSEDED
    assert keeper.ledger.history(HistoryQuery(state=State.WAITING)) == []
    again = gate_image(keeper, f"{UP}/node@{first}")
    assert again.duplicate and again.record.id == old.id
    assert [r.state for r in keeper.ledger.history()] == [
        State.PROMOTED,
        State.SUPERSEDED,
    ]
    assert len(validator.requests) == 2


# --- the real thing: registries, podman, the CLI ---------------------------------------------


def cooling_config(
    tmp_path: Path, upstream: RegistryProcess, target: RegistryProcess, cooldown: str
) -> Path:
    """The end-to-end tests' gate.yaml, its rule held back by ``cooldown``."""
    from tests.e2e.test_end_to_end import write_config

    return write_config(tmp_path, upstream.host, target.host, rule=[f"cooldown: {cooldown}"])


@pytest.mark.usefixtures("podman_env")
def test_cli_waits_out_a_cooldown_then_watch_promotes_and_never_a_superseded_digest(
    tmp_path: Path,
    registries: tuple[RegistryProcess, RegistryProcess],
    image_builder: ImageBuilder,
) -> None:
    upstream, target = registries
    config = cooling_config(tmp_path, upstream, target, "4s")
    since = datetime.now(UTC).isoformat()

    blue = push(image_builder, upstream, "Blue")
    first = gate_cli("watch", "--once", config=config)
    assert first.returncode == 0, first.stderr
    assert "WAITING" in first.stdout and "15-alpine" not in tags_of(target)
    green = push(image_builder, upstream, "Green")  # blue is pulled back during its cooldown
    second = gate_cli("watch", "--once", config=config)
    assert second.returncode == 1, second.stderr  # not promoted, as a rejection: exit 1
    assert "SUPERSEDED" in second.stdout and "WAITING" in second.stdout
    assert "15-alpine" not in tags_of(target)

    time.sleep(4.5)
    third = gate_cli("watch", "--once", config=config)

    assert third.returncode == 0, third.stderr
    assert "PROMOTED" in third.stdout
    assert tags_of(target)["15-alpine"] == green
    assert blue not in tags_of(target).values()
    history = [
        json.loads(line)
        for line in gate_cli("history", "--json", config=config).stdout.splitlines()
    ]
    states = {r["digest"]: r["state"] for r in history}
    assert states == {blue: "superseded", green: "promoted"}
    assert len(validation_starts(since)) == 2  # one validation per digest, none after the wait
    shown = gate_cli("history", config=config).stdout
    assert "superseded" in shown


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteProcess]:
    """This module's own Azurite: the app's queue names are fixed, so they are not shared."""
    with AzuriteProcess(tmp_path_factory.mktemp("azurite")) as process:
        yield process


def test_functions_timer_promotes_after_the_cooldown_and_never_a_superseded_digest(
    tmp_path: Path,
    registries: tuple[RegistryProcess, RegistryProcess],
    image_builder: ImageBuilder,
    podman_env: dict[str, str],
    storage: AzuriteProcess,
) -> None:
    from tests.e2e.test_functions_worker import booted_app
    from tests.functions_host.payloads import timer

    upstream, target = registries
    config = cooling_config(tmp_path, upstream, target, "5s")

    with booted_app(config, storage) as (host, queues, ledger):

        def tick() -> list[str]:
            invocation = host.invoke("watch", timer())
            assert invocation.ok, invocation.error
            queued = queues.put(invocation, "requests")
            delivered = queues.deliver(host, "gate_worker")
            assert [d.ok for d in delivered] == [True] * len(queued), [d.error for d in delivered]
            return queued

        blue = push(image_builder, upstream, "Blue")
        tick()
        (waiting,) = ledger.history()
        assert waiting.state is State.WAITING and waiting.digest == blue
        green = push(image_builder, upstream, "Green")  # blue is pulled back upstream
        tick()
        assert "15-alpine" not in tags_of(target)

        time.sleep(5.5)
        tick()
        queues_left = queues.peek("gate-requests") + queues.peek("gate-requests-poison")

    states = {r.digest: r.state for r in ledger.history()}
    assert states == {blue: State.SUPERSEDED, green: State.PROMOTED}
    assert tags_of(target)["15-alpine"] == green
    assert queues_left == []  # nothing retried, nothing poisoned: no worker sat out a cooldown


def test_policy_example_loads_with_its_cooldown() -> None:
    config = load_config(ROOT / "examples" / "policy" / "gate.yaml", env={})

    (rule,) = [r for r in config.rules if r.cooldown_seconds]
    assert rule.cooldown_seconds == 6 * 3600
