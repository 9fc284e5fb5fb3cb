"""Injected objects for the routes: the sidecar, scope checks, and bodies read only after the token."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Path, Request
from pydantic import BaseModel

from common.names import MODEL_PATTERN
from service.http.auth import Scope
from service.http.body import collect_body, parse_json
from service.settings import SidecarSettings
from service.sidecar import Sidecar

# Dependencies are ``async def`` on purpose: FastAPI runs plain ``def`` ones in a thread pool.

M = TypeVar("M", bound=BaseModel)


async def get_sidecar(request: Request) -> Sidecar:
    sidecar: Sidecar = request.app.state.sidecar
    return sidecar


SidecarDep = Annotated[Sidecar, Depends(get_sidecar)]
ModelPath = Annotated[str, Path(pattern=MODEL_PATTERN)]


def _require(scope: Scope) -> Callable[[Request], Awaitable[None]]:
    async def check(request: Request) -> None:
        request.app.state.sidecar.auth.check(request.headers.get("authorization"), scope)

    return check


ReadScope = Depends(_require(Scope.READ))
AdminScope = Depends(_require(Scope.ADMIN))


def json_body(
    model: type[M],
    *,
    scope: Scope,
    limit_bytes: int | Callable[[SidecarSettings], int],
    limit_setting: str | None = None,
    text_checked_by_model: bool = False,
) -> Any:
    """A dependency giving the JSON body as ``model``, read only once the token holds ``scope``
    (``text_checked_by_model``: see :func:`~service.http.body.parse_json`).

    FastAPI reads and parses a body *parameter* before it runs any dependency, whatever its
    size and whoever sent it. Declare the body through this instead::

        PatchBody = Annotated[Patch, json_body(Patch, scope=Scope.ADMIN, limit_bytes=64 * 1024)]

    401/403 come before a byte is read; 413 as soon as the body is known to be larger than
    ``limit_bytes`` (an int, or read from the settings; ``limit_setting`` names that setting
    in the error), without reading the rest; 422 naming the field. Document the body with
    ``openapi_extra=json_body_doc(model)`` on the route.
    """

    async def read(request: Request) -> Any:
        sidecar: Sidecar = request.app.state.sidecar
        sidecar.auth.check(request.headers.get("authorization"), scope)
        limit = limit_bytes if isinstance(limit_bytes, int) else limit_bytes(sidecar.settings)
        body = await read_body(request, limit_bytes=limit, limit_setting=limit_setting)
        return parse_json(body, model, text_checked_by_model=text_checked_by_model)

    return Depends(read)


def json_body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` of a route whose body comes from :func:`json_body` (its schema, inlined)."""
    schema = model.model_json_schema()
    schema = _inline(schema, schema.pop("$defs", {}))
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    if isinstance(schema, dict):
        ref = schema.get("$ref", "")
        if ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {key: _inline(value, defs) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_inline(item, defs) for item in schema]
    return schema


async def read_body(request: Request, *, limit_bytes: int, limit_setting: str | None) -> bytes:
    """The raw body, refusing with 413 as soon as it is known to exceed ``limit_bytes`` (set by ``limit_setting``)."""
    sidecar: Sidecar = request.app.state.sidecar
    return await collect_body(
        request.stream(),
        content_length=request.headers.get("content-length"),
        content_encoding=request.headers.get("content-encoding"),
        limit_bytes=limit_bytes,
        deadlines=sidecar.body_deadlines,
        limit_setting=limit_setting,
    )
