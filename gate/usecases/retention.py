"""Record retention: the ledger forgets old final records, never the ones behind a live tag.

``ledger.keep`` (default 400 days) bounds how long a final record is kept. A record is still
"behind" a tag when the tag it wrote is in the target repository now, pointing where the record
put it:

* a promotion's run-ID tag (``target_tags[0]``): run-ID tags are never moved, so its presence
  is enough (one tag listing per repository, no request per record);
* a promotion's stable tag, or the stable tag a rollback or demotion moved: the tag must
  resolve to the record's digest now (one request per (repository, stable tag)).

Such records are kept whatever their age: they are the evidence for what applications build on.
When a repository's tags cannot be read, every record of it is kept and the pass says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from gate.domain.records import GateRecord
from gate.domain.ref import ImageRef
from gate.errors import GateError
from gate.logsafe import get_logger
from gate.usecases.keeper import Gatekeeper

log = get_logger("gate.retention")


@dataclass(frozen=True)
class PruneReport:
    """What a retention pass did: the cutoff, records deleted, old ones kept for a live tag."""

    cutoff: datetime | None
    deleted: int = 0
    kept_live: int = 0
    errors: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """The ``gate prune --json`` object."""
        return {
            "cutoff": self.cutoff.isoformat() if self.cutoff else None,
            "deleted": self.deleted,
            "kept_live": self.kept_live,
            "errors": list(self.errors),
        }


@dataclass
class _LiveTags:
    """The target repositories' tags as they are now, read once per repository and tag."""

    keeper: Gatekeeper
    tags: dict[str, frozenset[str] | None] = field(default_factory=dict)
    digests: dict[tuple[str, str], str | None] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def listed(self, target: str) -> frozenset[str] | None:
        """The tags of ``target`` now; None when they cannot be read (keep its records)."""
        if target not in self.tags:
            try:
                self.tags[target] = frozenset(
                    self.keeper.registry.list_tags(ImageRef.parse(target))
                )
            except GateError as exc:
                self.tags[target] = None
                self.errors.append(f"{target}: {exc.message}; its records were all kept")
        return self.tags[target]

    def digest(self, target: str, tag: str) -> str | None:
        """What ``target:tag`` points at now; None when it cannot be told."""
        key = (target, tag)
        if key not in self.digests:
            try:
                self.digests[key] = self.keeper.registry.resolve(
                    ImageRef.parse(target).with_tag(tag)
                )
            except GateError as exc:
                self.digests[key] = None
                self.errors.append(f"{target}:{tag}: {exc.message}; its records were kept")
        return self.digests[key]

    def behind(self, record: GateRecord) -> bool:
        """True when a tag the record wrote is still where the record put it (or unknown)."""
        if not record.digest or not record.target_tags:
            return False
        tags = self.listed(record.target)
        if tags is None:
            return True
        if (
            record.action == "gate"
            and len(record.target_tags) > 1
            and record.target_tags[0] in tags
        ):
            return True  # its run-ID tag: immutable, so present means it is still this digest
        stable = record.target_tags[-1]
        if stable not in tags:
            return False
        now = self.digest(record.target, stable)
        return now is None or now == record.digest


def prune_records(keeper: Gatekeeper, *, now: datetime | None = None) -> PruneReport:
    """Delete the final records older than ``ledger.keep`` that no live tag is behind."""
    keep_seconds = keeper.config.retention.keep_seconds
    if keep_seconds is None:
        return PruneReport(cutoff=None)
    cutoff = (now or keeper.clock()) - timedelta(seconds=keep_seconds)
    live = _LiveTags(keeper)
    for rule in keeper.config.rules:  # read the configured targets before the ledger locks
        live.listed(rule.target.name)
    kept: list[str] = []

    def keep(record: GateRecord) -> bool:
        if live.behind(record):
            kept.append(record.id)
            return True
        return False

    deleted = keeper.ledger.prune(created_before=cutoff, keep=keep)
    report = PruneReport(cutoff, deleted=deleted, kept_live=len(kept), errors=tuple(live.errors))
    log.info(
        "retention: %d record(s) created before %s deleted, %d kept behind live tags, %d error(s)",
        report.deleted,
        cutoff.isoformat(),
        report.kept_live,
        len(report.errors),
    )
    return report
