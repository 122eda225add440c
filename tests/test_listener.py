"""``gate listen``: a registry's own push notifications drive the gate, as Event Grid does in Azure."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from devstack.images import ImageBuilder, tag_digests
from devstack.registry import RegistryProcess, free_port
from gate.compose import local_gatekeeper
from gate.config import load_config
from gate.events import parse_notifications
from gate.listener import PushListener
from gate.model import State
from gate.service import GateOutcome
from tests.test_end_to_end import write_config

DATA = Path(__file__).parent / "data" / "events"


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
        {"queued": 0, "dropped": "notification ?: target or request is missing"},
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
