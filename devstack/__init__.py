"""Development and test tooling: local registries, daemonless image builds, podman setup.

Not part of the shipped ``gate`` package; used by the tests, the benchmarks and the demo.
"""
