"""The per-field error of event validation, and pydantic's errors as a field and a message. HTTP errors are the
project's one family, ``common.errors``."""

from __future__ import annotations

from pydantic import ValidationError


class FieldError(ValueError):
    """One field of one event is invalid; ``reason`` is the closed-set metric label."""

    def __init__(self, field: str, message: str, *, reason: str = "invalid") -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = reason


def first_problem(error: ValidationError, *prefix: str) -> tuple[str, str]:
    """The first problem pydantic found: its field's dotted path (after ``prefix``; ``body`` for the whole) and
    ``"path: message"``, as every 4xx of ours names it."""
    first = error.errors()[0]
    field = ".".join([*prefix, *(str(part) for part in first["loc"])]) or "body"
    message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]  # pydantic: "Extra inputs..."
    return field, f"{field}: {message}"
