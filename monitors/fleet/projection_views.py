"""The overview views of one owned model: projection, drift history and distributions, published to Redis.

Computed once per model by its owning monitor (never on a sidecar's request path); every write checks
the lease in the same Lua call. A projection is computed only while some sidecar was asked for it in the
last :data:`~monitors.fleet.views.WANTED_TTL_S` seconds, and recomputed only when the reference, the
production sample or the labels changed. PCA runs in a thread, UMAP in the :class:`ProjectionPool` process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from redis.asyncio import Redis

from common import keys
from common.redis import execute
from monitors.feed import MonitoringRecord
from monitors.fleet.lease import Leases
from monitors.fleet.metrics import MonitorMetrics
from monitors.fleet.projection import Coordinates, PcaFrame, ProjectionPool
from monitors.fleet.projection_sample import ReferenceSample, Seen, ViewSamples, score_arrays
from monitors.fleet.references import ReferenceStore
from monitors.fleet.results import DriftStatus
from monitors.fleet.settings import MonitorSettings
from monitors.fleet.views import (
    Distributions,
    Histogram,
    HistoryPoint,
    Projection,
    ProjectionPoint,
    ProjectionStatus,
)

log = logging.getLogger(__name__)
BINS = 20
_STATUS_FIELD, _DONE = "status", (b"done", "done")
"""The explanation hash's status field and its finished value, as bytes or decoded (``common.keys.explanation``;
written by the sampler's store, which this package may not import)."""
_APPEND_IF_OWNER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '*', 'p', ARGV[3])
return 1
"""


@dataclass(frozen=True, slots=True)
class _Placed:
    reference: Coordinates
    production: Coordinates
    seconds: float


class ModelViews:
    def __init__(
        self,
        model: str,
        *,
        redis: Redis,
        leases: Leases,
        references: ReferenceStore,
        pool: ProjectionPool,
        settings: MonitorSettings,
        metrics: MonitorMetrics,
    ) -> None:
        self.model = model
        self._redis = redis
        self._leases = leases
        self._references = references
        self._pool = pool
        self._settings = settings
        self._metrics = metrics
        self.samples = ViewSamples(
            max_production=settings.projection_max_production,
            max_reference=settings.projection_max_reference,
            distribution_events=settings.distribution_events,
            traffic_rows=settings.drift.reference_events,
        )
        self._reference: ReferenceSample | None = None
        self._pca: tuple[str, PcaFrame] | None = None
        self._done: dict[str, tuple[object, ...]] = {}
        self._errors: dict[str, str] = {}
        self._waiting: dict[str, str] = {}
        self._blocked: dict[str, str] = {}
        self._last_history: tuple[object, ...] | None = None
        self._history_at = 0.0
        self._append = redis.register_script(_APPEND_IF_OWNER)

    # --- intake (event loop, O(1)) -----------------------------------------------------------------

    def observe(self, record: MonitoringRecord) -> None:
        self.samples.observe(record)

    def label(self, request_id: str, label: int) -> None:
        self.samples.label(request_id, label)

    # --- drift history -----------------------------------------------------------------------------

    async def record_history(self, status: DriftStatus) -> None:
        """Append the verdicts at most every ``drift_history_s``, and only when a score, threshold or verdict moved."""
        verdicts = tuple((d.name, d.score, d.threshold, d.drift) for d in status.detectors)
        now = time.time()
        if not verdicts or verdicts == self._last_history or now - self._history_at < self._settings.drift_history_s:
            return
        points = [
            HistoryPoint(time=status.updated_at, detector=d.name, score=d.score, threshold=d.threshold, drift=d.drift)
            for d in status.detectors
        ]
        body = "[" + ",".join(p.model_dump_json() for p in points) + "]"
        await self._append(
            keys=[keys.monitor_lease(self.model), keys.drift_history(self.model)],
            args=[self._leases.owner, self._settings.drift_history_max, body],
        )
        self._last_history, self._history_at = verdicts, now

    # --- distributions -----------------------------------------------------------------------------

    async def publish_distributions(self) -> None:
        reference = await self.reference()
        state = (None if reference is None else reference.id, self.samples.observed)
        if self._done.get("distributions") == state or (reference is None and not self.samples.observed):
            await self._publish_status()
            return
        pairs = list(self.samples.scores)  # copied on the loop, where the deque grows; numpy in the thread
        result = await asyncio.to_thread(_distributions, self.model, pairs, reference, self._leases.owner)
        await self._leases.set_if_owner(
            self.model,
            {keys.distributions(self.model): result.model_dump_json(), **self._status_value()},
        )
        self._done["distributions"] = state

    # --- projection ----------------------------------------------------------------------------------

    async def publish_projection(self, method: str) -> None:
        if not await self._redis.exists(keys.projection_wanted(self.model, method)):
            return
        reference = await self.reference()
        if reference is None or reference.embeddings is None:
            why, curable = (
                self.samples.no_reference()
                if reference is None
                else ("the uploaded reference carries no embeddings", False)
            )
            if (self._waiting if curable else self._blocked).get(method) != why:
                self._waiting.pop(method, None)
                self._blocked.pop(method, None)
                (self._waiting if curable else self._blocked)[method] = why
                await self._publish_status()
            return
        self._waiting.pop(method, None)
        self._blocked.pop(method, None)
        state = (reference.id, self.samples.observed, self.samples.labelled)
        if self._done.get(method) == state:
            return
        embeddings = reference.embeddings
        production = [s for s in self.samples.snapshot() if s.embedding.shape == embeddings.shape[1:]]
        try:
            placed = await self._place(method, reference.id, embeddings, production)
        except Exception as error:  # a failed fit is reported, and retried when something changes
            log.warning("projection %s of %s failed: %s", method, self.model, error)
            self._errors[method] = f"{type(error).__name__}: {error}"[:500]
            self._done[method] = state
            await self._publish_status()
            return
        self._errors.pop(method, None)
        explained = await self._explained([s.request_id for s in production])
        body = await asyncio.to_thread(
            self._projection_json, method, reference, production, placed, explained, dict(self.samples.labels)
        )
        written = {keys.projection(self.model, method): body, **self._status_value()}
        if await self._leases.set_if_owner(self.model, written):
            self._metrics.projection_seconds.labels(self.model, method).set(placed.seconds)
        self._done[method] = state

    async def _place(
        self, method: str, reference_id: str, embeddings: npt.NDArray[np.float32], production: list[Seen]
    ) -> _Placed:
        rows = np.stack([s.embedding for s in production]) if production else np.zeros((0, embeddings.shape[1]))
        started = time.perf_counter()
        if method == "umap":
            result = await self._pool.umap(reference_id, embeddings, rows.astype(np.float32))
            return _Placed(result.reference, result.production, result.fit_s + result.transform_s)
        frame = self._pca[1] if self._pca is not None and self._pca[0] == reference_id else None
        if frame is None:
            frame = await asyncio.to_thread(PcaFrame.fit, embeddings)
            self._pca = (reference_id, frame)
        placed_reference, placed_production = await asyncio.to_thread(
            lambda: (frame.transform(embeddings), frame.transform(rows))
        )
        return _Placed(placed_reference, placed_production, time.perf_counter() - started)

    async def _explained(self, request_ids: list[str]) -> list[bool]:
        """Which production events a worker has explained (their record's status is ``done``), in one pipeline.

        A sampled event's record exists from the moment it is queued: only a finished one has maps to open.
        """
        if not request_ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for request_id in request_ids:
            pipe.hget(keys.explanation(self.model, request_id), _STATUS_FIELD)
        return [status in _DONE for status in await execute(pipe)]

    def _projection_json(
        self,
        method: str,
        reference: ReferenceSample,
        production: list[Seen],
        placed: _Placed,
        explained: list[bool],
        labels: dict[str, int],
    ) -> str:
        points = [
            ProjectionPoint(
                x=float(x),
                y=float(y),
                source="reference",
                predicted=None if reference.predicted is None else int(reference.predicted[i]),
            )
            for i, (x, y) in enumerate(placed.reference.tolist())
        ]
        points += [
            ProjectionPoint(
                x=float(x),
                y=float(y),
                source="production",
                time=seen.time,
                predicted=seen.predicted,
                label=labels.get(seen.request_id),
                cohort=seen.cohort,
                request_id=seen.request_id if sampled else None,
            )
            for seen, (x, y), sampled in zip(production, placed.production.tolist(), explained, strict=True)
        ]
        return Projection(
            model=self.model,
            method=method,
            computed_at=time.time(),
            seconds=placed.seconds,
            reference_count=len(placed.reference),
            production_count=len(production),
            points=tuple(points),
            reference_id=reference.id,
            owner=self._leases.owner,
        ).model_dump_json()

    # --- shared ----------------------------------------------------------------------------------------

    async def reference(self) -> ReferenceSample | None:
        """The uploaded reference (re-read when its id changes), else the first traffic this owner saw."""
        latest = await self._references.latest_id(self.model)
        if latest is None:
            return self.samples.traffic_reference(self._leases.owner)
        if self._reference is None or self._reference.id != latest:
            stored = await self._references.get(self.model)
            if stored is None:
                return self.samples.traffic_reference(self._leases.owner)
            self._reference = await asyncio.to_thread(
                ReferenceSample.of,
                stored,
                max_rows=self._settings.projection_max_reference,
                seed=self._settings.projection_seed,
            )
        return self._reference

    def _status_value(self) -> dict[str, str | bytes]:
        status = ProjectionStatus(
            methods=tuple(self._settings.projection_methods),
            errors=dict(self._errors),
            waiting=dict(self._waiting),
            blocked=dict(self._blocked),
            updated_at=time.time(),
        )
        return {keys.projection_status(self.model): status.model_dump_json()}

    async def _publish_status(self) -> None:
        await self._leases.set_if_owner(self.model, self._status_value())


def distributions_of(
    model: str,
    confidence: npt.NDArray[np.float64],
    margin: npt.NDArray[np.float64],
    reference: ReferenceSample | None,
    *,
    owner: str = "",
) -> Distributions:
    """Confidence histograms on fixed edges [0, 1]; margin edges from 0 to the 99th percentile of both samples."""
    reference_confidence = None if reference is None else reference.confidence
    reference_margin = None if reference is None else reference.margin
    confidence_edges = np.linspace(0.0, 1.0, BINS + 1)
    pooled = [m for m in (margin, reference_margin) if m is not None and len(m)]
    top = float(np.quantile(np.concatenate(pooled), 0.99)) if pooled else 1.0
    margin_edges = np.linspace(0.0, max(1.0, float(np.ceil(top))), BINS + 1)
    return Distributions(
        model=model,
        updated_at=time.time(),
        production_count=len(confidence),
        reference_count=0 if reference_confidence is None else len(reference_confidence),
        confidence=_histogram(confidence_edges, confidence, reference_confidence),
        margin=_histogram(margin_edges, margin, reference_margin),
        owner=owner,
    )


def _histogram(
    edges: npt.NDArray[np.float64], production: npt.NDArray[np.float64], reference: npt.NDArray[np.float64] | None
) -> Histogram:
    def counts(values: npt.NDArray[np.float64]) -> tuple[int, ...]:
        clipped = np.clip(values, edges[0], edges[-1])  # beyond the last edge counts in the last bin
        return tuple(int(c) for c in np.histogram(clipped, bins=edges)[0])

    return Histogram(
        edges=tuple(float(e) for e in edges),
        production=counts(production),
        reference=None if reference is None else counts(reference),
    )


def _distributions(
    model: str, pairs: list[tuple[float, float]], reference: ReferenceSample | None, owner: str
) -> Distributions:
    confidence, margin = score_arrays(pairs)
    return distributions_of(model, confidence, margin, reference, owner=owner)
