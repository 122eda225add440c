"""Filling a Table ledger fast, the way ``add`` would leave it: for the ledger benchmark and the
ledger contract tests, which both need many records in Azurite quickly."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from gate.adapters.ledger.table import TableLedger
from gate.adapters.ledger.table_keys import _PARTITION, _claim_key
from gate.domain.records import GateRecord


def fill_table(ledger: TableLedger, records: Iterable[GateRecord]) -> None:
    """Write ``records`` as ``add`` would, 25 records to a transaction, then their claims.

    Each record goes with its id's index entity and its two listing rows (100 entities a
    transaction, the most one may hold); the claim entity of each (rule, digest) lists the
    gate records with that digest, as ``add`` leaves it. Logs are uploaded as ``add`` does.
    """
    claims: dict[str, list[str]] = {}
    operations: list[Any] = []
    for record in records:
        creates = ledger._creates(record, ledger._store_log(record))
        operations += creates
        if record.action == "gate" and record.digest is not None:
            key = _claim_key(record.rule, record.digest)
            claims.setdefault(key, []).append(str(creates[0][1]["RowKey"]))
        if len(operations) == 100:
            ledger._table.submit_transaction(operations)
            operations = []
    if operations:
        ledger._table.submit_transaction(operations)
    entities = [
        ("create", {"PartitionKey": _PARTITION, "RowKey": key, "records": json.dumps(sorted(rows))})
        for key, rows in claims.items()
    ]
    for start in range(0, len(entities), 100):
        ledger._table.submit_transaction(entities[start : start + 100])
