"""Leases: how long a claimed record stays its worker's, and the heartbeat that renews it."""

from __future__ import annotations

import threading
from datetime import timedelta

from gate.domain.records import GateRecord, LeaseLost, utcnow
from gate.errors import GateError
from gate.logsafe import get_logger
from gate.ports import ProgressCallback
from gate.usecases.keeper import Gatekeeper

# the logger name is what log queries select by; it stays the one from before the split
_log = get_logger("gate.service")


def lease_seconds(keeper: Gatekeeper) -> float:
    """Seconds a lease lasts past its last renewal: a silent holder is taken over after that."""
    return keeper.config.lease.seconds


class Heartbeat:
    """Renews a record's lease from a background thread while its holder works on it.

    Every ``lease.heartbeat`` seconds the lease is pushed ``lease.seconds`` past now. A refused
    renewal means another worker took the record over: :meth:`watch` then stops a copy in
    flight, and the holder's next save is refused by the ledger anyway (:class:`LeaseLost`).
    A renewal that fails for a ledger outage is tried again on the next beat.
    """

    def __init__(self, keeper: Gatekeeper, record: GateRecord) -> None:
        self._ledger = keeper.ledger
        self._record = record
        self._lease = keeper.config.lease
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{record.id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        if self._record.lease_holder:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _beat(self) -> None:
        record = self._record
        while not self._stop.wait(self._lease.heartbeat_seconds):
            until = utcnow() + timedelta(seconds=self._lease.seconds)
            try:
                held = self._ledger.renew(record.id, record.lease_holder, until)
            except GateError as exc:
                _log.warning("record %s: renewing its lease failed: %s", record.id, exc.message)
                continue
            if not held:
                if not self._stop.is_set():
                    self.lost.set()
                return

    def check(self) -> None:
        """Raise :class:`LeaseLost` once another worker has taken the record over."""
        if self.lost.is_set():
            raise LeaseLost(
                f"record {self._record.id} was taken over by another worker after its lease "
                "lapsed; this worker stops and leaves the verdict to it"
            )

    def watch(self, progress: ProgressCallback | None) -> ProgressCallback:
        """``progress``, checking the lease on every report (a copy stops once it is lost)."""

        def report(what: str, done: int, total: int) -> None:
            self.check()
            if progress is not None:
                progress(what, done, total)

        return report
