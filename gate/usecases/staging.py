"""Staging: the candidate's blobs copied into the target while it is validated.

As soon as the digest is pinned, a background thread copies the blobs a promotion would copy
(layers and configs, every platform's for an index) into the target repository, checked by
digest as a copy checks them. No manifest and no tag is written, so nothing of the candidate
is visible in the target before its verdict. After a pass the staging is joined before the
promotion starts (one copy of each blob: the promotion finds them there and writes only the
manifests and tags); after a rejection it is stopped and the blobs it uploaded are deleted
where the registry allows it, or left unreferenced for the registry's garbage collection.

The staging stops when the record's lease is lost, as a promotion's copy does, and a staging
that fails only costs time: the promotion copies what is missing, as it always did.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable

from gate.config.model import Rule
from gate.domain.records import GateRecord, HistoryQuery, LeaseLost
from gate.domain.ref import ImageRef
from gate.errors import GateError
from gate.logsafe import get_logger
from gate.ports import BlobStager, CopyReport, Unstaged
from gate.usecases.keeper import Gatekeeper

# the logger name is what log queries select by: the gate's own
_log = get_logger("gate.service")

CANCEL_WAIT_SECONDS = 60.0
"""How long a stopped staging may take to end (it stops at its next MiB or request); one that
takes longer is left to end on its own, and its blobs to the registry's garbage collection."""
_NEIGHBOURS = 50
STAGING_NICE = 10
"""The staging thread's nice value (higher is gentler): the validation comes first."""


class StagingStopped(GateError):
    """A staging was stopped because the candidate will not be promoted (internal)."""


class Staging:
    """One candidate's blobs on their way into the target, in a background thread.

    :meth:`keep` waits for it (before the promotion); :meth:`discard` stops it and removes what
    it uploaded. Either ends it; neither raises.
    """

    def __init__(
        self,
        stager: BlobStager,
        source: ImageRef,
        target: ImageRef,
        lease_check: Callable[[], None] | None,
    ) -> None:
        self._stager = stager
        self.source = source
        self.target = target
        self._lease_check = lease_check
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._uploaded: list[str] = []
        self.report: CopyReport | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._work, name=f"staging-{(source.digest or '')[7:19]}", daemon=True
        )

    @property
    def uploaded(self) -> tuple[str, ...]:
        """The blobs this staging wrote that were not in the target before, so far."""
        with self._lock:
            return tuple(self._uploaded)

    def start(self) -> Staging:
        self._thread.start()
        return self

    def _added(self, digest: str) -> None:
        with self._lock:
            self._uploaded.append(digest)

    def _progress(self, what: str, done: int, total: int) -> None:
        if self._stop.is_set():
            raise StagingStopped(f"staging of {self.source} stopped: it will not be promoted")
        if self._lease_check is not None:
            self._lease_check()

    def _work(self) -> None:
        _yield_cpu()
        try:
            self.report = self._stager.stage(
                self.source, self.target, progress=self._progress, on_uploaded=self._added
            )
        except BaseException as exc:  # kept for keep()/discard(): a thread has no caller
            self.error = exc

    def keep(self) -> None:
        """Wait for the staging to end, before the promotion copies (never at the same time).

        The wait is the copy's own: every request of it is bounded by the registry client's
        timeouts and retries. A staging that failed is logged; the promotion copies as usual.
        """
        self._thread.join()
        if self.error is not None and not isinstance(self.error, LeaseLost):
            cause = self.error.message if isinstance(self.error, GateError) else repr(self.error)
            _log.warning(
                "staging %s into %s failed (%s); the promotion copies what is missing",
                self.source,
                self.target.name,
                cause,
            )

    def discard(self, ledger_check: Callable[[], bool]) -> Unstaged:
        """Stop the staging and delete the blobs it uploaded, where the registry allows it.

        ``ledger_check()`` says whether deleting is safe: another gate of the same target in
        progress may have found these blobs there and be about to reference them, so then they
        are left for the registry's garbage collection (which removes only what no manifest
        references).
        """
        self._stop.set()
        self._thread.join(CANCEL_WAIT_SECONDS)
        uploaded = self.uploaded
        if not uploaded:
            return Unstaged()
        if self._thread.is_alive():
            return Unstaged(left=len(uploaded), note="the staging did not stop in time")
        try:
            alone = ledger_check()
        except GateError as exc:
            return Unstaged(left=len(uploaded), note=f"the ledger could not tell: {exc.message}")
        if not alone:
            return Unstaged(
                left=len(uploaded), note=f"another gate of {self.target.name} is in progress"
            )
        return self._stager.unstage(self.target, uploaded)


def _yield_cpu() -> None:
    """Lower this thread's CPU priority: the staging is background work beside a validation
    that is on the critical path (on a machine of few cores, both hash the same bytes).

    Linux keeps a nice value per thread (setpriority(2), NOTES: "under the current Linux/NPTL
    implementation of POSIX threads, the nice value is a per-thread attribute"), so
    ``setpriority(PRIO_PROCESS, <thread id>, ...)`` lowers this thread alone. Where that is
    not so or not allowed, the staging simply runs at the process's priority.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), STAGING_NICE)


def start_staging(
    keeper: Gatekeeper,
    rule: Rule,
    source: ImageRef,
    lease_check: Callable[[], None] | None,
) -> Staging | None:
    """Start staging ``source`` (pinned) into the rule's target; None without a stager."""
    if keeper.stager is None or source.digest is None:
        return None
    return Staging(keeper.stager, source.pinned(), rule.target, lease_check).start()


def discard_staging(
    keeper: Gatekeeper, staging: Staging | None, record: GateRecord, why: str
) -> None:
    """Stop ``staging`` for a candidate that will not be promoted, and say what was left."""
    if staging is None:
        return
    target = staging.target.name

    def alone() -> bool:
        page = keeper.ledger.history(HistoryQuery(target=target, limit=_NEIGHBOURS))
        return not any(r.id != record.id and not r.state.final for r in page)

    done = staging.discard(alone)
    if done.deleted or done.left:
        keeper.notify(
            "unstaged",
            record,
            f"{why}: {done.deleted} staged blob(s) deleted from {target}"
            + (
                f", {done.left} left for the registry's garbage collection ({done.note})"
                if done.left
                else ""
            ),
        )
