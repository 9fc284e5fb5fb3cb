"""Injected objects for the routes: the sidecar, and scope checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Path, Request

from service.auth import Scope
from service.errors import SidecarError
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


async def read_body(request: Request, *, limit_bytes: int) -> bytes:
    """The raw body, refusing with 413 as soon as it is known to exceed ``limit_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit_bytes):
        raise (
            _too_large(limit_bytes)
            if declared.isdigit()
            else SidecarError(400, "content-length: not a number", field="content-length")
        )
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding != "identity":
        raise SidecarError(
            415, f"content-encoding: {encoding!r} is not supported; send plain JSON", field="content-encoding"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise _too_large(limit_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit_bytes: int) -> SidecarError:
    return SidecarError(413, f"body: larger than {limit_bytes} bytes (VAI_MAX_BODY_BYTES)", field="body")
