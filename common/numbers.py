"""Whole numbers read from text a client controls (headers, metadata)."""

from __future__ import annotations


def ascii_decimal(text: str, *, max_digits: int = 18) -> int | None:
    """``text`` as a non-negative integer when it is 1 to ``max_digits`` ASCII digits, else ``None``.

    ``str.isdigit()`` alone is not enough: it is true for '²' (latin-1 0xb2, which a header can carry),
    which ``int()`` refuses, and for other scripts' digits, which ``int()`` reads; and ``int()`` refuses
    more than 4,300 digits. Any of these raised past the error family (a 500) before.
    """
    if not 0 < len(text) <= max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)
