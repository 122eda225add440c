"""Benchmark: promote a ~200 MB image between two local registries, ours vs skopeo.

Starts two docker-registry processes, builds a single-image with one incompressible layer in
the first, then alternates rounds of ``OciRegistry.copy`` and ``skopeo copy`` into fresh
repositories of the second, printing throughput side by side. Then times re-promotion of the
already-present digest under new tags, and the memory our process used while copying.

Run: ``python -m bench.promote [--size-mb 200] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import tempfile
import time
import tracemalloc
from pathlib import Path

from devstack.images import build_image
from devstack.registry import RegistryProcess
from gate.adapters.oci import HostSettings, OciRegistry
from gate.ref import ImageRef


def _skopeo_copy(source: str, target: str) -> None:
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            f"docker://{source}",
            f"docker://{target}",
        ],
        check=True,
    )


def _rss_mib() -> float:
    # ru_maxrss is KiB on Linux: the peak resident set of this process so far.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200, help="size of the random layer")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--chunk-kib", type=int, default=0, help="our re-chunking size (0: as received)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gate-bench-") as tmp:
        work = Path(tmp)
        with RegistryProcess(work / "src") as src, RegistryProcess(work / "dst") as dst:
            print(f"building a {args.size_mb} MB image in {src.host} ...", flush=True)
            started = time.perf_counter()
            digest = build_image(
                work, f"{src.host}/bench/big:1", extra_layer_bytes=args.size_mb * 1_000_000
            )
            print(f"  built and pushed {digest} in {time.perf_counter() - started:.1f}s")

            hosts = {r.host: HostSettings(insecure=True) for r in (src, dst)}
            source = ImageRef.parse(f"{src.host}/bench/big@{digest}")
            rss_before = _rss_mib()

            print(f"\n{'round':>5}  {'ours MB/s':>10}  {'skopeo MB/s':>12}  {'ours/skopeo':>11}")
            ours_total = skopeo_total = 0.0
            size = 0
            for n in range(1, args.rounds + 1):
                # A fresh target registry per copy: skopeo remembers where blobs live and
                # would otherwise mount them from an earlier round's repository.
                with RegistryProcess(work / f"ours-{n}") as fresh:
                    oci = OciRegistry(
                        {**hosts, fresh.host: HostSettings(insecure=True)},
                        chunk_size=args.chunk_kib * 1024 or None,
                    )
                    started = time.perf_counter()
                    report = oci.copy(source, ImageRef.parse(f"{fresh.host}/ours/big"), tags=["1"])
                    ours = time.perf_counter() - started
                    oci.close()
                size = report.bytes_copied
                with RegistryProcess(work / f"skopeo-{n}") as fresh:
                    started = time.perf_counter()
                    _skopeo_copy(f"{src.host}/bench/big@{digest}", f"{fresh.host}/skopeo/big:1")
                    theirs = time.perf_counter() - started
                ours_total += ours
                skopeo_total += theirs
                mb = size / 1e6
                print(f"{n:>5}  {mb / ours:>10.1f}  {mb / theirs:>12.1f}  {theirs / ours:>11.2f}")
            mb = size / 1e6 * args.rounds
            print(
                f"{'all':>5}  {mb / ours_total:>10.1f}  {mb / skopeo_total:>12.1f}  "
                f"{skopeo_total / ours_total:>11.2f}   ({size / 1e6:.1f} MB per copy)"
            )
            rss_after = _rss_mib()

            oci = OciRegistry(hosts, chunk_size=args.chunk_kib * 1024 or None)
            oci.copy(source, ImageRef.parse(f"{dst.host}/ours-1/big"), tags=["1"])
            timings = []
            for n in range(1, 6):
                started = time.perf_counter()
                oci.copy(
                    source,
                    ImageRef.parse(f"{dst.host}/ours-1/big"),
                    immutable_tags=[f"run-{n}"],
                    tags=["stable"],
                )
                timings.append(time.perf_counter() - started)
            print(
                f"\nre-promotion of the present digest under new tags: "
                f"best {min(timings) * 1000:.1f} ms, worst {max(timings) * 1000:.1f} ms"
            )

            tracemalloc.start()
            oci.copy(source, ImageRef.parse(f"{dst.host}/traced/big"))
            _, traced_peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            print(
                f"memory: peak RSS {rss_before:.0f} MiB before copies, {rss_after:.0f} MiB "
                f"after {args.rounds} copies of {size / 1e6:.0f} MB; "
                f"Python heap peak during one copy {traced_peak / 2**20:.1f} MiB"
            )
            oci.close()


if __name__ == "__main__":
    main()
