"""What every section of the configuration shares: field types, the refusal, path and value hooks.

:data:`Text` and :data:`Duration` are the field types the sections annotate with; :class:`Refusal`
is what a struct's ``__post_init__`` raises (the decoder reports it at the struct's path);
:class:`Section` is the base of every mapping in the file. :func:`relative_to` / :func:`resolve`
make relative paths relative to the file being checked; :func:`duration_seconds` and
:func:`https_url` check a field's value and refuse it at its key.
"""

# no ``from __future__ import annotations``: msgspec reads these classes' annotations on the
# first check, and text annotations would have it compile each one then (a third of the check)
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated

import msgspec

from gate.domain.durations import CONFIG, DurationError, parse_duration
from gate.errors import ConfigError

Text = Annotated[str, msgspec.Meta(min_length=1)]
DURATION_PATTERN = CONFIG.pattern
Duration = Annotated[
    str,
    msgspec.Meta(
        pattern=DURATION_PATTERN,
        description="A duration: a whole number and a unit, s, m, h or d (e.g. 30m, 6h, 2d).",
        examples=["30m", "6h", "2d"],
    ),
]


_FOLDER: ContextVar[Path | None] = ContextVar("gate_config_folder", default=None)


@contextmanager
def relative_to(folder: Path) -> Iterator[None]:
    """Within: relative paths in the file being checked are relative to ``folder`` (its own)."""
    token = _FOLDER.set(folder)
    try:
        yield
    finally:
        _FOLDER.reset(token)


def resolve(text: str) -> Path:
    """``text`` as an absolute path, relative to the configuration file's folder (else cwd)."""
    return ((_FOLDER.get() or Path()) / Path(text).expanduser()).resolve()


def duration_seconds(text: str, key: str) -> int:
    """Seconds in a :data:`Duration` field; its pattern lets a trailing newline through."""
    try:
        return parse_duration(text, CONFIG)
    except DurationError as exc:
        raise Refusal(exc.message, key) from None


def https_url(text: str, key: str, *within: str) -> str:
    """``text`` without a trailing ``/``; a :class:`Refusal` at ``key`` unless it is an https:// URL."""
    if not text.startswith("https://"):
        raise Refusal(f"'{text}' must be an https:// URL", *within, key)
    return text.rstrip("/")


def doc(text: str) -> msgspec.Meta:
    """A field's JSON Schema description."""
    return msgspec.Meta(description=text)


class Refusal(ConfigError, ValueError):
    """A problem a ``__post_init__`` finds: its message, and the keys below the struct it is in.

    While a file is decoded, msgspec reports it (a ValueError) as a
    :class:`msgspec.ValidationError` at the struct's path, with this exception as its cause; the
    loader reads both to say where. A struct built in code raises it as it is.
    """

    def __init__(self, message: str, *at: str | int) -> None:
        super().__init__(message)
        self.at = at


class Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base of every mapping in the file: unknown keys are errors, not silently ignored."""
