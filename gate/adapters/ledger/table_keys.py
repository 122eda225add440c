"""The Table ledger's keys: one partition, and row keys shaped for the gate's questions.

Row keys (``PartitionKey`` is always ``ledger``)::

    c|{rule}|{digest}   claim entity: the row keys of the gate records of (rule, digest)
    i|{id}              index entity: the row key of record ``id`` (lookup by id and id prefix)
    r|{time}|{id}       record: ``time`` counts down from the end of the calendar and ``id`` is
                        byte-inverted, so ascending row keys are newest first (created_at, then id)
    R|{rule}|{time}|{id}    listing rows: a copy of the record (its JSON and filter properties,
    T|{target}|{time}|{id}  never its log) under its rule and under its target, newest first
    v|layout            the key layout's version: present when every record has listing rows

Rules, targets, digests and ids are escaped where they stand as text (:func:`_key_part`), since a row key refuses
``/ \\ # ?`` and control characters. The names keep their leading underscore: they are the
ledger's own, shared by :mod:`gate.adapters.ledger.table` and its helper modules
(docs/design/table-ledger.md says why the keys are shaped so).
"""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta

from gate.domain.records import GateRecord

_PARTITION = "ledger"
_CLAIM_PREFIX = "c|"
_INDEX_PREFIX = "i|"
_RECORD_PREFIX = "r|"
_RULE_PREFIX = "R|"
_TARGET_PREFIX = "T|"
_LAYOUT_KEY = "v|layout"
_LAYOUT_VERSION = 2
_KEY_SAFE = frozenset(string.ascii_letters + string.digits + "-_.:@+=")
_EPOCH = datetime(1, 1, 1, tzinfo=UTC)
_MAX_MICROSECONDS = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)


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
