"""``GET /ui``: a static viewer of stored explanations for engineers, and ``GET /ui/models/{model}``,
the overview of one model (distributions, drift, calibration, cohorts, projection, attribution trust).

The pages, their scripts and their stylesheets hold no data and need no token; the scripts
read the read-token routes of :mod:`service.routes.explanations` and :mod:`service.routes.monitoring`, and
``/ui/explained-models`` here, with a token the user types in. Everything is served from here (no CDN),
under a Content-Security-Policy that allows only this origin's script and style, so the page has no inline code.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from common.errors import NotFound
from service.routes.deps import ModelPath, ReadScope, SidecarDep

STATIC_DIR = Path(__file__).parents[1] / "static"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_JS, _CSS = "text/javascript; charset=utf-8", "text/css; charset=utf-8"
_ASSETS = {"page.js": _JS, "app.js": _JS, "app.css": _CSS, "overview.js": _JS, "charts.js": _JS, "overview.css": _CSS}
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


@router.get("/ui/models/{model}")
async def model_overview(model: ModelPath) -> FileResponse:
    """The same page for every model: its script reads the model's name from the address."""
    return FileResponse(STATIC_DIR / "overview.html", media_type="text/html; charset=utf-8", headers=_HEADERS)


@router.get("/ui/explained-models", dependencies=[ReadScope])
async def explained_models(sidecar: SidecarDep) -> dict[str, list[str]]:
    """The models that have stored explanations, by name: the viewer lists the first when none is chosen, and
    offers the others (``GET /v1/explanations`` needs ``model`` once there are several)."""
    return {"models": await sidecar.explanations.models()}


@router.get("/ui/static/{name}")
async def asset(name: str) -> FileResponse:
    """One of the viewer's files; ``no-cache`` still lets the browser revalidate by ETag."""
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"name: no viewer file {name[:80]!r}", field="name")
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=_HEADERS)
