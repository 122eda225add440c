"""The SQLite ledger: one file, safe for several ``gate`` processes at once.

Claims run in ``BEGIN IMMEDIATE`` transactions, which take SQLite's write lock before reading, so
two processes cannot both see "no record" for the same (rule, digest) and both start gating it;
lease renewals and saves read and write a record in one such transaction, conditional on who
holds its lease.
WAL mode lets readers (``gate history``) run beside a writer.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from gate.domain.records import (
    FIRST_PAGE,
    Claim,
    GateRecord,
    HistoryQuery,
    State,
    claim_insert,
    claim_step,
    merge_lease,
    record_id_query,
    record_id_range,
    renew_lease,
    utcnow,
)
from gate.errors import LedgerError, NotFound

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id TEXT PRIMARY KEY,
    action TEXT NOT NULL,
    rule TEXT NOT NULL,
    digest TEXT,
    target TEXT NOT NULL,
    state TEXT NOT NULL,
    run_id TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    data TEXT NOT NULL,
    log TEXT NOT NULL DEFAULT '',
    actor TEXT,
    actor_id TEXT NOT NULL DEFAULT ''
);
"""

# Every listing is newest first (created_at DESC, id DESC) and pages by created_at, so each index
# ends in (created_at, id): a filtered page walks its index backwards and stops after ``limit``
# rows, never sorting the rule's records (nor reading their logs, which history never selects).
_INDEXES = """
CREATE INDEX IF NOT EXISTS records_rule_digest ON records (rule, digest);
CREATE INDEX IF NOT EXISTS records_newest ON records (created_at, id);
CREATE INDEX IF NOT EXISTS records_rule_newest ON records (rule, created_at, id);
CREATE INDEX IF NOT EXISTS records_rule_state_newest ON records (rule, state, created_at, id);
CREATE INDEX IF NOT EXISTS records_state_newest ON records (state, created_at, id);
CREATE INDEX IF NOT EXISTS records_target_newest ON records (target, created_at, id);
CREATE INDEX IF NOT EXISTS records_actor_newest ON records (actor, created_at, id);
CREATE INDEX IF NOT EXISTS records_actor_id_newest ON records (actor_id, created_at, id);
"""

# user_version 2: actor columns and the newest-first indexes (version 1 ledgers are upgraded
# in place by the first process that opens them for writing)
_VERSION = 2
_UPGRADE_1 = """
ALTER TABLE records ADD COLUMN actor TEXT;
ALTER TABLE records ADD COLUMN actor_id TEXT NOT NULL DEFAULT '';
UPDATE records SET actor = json_extract(data, '$.actor'),
    actor_id = coalesce(json_extract(data, '$.actor_id'), '');
DROP INDEX IF EXISTS records_target;
DROP INDEX IF EXISTS records_created;
"""

_FINAL_STATES = tuple(sorted(state.value for state in State if state.final))
# rows deleted per statement: below SQLite's default limit of 32,766 bound parameters
_DELETE_BATCH = 500


def _statements(db: sqlite3.Connection, script: str) -> None:
    """Run a script statement by statement (``executescript`` would commit the transaction)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _dump(record: GateRecord) -> str:
    return json.dumps(record.to_dict(), sort_keys=True)


def _load(data: str, log: str) -> GateRecord:
    return GateRecord.from_dict(json.loads(data), log=log)


def history_queries(query: HistoryQuery = FIRST_PAGE) -> list[tuple[str, list[object]]]:
    """The statements (with their parameters) a history page runs: each selects
    ``created_at, id, data`` newest first; the page is their rows merged, newest first."""
    rule, target, state = query.rule, query.target, query.state
    since, before, actor, limit = query.since, query.before, query.actor, query.limit
    clauses: list[str] = []
    params: list[object] = []
    for column, value in (("rule", rule), ("target", target)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if state is not None:
        clauses.append("state = ?")
        params.append(state.value)
    # stored times are UTC ISO strings: compare like with like
    if since is not None:
        clauses.append("created_at >= ?")
        params.append(since.astimezone(UTC).isoformat())
    if before is not None:
        clauses.append("created_at < ?")
        params.append(before.astimezone(UTC).isoformat())
    # an actor is an object id or a name: one page from each column's index, merged (an OR
    # would make SQLite sort every record of that actor)
    choices: list[tuple[str, str] | None] = (
        [("actor_id", actor), ("actor", actor)] if actor is not None else [None]
    )
    queries = []
    for choice in choices:
        where = [*clauses, f"{choice[0]} = ?"] if choice else clauses
        values = [*params, choice[1]] if choice else params
        text = f" WHERE {' AND '.join(where)}" if where else ""
        queries.append(
            (
                f"SELECT created_at, id, data FROM records{text}"
                " ORDER BY created_at DESC, id DESC LIMIT ?",
                [*values, limit],
            )
        )
    return queries


class SqliteLedger:
    """Gate records in a SQLite file (created with its folder by the first write).

    Reads open the file read-only and never create it: before the first write the history is
    empty and every record is :class:`~gate.errors.NotFound`. Read commands call
    :meth:`require` first, so that a wrong ``data_dir`` says so instead of showing nothing.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ready = False
        if path.exists():
            self._prepare()

    def _prepare(self) -> None:
        """Create the file, its folder and the schema (idempotent: IF NOT EXISTS)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                self._migrate(db)
            finally:
                db.close()
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(
                f"cannot open the ledger {self.path}: {exc}; check the data_dir setting and its "
                "permissions"
            ) from None
        self._ready = True

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Bring the schema to ``_VERSION`` in one transaction (a no-op when it is there)."""
        if db.execute("PRAGMA user_version").fetchone()[0] >= _VERSION:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]  # another may have won
            if version < _VERSION:
                exists = db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records'"
                ).fetchone()
                columns = {row[1] for row in db.execute("PRAGMA table_info(records)")}
                if not exists:
                    _statements(db, _SCHEMA)
                elif "actor_id" not in columns:
                    _statements(db, _UPGRADE_1)
                _statements(db, _INDEXES)
                db.execute(f"PRAGMA user_version = {_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if not self._ready:
            self._prepare()
        # autocommit mode: transactions are explicit (BEGIN IMMEDIATE) where they matter
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            yield db
        finally:
            db.close()

    def require(self) -> None:
        """Raise :class:`~gate.errors.NotFound` when there is no ledger file (yet)."""
        if not self.path.exists():
            raise NotFound(
                f"no ledger at {self.path}; run 'gate run' first, or check --config and the "
                "data_dir it sets"
            )

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection (``mode=ro``): reading never creates or changes the ledger."""
        self.require()
        from urllib.parse import quote

        try:
            db = sqlite3.connect(
                f"file:{quote(str(self.path))}?mode=ro", uri=True, timeout=60, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise LedgerError(
                f"cannot read the ledger {self.path}: {exc}; check the file and its permissions"
            ) from None
        try:
            yield db
        except sqlite3.Error as exc:
            raise LedgerError(f"reading the ledger {self.path} failed: {exc}; retry") from None
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            with self._connect() as db:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise LedgerError(
                f"ledger {self.path} failed: {exc}; retry, or check the disk"
            ) from None

    def _insert(self, db: sqlite3.Connection, record: GateRecord) -> None:
        if db.execute("SELECT 1 FROM records WHERE id = ?", (record.id,)).fetchone():
            # the primary key would refuse it too; this says why, and nothing is overwritten
            raise LedgerError(
                f"a record with id {record.id} is already in the ledger {self.path}; record ids "
                "must be unique: create the record with a new id"
            )
        db.execute(
            "INSERT INTO records (id, action, rule, digest, target, state, run_id, created_at,"
            " updated_at, data, log, actor, actor_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.id,
                record.action,
                record.rule,
                record.digest,
                record.target,
                record.state.value,
                record.run_id,
                record.created_at.isoformat(),
                record.updated_at.isoformat(),
                _dump(record),
                record.log,
                record.actor,
                record.actor_id,
            ),
        )

    def claim(
        self,
        record: GateRecord,
        *,
        force: bool,
        lease_seconds: float,
        holder: str = "",
        start: bool = True,
    ) -> Claim:
        """Insert or take ``record`` unless (rule, digest) is settled or being gated; see the port."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT data, log FROM records WHERE rule = ? AND digest = ? AND action = 'gate'"
                " AND state != ? ORDER BY created_at DESC",
                (record.rule, record.digest, State.FAILED.value),
            ).fetchall()
            now = utcnow()
            for data, log in rows:
                step = claim_step(
                    _load(data, log),
                    record,
                    now=now,
                    force=force,
                    start=start,
                    lease_seconds=lease_seconds,
                    holder=holder,
                )
                if step is None:
                    continue
                if step.acquired:
                    # the write lock is ours since BEGIN IMMEDIATE: nobody changed it meanwhile
                    self._update(db, step.record)
                return step
            inserted = claim_insert(
                record, now=now, start=start, lease_seconds=lease_seconds, holder=holder
            )
            self._insert(db, inserted)
            return Claim(inserted, acquired=True)

    def _stored(self, db: sqlite3.Connection, record_id: str) -> GateRecord | None:
        row = db.execute("SELECT data, log FROM records WHERE id = ?", (record_id,)).fetchone()
        return _load(row[0], row[1]) if row else None

    def renew(self, record_id: str, holder: str, until: datetime) -> bool:
        """Move ``holder``'s lease on ``record_id`` to ``until``; False if it holds it no more."""
        with self._transaction() as db:
            stored = self._stored(db, record_id)
            if stored is None:
                raise NotFound(f"record {record_id} is not in the ledger {self.path}")
            renewed = renew_lease(stored, holder, until)
            if renewed is None:
                return False
            self._update(db, renewed)
            return True

    def _update(self, db: sqlite3.Connection, record: GateRecord) -> None:
        cursor = db.execute(
            "UPDATE records SET state = ?, run_id = ?, digest = ?, updated_at = ?, data = ?, log = ?,"
            " actor = ?, actor_id = ? WHERE id = ?",
            (
                record.state.value,
                record.run_id,
                record.digest,
                record.updated_at.isoformat(),
                _dump(record),
                record.log,
                record.actor,
                record.actor_id,
                record.id,
            ),
        )
        if cursor.rowcount != 1:
            raise NotFound(f"record {record.id} is not in the ledger {self.path}")

    def save(self, record: GateRecord) -> None:
        """Persist the newer version of a claimed record, unless another worker holds it now."""
        with self._transaction() as db:
            stored = self._stored(db, record.id)
            if stored is None:
                raise NotFound(f"record {record.id} is not in the ledger {self.path}")
            self._update(db, merge_lease(stored, record))

    def add(self, record: GateRecord) -> None:
        """Insert a record that takes no claim (a rollback)."""
        with self._transaction() as db:
            self._insert(db, record)

    def get(self, record_id: str) -> GateRecord:
        """Return one record by id (a unique prefix of at least 6 characters also works)."""
        record_id = record_id_query(record_id)
        with self._read() as db:
            row = db.execute("SELECT data, log FROM records WHERE id = ?", (record_id,)).fetchone()
            if row is None:
                # a key range on the primary key, not LIKE: the prefix is data, not a pattern
                rows = db.execute(
                    "SELECT data, log FROM records WHERE id >= ? AND id < ? LIMIT 2",
                    record_id_range(record_id),
                ).fetchall()
                row = rows[0] if len(rows) == 1 else None
        if row is None:
            raise NotFound(f"no record '{record_id}' in {self.path}; list them with 'gate history'")
        return _load(row[0], row[1])

    def history(self, query: HistoryQuery = FIRST_PAGE) -> list[GateRecord]:
        """Records newest first, filtered by rule, target repository, state, time and actor.

        Served by the index that starts with the filter's columns and ends in (created_at, id),
        so a page reads ``limit`` rows; logs are never read (:meth:`get` has them).
        """
        if not self.path.exists():
            return []  # nothing was ever recorded here
        rows: dict[str, tuple[str, str, str]] = {}
        with self._read() as db:
            for sql, params in history_queries(query):
                for row in db.execute(sql, params):
                    rows[row[1]] = row
        newest = sorted(rows.values(), reverse=True)
        limit = query.limit
        return [_load(data, "") for _, _, data in (newest[:limit] if limit >= 0 else newest)]

    def prune(self, *, created_before: datetime, keep: Callable[[GateRecord], bool]) -> int:
        """Delete the final records created before ``created_before`` that ``keep`` declines.

        One transaction: the candidates are read (without logs) and deleted under the write
        lock, so a record cannot change state between ``keep`` and its deletion.
        """
        if not self.path.exists():
            return 0
        bound = created_before.astimezone(UTC).isoformat()
        finals = ", ".join("?" * len(_FINAL_STATES))
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT id, data FROM records WHERE created_at < ? AND state IN ({finals})",
                (bound, *_FINAL_STATES),
            ).fetchall()
            doomed = [record_id for record_id, data in rows if not keep(_load(data, ""))]
            for start in range(0, len(doomed), _DELETE_BATCH):
                batch = doomed[start : start + _DELETE_BATCH]
                db.execute(
                    f"DELETE FROM records WHERE id IN ({', '.join('?' * len(batch))})", batch
                )
        return len(doomed)

    def decided(self, rule: str, digest: str) -> GateRecord | None:
        """The newest record that settles (rule, digest) (a decisive state), if any."""
        if not self.path.exists():
            return None  # nothing was ever gated here
        decisive = [s.value for s in State if s.decisive]
        with self._read() as db:
            row = db.execute(
                "SELECT data, log FROM records WHERE rule = ? AND digest = ? AND action = 'gate'"
                f" AND state IN ({', '.join('?' * len(decisive))}) ORDER BY created_at DESC LIMIT 1",
                (rule, digest, *decisive),
            ).fetchone()
        return _load(row[0], row[1]) if row else None
