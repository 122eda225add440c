"""The Table ledger's entities: a record as a record entity and its listing rows, and back.

A string property holds at most 32K UTF-16 characters and an entity at most 1 MiB, so a record's
JSON is split over ``data_0``, ``data_1`` … when it is long, and its validation log is not in the
entity: the entity names its blob (``log``, ``{record id}.log`` in the log container), which
:class:`~gate.adapters.ledger.table_base.TableLedgerBase` reads and writes. A listing row copies
the JSON of a record up to 32,000 characters; a longer one (a huge reason) is listed by pointing
at the record row (``row``), read when that record is listed. :data:`Operation` is one
operation of an entity-group transaction; the ETag conditions say when one may apply.
"""

from __future__ import annotations

import json
from typing import Any

from azure.core import MatchConditions
from azure.data.tables import TableEntity, UpdateMode

from gate.adapters.ledger.table_keys import _PARTITION, _listing_keys, _record_key
from gate.domain.records import GateRecord

# a listing row copies a record's JSON up to this many characters (two properties); a longer
# record is listed by reading its row, so that a write stays far below a transaction's 4 MiB
_INLINE_DATA = 32_000
# 16,000 code points are at most 32,000 UTF-16 units: below the 32K limit of a string property
_CHUNK = 16_000

Operation = tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], dict[str, Any]]


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
