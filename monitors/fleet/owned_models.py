"""The models one monitor process owns: taking one (with its views, and the warm-up or calibration this process
kept of it), and dropping one (keeping what is worth keeping, forgetting its series, handing its lease on)."""

from __future__ import annotations

import contextlib
import logging

from common.redis import REDIS_FAILED
from monitors.cohort_admission import CohortAdmission
from monitors.drift.monitor import DriftMonitor
from monitors.fleet.baselines import Baselines
from monitors.fleet.context import OwnerContext
from monitors.fleet.owned import OwnedModel
from monitors.fleet.projection import ProjectionPool
from monitors.fleet.projection_views import ModelViews

log = logging.getLogger(__name__)
READER_CONNECTIONS = 512
"""Most connections of the blocking reads: two per owned model, so up to 256 models per monitor process (and
within a container's usual limit of 1,024 open files)."""
MAX_MODELS = READER_CONNECTIONS // 2
"""Models one monitor process owns at most: each holds two blocking reads (its feed and its labelled feed)."""


class OwnedModels:
    """The models this process owns, and the warm-ups of those whose lease it lost."""

    def __init__(
        self,
        context: OwnerContext,
        *,
        cohorts: CohortAdmission,
        baselines: Baselines,
        projections: ProjectionPool,
    ) -> None:
        self._context = context
        self._cohorts = cohorts
        self._baselines = baselines
        self._projections = projections
        self.owned: dict[str, OwnedModel] = {}
        self.warm: dict[str, DriftMonitor] = {}
        """Warm-ups of models whose lease this process lost (a Redis outage past the TTL): resumed if it takes the
        model again before anyone stored a calibrated state, instead of collecting ``reference_events`` anew."""

    @property
    def owner(self) -> str:
        return self._context.leases.owner

    async def take(self, model: str) -> None:
        owned = OwnedModel(
            model,
            self._context,
            views=self._views(model),
            warm=self.warm.pop(model, None),
            kept=self._baselines.take(model),
        )
        try:
            await self._cohorts.load(model)  # the values its slices were decided with, before its labels replay
            await owned.start()
        except BaseException:
            await owned.stop()
            await self._context.leases.release(model)
            raise
        self.owned[model] = owned
        self._baselines.limit = max(self._baselines.limit, len(self.owned))
        log.info("monitor %s owns %s", self.owner, model)

    def _views(self, model: str) -> ModelViews:
        context = self._context
        return ModelViews(
            model,
            redis=context.redis,
            leases=context.leases,
            references=context.states.references,
            pool=self._projections,
            settings=context.settings,
            metrics=context.metrics,
        )

    async def drop(self, model: str, *, release: bool, keep: bool = True) -> None:
        owned = self.owned.pop(model)
        await owned.stop()
        warm = owned.warming_up
        if not release and warm is not None:  # lost, not handed on: kept for this process's next take
            self.warm[model] = warm
        calibrated = owned.calibrated
        if keep and calibrated is not None:
            self._baselines.keep(model, calibrated)
        self._context.drift_metrics.forget(model)
        self._context.metrics.forget(model)
        self._context.collector.forget(model)
        if release:
            with contextlib.suppress(*REDIS_FAILED):
                await self._context.leases.release(model)
        log.info("monitor %s no longer owns %s", self.owner, model)
