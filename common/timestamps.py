"""The one timestamp parser: epoch seconds, or an RFC 3339 date-time with its UTC offset.

Callers turn the errors into their own (a field error of an event, a bad query parameter),
each with its own wording; the rule of what is a timestamp lives here.
"""

from __future__ import annotations

import math
from datetime import datetime


class TimestampError(ValueError):
    """Not a timestamp: text that is no RFC 3339 date-time (nor, where allowed, epoch seconds)."""


class NoUtcOffset(TimestampError):
    """An RFC 3339-like date-time without its UTC offset ('Z' or '+02:00'): its instant is unknown."""


class NotFinite(TimestampError):
    """Epoch seconds that are NaN or infinite."""


def parse_timestamp(value: str | float, *, epoch_text: bool = False) -> float:
    """Epoch seconds of ``value``: a number, or RFC 3339 text with a UTC offset.

    ``epoch_text``: text may also be a number of epoch seconds (query parameters are all text).
    Raises ``NoUtcOffset``, ``NotFinite`` or, for anything else, ``TimestampError``.
    """
    if isinstance(value, str):
        seconds = _epoch_text(value) if epoch_text else None
        if seconds is None:
            seconds = _rfc3339(value)
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise NotFinite(f"{seconds} is not finite")
    return seconds


def _epoch_text(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _rfc3339(text: str) -> float:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise TimestampError(f"not an RFC 3339 date-time: {text[:40]!r}") from None
    if parsed.tzinfo is None:
        raise NoUtcOffset(f"{text[:40]!r} has no UTC offset")
    return parsed.timestamp()
