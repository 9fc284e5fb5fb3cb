"""``GET /ui``: a static viewer of stored explanations for engineers, and ``GET /ui/models/{model}``,
the overview of one model (distributions, drift, calibration, cohorts, projection, attribution trust).

The pages, their scripts and their stylesheets hold no data and need no token; the scripts
read the read-token routes of :mod:`service.routes.explanations` and :mod:`service.routes.monitoring`, and
``/ui/explained-models`` here, with a token the user types in. Everything is served from here (no CDN),
under a Content-Security-Policy that allows only this origin's script and style, so the page has no inline code.
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse, HTMLResponse

from common.errors import NotFound
from common.names import MODEL_RE
from service.http.body import printable
from service.routes.deps import ReadScope, SidecarDep

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

_NOT_A_MODEL = (STATIC_DIR / "not_a_model.html").read_text(encoding="utf-8")
"""The overview's answer to a name no model can have (``{name}``: the name, escaped)."""
_SHOWN_MAX = 80
"""Characters of a refused name the page shows."""

router = APIRouter(include_in_schema=False)


@router.get("/ui")
async def viewer() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=_HEADERS)


@router.get("/ui/models/{model}")
async def model_overview(model: str) -> Response:
    """The same page for every model: its script reads the model's name from the address. A name no model can
    have is answered with a page saying so (422), not with the API's JSON error: a person reads this address."""
    if MODEL_RE.match(model) is None:
        shown = model if len(model) <= _SHOWN_MAX else f"{model[:_SHOWN_MAX]}…"
        page = _NOT_A_MODEL.format(name=html.escape(printable(shown)))
        return HTMLResponse(page, status_code=422, headers=_HEADERS)
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
