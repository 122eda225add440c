"""Rollback: move a target's stable tag back to a digest the gate promoted earlier, and record
who and why."""

from __future__ import annotations

from gate.config.model import Rule
from gate.domain.records import GateRecord, HistoryQuery, State, new_record_id
from gate.domain.ref import ImageRef, parse_digest
from gate.domain.signatures import signature_tag
from gate.errors import Conflict, GateError, NotFound, UsageError
from gate.logsafe import get_logger
from gate.usecases.keeper import Gatekeeper, as_ref

# the logger name is what log queries select by; it stays the one from before the split
_log = get_logger("gate.service")


def rollback(
    keeper: Gatekeeper,
    target: str | ImageRef,
    *,
    reason: str,
    to: str | None = None,
    actor: str | None = None,
    actor_id: str = "",
) -> GateRecord:
    """Move a target's stable tag back to an earlier promoted digest, and record who and why.

    ``target`` is the target repository, with the stable tag when its rule has several.
    ``to`` is a run ID or digest of an earlier promotion; without it, the promotion before the
    one the stable tag points at now. Only digests the gate promoted (so validated) qualify.
    """
    if not reason.strip():
        raise UsageError("a rollback needs a reason (--reason 'why'); it goes into the record")
    ref = as_ref(target)
    repo = ImageRef(ref.registry, ref.repository)
    rules = keeper.config.rules_for_target(repo)
    if not rules:
        raise NotFound(f"no rule promotes into '{repo}'; check the repository name")
    promotions = [
        r
        for r in keeper.ledger.history(
            HistoryQuery(target=repo.name, state=State.PROMOTED, limit=1000)
        )
        if r.action == "gate" and r.digest
    ]
    stable = _stable_tag(ref, rules, promotions)
    promotions = [r for r in promotions if stable in r.target_tags[1:]]
    if not promotions:
        raise NotFound(
            f"the gate never promoted anything to {repo.name}:{stable}; nothing to roll back to"
        )
    current = keeper.registry.resolve(repo.with_tag(stable))
    chosen = _rollback_target(promotions, current, to)
    if chosen.digest == current:
        raise Conflict(f"{repo.name}:{stable} already points at {current}; nothing to do")
    record = move_back_record(
        repo,
        current,
        chosen,
        stable,
        action="rollback",
        rule=chosen.rule,
        trigger="rollback",
        actor=actor,
        actor_id=actor_id,
    )
    record = move_stable_tag(
        keeper,
        repo,
        record,
        current=current,
        state=State.ROLLED_BACK,
        why=f"rolled back: {reason.strip()}",
        reason=f"{reason.strip()} ({repo.name}:{stable} {current} -> {chosen.digest}, "
        f"promoted by record {chosen.id}, run {chosen.run_id})",
    )
    keeper.ledger.add(record)
    keeper.notify("rolled-back", record, record.reason)
    return record


def move_back_record(
    repo: ImageRef,
    current: str,
    chosen: GateRecord,
    stable: str,
    *,
    action: str,
    rule: str,
    trigger: str,
    actor: str | None,
    actor_id: str = "",
    of_record: str = "",
) -> GateRecord:
    """The new record of moving ``repo:stable`` from ``current`` back to the digest ``chosen``
    promoted: a rollback (``action``, who asked) or a demotion (``of_record``: the failing
    re-validation)."""
    assert chosen.digest is not None
    return GateRecord(
        id=new_record_id(),
        action=action,
        rule=rule,
        source=f"{repo.name}@{current}",
        digest=chosen.digest,
        target=repo.name,
        trigger=trigger,
        state=State.RECEIVED,
        run_id=chosen.run_id,
        target_tags=(stable,),
        actor=actor,
        actor_id=actor_id,
        of_record=of_record,
    )


def move_stable_tag(
    keeper: Gatekeeper,
    repo: ImageRef,
    record: GateRecord,
    *,
    current: str,
    state: State,
    why: str,
    reason: str,
) -> GateRecord:
    """Move ``repo``'s stable tag (``record.target_tags[0]``) from ``current`` back to
    ``record.digest``, attesting first that ``current`` is no longer the verdict; returns
    ``record`` advanced to ``state`` (a rollback or a demotion), for the caller to store.

    ``why`` goes into the attestation ("rolled back: …", "demoted by re-validation: …"), and
    ``reason`` into the record, followed by what became of the attestation and, with a
    signatory, of the gate's signatures (``current``'s removed, ``record.digest`` signed). A
    rollback or demotion is an emergency measure: a failure to attest does not stop it, but it is logged and
    said in the record. Only the stable tag moves; the run-ID tags of both digests stay where
    they are.
    """
    assert record.digest is not None
    (stable,) = record.target_tags
    attested, said = "", ""
    if keeper.attestor is not None:
        image = repo.with_digest(current)
        try:
            attested = keeper.attestor.demotion(image, record, why)
            said = f"; demotion attestation {attested}"
        except GateError as exc:
            _log.warning(
                "record %s: the demotion of %s was not attested: %s", record.id, image, exc.message
            )
            said = f"; the demotion of {current} could NOT be attested: {exc.message}"
    said += _move_signature(keeper, repo, record, current)
    keeper.registry.copy(repo.with_digest(record.digest).pinned(), repo, tags=(stable,))
    return record.advance(state, attestation=attested, reason=reason + said)


def _move_signature(keeper: Gatekeeper, repo: ImageRef, record: GateRecord, current: str) -> str:
    """Remove the gate's signature of ``current`` and sign ``record.digest`` (the digest the
    stable tag moves to), so that "signed by the gate" stays "currently approved"; what became of
    each, for the record. Like the demotion attestation, neither failure stops the move: each is
    logged and said in the record."""
    if keeper.signatory is None:
        return ""
    assert record.digest is not None
    said = ""
    try:
        said += f"; signature of {current}: {keeper.signatory.unsign(repo.with_digest(current))}"
    except GateError as exc:
        _log.warning(
            "record %s: the gate's signature of %s@%s was NOT removed: %s",
            record.id,
            repo.name,
            current,
            exc.message,
        )
        said += (
            f"; the gate's signature of {current} could NOT be removed (it still verifies as "
            f"approved; remove the gate's layer from {repo.name}:{signature_tag(current)} by "
            f"hand): {exc.message}"
        )
    try:
        said += (
            f"; {record.digest}: {keeper.signatory.sign(repo.with_digest(record.digest), record)}"
        )
    except GateError as exc:
        _log.warning(
            "record %s: %s@%s was NOT signed: %s", record.id, repo.name, record.digest, exc.message
        )
        said += f"; {record.digest} could NOT be signed: {exc.message}"
    return said


def _stable_tag(ref: ImageRef, rules: list[Rule], promotions: list[GateRecord]) -> str:
    if ref.tag:
        return ref.tag
    stable_tags = {r.target_tags[1] for r in promotions if len(r.target_tags) > 1}
    if len(stable_tags) == 1:
        return stable_tags.pop()
    if not stable_tags:
        raise NotFound(f"the gate never promoted anything to {ref.name}; nothing to roll back to")
    raise UsageError(
        f"{ref.name} has several stable tags ({', '.join(sorted(stable_tags))}); "
        f"name one, e.g. {ref.name}:{sorted(stable_tags)[0]}"
    )


def _rollback_target(promotions: list[GateRecord], current: str, to: str | None) -> GateRecord:
    """Pick the promotion to roll back to (``promotions`` newest first)."""
    if to:
        if ":" in to:
            digest = parse_digest(to)
            found = [r for r in promotions if r.digest == digest]
        else:
            found = [r for r in promotions if r.run_id == to]
        if not found:
            raise Conflict(
                f"'{to}' was never promoted here by the gate, so it was never validated; "
                "roll back to a run ID or digest from 'gate history --state promoted'"
            )
        return found[0]
    # step back from where the stable tag is now, so repeated rollbacks keep going back
    digests = [r.digest for r in promotions]
    start = digests.index(current) + 1 if current in digests else 0
    for candidate in promotions[start:]:
        if candidate.digest != current:
            return candidate
    raise NotFound(f"no promotion older than {current} to roll back to; name one with --to")
