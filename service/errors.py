"""The one error type of the sidecar's HTTP surface, and the per-field error of validation."""

from __future__ import annotations

from typing import Any


class SidecarError(Exception):
    """An error answered to the client with ``status`` and a JSON body naming the problem."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        detail: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.detail = detail or {}
        self.headers = headers

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"error": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {**error, **self.detail}


class FieldError(ValueError):
    """One field of one event is invalid; ``reason`` is the closed-set metric label."""

    def __init__(self, field: str, message: str, *, reason: str = "invalid") -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = reason
