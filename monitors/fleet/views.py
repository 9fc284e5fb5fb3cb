"""The model-overview views the owning monitor publishes: embedding projection, drift history, distributions.

Typed, versioned JSON in Redis (the owner writes, every sidecar replica reads and serves it). Pydantic,
numpy and orjson only, so the sidecar imports this without umap, scikit-learn or torch.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import orjson
from pydantic import Field

from monitors.fleet.results import Result

FORMAT_VERSION = 1
METHODS = ("pca", "umap")
"""Projection methods a monitor can compute (``VAI_PROJECTION_METHODS`` picks among them)."""
Method = Literal["pca", "umap"]
WANTED_TTL_S = 300
"""A projection asked for within this long keeps being refreshed; an idle model's projections cost nothing."""
NOTE = (
    "2-D projection of the embeddings: production points are placed in the reference's frame (PCA fitted, or "
    "UMAP fitted, on the reference sample). Distances and clusters in 2-D are not distances in the embedding "
    "space; read the drift detectors' verdicts for whether production moved."
)


class ProjectionPoint(Result):
    x: float
    y: float
    source: Literal["reference", "production"]
    time: float | None = None
    predicted: int | None = None
    label: int | None = None
    cohort: dict[str, str] = {}  # noqa: RUF012 (pydantic copies it; ruff cannot see Result is a BaseModel)
    request_id: str | None = None
    """Set only for production events a worker had explained (status ``done``) when the view was computed."""
    version: str | None = None
    """Model version of a production event (``None`` for reference points, and in views of older monitors)."""


class Projection(Result):
    v: int = FORMAT_VERSION
    model: str
    method: Method
    computed_at: float
    seconds: float
    """Compute time of this projection (fit included when the reference's frame was fitted for it)."""
    reference_count: int
    """Reference points of the projection, all of them also when ``points`` is a cut (``shown_reference``)."""
    production_count: int
    """Production points of the projection, all of them also when ``points`` is a cut (``shown_production``)."""
    points: tuple[ProjectionPoint, ...] = ()
    other_width_count: int = 0
    """Latest production embeddings left out: their width is not the reference's (a model changed)."""
    non_finite_count: int = 0
    """Points left out because the method placed them at a non-finite coordinate (embeddings of huge magnitude)."""
    note: str = NOTE
    reference_id: str = ""
    owner: str = ""
    warning: str | None = None
    """What the reader must know to read the coordinates (e.g. a reference without variance: PCA has no axes), or
    None (absent from the views of older monitors)."""
    reference_rows: int | None = None
    """Rows of the reference when the projection's reference points are a seeded sample of it (more rows than
    ``VAI_PROJECTION_MAX_REFERENCE``); None when they are all of it, and in views of older monitors."""
    shown_reference: int | None = None
    """Reference points in ``points`` when they are a cut (``limit``) of ``reference_count``; None when every
    point is there."""
    shown_production: int | None = None
    """Production points in ``points`` when they are a cut of ``production_count``; None when every point is there."""
    recompute_error: str | None = Field(default=None, exclude=True)
    """Set by the sidecar as it serves the projection (never stored): the owner's latest recompute of this method
    failed, and why; the points are those of the last success, at ``computed_at``."""

    def limited(self, limit: int | None) -> Projection:
        """At most ``limit`` points, taken evenly from each source in proportion (each source keeps one); the
        counts stay the projection's, and ``shown_*`` say how many of each are in the cut."""
        if limit is None or len(self.points) <= limit:
            return self
        reference = [p for p in self.points if p.source == "reference"]
        production = [p for p in self.points if p.source == "production"]
        keep_reference = round(limit * len(reference) / len(self.points))
        if reference and production:
            keep_reference = min(max(keep_reference, 1), limit - 1)
        chosen = _evenly(reference, keep_reference) + _evenly(production, limit - keep_reference)
        return self.model_copy(
            update={
                "points": tuple(chosen),
                "shown_reference": sum(p.source == "reference" for p in chosen),
                "shown_production": sum(p.source == "production" for p in chosen),
            }
        )


def marked_stale(body: bytes, error: str) -> bytes:
    """A served projection ``body`` (a JSON object as the owner or :meth:`Projection.limited` wrote it) with
    ``recompute_error`` added, without parsing its points. ``ValueError`` when it does not end as an object."""
    head = body.rstrip()
    if not head.endswith(b"}"):
        raise ValueError("not a JSON object")
    separator = b"" if head[:-1].rstrip().endswith(b"{") else b","
    return head[:-1] + separator + b'"recompute_error":' + orjson.dumps(error) + b"}"


def _evenly(points: list[ProjectionPoint], count: int) -> list[ProjectionPoint]:
    if count >= len(points):
        return points
    if count <= 0:
        return []
    return [points[int(i)] for i in np.linspace(0, len(points) - 1, count).round().astype(int)]


class ProjectionStatus(Result):
    """What the sidecar needs to say why a projection is missing."""

    v: int = FORMAT_VERSION
    methods: tuple[str, ...]
    """Methods the owning monitor computes (when asked for)."""
    errors: dict[str, str] = {}  # noqa: RUF012 (pydantic copies it; ruff cannot see Result is a BaseModel)
    """Latest failure per method, cleared by its next success."""
    waiting: dict[str, str] = {}  # noqa: RUF012 (pydantic copies it; ruff cannot see Result is a BaseModel)
    """Why a method has nothing to show yet that more traffic will cure (e.g. too few embeddings so far)."""
    blocked: dict[str, str] = {}  # noqa: RUF012 (pydantic copies it; ruff cannot see Result is a BaseModel)
    """Why a method cannot be computed until something changes (e.g. the events carry no embedding)."""
    updated_at: float


class HistoryPoint(Result):
    time: float
    detector: str
    score: float
    threshold: float
    drift: bool


class DriftHistory(Result):
    model: str
    points: tuple[HistoryPoint, ...] = ()
    """Oldest first."""


class Histogram(Result):
    edges: tuple[float, ...]
    """``len(counts) + 1`` bin edges; values beyond the last edge count in the last bin."""
    production: tuple[int, ...]
    reference: tuple[int, ...] | None = None
    """``None`` when the reference has no such figure (an upload without probabilities)."""


class Distributions(Result):
    v: int = FORMAT_VERSION
    model: str
    updated_at: float
    production_count: int
    reference_count: int
    confidence: Histogram
    margin: Histogram
    """Top-1 log-probability minus the runner-up's (the feed's ``margin``)."""
    owner: str = ""
