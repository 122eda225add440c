"""The HTTP API's behaviour, free of any Functions types: JSON in, status and JSON out.

Errors are ``{"error": <kind>, "detail": <what to do>}`` with 400 (malformed), 401 (no caller:
App Service authentication is on and named nobody), 403 (the caller lacks the app role the route
needs), 404 (unknown), 409 (contradicts the current state), 413 (too big), 422 (well-formed but no
rule watches it) and 503 (a dependency is down: retry).

Who calls is decided before anything else (:func:`authorize`): a refused call reads and changes
nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gate.config.app_settings import EntraTrust
from gate.domain.records import GateRecord, HistoryQuery, State, parse_instant
from gate.entrypoints.messages import GateRequest
from gate.entrypoints.principal import (
    FUNCTION_KEY,
    PRINCIPAL_HEADER,
    Principal,
    PrincipalError,
    decode_principal,
    missing_role,
)
from gate.errors import (
    Conflict,
    GateError,
    InfrastructureError,
    InvalidReference,
    ManifestUnknown,
    NoMatchingRule,
    NotFound,
    UsageError,
)
from gate.usecases.gating import admit
from gate.usecases.keeper import Gatekeeper
from gate.usecases.rollback import rollback

_LIMIT = re.compile(r"[0-9]{1,4}")

LOG_TAIL_BYTES = 8192


@dataclass(frozen=True)
class ApiResponse:
    """A status, a JSON body and headers."""

    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def text(self) -> str:
        """The body as JSON text."""
        return json.dumps(self.body)


def error(status: int, kind: str, detail: str) -> ApiResponse:
    """An error response in the API's one shape."""
    return ApiResponse(status, {"error": kind, "detail": detail})


def from_gate_error(exc: GateError) -> ApiResponse:
    """Map the gate's exception tree onto statuses."""
    if isinstance(exc, NoMatchingRule):
        return error(422, "no_matching_rule", exc.message)
    if isinstance(exc, InvalidReference):
        # well-formed JSON whose image or digest does not parse: unprocessable, not malformed
        return error(422, "invalid_reference", exc.message)
    if isinstance(exc, ManifestUnknown | NotFound):
        return error(404, "not_found", exc.message)
    if isinstance(exc, Conflict):
        return error(409, "conflict", exc.message)
    if isinstance(exc, InfrastructureError) and exc.retryable:
        return error(503, "unavailable", exc.message)
    return error(400, "bad_request", exc.message)


def caller(headers: Mapping[str, str], *, entra: EntraTrust | None) -> Principal | ApiResponse:
    """Who calls: the platform's client principal when ``entra`` is set (App Service
    authentication is on; the principal must be of its tenant and audience), else the function
    key the host checked.

    Without authentication a client-sent principal header is ignored: nothing but the platform
    vouches for it then, so it must neither name the actor nor grant a role.
    """
    if entra is None:
        return FUNCTION_KEY
    header = next((v for k, v in headers.items() if k.lower() == PRINCIPAL_HEADER), "")
    if not header:
        return error(
            401,
            "unauthenticated",
            "no authenticated caller; call with 'Authorization: Bearer <token>', a token from "
            "'az account get-access-token --resource <the gate's application ID URI>'",
        )
    try:
        return decode_principal(header, entra)
    except PrincipalError as exc:
        return error(401, "unauthenticated", exc.message)


def authorize(
    function: str, headers: Mapping[str, str], *, entra: EntraTrust | None
) -> Principal | ApiResponse:
    """The caller of ``function`` if they may call it; else the 401 or 403 to answer."""
    who = caller(headers, entra=entra)
    if isinstance(who, ApiResponse):
        return who
    why = missing_role(function, who)
    return error(403, "forbidden", why) if why else who


def _body(raw: bytes, max_bytes: int, allowed: set[str]) -> dict[str, Any] | ApiResponse:
    if len(raw) > max_bytes:
        return error(413, "too_large", f"the body is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        return error(400, "bad_json", "the body must be a JSON object")
    except RecursionError:  # a small body can nest deeper than the parser's stack
        return error(400, "bad_json", "the body nests too deeply; send a flat JSON object")
    if not isinstance(body, dict):
        return error(400, "bad_json", "the body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        return error(
            400,
            "bad_request",
            f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}",
        )
    return body


def record_view(record: GateRecord, *, with_log: bool = False) -> dict[str, Any]:
    """A record as the API shows it (the validation log's tail on request)."""
    view = record.to_dict()
    if with_log:
        view["log_tail"] = record.log[-LOG_TAIL_BYTES:]
    return view


def post_gate(
    keeper: Gatekeeper,
    raw: bytes,
    *,
    max_body_bytes: int,
    actor: str | None = None,
    actor_id: str = "",
) -> tuple[ApiResponse, GateRequest | None]:
    """``POST /api/gate``: admit an image; returns the answer and the request to queue, if any.

    The admitted record names ``actor`` (display name) and ``actor_id`` (Entra object id); the
    queued request carries its record id, so the worker gates that record, caller and all.
    """
    body = _body(raw, max_body_bytes, {"image", "force"})
    if isinstance(body, ApiResponse):
        return body, None
    image, force = body.get("image"), body.get("force", False)
    if not isinstance(image, str) or not image:
        return error(400, "bad_request", "'image' must be a reference, e.g. 'node:15-alpine'"), None
    if not isinstance(force, bool):
        return error(400, "bad_request", "'force' must be true or false"), None
    try:
        outcome = admit(keeper, image, trigger="http", force=force, actor=actor, actor_id=actor_id)
    except GateError as exc:
        return from_gate_error(exc), None
    record = outcome.record
    location = {"Location": f"/api/gate/{record.id}"}
    if outcome.duplicate:
        status = 200 if record.state.final else 202
        return ApiResponse(status, {**record_view(record), "duplicate": True}, location), None
    return ApiResponse(202, record_view(record), location), GateRequest(
        record_id=record.id, trigger="http", force=force
    )


def get_gate(keeper: Gatekeeper, record_id: str) -> ApiResponse:
    """``GET /api/gate/{record_id}``: one record, with the tail of its validation log."""
    try:
        return ApiResponse(200, record_view(keeper.ledger.get(record_id), with_log=True))
    except GateError as exc:
        return from_gate_error(exc)


def _time(value: str, name: str) -> datetime | ApiResponse:
    try:
        return parse_instant(value, f"'{name}'")
    except UsageError as exc:
        return error(400, "bad_request", exc.message)


def list_gates(keeper: Gatekeeper, query: Mapping[str, str], *, page_size: int) -> ApiResponse:
    """``GET /api/gates?repository=&state=&since=&before=&limit=&rule=&actor=``: newest first,
    paged; ``actor`` is an Entra object id or a name exactly as recorded."""
    known = {"repository", "state", "since", "before", "limit", "rule", "actor"}
    unknown = sorted(set(query) - known)
    if unknown:
        return error(400, "bad_request", f"unknown parameter(s) {', '.join(unknown)}")
    state = query.get("state")
    if state is not None and state not in {s.value for s in State}:
        return error(
            400, "bad_request", f"'state' must be one of {', '.join(s.value for s in State)}"
        )
    limit_text = query.get("limit", str(page_size))
    # ASCII digits only: str.isdigit() also accepts '²', which int() refuses
    if not _LIMIT.fullmatch(limit_text) or not 1 <= int(limit_text) <= 500:
        return error(400, "bad_request", "'limit' must be a number from 1 to 500")
    times: dict[str, datetime | None] = {"since": None, "before": None}
    for name in times:
        if query.get(name):
            parsed = _time(query[name], name)
            if isinstance(parsed, ApiResponse):
                return parsed
            times[name] = parsed
    limit = int(limit_text)
    try:
        records = keeper.ledger.history(
            HistoryQuery(
                rule=query.get("rule") or None,
                target=query.get("repository") or None,
                state=State(state) if state else None,
                since=times["since"],
                before=times["before"],
                actor=query.get("actor") or None,
                limit=limit,
            )
        )
    except GateError as exc:
        return from_gate_error(exc)
    body: dict[str, Any] = {"records": [record_view(r) for r in records]}
    if len(records) == limit:
        params = {k: v for k, v in query.items() if k != "before"}
        params["before"] = records[-1].created_at.isoformat()
        body["next"] = "/api/gates?" + "&".join(f"{k}={_quote(v)}" for k, v in params.items())
    return ApiResponse(200, body)


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def post_rollback(
    keeper: Gatekeeper,
    raw: bytes,
    *,
    max_body_bytes: int,
    actor: str | None,
    actor_id: str = "",
) -> ApiResponse:
    """``POST /api/rollback``: move a stable tag back, recorded with who and why.

    ``actor`` is who the caller authenticated as (the function app passes the client
    principal's name and ``actor_id`` its Entra object id, else ``function-key``); it is
    recorded as given, or as ``http:anonymous`` when nobody is named: never empty.
    """
    who = actor.strip() if actor and actor.strip() else "http:anonymous"
    body = _body(raw, max_body_bytes, {"repository", "to", "reason"})
    if isinstance(body, ApiResponse):
        return body
    repository, to, reason = body.get("repository"), body.get("to"), body.get("reason")
    if not isinstance(repository, str) or not repository:
        return error(
            400,
            "bad_request",
            "'repository' must name the target repository, e.g. 'base.azurecr.io/node'",
        )
    if to is not None and not isinstance(to, str):
        return error(400, "bad_request", "'to' must be a run ID or a digest")
    if not isinstance(reason, str) or not reason.strip():
        return error(400, "bad_request", "'reason' is required: say why, it goes into the record")
    try:
        record = rollback(keeper, repository, to=to, reason=reason, actor=who, actor_id=actor_id)
    except GateError as exc:
        return from_gate_error(exc)
    return ApiResponse(200, record_view(record))
