"""The per-field error of event validation. HTTP errors are the project's one family, ``common.errors``."""

from __future__ import annotations


class FieldError(ValueError):
    """One field of one event is invalid; ``reason`` is the closed-set metric label."""

    def __init__(self, field: str, message: str, *, reason: str = "invalid") -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = reason
