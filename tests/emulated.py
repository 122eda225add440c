"""What tests of the gate's Azure adapters need around the emulator (devstack.acr)."""

from __future__ import annotations

from devstack.acr import AcrEmulator
from gate.adapters.registry.oci import HostSettings


def oci_hosts(emulator: AcrEmulator) -> dict[str, HostSettings]:
    """The gate's ``HostSettings`` for every backing registry of ``emulator`` (plain HTTP)."""
    return {host: HostSettings(insecure=True) for host in emulator.backing_hosts}
