"""Benchmark: ARM calls per gated image on the Azure adapters (a pass, a rejection, a duplicate).

Runs the gate through the real SDK clients against the ACR emulator (devstack/acr: ARM,
the ACR data plane, task runs really executed with podman, with the runner's user-assigned
identity pulling the candidate from a private upstream ACR) and counts, per case, the ARM
requests by operation and the ACR data-plane requests. A validation costs: the source upload
URL, the task run's PUT, its creation's ``Azure-AsyncOperation`` polls and the SDK's final GET,
the ``runs.get`` polls, the log URL and the task run's DELETE; a promotion, the imports and their
polls. The goal is the minimum the API allows, and zero for a duplicate.

Run: ``python -m bench.arm_calls``
"""

from __future__ import annotations

import os
import tempfile
import textwrap
from collections import Counter
from pathlib import Path

from devstack.acr import AcrEmulator
from devstack.acr.tasks import wait_for_runs
from devstack.images import ImageBuilder
from devstack.podman import podman_env
from gate.compose import build_gatekeeper
from gate.config.loading import load_config
from gate.usecases.gating import gate_image

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.update(podman_env(work / "podman"))
        with AcrEmulator(work / "emulator") as emulator:
            os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"] = str(emulator.ca_path)
            up = emulator.add_registry("publicregistry", "public-rg", private=True)
            base = emulator.add_registry("baseartifacts", "base-rg")
            runner = emulator.add_identity("gate-runner", pull_from=(up,))
            config = work / "gate.yaml"
            config.write_text(
                textwrap.dedent(
                    f"""\
                    data_dir: {work / "data"}
                    registries:
                      - {{host: "{up.login_server}", resource_id: "{up.resource_id}"}}
                    azure:
                      subscription_id: "{emulator.subscription_id}"
                      arm_endpoint: "{emulator.arm_endpoint}"
                      registry: {{name: baseartifacts, resource_group: base-rg, login_server: "{base.login_server}"}}
                      runner:
                        name: baseartifacts
                        resource_group: base-rg
                        login_server: "{base.login_server}"
                        identity: {{resource_id: "{runner.resource_id}", client_id: "{runner.client_id}"}}
                    rules:
                      - name: node
                        source: "{up.login_server}/node"
                        tags: ["15-alpine"]
                        target: "{base.login_server}/node"
                        validation: {{folder: "{ROOT / "examples" / "seed" / "validation"}", timeout: 300}}
                    """
                )
            )
            keeper = build_gatekeeper(load_config(config), credential=emulator.credential())
            # the production poll schedule (2 s doubling to 30 s), on runs of a few seconds
            images = ImageBuilder(work / "images")
            print("ARM calls per gated image (real SDK clients, ACR emulator)\n")
            print(f"{'case':<11} {'ARM':>4}  {'blob':>4} {'ACR data plane':>15}  by operation")
            for case, color in (("pass", "Green"), ("rejection", "Red"), ("duplicate", "Red")):
                if case != "duplicate":
                    images.image(
                        f"{up.backing.host}/node:15-alpine", env={"BACKGROUND_COLOR": color}
                    )
                arm_before = len(emulator.calls)
                plane_before = sum(len(r.calls) for r in emulator.registries.values())
                outcome = gate_image(keeper, f"{up.login_server}/node:15-alpine")
                wait_for_runs(emulator, base.name)
                served = emulator.calls[arm_before:]
                # the emulator serves the SAS blob URLs too; those are Storage, not ARM
                blobs = [c for c in served if c.name.startswith("blob")]
                calls = [c for c in served if not c.name.startswith("blob")]
                plane = sum(len(r.calls) for r in emulator.registries.values()) - plane_before
                by_name = Counter(c.name for c in calls)
                detail = ", ".join(f"{name} {n}" for name, n in sorted(by_name.items())) or "-"
                verdict = f"{outcome.verdict}{' (duplicate)' if outcome.duplicate else ''}"
                print(
                    f"{case:<11} {len(calls):>4}  {len(blobs):>4} {plane:>15}  -> {verdict}\n"
                    f"{'':<11} {detail}"
                )


if __name__ == "__main__":
    main()
