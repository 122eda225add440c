"""Replay the gated-import walkthrough on this machine, offline, in its three acts.

Starts two real registries (a simulated public "upstream" and "base-artifacts"), pushes
upstream ``node:15-alpine`` as Orange, then Green, then Red (``BACKGROUND_COLOR`` in the image
config), and gates each push with the ``gate`` CLI. The validation is the walkthrough's own
(validation/acr-task.yaml: build a test image FROM the candidate, pinned by digest, and run
./test.sh in it): Orange and Green pass and are promoted, Red is stopped. After each promotion
the rule's downstream task file (hello-world/acr-task.yaml) rebuilds the application FROM the
promoted base and runs it: it serves Orange, then Green, and still Green after Red. Then checks
the end state through the registry and the records, prints the history, and exits non-zero if
anything is not as it should be.

Run it with ``scripts/walkthrough`` (which installs what it needs first). With ``--workdir DIR``
the registries' storage, the ledger and the podman state are kept in DIR, with ``DIR/env.sh``
to try every README command on that state afterwards.

With ``--policy`` a fourth act follows, on two fresh registries and ../policy/gate.yaml with a
5-second cooldown: Green waits out its cooldown and is promoted by ``gate watch``; Blue is
pulled back upstream (Purple pushed over it) while it waits, so it is superseded and Purple is
promoted; then the validation changes (Purple is now refused too) and ``gate revalidate`` moves
the stable tag back to Green, the newest earlier digest that passes today.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # devstack/ lives at the project root

from devstack.images import ImageBuilder, tag_digests  # noqa: E402
from devstack.podman import podman_env  # noqa: E402
from devstack.registry import RegistryProcess  # noqa: E402

COLORS = ("Orange", "Green", "Red")
COOLDOWN = 5  # seconds: the policy act's cooldown (examples/policy/gate.yaml says 6h)
MARKER = ".gate-walkthrough"
"""Written in a --workdir the walkthrough made: only such a folder is emptied on a rerun."""


def prepare_workdir(work: Path) -> None:
    """Make ``work`` ready: create it, or empty one an earlier walkthrough made.

    A folder that is not empty and holds no marker is someone else's: refused, untouched.
    """
    if work.exists():
        if not work.is_dir():
            raise SystemExit(f"--workdir {work} is a file; name a folder")
        if any(work.iterdir()):
            if not (work / MARKER).is_file():
                raise SystemExit(
                    f"--workdir {work} is not empty and was not made by the walkthrough (no "
                    f"{MARKER} in it); name an empty or new folder"
                )
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text("made by examples/seed/walkthrough.py; emptied on each run\n")


def records(env: dict[str, str]) -> list[dict[str, Any]]:
    """Every gate record, newest first (``gate history --json``)."""
    exe = Path(sys.executable).with_name("gate")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "gate"]
    listed = subprocess.run(
        [*command, "history", "--json"], env=env, capture_output=True, text=True, check=False
    )
    return [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]


def write_env(work: Path, env: dict[str, str], upstream: Path, target: Path) -> Path:
    """``DIR/env.sh``: the settings every README command needs on the kept state."""
    names = (
        "GATE_UPSTREAM",
        "GATE_TARGET",
        "GATE_DATA_DIR",
        "GATE_CONFIG",
        "CONTAINERS_CONF",
        "CONTAINERS_STORAGE_CONF",
    )
    lines = ["# source this file to use the walkthrough's state: . DIR/env.sh"]
    lines += [f"export {name}={shlex.quote(env[name])}" for name in names]
    lines.append(f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH")
    lines.append("# the registries are stopped: start them again (same ports, same content) with")
    for root in (upstream, target):
        lines.append(f"#   docker-registry serve {shlex.quote(str(root / 'config.yml'))} &")
    path = work / "env.sh"
    path.write_text("\n".join(lines) + "\n")
    return path


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def gate(*args: str, env: dict[str, str]) -> int:
    """Run the real ``gate`` CLI (the console script next to this interpreter)."""
    exe = Path(sys.executable).with_name("gate")
    command = [str(exe), *args] if exe.exists() else [sys.executable, "-m", "gate", *args]
    print(f"$ gate {' '.join(args)}", flush=True)
    return subprocess.run(command, env=env, check=False).returncode


def policy_act(work: Path, env: dict[str, str], builder: ImageBuilder) -> list[tuple[str, bool]]:
    """Act four: cooldown, a superseded digest, and a re-validation that demotes."""
    validation = work / "policy-validation"
    shutil.copytree(HERE / "validation", validation)
    with (
        RegistryProcess(work / "policy-upstream") as upstream,
        RegistryProcess(work / "policy-base-artifacts") as target,
    ):
        env = {
            **env,
            "GATE_UPSTREAM": upstream.host,
            "GATE_TARGET": target.host,
            "GATE_DATA_DIR": str(work / "policy-data"),
            "GATE_CONFIG": str(HERE.parent / "policy" / "gate.yaml"),
            "GATE_COOLDOWN": f"{COOLDOWN}s",
            "GATE_POLICY_VALIDATION": str(validation),
        }
        image = f"{upstream.host}/node:15-alpine"

        def push(color: str) -> str:
            digest = builder.image(
                image, env={"NODE_VERSION": "15-alpine", "BACKGROUND_COLOR": color}
            )
            print(f"upstream {image} -> {digest}")
            return digest

        def stable() -> str | None:
            return tag_digests(target.host, "node").get("15-alpine")

        say(f"policy: upstream pushes Green; the rule's cooldown is {COOLDOWN}s")
        green = push("Green")
        waited = gate("run", image, env=env)  # validated now, promoted later: exit 3
        gate("history", env=env)
        green_waited = stable() is None
        time.sleep(COOLDOWN + 1)
        say("policy: the cooldown is over; the next poll promotes Green without validating again")
        gate("watch", "--once", env=env)
        green_promoted = stable() == green

        say("policy: upstream pushes Blue, then pulls it back (Purple over it) within the cooldown")
        blue = push("Blue")
        gate("run", image, env=env)
        purple = push("Purple")
        gate("run", image, env=env)
        time.sleep(COOLDOWN + 1)
        gate("watch", "--once", env=env)
        purple_promoted = stable() == purple

        say("policy: the validation changes (Purple is refused too); re-validate the stable digest")
        test = validation / "test.sh"
        test.write_text(
            test.read_text().replace(
                "= 'RED' ]",
                "= 'RED' -o \"$(echo $BACKGROUND_COLOR | tr '[:lower:]' '[:upper:]')\" = 'PURPLE' ]",
            )
        )
        demoted = gate("revalidate", env=env)
        gate("history", env=env)
        listed = records(env)
        final = tag_digests(target.host, "node")
    states = {(r.get("digest"), r.get("state")) for r in listed}
    return [
        (
            "policy: Green waited out its cooldown (exit 3, nothing promoted)",
            waited == 3 and green_waited,
        ),
        ("policy: gate watch promoted Green once the cooldown ended", green_promoted),
        ("policy: Blue, pulled back while waiting, was superseded", (blue, "superseded") in states),
        ("policy: Blue never reached base-artifacts", blue not in final.values()),
        ("policy: Purple was promoted after its cooldown", purple_promoted),
        # a demotion's record names the digest the stable tag moved back to
        (
            "policy: re-validation demoted Purple (exit 0)",
            demoted == 0 and (green, "demoted") in states,
        ),
        ("policy: the stable tag is back on Green", final.get("15-alpine") == green),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", type=Path, help="keep registries, ledger and podman state here"
    )
    parser.add_argument(
        "--policy",
        action="store_true",
        help="add the fourth act: cooldown, a superseded digest, re-validation and demotion",
    )
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="gate-walkthrough-"))
    if args.workdir:
        prepare_workdir(work.resolve())

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
        gated = {
            color: [r for r in records(env) if r.get("digest") == digests[color]]
            for color in COLORS
        }

        def served(color: str) -> str:
            """What hello-world printed after the promotion of ``color`` ('' if it did not run)."""
            runs = [d for r in gated[color] for d in r.get("downstream") or []]
            done = [d for d in runs if d.get("outcome") == "succeeded"]
            return str(done[0].get("output", "")) if done else ""

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
            ("hello-world was rebuilt on Orange and served Orange", "Orange" in served("Orange")),
            ("hello-world was rebuilt on Green and serves Green", "Green" in served("Green")),
            (
                "Red's rejection ran nothing downstream: hello-world still serves Green",
                all(not r.get("downstream") for r in gated["Red"]) and bool(gated["Red"]),
            ),
        ]
        for tag, digest in final.items():
            color = next((c for c, d in digests.items() if d == digest), "?")
            print(f"  base-artifacts {target.host}/node:{tag:<28} {digest[:19]}  {color}")
        for color in ("Orange", "Green"):
            print(f"  hello-world after {color}: {served(color) or '(did not run)'}")
        if args.policy:
            checks += policy_act(work, env, builder)
        failed = 0
        for label, ok in checks:
            print(f"  [{'ok' if ok else 'FAIL'}] {label}")
            failed += not ok
        if args.workdir:
            env_file = write_env(work.resolve(), env, upstream.root, target.root)
            print(f"\nstate kept in {work}; to try the README's commands on it:")
            print(f"  . {env_file}   # GATE_* settings, podman's configuration, gate on PATH")
            print(f"  docker-registry serve {upstream.root / 'config.yml'} &")
            print(f"  docker-registry serve {target.root / 'config.yml'} &")
            print("  gate history")
        else:
            shutil.rmtree(work, ignore_errors=True)
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
