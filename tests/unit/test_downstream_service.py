"""The service's downstream step, on fakes of the ports: it starts only after the promotion, and
nothing a downstream runner does can undo or fail that promotion."""

from __future__ import annotations

import logging
import textwrap
from copy import replace
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gate.adapters.ledger.sqlite import SqliteLedger
from gate.config.loading import load_config
from gate.config.model import DownstreamTask
from gate.domain.records import DownstreamRun, GateRecord, Outcome, State
from gate.domain.ref import ImageRef
from gate.errors import AuthenticationError, UsageError
from gate.usecases.downstream import retry_downstream
from gate.usecases.gating import gate_image
from gate.usecases.keeper import Gatekeeper
from tests.fakes import FakeRegistry, FakeSecrets, FakeValidator

UP = "upstream.example.com"
ART = "contosobase.azurecr.io"


@dataclass
class FakeDownstream:
    """The DownstreamRunner port: queues runs in memory, or raises what it is told to."""

    registry: FakeRegistry
    fail: dict[str, Exception] = field(default_factory=dict)
    started: list[tuple[str, str, str | None]] = field(default_factory=list)

    def start(self, task: DownstreamTask, image: ImageRef) -> DownstreamRun:
        if task.task in self.fail:
            raise self.fail[task.task]
        # what the target's stable tag points at when the task is queued
        stable = self.registry.tag_of(f"{image.registry}/{image.repository}:{image.tag}")
        self.started.append((task.task, str(image), stable))
        return DownstreamRun(task.registry, task.task, run_id=f"dr{len(self.started)}")


def make_keeper(tmp_path: Path, downstream: str = "[hello-world, other-app]") -> Gatekeeper:
    (tmp_path / "validation").mkdir(exist_ok=True)
    (tmp_path / "validation" / "acr-task.yaml").write_text("version: v1.1.0\nsteps: []\n")
    path = tmp_path / "gate.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            data_dir: data
            azure:
              subscription_id: sub
              registry: {{name: contosobase, resource_group: rg}}
            rules:
              - name: node
                source: {UP}/node
                tags: ["15-alpine"]
                target: {ART}/node
                validation: {{folder: validation}}
                downstream: {downstream}
            """
        )
    )
    config = load_config(path)
    registry = FakeRegistry()
    return Gatekeeper(
        config=config,
        registry=registry,
        validator=FakeValidator(),
        ledger=SqliteLedger(config.data_dir / "gate.db"),
        secrets=FakeSecrets(),
        downstream=FakeDownstream(registry),
    )


def parts(keeper: Gatekeeper) -> tuple[FakeRegistry, FakeDownstream]:
    assert isinstance(keeper.registry, FakeRegistry)
    assert isinstance(keeper.downstream, FakeDownstream)
    return keeper.registry, keeper.downstream


def test_downstream_tasks_start_after_the_stable_tag_moved_with_the_digest(
    tmp_path: Path,
) -> None:
    keeper = make_keeper(tmp_path)
    registry, runner = parts(keeper)
    digest = registry.push(f"{UP}/node:15-alpine", "green")

    record = gate_image(keeper, f"{UP}/node:15-alpine").record

    assert record.state is State.PROMOTED
    pinned = f"{ART}/node:15-alpine@{digest}"
    assert runner.started == [("hello-world", pinned, digest), ("other-app", pinned, digest)]
    assert [(d.registry, d.task, d.run_id) for d in record.downstream] == [
        ("contosobase", "hello-world", "dr1"),
        ("contosobase", "other-app", "dr2"),
    ]
    assert keeper.ledger.get(record.id) == record


@pytest.mark.parametrize(
    "error",
    [AuthenticationError("refused: the identity lacks scheduleRun"), RuntimeError("boom")],
    ids=["gate-error", "unexpected"],
)
def test_a_task_that_cannot_start_is_recorded_logged_and_the_rest_still_start(
    tmp_path: Path, error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    keeper = make_keeper(tmp_path)
    registry, runner = parts(keeper)
    registry.push(f"{UP}/node:15-alpine", "green")
    runner.fail["hello-world"] = error

    with caplog.at_level(logging.WARNING, logger="gate.service"):
        record = gate_image(keeper, f"{UP}/node:15-alpine").record

    assert record.state is State.PROMOTED and record.reason.startswith("passed")
    failed, started = record.downstream
    assert failed.run_id is None and str(error) in failed.error
    assert started.run_id == "dr1"
    assert keeper.ledger.get(record.id).downstream == record.downstream
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "gate.service"]
    assert "contosobase/hello-world" in warning and f"gate downstream {record.id}" in warning


def test_no_downstream_runner_is_recorded_not_raised(tmp_path: Path) -> None:
    keeper = replace(make_keeper(tmp_path, "[hello-world]"), downstream=None)
    assert isinstance(keeper.registry, FakeRegistry)
    keeper.registry.push(f"{UP}/node:15-alpine", "green")

    record = gate_image(keeper, f"{UP}/node:15-alpine").record

    assert record.state is State.PROMOTED
    (entry,) = record.downstream
    assert entry.run_id is None and "no downstream runner" in entry.error


def test_rejected_and_duplicate_gates_start_nothing(tmp_path: Path) -> None:
    keeper = make_keeper(tmp_path, "[hello-world]")
    registry, runner = parts(keeper)
    registry.push(f"{UP}/node:15-alpine", "red")
    rejecting = replace(keeper, validator=FakeValidator(decide=lambda r: Outcome.REJECTED))

    assert gate_image(rejecting, f"{UP}/node:15-alpine").record.state is State.REJECTED
    registry.push(f"{UP}/node:15-alpine", "green")
    gate_image(keeper, f"{UP}/node:15-alpine")
    again = gate_image(keeper, f"{UP}/node:15-alpine")

    assert again.duplicate
    assert [name for name, _, _ in runner.started] == ["hello-world"]


def test_retry_queues_only_the_tasks_that_did_not_start(tmp_path: Path) -> None:
    keeper = make_keeper(tmp_path)
    registry, runner = parts(keeper)
    registry.push(f"{UP}/node:15-alpine", "green")
    runner.fail["other-app"] = AuthenticationError("refused")
    record = gate_image(keeper, f"{UP}/node:15-alpine").record
    runner.fail.clear()

    retried = retry_downstream(keeper, record.id)

    assert retried.downstream[0] == record.downstream[0]
    assert retried.downstream[1].run_id == "dr2" and retried.downstream[1].error == ""
    assert [name for name, _, _ in runner.started] == ["hello-world", "other-app"]
    assert keeper.ledger.get(record.id).downstream == retried.downstream


def test_retry_after_a_worker_stopped_right_after_promoting_queues_every_task(
    tmp_path: Path,
) -> None:
    keeper = make_keeper(tmp_path)
    registry, _ = parts(keeper)
    registry.push(f"{UP}/node:15-alpine", "green")
    record = gate_image(replace(keeper, downstream=None), f"{UP}/node:15-alpine").record
    # as if the worker died before the downstream step: promoted, nothing queued
    stopped = replace(record, downstream=())
    keeper.ledger.save(stopped)

    retried = retry_downstream(keeper, record.id)

    assert [d.run_id for d in retried.downstream] == ["dr1", "dr2"]


def test_retry_refuses_a_record_that_is_not_a_promotion(tmp_path: Path) -> None:
    keeper = make_keeper(tmp_path, "[hello-world]")
    registry, _ = parts(keeper)
    registry.push(f"{UP}/node:15-alpine", "red")
    rejecting = replace(keeper, validator=FakeValidator(decide=lambda r: Outcome.REJECTED))
    record: GateRecord = gate_image(rejecting, f"{UP}/node:15-alpine").record

    with pytest.raises(UsageError, match="not a promotion"):
        retry_downstream(keeper, record.id)


def test_cli_downstream_retries_and_show_lists_the_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from gate.entrypoints import cli

    keeper = make_keeper(tmp_path)
    registry, runner = parts(keeper)
    registry.push(f"{UP}/node:15-alpine", "green")
    runner.fail["other-app"] = AuthenticationError("refused: lacks scheduleRun/action")
    record = gate_image(keeper, f"{UP}/node:15-alpine").record
    monkeypatch.setattr(cli, "_keeper", lambda config, quiet=False: keeper)
    monkeypatch.setattr(cli, "_ledger", lambda config: keeper.ledger)

    shown = CliRunner().invoke(cli.main, ["show", record.id])
    failed_again = CliRunner().invoke(cli.main, ["downstream", record.id])
    runner.fail.clear()
    retried = CliRunner().invoke(cli.main, ["downstream", record.id])

    assert "contosobase/hello-world run dr1" in shown.output
    assert "contosobase/other-app not queued: refused: lacks scheduleRun/action" in shown.output
    assert failed_again.exit_code == 3 and "not queued" in failed_again.output
    assert retried.exit_code == 0, retried.output
    assert "contosobase/other-app run dr2" in retried.output
