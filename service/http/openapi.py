"""The error answers each route declares in OpenAPI: which statuses it really answers, what each means, and the
headers that come with it, all in the one error shape (``Error``: ``{"error", "field"}``, ``VaiError.body``).

A route passes ``responses=errors(...)`` with the statuses it can answer (``TOKEN`` where a token applies,
``BODY`` where it reads a body within a limit, ``REDIS`` where it needs Redis), and a meaning of its own where
the general one says too little (what a 404 of this route means). ``tests/service/test_openapi.py`` checks every
route's answers with Redis stopped, without a token and with a body past its limit against what it declares.
A route that reads its body itself (``Request``) declares it with ``openapi_extra=request_body(...)``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

ERROR_REF = "#/components/schemas/Error"
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "field"],
    "properties": {
        "error": {"type": "string", "description": "What is wrong, naming the field"},
        "field": {"type": ["string", "null"], "description": "The field at fault; null when none is"},
    },
    "additionalProperties": True,
    "description": "Every error answer: 4xx for the request, 503 (with Retry-After) for a dependency",
}
"""The schema ``Error`` every error answer refers to."""

TOKEN = (401, 403)
"""The answers of a route behind a bearer token (while tokens are configured)."""
BODY = (400, 408, 413, 415, 503)
"""The answers of a route that reads a body within a limit, besides 422 for what it holds (503: the bodies being
read across every connection are at ``VAI_MAX_PENDING_BODY_BYTES``)."""
REDIS = 503
"""The answer of a route that needs Redis while Redis cannot answer."""

_MEANINGS = {
    400: "The body cannot be read: the client went away before sending all of it. Malformed HTTP (a Content-Length "
    "that is not a number, say) is refused by the HTTP server before the sidecar sees it, in plain text, not as Error",
    401: "No bearer token, or an unknown one",
    403: "The token is of a scope that may not do this",
    404: "Not found; the body names the field",
    408: "The body did not all arrive within VAI_BODY_TIMEOUT_S",
    409: "Monitors are off in this sidecar (VAI_MONITORS_ENABLED=false)",
    413: "The body is larger than this route's limit (not read past it)",
    415: "A Content-Encoding other than identity",
    422: "Invalid input; the body names the field",
    503: "Redis did not answer (down, hung past VAI_REDIS_TIMEOUT_S, or refusing writes), or, on a route that reads "
    "a body, the sidecar was already reading VAI_MAX_PENDING_BODY_BYTES of bodies; nothing was applied. Send it "
    "again after Retry-After seconds",
    504: "A write was sent but not confirmed in time; it may be stored",
}
_HEADERS = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    503: {
        "Retry-After": {
            "description": "Seconds to wait before sending the request again",
            "required": True,
            "schema": {"type": "integer", "minimum": 0},
        }
    },
}


def errors(*statuses: int, why: Mapping[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=`` declaring ``statuses`` and those ``why`` gives (the route's own meaning of each), in
    the error shape, with Retry-After on a 503 and WWW-Authenticate on a 401."""
    meanings = {status: _MEANINGS[status] for status in statuses} | dict(why or {})
    return {status: _answer(status, meaning) for status, meaning in sorted(meanings.items())}


def request_body(description: str, schemas: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """``openapi_extra=`` declaring the body of a route that reads it itself (``Request``, not a body parameter, so
    FastAPI declares none): what it is, and its schema by media type."""
    content = {media_type: {"schema": schema} for media_type, schema in schemas.items()}
    return {"requestBody": {"required": True, "description": description, "content": content}}


def _answer(status: int, meaning: str) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": meaning,
        "content": {"application/json": {"schema": {"$ref": ERROR_REF}}},
    }
    if status in _HEADERS:
        answer["headers"] = copy.deepcopy(_HEADERS[status])
    return answer
