"""Validation: the push preflight, the request a validator runs, and per-platform runs of an
image index folded into one verdict."""

from __future__ import annotations

from collections.abc import Callable
from copy import replace

from gate.config.model import Rule
from gate.domain.records import GateRecord, Outcome, PlatformResult, State, ValidationResult
from gate.domain.ref import ImageRef
from gate.errors import GateError, NotFound, UsageError
from gate.ports import Resume, ValidationRequest
from gate.usecases.keeper import Gatekeeper


def preflight(keeper: Gatekeeper, rule: Rule, record: GateRecord) -> None:
    """Check that the target takes the promotion before anything is validated.

    Refused credentials are a configuration error (exit 2), not a verdict: the record ends
    failed with the registry's words and the error is raised, so no validation runs for an
    image that could not be promoted. The candidate's pull was checked already: its digest was
    resolved (or checked) with the configured credentials.
    """
    try:
        keeper.registry.check_push(rule.target)
    except GateError as exc:
        failed = record.advance(
            State.FAILED,
            reason=f"not validated: the push check on {rule.target.name} failed: {exc.message}",
        )
        keeper.ledger.save(failed)
        keeper.notify("failed", failed, failed.reason)
        raise


def validation_request(
    keeper: Gatekeeper, rule: Rule, source: ImageRef, record: GateRecord
) -> ValidationRequest:
    """What the validator runs for ``record``: the rule's task on ``source`` (pinned), with the
    rule's values, its secrets read now, and the record's id as the run's key."""
    pinned = source.pinned()
    values = {
        **rule.validation.values,
        "IMAGE": str(pinned),
        "REGISTRY_FROM_URL": f"{pinned.registry}/",
        "SOURCE_TAG": source.tag or "",
        "SOURCE_DIGEST": source.digest or "",
    }
    secret_names = frozenset(rule.validation.secret_values)
    for name, secret in rule.validation.secret_values.items():
        values[name] = keeper.secrets.get(secret)
    return ValidationRequest(
        image=pinned,
        folder=rule.validation.folder,
        task_file=rule.validation.task,
        values=values,
        secret_values=secret_names,
        timeout_seconds=rule.validation.timeout_seconds,
        run_registry=rule.target.registry,
        # the record's id and which worker this is: an ACR run started by an earlier worker
        # that died before recording it is found again by this name
        key=record.id,
        attempt=max(record.attempts, 1),
        # downstream task files run on this machine build on the promoted candidate; with a
        # cooldown the promotion (and so its downstream runs) comes later, in another pass
        hand_over=0 if rule.cooldown_seconds else sum(task.local for task in rule.downstream),
    )


def validate_platforms(
    keeper: Gatekeeper,
    rule: Rule,
    image: ImageRef,
    record: GateRecord,
    resume: Resume | None,
    *,
    save: Callable[[GateRecord], None] | None,
) -> tuple[ValidationResult, GateRecord]:
    """Validate ``image`` (pinned) once per platform of the rule, each on its own manifest.

    The image's index gives each platform's child digest (:func:`gate.domain.platforms.
    select_platforms`); a platform it lacks rejects the image before anything runs. Each run
    is recorded in ``record.platforms`` as it starts and ends (``save`` writes it), so a
    resumed record follows the runs an earlier worker started and runs again only what did
    not pass. One verdict comes back: rejected if any platform was, else failed if any could
    not run, else passed; the run ID is the first platform's (the run-ID tag names it).
    """
    from gate.domain.platforms import select_platforms

    reader = keeper.manifests
    if reader is None:
        raise UsageError(
            f"rule '{rule.name}' lists platforms, but this gate's registry adapter cannot read "
            "image indexes to find each platform's manifest; remove platforms from the rule, "
            "or use a registry adapter that reads manifests (the OCI and ACR adapters do)"
        )
    pinned = image.pinned()
    digest = pinned.digest or ""
    fetched = reader.fetch_manifest(pinned, digest)
    if fetched is None:
        raise NotFound(
            f"{pinned} is gone from its registry, so its platforms cannot be read; gate the "
            "tag's current digest"
        )
    chosen = select_platforms(
        fetched[0],
        fetched[1],
        digest,
        rule.platforms,
        lambda blob: reader.fetch_blob(pinned, blob),
    )
    if isinstance(chosen, str):
        return ValidationResult(Outcome.REJECTED, "", f"not validated: {chosen}"), record
    earlier = {p.platform: p for p in record.platforms}
    results: dict[str, PlatformResult] = {}
    for manifest in chosen:
        name = str(manifest.platform)
        kept = earlier.get(name)
        # an earlier attempt's result stands only for the same child manifest
        if kept is None or kept.digest != manifest.digest:
            kept = PlatformResult(name, manifest.digest)
        results[name] = kept

    def keep(changed: PlatformResult, **changes: object) -> None:
        nonlocal record
        results[changed.platform] = changed
        record = record.advance(record.state, platforms=tuple(results.values()), **changes)
        if save is not None:
            save(record)

    keep(next(iter(results.values())))
    logs: list[str] = []
    for manifest in chosen:
        name = str(manifest.platform)
        current = results[name]
        if current.verdict == Outcome.PASSED.value:
            logs.append(
                f"===== platform {name} ({current.digest}): passed in run "
                f"{current.run_id}, an earlier attempt ====="
            )
            continue
        child = pinned.with_digest(manifest.digest)
        base = validation_request(keeper, rule, image, record)
        request = replace(
            base,
            image=child,
            values={**base.values, "IMAGE": str(child), "SOURCE_DIGEST": manifest.digest},
            platform=name,
            hand_over=0,  # a downstream run builds on the promoted index, not on a child
            # one run name per platform: a resumed record finds each platform's run again
            key=f"{record.id}-{name.replace('/', '-')}" if base.key else "",
        )
        platform_resume = None
        if resume is not None:
            running = current.run_id if not current.verdict else None
            platform_resume = Resume(run_id=running, since=resume.since)

        def started(run_id: str, name: str = name) -> None:
            keep(replace(results[name], run_id=run_id), run_id=record.run_id or run_id)
            keeper.notify("run-started", record, f"run {run_id} on {name}")

        keeper.notify("validating", record, f"{child} on {name}")
        result = keeper.validator.validate(request, started, platform_resume)
        keep(
            replace(
                results[name],
                verdict=result.outcome.value,
                run_id=result.run_id,
                reason=result.reason,
                log_location=result.log_location,
            )
        )
        logs.append(
            f"===== platform {name} ({manifest.digest}, found as {manifest.found}): run "
            f"{result.run_id} {result.outcome.value} =====\n{result.log}"
        )
    return _platform_verdict(list(results.values()), "\n".join(logs)), record


def _platform_verdict(results: list[PlatformResult], log: str) -> ValidationResult:
    """One verdict of per-platform runs: rejected over failed over passed, naming platforms."""

    def said(verdict: Outcome) -> list[PlatformResult]:
        return [r for r in results if r.verdict == verdict.value]

    passed = [f"{r.platform} (run {r.run_id})" for r in said(Outcome.PASSED)]
    tail = f"; passed: {', '.join(passed)}" if passed else ""
    first = results[0]
    location = next((r.log_location for r in results if r.log_location), None)
    if rejected := said(Outcome.REJECTED):
        why = "; ".join(f"{r.platform} (run {r.run_id}): {r.reason}" for r in rejected)
        outcome, reason = Outcome.REJECTED, f"rejected on {why}{tail}"
    elif failed := said(Outcome.FAILED):
        why = "; ".join(f"{r.platform} (run {r.run_id}): {r.reason}" for r in failed)
        outcome, reason = Outcome.FAILED, f"could not validate on {why}{tail}"
    else:
        outcome, reason = Outcome.PASSED, f"every platform passed: {', '.join(passed)}"
    return ValidationResult(outcome, first.run_id or "", reason, log, location)
