"""Benchmark: promote a ~200 MB image between two local registries, ours vs skopeo.

Starts two docker-registry processes, builds a single-image with one incompressible layer in
the first, then alternates rounds of ``OciRegistry.copy`` and ``skopeo copy`` into fresh
repositories of the second, printing throughput side by side. Then times re-promotion of the
already-present digest under new tags, and the memory our process used while copying.

Last, the cost of the promotion attestation: the same promotion of a digest (run-ID tag, stable
tag) with and without signing and attaching the attestation between the two tags, as the gate
does with ``attestation:`` configured (ECDSA P-256 key file; docker-registry has no referrers
API, so each attestation also rewrites the referrers tag-schema index), side by side; and with
``attestation.signature_key`` too (the promotion signature: one more ECDSA signature and the
``.sig`` manifest written), and what removing that signature costs (a demotion's part).

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
from gate.adapters.registry.oci import HostSettings, OciRegistry
from gate.domain.ref import ImageRef


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
            _attestation_cost(oci, source, dst.host, work, rounds=max(args.rounds, 5))
            oci.close()


def _attestation_cost(
    oci: OciRegistry, source: ImageRef, target_host: str, work: Path, *, rounds: int
) -> None:
    """Time promotions with and without the attestation, alternating, and print both."""
    import statistics

    from gate.adapters.registry.referrers import OciAttestationStore
    from gate.adapters.registry.signatures import OciSignatureStore
    from gate.adapters.signers import KeyFileSigner, generate_key_pair
    from gate.domain.attestation import PASSED, Evidence
    from gate.domain.records import GateRecord, State
    from gate.usecases.attestation import Attestor
    from gate.usecases.signature import Signatory

    key = work / "bench.key"
    generate_key_pair(key)
    signature_key = work / "bench-signature.key"
    generate_key_pair(signature_key)
    attestor = Attestor(KeyFileSigner(key), OciAttestationStore(oci), "urn:gated-import-gate")
    signatory = Signatory(
        KeyFileSigner(signature_key), OciSignatureStore(oci), "urn:gated-import-gate"
    )
    assert source.digest is not None
    plain_target = ImageRef.parse(f"{target_host}/plain/big")
    attested_target = ImageRef.parse(f"{target_host}/attested/big")
    signed_target = ImageRef.parse(f"{target_host}/signed/big")
    # content first, so every side measures the promotion of a digest the target holds
    oci.copy(source, plain_target)
    oci.copy(source, attested_target)
    oci.copy(source, signed_target)
    plain, attested, signed, removed = [], [], [], []

    def evidence(target: ImageRef, n: int) -> Evidence:
        assert source.digest is not None
        return Evidence(
            subject=target.with_digest(source.digest),
            result=PASSED,
            status="promoted",
            reason=f"bench run-{n}",
            rule="bench",
            record_id=f"bench-{n}",
            run_id=f"run-{n}",
            stable_tag="stable",
        )

    for n in range(1, rounds + 1):
        started = time.perf_counter()
        oci.copy(source, plain_target, immutable_tags=[f"run-{n}"], tags=["stable"])
        plain.append(time.perf_counter() - started)

        started = time.perf_counter()
        oci.copy(source, attested_target, immutable_tags=[f"run-{n}"])
        attestor.attach(evidence(attested_target, n))
        oci.copy(source, attested_target, tags=["stable"])
        attested.append(time.perf_counter() - started)

        record = GateRecord(
            id=f"bench-{n}",
            rule="bench",
            source=str(source),
            digest=source.digest,
            target=signed_target.name,
            trigger="bench",
            state=State.PROMOTING,
            run_id=f"run-{n}",
        )
        started = time.perf_counter()
        oci.copy(source, signed_target, immutable_tags=[f"run-{n}"])
        attestor.attach(evidence(signed_target, n))
        signatory.sign(signed_target.with_digest(source.digest), record)
        oci.copy(source, signed_target, tags=["stable"])
        signed.append(time.perf_counter() - started)
        # removed again (a demotion's part), so the next round signs afresh
        started = time.perf_counter()
        signatory.unsign(signed_target.with_digest(source.digest))
        removed.append(time.perf_counter() - started)
    print(f"\npromotion of a present digest, {rounds} rounds (ms):")
    print(f"{'':>30}  {'best':>7}  {'median':>7}  {'worst':>7}")
    for label, values in (
        ("without attestation", plain),
        ("with attestation", attested),
        ("with attestation and signature", signed),
        ("signature removal alone", removed),
    ):
        print(
            f"{label:>30}  {min(values) * 1000:>7.1f}  "
            f"{statistics.median(values) * 1000:>7.1f}  {max(values) * 1000:>7.1f}"
        )
    extra = statistics.median(attested) - statistics.median(plain)
    print(f"the attestation adds {extra * 1000:.1f} ms (median)")
    extra = statistics.median(signed) - statistics.median(attested)
    print(f"the promotion signature adds {extra * 1000:.1f} ms more (median)")


if __name__ == "__main__":
    main()
