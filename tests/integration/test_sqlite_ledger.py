"""The SQLite ledger's own promises: indexed newest-first pages, and older files upgraded in place."""

from __future__ import annotations

import copy
import itertools
import json
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gate.adapters.ledger.sqlite import SqliteLedger, history_queries
from gate.domain.records import GateRecord, State, new_record_id
from gate.errors import LedgerError
from gate.ports import HistoryQuery

FILTERS = {
    "rule": "node",
    "target": "artifacts.example.com/node",
    "state": State.PROMOTED,
    "since": datetime(2026, 1, 1, tzinfo=UTC),
    "before": datetime(2026, 6, 1, tzinfo=UTC),
    "actor": "alice",
}


def record(**changes: object) -> GateRecord:
    fields: dict[str, object] = {
        "id": new_record_id(),
        "rule": "node",
        "source": "up.example.com/node:15-alpine",
        "target": "artifacts.example.com/node",
        "digest": "sha256:" + "a" * 64,
        "state": State.PROMOTED,
        "log": "a validation log\n" * 100,
    }
    return GateRecord(**{**fields, **changes})  # type: ignore[arg-type]


@pytest.fixture
def ledger(tmp_path: Path) -> SqliteLedger:
    ledger = SqliteLedger(tmp_path / "gate.db")
    ledger.add(record())  # creates the file and its schema
    return ledger


def plan(ledger: SqliteLedger, sql: str, params: list[object]) -> list[str]:
    with sqlite3.connect(ledger.path) as db:
        return [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


@pytest.mark.parametrize(
    "names",
    [combo for n in range(len(FILTERS) + 1) for combo in itertools.combinations(FILTERS, n)],
    ids=lambda names: "+".join(names) or "none",
)
def test_every_filtered_page_walks_an_index_newest_first_without_sorting(
    ledger: SqliteLedger, names: tuple[str, ...]
) -> None:
    queries = history_queries(HistoryQuery(**{name: FILTERS[name] for name in names}, limit=50))  # type: ignore[arg-type]

    for sql, params in queries:
        steps = plan(ledger, sql, params)
        assert not any("TEMP B-TREE" in step for step in steps), (names, steps)
        assert all("INDEX" in step for step in steps), (names, steps)
        assert "log" not in sql.split("FROM")[0]  # a page never reads validation logs


def test_history_pages_come_without_logs_and_get_has_the_log(ledger: SqliteLedger) -> None:
    listed = ledger.history()

    assert listed and all(r.log == "" for r in listed)
    assert ledger.get(listed[0].id).log.startswith("a validation log")


def test_the_actor_filter_matches_an_object_id_or_a_name_newest_first(
    ledger: SqliteLedger,
) -> None:
    by_id = record(actor="Alice Example", actor_id="0b8f-alice", created_at=datetime.now(UTC))
    by_name = record(actor="0b8f-alice", created_at=datetime.now(UTC))
    other = record(actor="bob", actor_id="0b8f-bob")
    for r in (by_id, other, by_name):
        ledger.add(r)

    assert [r.id for r in ledger.history(HistoryQuery(actor="0b8f-alice"))] == [
        by_name.id,
        by_id.id,
    ]
    assert [r.id for r in ledger.history(HistoryQuery(actor="Alice Example"))] == [by_id.id]
    assert [r.id for r in ledger.history(HistoryQuery(actor="0b8f-alice", limit=1))] == [by_name.id]


def test_a_duplicate_record_id_is_refused_and_the_first_record_kept(
    ledger: SqliteLedger,
) -> None:
    first = record(reason="the first")
    ledger.add(first)

    with pytest.raises(LedgerError, match="already in the ledger"):
        ledger.add(record(id=first.id, reason="the second"))

    assert ledger.get(first.id).reason == "the first"


VERSION_1 = """
CREATE TABLE records (
    id TEXT PRIMARY KEY, action TEXT NOT NULL, rule TEXT NOT NULL, digest TEXT,
    target TEXT NOT NULL, state TEXT NOT NULL, run_id TEXT, created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL, data TEXT NOT NULL, log TEXT NOT NULL DEFAULT ''
);
CREATE INDEX records_rule_digest ON records (rule, digest);
CREATE INDEX records_target ON records (target, created_at);
CREATE INDEX records_created ON records (created_at);
"""


def test_a_ledger_written_before_actor_columns_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "gate.db"
    old = record(actor="carol", id="0190a1b2c3d4e5f60")  # a 17-character id of that time
    data = old.to_dict()
    del data["actor_id"]  # not written then
    with sqlite3.connect(path) as db:
        db.executescript(VERSION_1)
        db.execute(
            "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                old.id, old.action, old.rule, old.digest, old.target, old.state.value,
                old.run_id, old.created_at.isoformat(), old.updated_at.isoformat(),
                json.dumps(data), old.log,
            ),
        )  # fmt: skip
    db.close()

    ledger = SqliteLedger(path)
    again = SqliteLedger(path)  # a second opening finds it done

    assert [r.id for r in ledger.history(HistoryQuery(actor="carol"))] == [old.id]
    assert again.get("0190a1b2c3").log == old.log
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"records_rule_state_newest", "records_actor_id_newest"} <= names
    assert not {"records_target", "records_created"} & names


def test_record_ids_are_32_hex_characters_unique_and_ordered_by_time() -> None:
    first = new_record_id()
    made = [new_record_id() for _ in range(200_000)]  # 11 collided with 24 random bits
    time.sleep(0.002)
    later = new_record_id()

    assert all(len(i) == 32 and set(i) <= set("0123456789abcdef") for i in (first, later))
    assert len(set(made)) == len(made)
    assert first[:11] <= made[-1][:11] < later[:11]  # the millisecond prefix sorts by time
    assert later > max(made)


def test_records_compare_every_field_and_hash_by_id() -> None:
    record = GateRecord(id=new_record_id(), rule="node", source="up/node:1", target="t/node")
    timed = copy.replace(record, timings={"validate": 1.5})

    assert copy.replace(record) == record and hash(timed) == hash(record)
    assert timed != record  # timings are part of what a ledger gives back
    assert len({record: 1, timed: 2}) == 2  # hashable, and equal hashes are not equal records
    with pytest.raises(AttributeError):
        record.state = State.PROMOTED  # type: ignore[misc]
