"""Secret masking of validation logs and reasons, shared by the local and the ACR validator.

Both validators replace every secret value of a request (``ValidationRequest.secret_values``)
by :data:`MASK` in the log, the reason and their error messages, and strip terminal colour
codes (:data:`ANSI`) from the lines they quote in a reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"
"""What a secret value is replaced by."""

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
"""ANSI escape sequences (colours, cursor moves) a step's output may carry."""


class Masker:
    """Replaces secret values by ``***``, longest first (a secret inside another goes too).

    Empty values are ignored: replacing '' would put a mask between every character.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text


__all__ = ["ANSI", "MASK", "Masker"]
