"""The gate as Azure Functions (Python v2 programming model): a thin shell over ``gate``.

Triggers parse, check, enqueue and answer fast; the queue worker does the slow part. Heavy SDKs
are imported by the composition root only when the worker or the HTTP API first needs them, so
a cold start costs little more than importing ``azure.functions``.

    Event Grid ImagePushed ─► on_push ──┐
    timer (GATE_WATCH_SCHEDULE) ─► watch ┼─► queue gate-requests ─► gate_worker ─► ledger + audit
    POST /api/gate ─► 202 + Location ───┘                         └► gate-requests-poison ─► gate_poison
"""

from __future__ import annotations

import time
import typing
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import azure.functions as func

from gate.config.app_settings import POISON_QUEUE, QUEUE, STORAGE_CONNECTION, Settings
from gate.logsafe import get_logger, redact_library_logs

if TYPE_CHECKING:
    from gate.config.model import GateConfig
    from gate.entrypoints.http_api import ApiResponse
    from gate.entrypoints.principal import Principal
    from gate.ports import RequestQueue
    from gate.usecases.keeper import Gatekeeper

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
# library log lines (httpx's request URLs, azure-core's) lose their credentials before any
# handler of the host sees them: gate/logsafe.py
redact_library_logs()
# arguments from outside (event ids, names, messages) are escaped and capped: gate/logsafe.py
log = get_logger("gate.functions")
HERE = Path(__file__).resolve().parent


@cache
def settings() -> Settings:
    """App settings, read once per process."""
    return Settings.from_env(base=HERE)


@cache
def config() -> GateConfig:
    """The gate configuration (``GATE_CONFIG``), loaded once per process."""
    from gate.config.loading import load_config

    return load_config(settings().config_path)


@cache
def keeper() -> Gatekeeper:
    """The gate's adapters, built once per process (this is where Azure SDKs get imported)."""
    from gate.compose import build_gatekeeper

    _check_queue_budget()
    return build_gatekeeper(config())


def _check_queue_budget() -> None:
    """Say at start-up when host.json retries a failing request for less time than the
    configuration's longest validation takes (gate/usecases/queueing.py): a request would then
    reach the poison queue while its digest may still be validated."""
    import json

    from gate.errors import GateError
    from gate.usecases.queueing import budget_problem

    try:
        problem = budget_problem(json.loads((HERE / "host.json").read_text()), config())
    except (OSError, ValueError, GateError) as exc:
        problem = f"host.json could not be checked: {exc}"
    if problem:
        log.error("queue retry budget: %s", problem)


def _event_dict(event: func.EventGridEvent | func.CloudEvent) -> dict[str, Any]:
    """The trigger's event object back in its wire schema, for :func:`gate.entrypoints.events.parse_event`."""
    if isinstance(event, func.CloudEvent):
        return {
            "specversion": "1.0",
            "id": event.id,
            "source": event.source,
            "type": event.type,
            "subject": event.subject,
            "data": event.get_json(),
        }
    return {
        "id": event.id,
        "topic": event.topic,
        "subject": event.subject,
        "eventType": event.event_type,
        "data": event.get_json(),
    }


@app.function_name("on_push")
@app.event_grid_trigger(arg_name="event")
@app.queue_output(arg_name="requests", queue_name=QUEUE, connection=STORAGE_CONNECTION)
def on_push(event: func.EventGridEvent, requests: func.Out[str]) -> None:
    """An upstream push: queue a gate request if a rule watches it; else say why not."""
    from gate.entrypoints.events import Ignored, MalformedEvent, parse_event, triage

    try:
        decision = triage(config(), parse_event(_event_dict(event)))
    except MalformedEvent as exc:
        # a payload that cannot be read will not improve with retries: log it and drop it
        log.warning("dropped malformed event %s: %s", str(event.id)[:100], exc.message)
        return
    if isinstance(decision, Ignored):
        log.info("ignored event %s: %s", event.id, decision.reason)
        return
    requests.set(decision.to_json())
    log.info("queued event %s: %s", event.id, decision.image)


def _respond(response: ApiResponse) -> func.HttpResponse:
    return func.HttpResponse(
        response.text(),
        status_code=response.status,
        headers=dict(response.headers),
        mimetype="application/json",
    )


def _authorized(function: str, req: func.HttpRequest) -> Principal | func.HttpResponse:
    """The caller, if they may call ``function``; else the 401/403 answer (gate/entrypoints/principal.py).

    The client-principal header is trusted only with GATE_AUTH_MODE=entra: App Service
    authentication then sets it and drops any copy a client sent ("External requests aren't
    allowed to set these headers": learn.microsoft.com/azure/app-service/
    configure-authentication-user-identities). Without it (local ``func start``) the function
    key is the only check, and the actor is ``function-key``.
    """
    from gate.entrypoints.http_api import ApiResponse, authorize

    who = authorize(function, req.headers, entra=settings().entra)
    if isinstance(who, ApiResponse):
        # recorded: who was refused and why (the detail names no secret; logsafe escapes it)
        log.warning(
            "refused %s: %d %s: %s", function, who.status, who.body["error"], who.body["detail"]
        )
        return _respond(who)
    return who


def _too_large(req: func.HttpRequest) -> func.HttpResponse | None:
    from gate.entrypoints.http_api import error

    declared = req.headers.get("content-length", "0")
    limit = settings().max_body_bytes
    if declared.isdigit() and int(declared) > limit:
        return _respond(error(413, "too_large", f"the body is over the {limit}-byte limit"))
    return None


@app.function_name("post_gate")
@app.route(route="gate", methods=["POST"])
@app.queue_output(arg_name="requests", queue_name=QUEUE, connection=STORAGE_CONNECTION)
def post_gate(req: func.HttpRequest, requests: func.Out[str]) -> func.HttpResponse:
    """Re-gate an image by hand: 202 + Location of its record (or the decided record)."""
    from gate.entrypoints import http_api

    who = _authorized("post_gate", req)
    if isinstance(who, func.HttpResponse):
        return who
    refused = _too_large(req)
    if refused:
        return refused
    response, request = http_api.post_gate(
        keeper(),
        req.get_body(),
        max_body_bytes=settings().max_body_bytes,
        actor=who.name,
        actor_id=who.object_id,
    )
    if request is not None:
        requests.set(request.to_json())
    return _respond(response)


@app.function_name("get_gate")
@app.route(route="gate/{record_id}", methods=["GET"])
def get_gate(req: func.HttpRequest) -> func.HttpResponse:
    """One record: state, digest, run ID, log, reason, tags."""
    from gate.entrypoints import http_api

    who = _authorized("get_gate", req)
    if isinstance(who, func.HttpResponse):
        return who
    return _respond(http_api.get_gate(keeper(), req.route_params.get("record_id", "")))


@app.function_name("list_gates")
@app.route(route="gates", methods=["GET"])
def list_gates(req: func.HttpRequest) -> func.HttpResponse:
    """History, newest first, paged (``?actor=`` an object id or a name: who acted)."""
    from gate.entrypoints import http_api

    who = _authorized("list_gates", req)
    if isinstance(who, func.HttpResponse):
        return who
    return _respond(http_api.list_gates(keeper(), dict(req.params), page_size=settings().page_size))


@app.function_name("post_rollback")
@app.route(route="rollback", methods=["POST"])
def post_rollback(req: func.HttpRequest) -> func.HttpResponse:
    """Move a stable tag back to an earlier validated digest, recorded with who and why."""
    from gate.domain.records import GateRecord
    from gate.entrypoints import http_api
    from gate.usecases.keeper import GateOutcome

    who = _authorized("post_rollback", req)
    if isinstance(who, func.HttpResponse):
        return who
    refused = _too_large(req)
    if refused:
        return refused
    began = time.monotonic()
    response = http_api.post_rollback(
        keeper(),
        req.get_body(),
        max_body_bytes=settings().max_body_bytes,
        actor=who.name,
        actor_id=who.object_id,
    )
    if response.status == 200:
        # a rollback is a decision like a gate's: its GATE_DECISION line and outcome event
        _audit(GateOutcome(GateRecord.from_dict(response.body)), began)
    return _respond(response)


@app.function_name("watch")
@app.timer_trigger(arg_name="timer", schedule="%GATE_WATCH_SCHEDULE%")
@app.queue_output(arg_name="requests", queue_name=QUEUE, connection=STORAGE_CONNECTION)
def watch(timer: func.TimerRequest, requests: func.Out[typing.List[str]]) -> None:  # noqa: UP006
    # typing.List, not list: the worker (azure-functions-runtime 1.3, functions.py,
    # Registry.validate_function_params) accepts an Out[...] argument only if it is a class or a
    # typing generic; list[str] is neither, and it refuses to index the whole app
    # ("binding requests has invalid non-type annotation"). tests/e2e/test_functions_worker.py.
    """Poll upstreams without events (HEAD only) and queue digests not decided yet, and the
    digests whose cooldown ended (the worker promotes or supersedes them; nothing sleeps); and
    queue one re-validation per rule whose revalidate: schedule is due (the worker runs it)."""
    from gate.entrypoints.worker import poll, revalidations_due

    found, errors = poll(keeper())
    for problem in errors:
        log.warning("poll: %s", problem)
    from gate.usecases.audit import log_poll

    # one structured line per watched registry: the alert on a registry unreached for an hour
    log_poll((rule.source.registry for rule in config().rules), errors)
    # decided here, run by the worker: a pass of re-validations inline would outlast the
    # function's timeout, and a timed-out function writes none of its queued requests
    due, problems = revalidations_due(keeper())
    for problem in problems:
        log.warning("revalidate: %s", problem)
    if found or due:
        requests.set([request.to_json() for request in (*found, *due)])
    log.info(
        "poll: %d new digest(s) queued, %d error(s); %d re-validation(s) queued",
        len(found),
        len(errors),
        len(due),
    )


# NCRONTAB's six fields (second minute hour day month day-of-week): daily at 03:17 UTC
# (learn.microsoft.com/azure/azure-functions/functions-bindings-timer#ncrontab-expressions)
PRUNE_SCHEDULE = "0 17 3 * * *"


@app.function_name("prune")
@app.timer_trigger(arg_name="timer", schedule=PRUNE_SCHEDULE)
def prune(timer: func.TimerRequest) -> None:
    """Delete the records older than ledger.keep that no live stable or run-ID tag is behind."""
    from gate.usecases.retention import prune_records

    report = prune_records(keeper())
    for problem in report.errors:
        log.warning("retention: %s", problem)


def _audit(outcome: Any, began: float) -> None:
    from gate.usecases import audit

    audit.log_decision(
        outcome.record, duplicate=outcome.duplicate, duration=time.monotonic() - began
    )
    endpoint = settings().outcome_topic_endpoint
    event = audit.outcome_event(outcome.record)
    if endpoint and event and not outcome.duplicate:
        publisher(endpoint).publish(*event)


@cache
def publisher(endpoint: str) -> Any:
    """The outcome-event publisher (Event Grid custom topic), built on first use."""
    from azure.identity import DefaultAzureCredential

    from gate.adapters.outcomes import OutcomePublisher

    return OutcomePublisher(endpoint, DefaultAzureCredential())


@app.function_name("gate_worker")
@app.queue_trigger(arg_name="msg", queue_name=QUEUE, connection=STORAGE_CONNECTION)
def gate_worker(msg: func.QueueMessage) -> None:
    """Gate one queued request, idempotently; raising hands the message back to the queue.

    A request whose (rule, digest) another worker holds is put back with a delay and this
    delivery completes (gate/entrypoints/worker.py, handle): it never fails into the poison
    queue. A re-validation request re-validates its rule once.
    """
    from gate.entrypoints.messages import GateRequest, MalformedRequest
    from gate.entrypoints.worker import Postponed, Revalidation, handle, poisoned
    from gate.errors import GateError

    began = time.monotonic()
    try:
        request = GateRequest.from_json(msg.get_body())
    except MalformedRequest as exc:
        log.error("dropped malformed gate request %s: %s", msg.id, exc.message)
        return
    endpoint = settings().outcome_topic_endpoint
    try:
        outcome = handle(
            keeper(),
            request,
            queue=request_queue(),
            wait_seconds=settings().worker_wait_seconds,
            publish=publisher(endpoint).publish if endpoint else None,
        )
    except GateError as exc:
        if exc.retryable:
            log.warning("gate request %s will be retried: %s", msg.id, exc.message)
            raise
        if exc.recorded:
            # the use case recorded this failure itself (and wrote its audit line)
            log.error("gate request %s refused: %s (record %s)", msg.id, exc.message, exc.recorded)
            return
        # retrying cannot help (e.g. the rule is gone): record the refusal and drop the message
        try:
            record = poisoned(keeper(), request, exc.message)
        except GateError as unrecordable:  # e.g. a record id that does not exist
            log.error("dropped gate request %s: %s (%s)", msg.id, exc.message, unrecordable.message)
            return
        log.error("gate request %s refused: %s (record %s)", msg.id, exc.message, record.id)
        from gate.usecases import audit

        # the refusal is a decision: the poisoned-request alert reads its GATE_DECISION line
        audit.log_decision(record)
        return
    if isinstance(outcome, Postponed):
        # no decision yet: the holder's outcome will be the record (and its audit line)
        if outcome.requeued is not None:
            log.info(
                "gate request %s put back for %.0f s (%d time(s)): record %s is %s by another "
                "worker",
                msg.id,
                outcome.delay_seconds,
                outcome.requeued.postponed,
                outcome.holder.id,
                outcome.holder.state,
            )
        return
    if isinstance(outcome, Revalidation):
        for problem in outcome.errors:
            log.warning("revalidate: %s", problem)
        if outcome.skipped:
            log.info("revalidate %s: %s", outcome.rule, outcome.skipped)
        return
    _audit(outcome, began)


@cache
def request_queue() -> RequestQueue:
    """The worker's own way onto ``gate-requests`` (to put a request back with a delay), on the
    storage the bindings use (``AzureWebJobsStorage``), built on first use."""
    from gate.compose import build_request_queue

    return build_request_queue()


@app.function_name("gate_poison")
@app.queue_trigger(arg_name="msg", queue_name=POISON_QUEUE, connection=STORAGE_CONNECTION)
def gate_poison(msg: func.QueueMessage) -> None:
    """A request the queue gave up on: record it as failed, with why."""
    from gate.entrypoints.messages import GateRequest, MalformedRequest
    from gate.entrypoints.worker import poisoned

    try:
        request = GateRequest.from_json(msg.get_body())
    except MalformedRequest as exc:
        log.error("dropped malformed poisoned message %s: %s", msg.id, exc.message)
        return
    record = poisoned(keeper(), request, "the worker failed on every delivery (see its log lines)")
    from gate.usecases import audit

    audit.log_decision(record)
