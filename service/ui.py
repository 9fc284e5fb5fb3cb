"""``GET /ui``: a static viewer of stored explanations for engineers.

The page, its script and its stylesheet hold no data and need no token; the script
reads the read-token routes of :mod:`service.explanations_api` with a token the user
types in. Everything is served from here (no CDN), under a Content-Security-Policy
that allows only this origin's script and style, so the page has no inline code.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from common.errors import NotFound

STATIC_DIR = Path(__file__).parent / "static"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(include_in_schema=False)


@router.get("/ui")
async def viewer() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=_HEADERS)


@router.get("/ui/static/{name}")
async def asset(name: str) -> FileResponse:
    """One of the viewer's files; ``no-cache`` still lets the browser revalidate by ETag."""
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"name: no viewer file {name!r}", field="name")
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=_HEADERS)
