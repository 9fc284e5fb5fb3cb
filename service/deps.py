"""Injected objects for the routes: the sidecar, and scope checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Path, Request

from service.auth import Scope
from service.body import collect_body
from service.schemas import MODEL_PATTERN
from service.sidecar import Sidecar

# Dependencies are ``async def`` on purpose: FastAPI runs plain ``def`` ones in a thread pool.


async def get_sidecar(request: Request) -> Sidecar:
    sidecar: Sidecar = request.app.state.sidecar
    return sidecar


SidecarDep = Annotated[Sidecar, Depends(get_sidecar)]
ModelPath = Annotated[str, Path(pattern=MODEL_PATTERN)]


def _require(scope: Scope) -> Callable[[Request], Awaitable[None]]:
    async def check(request: Request) -> None:
        request.app.state.sidecar.auth.check(request.headers.get("authorization"), scope)

    return check


IngestScope = Depends(_require(Scope.INGEST))
ReadScope = Depends(_require(Scope.READ))
AdminScope = Depends(_require(Scope.ADMIN))


async def read_body(request: Request, *, limit_bytes: int, limit_setting: str) -> bytes:
    """The raw body, refusing with 413 as soon as it is known to exceed ``limit_bytes`` (set by ``limit_setting``)."""
    return await collect_body(
        request.stream(),
        content_length=request.headers.get("content-length"),
        content_encoding=request.headers.get("content-encoding"),
        limit_bytes=limit_bytes,
        limit_setting=limit_setting,
    )
