"""Benchmark: what each ``gate`` command costs beyond the CLI's own start-up, on 100 000 records.

Fills a SQLite ledger with 100 000 realistic records (``bench.ledger.realistic_records``: logs
of a few KB on many) plus one promotion of a real image in a real ``docker-registry``, then
times, as a user runs them (a new process each, stdout a pipe, bytecode cached as after any
install), ``gate --help`` beside ``gate history``, a filtered ``gate history --json``,
``gate show ID``, a duplicate ``gate run`` by tag (which resolves the tag upstream with one
HEAD, finds the decision and exits) and one by digest (which finds the decision in the ledger
and asks no registry, loading no HTTP client). Each figure is the median of ``--repeat`` rounds, each of which runs every
command once, with its difference from ``gate --help``; beside them the interpreter alone and
the interpreter importing httpx, which a command that asks a registry cannot go below. Goal: ``gate --help`` under 150 ms, each other command within 50 ms of it.
Then prints the HTTP requests each Table ledger query costs on Azurite (``bench.ledger``; the
counts are the same at 2 000 and 10 000 records, and Azurite loads 10 000 in minutes).

Run: ``python -m bench.cli [--records 100000] [--repeat 15] [--table-records 2000]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.ledger import realistic_records
from devstack.configs import promotion_of, unreachable_target_gate_yaml
from devstack.proxy import push_tiny_images
from devstack.registry import RegistryProcess
from gate.adapters.ledger.sqlite import SqliteLedger
from gate.domain.records import GateRecord

# the console script pip installs next to the interpreter, as a user runs it
_SCRIPT = Path(sys.executable).with_name("gate")
GATE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "gate"]


_HTTPX = "import sys; sys.modules['httpx._main'] = None; import httpx"


def fill(ledger: SqliteLedger, records: list[GateRecord]) -> None:
    """All records in one transaction (the port's ``add`` takes one per record: minutes)."""
    with ledger._transaction() as db:  # a bench loading data, not the gate
        for record in records:
            ledger._insert(db, record)


def timed(commands: dict[str, list[str]], repeat: int, env: dict[str, str]) -> dict[str, float]:
    """Median wall seconds of each command over ``repeat`` rounds, after one warm-up round (it
    writes bytecode and the configuration's cached parse). A round runs every command once, so
    the machine's drift over the minutes a run takes falls on all of them alike."""
    runs: dict[str, list[float]] = {name: [] for name in commands}
    for attempt in range(repeat + 1):
        for name, argv in commands.items():
            started = time.perf_counter()
            done = subprocess.run(argv, env=env, capture_output=True, check=False)
            elapsed = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(f"{name} failed: {done.stderr.decode()[-500:]}")
            if attempt:
                runs[name].append(elapsed)
    return {name: statistics.median(times) for name, times in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--table-records", type=int, default=2_000)
    args = parser.parse_args()
    # as installed: bytecode is written once and reused (some shells turn that off)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory() as tmp, RegistryProcess(Path(tmp) / "up") as upstream:
        work = Path(tmp)
        # the configuration's parse is cached by the warm-up run, as by a user's first command
        # (gate.config.parse_cache); here, in the run's own folder
        env["XDG_CACHE_HOME"] = str(work / "cache")
        digest = push_tiny_images(upstream.host, ["lib/node"], ["15-alpine"])["lib/node:15-alpine"]
        config = unreachable_target_gate_yaml(work, upstream.host)
        records = realistic_records(args.records)
        decided = promotion_of(
            upstream.host, digest, run_id="bench1", log="a validation log line\n" * 200
        )
        started = time.perf_counter()
        ledger = SqliteLedger(work / "data" / "gate.db")
        fill(ledger, [*records, decided])
        print(f"filled {args.records + 1} records in {time.perf_counter() - started:.1f} s")
        some = records[len(records) // 2].id
        with_config = ["-c", str(config)]
        commands = {
            "gate --help": [*GATE, "--help"],
            "gate history": [*GATE, "history", *with_config],
            "gate history --rule --state --json": [
                *GATE, "history", *with_config, "--rule", "rule05", "--state", "promoted", "--json"
            ],
            "gate show ID": [*GATE, "show", some, *with_config],
            "gate run (duplicate)": [
                *GATE, "run", f"{upstream.host}/lib/node:15-alpine", "--json", *with_config
            ],
            "gate run @digest (duplicate)": [
                *GATE, "run", f"{upstream.host}/lib/node@{digest}", "--json", *with_config
            ],
        }  # fmt: skip
        # what any command that asks a registry pays before it sends a byte: importing httpx
        # (as gate.adapters does, without httpx's own command line)
        references = {
            "python -c pass (the interpreter)": [sys.executable, "-c", "pass"],
            "python -c 'import httpx'": [sys.executable, "-c", _HTTPX],
        }
        medians = timed({**references, **commands}, args.repeat, env)
        base = medians["gate --help"]
        print(f"\n{'command':<38} {'median ms':>10} {'vs --help':>10}")
        for name, median in medians.items():
            delta = (
                ""
                if name in references or name == "gate --help"
                else f"{(median - base) * 1000:+.1f}"
            )
            print(f"{name:<38} {median * 1000:>10.1f} {delta:>10}")
    if args.table_records:
        from bench.ledger import table_requests_per_query

        print(f"\nTable ledger on Azurite, {args.table_records} records: HTTP requests per query")
        for query, requests in table_requests_per_query(args.table_records).items():
            print(f"{query:<38} {requests:>10}")


if __name__ == "__main__":
    main()
