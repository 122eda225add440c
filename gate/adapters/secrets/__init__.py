"""Secrets port adapters: local environment/files and Key Vault."""
