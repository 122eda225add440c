"""The ledger on Azure Table Storage: records as entities, validation logs as blobs.

Everything lives in one partition of one table, so that the writes of a claim (the claim entity
of a (rule, digest) and the record it admits) go in one entity-group transaction: all or nothing,
conditional on the ETag the decision was based on. Two workers that read the same state and
decide to write race on that ETag; the loser re-reads and decides again. Lease renewals and
saves of a record are conditional on the record entity's ETag the same way (If-Match, 412 when
another write came first), so a heartbeat and its holder's save never lose each other's write
and a worker whose record was taken over cannot write it. One partition serves
about 2,000 entities a second, far more than a gate writes.

Row keys (``PartitionKey`` is always ``ledger``)::

    c|{rule}|{digest}   claim entity: the row keys of the gate records of (rule, digest)
    i|{id}              index entity: the row key of record ``id`` (lookup by id and id prefix)
    r|{time}|{id}       record: ``time`` counts down from the end of the calendar and ``id`` is
                        byte-inverted, so ascending row keys are newest first (created_at, then id)
    R|{rule}|{time}|{id}    listing rows: a copy of the record (its JSON and filter properties,
    T|{target}|{time}|{id}  never its log) under its rule and under its target, newest first
    v|layout            the key layout's version: present when every record has listing rows

A page of ``history`` is one range query on the narrowest of these ranges (a rule's, else a
target's, else every record's), ``since``/``before`` bounding its keys and the other filters
evaluated by the service inside it (the intra-partition secondary index pattern of the Table
design guide, learn.microsoft.com/azure/storage/tables/table-storage-design-patterns), so a rare
rule's page never walks the records of the others. A record's rule, target, id and creation
time never change, so neither do its listing rows' keys: every write of a record rewrites its
listing rows in the same entity-group transaction (at most 100 entities and 4 MiB, all in one
partition: learn.microsoft.com/rest/api/storageservices/performing-entity-group-transactions;
a record is written with at most four other entities, a prune deletes 20 records a batch).

A string property holds at most 32K UTF-16 characters and an entity at most 1 MiB, so the
validation log goes to the blob ``{record id}.log`` of the log container and the record keeps its
name; the record's JSON is split over ``data_0``, ``data_1`` … when it is long. A listing row
copies the JSON of a record up to 32,000 characters; a longer one (a huge reason) is listed by
pointing at the record row (``row``), read when that record is listed.

A table written before listing rows existed has no ``v|layout``: ``history`` then scans the
records as it always did (correct, not bounded) until :meth:`TableLedger.migrate` has written
every record's listing rows; the first :meth:`TableLedger.prune` (the retention timer) does so.
Upgrade every process that writes the ledger before migrating: an older one writes no listing
rows.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from copy import replace
from datetime import UTC, datetime, timedelta
from itertools import batched, islice
from typing import Any, NoReturn
from urllib.parse import urlsplit

from azure.core import MatchConditions
from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.data.tables import TableClient, TableEntity, TableTransactionError, UpdateMode
from azure.storage.blob import ContainerClient, ContentSettings

from gate.domain.records import (
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
from gate.errors import ConfigError, LedgerError, NotFound
from gate.ports import FIRST_PAGE, HistoryQuery

_PARTITION = "ledger"
_CLAIM_PREFIX = "c|"
_INDEX_PREFIX = "i|"
_RECORD_PREFIX = "r|"
_RULE_PREFIX = "R|"
_TARGET_PREFIX = "T|"
_LAYOUT_KEY = "v|layout"
_LAYOUT_VERSION = 2
# a listing row copies a record's JSON up to this many characters (two properties); a longer
# record is listed by reading its row, so that a write stays far below a transaction's 4 MiB
_INLINE_DATA = 32_000
# a prune deletes 4 entities per record plus the claim entities it rewrites: 100 at most
_PRUNE_BATCH = 20
# a migration rewrites 3 entities per record (the record and its two listing rows)
_MIGRATE_BATCH = 33
# a lost race costs one more read and decision; this many in a row means something is wrong
_CLAIM_ATTEMPTS = 20
# 16,000 code points are at most 32,000 UTF-16 units: below the 32K limit of a string property
_CHUNK = 16_000
_KEY_SAFE = frozenset(string.ascii_letters + string.digits + "-_.:@+=")
_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{2,62}")
_CONTAINER_NAME = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
_EPOCH = datetime(1, 1, 1, tzinfo=UTC)
_MAX_MICROSECONDS = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)

Operation = tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], dict[str, Any]]


def _key_part(text: str) -> str:
    """``text`` escaped for a row key (which refuses ``/ \\ # ?`` and control characters).

    Character by character, so the escape of a prefix is a prefix of the escape.
    """
    return "".join(
        char if char in _KEY_SAFE else "".join(f"~{byte:02x}" for byte in char.encode())
        for char in text
    )


def _microseconds(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _time_key(moment: datetime) -> str:
    """A fixed-width key that sorts later moments first."""
    return f"{_MAX_MICROSECONDS - _microseconds(moment):018d}"


def _descending(text: str) -> str:
    """A key that sorts in the reverse order of ``text`` (bytes inverted, then a terminator
    above every hex digit, so that a prefix sorts after the longer texts it starts)."""
    return "".join(f"{255 - byte:02x}" for byte in text.encode()) + "z"


def _newest_first(record: GateRecord) -> str:
    return f"{_time_key(record.created_at)}|{_descending(record.id)}"


def _record_key(record: GateRecord) -> str:
    return f"{_RECORD_PREFIX}{_newest_first(record)}"


def _listing_keys(record: GateRecord) -> tuple[str, str]:
    """The row keys of ``record``'s listing rows: under its rule, under its target."""
    tail = _newest_first(record)
    return (
        f"{_RULE_PREFIX}{_key_part(record.rule)}|{tail}",
        f"{_TARGET_PREFIX}{_key_part(record.target)}|{tail}",
    )


def _range(prefix: str, since: datetime | None, before: datetime | None) -> tuple[str, str]:
    """The exclusive row-key bounds of the rows under ``prefix`` created in [since, before).

    Under a prefix, keys are ``{prefix}{time key}|…`` and time keys fall as created_at rises;
    ``}`` sorts just after ``|``, so ``{prefix}{key}}`` lies past every row of that time key
    and ``{prefix minus its "|"}}`` past every row under the prefix.
    """
    low, high = prefix, prefix[:-1] + "}"
    if before is not None:
        low = f"{prefix}{_time_key(before)}}}"  # created_at < before
    if since is not None:
        high = f"{prefix}{_time_key(since)}}}"  # created_at >= since
    return low, high


def _index_key(record_id: str) -> str:
    return f"{_INDEX_PREFIX}{_key_part(record_id)}"


def _claim_key(rule: str, digest: str) -> str:
    return f"{_CLAIM_PREFIX}{_key_part(rule)}|{_key_part(digest)}"


def _record_entity(record: GateRecord, log_blob: str) -> dict[str, Any]:
    data = json.dumps(record.to_dict(), sort_keys=True)
    chunks = [data[i : i + _CHUNK] for i in range(0, len(data), _CHUNK)] or [""]
    entity: dict[str, Any] = {
        "PartitionKey": _PARTITION,
        "RowKey": _record_key(record),
        # plain properties for $filter; the JSON in data_* is what is read back
        "id": record.id,
        "action": record.action,
        "rule": record.rule,
        "digest": record.digest or "",
        "target": record.target,
        "state": record.state.value,
        "created_at": record.created_at.isoformat(),
        "updated_at": record.updated_at.isoformat(),
        "log": log_blob,
        "data_parts": len(chunks),
    }
    entity.update(_actor_properties(record))
    entity.update({f"data_{i}": chunk for i, chunk in enumerate(chunks)})
    return entity


def _actor_properties(record: GateRecord) -> dict[str, str]:
    # "" for no actor: the Table service stores no null properties
    return {"actor": record.actor or "", "actor_id": record.actor_id}


def _listing_rows(entity: dict[str, Any], record: GateRecord) -> list[dict[str, Any]]:
    """``record``'s listing rows for its record entity ``entity``: its copies under its rule
    and its target (filter properties, and the JSON unless it is long), pointing at the row."""
    data = {key: value for key, value in entity.items() if key.startswith("data_")}
    inline = sum(len(str(value)) for key, value in data.items() if key != "data_parts")
    rows = []
    for key in _listing_keys(record):
        row = {
            name: value
            for name, value in entity.items()
            if not name.startswith("data_") and name not in ("log", "etag", "Timestamp")
        }
        row.update(RowKey=key, row=entity["RowKey"])
        row.update(data if inline <= _INLINE_DATA else {"data_parts": 0})
        rows.append(row)
    return rows


def _record_from(entity: TableEntity, log: str = "") -> GateRecord:
    data = "".join(str(entity[f"data_{i}"]) for i in range(int(entity["data_parts"])))
    return GateRecord.from_dict(json.loads(data), log=log)


def _etag(entity: TableEntity) -> str:
    return str(entity.metadata["etag"])


def _if_unchanged(etag: str) -> dict[str, Any]:
    return {
        "mode": UpdateMode.REPLACE,
        "etag": etag,
        "match_condition": MatchConditions.IfNotModified,
    }


def _unless_changed(etag: str) -> dict[str, Any]:
    """A delete's condition: the entity is as read (``etag``), else 412 and nothing deleted."""
    return {"etag": etag, "match_condition": MatchConditions.IfNotModified}


def _blob_endpoint_for(table_endpoint: str) -> str | None:
    """``https://ACCOUNT.blob.SUFFIX`` for ``https://ACCOUNT.table.SUFFIX``, else None."""
    parts = urlsplit(table_endpoint)
    labels = (parts.hostname or "").split(".")
    if len(labels) < 3 or labels[1] != "table":
        return None
    host = ".".join([labels[0], "blob", *labels[2:]])
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def _public_url(url: str) -> str:
    # a client URL can carry a SAS token in its query: never show that
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")


class TableLedger:
    """Gate records in an Azure Storage table, with validation logs in a blob container.

    Give ``endpoint`` (the account's table URL, ``https://ACCOUNT.table.core.windows.net``) and a
    ``credential`` (an identity with the Storage Table Data Contributor and Storage Blob Data
    Contributor roles), or a ``connection_string`` (Azurite, or an account key). The blob URL is
    derived from the table URL unless ``blob_endpoint`` says otherwise. The table and the
    container are created when missing. ``response_hook`` is called with every HTTP response
    the table and blob clients receive (azure-core's ``raw_response_hook``: how the tests and
    the benchmark count requests).
    """

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        credential: TokenCredential | None = None,
        connection_string: str | None = None,
        table: str = "gaterecords",
        log_container: str = "gatelogs",
        blob_endpoint: str | None = None,
        response_hook: Callable[[Any], None] | None = None,
    ) -> None:
        if (endpoint is None) == (connection_string is None):
            raise ConfigError(
                "the Table ledger needs exactly one of a table endpoint (with a credential) or a "
                "connection string; set one of azure.ledger.table_endpoint or "
                "azure.ledger.connection_string"
            )
        if not _TABLE_NAME.fullmatch(table):
            raise ConfigError(
                f"'{table}' cannot name a storage table: use 3 to 63 letters and digits, "
                "starting with a letter (e.g. gaterecords)"
            )
        if not _CONTAINER_NAME.fullmatch(log_container) or "--" in log_container:
            raise ConfigError(
                f"'{log_container}' cannot name a blob container: use 3 to 63 lowercase letters, "
                "digits and single hyphens, starting and ending with a letter or digit "
                "(e.g. gatelogs)"
            )
        self._log_hashes: dict[str, str] = {}
        self._rows: dict[str, str] = {}  # record id -> row key, which never changes
        self._indexed = False  # every record has its listing rows (v|layout seen)
        hooks: dict[str, Any] = (
            {} if response_hook is None else {"raw_response_hook": response_hook}
        )
        try:
            if connection_string is not None:
                self._table = TableClient.from_connection_string(connection_string, table, **hooks)
                self._logs = ContainerClient.from_connection_string(
                    connection_string, log_container, **hooks
                )
            else:
                assert endpoint is not None
                if credential is None:
                    raise ConfigError(
                        f"the Table ledger at {_public_url(endpoint)} needs a credential; pass "
                        "one (DefaultAzureCredential in Azure) or use a connection string"
                    )
                blobs = blob_endpoint or _blob_endpoint_for(endpoint)
                if blobs is None:
                    raise ConfigError(
                        f"cannot tell the blob endpoint of {_public_url(endpoint)} (validation "
                        "logs go to blobs); pass blob_endpoint, or use a connection string"
                    )
                self._table = TableClient(endpoint, table, credential=credential, **hooks)
                self._logs = ContainerClient(blobs, log_container, credential=credential, **hooks)
        except ValueError:
            # the SDK's message may quote the connection string: keep it out of ours
            raise ConfigError(
                "the Table ledger's connection string or endpoint is malformed; check the "
                "connection string's format (AccountName=…;AccountKey=…;TableEndpoint=…) or "
                "the endpoint URL (https://ACCOUNT.table.core.windows.net)"
            ) from None
        self._where = f"table '{table}' at {_public_url(self._table.url)}"
        # either may exist already, or another worker may have just created it
        with self._errors(f"creating {self._where}"):
            try:
                self._table.create_table()
            except ResourceExistsError:
                pass
            else:
                # a new table has no record without listing rows: mark its layout current
                self._mark_layout()
        container = f"the log container at {_public_url(self._logs.url)}"
        with self._errors(f"creating {container}"), suppress(ResourceExistsError):
            self._logs.create_container()

    def close(self) -> None:
        """Close the HTTP sessions of the table and blob clients."""
        self._table.close()
        self._logs.close()

    # -- errors -------------------------------------------------------------------------------

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn SDK errors into LedgerError: the cause (status, error code) and a fix.

        Only the status, the service's error code and the (key-free) URL go into the message:
        a service message or a connection string could carry a signature or a key.
        """
        try:
            yield
        except (ConfigError, NotFound, LedgerError):
            raise
        except AzureError as exc:
            self._fail(what, exc)

    def _fail(self, what: str, exc: AzureError) -> NoReturn:
        if isinstance(exc, HttpResponseError) and exc.status_code is not None:
            code = getattr(exc, "error_code", None) or (exc.reason or "")
            code = getattr(code, "value", code)
            if code == "TableNotFound":
                raise self._no_table() from None
            if exc.status_code in (401, 403):
                raise LedgerError(
                    f"{what} failed: the storage account refused the credential "
                    f"({exc.status_code} {code}); check the account key of the connection string, "
                    "or give the identity the Storage Table Data Contributor and Storage Blob "
                    "Data Contributor roles on the account"
                ) from None
            if 400 <= exc.status_code < 500 and exc.status_code not in (408, 429):
                raise LedgerError(
                    f"{what} failed: the storage service refused the request "
                    f"({exc.status_code} {code}); check the ledger settings against the account"
                ) from None
            raise LedgerError(
                f"{what} failed: the storage service answered {exc.status_code} {code}; "
                "retry later, and check the storage account if it persists"
            ) from None
        if isinstance(exc, ClientAuthenticationError):
            # no HTTP answer: the credential could not sign the request or get a token
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise LedgerError(
                f"{what} failed: the credential could not authenticate the request ({first}); "
                "check the account key of the connection string, or the managed identity and "
                "the credential configuration"
            ) from None
        if isinstance(exc, ServiceRequestError | ServiceResponseError):
            raise LedgerError(
                f"{what} failed: the storage service could not be reached "
                f"({type(exc).__name__}); check the endpoint and the network, then retry"
            ) from None
        raise LedgerError(f"{what} failed ({type(exc).__name__}); retry later") from None

    def _no_table(self) -> LedgerError:
        # the constructor creates the table: a missing one was deleted, records and all
        return LedgerError(
            f"no ledger at {self._where}: the table does not exist any more; create it (or "
            "restart the gate, which creates it) and restore the records from a backup, or "
            "check the azure.ledger settings of --config"
        )

    # -- storage primitives -------------------------------------------------------------------

    def _read(self, row_key: str) -> TableEntity | None:
        try:
            return self._table.get_entity(_PARTITION, row_key)
        except ResourceNotFoundError as exc:
            if getattr(getattr(exc, "error_code", None), "value", None) == "TableNotFound":
                raise self._no_table() from None
            return None

    def _commit(self, operations: list[Operation], *, first_may_race: bool) -> bool:
        """Run ``operations`` as one transaction; False if it lost a race worth re-deciding.

        Races: an entity we update or delete was changed since we read it (412), or, with
        ``first_may_race``, the first operation's entity (a claim entity, or the record a save
        rewrites) was created or deleted meanwhile (409, 404). Any other 409 is a duplicate
        record id: refused, nothing written.
        """
        try:
            self._table.submit_transaction(operations)
            return True
        except TableTransactionError as exc:
            if exc.status_code == 412 or (
                first_may_race and exc.index == 0 and exc.status_code in (404, 409)
            ):
                return False
            if exc.status_code == 409:
                created = (op[1] for op in operations if op[0] == "create" and "id" in op[1])
                raise self._duplicate(str(next(created, {}).get("id", "?"))) from None
            raise

    def _store_log(self, record: GateRecord, *, new: bool = False) -> str:
        """Upload the record's log (unless this ledger uploaded the same text); its blob name.

        For a ``new`` record the blob must not exist: one that does belongs to a record with
        the same id (refused: :class:`LedgerError`, its log left as it was), or was left by an
        insert that never committed (no such record: replaced).
        """
        if not record.log:
            return ""
        name = f"{record.id}.log"
        digest = hashlib.sha256(record.log.encode()).hexdigest()
        if self._log_hashes.get(record.id) != digest:
            data = record.log.encode()
            settings = ContentSettings(content_type="text/plain; charset=utf-8")
            try:
                self._logs.upload_blob(name, data, overwrite=not new, content_settings=settings)
            except ResourceExistsError:
                if self._read(_index_key(record.id)) is not None:
                    raise self._duplicate(record.id) from None
                self._logs.upload_blob(name, data, overwrite=True, content_settings=settings)
            self._log_hashes[record.id] = digest
        return name

    def _duplicate(self, record_id: str) -> LedgerError:
        return LedgerError(
            f"a record with id {record_id} is already in {self._where}; record ids must be "
            "unique: create the record with a new id (nothing was written)"
        )

    def _with_log(self, entity: TableEntity) -> GateRecord:
        name = str(entity.get("log") or "")
        if not name:
            return _record_from(entity)
        try:
            log = self._logs.download_blob(name).readall().decode()
        except ResourceNotFoundError:
            log = ""  # deleted by a retention policy: the record stands without it
        record = _record_from(entity, log)
        self._log_hashes[record.id] = hashlib.sha256(log.encode()).hexdigest()
        return record

    def _creates(self, record: GateRecord, log_blob: str) -> list[Operation]:
        """Insert ``record``: its row, its id's index entity, its listing rows (4 entities).

        All are inserts, which the service refuses (409) when the row key exists: a duplicate
        id never overwrites the record it names.
        """
        entity = _record_entity(record, log_blob)
        index = {
            "PartitionKey": _PARTITION,
            "RowKey": _index_key(record.id),
            "row": entity["RowKey"],
        }
        listed: list[Operation] = [("create", row) for row in _listing_rows(entity, record)]
        return [("create", entity), ("create", index), *listed]

    @staticmethod
    def _rewrites(entity: dict[str, Any], record: GateRecord, etag: str) -> list[Operation]:
        """Replace record row ``entity`` if unchanged since ``etag``, and its listing rows with it.

        The listing rows are upserts (a record from before them has none yet); the record's
        ETag condition guards them too: the transaction is all or nothing.
        """
        rows: list[Operation] = [
            ("upsert", row, {"mode": UpdateMode.REPLACE}) for row in _listing_rows(entity, record)
        ]
        return [("update", entity, _if_unchanged(etag)), *rows]

    def _claim_write(self, claim_key: str, claim: TableEntity | None, keys: list[str]) -> Operation:
        entity = {
            "PartitionKey": _PARTITION,
            "RowKey": claim_key,
            "records": json.dumps(sorted(keys)),
        }
        if claim is None:
            return ("create", entity)
        return ("update", entity, _if_unchanged(_etag(claim)))

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

    # -- layout and migration -----------------------------------------------------------------

    def _mark_layout(self) -> None:
        entity = {"PartitionKey": _PARTITION, "RowKey": _LAYOUT_KEY, "version": _LAYOUT_VERSION}
        self._table.upsert_entity(entity, mode=UpdateMode.REPLACE)
        self._indexed = True

    def _layout_current(self) -> bool:
        """True when every record has its listing rows (one read until it is; then none)."""
        if not self._indexed:
            marker = self._read(_LAYOUT_KEY)
            self._indexed = marker is not None and int(marker["version"]) >= _LAYOUT_VERSION
        return self._indexed

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
