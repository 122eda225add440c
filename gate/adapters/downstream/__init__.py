"""Downstream runner port adapters: local task files and ACR tasks."""
