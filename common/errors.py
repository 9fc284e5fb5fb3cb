"""The one error family of every process: a root error carrying its HTTP status, and named kinds.

A route, a store or a data-plane class raises the kind that says what went wrong
(``NotFound``, ``RedisUnavailable``…); one handler per HTTP server turns any of them
into ``{"error": ..., "field": ...}`` with the kind's status and headers. Nothing here
imports a web framework, so the monitor and the workers raise the same errors.
"""

from __future__ import annotations

from typing import Any, ClassVar


class VaiError(Exception):
    """Root of every error answered to a client; ``status`` is the HTTP status it maps to."""

    status: ClassVar[int] = 500

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        detail: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.detail = detail or {}
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """``{"error", "field"}`` (``field`` null when no one field is at fault: Redis down, a conflict), and any
        detail (e.g. the per-event rejections)."""
        return {"error": self.message, "field": self.field, **self.detail}


class BadRequest(VaiError):
    """The request cannot be read at all (not JSON, wrong framing)."""

    status = 400


class Unauthorized(VaiError):
    status = 401

    def __init__(self, message: str = "missing or unknown bearer token", **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(message, **kwargs)


class Forbidden(VaiError):
    status = 403


class NotFound(VaiError):
    status = 404


class MethodNotAllowed(VaiError):
    status = 405


class Conflict(VaiError):
    status = 409


class MonitorsOff(Conflict):
    """A monitoring route was called on a sidecar whose monitors are switched off."""

    def __init__(self, message: str = "monitors are off in this sidecar (VAI_MONITORS_ENABLED=false)") -> None:
        super().__init__(message)


class RequestTimeout(VaiError):
    """The body did not arrive in time."""

    status = 408


class PayloadTooLarge(VaiError):
    status = 413


class UnsupportedMediaType(VaiError):
    status = 415


class InvalidInput(VaiError):
    """A field of the request is invalid; ``field`` names it."""

    status = 422


class TooManyModels(InvalidInput):
    """One more model would pass ``VAI_MAX_MODELS``: its slot (events, a reference, a sampling policy) is refused.
    ``field`` is ``model``."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("field", "model")
        super().__init__(message, **kwargs)


class Unavailable(VaiError):
    """A dependency is down; the client should retry after ``retry_after_s``."""

    status = 503

    def __init__(self, message: str, *, retry_after_s: int = 1, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"Retry-After": str(retry_after_s)})
        super().__init__(message, **kwargs)


class Overloaded(Unavailable):
    """This process already holds as much as it may of something every request shares (the request bodies being
    read: ``VAI_MAX_PENDING_BODY_BYTES``); nothing was applied, and the client should retry after ``retry_after_s``."""


class RedisUnavailable(Unavailable):
    """Redis did not answer (down, hung, out of memory); the message never names its address."""

    def __init__(self, what: str = "redis is unavailable", *, retry_after_s: int = 1) -> None:
        super().__init__(f"{what}; try again", retry_after_s=retry_after_s)
