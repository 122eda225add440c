"""Replay the gated-import walkthrough on this machine, offline.

Starts two real registries (a simulated public "upstream" and "base-artifacts"), pushes
upstream ``node:15-alpine`` as Orange, then Green, then Red (``BACKGROUND_COLOR`` in the image
config), and gates each push with the ``gate`` CLI: Orange and Green pass, Red is stopped. Then
checks the end state, prints the history, and exits non-zero if anything is not as it should be.

Run it with ``scripts/walkthrough`` (which installs what it needs first).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # devstack/ lives at the project root

from devstack.images import ImageBuilder, tag_digests  # noqa: E402
from devstack.podman import podman_env  # noqa: E402
from devstack.registry import RegistryProcess  # noqa: E402

COLORS = ("Orange", "Green", "Red")


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def gate(*args: str, env: dict[str, str]) -> int:
    """Run the real ``gate`` CLI (the console script next to this interpreter)."""
    exe = Path(sys.executable).with_name("gate")
    command = [str(exe), *args] if exe.exists() else [sys.executable, "-m", "gate", *args]
    print(f"$ gate {' '.join(args)}", flush=True)
    return subprocess.run(command, env=env, check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", type=Path, help="keep registries, ledger and podman state here"
    )
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="gate-walkthrough-"))
    if args.workdir and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)

    env = {**os.environ, **podman_env(work / "podman")}
    os.environ.update(env)
    with (
        RegistryProcess(work / "upstream") as upstream,
        RegistryProcess(work / "base-artifacts") as target,
    ):
        env.update(
            GATE_UPSTREAM=upstream.host,
            GATE_TARGET=target.host,
            GATE_DATA_DIR=str(work / "data"),
            GATE_CONFIG=str(HERE / "gate.yaml"),
        )
        say(f"upstream (simulated public registry) {upstream.url}; base-artifacts {target.url}")
        builder = ImageBuilder(work / "images")
        digests: dict[str, str] = {}
        codes: dict[str, int] = {}
        for color in COLORS:
            say(f"upstream pushes node:15-alpine with BACKGROUND_COLOR={color}")
            digests[color] = builder.image(
                f"{upstream.host}/node:15-alpine",
                env={"NODE_VERSION": "15-alpine", "BACKGROUND_COLOR": color},
            )
            print(f"upstream {upstream.host}/node:15-alpine -> {digests[color]}")
            codes[color] = gate("run", f"{upstream.host}/node:15-alpine", env=env)

        say("a redelivered event for the Green digest costs nothing")
        codes["Green again"] = gate("run", f"{upstream.host}/node@{digests['Green']}", env=env)

        say("history")
        gate("history", env=env)

        say("checks")
        final = tag_digests(target.host, "node")
        unique = {tag: d for tag, d in final.items() if tag.startswith("15-alpine-")}
        print("  (the table is `gate history`; `gate show RECORD` has a record's validation log)")
        checks = [
            ("Orange passed the gate (exit 0)", codes["Orange"] == 0),
            ("Green passed the gate (exit 0)", codes["Green"] == 0),
            ("Red was rejected (exit 1)", codes["Red"] == 1),
            ("the redelivered Green was a no-op (exit 0)", codes["Green again"] == 0),
            (
                "base-artifacts node:15-alpine is the Green digest",
                final.get("15-alpine") == digests["Green"],
            ),
            ("a node:15-alpine-<run-id> tag holds Orange", digests["Orange"] in unique.values()),
            ("a node:15-alpine-<run-id> tag holds Green", digests["Green"] in unique.values()),
            ("nothing in base-artifacts holds Red", digests["Red"] not in final.values()),
            ("exactly two run-ID tags", len(unique) == 2),
        ]
        for tag, digest in final.items():
            color = next((c for c, d in digests.items() if d == digest), "?")
            print(f"  base-artifacts {target.host}/node:{tag:<28} {digest[:19]}  {color}")
        failed = 0
        for label, ok in checks:
            print(f"  [{'ok' if ok else 'FAIL'}] {label}")
            failed += not ok
        print(f"\nstate kept in {work}" if args.workdir else "")
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
