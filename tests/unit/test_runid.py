"""Run IDs: short, tag-safe, time-ordered and unique, also across processes."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from gate.domain.runid import new_run_id, run_id_millis

TAG = re.compile(r"[\w][\w.-]{0,127}")


def test_run_id_is_prefix_and_lowercase_base32_valid_in_a_docker_tag() -> None:
    run_id = new_run_id()
    assert re.fullmatch(r"lr[0-9a-hjkmnp-tv-z]{14}", run_id)
    assert TAG.fullmatch(f"20-alpine-{run_id}")


def test_run_ids_sort_in_creation_order_within_a_process() -> None:
    ids = [new_run_id() for _ in range(2000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_run_id_encodes_its_creation_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    run_id = new_run_id("ca")
    assert run_id.startswith("ca")
    assert run_id_millis(run_id) >= before
    assert run_id_millis(run_id) < before + 60_000


def test_run_ids_are_unique_across_concurrent_processes() -> None:
    script = "from gate.domain.runid import new_run_id\nprint('\\n'.join(new_run_id() for _ in range(3000)))"
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    ids = [line for p in procs for line in p.communicate()[0].split()]
    assert len(ids) == 12000
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("prefix", ["", "l", "LR", "l1", "abc"])
def test_prefix_must_be_two_lowercase_letters(prefix: str) -> None:
    with pytest.raises(ValueError, match="two lowercase letters"):
        new_run_id(prefix)


def test_run_id_millis_refuses_other_text() -> None:
    with pytest.raises(ValueError, match="not a run ID"):
        run_id_millis("cf1")
