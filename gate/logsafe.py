"""Log lines that outside input cannot forge or flood.

Event ids, repository names, actions, media types, rollback reasons and error messages that
quote them come from outside the gate. Written raw, a newline in an event id starts a second,
forged log line, and a 100 KB id fills the log. Every logger of the gate therefore carries
:class:`CleanArgs`, which escapes and length-caps each argument of a log call (the format
string is ours), and the audit fields are cleaned the same way before they become JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # logging is imported by get_logger: clean() alone (the CLI's) does not need it
    import logging

DEFAULT_LIMIT = 300
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def clean(value: object, limit: int = DEFAULT_LIMIT) -> str:
    """``value`` as text on one line: unprintable characters escaped, at most ``limit`` long.

    Escaped are control characters, line and paragraph separators and other characters that are
    not printable (``str.isprintable``), so the text can neither break a line nor move a
    terminal's cursor; a cut says how much was left out.
    """
    text = value if isinstance(value, str) else str(value)
    if not text.isprintable():
        text = "".join(
            char
            if char.isprintable()
            else _ESCAPES.get(char)
            or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")
            for char in text
        )
    if len(text) > limit:
        text = f"{text[:limit]}…(+{len(text) - limit} chars)"
    return text


def _cleaned(arg: Any) -> Any:
    # numbers keep their type so "%d" and "%.1f" still format them
    if isinstance(arg, bool | int | float) or arg is None:
        return arg
    return clean(arg)


class CleanArgs:
    """Cleans every argument of a log record with :func:`clean` (the format string is trusted).

    A filter need not subclass ``logging.Filter``: an object with a ``filter`` method is one
    (Python docs, logging, "Filter Objects").
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, Mapping):
            record.args = {key: _cleaned(value) for key, value in args.items()}
        elif args:
            record.args = tuple(_cleaned(arg) for arg in args)
        return True


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with :class:`CleanArgs` attached (once)."""
    import logging

    logger = logging.getLogger(name)
    if not any(isinstance(f, CleanArgs) for f in logger.filters):
        logger.addFilter(CleanArgs())
    return logger
