"""The overview views of one owned model: projection, drift history and distributions, published to Redis.

Computed once per model by its owning monitor (never on a sidecar's request path); every write checks
the lease in the same Lua call. A projection is computed only while some sidecar was asked for it in the
last :data:`~monitors.fleet.views.WANTED_TTL_S` seconds, and recomputed only when the reference, the
production sample or the labels changed. PCA runs in a thread, UMAP in the :class:`ProjectionPool` process.
The histograms are computed in :mod:`monitors.fleet.distributions`; the reference the views compare with is held
by :mod:`monitors.fleet.view_reference`.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import numpy.typing as npt
from redis.asyncio import Redis

from common import keys
from common.redis import execute, queue_script, text
from monitors.feed import MonitoringRecord
from monitors.fleet.distributions import distributions_from_pairs
from monitors.fleet.lease import Leases
from monitors.fleet.metrics import MonitorMetrics
from monitors.fleet.projection import PcaFrame, ProjectionPool, Unprojectable
from monitors.fleet.projection_body import Chosen, Finite, Header, Placed, projection_json, stacked
from monitors.fleet.projection_sample import ReferenceSample, Seen, ViewSamples
from monitors.fleet.references import ReferenceStore
from monitors.fleet.results import DriftStatus
from monitors.fleet.settings import MonitorSettings
from monitors.fleet.view_reference import ViewReference
from monitors.fleet.views import HistoryPoint, ProjectionStatus

log = logging.getLogger(__name__)
_DONE_FLAGS = """
local flags = {}
for i, name in ipairs(KEYS) do
  flags[i] = redis.call('HGET', name, ARGV[1]) == ARGV[2] and '1' or '0'
end
return table.concat(flags)
"""
_APPEND_IF_OWNER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '*', 'p', ARGV[3])
return 1
"""


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
        self._pool = pool
        self._settings = settings
        self._metrics = metrics
        self.samples = ViewSamples(
            max_production=settings.projection_max_production,
            max_reference=settings.projection_max_reference,
            distribution_events=settings.distribution_events,
            traffic_rows=settings.drift.reference_events,
        )
        self._reference = ViewReference(
            model, redis=redis, leases=leases, references=references, settings=settings, samples=self.samples
        )
        self._pca: tuple[str, PcaFrame] | None = None
        self._done: dict[str, tuple[object, ...]] = {}
        self._errors: dict[str, str] = {}
        self._waiting: dict[str, str] = {}
        self._blocked: dict[str, str] = {}
        self._last_history: tuple[object, ...] | None = None
        self._history_at = 0.0

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
        pipe = self._redis.pipeline(transaction=False)
        queue_script(
            pipe,
            _APPEND_IF_OWNER,
            [keys.monitor_lease(self.model), keys.drift_history(self.model)],
            [self._leases.owner, self._settings.drift_history_max, body],
        )
        await execute(pipe)
        self._last_history, self._history_at = verdicts, now

    # --- distributions -----------------------------------------------------------------------------

    async def publish_distributions(self) -> None:
        reference = await self.reference()
        state = (None if reference is None else reference.id, self.samples.observed)
        if self._done.get("distributions") == state or (reference is None and not self.samples.observed):
            await self._publish_status()
            return
        pairs = list(self.samples.scores)  # copied on the loop, where the deque grows; numpy in the thread
        result = await asyncio.to_thread(distributions_from_pairs, self.model, pairs, reference, self._leases.owner)
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
            await self._cannot(method, why, curable=curable)
            return
        state = (reference.id, self.samples.observed, self.samples.labelled)
        if self._done.get(method) == state:
            return
        chosen = await asyncio.to_thread(Chosen.of, self.samples.snapshot(), reference)  # copied on the loop
        mismatch = chosen.mismatch(self.model, reference, traffic_rows=self.samples.traffic_rows)
        if mismatch is not None:
            await self._cannot(method, mismatch, curable=reference.from_traffic)
            self._done[method] = state
            return
        self._waiting.pop(method, None)
        self._blocked.pop(method, None)
        try:  # a failed fit is reported, and retried when something changes
            placed = Finite.of(await self._place(method, reference, reference.embeddings, chosen.production))
        except Unprojectable as error:  # only another reference changes that
            self._errors.pop(method, None)
            await self._cannot(method, _new_reference(self.model, reference, str(error)), curable=False)
            self._done[method] = state
            return
        except Exception as error:
            log.warning("projection %s of %s failed: %s", method, self.model, error)
            self._errors[method] = f"{type(error).__name__}: {error}"[:500]
            self._done[method] = state
            await self._publish_status()
            return
        self._errors.pop(method, None)
        explained = await self._explained([s.request_id for s in chosen.production])
        header = Header(self.model, method, reference, self._leases.owner, chosen.other_width)
        labels = dict(self.samples.labels)
        body = await asyncio.to_thread(projection_json, header, chosen.production, placed, explained, labels)
        written = {keys.projection(self.model, method): body, **self._status_value()}
        if await self._leases.set_if_owner(self.model, written):
            self._metrics.projection_seconds.labels(self.model, method).set(placed.placed.seconds)
        self._done[method] = state

    async def _cannot(self, method: str, why: str, *, curable: bool) -> None:
        """Say why ``method`` has nothing to show: waiting (more traffic cures it), else blocked."""
        if (self._waiting if curable else self._blocked).get(method) == why:
            return
        self._waiting.pop(method, None)
        self._blocked.pop(method, None)
        (self._waiting if curable else self._blocked)[method] = why
        await self._publish_status()

    async def _place(
        self, method: str, reference: ReferenceSample, embeddings: npt.NDArray[np.float32], production: list[Seen]
    ) -> Placed:
        rows = await asyncio.to_thread(stacked, production, embeddings.shape[1])
        started = time.perf_counter()
        if method == "umap":
            result = await self._pool.umap(reference.id, embeddings, rows)
            return Placed(result.reference, result.production, result.fit_s + result.transform_s)
        frame = self._pca[1] if self._pca is not None and self._pca[0] == reference.id else None
        if frame is None:
            frame = await asyncio.to_thread(PcaFrame.fit, embeddings)
            self._pca = (reference.id, frame)
        placed_reference, placed_production = await asyncio.to_thread(
            lambda: (frame.transform(embeddings), frame.transform(rows))
        )
        warning = _flat(self.model, reference) if frame.flat else None
        return Placed(placed_reference, placed_production, time.perf_counter() - started, warning)

    async def _explained(self, request_ids: list[str]) -> list[bool]:
        """Which production events a worker has explained (their record's status is ``done``), in one script call
        that answers a string of ``0``/``1`` (not thousands of replies parsed on the event loop).

        A sampled event's record exists from the moment it is queued: only a finished one has maps to open.
        """
        if not request_ids:
            return []
        names = [keys.explanation(self.model, request_id) for request_id in request_ids]
        pipe = self._redis.pipeline(transaction=False)
        queue_script(pipe, _DONE_FLAGS, names, [keys.EXPLANATION_STATUS, keys.EXPLANATION_DONE])
        (flags,) = await execute(pipe)
        return [flag == "1" for flag in text(flags)]

    # --- shared ----------------------------------------------------------------------------------------

    async def reference(self) -> ReferenceSample | None:
        """The reference the views compare with (:meth:`ViewReference.get
        <monitors.fleet.view_reference.ViewReference.get>`)."""
        return await self._reference.get()

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


def _new_reference(model: str, reference: ReferenceSample, why: str) -> str:
    """Why a method cannot project ``reference``, and the remedy: only another reference changes it."""
    rows = 0 if reference.embeddings is None else len(reference.embeddings)
    origin = f"taken from the first {rows} event embeddings" if reference.from_traffic else "uploaded"
    return (
        f"{why} ({origin}); traffic cannot change that: upload a reference with varied embeddings "
        f"(PUT /v1/models/{model}/reference)"
    )


def _flat(model: str, reference: ReferenceSample) -> str:
    rows = 0 if reference.embeddings is None else len(reference.embeddings)
    origin = "the first event embeddings, taken as the reference" if reference.from_traffic else "uploaded"
    return (
        f"All {rows} reference embeddings ({origin}) are the same point (no variance): PCA has no axes to fit, so "
        "every reference point is drawn at (0, 0) and production along the embedding's first two dimensions, "
        f"directions that mean nothing. Upload a reference with varied embeddings (PUT /v1/models/{model}/reference)."
    )
