"""What a published projection is drawn from: the production rows chosen against a reference, the points
placed at finite coordinates, and the JSON body (built from plain values with orjson, in a worker thread)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import orjson

from monitors.fleet.projection import Coordinates
from monitors.fleet.projection_sample import ReferenceSample, Seen
from monitors.fleet.views import FORMAT_VERSION, NOTE


@dataclass(frozen=True, slots=True)
class Placed:
    reference: Coordinates
    production: Coordinates
    seconds: float
    warning: str | None = None
    """What the reader must know to read these coordinates (a reference without variance), or None."""


@dataclass(frozen=True, slots=True)
class Chosen:
    """The production records drawn against a reference: those after its own rows, of its width."""

    production: list[Seen]
    other_width: int
    """Later records whose embedding has another width than the reference's."""
    other_dims: int | None
    """The width of the latest of them."""
    total: int

    @classmethod
    def of(cls, seen: list[Seen], reference: ReferenceSample) -> Chosen:
        later = [s for s in seen if s.seq > reference.taken_until]
        production = [s for s in later if s.embedding.shape[0] == reference.dims]
        others = [s for s in later if s.embedding.shape[0] != reference.dims]
        return cls(production, len(others), int(others[-1].embedding.shape[0]) if others else None, len(later))

    def mismatch(self, model: str, reference: ReferenceSample, *, traffic_rows: int) -> str | None:
        """Why no projection is drawn when most of production cannot be placed in the reference's frame."""
        if self.other_width * 2 <= self.total:
            return None
        head = (
            f"{self.other_width} of the {self.total} latest production embeddings are {self.other_dims}-d, "
            f"the reference's {reference.dims}-d"
        )
        if reference.from_traffic:
            return (
                f"{head} (taken from the first traffic): it is taken afresh once {traffic_rows} consecutive events "
                "of the new width have been examined, or upload a reference"
            )
        return f"{head}: upload a reference for the new model (PUT /v1/models/{model}/reference)"


@dataclass(frozen=True, slots=True)
class Finite:
    """The placed points whose coordinates are finite (the rows kept of each source), and how many are not."""

    placed: Placed
    reference_rows: list[int]
    production_rows: list[int]
    left_out: int

    @classmethod
    def of(cls, placed: Placed) -> Finite:
        """``ValueError`` (the fit failed) when most points, or all but one reference point, are not finite."""
        reference = np.isfinite(placed.reference).all(axis=1)
        production = np.isfinite(placed.production).all(axis=1)
        total = len(reference) + len(production)
        left_out = total - int(reference.sum()) - int(production.sum())
        if int(reference.sum()) < 2 or left_out * 2 > total:
            raise ValueError(
                f"{left_out} of the {total} points were placed at non-finite coordinates "
                "(embeddings of very large magnitude?)"
            )
        return cls(placed, np.flatnonzero(reference).tolist(), np.flatnonzero(production).tolist(), left_out)


@dataclass(frozen=True, slots=True)
class Header:
    model: str
    method: str
    reference: ReferenceSample
    owner: str
    other_width: int


def stacked(production: list[Seen], dims: int) -> npt.NDArray[np.float32]:
    if not production:
        return np.zeros((0, dims), dtype=np.float32)
    return np.stack([s.embedding for s in production]).astype(np.float32)


def projection_json(
    header: Header, production: list[Seen], placed: Finite, explained: list[bool], labels: dict[str, int]
) -> bytes:
    """The published :class:`~monitors.fleet.views.Projection`, built from plain values with orjson (in a worker
    thread: thousands of pydantic points would hold the GIL for tens of milliseconds)."""
    reference_xy, production_xy = placed.placed.reference.tolist(), placed.placed.production.tolist()
    predicted = None if header.reference.predicted is None else header.reference.predicted.tolist()
    points: list[dict[str, object]] = [
        _point(reference_xy[i], "reference", predicted=None if predicted is None else predicted[i])
        for i in placed.reference_rows
    ]
    for i in placed.production_rows:
        seen = production[i]
        points.append(
            _point(
                production_xy[i],
                "production",
                time=seen.time,
                predicted=seen.predicted,
                label=labels.get(seen.request_id),
                cohort=seen.cohort,
                request_id=seen.request_id if explained[i] else None,
                version=seen.version,
            )
        )
    body = {
        "v": FORMAT_VERSION,
        "model": header.model,
        "method": header.method,
        "computed_at": time.time(),
        "seconds": placed.placed.seconds,
        "reference_count": len(placed.reference_rows),
        "production_count": len(placed.production_rows),
        "points": points,
        "note": NOTE,
        "reference_id": header.reference.id,
        "owner": header.owner,
        "other_width_count": header.other_width,
        "non_finite_count": placed.left_out,
        "reference_rows": header.reference.total_rows,
        "warning": placed.placed.warning,
    }
    return orjson.dumps(body)


def _point(xy: list[float], source: str, **fields: object) -> dict[str, object]:
    """One :class:`~monitors.fleet.views.ProjectionPoint` with every field written out."""
    point: dict[str, object] = {"x": xy[0], "y": xy[1], "source": source, "time": None, "predicted": None}
    point.update(label=None, cohort={}, request_id=None, version=None)
    point.update(fields)
    return point
