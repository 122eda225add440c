"""Each command loads only what it uses: reading records needs neither a registry nor an engine.

Every case runs ``gate`` in a new process (as a user does) whose PATH holds no container engine
and whose configuration names registries nobody listens on, then reads which modules the
command imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.configs import promotion_of, unreachable_target_gate_yaml
from devstack.proxy import LatencyProxy, push_tiny_images
from devstack.registry import RegistryProcess
from gate.adapters.ledger.sqlite import SqliteLedger
from gate.domain.records import GateRecord

HEAVY = (
    "httpx",
    "rich",
    "gate.adapters.registry.oci",
    "stamina",
    "gate.adapters.validation.local",
    "gate.usecases.keeper",
    "gate.usecases.gating",
    "gate.usecases.revalidation",
    "azure.core",
)

# runs the CLI in this process, then reports the heavy modules it imported on stderr's last line
_PROBE = """
import json, sys
from gate.entrypoints.cli import main
try:
    main(sys.argv[1:], prog_name="gate")
except SystemExit as done:
    code = done.code
print(json.dumps({"loaded": [m for m in %r if m in sys.modules], "code": code}), file=sys.stderr)
"""


def gate(
    *args: str, cwd: Path, modules: tuple[str, ...] = HEAVY
) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    """``gate ARGS`` in a new process with no container engine on PATH (its cache in ``cwd``);
    the report lists which of ``modules`` it imported."""
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(cwd)}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE % (modules,), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return done, report


def write_config(tmp_path: Path, upstream: str) -> Path:
    return unreachable_target_gate_yaml(tmp_path, upstream, top=["validator: {engine: podman}"])


def promoted(tmp_path: Path, upstream: str, digest: str) -> GateRecord:
    record = promotion_of(upstream, digest, run_id="r1", log="step 1 ok\n")
    SqliteLedger(tmp_path / "data" / "gate.db").add(record)
    return record


def test_help_loads_neither_the_configuration_nor_the_model_nor_rich(tmp_path: Path) -> None:
    done, report = gate("--help", cwd=tmp_path)

    assert report["code"] == 0 and "history" in done.stdout
    assert report["loaded"] == []


@pytest.mark.parametrize("plain", [["--json"], ["--plain"], []], ids=["json", "plain", "pipe"])
def test_history_and_show_work_with_the_registry_down_and_no_container_engine(
    tmp_path: Path, plain: list[str]
) -> None:
    config = write_config(tmp_path, "127.0.0.1:9")  # nothing listens on port 9
    record = promoted(tmp_path, "127.0.0.1:9", "sha256:" + "b" * 64)

    listed, listing = gate(
        "history", "-c", str(config), "--state", "promoted", *plain, cwd=tmp_path
    )
    shown, showing = gate("show", record.id[:8], "-c", str(config), cwd=tmp_path)

    assert listing["code"] in (0, None), listed.stderr
    assert record.id in listed.stdout
    assert listing["loaded"] == []
    assert showing["code"] in (0, None), shown.stderr
    assert "step 1 ok" in shown.stdout and "validation log" in shown.stdout
    assert showing["loaded"] == []


def test_a_command_after_the_first_does_not_parse_the_unchanged_file_again(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, "127.0.0.1:9")
    record = promoted(tmp_path, "127.0.0.1:9", "sha256:" + "b" * 64)

    _, first = gate("history", "-c", str(config), cwd=tmp_path, modules=("yaml",))
    shown, second = gate("show", record.id, "-c", str(config), cwd=tmp_path, modules=("yaml",))
    config.write_text(config.read_text().replace("name: node", "name: node2"))
    _, edited = gate("history", "-c", str(config), cwd=tmp_path, modules=("yaml",))

    assert first["loaded"] == ["yaml"]
    assert second["loaded"] == [] and record.id in shown.stdout
    assert edited["loaded"] == ["yaml"]
    assert (tmp_path / ".cache" / "gate" / "config-parses.json").exists()


def test_a_duplicate_run_answers_without_a_container_engine(tmp_path: Path) -> None:
    with RegistryProcess(tmp_path / "upstream") as upstream:
        digest = push_tiny_images(upstream.host, ["lib/node"], ["15-alpine"])["lib/node:15-alpine"]
        config = write_config(tmp_path, upstream.host)
        record = promoted(tmp_path, upstream.host, digest)

        done, report = gate(
            "run", f"{upstream.host}/lib/node:15-alpine", "--json", "-c", str(config), cwd=tmp_path
        )

    answer = json.loads(done.stdout)
    assert report["code"] == 0, done.stderr
    assert answer["duplicate"] is True and answer["record_id"] == record.id
    # resolving the tag needs the registry client (httpx, which loads rich for its own CLI);
    # validating would need the engine: not loaded
    assert "gate.adapters.validation.local" not in report["loaded"]


def test_a_duplicate_run_by_digest_answers_from_the_ledger_with_the_registry_down(
    tmp_path: Path,
) -> None:
    # nothing listens on port 9: any request to the upstream would fail the run
    digest = "sha256:" + "c" * 64
    config = write_config(tmp_path, "127.0.0.1:9")
    record = promoted(tmp_path, "127.0.0.1:9", digest)
    modules = (*HEAVY, "httpcore", "gate.adapters.registry.http", "yaml")

    gate(
        "history", "-c", str(config), cwd=tmp_path
    )  # caches the file's parse, as a user's first command
    done, report = gate(
        "run", f"127.0.0.1:9/lib/node@{digest}", "--json", "-c", str(config),
        cwd=tmp_path, modules=modules,
    )  # fmt: skip

    answer = json.loads(done.stdout)
    assert report["code"] == 0, done.stderr
    assert answer["duplicate"] is True and answer["record_id"] == record.id
    assert answer["verdict"] == "promoted"
    # the decision is the ledger's: no HTTP client, no registry adapter, no engine was loaded
    assert [
        m for m in report["loaded"] if m not in ("gate.usecases.keeper", "gate.usecases.gating")
    ] == []


def test_a_duplicate_run_by_tag_sends_exactly_one_head(tmp_path: Path) -> None:
    with (
        RegistryProcess(tmp_path / "upstream") as upstream,
        LatencyProxy(upstream.host, latency=0.0) as proxy,
    ):
        digest = push_tiny_images(upstream.host, ["lib/node"], ["15-alpine"])["lib/node:15-alpine"]
        config = write_config(tmp_path, proxy.host)
        record = promoted(tmp_path, proxy.host, digest)
        proxy.reset()

        done, report = gate(
            "run", f"{proxy.host}/lib/node:15-alpine", "--json", "-c", str(config), cwd=tmp_path
        )
        requests = list(proxy.log)

    answer = json.loads(done.stdout)
    assert report["code"] == 0, done.stderr
    assert answer["duplicate"] is True and answer["record_id"] == record.id
    assert requests == [("HEAD", "/v2/lib/node/manifests/15-alpine")]
