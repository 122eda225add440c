"""Durations: one parser whose form each reader chooses, and one formatter."""

import pytest

from gate.domain.attestation import parse_age
from gate.domain.durations import (
    AGE,
    CONFIG,
    SPAN,
    DurationError,
    format_duration,
    parse_duration,
)
from gate.errors import GateError, UsageError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("45s", 45), ("30m", 1800), ("6h", 21600), ("2d", 172800), ("0s", 0), ("400d", 34560000)],
)
def test_the_configuration_form_reads_a_number_and_a_unit(text: str, seconds: int) -> None:
    assert parse_duration(text, CONFIG) == seconds
    assert parse_duration(text) == seconds  # the configuration's form is the default


@pytest.mark.parametrize(
    "text",
    ["6", "h", "6 h", " 6h", "6h ", "6h\n", "2w", "6H", "-6h", "1.5h", "1234567890s", "٣d", ""],
)
def test_the_configuration_form_refuses_blanks_weeks_and_other_text(text: str) -> None:
    with pytest.raises(DurationError, match="is not a duration; write a number and a unit"):
        parse_duration(text, CONFIG)


def test_the_configuration_form_takes_nine_digits() -> None:
    assert parse_duration("999999999s", CONFIG) == 999999999


def test_the_configuration_pattern_is_the_json_schemas() -> None:
    # schema/gate.schema.json holds this text; a change here is a change of the file format
    assert CONFIG.pattern == "^[0-9]{1,9}(s|m|h|d)$"


@pytest.mark.parametrize(
    ("text", "seconds"), [("30m", 1800), ("12h", 43200), ("7d", 604800), ("0d", 0)]
)
def test_a_history_span_takes_minutes_hours_and_days(text: str, seconds: int) -> None:
    assert parse_duration(text, SPAN) == seconds


@pytest.mark.parametrize("text", ["45s", "2w", "12345678d", " 7d", "7 d", "2026-01-01"])
def test_a_history_span_refuses_seconds_weeks_blanks_and_instants(text: str) -> None:
    # what a span refuses, gate history --since reads as an instant
    with pytest.raises(DurationError):
        parse_duration(text, SPAN)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("45s", 45),
        ("90m", 5400),
        ("12h", 43200),
        ("30d", 2592000),
        ("2w", 1209600),
        (" 2 w ", 1209600),
    ],
)
def test_an_age_takes_weeks_and_blanks(text: str, seconds: int) -> None:
    assert parse_duration(text, AGE) == seconds


@pytest.mark.parametrize("text", ["0d", "00h", "d", "2y", "-1d", "1.5d"])
def test_an_age_must_be_positive(text: str) -> None:
    with pytest.raises(DurationError, match="write a positive number and a unit"):
        parse_duration(text, AGE)


def test_parse_age_keeps_its_message() -> None:
    assert parse_age("2w").days == 14
    with pytest.raises(UsageError, match=r"'0d' is not an age; write a positive number and a unit"):
        parse_age("0d")


def test_a_duration_error_is_a_usage_error_of_the_gate() -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration("soon")
    assert isinstance(caught.value, UsageError)
    assert isinstance(caught.value, GateError)
    assert "(s, m, h, d)" in str(caught.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (21600, "6h"),
        (86400.0, "1d"),
        (172800, "2d"),
        (5400, "90m"),
        (90, "90s"),
        (3600 + 1, "3601s"),
        (0, "0s"),
        (0.5, "0.5s"),
        (59, "59s"),
    ],
)
def test_the_formatter_picks_the_largest_unit_that_divides(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text", ["45s", "30m", "6h", "2d", "90m", "400d"])
def test_a_formatted_duration_reads_back(text: str) -> None:
    seconds = parse_duration(text)
    assert parse_duration(format_duration(seconds)) == seconds
