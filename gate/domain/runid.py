"""Run IDs: short, unique, time-ordered names for validation runs.

An ID looks like ``lr1m8fsmrxncan7q`` (16 characters) and is built from three parts:

* a two-letter prefix (``lr``, "local run"), as ACR Tasks run IDs start with a two-letter
  registry prefix (``ca1``, ``dd2f``). It makes IDs from different sources tell apart;
* the milliseconds since the Unix epoch in 9 characters of lowercase Crockford base32
  (``0-9a-z`` without ``i l o u``), zero-padded. The alphabet is in ASCII order, so comparing
  two IDs as strings compares their creation times; 9 characters last until the year 3084;
* 5 random characters (25 bits) from :mod:`secrets`, so two processes that start a run in the
  same millisecond still differ: a clash needs the same millisecond *and* a 1 in 33 million
  draw. (3 characters were too few: processes making IDs in a tight loop share many
  milliseconds, and tests saw clashes.)

Within one process the time part never repeats or goes backwards (a second ID in the same
millisecond, or after the clock was set back, takes the previous millisecond plus one), so a
process's own IDs are unique and strictly increasing regardless of the random part.

Only lowercase letters and digits: an ID is valid as (part of) a Docker tag, a container name
and a file name, and survives case-insensitive systems unchanged.
"""

from __future__ import annotations

import re
import secrets
import threading
import time

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
"""Lowercase Crockford base32: digits then letters, so string order is numeric order."""

DEFAULT_PREFIX = "lr"
"""The prefix of run IDs made by the local validator."""

TIME_CHARS = 9
RANDOM_CHARS = 5
_PREFIX = re.compile(r"[a-z]{2}")
_RUN_ID = re.compile(rf"[a-z]{{2}}[{ALPHABET}]{{{TIME_CHARS + RANDOM_CHARS}}}")

_lock = threading.Lock()
_last_ms = 0


def _encode(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 32)
        chars.append(ALPHABET[digit])
    if number:
        raise ValueError(f"{number} does not fit in {width} base32 characters")
    return "".join(reversed(chars))


def _next_ms() -> int:
    global _last_ms
    with _lock:
        now = time.time_ns() // 1_000_000
        _last_ms = max(now, _last_ms + 1)
        return _last_ms


def new_run_id(prefix: str = DEFAULT_PREFIX) -> str:
    """A new run ID: ``prefix`` (two lowercase letters) + time (9 chars) + random (5 chars)."""
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"run ID prefix {prefix!r} must be two lowercase letters, e.g. 'lr'")
    tail = "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_CHARS))
    return prefix + _encode(_next_ms(), TIME_CHARS) + tail


def is_run_id(text: str) -> bool:
    """True when ``text`` has the form of an ID made by :func:`new_run_id`."""
    return bool(_RUN_ID.fullmatch(text))


def run_id_millis(run_id: str) -> int:
    """The creation time of ``run_id`` in milliseconds since the Unix epoch."""
    if not is_run_id(run_id):
        raise ValueError(f"{run_id!r} is not a run ID made by new_run_id()")
    value = 0
    for char in run_id[2 : 2 + TIME_CHARS]:
        value = value * 32 + ALPHABET.index(char)
    return value
