"""The load scenario: the deployed gate (``function_app``) under a burst of push events.

A burst of push events (a share of them delivered twice, as Event Grid's at-least-once delivery
and the poll both do) against many rules, while the emulator's task runs last longer than the
queue's retry budget (``visibilityTimeout * maxDequeueCount``) and ARM answers a share of its
requests with 429 and ``Retry-After``. The real ``function_app`` functions run in this process:
``on_push`` with Event Grid events, ``gate_worker`` and ``gate_poison`` under a simulated host
(:class:`devstack.functions_queues.QueueHost`: K instances, batch settings, dequeue counts,
visibility, poison), the ``watch`` timer on its schedule; the app settings are the deployed
app's (``GATE_CONFIG``, ``GATE_WORKER_WAIT_SECONDS``, ``AzureWebJobsStorage``), the ledger an
Azure Table on Azurite, ARM and ACR the emulator (:mod:`devstack.acr`) with synthetic runs
(:mod:`devstack.acr.synthetic`: no podman).

Two things differ from the deployed app, both because the emulator is not Azure: the keeper is
built with the emulator's credential (the app's ``DefaultAzureCredential`` has no managed
identity here), and its task-run validator polls at the scaled interval (its 2 s doubling to
30 s is not a setting). Every duration (host.json's, the rule's validation timeout, the lease,
the ARM poll interval, ``worker_wait_seconds``, the run length, the timer's schedule, and the
worker's promotion margin, a module constant of :mod:`gate.usecases.queueing` set for the run
and restored after it) is multiplied by one ``factor`` so that a run takes minutes; :class:`Figures` keeps what was
measured. :func:`run_scenario` is the whole thing; ``bench/load.py`` prints it for two host
settings side by side.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devstack.acr import AcrEmulator, EmulatedRegistry
from devstack.acr.synthetic import SyntheticRuns
from devstack.acr.tasks import runs_of
from devstack.azurite import AzuriteProcess
from devstack.configs import GateYaml, Rule, Validation
from devstack.functions_queues import QueueHost, QueueSettings, wait_idle
from devstack.proxy import push_tiny_images

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "examples" / "seed" / "validation"
QUERIES = ROOT / "infra" / "queries"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class HostSetting:
    """One setting of the deployed app the scenario runs under (real-time values)."""

    label: str
    queues: QueueSettings
    maximum_instances: int
    worker_wait_seconds: float
    source: str


TODAY = HostSetting(
    label="today's",
    # host.json and infra/app/function.bicep at commit 9144bfb
    queues=QueueSettings(
        batch_size=4,
        new_batch_threshold=2,
        visibility_timeout=60.0,
        max_dequeue_count=5,
        max_polling_interval=5.0,
        function_timeout=30 * 60.0,
    ),
    maximum_instances=100,
    worker_wait_seconds=20.0,
    source="host.json and infra at commit 9144bfb",
)


def _bicep_default(path: Path, name: str) -> int | None:
    match = re.search(rf"^param {name} int = (\d+)", path.read_text(), re.MULTILINE)
    return int(match.group(1)) if match else None


def working_tree_setting(root: Path = ROOT) -> HostSetting:
    """The setting the working tree deploys: its host.json and its infra parameters' defaults."""
    instances = _bicep_default(root / "infra" / "app" / "function.bicep", "maximumInstanceCount")
    wait = _bicep_default(root / "infra" / "main.bicep", "workerWaitSeconds")
    return HostSetting(
        label="new",
        queues=QueueSettings.of_app(root),
        maximum_instances=instances if instances is not None else 100,
        worker_wait_seconds=float(wait if wait is not None else 20),
        source="the working tree's host.json and infra parameter defaults",
    )


@dataclass(frozen=True)
class Scenario:
    """The load: sizes in events and rules, durations in real seconds (scaled by ``factor``)."""

    events: int = 1000
    rules: int = 50
    duplicate_share: float = 0.2
    run_seconds: float = 480.0
    throttle_share: float = 0.1
    retry_after: int = 1
    factor: float = 0.05
    instances: int = 8
    watch_seconds: float = 15 * 60.0  # infra's GATE_WATCH_SCHEDULE: every 15 minutes
    lease_seconds: float = 60.0
    heartbeat_seconds: float = 10.0
    validation_timeout: float = 3 * 480.0
    timeout: float = 900.0  # wall seconds the scenario may take before it is cut off
    concurrent_runs: int | None = None  # runs the runner registry executes at once (None: any)
    seed: int = 25

    @property
    def tags_per_rule(self) -> int:
        """Images pushed per rule's repository (one tag each)."""
        distinct = self.events - round(self.events * self.duplicate_share)
        return max(1, round(distinct / self.rules))

    @property
    def digests(self) -> int:
        """Distinct (rule, digest) pairs; the other events are duplicates."""
        return min(self.events, self.rules * self.tags_per_rule)


@dataclass
class Figures:
    """What one run of the scenario measured."""

    setting: HostSetting
    scenario: Scenario
    instances: int
    states: Counter[str] = field(default_factory=Counter)
    validations: Counter[tuple[str, str]] = field(default_factory=Counter)
    imports: Counter[tuple[str, str]] = field(default_factory=Counter)
    poison_messages: int = 0
    poisoned_records: int = 0
    failed_records: int = 0
    failed_reasons: Counter[str] = field(default_factory=Counter)
    import_log: list[tuple[tuple[str, str], str, tuple[str, ...]]] = field(default_factory=list)
    warnings: Counter[str] = field(default_factory=Counter)  # the app's warning lines, by kind
    arm_calls: int = 0
    throttled: int = 0
    alert_poisoned: int = 0
    alert_rejected_or_failed: int = 0
    last_verdict: float | None = None
    run_spans: list[tuple[float, float]] = field(
        default_factory=list
    )  # (queued, ended) after start
    wall: float = 0.0
    deliveries: int = 0
    redeliveries: int = 0
    finished: bool = True
    pairs: set[tuple[str, str]] = field(default_factory=set)

    @property
    def pairs_validated_more_than_once(self) -> int:
        """(rule, digest) pairs with more than one validation run."""
        return sum(1 for n in self.validations.values() if n > 1)

    @property
    def pairs_imported_more_than_once(self) -> int:
        """(rule, digest) pairs promoted (run-ID import) more than once."""
        return sum(1 for n in self.imports.values() if n > 1)


# -- upstream content ------------------------------------------------------------------------


def push_event(
    upstream: EmulatedRegistry, repository: str, tag: str, digest: str, event_id: str
) -> dict[str, Any]:
    """An Event Grid ``ImagePushed`` event of the upstream ACR (the shape of
    tests/data/events/eventgrid-imagepushed.json)."""
    return {
        "id": event_id,
        "topic": upstream.resource_id,
        "subject": f"{repository}:{tag}",
        "eventType": "Microsoft.ContainerRegistry.ImagePushed",
        "eventTime": datetime.now(UTC).isoformat(),
        "data": {
            "id": event_id,
            "action": "push",
            "target": {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "repository": repository,
                "tag": tag,
            },
            "request": {"host": upstream.login_server, "method": "PUT"},
        },
        "dataVersion": "1.0",
    }


def burst(
    scenario: Scenario, upstream: EmulatedRegistry, digests: dict[tuple[str, str], str]
) -> list[dict[str, Any]]:
    """The events: one per image, and a duplicate of a random share of them soon after it."""
    rng = random.Random(scenario.seed)
    originals = [
        push_event(upstream, repo, tag, digest, f"push-{n}")
        for n, ((repo, tag), digest) in enumerate(sorted(digests.items()))
    ]
    rng.shuffle(originals)
    events: list[dict[str, Any]] = list(originals)
    again = rng.sample(range(len(originals)), scenario.events - len(originals))
    for index in sorted(again, reverse=True):
        # the same event again, within the next few deliveries
        events.insert(min(len(events), index + 1 + rng.randrange(12)), originals[index])
    return events


# -- the alerts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertConditions:
    """The two alert conditions, read from their queries' own text.

    infra/queries/alert-poisoned.kql: a trace starting with the ``dropped`` marker, or a
    ``GATE_DECISION`` line whose ``reason`` starts with ``poisoned:``.
    infra/queries/alert-rejected-or-failed.kql: a ``GATE_DECISION`` line with ``duplicate`` false
    and a ``verdict`` in its list.
    """

    dropped: str
    decision: str
    poisoned_reason: str
    verdicts: frozenset[str]

    @classmethod
    def read(cls, folder: Path = QUERIES) -> AlertConditions:
        """The markers as the two query files state them."""
        poisoned = (folder / "alert-poisoned.kql").read_text()
        failing = (folder / "alert-rejected-or-failed.kql").read_text()
        markers = re.findall(r'message startswith "([^"]*)"', poisoned)
        reason = re.search(r'tostring\(d\.reason\) startswith "([^"]*)"', poisoned)
        verdicts = re.search(r"tostring\(d\.verdict\) in \(([^)]*)\)", failing)
        if len(markers) != 2 or reason is None or verdicts is None:
            raise ValueError(
                f"the alert queries in {folder} no longer have the shape this evaluator reads; "
                "update devstack/load.py's AlertConditions with them"
            )
        return cls(
            dropped=markers[0],
            decision=markers[1],
            poisoned_reason=reason.group(1),
            verdicts=frozenset(re.findall(r'"([^"]*)"', verdicts.group(1))),
        )

    def rows(self, lines: list[str]) -> tuple[int, int]:
        """Rows of (alert-poisoned, alert-rejected-or-failed) over these log lines."""
        poisoned = failing = 0
        for line in lines:
            if line.startswith(self.dropped):
                poisoned += 1
                continue
            if not line.startswith(self.decision):
                continue
            decision = json.loads(line[len(self.decision) :])
            if str(decision.get("reason") or "").startswith(self.poisoned_reason):
                poisoned += 1
            if decision.get("duplicate") is False and decision.get("verdict") in self.verdicts:
                failing += 1
        return poisoned, failing


class _Capture(logging.Handler):
    """The app's audit and drop lines as Application Insights would receive them, timed."""

    def __init__(self, markers: tuple[str, ...]) -> None:
        super().__init__(logging.INFO)
        self.markers = markers
        self.lines: list[tuple[float, str]] = []
        self.warnings: Counter[str] = Counter()
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(self.markers):
            with self._guard:
                self.lines.append((time.monotonic(), message))
        elif record.levelno >= logging.WARNING:
            with self._guard:
                self.warnings[_shape(message)] += 1


def _shape(message: str) -> str:
    """A log line without its ids, digests and numbers: lines of one kind count together."""
    text = re.sub(r"sha256:[0-9a-f]{64}", "sha256:…", message)
    text = re.sub(r"\b[0-9a-f]{8}-[0-9a-f-]{27}\b|\b[0-9a-f]{32}\b", "…", text)
    text = re.sub(r"\d+", "N", text)
    return text[:400]


@contextmanager
def _captured(markers: tuple[str, ...]) -> Iterator[_Capture]:
    capture = _Capture(markers)
    root = logging.getLogger()
    level = root.level
    root.addHandler(capture)
    root.setLevel(logging.INFO)
    quiet = [logging.getLogger(n) for n in ("azure", "httpx", "httpcore", "urllib3")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.WARNING)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(level)
        for q, old in zip(quiet, levels, strict=True):
            q.setLevel(old)


# -- the scenario ------------------------------------------------------------------------------


class _Out:
    """A queue output binding (``func.Out``) that keeps what the function sets."""

    def __init__(self) -> None:
        self.value: Any = None

    def set(self, val: Any) -> None:
        self.value = val

    def get(self) -> Any:
        return self.value


def _gate_yaml(
    work: Path,
    scenario: Scenario,
    emulator: AcrEmulator,
    up: EmulatedRegistry,
    base: EmulatedRegistry,
    azurite: AzuriteProcess,
    runner: Any,
) -> Path:
    f = scenario.factor
    top = (
        "registries:",
        f'  - {{host: "{up.login_server}", resource_id: "{up.resource_id}"}}',
        "azure:",
        f'  subscription_id: "{emulator.subscription_id}"',
        f'  arm_endpoint: "{emulator.arm_endpoint}"',
        f'  registry: {{name: {base.name}, resource_group: {base.resource_group}, login_server: "{base.login_server}"}}',
        "  runner:",
        f"    name: {base.name}",
        f"    resource_group: {base.resource_group}",
        f'    login_server: "{base.login_server}"',
        f'    identity: {{resource_id: "{runner.resource_id}", client_id: "{runner.client_id}"}}',
        "  ledger:",
        f'    connection_string: "{azurite.connection_string}"',
        "    table: gateload",
        f"lease: {{seconds: {scenario.lease_seconds * f:g}, heartbeat: {scenario.heartbeat_seconds * f:g}}}",
    )
    rules = tuple(
        Rule(
            source=f"{up.login_server}/{_repository(n)}",
            target=f"{base.login_server}/{_repository(n)}",
            name=_repository(n),
            tags=("v*",),
            validation=Validation(SEED, timeout=max(1, round(scenario.validation_timeout * f))),
        )
        for n in range(scenario.rules)
    )
    return GateYaml(data_dir=work / "data", rules=rules, top=top).write(work)


def _repository(n: int) -> str:
    return f"repo{n:02d}"


def _pair(image: str) -> tuple[str, str]:
    """(repository, digest) of ``login/repo:tag@digest`` or ``repo@digest``."""
    name, _, digest = image.partition("@")
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        name = rest  # drop the registry host
    return name.split(":")[0], digest


def run_scenario(work: Path, scenario: Scenario, setting: HostSetting) -> Figures:
    """Run ``scenario`` under ``setting`` with processes rooted in ``work``; what it measured."""
    import azure.functions as func
    from azure.functions.timer import TimerRequest

    import function_app
    from gate.compose import LazyValidator, build_gatekeeper
    from gate.config.app_settings import POISON_QUEUE, QUEUE, STORAGE_CONNECTION
    from gate.domain.records import HistoryQuery
    from gate.usecases import queueing
    from gate.usecases.keeper import Gatekeeper

    f = scenario.factor
    queues = setting.queues.scaled(f)
    instances = max(1, min(scenario.instances, setting.maximum_instances))
    figures = Figures(setting=setting, scenario=scenario, instances=instances)
    conditions = AlertConditions.read()
    work.mkdir(parents=True, exist_ok=True)
    saved_env = dict(os.environ)
    saved_keeper = function_app.keeper
    with (
        AzuriteProcess(work / "azurite") as azurite,
        AcrEmulator(work / "emulator") as emulator,
    ):
        emulator.synthetic_runs = SyntheticRuns(seconds=scenario.run_seconds * f)
        up = emulator.add_registry("publicregistry", "public-rg", private=True)
        base = emulator.add_registry("baseartifacts", "base-rg")
        runner = emulator.add_identity("gate-runner", pull_from=(up,))
        pushed = push_tiny_images(
            up.backing.host,
            [_repository(n) for n in range(scenario.rules)],
            [f"v{n}" for n in range(scenario.tags_per_rule)],
        )
        digests = {
            (name.split(":")[0], name.split(":")[1]): digest for name, digest in pushed.items()
        }
        events = burst(scenario, up, digests)
        figures.pairs = {(repo, digest) for (repo, _), digest in digests.items()}
        config = _gate_yaml(work, scenario, emulator, up, base, azurite, runner)
        os.environ.update(
            {
                "GATE_CONFIG": str(config),
                "GATE_WORKER_WAIT_SECONDS": f"{setting.worker_wait_seconds * f:g}",
                STORAGE_CONNECTION: azurite.connection_string,
                "REQUESTS_CA_BUNDLE": str(emulator.ca_path),
                "SSL_CERT_FILE": str(emulator.ca_path),
            }
        )
        app_caches = (function_app.settings, function_app.config, function_app.request_queue)
        for cached in (*app_caches, function_app.keeper):
            cached.cache_clear()

        def scaled_keeper() -> Gatekeeper:
            # the app's keeper with the emulator's credential, and the validator polling at
            # the scaled interval (see the module docstring)
            import copy

            from gate.adapters.validation.acr_task_run import AcrTaskRunValidator

            built = build_gatekeeper(function_app.config(), credential=emulator.credential())
            assert isinstance(built.validator, LazyValidator)
            made = built.validator.port()
            assert isinstance(made, AcrTaskRunValidator)
            validator = copy.copy(made)
            validator.poll_initial = made.poll_initial * f
            validator.poll_max = made.poll_max * f
            validator.deadline_margin = made.deadline_margin * f
            validator.max_queue_wait = made.max_queue_wait * f
            return copy.replace(built, validator=validator)

        keeper_once = _once(scaled_keeper)
        function_app.keeper = keeper_once
        # ARM throttling: the emulator's knob (a share of ARM requests answered 429 with
        # Retry-After, as ARM throttles: learn.microsoft.com/azure/azure-resource-manager/
        # management/request-limits-and-throttling)
        emulator.throttle_fraction = scenario.throttle_share
        emulator.throttle_retry_after = scenario.retry_after
        emulator.throttle_seed = scenario.seed
        emulator.set_concurrent_runs(base.name, scenario.concurrent_runs)
        margin = queueing.PROMOTION_MARGIN_SECONDS
        queueing.PROMOTION_MARGIN_SECONDS = margin * f
        try:
            keeper = keeper_once()
            with _captured((conditions.dropped, conditions.decision)) as capture:
                worker_host = QueueHost(
                    azurite.connection_string,
                    QUEUE,
                    queues,
                    lambda m: function_app.gate_worker(_trigger_message(m)),
                    instances=instances,
                )
                poison_host = QueueHost(
                    azurite.connection_string,
                    POISON_QUEUE,
                    queues,
                    lambda m: function_app.gate_poison(_trigger_message(m)),
                    instances=1,
                    poison_queue=f"{POISON_QUEUE}-poison",
                )
                calls_before = len(emulator.calls)
                began = time.monotonic()
                began_at = datetime.now(UTC)
                worker_host.start()
                poison_host.start()
                stop_timer = threading.Event()

                def send(out: _Out) -> None:
                    values = out.value if isinstance(out.value, list) else [out.value]
                    for value in values:
                        if value:
                            worker_host.queue.send_message(value)

                def timer() -> None:
                    while not stop_timer.wait(scenario.watch_seconds * f):
                        out = _Out()
                        function_app.watch(TimerRequest(), out)
                        send(out)

                timer_thread = threading.Thread(target=timer, name="watch", daemon=True)
                timer_thread.start()

                def deliver(event: dict[str, Any]) -> None:
                    out = _Out()
                    function_app.on_push(
                        func.EventGridEvent(
                            id=event["id"],
                            data=event["data"],
                            topic=event["topic"],
                            subject=event["subject"],
                            event_type=event["eventType"],
                            event_time=datetime.now(UTC),
                            data_version=event["dataVersion"],
                        ),
                        out,
                    )
                    send(out)

                with ThreadPoolExecutor(4) as pool:
                    list(pool.map(deliver, events))
                left = scenario.timeout - (time.monotonic() - began)
                figures.finished = wait_idle([worker_host, poison_host], timeout=left)
                stop_timer.set()
                timer_thread.join()
                worker_host.stop()
                poison_host.stop()
                figures.wall = time.monotonic() - began
            lines = [line for _, line in capture.lines]
            figures.warnings = capture.warnings
            finals = [
                at
                for at, line in capture.lines
                if line.startswith(conditions.decision)
                and json.loads(line[len(conditions.decision) :]).get("duplicate") is False
            ]
            figures.last_verdict = (max(finals) - began) if finals else None
            figures.alert_poisoned, figures.alert_rejected_or_failed = conditions.rows(lines)
            figures.deliveries = worker_host.counts.deliveries
            figures.redeliveries = worker_host.counts.failures
            figures.poison_messages = worker_host.counts.poisoned
            records = keeper.ledger.history(HistoryQuery(limit=-1))
            figures.states = Counter(r.state.value for r in records)
            for record in records:
                if record.state.value == "failed":
                    figures.failed_records += 1
                    figures.failed_reasons[(record.reason or "")[:90]] += 1
                    if (record.reason or "").startswith("poisoned: "):
                        figures.poisoned_records += 1
            for run in runs_of(emulator, base.name):
                image = next(
                    (
                        v.get("value", "")
                        for v in run.body.get("values") or []
                        if v.get("name") == "IMAGE"
                    ),
                    "",
                )
                figures.validations[_pair(str(image))] += 1
                if run.finish_time is not None:
                    figures.run_spans.append(
                        (
                            (run.create_time - began_at).total_seconds(),
                            (run.finish_time - began_at).total_seconds(),
                        )
                    )
            for body in emulator.state.get("import_requests", []):
                figures.import_log.append(
                    (
                        _pair(str(body["source"]["sourceImage"])),
                        str(body.get("mode")),
                        tuple(body.get("targetTags") or ()),
                    )
                )
                if body.get("mode") == "NoForce":  # the run-ID tag's import: one per promotion
                    figures.imports[_pair(str(body["source"]["sourceImage"]))] += 1
            calls = [c for c in emulator.calls[calls_before:] if not c.name.startswith("blob")]
            figures.arm_calls = len(calls)
            figures.throttled = len(emulator.throttled_calls())
        finally:
            queueing.PROMOTION_MARGIN_SECONDS = margin
            function_app.keeper = saved_keeper
            for cached in (*app_caches, function_app.keeper):
                cached.cache_clear()
            os.environ.clear()
            os.environ.update(saved_env)
    return figures


def _trigger_message(message: Any) -> Any:
    """The ``func.QueueMessage`` the host hands the function for a fetched storage message."""
    from azure.functions.queue import QueueMessage

    made: Any = QueueMessage  # the library's constructor is untyped
    return made(
        id=message.id,
        body=message.content.encode(),
        dequeue_count=message.dequeue_count,
        pop_receipt=message.pop_receipt,
    )


def _once(build: Callable[[], Any]) -> Any:
    """``build`` called once (thread-safe), with ``cache_clear`` as functools.cache has."""
    from functools import cache

    return cache(build)
