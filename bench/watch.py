"""Benchmark: one poll pass over 1000 tags in 100 repositories, 50 ms away.

A real docker-registry holds 100 repositories of 10 tags each; a :class:`LatencyProxy` in front
of it adds 50 ms to every request and counts them. The gate's configuration has one rule per
repository with a glob selector (``v*``), so a pass lists each repository's tags once and HEADs
every tag. The pass (``poll_upstreams``, what ``gate watch`` and the timer run before gating
anything new) is timed with one request in flight (sequential) and with the per-registry
limit at its default and above, and prints the wall time, the requests per tag and the
connections opened. Goal: under 10 s per pass, about one request per unchanged tag.

Run: ``python -m bench.watch``
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from devstack.configs import GateYaml, Registry, Rule, write_empty_task
from devstack.proxy import LatencyProxy, push_tiny_images
from devstack.registry import RegistryProcess
from gate.adapters.ledger.sqlite import SqliteLedger
from gate.adapters.registry.oci import HostSettings, OciRegistry
from gate.config.loading import load_config
from gate.usecases.keeper import Gatekeeper
from gate.usecases.polling import poll_upstreams

REPOSITORIES = 100
TAGS = 10
LATENCY = 0.05


class _NoValidator:
    def validate(self, *args: object, **kwargs: object) -> object:
        raise AssertionError("a poll pass validates nothing")


class _NoSecrets:
    def get(self, name: str) -> str:
        raise AssertionError("a poll pass reads no secret")


def write_config(work: Path, upstream: str, concurrency: int) -> Path:
    """One rule per repository, each watching ``v*``; targets on a host never contacted."""
    write_empty_task(work)
    rules = tuple(
        Rule(
            f"{upstream}/lib/repo{i:03d}",
            f"127.0.0.1:9/base/repo{i:03d}",
            name=f"r{i:03d}",
            tags=("v*",),
        )
        for i in range(REPOSITORIES)
    )
    poll = f"poll: {{concurrency_per_registry: {concurrency}, budget: 240}}"
    config = GateYaml(work / "data", rules, (Registry(upstream),), top=(poll,))
    return config.write(work, f"gate-{concurrency}.yaml")


def one_pass(work: Path, proxy: LatencyProxy, concurrency: int) -> tuple[float, int, int, int]:
    """Seconds, requests, connections and tags of one pass with ``concurrency`` per registry."""
    config = load_config(write_config(work, proxy.host, concurrency))
    with OciRegistry({proxy.host: HostSettings(insecure=True)}) as registry:
        keeper = Gatekeeper(
            config=config,
            registry=registry,
            polling=registry,
            validator=_NoValidator(),  # type: ignore[arg-type]
            ledger=SqliteLedger(config.data_dir / "gate.db"),
            secrets=_NoSecrets(),
        )
        proxy.reset()
        started = time.perf_counter()
        items = poll_upstreams(keeper)
        elapsed = time.perf_counter() - started
    failed = [i for i in items if i.error]
    if failed:
        raise SystemExit(f"the pass failed: {failed[0].source}: {failed[0].error}")
    return elapsed, proxy.total, proxy.connections, len(items)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with RegistryProcess(work / "registry") as registry:
            push_tiny_images(
                registry.host,
                [f"lib/repo{i:03d}" for i in range(REPOSITORIES)],
                [f"v{t}" for t in range(TAGS)],
            )
            with LatencyProxy(registry.host, latency=LATENCY) as proxy:
                print(
                    f"{REPOSITORIES * TAGS} tags in {REPOSITORIES} repositories, "
                    f"{LATENCY * 1000:.0f} ms per request"
                )
                print(
                    f"{'in flight':>10} {'pass s':>8} {'requests':>9} {'req/tag':>8} {'conns':>6}"
                )
                for concurrency, label in ((1, "1 (seq)"), (4, "4"), (8, "8 (dflt)")):
                    seconds, requests, conns, tags = one_pass(work, proxy, concurrency)
                    print(
                        f"{label:>10} {seconds:8.2f} {requests:9d} "
                        f"{requests / tags:8.2f} {conns:6d}"
                    )


if __name__ == "__main__":
    main()
