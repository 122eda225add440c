"""The Ledger port's behaviour, checked on both ledgers: SQLite and Azure Table Storage (Azurite).

The shared tests take ``open_ledger``, which opens (another handle on) the same store each time it
is called. The Table-specific tests below them race real workers against one Azurite.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from copy import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from azure.core.credentials import AccessToken
from azure.data.tables import TableServiceClient, UpdateMode
from azure.storage.blob import ContainerClient

from devstack.azurite import AzuriteProcess
from devstack.ledgers import fill_table
from devstack.registry import free_port
from gate.adapters.ledger.sqlite import SqliteLedger
from gate.adapters.ledger.table import TableLedger
from gate.adapters.ledger.table_base import _blob_endpoint_for
from gate.adapters.ledger.table_keys import _descending, _listing_keys, _record_key
from gate.domain.records import (
    Claim,
    DownstreamRun,
    GateRecord,
    LeaseLost,
    State,
    new_record_id,
    utcnow,
)
from gate.errors import ConfigError, LedgerError, NotFound
from gate.ports import HistoryQuery, Ledger

OpenLedger = Callable[[], Ledger]
STALE = 600.0
T0 = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)


def digest_of(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


DIGEST = digest_of("node:15-alpine")


def gate_record(
    record_id: str | None = None, *, rule: str = "node", digest: str = DIGEST, **changes: object
) -> GateRecord:
    record = GateRecord(
        id=record_id or new_record_id(),
        rule=rule,
        source="upstream.example.com/node:15-alpine",
        target="artifacts.example.com/node",
        digest=digest,
    )
    return replace(record, **changes)  # type: ignore[arg-type]


def claim(ledger: Ledger, record: GateRecord, *, force: bool = False, **kw: object) -> Claim:
    kw.setdefault("holder", "worker-a")
    return ledger.claim(record, force=force, lease_seconds=STALE, **kw)  # type: ignore[arg-type]


class _AnyTime:
    """Equal to any datetime: for a lease expiry the ledger sets from its own clock."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, datetime)

    def __hash__(self) -> int:
        return 0


ANY_TIME: datetime = _AnyTime()  # type: ignore[assignment]


def lapse(ledger: Ledger, record: GateRecord) -> None:
    """Let ``record``'s lease lapse, as when its holder died an hour ago."""
    assert ledger.renew(record.id, record.lease_holder, utcnow() - timedelta(hours=1))


class TableStore:
    """A fresh table and log container in the session's Azurite."""

    def __init__(self, azurite: AzuriteProcess) -> None:
        suffix = uuid.uuid4().hex[:12]
        self.connection_string = azurite.connection_string
        self.table = f"records{suffix}"
        self.container = f"logs-{suffix}"

    def open(self) -> TableLedger:
        return TableLedger(
            connection_string=self.connection_string, table=self.table, log_container=self.container
        )


@pytest.fixture(params=["sqlite", "table"])
def open_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenLedger]:
    """Opens a handle on one ledger store per test: a SQLite file, or a table in Azurite."""
    if request.param == "sqlite":
        yield lambda: SqliteLedger(tmp_path / "gate.db")
        return
    store = TableStore(request.getfixturevalue("azurite"))
    opened: list[TableLedger] = []

    def open_table() -> Ledger:
        opened.append(store.open())
        return opened[-1]

    yield open_table
    for ledger in opened:
        ledger.close()


@pytest.fixture
def ledger(open_ledger: OpenLedger) -> Ledger:
    return open_ledger()


# -- claims --------------------------------------------------------------------------------------


def test_claim_of_a_new_digest_inserts_the_record_and_acquires(ledger: Ledger) -> None:
    record = gate_record()

    before = utcnow()
    result = claim(ledger, record)

    leased = replace(record, attempts=1, lease_holder="worker-a", lease_until=ANY_TIME)
    assert result.acquired and not result.resumed
    assert result.record == leased and ledger.get(record.id) == leased
    assert result.record.lease_until is not None
    assert before + timedelta(seconds=STALE) <= result.record.lease_until
    assert result.record.lease_until <= utcnow() + timedelta(seconds=STALE)


def test_claim_of_a_decided_digest_returns_the_decision_and_inserts_nothing(
    ledger: Ledger,
) -> None:
    first = claim(ledger, gate_record()).record
    ledger.save(first.advance(State.PROMOTED, log="all green"))
    second = gate_record()

    result = claim(ledger, second)

    assert not result.acquired
    assert result.record.id == first.id and result.record.state is State.PROMOTED
    assert result.record.log == "all green"
    with pytest.raises(NotFound):
        ledger.get(second.id)


def test_claim_of_the_same_digest_under_another_rule_is_independent(ledger: Ledger) -> None:
    first = claim(ledger, gate_record()).record
    ledger.save(first.advance(State.PROMOTED))

    result = claim(ledger, gate_record(rule="node-lts"))

    assert result.acquired and result.record.id != first.id


def test_force_skips_a_decision_and_inserts_a_new_record(ledger: Ledger) -> None:
    first = claim(ledger, gate_record()).record
    ledger.save(first.advance(State.REJECTED))
    again = gate_record(forced=True)

    result = claim(ledger, again, force=True)

    assert result.acquired and result.record.id == again.id
    assert {r.id for r in ledger.history()} == {first.id, again.id}


def test_fresh_in_progress_record_blocks_a_claim_even_with_force(ledger: Ledger) -> None:
    first = claim(ledger, gate_record()).record
    ledger.save(first.advance(State.VALIDATING, run_id="run-1"))

    plain = claim(ledger, gate_record())
    forced = claim(ledger, gate_record(), force=True)

    for result in (plain, forced):
        assert not result.acquired
        assert result.record.id == first.id and result.record.run_id == "run-1"
    assert [r.id for r in ledger.history()] == [first.id]


def test_stale_in_progress_record_is_adopted_resumed_and_stamped(ledger: Ledger) -> None:
    first = claim(ledger, gate_record()).record
    ledger.save(first.advance(State.VALIDATING, run_id="run-1"))
    lapse(ledger, first)
    before = utcnow()

    result = claim(ledger, gate_record(), holder="worker-b")

    assert result.acquired and result.resumed and result.record.lease_holder == "worker-b"
    assert result.record.id == first.id and result.record.run_id == "run-1"
    assert result.record.attempts == 2 and result.record.updated_at >= before
    assert ledger.get(first.id).attempts == 2
    assert [r.id for r in ledger.history()] == [first.id]


def test_adopted_record_is_not_adopted_again_while_fresh(ledger: Ledger) -> None:
    first = claim(ledger, gate_record()).record
    ledger.save(first.advance(State.VALIDATING))
    lapse(ledger, first)
    claim(ledger, gate_record(), holder="worker-b")

    result = claim(ledger, gate_record())

    assert not result.acquired and result.record.id == first.id


def test_failed_record_never_blocks_a_new_claim(ledger: Ledger) -> None:
    first = claim(ledger, gate_record()).record
    ledger.save(first.advance(State.FAILED, reason="registry down"))
    retry = gate_record()

    result = claim(ledger, retry)

    assert result.acquired and result.record.id == retry.id


# -- leases ---------------------------------------------------------------------------------------


def test_holder_renews_its_lease_and_the_record_stays_its_own(ledger: Ledger) -> None:
    held = claim(ledger, gate_record()).record
    until = utcnow() + timedelta(minutes=30)

    assert ledger.renew(held.id, "worker-a", until)

    stored = ledger.get(held.id)
    assert stored.lease_holder == "worker-a" and stored.lease_until == until
    assert not claim(ledger, gate_record(), holder="worker-b").acquired


def test_another_worker_cannot_renew_a_lease_it_does_not_hold(ledger: Ledger) -> None:
    held = claim(ledger, gate_record()).record

    assert not ledger.renew(held.id, "worker-b", utcnow() + timedelta(hours=1))
    assert not ledger.renew(held.id, "", utcnow() + timedelta(hours=1))

    assert ledger.get(held.id).lease_until == held.lease_until


def test_a_decided_record_has_no_lease_to_renew(ledger: Ledger) -> None:
    held = claim(ledger, gate_record()).record
    ledger.save(held.advance(State.PROMOTED))

    assert not ledger.renew(held.id, "worker-a", utcnow() + timedelta(hours=1))


def test_renewing_an_unknown_record_is_not_found(ledger: Ledger) -> None:
    with pytest.raises(NotFound):
        ledger.renew("0123456789abcdef0", "worker-a", utcnow())


def test_a_lapsed_lease_is_taken_over_and_the_old_holder_is_fenced_off(ledger: Ledger) -> None:
    held = claim(ledger, gate_record()).record
    validating = held.advance(State.VALIDATING, run_id="run-1")
    ledger.save(validating)
    lapse(ledger, held)

    taken = claim(ledger, gate_record(), holder="worker-b")

    assert taken.acquired and taken.resumed and taken.record.id == held.id
    assert taken.record.lease_holder == "worker-b" and taken.record.attempts == 2
    # the old holder wakes up: it can neither renew nor write a verdict any more
    assert not ledger.renew(held.id, "worker-a", utcnow() + timedelta(minutes=1))
    with pytest.raises(LeaseLost):
        ledger.save(validating.advance(State.PROMOTED))
    assert ledger.get(held.id) == taken.record
    assert ledger.renew(held.id, "worker-b", utcnow() + timedelta(minutes=1))


def test_a_live_lease_is_never_shared_even_with_force(ledger: Ledger) -> None:
    held = claim(ledger, gate_record()).record

    others = [
        claim(ledger, gate_record(), holder="worker-b"),
        claim(ledger, gate_record(), holder="worker-c", force=True),
        claim(ledger, held, holder="worker-d"),  # the same record, asked for by id
    ]

    assert [c.acquired for c in others] == [False, False, False]
    assert ledger.get(held.id).lease_holder == "worker-a"


def test_a_save_never_shortens_the_lease_its_heartbeat_extended(ledger: Ledger) -> None:
    held = claim(ledger, gate_record()).record
    later = utcnow() + timedelta(hours=3)
    assert ledger.renew(held.id, "worker-a", later)

    ledger.save(held.advance(State.VALIDATING))  # carries the lease of the claim, earlier

    stored = ledger.get(held.id)
    assert stored.state is State.VALIDATING and stored.lease_until == later


def test_an_admitted_record_is_queued_for_its_worker_and_taken_over_once_lapsed(
    ledger: Ledger,
) -> None:
    admitted = claim(ledger, gate_record(), start=False, holder="").record
    assert admitted.attempts == 0 and admitted.lease_holder == ""

    blocked = claim(ledger, gate_record(), holder="worker-b")
    taken = claim(ledger, admitted, holder="worker-a")

    assert not blocked.acquired and blocked.record.id == admitted.id
    assert taken.acquired and not taken.resumed and taken.record.lease_holder == "worker-a"
    assert taken.record.attempts == 1
    lapse(ledger, taken.record)
    requeued = claim(ledger, gate_record(), start=False, holder="")
    assert requeued.acquired and requeued.resumed and requeued.record.lease_holder == ""
    again = claim(ledger, admitted, holder="worker-c")
    assert again.acquired and again.resumed and again.record.attempts == 2


def test_a_record_from_before_leases_is_held_for_a_lease_after_its_last_update(
    open_ledger: OpenLedger,
) -> None:
    ledger = open_ledger()
    old = claim(ledger, gate_record()).record
    _drop_from_stored_json(
        ledger, replace(old, state=State.VALIDATING), "lease_holder", "lease_until"
    )

    fresh = claim(open_ledger(), gate_record(), holder="worker-b")
    lapsed = open_ledger().claim(gate_record(), force=False, lease_seconds=0, holder="worker-b")

    assert not fresh.acquired
    assert lapsed.acquired and lapsed.resumed and lapsed.record.id == old.id


def test_failed_forced_retry_leaves_the_earlier_decision_in_force(ledger: Ledger) -> None:
    first = claim(ledger, gate_record()).record
    ledger.save(first.advance(State.PROMOTED))
    forced = claim(ledger, gate_record(created_at=utcnow() + timedelta(seconds=1)), force=True)
    ledger.save(forced.record.advance(State.FAILED))

    result = claim(ledger, gate_record())

    assert forced.acquired
    assert not result.acquired and result.record.id == first.id
    assert result.record.state is State.PROMOTED


def test_admitted_record_waits_for_its_worker_and_is_taken_once(ledger: Ledger) -> None:
    admitted = gate_record()

    received = claim(ledger, admitted, start=False)
    admitted_again = claim(ledger, admitted, start=False)
    other = claim(ledger, gate_record())
    taken = claim(ledger, admitted)
    taken_again = claim(ledger, admitted)

    assert received.acquired and received.record.attempts == 0
    assert not admitted_again.acquired
    assert not other.acquired and other.record.id == admitted.id
    assert taken.acquired and not taken.resumed and taken.record.attempts == 1
    assert not taken_again.acquired
    assert [r.id for r in ledger.history()] == [admitted.id]


def test_record_without_a_digest_is_inserted_without_a_claim(ledger: Ledger) -> None:
    first = claim(ledger, gate_record(digest=None))  # type: ignore[arg-type]
    second = claim(ledger, gate_record(digest=None))  # type: ignore[arg-type]

    assert first.acquired and second.acquired
    assert first.record.id != second.record.id


def test_rollback_record_takes_no_claim(ledger: Ledger) -> None:
    rollback = gate_record(action="rollback", state=State.ROLLED_BACK, attempts=1)

    ledger.add(rollback)
    result = claim(ledger, gate_record())

    assert result.acquired and result.record.id != rollback.id
    assert ledger.get(rollback.id) == rollback


def test_added_gate_record_counts_for_later_claims(ledger: Ledger) -> None:
    decided = gate_record(state=State.PROMOTED, attempts=1)

    ledger.add(decided)
    result = claim(ledger, gate_record())

    assert not result.acquired and result.record.id == decided.id


# -- save, get, decided ----------------------------------------------------------------------------


def test_record_round_trips_every_field(open_ledger: OpenLedger) -> None:
    record = gate_record(
        state=State.PROMOTING,
        trigger="event",
        run_id="cb12",
        reason="passed: 3 steps, ünïcode ✓",
        log="step 1\nstep 2 ✓\n",
        log_location="https://logs.example.com/cb12",
        target_tags=("15-alpine", "15-alpine-cb12"),
        forced=True,
        actor="alice@example.com",
        attempts=1,
        created_at=T0,
        updated_at=T0 + timedelta(minutes=3),
        timings={"resolve": 0.25, "validate": 61.5},
        lease_holder="worker-a",
        lease_until=utcnow() + timedelta(hours=1),
        validated_at=T0 + timedelta(minutes=2),
        promoted_tags=("15-alpine-cb12",),
    )
    claim(open_ledger(), gate_record(record.id, created_at=T0))
    open_ledger().save(record)

    loaded = open_ledger().get(record.id)

    assert loaded.to_dict() == record.to_dict()
    assert loaded.log == record.log


def test_downstream_runs_round_trip_with_the_promotion(open_ledger: OpenLedger) -> None:
    record = claim(open_ledger(), gate_record(created_at=T0)).record
    promoted = record.advance(
        State.PROMOTED,
        target_tags=("15-alpine-cb12", "15-alpine"),
        downstream=(
            DownstreamRun("teamregistry", "hello-world", run_id="cb13"),
            DownstreamRun("teamregistry", "other-app", error="task not found ✗"),
        ),
    )
    open_ledger().save(promoted)

    loaded = open_ledger().get(record.id)

    assert loaded.downstream == promoted.downstream
    assert open_ledger().decided(record.rule, DIGEST) == loaded


def _drop_from_stored_json(ledger: Ledger, record: GateRecord, *keys: str) -> None:
    """Rewrite ``record`` in the store as an older gate wrote it: without ``keys``."""
    data = record.to_dict()
    for key in keys:
        del data[key]
    text = json.dumps(data, sort_keys=True)
    if isinstance(ledger, SqliteLedger):
        with sqlite3.connect(ledger.path) as db:
            db.execute("UPDATE records SET data = ? WHERE id = ?", (text, record.id))
        return
    assert isinstance(ledger, TableLedger)
    table = ledger._table
    entity = table.get_entity("ledger", _record_key(record))
    assert entity["data_parts"] == 1  # a small record: one chunk
    table.update_entity({**entity, "data_0": text})


def test_records_written_before_downstream_runs_read_with_none(open_ledger: OpenLedger) -> None:
    ledger = open_ledger()
    record = claim(ledger, gate_record(created_at=T0)).record
    _drop_from_stored_json(ledger, record, "downstream")

    loaded = open_ledger().get(record.id)

    assert loaded.downstream == () and loaded.id == record.id and loaded.digest == DIGEST


def test_save_of_an_unknown_record_raises_not_found(ledger: Ledger) -> None:
    with pytest.raises(NotFound):
        ledger.save(gate_record())


def test_get_of_an_unknown_id_raises_not_found(ledger: Ledger) -> None:
    claim(ledger, gate_record("0123456789abcdef"))

    with pytest.raises(NotFound, match="gate history"):
        ledger.get("fedcba9876543210")


def test_get_accepts_a_unique_prefix_of_six_characters_or_more(ledger: Ledger) -> None:
    for record_id, digest in (("abcdef01", "a"), ("abcdef02", "b"), ("abc99901", "c")):
        claim(ledger, gate_record(record_id, digest=digest_of(digest)))

    assert ledger.get("abc999").id == "abc99901"
    with pytest.raises(NotFound):
        ledger.get("abcdef")  # two records start with it
    with pytest.raises(NotFound):
        ledger.get("abc99")  # unique, but shorter than six characters


@pytest.mark.parametrize(
    "query", ["%%%%%%", "______", "abc99%", "abc99_", "ABC999", "abc999*", "abc999" + "0" * 50_000]
)
def test_get_treats_ids_as_data_never_as_patterns(ledger: Ledger, query: str) -> None:
    claim(ledger, gate_record("abc99901", digest=digest_of("a")))

    with pytest.raises(NotFound) as caught:
        ledger.get(query)

    assert "6 to 32 lowercase hex" in caught.value.message
    assert len(caught.value.message) < 300  # a 50 KB id is not echoed back


def test_decided_returns_the_newest_promoted_or_rejected_record(ledger: Ledger) -> None:
    assert ledger.decided("node", DIGEST) is None
    first = claim(ledger, gate_record(created_at=T0)).record
    assert ledger.decided("node", DIGEST) is None  # in progress is not decided
    ledger.save(first.advance(State.PROMOTED))
    second = claim(ledger, gate_record(created_at=T0 + timedelta(hours=1)), force=True).record
    ledger.save(second.advance(State.REJECTED, reason="CVE"))

    decided = ledger.decided("node", DIGEST)

    assert decided is not None and decided.id == second.id and decided.reason == "CVE"
    assert ledger.decided("node-lts", DIGEST) is None
    assert ledger.decided("node", digest_of("other")) is None


def test_records_outlive_the_ledger_handle_that_wrote_them(open_ledger: OpenLedger) -> None:
    record = claim(open_ledger(), gate_record()).record

    assert open_ledger().get(record.id) == record


# -- history -------------------------------------------------------------------------------------


def history_fixture(ledger: Ledger) -> list[GateRecord]:
    """Five records a minute apart, oldest first, over two rules and two targets."""
    records = []
    for minute, (rule, target, state) in enumerate(
        [
            ("node", "artifacts.example.com/node", State.PROMOTED),
            ("node", "artifacts.example.com/node", State.REJECTED),
            ("python", "artifacts.example.com/python", State.PROMOTED),
            ("node", "artifacts.example.com/node", State.FAILED),
            ("python", "artifacts.example.com/python", State.VALIDATING),
        ]
    ):
        record = gate_record(
            rule=rule,
            target=target,
            digest=digest_of(f"image-{minute}"),
            created_at=T0 + timedelta(minutes=minute),
        )
        claimed = claim(ledger, record).record
        ledger.save(claimed.advance(state))
        records.append(record)
    return records


def test_history_lists_records_newest_first(ledger: Ledger) -> None:
    records = history_fixture(ledger)

    assert [r.id for r in ledger.history()] == [r.id for r in reversed(records)]
    assert [r.id for r in ledger.history(HistoryQuery(limit=2))] == [records[4].id, records[3].id]


def test_history_filters_by_rule_target_state_and_since(ledger: Ledger) -> None:
    records = history_fixture(ledger)
    ids = [r.id for r in records]

    assert [r.id for r in ledger.history(HistoryQuery(rule="node"))] == [ids[3], ids[1], ids[0]]
    assert [r.id for r in ledger.history(HistoryQuery(target="artifacts.example.com/python"))] == [
        ids[4],
        ids[2],
    ]
    assert [r.id for r in ledger.history(HistoryQuery(state=State.PROMOTED))] == [ids[2], ids[0]]
    assert [r.id for r in ledger.history(HistoryQuery(since=T0 + timedelta(minutes=2)))] == ids[
        :1:-1
    ]
    assert [
        r.id
        for r in ledger.history(HistoryQuery(rule="node", state=State.PROMOTED, since=T0, limit=5))
    ] == [ids[0]]
    assert ledger.history(HistoryQuery(rule="go")) == []


def test_history_pages_with_before(ledger: Ledger) -> None:
    records = history_fixture(ledger)
    ids = [r.id for r in records]

    first_page = ledger.history(HistoryQuery(limit=2))
    second_page = ledger.history(HistoryQuery(before=first_page[-1].created_at, limit=2))
    third_page = ledger.history(HistoryQuery(before=second_page[-1].created_at, limit=2))

    assert [r.id for r in first_page + second_page + third_page] == ids[::-1]
    assert [
        r.id
        for r in ledger.history(
            HistoryQuery(
                since=T0 + timedelta(minutes=1), before=T0 + timedelta(minutes=3), rule="node"
            )
        )
    ] == [ids[1]]


def test_history_orders_records_created_together_by_id_descending(ledger: Ledger) -> None:
    for index, record_id in enumerate(["rec-ab", "rec-b", "rec-abc"]):
        claim(ledger, gate_record(record_id, digest=digest_of(str(index)), created_at=T0))

    assert [r.id for r in ledger.history()] == ["rec-b", "rec-abc", "rec-ab"]


# -- records at scale: filtered listings, retention, duplicate ids ------------------------------

ALICE_OID = "6f1c2c4e-0000-4000-8000-00000000a11c"
NODE_TARGET = "artifacts.example.com/node"
SCALE_STATES = [State.PROMOTED, State.REJECTED, State.FAILED, State.VALIDATING, State.SUPERSEDED]


def many_records(count: int) -> list[GateRecord]:
    """``count`` records a minute apart, oldest first: rules of different sizes (``rare`` holds
    three), two rules sharing a target, every actor form, logs on some."""
    records = []
    for index in range(count):
        if index in (17, count // 2, count - 5):
            rule, target = "rare", "artifacts.example.com/rare"
        elif index % 3 == 0:
            rule, target = "python", "artifacts.example.com/python"
        else:
            rule, target = ("node", NODE_TARGET) if index % 5 else ("node-lts", NODE_TARGET)
        actor, actor_id = [
            ("event-grid", ""),
            ("alice@example.com", ALICE_OID),
            ("timer", ""),
            (None, ""),
        ][index % 4]
        records.append(
            gate_record(
                rule=rule,
                target=target,
                digest=digest_of(f"scale-{index}"),
                state=SCALE_STATES[index % len(SCALE_STATES)],
                actor=actor,
                actor_id=actor_id,
                attempts=1,
                log=f"validation log of {index}\n" if index % 7 == 0 else "",
                created_at=T0 + timedelta(minutes=index),
                updated_at=T0 + timedelta(minutes=index, seconds=30),
            )
        )
    return records


def newest_first(records: list[GateRecord]) -> list[GateRecord]:
    return sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)


def matches(record: GateRecord, query: dict[str, object]) -> bool:
    since, before = query.get("since"), query.get("before")
    return (
        query.get("rule") in (None, record.rule)
        and query.get("target") in (None, record.target)
        and query.get("state") in (None, record.state)
        and query.get("actor") in (None, record.actor, record.actor_id)
        and (not isinstance(since, datetime) or record.created_at >= since)
        and (not isinstance(before, datetime) or record.created_at < before)
    )


def test_filtered_history_returns_what_the_full_listing_filtered_in_python_does(
    ledger: Ledger,
) -> None:
    records = many_records(240)
    for record in records:
        ledger.add(record)

    everything = ledger.history(HistoryQuery(limit=-1))

    assert everything == [replace(r, log="") for r in newest_first(records)]
    windows = [
        {},
        {"since": T0 + timedelta(minutes=50)},
        {"before": T0 + timedelta(minutes=200)},
        {"since": T0 + timedelta(minutes=17), "before": T0 + timedelta(minutes=121)},
    ]
    for rule in (None, "node", "python", "rare", "go"):
        for target in (None, NODE_TARGET):
            for state in (None, State.PROMOTED, State.VALIDATING):
                for actor in (None, "alice@example.com", ALICE_OID, "timer"):
                    for window in windows:
                        query = {"rule": rule, "target": target, "state": state, "actor": actor}
                        query.update(window)
                        listed = ledger.history(HistoryQuery(**query, limit=-1))  # type: ignore[arg-type]
                        expected = [r for r in everything if matches(r, query)]
                        assert listed == expected, query
    assert [r.id for r in ledger.history(HistoryQuery(rule="rare"))] == [
        r.id for r in newest_first(records) if r.rule == "rare"
    ]


def test_filtered_history_pages_with_before_to_the_same_records(ledger: Ledger) -> None:
    records = many_records(120)
    for record in records:
        ledger.add(record)

    for query in ({}, {"rule": "node"}, {"target": NODE_TARGET, "state": State.PROMOTED}):
        pages: list[GateRecord] = []
        before = None
        while True:
            page = ledger.history(HistoryQuery(**query, before=before, limit=7))  # type: ignore[arg-type]
            if not page:
                break
            assert len(page) <= 7
            pages += page
            before = page[-1].created_at
        assert [r.id for r in pages] == [
            r.id for r in newest_first(records) if matches(r, query)
        ], query


def test_history_records_come_without_their_logs(ledger: Ledger) -> None:
    record = claim(ledger, gate_record(created_at=T0, actor="alice")).record
    ledger.save(record.advance(State.REJECTED, log="step 1 failed\n"))

    listings = [
        ledger.history(),
        ledger.history(HistoryQuery(rule="node")),
        ledger.history(HistoryQuery(target=record.target, state=State.REJECTED)),
        ledger.history(HistoryQuery(actor="alice")),
    ]

    for listed in listings:
        assert [r.id for r in listed] == [record.id] and listed[0].log == ""
    assert ledger.get(record.id).log == "step 1 failed\n"
    assert listings[0][0] == replace(ledger.get(record.id), log="")


def test_every_listing_shows_a_records_latest_write(ledger: Ledger) -> None:
    held = claim(ledger, gate_record(created_at=T0, actor="event-grid")).record
    # a save may name who asked once it is known (e.g. an operator's forced retry)
    ledger.save(held.advance(State.VALIDATING, run_id="run-1", actor="bob", actor_id="b0b"))
    until = utcnow() + timedelta(hours=2)
    assert ledger.renew(held.id, "worker-a", until)

    stored = ledger.get(held.id)
    for listed in (
        ledger.history(),
        ledger.history(HistoryQuery(rule="node", state=State.VALIDATING)),
        ledger.history(HistoryQuery(target=held.target)),
        ledger.history(HistoryQuery(actor="bob")),
        ledger.history(HistoryQuery(rule="node", actor="b0b")),
    ):
        assert listed == [stored]
    assert stored.lease_until == until and stored.run_id == "run-1"
    assert ledger.history(HistoryQuery(rule="node", state=State.RECEIVED)) == []
    assert ledger.history(HistoryQuery(actor="event-grid")) == []


def test_prune_deletes_exactly_the_old_final_records_keep_declines(ledger: Ledger) -> None:
    cutoff = T0
    old = cutoff - timedelta(days=500)
    promoted = gate_record(digest=digest_of("a"), state=State.PROMOTED, created_at=old, log="a\n")
    kept = gate_record(digest=digest_of("b"), state=State.REJECTED, created_at=old, log="b\n")
    failed = gate_record(digest=digest_of("c"), state=State.FAILED, created_at=old)
    working = gate_record(digest=digest_of("d"), state=State.VALIDATING, created_at=old)
    rollback = gate_record(
        action="rollback", digest=digest_of("a"), state=State.ROLLED_BACK, created_at=old
    )
    at_cutoff = gate_record(digest=digest_of("e"), state=State.PROMOTED, created_at=cutoff)
    recent = gate_record(digest=digest_of("f"), state=State.FAILED, created_at=cutoff + WEEK)
    for record in (promoted, kept, failed, working, rollback, at_cutoff, recent):
        ledger.add(replace(record, attempts=1))
    seen: list[GateRecord] = []

    def keep(record: GateRecord) -> bool:
        seen.append(record)
        return record.id == kept.id

    deleted = ledger.prune(created_before=cutoff, keep=keep)

    assert deleted == 3
    assert {r.id for r in ledger.history(HistoryQuery(limit=-1))} == {
        kept.id,
        working.id,
        at_cutoff.id,
        recent.id,
    }
    for gone in (promoted, failed, rollback):
        with pytest.raises(NotFound):
            ledger.get(gone.id)
    assert ledger.get(kept.id).log == "b\n"
    assert {promoted.id, failed.id, rollback.id, kept.id} <= {r.id for r in seen}
    assert all(r.log == "" for r in seen)
    assert ledger.prune(created_before=cutoff, keep=keep) == 0


def test_a_pruned_decision_is_forgotten_and_its_digest_claimed_anew(ledger: Ledger) -> None:
    old = gate_record(state=State.PROMOTED, attempts=1, created_at=T0 - timedelta(days=500))
    ledger.add(old)
    assert not claim(ledger, gate_record()).acquired

    assert ledger.prune(created_before=T0, keep=lambda record: False) == 1

    assert ledger.decided("node", DIGEST) is None
    again = claim(ledger, gate_record())
    assert again.acquired and again.record.id != old.id
    assert [r.id for r in ledger.history()] == [again.record.id]


def test_prune_never_deletes_records_in_progress(ledger: Ledger) -> None:
    old = T0 - timedelta(days=500)
    held = claim(ledger, gate_record(created_at=old)).record
    queued = claim(ledger, gate_record(digest=digest_of("q"), created_at=old), start=False).record
    ledger.save(held.advance(State.PROMOTING))

    assert ledger.prune(created_before=T0, keep=lambda record: False) == 0

    assert {r.id for r in ledger.history()} == {held.id, queued.id}
    assert not claim(ledger, gate_record(), holder="worker-b").acquired


def test_a_duplicate_record_id_is_refused_and_the_first_record_is_unchanged(
    ledger: Ledger,
) -> None:
    first = gate_record(state=State.PROMOTED, attempts=1, created_at=T0, log="first log\n")
    ledger.add(first)
    duplicates = [
        gate_record(first.id, digest=DIGEST, created_at=T0, log="second log\n"),
        gate_record(
            first.id, rule="python", digest=digest_of("other"), created_at=T0 + timedelta(hours=1)
        ),
        gate_record(first.id, action="rollback", state=State.ROLLED_BACK, created_at=T0),
    ]

    for duplicate in duplicates:
        with pytest.raises(LedgerError, match="already"):
            ledger.add(replace(duplicate, attempts=1))
    with pytest.raises(LedgerError, match="already"):
        claim(ledger, gate_record(first.id, digest=digest_of("third"), log="third log\n"))

    assert ledger.get(first.id) == first and ledger.get(first.id).log == "first log\n"
    assert [r.id for r in ledger.history(HistoryQuery(limit=-1))] == [first.id]
    assert ledger.history(HistoryQuery(rule="python")) == []
    assert ledger.decided("node", DIGEST) == first


WEEK = timedelta(days=7)


# -- Table Storage only -------------------------------------------------------------------------


@pytest.fixture
def table_store(azurite: AzuriteProcess) -> TableStore:
    return TableStore(azurite)


def race(workers: int, action: Callable[[int], Claim]) -> list[Claim]:
    """Run ``action(i)`` in ``workers`` threads released together; their claims."""
    barrier = threading.Barrier(workers)
    results: list[Claim | BaseException | None] = [None] * workers

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = action(index)
        except BaseException as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    claims = [r for r in results if isinstance(r, Claim)]
    assert len(claims) == workers, results
    return claims


def test_ten_threads_claiming_one_digest_acquire_it_exactly_once(table_store: TableStore) -> None:
    ledgers = [table_store.open() for _ in range(10)]

    claims = race(10, lambda i: claim(ledgers[i], gate_record()))

    winners = [c for c in claims if c.acquired]
    assert len(winners) == 1
    assert {c.record.id for c in claims} == {winners[0].record.id}
    assert [r.id for r in ledgers[0].history()] == [winners[0].record.id]


def test_ten_threads_adopting_one_silent_record_resume_it_exactly_once(
    table_store: TableStore,
) -> None:
    ledgers = [table_store.open() for _ in range(10)]
    ghost = claim(ledgers[0], gate_record()).record
    ledgers[0].save(ghost.advance(State.VALIDATING))
    lapse(ledgers[0], ghost)

    claims = race(10, lambda i: claim(ledgers[i], gate_record(), holder=f"worker-{i}"))

    winners = [c for c in claims if c.acquired]
    assert len(winners) == 1 and winners[0].resumed
    assert {c.record.id for c in claims} == {ghost.id}
    stored = ledgers[0].get(ghost.id)
    assert stored.attempts == 2 and stored.lease_holder == winners[0].record.lease_holder


def test_heartbeats_racing_the_holders_saves_lose_neither(table_store: TableStore) -> None:
    beat, work = table_store.open(), table_store.open()
    held = claim(work, gate_record()).record
    stop = threading.Event()
    renewed: list[datetime] = []

    def heartbeat() -> None:
        while not stop.is_set():
            until = utcnow() + timedelta(hours=1)
            assert beat.renew(held.id, "worker-a", until)
            renewed.append(until)

    thread = threading.Thread(target=heartbeat)
    thread.start()
    try:
        for step in range(15):
            work.save(held.advance(State.VALIDATING, run_id=f"run-{step}"))
    finally:
        stop.set()
        thread.join()

    stored = work.get(held.id)
    assert renewed and stored.run_id == "run-14" and stored.lease_until == renewed[-1]


def test_ten_workers_taking_one_admitted_record_take_it_exactly_once(
    table_store: TableStore,
) -> None:
    ledgers = [table_store.open() for _ in range(10)]
    admitted = claim(ledgers[0], gate_record(), start=False).record

    claims = race(10, lambda i: claim(ledgers[i], admitted))

    assert len([c for c in claims if c.acquired]) == 1
    assert ledgers[0].get(admitted.id).attempts == 1


CLAIMANT = textwrap.dedent(
    """\
    import json, pathlib, sys, time
    from gate.adapters.ledger.table import TableLedger
    from gate.adapters.ledger.table_base import _blob_endpoint_for
    from gate.adapters.ledger.table_keys import _record_key
    from gate.domain.records import GateRecord, new_record_id
    connection_string, table, container, digest, go = sys.argv[1:]
    ledger = TableLedger(connection_string=connection_string, table=table, log_container=container)
    record = GateRecord(id=new_record_id(), rule="node", source="upstream.example.com/node:15-alpine",
                        target="artifacts.example.com/node", digest=digest)
    print("ready", flush=True)
    while not pathlib.Path(go).exists():
        time.sleep(0.005)
    result = ledger.claim(record, force=False, lease_seconds=600, holder="claimant")
    print(json.dumps({"acquired": result.acquired, "id": result.record.id}), flush=True)
    """
)


def test_two_processes_claiming_one_digest_acquire_it_exactly_once(
    table_store: TableStore, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    args = [table_store.connection_string, table_store.table, table_store.container, DIGEST]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMANT, *args, str(go)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        for _ in range(2)
    ]
    for process in processes:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
    go.touch()
    outputs = [json.loads(p.communicate(timeout=120)[0]) for p in processes]

    assert sorted(o["acquired"] for o in outputs) == [False, True]
    assert outputs[0]["id"] == outputs[1]["id"]


def test_a_log_larger_than_a_table_property_round_trips_through_a_blob(
    table_store: TableStore,
) -> None:
    ledger = table_store.open()
    record = claim(ledger, gate_record()).record
    log = "".join(f"line {i}: ✓ layer sha256:{i:064x}\n" for i in range(3000))  # ~260 KiB
    ledger.save(record.advance(State.REJECTED, log=log))

    assert table_store.open().get(record.id).log == log
    blobs = ContainerClient.from_connection_string(
        table_store.connection_string, table_store.container
    )
    assert blobs.download_blob(f"{record.id}.log").readall().decode() == log
    assert ledger.history()[0].log == ""  # history leaves logs in their blobs


def test_a_reason_longer_than_a_table_property_round_trips(table_store: TableStore) -> None:
    ledger = table_store.open()
    record = claim(ledger, gate_record()).record
    reason = "x\U0001f433" * 40_000  # 120,000 UTF-16 units: several properties
    ledger.save(record.advance(State.FAILED, reason=reason))

    assert ledger.get(record.id).reason == reason


class RequestCounter:
    """An azure-core ``raw_response_hook`` counting the HTTP responses a ledger's clients get."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, response: object) -> None:
        self.count += 1

    def of(self, query: Callable[[], object]) -> int:
        before = self.count
        query()
        return self.count - before


def counted(store: TableStore) -> tuple[TableLedger, RequestCounter]:
    counter = RequestCounter()
    ledger = TableLedger(
        connection_string=store.connection_string,
        table=store.table,
        log_container=store.container,
        response_hook=counter,
    )
    ledger.history(
        HistoryQuery(limit=1)
    )  # a handle reads the layout marker once, at its first listing
    return ledger, counter


def request_costs(
    ledger: TableLedger, counter: RequestCounter, records: list[GateRecord]
) -> dict[str, int]:
    """The HTTP requests of each query the gate makes, on ``ledger``."""
    return {
        "rare rule page": counter.of(lambda: ledger.history(HistoryQuery(rule="rare"))),
        "filtered page": counter.of(
            lambda: ledger.history(HistoryQuery(rule="node", state=State.PROMOTED))
        ),
        "first page": counter.of(lambda: ledger.history()),
        "decided": counter.of(lambda: ledger.decided("node", records[0].digest or "")),
        "get with log": counter.of(lambda: ledger.get(records[3].id)),
    }


def test_a_rare_rules_page_costs_the_same_few_requests_however_large_the_ledger(
    azurite: AzuriteProcess,
) -> None:
    costs = []
    for size in (150, 1500):
        store = TableStore(azurite)
        records = [
            gate_record(
                digest=digest_of(f"{size}-{i}"),
                state=SCALE_STATES[i % len(SCALE_STATES)],
                attempts=1,
                created_at=T0 + timedelta(minutes=i),
                log="validation log\n" if i == 3 else "",
            )
            for i in range(size)
        ]
        rare = [
            gate_record(rule="rare", digest=digest_of(f"rare-{i}"), created_at=T0 + timedelta(i))
            for i in range(3)
        ]
        fill_table(store.open(), [*records, *rare])
        ledger, counter = counted(store)
        page = ledger.history(HistoryQuery(rule="rare"))
        filtered = ledger.history(HistoryQuery(rule="node", state=State.PROMOTED))
        assert [r.id for r in page] == [r.id for r in reversed(rare)]
        assert (
            filtered
            == [replace(r, log="") for r in newest_first(records) if r.state is State.PROMOTED][:50]
        )
        costs.append(request_costs(ledger, counter, records))

    # one range query per page; a claim read and its one record; index, row and log blob
    expected = {"rare rule page": 1, "filtered page": 1, "first page": 1, "decided": 2}
    assert costs[0] == costs[1] == {**expected, "get with log": 3}


def strip_to_the_older_layout(store: TableStore) -> int:
    """Make ``store`` look as a gate before listing rows left it: no listing rows, no layout
    marker, record rows without actor properties. Returns how many records it holds."""
    table = TableServiceClient.from_connection_string(store.connection_string).get_table_client(
        store.table
    )
    records = 0
    for entity in list(table.query_entities("PartitionKey eq 'ledger'")):
        key = str(entity["RowKey"])
        if key.startswith(("R|", "T|", "v|")):
            table.delete_entity("ledger", key)
        elif key.startswith("r|"):
            records += 1
            older = {k: v for k, v in entity.items() if k not in ("actor", "actor_id")}
            table.upsert_entity(older, mode=UpdateMode.REPLACE)
    return records


def test_an_older_ledger_lists_by_scanning_until_migrated_then_by_listing_rows(
    table_store: TableStore,
) -> None:
    records = many_records(60)
    writer = table_store.open()
    for record in records:
        writer.add(record)
    assert strip_to_the_older_layout(table_store) == 60
    queries: list[dict[str, object]] = [
        {},
        {"rule": "rare"},
        {"target": NODE_TARGET, "state": State.PROMOTED},
        {"actor": ALICE_OID},
        {"rule": "node", "actor": "timer", "since": T0 + timedelta(minutes=10)},
    ]
    expected = [
        [replace(r, log="") for r in newest_first(records) if matches(r, query)]
        for query in queries
    ]

    older = table_store.open()
    assert [older.history(HistoryQuery(**q, limit=-1)) for q in queries] == expected  # type: ignore[arg-type]

    assert older.migrate() == 60
    assert older.migrate() == 0
    ledger, counter = counted(table_store)
    assert [ledger.history(HistoryQuery(**q, limit=-1)) for q in queries] == expected  # type: ignore[arg-type]
    assert counter.of(lambda: ledger.history(HistoryQuery(rule="rare"))) == 1


def test_prune_migrates_an_older_ledger_first_and_deletes_its_records_whole(
    table_store: TableStore,
) -> None:
    writer = table_store.open()
    old = gate_record(state=State.PROMOTED, attempts=1, created_at=T0 - WEEK, log="old\n")
    new = gate_record(digest=digest_of("new"), state=State.PROMOTED, attempts=1, created_at=T0)
    writer.add(old)
    writer.add(new)
    strip_to_the_older_layout(table_store)

    assert table_store.open().prune(created_before=T0, keep=lambda record: False) == 1

    table = TableServiceClient.from_connection_string(table_store.connection_string)
    keys = {
        str(e["RowKey"])
        for e in table.get_table_client(table_store.table).query_entities(
            "PartitionKey eq 'ledger'"
        )
    }
    assert not [key for key in keys if _descending(old.id) in key or old.id in key]
    assert sum(1 for key in keys if _descending(new.id) in key) == 3  # its row, R| and T| rows
    assert table_store.open().history(HistoryQuery(rule="node")) == [new]


def test_prune_deletes_the_log_blobs_of_the_records_it_deletes(table_store: TableStore) -> None:
    ledger = table_store.open()
    gone = gate_record(state=State.REJECTED, attempts=1, created_at=T0 - WEEK, log="gone\n")
    kept = gate_record(
        digest=digest_of("kept"), state=State.REJECTED, attempts=1, created_at=T0, log="kept\n"
    )
    ledger.add(gone)
    ledger.add(kept)

    assert ledger.prune(created_before=T0, keep=lambda record: False) == 1

    blobs = ContainerClient.from_connection_string(
        table_store.connection_string, table_store.container
    )
    assert [blob.name for blob in blobs.list_blobs()] == [f"{kept.id}.log"]


def test_two_pruners_racing_delete_each_record_once_and_leave_no_claim_behind(
    table_store: TableStore,
) -> None:
    writer = table_store.open()
    old = [
        gate_record(
            digest=digest_of(f"old-{i % 10}"),  # 10 claims shared by 45 records
            state=State.PROMOTED if i % 2 else State.FAILED,
            attempts=1,
            created_at=T0 - timedelta(days=30, minutes=i),
        )
        for i in range(45)
    ]
    for record in old:
        writer.add(record)
    pruners = [table_store.open() for _ in range(2)]
    barrier = threading.Barrier(2)
    counts: list[int] = []

    def prune(index: int) -> None:
        barrier.wait()
        counts.append(pruners[index].prune(created_before=T0, keep=lambda record: False))

    threads = [threading.Thread(target=prune, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(counts) == 2 and sum(counts) == 45  # both finished; each record counted once
    table = TableServiceClient.from_connection_string(table_store.connection_string)
    left = list(
        table.get_table_client(table_store.table).query_entities("PartitionKey eq 'ledger'")
    )
    assert [str(e["RowKey"]) for e in left] == ["v|layout"]


def test_a_record_too_long_to_copy_into_its_listing_rows_is_listed_through_its_row(
    table_store: TableStore,
) -> None:
    ledger = table_store.open()
    record = claim(ledger, gate_record(created_at=T0)).record
    long = record.advance(State.FAILED, reason="layer pull failed: " + "x" * 60_000)
    ledger.save(long)
    other = claim(ledger, gate_record(digest=digest_of("short"), created_at=T0 - WEEK)).record

    assert ledger.history(HistoryQuery(rule="node")) == [ledger.get(record.id), other]
    assert (
        ledger.history(HistoryQuery(target=record.target, state=State.FAILED))[0].reason
        == long.reason
    )
    listing_row = ledger._table.get_entity("ledger", _listing_keys(long)[0])
    assert listing_row["data_parts"] == 0  # the copy points at the record instead


def test_rules_and_digests_with_characters_keys_refuse_still_deduplicate(
    table_store: TableStore,
) -> None:
    ledger = table_store.open()
    odd = gate_record(rule="team/app #1?", digest="sha256:\\weird|digest%")
    ledger.save(claim(ledger, odd).record.advance(State.PROMOTED))

    result = claim(ledger, gate_record(rule="team/app #1?", digest="sha256:\\weird|digest%"))

    assert not result.acquired and result.record.id == odd.id
    assert ledger.decided("team/app #1?", "sha256:\\weird|digest%") is not None
    assert [r.id for r in ledger.history(HistoryQuery(rule="team/app #1?"))] == [odd.id]


def test_a_wrong_account_key_is_a_ledger_error_that_does_not_show_the_key(
    table_store: TableStore, azurite: AzuriteProcess
) -> None:
    wrong_key = base64.b64encode(b"not the key of this account, 64 bytes long....................")
    connection_string = table_store.connection_string.replace(
        azurite.account_key, wrong_key.decode()
    )

    with pytest.raises(LedgerError) as caught:
        TableLedger(connection_string=connection_string, table=table_store.table)

    message = caught.value.message
    assert "403" in message and "account key" in message
    assert wrong_key.decode() not in message and "AccountKey" not in message


def test_an_undecodable_account_key_is_a_ledger_error_that_does_not_show_it(
    table_store: TableStore, azurite: AzuriteProcess
) -> None:
    connection_string = table_store.connection_string.replace(azurite.account_key, "s3cr%t")

    with pytest.raises(LedgerError, match="account key") as caught:
        TableLedger(connection_string=connection_string, table=table_store.table)

    assert "s3cr%t" not in caught.value.message


def test_an_unreachable_table_service_is_a_ledger_error(
    table_store: TableStore, azurite: AzuriteProcess
) -> None:
    closed = free_port()
    connection_string = table_store.connection_string.replace(
        f":{azurite.table_port}/", f":{closed}/"
    )

    with pytest.raises(LedgerError, match="could not be reached"):
        TableLedger(connection_string=connection_string, table=table_store.table)


def test_a_malformed_connection_string_is_a_config_error_that_does_not_echo_it() -> None:
    with pytest.raises(ConfigError) as caught:
        TableLedger(connection_string="not a connection string; c2VjcmV0")

    assert "c2VjcmV0" not in caught.value.message


def test_names_storage_refuses_are_config_errors_before_any_request() -> None:
    with pytest.raises(ConfigError, match="storage table"):
        TableLedger(connection_string="x", table="gate-records")
    with pytest.raises(ConfigError, match="blob container"):
        TableLedger(connection_string="x", log_container="Gate_Logs")


def test_a_deleted_table_is_a_ledger_error_not_a_missing_record(table_store: TableStore) -> None:
    ledger = table_store.open()
    record = claim(ledger, gate_record()).record
    TableServiceClient.from_connection_string(table_store.connection_string).delete_table(
        table_store.table
    )

    with pytest.raises(LedgerError, match="does not exist any more"):
        ledger.get(record.id)


def test_the_ledger_needs_exactly_one_of_an_endpoint_or_a_connection_string() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        TableLedger()
    with pytest.raises(ConfigError, match="exactly one"):
        TableLedger(endpoint="https://acct.table.core.windows.net", connection_string="x")
    with pytest.raises(ConfigError, match="credential"):
        TableLedger(endpoint="https://acct.table.core.windows.net")


# -- identity-based access (bearer tokens over TLS, as in Azure) ---------------------------------


class StorageTestIdentity:
    """A credential minting unsigned JWTs, which Azurite's basic OAuth mode accepts when their
    issuer, audience and lifetime are right (it does not check signatures)."""

    def __init__(self, audience: str = "https://storage.azure.com") -> None:
        self.audience = audience
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        self.scopes.extend(scopes)
        now = int(time.time())
        claims = {
            "aud": self.audience,
            "iss": "https://sts.windows.net/00000000-0000-0000-0000-000000000001/",
            "iat": now - 60,
            "nbf": now - 60,
            "exp": now + 3600,
            "oid": "00000000-0000-0000-0000-00000000cafe",
        }
        parts = [{"alg": "RS256", "typ": "JWT"}, claims]
        token = ".".join(
            base64.urlsafe_b64encode(json.dumps(p).encode()).decode().rstrip("=") for p in parts
        )
        return AccessToken(token + ".c2lnbmF0dXJl", now + 3600)


@pytest.fixture(scope="module")
def azurite_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AzuriteProcess, Path]]:
    """An Azurite serving HTTPS (a test CA's certificate) and accepting bearer tokens; its CA."""
    folder = tmp_path_factory.mktemp("azurite-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(folder / "cert.pem")
    cert.private_key_pem.write_to_path(folder / "key.pem")
    ca.cert_pem.write_to_path(folder / "ca.pem")
    process = AzuriteProcess(
        folder / "run", cert=folder / "cert.pem", key=folder / "key.pem", oauth=True
    )
    with process:
        yield process, folder / "ca.pem"


def test_identity_based_ledger_gets_storage_tokens_and_keeps_records_and_logs(
    azurite_tls: tuple[AzuriteProcess, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    azurite, ca = azurite_tls
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))
    identity = StorageTestIdentity()
    ledger = TableLedger(
        endpoint=azurite.table_endpoint,
        credential=identity,
        blob_endpoint=azurite.blob_endpoint,
        table="identityrecords",
        log_container="identity-logs",
    )
    record = claim(ledger, gate_record()).record
    ledger.save(record.advance(State.PROMOTED, log="validated\n"))

    assert ledger.get(record.id).log == "validated\n"
    assert ledger.decided("node", DIGEST) is not None
    assert identity.scopes and set(identity.scopes) == {"https://storage.azure.com/.default"}


def test_identity_without_access_to_storage_is_a_ledger_error_naming_the_roles(
    azurite_tls: tuple[AzuriteProcess, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    azurite, ca = azurite_tls
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))

    with pytest.raises(LedgerError, match="Storage Table Data Contributor") as caught:
        TableLedger(
            endpoint=azurite.table_endpoint,
            credential=StorageTestIdentity(audience="https://vault.azure.net"),
            blob_endpoint=azurite.blob_endpoint,
        )

    assert "403" in caught.value.message


def test_blob_endpoint_is_derived_from_an_azure_table_endpoint() -> None:
    assert (
        _blob_endpoint_for("https://acct.table.core.windows.net")
        == "https://acct.blob.core.windows.net"
    )
    assert (
        _blob_endpoint_for("https://acct.table.core.chinacloudapi.cn/")
        == "https://acct.blob.core.chinacloudapi.cn"
    )
    assert _blob_endpoint_for("https://127.0.0.1:10002/devstoreaccount1") is None
