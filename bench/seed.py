"""Benchmark: ``gate run`` against the seed walkthrough's steps typed by hand, on a big image.

The hand-made chain is what a person types for the walkthrough (examples/seed): ``podman pull``
of the candidate by digest, ``podman build`` of the test image FROM it and ``podman run`` of
the tests, ``skopeo copy`` of the candidate into the target under the run-ID tag and then under
the stable tag, ``podman build`` of the hello-world application FROM the target's stable tag
and ``podman run`` of it. The gate side is ``gate run`` of the seed's gate.yaml, which does the
same work (validation, promotion by digest, the downstream task file).

The upstream image (busybox plus one layer of incompressible random data, ``--size-mb``) is
built once in a local docker-registry. Every round starts from a fresh podman store (a storage
root and run root of the bench's own, never the user's) and a fresh target registry; the sides
alternate, and the median of the rounds is printed per phase, with the ratio hand / gate.
A last round gates a Red candidate (rejected) and prints what the target holds afterwards: no
tag and no manifest.

Run: ``python -m bench.seed [--size-mb 300] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from devstack.images import MANIFEST_ACCEPT, build_image
from devstack.podman import podman_env
from devstack.registry import RegistryProcess

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "examples" / "seed"
PHASES = ("pull", "validate build", "run tests", "copy", "tag", "downstream build+run")


def _run(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed ({done.returncode}): {done.stderr[-800:]}")
    return done.stdout


def _timed(args: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    _run(args, env)
    return time.perf_counter() - began


def by_hand(
    upstream: str, digest: str, target: str, env: dict[str, str], work: Path
) -> dict[str, float]:
    """The walkthrough's steps as a person types them; seconds per phase."""
    candidate = f"{upstream}/node:15-alpine@{digest}"
    phases: dict[str, float] = {}
    phases["pull"] = _timed(["podman", "pull", "-q", "--tls-verify=false", candidate], env)
    phases["validate build"] = _timed(
        [
            "podman",
            "build",
            "-q",
            "--build-arg",
            f"REGISTRY_FROM_URL={upstream}/",
            "--build-arg",
            f"SOURCE_DIGEST={digest}",
            "-t",
            "node-import:test",
            str(SEED / "validation"),
        ],
        env,
    )
    phases["run tests"] = _timed(["podman", "run", "--rm", "node-import:test"], env)
    skopeo = ["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false"]
    # skopeo takes no reference with both a tag and a digest: the digest is what counts
    source = f"docker://{upstream}/node@{digest}"
    phases["copy"] = _timed([*skopeo, source, f"docker://{target}/node:15-alpine-byhand"], env)
    phases["tag"] = _timed([*skopeo, source, f"docker://{target}/node:15-alpine"], env)
    began = time.perf_counter()
    _run(
        [
            "podman",
            "build",
            "-q",
            "--tls-verify=false",
            "--build-arg",
            f"REGISTRY_FROM_URL={target}/",
            "-t",
            "hello-world:byhand",
            str(SEED / "hello-world"),
        ],
        env,
    )
    served = _run(["podman", "run", "--rm", "hello-world:byhand"], env)
    phases["downstream build+run"] = time.perf_counter() - began
    if "Green" not in served:
        raise SystemExit(f"the hand-built hello-world served {served!r}, not Green")
    return phases


def _gate(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("gate")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "gate"]
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, check=False)


def _step_seconds(log: str, marker: str) -> float:
    """Seconds the validation log gives a line ending ``... after N s -----`` or ``in N s``."""
    for line in log.splitlines():
        if marker in line:
            words = line.replace("-----", "").split()
            for n, word in enumerate(words):
                if word in ("after", "in") and n + 1 < len(words):
                    try:
                        return float(words[n + 1])
                    except ValueError:
                        continue
    return 0.0


def by_gate(
    upstream: str, target: str, env: dict[str, str], data: Path, *, expect: int = 0
) -> tuple[dict[str, float], dict[str, object]]:
    """``gate run`` of the seed's gate.yaml; seconds per phase (from its record) and the record."""
    env = {
        **env,
        "GATE_UPSTREAM": upstream,
        "GATE_TARGET": target,
        "GATE_DATA_DIR": str(data),
        "GATE_CONFIG": str(SEED / "gate.yaml"),
    }
    began = time.perf_counter()
    done = _gate(["run", "--json", f"{upstream}/node:15-alpine"], env)
    wall = time.perf_counter() - began
    if done.returncode != expect:
        raise SystemExit(f"gate run exited {done.returncode}, not {expect}: {done.stderr[-1500:]}")
    outcome = json.loads(done.stdout)
    shown = _gate(["show", "--json", str(outcome["record_id"])], env)
    record = json.loads(shown.stdout)
    log = str(record.get("log") or "")
    timings = record.get("timings") or {}
    phases = {
        "pull": _step_seconds(log, "pulled "),
        "validate build": _step_seconds(log, "step: build-test-base-image: exit"),
        "run tests": _step_seconds(log, "step: validate-base-image: exit"),
        # the blobs were staged while the validation ran: the promotion writes manifests and
        # tags (the copy and the tags are one call, timed together)
        "copy": float(timings.get("promote", 0.0)),
        "tag": 0.0,
    }
    accounted = sum(float(v) for v in timings.values())
    phases["downstream build+run"] = max(wall - accounted, 0.0)
    phases["wall"] = wall
    phases["validate (all)"] = float(timings.get("validate", 0.0))
    return phases, {**outcome, "record": record}


def _fresh_podman(work: Path, name: str) -> dict[str, str]:
    state = work / name
    if state.exists():
        subprocess.run(["chmod", "-R", "u+w", str(state)], check=False)
        shutil.rmtree(state, ignore_errors=True)
    return {**os.environ, **podman_env(state)}


def _target_state(target: str, repo: str = "node") -> tuple[list[str], list[str]]:
    """(tags, repositories) the target registry lists."""
    tags = httpx.get(f"http://{target}/v2/{repo}/tags/list", timeout=10)
    listed = tags.json().get("tags") or [] if tags.status_code == 200 else []
    catalog = httpx.get(f"http://{target}/v2/_catalog", timeout=10).json()
    return list(listed), list(catalog.get("repositories") or [])


def _has_manifest(target: str, digest: str, repo: str = "node") -> bool:
    answer = httpx.head(
        f"http://{target}/v2/{repo}/manifests/{digest}",
        headers={"Accept": MANIFEST_ACCEPT},
        timeout=10,
    )
    return answer.status_code == 200


def _blob_present(target: str, digest: str, repo: str = "node") -> bool:
    return httpx.head(f"http://{target}/v2/{repo}/blobs/{digest}", timeout=10).status_code == 200


def _layers(upstream: str, digest: str) -> list[str]:
    manifest = httpx.get(
        f"http://{upstream}/v2/node/manifests/{digest}",
        headers={"Accept": MANIFEST_ACCEPT},
        timeout=10,
    ).json()
    return [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=300, help="size of the random layer")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gate-bench-seed-"))
    try:
        with RegistryProcess(work / "upstream") as upstream:
            print(f"building the {args.size_mb} MB candidates in {upstream.host} ...", flush=True)
            started = time.perf_counter()
            images = {}
            for color in ("Green", "Red"):
                images[color] = build_image(
                    work,
                    f"{upstream.host}/node:{color.lower()}",
                    env={"NODE_VERSION": "15-alpine", "BACKGROUND_COLOR": color},
                    extra_layer_bytes=args.size_mb * 1_000_000,
                )
            print(f"  built in {time.perf_counter() - started:.1f} s: {images}")

            def point_tag(color: str) -> None:
                # node:15-alpine is what the seed's rule gates
                _run(
                    [
                        "skopeo",
                        "copy",
                        "--quiet",
                        "--src-tls-verify=false",
                        "--dest-tls-verify=false",
                        f"docker://{upstream.host}/node@{images[color]}",
                        f"docker://{upstream.host}/node:15-alpine",
                    ],
                    dict(os.environ),
                )

            point_tag("Green")
            hand: list[dict[str, float]] = []
            gate: list[dict[str, float]] = []
            for n in range(1, args.rounds + 1):
                sides = ("hand", "gate") if n % 2 else ("gate", "hand")
                for side in sides:
                    env = _fresh_podman(work, "podman")
                    with RegistryProcess(work / f"target-{side}-{n}") as target:
                        if side == "hand":
                            hand.append(
                                by_hand(upstream.host, images["Green"], target.host, env, work)
                            )
                            hand[-1]["wall"] = sum(hand[-1].values())
                        else:
                            phases, _ = by_gate(upstream.host, target.host, env, work / f"data-{n}")
                            gate.append(phases)
                print(
                    f"round {n}: by hand {hand[-1]['wall']:.1f} s, gate run "
                    f"{gate[-1]['wall']:.1f} s, ratio {hand[-1]['wall'] / gate[-1]['wall']:.2f}",
                    flush=True,
                )

            def median(rows: list[dict[str, float]], key: str) -> float:
                return statistics.median(row.get(key, 0.0) for row in rows)

            print(
                f"\nmedian of {args.rounds} rounds, {args.size_mb} MB candidate, seconds "
                "(gate phases from its record and validation log)"
            )
            print(f"{'phase':<22} {'by hand':>8} {'gate run':>9}")
            for phase in (*PHASES, "wall"):
                print(f"{phase:<22} {median(hand, phase):>8.2f} {median(gate, phase):>9.2f}")
            print(
                f"{'(gate) validate, all':<22} {'':>8} {median(gate, 'validate (all)'):>9.2f}"
                "   pull + build + tests, the staging's copy running beside it"
            )
            ratio = median(hand, "wall") / median(gate, "wall")
            per_round = statistics.median(
                h["wall"] / g["wall"] for h, g in zip(hand, gate, strict=True)
            )
            print(
                f"\nratio by hand / gate run: {ratio:.2f}x of the medians, {per_round:.2f}x the "
                "median of the rounds' ratios (goal: at least 1.25x)"
            )

            print("\nrejected candidate (Red):")
            point_tag("Red")
            env = _fresh_podman(work, "podman")
            with RegistryProcess(work / "target-red") as target:
                phases, outcome = by_gate(
                    upstream.host, target.host, env, work / "data-red", expect=1
                )
                tags, repositories = _target_state(target.host)
                manifest = _has_manifest(target.host, images["Red"])
                blobs = [
                    d
                    for d in _layers(upstream.host, images["Red"])
                    if _blob_present(target.host, d)
                ]
                print(f"  verdict {outcome['verdict']} in {phases['wall']:.1f} s")
                print(f"  target tags of node: {tags or 'none'}")
                print(
                    f"  target manifest {images['Red'][:19]}: {'present' if manifest else 'none'}"
                )
                print(
                    f"  staged blobs left in the target: {len(blobs)} (repositories listed: "
                    f"{repositories or 'none'})"
                )
                ok = not tags and not manifest
                print(f"  [{'ok' if ok else 'FAIL'}] no tag and no manifest in the target")
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(work)], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
