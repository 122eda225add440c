"""Ledger port adapters: SQLite (local) and Azure Table Storage."""
