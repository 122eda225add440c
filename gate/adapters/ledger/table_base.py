"""The Table ledger's storage: its table and blob clients, error wording and primitives.

:class:`TableLedgerBase` opens (and creates) the table and the log container, turns SDK errors
into :class:`~gate.errors.LedgerError` with a cause and a fix, and gives the operations
:class:`~gate.adapters.ledger.table.TableLedger` is built of: point reads, conditional
transactions, the validation logs held in blobs, the writes that insert or rewrite a record with
its listing rows, and the key layout's marker. Apart from :class:`~.table.TableLedger`, nothing
uses it: the port's methods are there.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, NoReturn
from urllib.parse import urlsplit

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

from gate.adapters.ledger.table_entities import (
    Operation,
    _etag,
    _if_unchanged,
    _listing_rows,
    _record_entity,
    _record_from,
)
from gate.adapters.ledger.table_keys import _LAYOUT_KEY, _LAYOUT_VERSION, _PARTITION, _index_key
from gate.domain.records import GateRecord
from gate.errors import ConfigError, LedgerError, NotFound

_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{2,62}")
_CONTAINER_NAME = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")


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


class TableLedgerBase:
    """The clients and storage primitives of :class:`~gate.adapters.ledger.table.TableLedger`
    (which documents the constructor's arguments)."""

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

    # -- the key layout -----------------------------------------------------------------------

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
