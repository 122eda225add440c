"""The gatekeeper: the ports and configuration every use case takes, and what a gate request
ends in.

The invariants the use cases keep:

* the digest is resolved once; the digest validated is the digest promoted;
* one validation and one promotion per (rule, digest), however often it is asked for, unless
  forced (the ledger's claim decides, atomically);
* the run-ID tag is written (never overwritten) before the stable tag moves, and the stable tag
  only ever moves to a digest that passed validation;
* every decision, including failures, ends in a record;
* downstream tasks start only after a promotion, and what happens to them never undoes it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from gate.config.model import GateConfig
from gate.domain.records import GateRecord, State, utcnow
from gate.domain.ref import ImageRef
from gate.logsafe import get_logger
from gate.ports import (
    Attester,
    BlobStager,
    DownstreamRunner,
    Ledger,
    ManifestReader,
    PollingRegistry,
    PromotionSigner,
    Registry,
    Secrets,
    SignatureStore,
    Validator,
)

# the logger name is what log queries select by; it stays the one from before the split
_log = get_logger("gate.service")


Notify = Callable[[str, GateRecord, str], None]
"""``notify(event, record, message)``: progress for whoever watches (CLI output, logs)."""


def quiet(event: str, record: GateRecord, message: str) -> None:
    """The default observer: says nothing."""


@dataclass
class PollMemory:
    """What one process's poll passes hand on: tags a pass did not reach, registries paused.

    Kept with the :class:`Gatekeeper` (``gate watch`` and a warm Functions host build it once
    per process). ``pending`` holds ``(rule, tag reference)`` pairs, polled first next pass;
    ``paused`` maps a registry to (wall-clock time its pause ends, why).
    """

    pending: list[tuple[str, str]] = field(default_factory=list)
    paused: dict[str, tuple[float, str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> str:
        """The carry-over as JSON, for a host that keeps it between processes."""
        import json

        with self.lock:
            return json.dumps(
                {
                    "pending": [list(p) for p in self.pending],
                    "paused": {r: list(p) for r, p in self.paused.items()},
                },
                sort_keys=True,
            )

    def restore(self, text: str) -> None:
        """Take over a :meth:`snapshot`; one that does not parse is ignored with a warning (the
        carry-over only orders the next pass and spares paused registries)."""
        import json

        try:
            body = json.loads(text)
            pending = [(str(rule), str(ref)) for rule, ref in body["pending"]]
            paused = {str(r): (float(u), str(w)) for r, (u, w) in body["paused"].items()}
        except (ValueError, TypeError, KeyError, AttributeError):
            _log.warning("poll carry-over ignored: it is not a snapshot this version wrote")
            return
        with self.lock:
            self.pending = pending
            self.paused = paused


@dataclass(frozen=True)
class Gatekeeper:
    """The gate's ports and configuration, bundled for the use cases.

    ``manifests`` and ``polling`` are the registry's optional capabilities, given explicitly by
    whoever builds the gatekeeper (usually the registry adapter itself, when it has them):
    without ``manifests`` a rule with ``platforms:`` cannot be validated; without ``polling`` a
    poll pass asks ``registry`` one request at a time; without ``stager`` nothing reaches the
    target before the verdict (see :mod:`gate.usecases.staging`).
    """

    config: GateConfig
    registry: Registry
    validator: Validator
    ledger: Ledger
    secrets: Secrets
    notify: Notify = field(default=quiet)
    downstream: DownstreamRunner | None = None
    attestor: Attester | None = None
    signatures: SignatureStore | None = None
    # the gate's own signature of what it currently approves (attestation.signature_key)
    signatory: PromotionSigner | None = None
    poll_memory: PollMemory = field(default_factory=PollMemory, compare=False)
    # the clock cooldowns are measured by (first sightings, eligible times); a seam for tests
    clock: Callable[[], datetime] = field(default=utcnow)
    manifests: ManifestReader | None = None
    polling: PollingRegistry | None = None
    # copies the candidate's blobs into the target while it is validated (registries the gate
    # copies into itself; None: promotion copies everything, as with ACR import)
    stager: BlobStager | None = None


@dataclass(frozen=True)
class GateOutcome:
    """What a gate request ended in: the deciding record, and whether it was decided before."""

    record: GateRecord
    duplicate: bool = False

    @property
    def verdict(self) -> str:
        """``promoted``, ``rejected`` or ``failed`` (or an in-progress state when not waiting)."""
        return self.record.state.value

    @property
    def exit_code(self) -> int:
        """0 promoted, 1 rejected or superseded, 3 failed or still in progress or waiting out a
        cooldown (worth asking again)."""
        return {State.PROMOTED: 0, State.REJECTED: 1, State.SUPERSEDED: 1}.get(self.record.state, 3)

    def to_dict(self) -> dict[str, object]:
        """The ``gate run --json`` object."""
        r = self.record
        return {
            "verdict": self.verdict,
            "duplicate": self.duplicate,
            "rule": r.rule,
            "source": r.source,
            "digest": r.digest,
            "target": r.target,
            "target_tags": list(r.target_tags),
            "run_id": r.run_id,
            "record_id": r.id,
            "reason": r.reason,
            "downstream": [d.to_dict() for d in r.downstream],
            "eligible_at": r.eligible_at.isoformat() if r.eligible_at else None,
        }


def as_ref(image: str | ImageRef) -> ImageRef:
    """``image`` as an :class:`ImageRef` (parsed when it is text)."""
    return image if isinstance(image, ImageRef) else ImageRef.parse(image)
