"""Benchmark: one poll pass over 1000 tags in 100 repositories, 50 ms away, and its CPU.

A real docker-registry holds 100 repositories of 10 tags each; a :class:`LatencyProxy` in front
of it adds 50 ms to every request and counts them. The gate's configuration has one rule per
repository, either naming its ten tags (*exact*: one HEAD per tag) or with a glob selector
(``v*``: one tag-list GET per repository, then one HEAD per tag). Each pass
(``poll_upstreams``, what ``gate watch`` and the timer run before gating anything new) runs in
a process of its own, so that its CPU time (``time.process_time``) is the gate's alone, not
the proxy's; the table prints wall time, CPU per request, requests per tag and connections
opened, at the default budget (16 in flight per registry) and at the former default of 8, and
the same pass straight to the registry with no latency (where the CPU is all there is).

The reference, in the same run: the same 1000 HEADs (same URLs, same ``Accept``) made by a
minimal plain-httpx loop, one ``httpx.Client`` shared by 16 threads, also in a process of its
own. Goal: under 4 s per pass at the default, under 1 ms CPU per HEAD, 1.0 request per tag
(exact) and at most 1.1 (globs).

Run: ``python -m bench.watch``
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devstack.configs import GateYaml, Registry, Rule, write_empty_task
from devstack.proxy import LatencyProxy, push_tiny_images
from devstack.registry import RegistryProcess

REPOSITORIES = 100
TAGS = 10
LATENCY = 0.05
IN_FLIGHT = 16

_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


def write_config(work: Path, upstream: str, concurrency: int | None, *, exact: bool) -> Path:
    """One rule per repository, watching ``v0``..``v9`` by name or ``v*``; targets on a host
    never contacted. ``concurrency`` None: the default budget."""
    write_empty_task(work)
    tags = tuple(f"v{t}" for t in range(TAGS)) if exact else ("v*",)
    rules = tuple(
        Rule(
            f"{upstream}/lib/repo{i:03d}",
            f"127.0.0.1:9/base/repo{i:03d}",
            name=f"r{i:03d}",
            tags=tags,
        )
        for i in range(REPOSITORIES)
    )
    budget = "" if concurrency is None else f"concurrency_per_registry: {concurrency}, "
    poll = f"poll: {{{budget}budget: 240}}"
    config = GateYaml(work / "data", rules, (Registry(upstream),), top=(poll,))
    kind = "exact" if exact else "globs"
    return config.write(work, f"gate-{kind}-{concurrency or 'default'}.yaml")


def _child_pass(config_path: str) -> None:
    """In a process of its own: one pass, printed as JSON (wall and CPU seconds, items)."""
    from gate.adapters.ledger.sqlite import SqliteLedger
    from gate.adapters.registry.oci import HostSettings, OciRegistry
    from gate.config.loading import load_config
    from gate.usecases.keeper import Gatekeeper
    from gate.usecases.polling import poll_upstreams

    config = load_config(Path(config_path))
    hosts = {host: HostSettings(insecure=True) for host in config.registries}
    with OciRegistry(hosts) as registry:
        keeper = Gatekeeper(
            config=config,
            registry=registry,
            polling=registry,
            validator=None,  # type: ignore[arg-type]  # a poll pass validates nothing
            ledger=SqliteLedger(config.data_dir / "gate.db"),
            secrets=None,  # type: ignore[arg-type]  # nor reads a secret
        )
        cpu, started = time.process_time(), time.perf_counter()
        items = poll_upstreams(keeper)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    failed = [i for i in items if i.error]
    print(json.dumps({"seconds": elapsed, "cpu": cpu, "items": len(items), "failed": len(failed)}))


def _child_plain(urls_path: str) -> None:
    """In a process of its own: the reference, the same HEADs with plain httpx, 16 threads."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    urls = Path(urls_path).read_text().split()
    with httpx.Client(limits=httpx.Limits(max_keepalive_connections=IN_FLIGHT)) as client:

        def head(url: str) -> str:
            response = client.head(url, headers={"Accept": _ACCEPT})
            return response.headers["Docker-Content-Digest"]

        with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
            cpu, started = time.process_time(), time.perf_counter()
            digests = list(pool.map(head, urls))
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(json.dumps({"seconds": elapsed, "cpu": cpu, "items": len(digests), "failed": 0}))


def _child(*args: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.watch", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"the pass failed: {done.stderr[-1000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["failed"]:
        raise SystemExit(f"the pass failed on {result['failed']:.0f} tag(s)")
    return result


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--pass":
        return _child_pass(sys.argv[2])
    if len(sys.argv) == 3 and sys.argv[1] == "--plain":
        return _child_plain(sys.argv[2])
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
                    f"{LATENCY * 1000:.0f} ms per request (proxy), each pass in its own process"
                )
                header = (
                    f"{'pass':<34} {'in flight':>9} {'wall s':>7} {'CPU ms/req':>10} "
                    f"{'requests':>9} {'req/tag':>8} {'conns':>6}"
                )
                print(header)
                runs: list[tuple[str, str, int | None, bool]] = [
                    ("gate, exact tags", proxy.host, None, True),
                    ("gate, globs", proxy.host, None, False),
                    ("gate, globs", proxy.host, 8, False),
                    ("gate, exact tags, no latency", registry.host, None, True),
                    ("gate, globs, no latency", registry.host, None, False),
                ]
                counted: dict[bool, int] = {}  # requests of a pass, exact or not, as counted
                for label, upstream, concurrency, exact in runs:
                    config = write_config(work, upstream, concurrency, exact=exact)
                    proxy.reset()
                    got = _child("--pass", str(config))
                    proxied = upstream == proxy.host
                    if proxied:
                        counted[exact] = proxy.total
                    # straight to the registry nothing counts: the same pass as counted above
                    requests = proxy.total if proxied else counted[exact]
                    conns = f"{proxy.connections:6d}" if proxied else f"{'':6}"
                    shown = "16 (dflt)" if concurrency is None else str(concurrency)
                    print(
                        f"{label:<34} {shown:>9} {got['seconds']:7.2f} "
                        f"{got['cpu'] / requests * 1000:10.2f} {requests:9d} "
                        f"{requests / got['items']:8.2f} {conns}"
                    )
                urls = work / "urls.txt"
                for label, host in (
                    ("plain httpx loop (reference)", proxy.host),
                    ("plain httpx loop, no latency", registry.host),
                ):
                    urls.write_text(
                        "\n".join(
                            f"http://{host}/v2/lib/repo{i:03d}/manifests/v{t}"
                            for i in range(REPOSITORIES)
                            for t in range(TAGS)
                        )
                    )
                    proxy.reset()
                    got = _child("--plain", str(urls))
                    requests = proxy.total if host == proxy.host else counted[True]
                    conns = f"{proxy.connections:6d}" if host == proxy.host else f"{'':6}"
                    print(
                        f"{label:<34} {IN_FLIGHT:>9} {got['seconds']:7.2f} "
                        f"{got['cpu'] / requests * 1000:10.2f} {requests:9d} "
                        f"{requests / got['items']:8.2f} {conns}"
                    )
    return None


if __name__ == "__main__":
    main()
