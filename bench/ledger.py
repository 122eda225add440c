"""Benchmark: the ledger's queries over 100 000 records, SQLite and Azure Table (Azurite).

Fills each ledger with the same kind of realistic records (20 rules of very different sizes and
one rare rule, their targets, every final state and a few in progress, event/poll/manual
actors, logs of a few KB on some), then times the queries the gate makes: the dedupe lookup
(``decided``), the first page of ``gate history``, a filtered page (one rule, promoted only), a
rare rule's page, and ``get`` of one record with its log. Each figure is the median of
``--repeat`` runs, printed beside a baseline: for SQLite the same queries on a copy of the file
without its secondary indexes; for Table the scan an older ledger made (one range over every
record row, the filters evaluated by the service). Goal: under 50 ms each on SQLite; a bounded
number of requests per query on Table.

For Table it prints the HTTP requests of each query (counted by an azure-core response hook on
the real SDK clients), the same on a ledger a tenth as large (bounded: they do not grow with
the ledger), and the rows each listing's key range walks until its page is full (what the
service reads to answer; Azurite answers every query in one request, the real service may
answer a long walk in several pages). The Table ledger holds 10 000 records by default: Azurite
keeps a table in memory and its inserts slow down as the table grows (here, a transaction of
100 small entities took about 0.1 s into a table of 5 000 entities and 0.6 s into one of
25 000; 10 000 records, 40 000 entities, load in about 6 minutes), so the 400 000 entities of
100 000 records would take hours; ``--table-records`` asks for more.

The SQLite ledger is filled through the port (``add``, one transaction per record, in a
RAM-backed folder where there is one); the Table ledger by entity-group transactions of 25
records with their claim entities (what ``add`` writes, 25 at a time).

Run: ``python -m bench.ledger [--records 100000] [--table-records 10000] [--repeat 15]
[--only sqlite|table]``
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from devstack.azurite import AzuriteProcess
from devstack.ledgers import fill_table
from gate.adapters.ledger.sqlite import SqliteLedger
from gate.adapters.ledger.table import TableLedger
from gate.domain.records import GateRecord, State
from gate.ports import HistoryQuery, Ledger

RULES = 20
RARE_RULE = "rare-base"
FILTERED_RULE = "rule05"  # the sixth-largest rule: a few thousand records in 100 000
START = datetime(2025, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=730)
_LOG_LINE = "step 3/7: /bin/sh -c ./test.sh  BACKGROUND_COLOR=Green ok layer sha256:{:064x}\n"


def _rule_of(rng: random.Random, weights: list[float]) -> str:
    return f"rule{rng.choices(range(RULES), weights)[0]:02d}"


def realistic_records(count: int, seed: int = 15) -> list[GateRecord]:
    """``count`` records over two years, oldest first, as a platform team's gate makes them.

    Rule sizes fall off as 1/rank (rule00 the largest); ``rare-base`` holds one in 2000.
    Most digests are gated once; a failed gate is retried with the same digest. About one in
    twenty records has a log of ~4 KB. The newest records include a few in progress.
    """
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(RULES)]
    digests: dict[str, int] = {}
    retry: dict[str, bool] = {}
    records = []
    step = SPAN / count
    for index in range(count):
        created = START + step * index
        rule = RARE_RULE if index % 2000 == 1000 else _rule_of(rng, weights)
        if not retry.get(rule):
            digests[rule] = digests.get(rule, 0) + 1
        digest = "sha256:" + hashlib.sha256(f"{rule}-{digests[rule]}".encode()).hexdigest()
        roll = rng.random()
        action, state = "gate", State.PROMOTED
        if roll < 0.12:
            state = State.REJECTED
        elif roll < 0.30:
            state = State.FAILED
        elif roll < 0.34:
            state = State.SUPERSEDED
        elif roll < 0.37:
            action, state = "rollback", State.ROLLED_BACK
        elif roll < 0.42:
            action, state = "revalidate", State.REVALIDATED
        if index >= count - 20 and roll > 0.8:
            state = State.VALIDATING
        retry[rule] = state is State.FAILED
        trigger, actor, actor_id = rng.choice(
            [
                ("event", "event-grid", ""),
                ("watch", "timer", ""),
                ("manual", "alice@example.com", "6f1c2c4e-0000-4000-8000-00000000a11c"),
            ]
        )
        millis = int(created.timestamp() * 1000)
        log = ""
        if state.final and rng.random() < 0.05:
            log = "".join(_LOG_LINE.format(rng.getrandbits(256)) for _ in range(40))
        records.append(
            GateRecord(
                id=f"{millis:011x}{rng.getrandbits(84):021x}",
                rule=rule,
                source=f"registry-1.docker.io/library/{rule}:stable",
                target=f"baseartifacts.azurecr.io/{rule}",
                action=action,
                digest=digest,
                trigger=trigger,
                state=state,
                run_id=f"cb{index:x}",
                reason="validated: 7 steps" if state is State.PROMOTED else state.value,
                log=log,
                target_tags=("stable", f"stable-cb{index:x}"),
                actor=actor,
                actor_id=actor_id,
                attempts=1,
                created_at=created,
                updated_at=created + timedelta(minutes=4),
                timings={"resolve": 0.2, "validate": 71.5, "promote": 3.1},
                lease_until=created + timedelta(minutes=10),
            )
        )
    return records


def fill_sqlite(ledger: SqliteLedger, records: Iterable[GateRecord]) -> None:
    """Write ``records`` through the port, one ``add`` (one transaction) each."""
    for record in records:
        ledger.add(record)


class RequestCounter:
    """An azure-core ``raw_response_hook``: counts the HTTP responses of the clients it is in."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, response: object) -> None:
        self.count += 1


@dataclass(frozen=True)
class Probe:
    """What the queries ask for: a decided (rule, digest) and a record with a log."""

    rule: str
    digest: str
    record_id: str

    @classmethod
    def of(cls, records: list[GateRecord]) -> Probe:
        decided = next(r for r in reversed(records) if r.rule == FILTERED_RULE and r.state.decisive)
        logged = next(r for r in reversed(records) if r.log)
        assert decided.digest is not None
        return cls(decided.rule, decided.digest, logged.id)


def queries(ledger: Ledger, probe: Probe) -> dict[str, Callable[[], object]]:
    """The queries the benchmark times, by name."""
    return {
        "dedupe (decided)": lambda: ledger.decided(probe.rule, probe.digest),
        "first page": lambda: ledger.history(HistoryQuery(limit=50)),
        "filtered page": lambda: ledger.history(
            HistoryQuery(rule=FILTERED_RULE, state=State.PROMOTED, limit=50)
        ),
        "rare rule page": lambda: ledger.history(HistoryQuery(rule=RARE_RULE, limit=50)),
        "get(id) with log": lambda: ledger.get(probe.record_id),
    }


def table_scan_queries(ledger: TableLedger, probe: Probe) -> dict[str, Callable[[], object]]:
    """The same queries as an older Table ledger made them: history one range over every record
    row with the filters in ``$filter`` (the scan it still makes before its migration)."""
    same = queries(ledger, probe)

    def scan(rule: str | None = None, state: State | None = None) -> object:
        return ledger._scan(rule, None, state, None, None, None, 50)

    same["filtered page"] = lambda: scan(FILTERED_RULE, State.PROMOTED)
    same["rare rule page"] = lambda: scan(RARE_RULE)
    return same


def median_ms(query: Callable[[], object], repeat: int) -> float:
    """The median wall time of ``query`` over ``repeat`` runs, after one warm-up run."""
    query()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        query()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def requests_of(counter: RequestCounter, query: Callable[[], object]) -> int:
    """How many HTTP requests one run of ``query`` makes."""
    before = counter.count
    query()
    return counter.count - before


def _unindexed_copy(path: Path, copy: Path) -> int:
    """Copy the SQLite ledger at ``path`` without its secondary indexes; how many it dropped."""
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(path, copy)
    with sqlite3.connect(copy) as db:
        names = [
            row[0]
            for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            )
        ]
        for name in names:
            db.execute(f'DROP INDEX "{name}"')
    return len(names)


def _indexes(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(
            db.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            ).fetchone()[0]
        )


def bench_sqlite(records: list[GateRecord], work: Path, repeat: int) -> None:
    """Fill a SQLite ledger, then print each query's median beside the unindexed copy's."""
    path = work / "gate.db"
    started = time.perf_counter()
    fill_sqlite(SqliteLedger(path), records)
    print(f"SQLite: {len(records)} records added in {time.perf_counter() - started:.0f} s")
    dropped = _unindexed_copy(path, work / "unindexed.db")
    probe = Probe.of(records)
    indexed = queries(SqliteLedger(path), probe)
    unindexed = queries(SqliteLedger(work / "unindexed.db"), probe)
    print(f"{'query':<18} {'indexed ms':>11} {f'no index ({dropped}) ms':>19}")
    for name, query in indexed.items():
        print(
            f"{name:<18} {median_ms(query, repeat):11.2f} "
            f"{median_ms(unindexed[name], repeat):19.2f}"
        )
    # opening the copy must not have put its indexes back, or the baseline is not one
    if _indexes(work / "unindexed.db"):
        raise SystemExit("the ledger recreated the dropped indexes: the baseline is void")


@dataclass
class TableFigures:
    """One query's figures on the Table ledger: listing rows vs the older scan."""

    ms: float
    requests: int
    scan_ms: float
    scan_requests: int


def _filled_table(
    azurite: AzuriteProcess, records: list[GateRecord], table: str
) -> tuple[TableLedger, RequestCounter]:
    counter = RequestCounter()
    ledger = TableLedger(
        connection_string=azurite.connection_string, table=table, response_hook=counter
    )
    fill_table(ledger, records)
    return ledger, counter


def measure_table(
    ledger: TableLedger, counter: RequestCounter, probe: Probe, repeat: int
) -> dict[str, TableFigures]:
    """Each query's median time and requests, with listing rows and as the older scan."""
    scans = table_scan_queries(ledger, probe)
    return {
        name: TableFigures(
            median_ms(query, repeat),
            requests_of(counter, query),
            median_ms(scans[name], repeat),
            requests_of(counter, scans[name]),
        )
        for name, query in queries(ledger, probe).items()
    }


def rows_walked(records: list[GateRecord], *, indexed: bool, limit: int = 50) -> dict[str, int]:
    """How many rows each listing query's key range covers until its page is full.

    What the service walks to answer (it evaluates ``$filter`` row by row inside the range):
    with listing rows, a rule's page walks only that rule's rows; the older scan walks every
    record row, newest first, until ``limit`` of them match.
    """
    newest = sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)

    def walk(rule: str | None, state: State | None) -> int:
        rows = [r for r in newest if r.rule == rule] if indexed and rule else newest
        matched = walked = 0
        for record in rows:
            walked += 1
            if (rule is None or record.rule == rule) and (state is None or record.state is state):
                matched += 1
                if matched == limit:
                    break
        return walked

    return {
        "first page": walk(None, None),
        "filtered page": walk(FILTERED_RULE, State.PROMOTED),
        "rare rule page": walk(RARE_RULE, None),
    }


def table_requests_per_query(records: int = 10_000) -> dict[str, int]:
    """HTTP requests per query on a Table ledger of ``records`` records (Azurite).

    Starts its own Azurite, fills it and returns, by query name, what one run costs.
    """
    generated = realistic_records(records)
    with (
        tempfile.TemporaryDirectory(prefix="gate-bench-") as tmp,
        AzuriteProcess(Path(tmp)) as azurite,
    ):
        ledger, counter = _filled_table(azurite, generated, "benchrecords")
        try:
            probe = Probe.of(generated)
            return {
                name: requests_of(counter, query) for name, query in queries(ledger, probe).items()
            }
        finally:
            ledger.close()


def bench_table(records: list[GateRecord], work: Path, repeat: int) -> None:
    """Fill a Table ledger in Azurite, then print each query beside the older scan, and the
    requests of the same queries on a ledger a tenth as large."""
    small = realistic_records(len(records) // 10)
    with AzuriteProcess(work / "azurite") as azurite:
        ledger, counter = _filled_table(azurite, small, "smallrecords")
        try:
            small_requests = {
                name: requests_of(counter, query)
                for name, query in queries(ledger, Probe.of(small)).items()
            }
        finally:
            ledger.close()
        started = time.perf_counter()
        ledger, counter = _filled_table(azurite, records, "benchrecords")
        elapsed = time.perf_counter() - started
        print(f"Table (Azurite): {len(records)} records written in {elapsed:.0f} s")
        try:
            figures = measure_table(ledger, counter, Probe.of(records), repeat)
        finally:
            ledger.close()
    walked, scanned = rows_walked(records, indexed=True), rows_walked(records, indexed=False)
    print(
        f"{'query':<18} {'ms':>7} {'requests':>9} {f'at {len(small)}':>9} {'rows':>6}"
        f" {'scan ms':>8} {'scan req':>9} {'scan rows':>10}"
    )
    for name, f in figures.items():
        rows, scan_rows = str(walked.get(name, "-")), str(scanned.get(name, "-"))
        print(
            f"{name:<18} {f.ms:7.1f} {f.requests:9d} {small_requests[name]:9d} {rows:>6}"
            f" {f.scan_ms:8.1f} {f.scan_requests:9d} {scan_rows:>10}"
        )


def _workdir() -> tempfile.TemporaryDirectory[str]:
    # a RAM-backed folder where there is one: 100 000 one-record transactions then cost no
    # disk flush each (the reads the benchmark times are served from memory either way)
    shm = Path("/dev/shm")
    return tempfile.TemporaryDirectory(prefix="gate-bench-", dir=shm if shm.is_dir() else None)


def describe(records: list[GateRecord]) -> str:
    """One line on what ``records`` hold."""
    rare = sum(1 for r in records if r.rule == RARE_RULE)
    filtered = sum(1 for r in records if r.rule == FILTERED_RULE)
    logs = sum(1 for r in records if r.log)
    return (
        f"{len(records)} records, {RULES + 1} rules ({FILTERED_RULE}: {filtered}, "
        f"{RARE_RULE}: {rare}), {logs} with a log"
    )


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="records in SQLite")
    parser.add_argument(
        "--table-records", type=int, default=10_000, help="records in Table (Azurite)"
    )
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--only", choices=["sqlite", "table"])
    args = parser.parse_args()
    with _workdir() as tmp:
        work = Path(tmp)
        if args.only in (None, "sqlite"):
            records = realistic_records(args.records)
            print(describe(records))
            bench_sqlite(records, work, args.repeat)
        if args.only in (None, "table"):
            records = realistic_records(args.table_records)
            print(f"\n{describe(records)}")
            bench_table(records, work, args.repeat)


if __name__ == "__main__":
    main()
