"""Benchmark: the Functions app's cold import and the Event Grid trigger on a 5000-event batch.

Prints the cold-import time of ``function_app`` beside ``azure.functions`` alone (fresh
interpreters, median of several) and their ratio, the cost of the configuration schema on the
first configuration load (msgspec is imported there, not with the app), then the time for
``on_push`` to triage a 5000-event batch (as the host delivers it: one call per event) and how
many requests it queued.

Run: ``python -m bench.functions [--rounds 7] [--events 5000]``
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def cold_import(module: str, rounds: int) -> float:
    """Median wall time of ``python -c 'import module'`` in fresh interpreters, minus startup."""
    return cold_run(f"import {module}", rounds)


def cold_run(code: str, rounds: int) -> float:
    """Median wall time of ``python -c code`` in fresh interpreters, minus startup."""

    def run(snippet: str) -> float:
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", snippet], check=True, cwd=ROOT)
        return time.perf_counter() - began

    bare = statistics.median(run("pass") for _ in range(rounds))
    return statistics.median(run(code) for _ in range(rounds)) - bare


def batch(count: int) -> list[dict[str, Any]]:
    """A batch like Event Grid delivers: mostly watched pushes (many redelivered), some not."""
    base = json.loads(
        (ROOT / "tests" / "data" / "events" / "eventgrid-imagepushed.json").read_text()
    )[0]
    events = []
    for i in range(count):
        event = copy.deepcopy(base)
        event["id"] = f"event-{i}"
        target = event["data"]["target"]
        target["digest"] = "sha256:" + f"{i % 50:064x}"  # 50 digests, each redelivered
        if i % 10 == 9:
            target["repository"] = "unwatched"
        if i % 25 == 24:
            event["eventType"] = "Microsoft.ContainerRegistry.ImageDeleted"
        events.append(event)
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--events", type=int, default=5000)
    args = parser.parse_args()

    functions = cold_import("azure.functions", args.rounds)
    app = cold_import("function_app", args.rounds)
    print(f"cold import (median of {args.rounds}, interpreter start subtracted)")
    print(f"  azure.functions   {functions * 1000:7.1f} ms")
    print(
        f"  function_app      {app * 1000:7.1f} ms   (+{(app - functions) * 1000:.1f} ms, "
        f"ratio {app / functions:.2f})"
    )
    # the configuration schema library is imported on the first load, not with the app
    schema = cold_import("msgspec", args.rounds)
    seed = ROOT / "examples" / "seed" / "gate.yaml"
    first_load = cold_run(
        "import os; os.environ.update(GATE_UPSTREAM='127.0.0.1:5001', GATE_TARGET='127.0.0.1:5002');"
        f"from gate.config.loading import load_config; load_config({str(seed)!r})",
        args.rounds,
    )
    print(f"  msgspec (schema)  {schema * 1000:7.1f} ms   (not imported by function_app)")
    print(
        f"  first load_config {first_load * 1000:7.1f} ms   (gate.config.model + schema + seed file)"
    )

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "validation"
        folder.mkdir()
        (folder / "acr-task.yaml").write_text("version: v1.1.0\nsteps: []\n")
        config = Path(tmp) / "gate.yaml"
        config.write_text(
            textwrap.dedent(
                """\
                rules:
                  - name: node
                    source: publicregistry.azurecr.cn/node
                    tags: ["15-alpine"]
                    target: base.azurecr.cn/node
                    validation: {folder: validation}
                """
            )
        )
        os.environ["GATE_CONFIG"] = str(config)
        import azure.functions as func

        import function_app

        class Collect(func.Out[str]):
            def __init__(self) -> None:
                self.value: str | None = None

            def set(self, val: str) -> None:
                self.value = val

            def get(self) -> str | None:
                return self.value

        events = [
            func.EventGridEvent(
                id=e["id"],
                data=e["data"],
                topic=e["topic"],
                subject=e["subject"],
                event_type=e["eventType"],
                event_time=datetime.now(UTC),
                data_version="1.0",
            )
            for e in batch(args.events)
        ]
        function_app.config()  # the configuration loads once per process, not per event
        import logging

        logging.getLogger("gate.functions").setLevel(logging.WARNING)
        began = time.perf_counter()
        queued = 0
        for event in events:
            out = Collect()
            function_app.on_push(event, out)
            queued += out.value is not None
        spent = time.perf_counter() - began
    print(f"\nEvent Grid trigger, {args.events}-event batch on one core")
    print(
        f"  {spent * 1000:.0f} ms in all, {spent / args.events * 1e6:.1f} µs per event, {queued} queued"
    )


if __name__ == "__main__":
    main()
