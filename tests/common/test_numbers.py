"""Whole numbers from client-controlled text: ASCII digits only, bounded length, never an exception."""

from __future__ import annotations

import pytest

from common.numbers import ascii_decimal


@pytest.mark.parametrize(("text", "expected"), [("0", 0), ("42", 42), ("007", 7), ("9" * 18, int("9" * 18))])
def test_ascii_digits_are_read(text: str, expected: int) -> None:
    assert ascii_decimal(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\u00b2",  # superscript two: str.isdigit() is true, int() refuses it
        "\uff11\uff12",  # fullwidth 12: int() reads it, a header must not
        "\u0661",  # Arabic-Indic one
        "1 ",
        "-1",
        "+1",
        "1e3",
        "9" * 19,  # past max_digits
        "0" * 5000 + "65",  # int() refuses more than 4,300 digits
    ],
)
def test_anything_else_is_none(text: str) -> None:
    assert ascii_decimal(text) is None


def test_max_digits_bounds_the_length() -> None:
    assert ascii_decimal("1234567890", max_digits=9) is None
    assert ascii_decimal("123456789", max_digits=9) == 123456789
