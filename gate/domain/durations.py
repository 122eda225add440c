"""Durations as people write them (``30m``, ``6h``, ``2d``): one parser and one formatter.

Three places read a duration, and each accepts a different form on purpose, so the form is a
parameter rather than the union of all three:

* :data:`CONFIG` is what the configuration file accepts (``cooldown``, ``revalidate.every``,
  ``ledger.keep``); its :attr:`DurationForm.pattern` is also the JSON Schema's pattern.
* :data:`SPAN` is ``gate history --since``'s span back from now; what it refuses is read as
  an instant instead, so it must not accept seconds or blanks.
* :data:`AGE` is ``gate verify --max-age``: blanks allowed, weeks allowed, zero refused.
"""

import re
from functools import cached_property

import msgspec

from gate.errors import UsageError

UNITS: dict[str, int] = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
"""Seconds in one of each unit a duration may end with."""


class DurationError(UsageError):
    """Text that is not a duration of the form asked for; the message says what is."""


class DurationForm(msgspec.Struct, frozen=True, kw_only=True, dict=True):
    """Which durations a reader accepts: its units, how many digits, blanks, zero."""

    units: str
    """The unit letters accepted, each a key of :data:`UNITS`."""
    max_digits: int | None
    """At most this many ASCII digits; None: any number of decimal digits (``\\d``)."""
    blanks: bool = False
    """Blanks allowed around the number and the unit."""
    positive: bool = False
    """Zero refused."""

    @cached_property
    def pattern(self) -> str:
        """The regular expression a whole duration of this form matches (the JSON Schema's)."""
        digits = r"\d+" if self.max_digits is None else f"[0-9]{{1,{self.max_digits}}}"
        if self.blanks:
            return rf"^\s*{digits}\s*([{self.units}])\s*$"
        return f"^{digits}({'|'.join(self.units)})$"

    @cached_property
    def regex(self) -> re.Pattern[str]:
        """:attr:`pattern`, compiled."""
        return re.compile(self.pattern)


CONFIG = DurationForm(units="smhd", max_digits=9)
SPAN = DurationForm(units="mhd", max_digits=7)
AGE = DurationForm(units="smhdw", max_digits=None, blanks=True, positive=True)


def parse_duration(text: str, form: DurationForm = CONFIG) -> int:
    """Seconds in ``text`` (``6h`` is 21600); :class:`DurationError` unless it fits ``form``."""
    # fullmatch: "$" alone would also accept a trailing newline
    match = form.regex.fullmatch(text)
    # the unit is the pattern's one group; the number is what precedes it, blanks aside
    number = int(text[: match.start(1)]) if match else 0
    if match is None or (form.positive and number <= 0):
        wanted = "a positive number" if form.positive else "a number"
        raise DurationError(
            f"'{text}' is not a duration; write {wanted} and a unit "
            f"({', '.join(form.units)}), e.g. 30m, 6h, 2d"
        )
    return number * UNITS[match[1]]


def format_duration(seconds: float) -> str:
    """``seconds`` in the largest unit that divides it: 21600 is ``6h``, 90 is ``90s``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
