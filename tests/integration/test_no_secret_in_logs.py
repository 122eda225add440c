"""No secret reaches a log line, at any level: every logger at DEBUG through a push-mode promotion
and a failed validation, with the real SDK clients against the ACR emulator.

The emulator hands out what a leak would be made of, and remembers all of it: the AAD, refresh
and access tokens of its token book, and the SAS signatures of its blob store, which serves the
blob downloads its data planes redirect to (a 307 to a ``...&sig=...`` URL, as ACR redirects them
to its storage). A task value read from a secret is sent with the validation, and the failing
step prints it. Every record of every logger is then searched for each of those values.
"""

from __future__ import annotations

import json
import logging
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from devstack.acr import AcrEmulator, EmulatedRegistry
from devstack.acr.tasks import wait_for_runs
from devstack.azurite import AzuriteProcess
from devstack.images import ImageBuilder, tag_digests
from gate.adapters.secrets.local import LocalSecrets, env_name
from gate.compose import build_gatekeeper
from gate.config.loading import load_config
from gate.domain.records import GateRecord, State
from gate.domain.ref import ImageRef
from gate.logsafe import REDACTED
from gate.usecases.gating import gate_image
from gate.usecases.keeper import Gatekeeper
from tests.e2e.test_azure_gate import quick, tables  # noqa: F401  (tables is a fixture)

SECRET_NAME = "validation-token"
SECRET = "s3cr3t-validation-t0ken-4711"
# The step prints the secret, then fails for a Red candidate (the image's BACKGROUND_COLOR).
TASK = textwrap.dedent(
    """\
    version: v1.1.0
    steps:
      - id: check
        cmd: "{{.Values.IMAGE}} sh -c 'echo token is $TOKEN; test $BACKGROUND_COLOR != Red'"
        env: ["TOKEN={{.Values.TOKEN}}"]
    """
)
# Libraries whose loggers the gate's requests go through; each must reach the capture at DEBUG.
LIBRARY_LOGGERS = ("httpx", "httpcore", "azure.core", "azure.identity", "urllib3", "gate")
# LogRecord's own attributes: anything else on a record came in by ``extra=`` and is searched.
_STANDARD = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message",
    "asctime",
}
_UNREDACTED_SIG = re.compile(r"(?i)[?&;]sig=(?!" + REDACTED + r")")
_BEARER = re.compile(r"(?i)\bbearer\s+(?!" + REDACTED + r")[a-z0-9._~+/=-]{16,}")
_BASIC = re.compile(r"(?i)\bbasic\s+(?!" + REDACTED + r")[a-z0-9+/=]{16,}")


def _config(
    tmp_path: Path,
    emulator: AcrEmulator,
    up: EmulatedRegistry,
    base: EmulatedRegistry,
    tables: AzuriteProcess,  # noqa: F811
    runner_id: str,
    runner_client: str,
) -> Path:
    folder = tmp_path / "validation"
    folder.mkdir()
    (folder / "acr-task.yaml").write_text(TASK)
    path = tmp_path / "gate.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            data_dir: {tmp_path / "data"}
            registries:
              - host: "{up.login_server}"
                resource_id: "{up.resource_id}"
            azure:
              subscription_id: "{emulator.subscription_id}"
              arm_endpoint: "{emulator.arm_endpoint}"
              registry:
                name: {base.name}
                resource_group: {base.resource_group}
                login_server: "{base.login_server}"
                promote: push
              runner:
                name: {base.name}
                resource_group: {base.resource_group}
                login_server: "{base.login_server}"
                identity: {{resource_id: "{runner_id}", client_id: "{runner_client}"}}
              ledger:
                connection_string: "{tables.connection_string}"
                table: gatenosecret{tmp_path.name[-6:].replace("_", "")}
            rules:
              - name: node
                source: "{up.login_server}/node"
                tags: ["15-alpine"]
                target: "{base.login_server}/node"
                validation:
                  folder: "{folder}"
                  timeout: 300
                  secret_values: {{TOKEN: {SECRET_NAME}}}
            """
        )
    )
    return path


@pytest.fixture
def every_logger_at_debug(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """``caplog`` seeing every record of every logger, at DEBUG.

    The root logger is set to DEBUG (caplog's handler sits there); a logger that set its own
    level, or does not propagate, would keep records from it, so each is set to DEBUG (NOTSET:
    inherit) and, when it does not propagate, given caplog's handler itself. Loggers created
    later inherit the root's DEBUG.
    """
    assert logging.root.manager.disable == logging.NOTSET, "logging.disable() is in force"
    caplog.set_level(logging.DEBUG)
    saved: list[tuple[logging.Logger, int]] = []
    fed: list[logging.Logger] = []
    for name in (*LIBRARY_LOGGERS, *logging.root.manager.loggerDict):
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.setLevel(logging.NOTSET)
        if not logger.propagate:
            logger.addHandler(caplog.handler)
            fed.append(logger)
    try:
        yield caplog
    finally:
        for logger in fed:
            logger.removeHandler(caplog.handler)
        for logger, level in reversed(saved):
            logger.setLevel(level)


def _text(record: logging.LogRecord, formatter: logging.Formatter) -> str:
    """All a handler could write of ``record``: the message with its exception and stack, the
    arguments as they are (a handler may format them otherwise) and any ``extra=`` fields."""
    extra = {k: v for k, v in vars(record).items() if k not in _STANDARD}
    return "\n".join((formatter.format(record), repr(record.args), repr(extra)))


def _forms(value: str) -> set[str]:
    """``value`` as a log line could hold it: as is, URL-quoted, and form-quoted."""
    return {value, quote(value, safe=""), quote(value, safe="").replace("%20", "+")}


@pytest.mark.podman
def test_no_secret_reaches_any_log_record_through_a_push_promotion_and_a_failed_validation(
    tmp_path: Path,
    acr_emulator: AcrEmulator,
    tables: AzuriteProcess,  # noqa: F811
    podman_env: dict[str, str],
    image_builder: ImageBuilder,
    every_logger_at_debug: pytest.LogCaptureFixture,
) -> None:
    caplog = every_logger_at_debug
    # the upstream ACR is private: its blobs come through the data plane's redirect
    up = acr_emulator.add_registry("publicregistry", "public-rg", private=True)
    base = acr_emulator.add_registry("baseartifacts", "base-rg")
    runner = acr_emulator.add_identity("gate-runner", pull_from=(up,))
    path = _config(tmp_path, acr_emulator, up, base, tables, runner.resource_id, runner.client_id)
    secrets = LocalSecrets(env={env_name(SECRET_NAME): SECRET})
    keeper: Gatekeeper = quick(
        build_gatekeeper(load_config(path), credential=acr_emulator.credential(), secrets=secrets),
        acr_emulator,
        base,
    )

    def gate(color: str) -> GateRecord:
        image_builder.image(f"{up.backing.host}/node:15-alpine", env={"BACKGROUND_COLOR": color})
        return gate_image(keeper, f"{up.login_server}/node:15-alpine").record

    caplog.clear()
    promoted = gate("Green")
    rejected = gate("Red")
    wait_for_runs(acr_emulator, base.name)
    stored = keeper.ledger.get(rejected.id)
    # the gate also reads small blobs of an ACR (configs, signature payloads) with the SDK
    # (azure-containerregistry's download_blob: azure-core over requests and urllib3), which
    # follows the same redirect
    candidate = ImageRef(up.login_server, "node", digest=promoted.digest)
    assert keeper.manifests is not None  # the ACR adapter reads manifests (compose wires it)
    manifest = keeper.manifests.fetch_manifest(candidate, promoted.digest)
    assert manifest is not None
    config = json.loads(manifest[0])["config"]["digest"]
    assert keeper.manifests.fetch_blob(candidate, config)

    # what happened is what this test is about: a push, blobs read through SAS links, a failure
    assert promoted.state is State.PROMOTED, promoted.reason
    assert tag_digests(base.backing.host, "node")["15-alpine"] == promoted.digest
    assert rejected.state is State.REJECTED, rejected.reason
    assert rejected.reason.startswith("step 'check' exited with code 1"), rejected.reason
    assert "token is ***" in stored.log, stored.log
    assert any(c.name == "v2Blob" and c.status == 307 for c in up.calls)
    assert any(
        c.name == "blobGet" and c.path.startswith(f"/_blobs/{up.name}-data/")
        for c in acr_emulator.calls
    )
    # the registry's token did not follow the redirect to the storage host
    assert acr_emulator.blobs.authorized == []

    records = caplog.records
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    texts = [(r.name, _text(r, formatter)) for r in records]
    assert {r.levelno for r in records} >= {logging.DEBUG, logging.INFO}
    names = {r.name.split(".")[0] for r in records}
    assert {"httpx", "httpcore", "urllib3", "azure", "gate"} <= names, names
    # the capture saw the redirected blob reads, so it would see their signatures
    followed = [(n, t) for n, t in texts if f"/_blobs/{up.name}-data/" in t and "sig=" in t]
    assert {n.split(".")[0] for n, _ in followed} >= {"httpx", "urllib3"}, followed
    assert all(f"sig={REDACTED}" in t for _, t in followed)

    signatures = acr_emulator.blobs.signatures()
    tokens = acr_emulator.tokens.issued()
    assert signatures and tokens
    secret_forms = {
        form: what
        for what, values in (
            ("a SAS signature", signatures),
            ("a token", tokens),
            ("the task secret", (SECRET,)),
        )
        for value in values
        for form in _forms(value)
    }
    leaks = [
        f"{name}: {what} in {text[:300]!r}"
        for name, text in texts
        for form, what in secret_forms.items()
        if form in text
    ]
    leaks += [
        f"{name}: {kind} in {text[:300]!r}"
        for name, text in texts
        for kind, pattern in (
            ("sig= not redacted", _UNREDACTED_SIG),
            ("a bearer credential", _BEARER),
            ("a basic credential", _BASIC),
        )
        if pattern.search(text)
    ]
    assert leaks == []

    # what the gate keeps of the failed validation holds no secret either
    for record in (rejected, stored):
        kept = "\n".join((record.reason, record.log))
        assert not any(form in kept for form in secret_forms), record.id
