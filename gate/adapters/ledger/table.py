"""The ledger on Azure Table Storage: records as entities, validation logs as blobs.

Everything lives in one partition of one table, so that the writes of a claim (the claim entity
of a (rule, digest) and the record it admits) go in one entity-group transaction: all or nothing,
conditional on the ETag the decision was based on. Two workers that read the same state and
decide to write race on that ETag; the loser re-reads and decides again. Lease renewals and
saves of a record are conditional on the record entity's ETag the same way (If-Match, 412 when
another write came first), so a heartbeat and its holder's save never lose each other's write
and a worker whose record was taken over cannot write it. One partition serves
about 2,000 entities a second, far more than a gate writes.

The row keys (:mod:`gate.adapters.ledger.table_keys`) give each (rule, digest) a claim entity
(``c|``), each record id an index entity (``i|``), each record its row (``r|``, newest first) and
two listing rows, copies under its rule (``R|``) and under its target (``T|``); ``v|layout``
says every record has its listing rows. The entities and their mapping to records are
:mod:`gate.adapters.ledger.table_entities`'s; the clients, error wording and storage primitives
:mod:`gate.adapters.ledger.table_base`'s (:class:`TableLedger`'s base class).

A page of ``history`` is one range query on the narrowest of these ranges (a rule's, else a
target's, else every record's), ``since``/``before`` bounding its keys and the other filters
evaluated by the service inside it (the intra-partition secondary index pattern of the Table
design guide, learn.microsoft.com/azure/storage/tables/table-storage-design-patterns), so a rare
rule's page never walks the records of the others. A record's rule, target, id and creation
time never change, so neither do its listing rows' keys: every write of a record rewrites its
listing rows in the same entity-group transaction (at most 100 entities and 4 MiB, all in one
partition: learn.microsoft.com/rest/api/storageservices/performing-entity-group-transactions;
a record is written with at most four other entities, a prune deletes 20 records a batch).

A table written before listing rows existed has no ``v|layout``: ``history`` then scans the
records as it always did (correct, not bounded) until :meth:`TableLedger.migrate` has written
every record's listing rows; the first :meth:`TableLedger.prune` (the retention timer) does so.
Upgrade every process that writes the ledger before migrating: an older one writes no listing
rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import suppress
from copy import replace
from datetime import datetime
from itertools import batched, islice
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableEntity, TableTransactionError

from gate.adapters.ledger.table_base import TableLedgerBase
from gate.adapters.ledger.table_entities import (
    Operation,
    _actor_properties,
    _etag,
    _record_entity,
    _record_from,
    _unless_changed,
)
from gate.adapters.ledger.table_keys import (
    _CLAIM_PREFIX,
    _PARTITION,
    _RECORD_PREFIX,
    _RULE_PREFIX,
    _TARGET_PREFIX,
    _claim_key,
    _index_key,
    _key_part,
    _listing_keys,
    _range,
)
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

# a prune deletes 4 entities per record plus the claim entities it rewrites: 100 at most
_PRUNE_BATCH = 20
# a migration rewrites 3 entities per record (the record and its two listing rows)
_MIGRATE_BATCH = 33
# a lost race costs one more read and decision; this many in a row means something is wrong
_CLAIM_ATTEMPTS = 20


class TableLedger(TableLedgerBase):
    """Gate records in an Azure Storage table, with validation logs in a blob container.

    Give ``endpoint`` (the account's table URL, ``https://ACCOUNT.table.core.windows.net``) and a
    ``credential`` (an identity with the Storage Table Data Contributor and Storage Blob Data
    Contributor roles), or a ``connection_string`` (Azurite, or an account key). The blob URL is
    derived from the table URL unless ``blob_endpoint`` says otherwise. The table and the
    container are created when missing. ``response_hook`` is called with every HTTP response
    the table and blob clients receive (azure-core's ``raw_response_hook``: how the tests and
    the benchmark count requests).
    """

    # -- the port -----------------------------------------------------------------------------

    def claim(
        self,
        record: GateRecord,
        *,
        force: bool,
        lease_seconds: float,
        holder: str = "",
        start: bool = True,
    ) -> Claim:
        """Insert or take ``record`` unless (rule, digest) is settled or being gated; see the port.

        Reads the claim entity, then the (rule, digest)'s records newest first until one decides;
        writes, if at all, in one transaction conditional on what it read. Round trips: 2 for a
        new (rule, digest), 2 for a duplicate (+1 to fetch a log), 3 to take or adopt a record.
        """
        with self._errors(f"claiming {record.rule} {record.digest} in {self._where}"):
            if record.digest is None:
                # nothing to deduplicate on (the SQLite ledger matches no rows either)
                inserted = claim_insert(
                    record, now=utcnow(), start=start, lease_seconds=lease_seconds, holder=holder
                )
                self._commit(
                    self._creates(inserted, self._store_log(inserted, new=True)),
                    first_may_race=False,
                )
                return Claim(inserted, acquired=True)
            claim_key = _claim_key(record.rule, record.digest)
            for _ in range(_CLAIM_ATTEMPTS):
                outcome = self._claim_once(record, claim_key, force, lease_seconds, holder, start)
                if outcome is not None:
                    return outcome
        raise LedgerError(
            f"claiming {record.rule} {record.digest} lost {_CLAIM_ATTEMPTS} races in a row in "
            f"{self._where}; too many workers are claiming the same image at once: retry later"
        )

    def _claim_once(
        self,
        record: GateRecord,
        claim_key: str,
        force: bool,
        lease_seconds: float,
        holder: str,
        start: bool,
    ) -> Claim | None:
        """One read-decide-write round; None when the write lost a race."""
        claim = self._read(claim_key)
        keys: list[str] = json.loads(str(claim["records"])) if claim is not None else []
        gone: set[str] = set()  # failed or missing records: they never block, forget them
        now = utcnow()
        for key in sorted(keys):
            entity = self._read(key)
            if entity is None:
                gone.add(key)
                continue
            existing = _record_from(entity)
            if existing.state is State.FAILED:
                gone.add(key)
                continue
            if existing.action != "gate":
                continue
            step = claim_step(
                existing,
                record,
                now=now,
                force=force,
                start=start,
                lease_seconds=lease_seconds,
                holder=holder,
            )
            if step is None:
                continue
            loaded = self._with_log(entity)
            if not step.acquired:
                return Claim(loaded, acquired=False)
            taken = replace(step.record, log=loaded.log)
            return self._take(claim_key, claim, keys, gone, entity, taken, resumed=step.resumed)
        inserted = claim_insert(
            record, now=now, start=start, lease_seconds=lease_seconds, holder=holder
        )
        log_blob = self._store_log(inserted, new=True)
        creates = self._creates(inserted, log_blob)
        kept = [key for key in keys if key not in gone] + [str(creates[0][1]["RowKey"])]
        operations = [self._claim_write(claim_key, claim, kept), *creates]
        if not self._commit(operations, first_may_race=True):
            return None
        return Claim(inserted, acquired=True)

    def _take(
        self,
        claim_key: str,
        claim: TableEntity | None,
        keys: list[str],
        gone: set[str],
        entity: TableEntity,
        record: GateRecord,
        *,
        resumed: bool,
    ) -> Claim | None:
        # rewriting the claim entity too (not only the record) makes every claim decision of
        # this (rule, digest) conflict with every other one: claims are serialised per image
        kept = [key for key in keys if key not in gone]
        update = _record_entity(record, str(entity.get("log") or ""))
        operations: list[Operation] = [
            self._claim_write(claim_key, claim, kept),
            *self._rewrites(update, record, _etag(entity)),
        ]
        if not self._commit(operations, first_may_race=True):
            return None
        return Claim(record, acquired=True, resumed=resumed)

    def _record_row(self, record_id: str) -> str | None:
        """The row key of record ``record_id`` (it follows created_at, which never changes)."""
        row = self._rows.get(record_id)
        if row is None:
            index = self._read(_index_key(record_id))
            if index is None:
                return None
            row = self._rows[record_id] = str(index["row"])
        return row

    def _conditional_update(
        self,
        record_id: str,
        change: Callable[[GateRecord], GateRecord | None],
        what: str,
        *,
        keep_log: bool = False,
    ) -> bool:
        """Read record ``record_id``, ``change`` it, write it back if unchanged meanwhile (ETag).

        False when ``change`` declines (returns None); NotFound when there is no such record.
        Lost races (412: another worker wrote in between) are read and decided again. With
        ``keep_log`` the entity keeps its log blob (``change`` saw the record without its log).
        """
        for _ in range(_CLAIM_ATTEMPTS):
            row = self._record_row(record_id)
            entity = self._read(row) if row is not None else None
            if entity is None:
                raise NotFound(
                    f"record {record_id} is not in {self._where}; claim or add it before saving"
                )
            changed = change(_record_from(entity))
            if changed is None:
                return False
            log_blob = str(entity.get("log") or "") if keep_log else self._store_log(changed)
            update = _record_entity(changed, log_blob)
            # Update Entity with If-Match fails with 412 Precondition Failed when the stored
            # ETag differs (learn.microsoft.com/rest/api/storageservices/update-entity2), and
            # fails the whole transaction with it; a 404 means it was pruned meanwhile: both
            # are read again (then NotFound)
            if self._commit(self._rewrites(update, changed, _etag(entity)), first_may_race=True):
                return True
        raise LedgerError(
            f"{what} lost {_CLAIM_ATTEMPTS} races in a row in {self._where}; retry later"
        )

    def renew(self, record_id: str, holder: str, until: datetime) -> bool:
        """Move ``holder``'s lease on ``record_id`` to ``until``; False if it holds it no more.

        The stored record's own fields (its log too) are written back as read: only the lease
        moves, and only if nobody wrote the entity since it was read (its ETag).
        """
        with self._errors(f"renewing the lease on record {record_id} in {self._where}"):
            return self._conditional_update(
                record_id,
                lambda stored: renew_lease(stored, holder, until),
                f"renewing the lease on record {record_id}",
                keep_log=True,
            )

    def save(self, record: GateRecord) -> None:
        """Persist the newer version of a claimed record (its log to a blob, when it has one),
        unless another worker holds it now (ETag-conditional, like a claim)."""
        with self._errors(f"saving record {record.id} in {self._where}"):
            self._conditional_update(
                record.id,
                lambda stored: merge_lease(stored, record),
                f"saving record {record.id}",
            )

    def add(self, record: GateRecord) -> None:
        """Insert a record that takes no claim (a rollback).

        A gate record with a digest is still listed under its (rule, digest), so that later
        claims see it, as they would in the SQLite ledger.
        """
        with self._errors(f"adding record {record.id} to {self._where}"):
            creates = self._creates(record, self._store_log(record, new=True))
            if record.action != "gate" or record.digest is None:
                self._commit(creates, first_may_race=False)
                return
            claim_key = _claim_key(record.rule, record.digest)
            for _ in range(_CLAIM_ATTEMPTS):
                claim = self._read(claim_key)
                keys: list[str] = json.loads(str(claim["records"])) if claim is not None else []
                keys.append(str(creates[0][1]["RowKey"]))
                operations = [self._claim_write(claim_key, claim, keys), *creates]
                if self._commit(operations, first_may_race=True):
                    return
        raise LedgerError(
            f"adding record {record.id} lost {_CLAIM_ATTEMPTS} races in a row in {self._where}; "
            "retry later"
        )

    def get(self, record_id: str) -> GateRecord:
        """Return one record by id, with its log (a unique prefix of 6+ characters also works)."""
        record_id = record_id_query(record_id)
        with self._errors(f"reading record {record_id} from {self._where}"):
            index = self._read(_index_key(record_id))
            if index is None:
                low, high = (_index_key(bound) for bound in record_id_range(record_id))
                found = list(
                    islice(
                        self._table.query_entities(
                            "PartitionKey eq @p and RowKey ge @low and RowKey lt @high",
                            parameters={"p": _PARTITION, "low": low, "high": high},
                            select=["RowKey", "row"],
                            results_per_page=2,
                        ),
                        2,
                    )
                )
                index = found[0] if len(found) == 1 else None
            entity = self._read(str(index["row"])) if index is not None else None
            if entity is None:
                raise NotFound(
                    f"no record '{record_id}' in {self._where}; list them with 'gate history'"
                )
            return self._with_log(entity)

    def history(self, query: HistoryQuery = FIRST_PAGE) -> list[GateRecord]:
        """Records newest first, filtered by rule, target repository, state, time and actor.

        One range query on the narrowest listing range (the rule's rows, else the target's,
        else every record's; ``since`` and ``before`` bound it), the other filters evaluated by
        the service inside it; logs are never fetched (``get`` returns a record with its log).
        A ledger from before listing rows is scanned as before (see the module docstring). A
        negative ``limit`` means no limit, as in SQLite.
        """
        rule, target, state = query.rule, query.target, query.state
        since, before, actor, limit = query.since, query.before, query.actor, query.limit
        if limit == 0:
            return []
        with self._errors(f"listing records of {self._where}"):
            if not self._layout_current():
                return self._scan(rule, target, state, since, before, actor, limit)
            filters: dict[str, str | None] = {"rule": None, "target": target}
            if rule is not None:
                prefix = f"{_RULE_PREFIX}{_key_part(rule)}|"
            elif target is not None:
                prefix, filters = f"{_TARGET_PREFIX}{_key_part(target)}|", {}
            else:
                prefix = _RECORD_PREFIX
            filters["state"] = state.value if state is not None else None
            entities = self._query(prefix, since, before, filters, actor, limit)
            chosen = islice(entities, limit) if limit > 0 else entities
            listed = (self._listed(entity) for entity in chosen)
            return [record for record in listed if record is not None]

    def _query(
        self,
        prefix: str,
        since: datetime | None,
        before: datetime | None,
        filters: dict[str, str | None],
        actor: str | None,
        limit: int,
    ) -> Iterator[TableEntity]:
        """The rows under ``prefix`` created in [since, before) that match, newest first.

        A page holds at most 1,000 entities and may hold fewer, even none, with a continuation
        (learn.microsoft.com/rest/api/storageservices/query-timeout-and-pagination): the SDK's
        iterator follows continuations until ``limit`` rows have come.
        """
        low, high = _range(prefix, since, before)
        clauses = ["PartitionKey eq @p", "RowKey gt @low", "RowKey lt @high"]
        parameters: dict[str, Any] = {"p": _PARTITION, "low": low, "high": high}
        for name, value in filters.items():
            if value is not None:
                clauses.append(f"{name} eq @{name}")
                parameters[name] = value
        if actor is not None:
            # the SDK substitutes @names in space-separated words: keep ")" apart from one
            clauses.append("(actor_id eq @actor or actor eq @actor )")
            parameters["actor"] = actor
        pages = min(limit, 1000) if limit > 0 else 1000
        return self._table.query_entities(
            " and ".join(clauses), parameters=parameters, results_per_page=pages
        )

    def _listed(self, entity: TableEntity) -> GateRecord | None:
        """The record a record row or a listing row holds (a long one is read from its row)."""
        if int(entity["data_parts"]) > 0:
            return _record_from(entity)
        stored = self._read(str(entity["row"]))
        return _record_from(stored) if stored is not None else None  # None: pruned meanwhile

    def _scan(
        self,
        rule: str | None,
        target: str | None,
        state: State | None,
        since: datetime | None,
        before: datetime | None,
        actor: str | None,
        limit: int,
    ) -> list[GateRecord]:
        """History on a ledger from before listing rows: the record rows, filtered.

        Their rows may lack the actor properties, so the actor is matched here, on the JSON.
        """
        filters = {
            "rule": rule,
            "target": target,
            "state": state.value if state is not None else None,
        }
        entities = self._query(_RECORD_PREFIX, since, before, filters, None, limit)
        records = (_record_from(entity) for entity in entities)
        if actor is not None:
            records = (r for r in records if actor in (r.actor_id, r.actor))
        return list(islice(records, limit) if limit > 0 else records)

    # -- migration to listing rows ------------------------------------------------------------

    def migrate(self) -> int:
        """Give every record of a ledger from before listing rows its listing rows.

        Walks the record rows once, rewriting each with its listing rows (and the actor
        properties filters use) in transactions of 33 records, each conditional on the records'
        ETags (a record written meanwhile is read and rewritten again), then marks the layout
        current. Idempotent: an interrupted migration is run again. Returns how many records
        it rewrote (0 when the layout was current already).
        """
        with self._errors(f"migrating the records of {self._where} to listing rows"):
            if self._layout_current():
                return 0
            low, high = _range(_RECORD_PREFIX, None, None)
            rows = self._table.query_entities(
                "PartitionKey eq @p and RowKey gt @low and RowKey lt @high",
                parameters={"p": _PARTITION, "low": low, "high": high},
                results_per_page=1000,
            )
            count = sum(
                self._reindex(list(batch)) for batch in batched(rows, _MIGRATE_BATCH, strict=False)
            )
            self._mark_layout()
            return count

    def _reindex(self, entities: list[TableEntity]) -> int:
        for _ in range(_CLAIM_ATTEMPTS):
            operations: list[Operation] = []
            for entity in entities:
                record = _record_from(entity)
                # the stored JSON is kept as written; only the filter properties are added
                rewritten = {**entity, **_actor_properties(record)}
                operations += self._rewrites(rewritten, record, _etag(entity))
            try:
                if operations:
                    self._table.submit_transaction(operations)
                return len(entities)
            except TableTransactionError as exc:
                if exc.status_code not in (404, 412):
                    raise
            # a record changed or went (pruned) since it was read: read them again
            fresh = (self._read(str(entity["RowKey"])) for entity in entities)
            entities = [entity for entity in fresh if entity is not None]
        raise LedgerError(
            f"migrating the records of {self._where} lost {_CLAIM_ATTEMPTS} races in a row; "
            "retry later"
        )

    # -- retention ----------------------------------------------------------------------------

    def prune(self, *, created_before: datetime, keep: Callable[[GateRecord], bool]) -> int:
        """Delete final records created before ``created_before`` that ``keep`` declines.

        With each record go, in one transaction of up to 20 records: its id's index entity, its
        listing rows and its key in the claim entity of its (rule, digest) (ETag-conditional;
        deleted when no key is left), so a later claim of that (rule, digest) inserts anew;
        then its log blob. A record or claim written meanwhile is read and decided again;
        records in progress are never deleted. A ledger from before listing rows is migrated
        first. Returns how many records were deleted.
        """
        with self._errors(f"pruning records of {self._where}"):
            self.migrate()
            low, high = _range(_RECORD_PREFIX, None, created_before)
            rows = self._table.query_entities(
                "PartitionKey eq @p and RowKey gt @low and RowKey lt @high",
                parameters={"p": _PARTITION, "low": low, "high": high},
                results_per_page=1000,
            )
            prunable = (entity for entity in rows if self._prunable(entity, keep))
            deleted = sum(
                self._delete(list(batch), keep)
                for batch in batched(prunable, _PRUNE_BATCH, strict=False)
            )
            return deleted

    @staticmethod
    def _prunable(entity: TableEntity, keep: Callable[[GateRecord], bool]) -> bool:
        record = _record_from(entity)
        return record.state.final and not keep(record)

    def _delete(self, entities: list[TableEntity], keep: Callable[[GateRecord], bool]) -> int:
        """Delete these records and what goes with them; how many went (see :meth:`prune`)."""
        absent: set[str] = set()  # index or listing rows found missing: not deleted again
        for _ in range(_CLAIM_ATTEMPTS):
            operations: list[Operation] = []
            claims: dict[str, tuple[TableEntity, list[str]]] = {}
            for entity in entities:
                record = _record_from(entity)
                operations.append(("delete", entity, _unless_changed(_etag(entity))))
                keys = [_index_key(record.id), *_listing_keys(record)]
                operations += [
                    ("delete", {"PartitionKey": _PARTITION, "RowKey": key})
                    for key in keys
                    if key not in absent
                ]
                if record.digest is not None:
                    claim_key = _claim_key(record.rule, record.digest)
                    if claim_key not in claims:
                        claim = self._read(claim_key)
                        if claim is None:
                            continue
                        claims[claim_key] = (claim, json.loads(str(claim["records"])))
                    claims[claim_key][1][:] = [
                        key for key in claims[claim_key][1] if key != entity["RowKey"]
                    ]
            for claim_key, (claim, keys) in claims.items():
                if not keys:
                    operations.append(("delete", claim, _unless_changed(_etag(claim))))
                elif len(keys) < len(json.loads(str(claim["records"]))):
                    operations.append(self._claim_write(claim_key, claim, keys))
            try:
                self._table.submit_transaction(operations)
            except TableTransactionError as exc:
                if exc.status_code not in (404, 412):
                    raise
                failed = operations[exc.index] if exc.index < len(operations) else None
                key = str(failed[1]["RowKey"]) if failed is not None else ""
                if exc.status_code == 404 and key[:2] not in (_RECORD_PREFIX, _CLAIM_PREFIX):
                    absent.add(key)  # written by a gate that kept no such row: skip it
                    continue
                # a record or claim changed or went since it was read: read and decide again
                fresh = (self._read(str(entity["RowKey"])) for entity in entities)
                entities = [e for e in fresh if e is not None and self._prunable(e, keep)]
                if not entities:
                    return 0
                continue
            for entity in entities:
                record_id = str(entity["id"])
                self._rows.pop(record_id, None)
                self._log_hashes.pop(record_id, None)
                if entity.get("log"):
                    with suppress(ResourceNotFoundError):
                        self._logs.delete_blob(str(entity["log"]))
            return len(entities)
        raise LedgerError(
            f"pruning records of {self._where} lost {_CLAIM_ATTEMPTS} races in a row; retry later"
        )

    def decided(self, rule: str, digest: str) -> GateRecord | None:
        """The promoted or rejected record of (rule, digest), if any (the newest)."""
        with self._errors(f"reading the decision on {rule} {digest} from {self._where}"):
            claim = self._read(_claim_key(rule, digest))
            keys: list[str] = json.loads(str(claim["records"])) if claim is not None else []
            for key in sorted(keys):
                entity = self._read(key)
                if entity is None:
                    continue
                if entity["action"] == "gate" and State(entity["state"]).decisive:
                    return self._with_log(entity)
            return None
