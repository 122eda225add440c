"""An in-process emulator of the Azure services the gate uses, for tests and benchmarks (never
shipped). It imports no ``gate`` module: the registry copy (:mod:`devstack.acr.oci`) and the
task runner (:mod:`devstack.acr.runner`) are its own, so a gate bug cannot pass through it.

ARM (ACR import, quick runs, task runs with user-assigned identities), the ACR data plane and
Key Vault, served over HTTPS on loopback with a test CA, backed by real ``docker-registry``
processes; see :mod:`devstack.acr.core`. Persistent tasks, their base-image triggers and
the data-plane pushes that fire them: :mod:`devstack.acr.downstream`. Load: ARM throttling
(``AcrEmulator.throttle_every`` / ``throttle_fraction``, 429 with ``Retry-After``) and a
per-registry limit of runs executing at once (``AcrEmulator.set_concurrent_runs``; the others
stay ``Queued``), both settable from Python while the emulator runs; and synthetic runs
(``AcrEmulator.synthetic_runs``, :mod:`devstack.acr.synthetic`): Running for a set time, then
Succeeded, without podman.
"""

from devstack.acr.core import (
    AcrEmulator,
    BlobStore,
    Call,
    EmulatedIdentity,
    EmulatedRegistry,
    Faults,
    Request,
    Response,
    Router,
    TestCredential,
    arm_error,
)

__all__ = [
    "AcrEmulator",
    "BlobStore",
    "Call",
    "EmulatedIdentity",
    "EmulatedRegistry",
    "Faults",
    "Request",
    "Response",
    "Router",
    "TestCredential",
    "arm_error",
]
