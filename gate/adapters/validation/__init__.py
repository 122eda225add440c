"""Validator port adapters: ACR task files (parsed once, for both), the local runner
(podman/docker) and ACR task runs (Azure)."""
