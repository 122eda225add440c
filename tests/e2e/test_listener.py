"""``gate listen``: a registry's own push notifications drive the gate, as Event Grid does in Azure."""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from devstack.images import ImageBuilder, tag_digests
from devstack.registry import RegistryProcess, free_port
from gate.compose import local_gatekeeper
from gate.config.loading import load_config
from gate.domain.records import State
from gate.entrypoints.events import parse_notifications
from gate.entrypoints.listener import PushListener, read_token
from gate.errors import UsageError
from gate.usecases.keeper import GateOutcome
from tests.e2e.test_end_to_end import write_config

DATA = Path(__file__).parents[1] / "data" / "events"
ROOT = Path(__file__).resolve().parents[2]


def test_distribution_sample_parses_as_a_push() -> None:
    (push,) = parse_notifications(
        json.loads((DATA / "distribution-notification-push.json").read_text())
    )

    assert (push.action, push.host, push.repository, push.tag) == (
        "push",
        "127.0.0.1:5001",
        "node",
        "15-alpine",
    )
    assert push.digest is not None and push.digest.startswith("sha256:ad9c")


def test_listener_queues_watched_pushes_and_ignores_the_rest(tmp_path: Path) -> None:
    keeper = local_gatekeeper(
        load_config(write_config(tmp_path, "127.0.0.1:5001", "127.0.0.1:5002"))
    )
    listener = PushListener(keeper)  # not started: no worker drains the queue
    sample = json.loads((DATA / "distribution-notification-push.json").read_text())
    pull = {**sample["events"][0], "action": "pull"}
    other = json.loads(json.dumps(sample["events"][0]))
    other["target"]["repository"] = "ruby"

    status, body = listener.receive(
        json.dumps({"events": [sample["events"][0], pull, other]}).encode()
    )

    assert status == 200 and body["queued"] == 1 and len(body["ignored"]) == 2
    queued = listener.requests.get_nowait()
    assert (
        queued is not None
        and queued.image
        == f"127.0.0.1:5001/node:15-alpine@{sample['events'][0]['target']['digest']}"
    )
    assert listener.receive(b"not json")[0] == 400
    assert listener.receive(b'{"events": [{"target": 1}]}') == (
        200,
        {
            "queued": 0,
            "dropped": "notification envelope: Expected `object`, got `int`"
            " - at `$.events[0].target`",
        },
    )


@pytest.mark.usefixtures("podman_env")
def test_registry_notifications_gate_each_push(tmp_path: Path, image_builder: ImageBuilder) -> None:
    with RegistryProcess(tmp_path / "target") as target:
        # the upstream registry needs the listener's URL in its config, so the listener comes
        # first, on a config naming the upstream's port chosen ahead
        port = free_port()
        keeper = local_gatekeeper(
            load_config(write_config(tmp_path, f"127.0.0.1:{port}", target.host))
        )
        outcomes: list[GateOutcome] = []
        with (
            PushListener(keeper, on_outcome=outcomes.append) as listener,
            RegistryProcess(tmp_path / "upstream", port=port, notify_url=listener.url) as upstream,
        ):
            green = image_builder.image(
                f"{upstream.host}/node:15-alpine", env={"BACKGROUND_COLOR": "Green"}
            )
            deadline = time.monotonic() + 120
            while not outcomes and time.monotonic() < deadline:
                time.sleep(0.2)
            red = image_builder.image(
                f"{upstream.host}/node:15-alpine", env={"BACKGROUND_COLOR": "Red"}
            )
            while len(outcomes) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            listener.requests.join()

        assert [(o.record.state, o.record.digest) for o in outcomes[:2]] == [
            (State.PROMOTED, green),
            (State.REJECTED, red),
        ]
        assert all(o.record.trigger == "event" for o in outcomes)
        assert tag_digests(target.host, "node")["15-alpine"] == green


# -- a token between the registry and the listener ------------------------------------------------


def sample_envelope() -> bytes:
    return (DATA / "distribution-notification-push.json").read_bytes()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::", "registry.example"])
def test_binding_beyond_loopback_without_a_token_is_refused_with_why(
    tmp_path: Path, host: str
) -> None:
    keeper = local_gatekeeper(
        load_config(write_config(tmp_path, "127.0.0.1:5001", "127.0.0.1:5002"))
    )

    with pytest.raises(UsageError) as refused:
        PushListener(keeper, host=host)

    assert "without a token" in refused.value.message and "--token-file" in refused.value.message


def test_binding_beyond_loopback_with_a_token_is_allowed(tmp_path: Path) -> None:
    keeper = local_gatekeeper(
        load_config(write_config(tmp_path, "127.0.0.1:5001", "127.0.0.1:5002"))
    )

    listener = PushListener(keeper, host="0.0.0.0", token=secrets.token_urlsafe(24))

    with listener:
        assert listener.url.startswith("http://0.0.0.0:")


@pytest.mark.parametrize(
    ("content", "says"),
    [(None, "cannot read"), ("short", "at least 16"), ("two words here!!!!", "without spaces")],
)
def test_a_token_file_that_cannot_serve_is_refused(
    tmp_path: Path, content: str | None, says: str
) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)

    with pytest.raises(UsageError) as refused:
        read_token(path)

    assert says in refused.value.message
    assert content is None or content not in refused.value.message


def test_notifications_without_the_bearer_token_are_refused_and_gate_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keeper = local_gatekeeper(
        load_config(write_config(tmp_path, "127.0.0.1:5001", "127.0.0.1:5002"))
    )
    token = secrets.token_urlsafe(32)
    outcomes: list[GateOutcome] = []
    caplog.set_level(logging.DEBUG, logger="gate.listener")

    with PushListener(keeper, token=token, on_outcome=outcomes.append) as listener:
        answers = [
            httpx.post(listener.url, content=sample_envelope(), headers=headers)
            for headers in (
                {},
                {"Authorization": f"Bearer {token[:-1]}"},
                {"Authorization": f"Basic {token}"},
                {"Authorization": token},
            )
        ]
        queued = listener.requests.qsize()

    assert [a.status_code for a in answers] == [401, 401, 401, 401]
    assert answers[0].headers["WWW-Authenticate"] == "Bearer"
    assert answers[0].json()["error"] == "unauthorized"
    assert queued == 0 and outcomes == [] and keeper.ledger.history() == []
    assert "missing or wrong bearer token" in caplog.text and token[:-1] not in caplog.text


def test_the_right_bearer_token_is_let_through(tmp_path: Path) -> None:
    keeper = local_gatekeeper(
        load_config(write_config(tmp_path, "127.0.0.1:5001", "127.0.0.1:5002"))
    )
    token = secrets.token_urlsafe(32)
    listener = PushListener(keeper, token=token)

    assert listener.authorized(f"Bearer {token}") and listener.authorized(f"bearer  {token} ")
    assert not listener.authorized(None) and not listener.authorized(f"Bearer {token}x")
    assert PushListener(keeper).authorized(None)  # no token: loopback only, nothing to check


def listen(config: Path, port: int, token_file: Path, log: Path) -> subprocess.Popen[bytes]:
    """``gate listen --token-file`` as a user starts it."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gate",
                "listen",
                "--config",
                str(config),
                "--port",
                str(port),
                "--token-file",
                str(token_file),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ),
            cwd=ROOT,
        )


def wait_for_listener(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"gate listen did not answer on {url}")


@pytest.mark.usefixtures("podman_env")
def test_gate_listen_with_a_token_file_gates_only_a_registry_that_sends_the_token(
    tmp_path: Path, image_builder: ImageBuilder
) -> None:
    token = secrets.token_urlsafe(32)
    token_file = tmp_path / "listener.token"
    token_file.write_text(token + "\n")
    log = tmp_path / "listen.log"
    listen_port = free_port()
    url = f"http://127.0.0.1:{listen_port}/events"
    with RegistryProcess(tmp_path / "target") as target:
        port = free_port()
        config = write_config(tmp_path, f"127.0.0.1:{port}", target.host)
        process = listen(config, listen_port, token_file, log)
        try:
            deadline = time.monotonic() + 120
            wait_for_listener(url, deadline)
            # a registry with the wrong secret: its pushes are refused, nothing is gated
            with RegistryProcess(
                tmp_path / "wrong",
                port=port,
                notify_url=url,
                notify_headers={"Authorization": ["Bearer not-the-token-at-all"]},
            ) as wrong:
                image_builder.image(
                    f"{wrong.host}/node:15-alpine", env={"BACKGROUND_COLOR": "Green"}
                )
                while "missing or wrong bearer token" not in log.read_text() and (
                    time.monotonic() < deadline
                ):
                    time.sleep(0.2)
            assert "missing or wrong bearer token" in log.read_text()
            assert tag_digests(target.host, "node") == {}
            # the same upstream address with the right secret: the push is gated and promoted
            with RegistryProcess(
                tmp_path / "upstream",
                port=port,
                notify_url=url,
                notify_headers={"Authorization": [f"Bearer {token}"]},
            ) as upstream:
                green = image_builder.image(
                    f"{upstream.host}/node:15-alpine", env={"BACKGROUND_COLOR": "Green"}
                )
                while time.monotonic() < deadline and (
                    tag_digests(target.host, "node").get("15-alpine") != green
                ):
                    time.sleep(0.2)
            assert tag_digests(target.host, "node")["15-alpine"] == green
        finally:
            process.terminate()
            process.wait(timeout=60)
    output = log.read_text()
    assert "promoted" in output and token not in output


def test_gate_listen_beyond_loopback_without_a_token_file_exits_2_saying_why(
    tmp_path: Path,
) -> None:
    from click.testing import CliRunner

    from gate.entrypoints.cli import main

    config = write_config(tmp_path, "127.0.0.1:5001", "127.0.0.1:5002")

    result = CliRunner().invoke(
        main, ["listen", "--bind", "0.0.0.0", "--port", "0", "--config", str(config)]
    )

    assert result.exit_code == 2
    assert "without a token" in result.output and "--token-file" in result.output
