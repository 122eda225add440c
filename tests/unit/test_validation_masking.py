"""The secret masking both validators apply to their logs, reasons and error messages.

Each validator's own tests check that a request's secret values never reach its log or reason.
"""

from __future__ import annotations

from gate.adapters.validation.masking import ANSI, MASK, Masker


def test_every_secret_is_replaced_by_the_mask() -> None:
    mask = Masker(["hunter2", "tok-123"])

    assert mask("user hunter2 sent tok-123 and tok-123") == f"user {MASK} sent {MASK} and {MASK}"
    assert MASK == "***"


def test_a_secret_inside_a_longer_one_does_not_leave_the_rest_behind() -> None:
    # masked shortest first, "abc" would turn "abcdef" into "***def" and leak its end
    mask = Masker(["abc", "abcdef"])

    assert mask("abcdef abc") == "*** ***"


def test_empty_and_repeated_values_are_ignored() -> None:
    mask = Masker(["", "x1", "x1"])

    assert mask("ax1b") == "a***b"
    assert Masker([])("nothing to hide") == "nothing to hide"
    assert Masker([""])("abc") == "abc"


def test_the_masker_takes_a_one_shot_iterable() -> None:
    # the validators pass a generator over the request's secret values
    mask = Masker(value for value in ("one", "two"))

    assert mask("one two") == "*** ***"
    assert mask("two one") == "*** ***"


def test_ansi_codes_are_recognised() -> None:
    coloured = "\x1b[31mred\x1b[0m \x1b[1;32mbold green\x1b[m \x1b[2K\x1bMplain"

    assert ANSI.sub("", coloured) == "red bold green plain"
