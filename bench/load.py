"""Benchmark: the deployed gate under a burst of pushes, today's host settings beside the new ones.

A burst of push events (20 % of them delivered again) against many rules, while the emulator's
task runs take longer than the queue's retry budget (visibilityTimeout x maxDequeueCount) and ARM
answers 10 % of its requests 429 with Retry-After. The real ``function_app`` functions run
in-process under a simulated Functions host (devstack/load.py, devstack/functions_queues.py)
against the ACR emulator (synthetic runs) and Azurite (queues and the Table ledger). Every
duration is scaled by one factor; the output gives the factor and the real-time equivalents.

Prints, per setting: records per state; validations and imports per (rule, digest); poisoned
messages and "poisoned:" records; FAILED records (every candidate is good, so a rerun would not
reproduce any); ARM calls per event; the rows the two alert queries (infra/queries/
alert-poisoned.kql, alert-rejected-or-failed.kql) would return over the run's log lines; the
time to the last verdict.

Run: ``python -m bench.load [--events 1000 --rules 50 --instances 8 --factor 0.05]``
(``--events 200 --rules 10`` for a run of a few minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from devstack.load import TODAY, Figures, HostSetting, Scenario, run_scenario, working_tree_setting


def _real(seconds: float, factor: float) -> str:
    real = seconds / factor
    return (
        f"{seconds:.1f} s (real {real / 60:.1f} min)"
        if real >= 120
        else f"{seconds:.2f} s (real {real:.0f} s)"
    )


def _setting_lines(setting: HostSetting, scenario: Scenario) -> list[str]:
    q = setting.queues
    return [
        f"{setting.label} settings ({setting.source}):",
        f"  batchSize {q.batch_size}, newBatchThreshold {q.new_batch_threshold}, visibilityTimeout "
        f"{q.visibility_timeout:g} s, maxDequeueCount {q.max_dequeue_count} (retry budget "
        f"{q.retry_budget:g} s), maximumInstanceCount {setting.maximum_instances}, "
        f"GATE_WORKER_WAIT_SECONDS {setting.worker_wait_seconds:g}",
        f"  simulated instances: min(--instances {scenario.instances}, maximumInstanceCount) = "
        f"{max(1, min(scenario.instances, setting.maximum_instances))}",
    ]


ROWS: list[tuple[str, Callable[[Figures], str]]] = [
    (
        "records per state",
        lambda f: ", ".join(f"{k} {v}" for k, v in sorted(f.states.items())) or "-",
    ),
    ("(rule, digest) pairs in the burst", lambda f: str(len(f.pairs))),
    ("pairs validated", lambda f: str(len(f.validations))),
    ("validations per pair: max", lambda f: str(max(f.validations.values(), default=0))),
    ("pairs validated more than once", lambda f: str(f.pairs_validated_more_than_once)),
    ("pairs imported (run-ID tag import)", lambda f: str(len(f.imports))),
    ("imports per pair: max", lambda f: str(max(f.imports.values(), default=0))),
    ("pairs imported more than once", lambda f: str(f.pairs_imported_more_than_once)),
    ("messages moved to gate-requests-poison", lambda f: str(f.poison_messages)),
    ('FAILED "poisoned:" records', lambda f: str(f.poisoned_records)),
    ("FAILED records a rerun would not reproduce", lambda f: str(f.failed_records)),
    ("worker deliveries (failed ones)", lambda f: f"{f.deliveries} ({f.redeliveries})"),
    (
        "ARM calls per event",
        lambda f: (
            f"{f.arm_calls / max(1, f.scenario.events):.1f} ({f.arm_calls} in all, {f.throttled} answered 429)"
        ),
    ),
    ("alert-poisoned.kql rows", lambda f: str(f.alert_poisoned)),
    ("alert-rejected-or-failed.kql rows", lambda f: str(f.alert_rejected_or_failed)),
    (
        "time to the last verdict",
        lambda f: _real(f.last_verdict, f.scenario.factor) if f.last_verdict is not None else "-",
    ),
    (
        "wall time until the queues were empty",
        lambda f: (
            _real(f.wall, f.scenario.factor) + ("" if f.finished else " (cut off by --timeout)")
        ),
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--rules", type=int, default=50)
    parser.add_argument(
        "--duplicates", type=float, default=0.2, help="share of events delivered again"
    )
    parser.add_argument("--instances", type=int, default=8, help="simulated instances at most")
    parser.add_argument("--factor", type=float, default=0.05, help="every duration times this")
    parser.add_argument(
        "--run-seconds", type=float, default=480.0, help="a task run's length, real seconds"
    )
    parser.add_argument(
        "--throttle", type=float, default=0.1, help="share of ARM requests answered 429"
    )
    parser.add_argument(
        "--concurrent-runs",
        type=int,
        default=None,
        help="runs the runner registry executes at once",
    )
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="wall seconds per setting at most"
    )
    parser.add_argument("--only", choices=("today", "new"), default=None)
    args = parser.parse_args()

    scenario = Scenario(
        events=args.events,
        rules=args.rules,
        duplicate_share=args.duplicates,
        instances=args.instances,
        factor=args.factor,
        run_seconds=args.run_seconds,
        validation_timeout=3 * args.run_seconds,
        throttle_share=args.throttle,
        concurrent_runs=args.concurrent_runs,
        timeout=args.timeout,
    )
    settings = {"today": [TODAY], "new": [working_tree_setting()]}.get(
        args.only or "", [TODAY, working_tree_setting()]
    )
    f = scenario.factor
    print("Load scenario: the deployed gate (function_app) on the ACR emulator and Azurite\n")
    print(
        f"{scenario.events} push events ({scenario.duplicate_share:.0%} delivered again) of "
        f"{scenario.digests} digests over {scenario.rules} rules; task runs of "
        f"{scenario.run_seconds:g} s; ARM answers {scenario.throttle_share:.0%} 429 "
        f"(Retry-After {scenario.retry_after} s, not scaled)"
    )
    print(f"time factor {f:g}: every duration below is real x {f:g} in this run")
    for name, real in (
        ("task run", scenario.run_seconds),
        ("validation timeout", scenario.validation_timeout),
        ("lease / heartbeat", scenario.lease_seconds),
        ("watch timer", scenario.watch_seconds),
    ):
        extra = (
            f" / {scenario.heartbeat_seconds:g} s -> {scenario.heartbeat_seconds * f:g} s"
            if name.startswith("lease")
            else ""
        )
        print(f"  {name:<19} {real:g} s -> {real * f:g} s{extra}")
    print(
        "  also scaled: host.json visibilityTimeout, maxPollingInterval and functionTimeout, "
        "GATE_WORKER_WAIT_SECONDS, the task-run poll interval (2 s doubling to 30 s), its "
        "deadline margin and queue wait, the worker's promotion margin"
    )
    print(f"machine: {os.cpu_count()} cores\n")
    for setting in settings:
        print("\n".join(_setting_lines(setting, scenario)))
    print()
    results: list[Figures] = []
    with tempfile.TemporaryDirectory() as tmp:
        for setting in settings:
            work = Path(tmp) / setting.label.replace("'", "")
            results.append(run_scenario(work, replace(scenario), setting))
    width = max(len(name) for name, _ in ROWS)
    columns = [max(28, *(len(show(r)) for _, show in ROWS)) for r in results]
    print(
        f"{'':<{width}}  "
        + "  ".join(f"{r.setting.label:<{c}}" for r, c in zip(results, columns, strict=True))
    )
    for name, show in ROWS:
        print(
            f"{name:<{width}}  "
            + "  ".join(f"{show(r):<{c}}" for r, c in zip(results, columns, strict=True))
        )
    for r in results:
        if r.failed_reasons:
            print(f"\n{r.setting.label}: FAILED records by reason")
            for reason, n in r.failed_reasons.most_common(5):
                print(f"  {n:>4}  {reason}")
        if r.warnings:
            print(f"\n{r.setting.label}: the app's warning lines by kind (most frequent)")
            for line, n in r.warnings.most_common(6):
                print(f"  {n:>4}  {line}")


if __name__ == "__main__":
    main()
