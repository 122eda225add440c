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
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from gate.errors import LedgerError, NotFound
from gate.model import (
    Claim,
    GateRecord,
    State,
    claim_insert,
    claim_step,
    merge_lease,
    record_id_query,
    record_id_range,
    renew_lease,
    utcnow,
)

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
    log TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS records_rule_digest ON records (rule, digest);
CREATE INDEX IF NOT EXISTS records_target ON records (target, created_at);
CREATE INDEX IF NOT EXISTS records_created ON records (created_at);
"""


def _dump(record: GateRecord) -> str:
    return json.dumps(record.to_dict(), sort_keys=True)


def _load(data: str, log: str) -> GateRecord:
    return GateRecord.from_dict(json.loads(data), log=log)


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
                db.executescript(_SCHEMA)
            finally:
                db.close()
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(
                f"cannot open the ledger {self.path}: {exc}; check the data_dir setting and its "
                "permissions"
            ) from None
        self._ready = True

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
        db.execute(
            "INSERT INTO records (id, action, rule, digest, target, state, run_id, created_at,"
            " updated_at, data, log) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            "UPDATE records SET state = ?, run_id = ?, digest = ?, updated_at = ?, data = ?, log = ?"
            " WHERE id = ?",
            (
                record.state.value,
                record.run_id,
                record.digest,
                record.updated_at.isoformat(),
                _dump(record),
                record.log,
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

    def history(
        self,
        *,
        rule: str | None = None,
        target: str | None = None,
        state: State | None = None,
        since: datetime | None = None,
        before: datetime | None = None,
        limit: int = 50,
    ) -> list[GateRecord]:
        """Records newest first, filtered by rule, target repository, state and time."""
        clauses, params = [], []
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
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        if not self.path.exists():
            return []  # nothing was ever recorded here
        with self._read() as db:
            rows = db.execute(
                f"SELECT data, log FROM records {where} ORDER BY created_at DESC, id DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
        return [_load(data, log) for data, log in rows]

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
