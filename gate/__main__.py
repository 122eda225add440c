"""``python -m gate``: the same as the ``gate`` console script."""

from gate.entrypoints.cli import main

main()
