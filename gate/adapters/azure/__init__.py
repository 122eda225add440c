"""Azure adapters of the gate's ports (each module imports its SDK; this package imports nothing)."""
