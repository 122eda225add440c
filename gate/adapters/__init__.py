"""Adapters: implementations of the ports in :mod:`gate.ports` (OCI registry, local validator,
SQLite ledger, secrets)."""
