"""Around each batch of a model: the stored activation-shift baselines it adopts; after it, the baselines it
completed, its layer-health report and, when due, its randomisation sanity check."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Sequence

from attribution_workers.batch_result import BatchResult
from attribution_workers.bounded import WorkTimedOut, run_bounded
from attribution_workers.inspection_health import HealthSnapshot
from attribution_workers.metrics import WorkerMetrics
from attribution_workers.runtime import ModelRuntime
from attribution_workers.trust import RandomisationCheck
from common.errors import RedisUnavailable
from common.redis import REDIS_FAILED
from sampler.contract import SampledEvent
from sampler.explanation_records import SanityFigure
from sampler.explanations import ExplanationStore
from sampler.layers import LayerBaselineRecord, LayerBaselineStore, LayerHealthReport, LayerHealthStore

log = logging.getLogger(__name__)


class BatchUpkeep:
    """Publishes what a batch taught about its model; the entries of the batch are settled already."""

    def __init__(
        self,
        store: ExplanationStore,
        layers: LayerHealthStore,
        metrics: WorkerMetrics,
        *,
        baselines: LayerBaselineStore,
        worker: str,
        job_timeout_s: float,
    ) -> None:
        self._store = store
        self._layers = layers
        self._baselines = baselines
        self._metrics = metrics
        self._worker = worker
        self._job_timeout_s = job_timeout_s
        self._gauged: dict[str, dict[str, set[str]]] = {}
        """Per model and version, the layers whose gauges were set (to remove them with the version)."""

    async def stored_baselines(
        self, model: str, runtime: ModelRuntime, events: Sequence[SampledEvent]
    ) -> dict[str, LayerBaselineRecord]:
        """The stored baselines of the batch's versions that ``runtime`` has not adopted yet, for it to adopt.

        Unreadable, it is a Redis outage like any other: the batch waits, its entries pending.
        """
        wanted = runtime.baselines_wanted([event.model_version for event in events])
        try:
            return await self._baselines.fetch(model, wanted, runtime.model.digest)
        except RedisUnavailable as error:
            raise ConnectionError(str(error)) from error

    async def after_batch(self, model: str, runtime: ModelRuntime, result: BatchResult) -> None:
        await self._store_baselines(model, runtime, result)
        for layer in result.inspection_failed:
            self._metrics.inspection_failures.labels(model, layer).inc()
        if result.layer_health:
            self._metrics.inspection_seconds.labels(model).observe(result.inspection_seconds)
            for snapshot in result.layer_health:
                await self._publish_layers(model, snapshot)
            self._forget_versions(model, runtime.inspected_versions)
        if runtime.sanity_due():
            await self._sanity(model, runtime)

    async def _store_baselines(self, model: str, runtime: ModelRuntime, result: BatchResult) -> None:
        """Store the baselines the batch completed, unless another worker stored one first. Either way the runtime
        adopts the stored one with its next batch of the version; one not stored (Redis failed) is tried again after
        the next batch, and the batch's results are kept."""
        for version, draft in result.new_baselines.items():
            record = LayerBaselineRecord(
                model_digest=runtime.model.digest,
                window=runtime.config.inspect_window,
                worker=self._worker,
                taken_at=draft.taken_at,
                layers=draft.layers,
            )
            try:
                stored = await self._baselines.store(model, version, record)
            except REDIS_FAILED as error:
                log.warning("%s %s: baseline not stored, tried again after the next batch: %s", model, version, error)
                continue
            if stored:
                log.info("%s %s: stored this worker's activation baseline for the other workers", model, version)
            else:
                log.debug("%s %s: a baseline is stored already; adopted next batch if of this model", model, version)

    async def _publish_layers(self, model: str, snapshot: HealthSnapshot) -> None:
        """Layer gauges of one version of ``model``, and this worker's report of it for every sidecar to serve."""
        version = snapshot.version
        self._gauged.setdefault(model, {}).setdefault(version, set()).update(layer.name for layer in snapshot.layers)
        for layer in snapshot.layers:
            if layer.dead_ratio is not None:
                self._metrics.layer_dead.labels(model, version, layer.name).set(layer.dead_ratio)
            if layer.saturated_ratio is not None:
                self._metrics.layer_saturated.labels(model, version, layer.name).set(layer.saturated_ratio)
            if layer.activation_shift is not None:
                self._metrics.layer_shift.labels(model, version, layer.name).set(layer.activation_shift)
        report = LayerHealthReport(
            worker=self._worker,
            version=snapshot.version,
            samples=snapshot.samples,
            window=snapshot.window,
            baseline_stored=snapshot.baseline_stored,
            baseline_worker=snapshot.baseline_worker or (self._worker if snapshot.baseline_taken_at else None),
            baseline_taken_at=snapshot.baseline_taken_at,
            updated_at=time.time(),
            layers=snapshot.layers,
        )
        await self._layers.publish(model, report)

    def _forget_versions(self, model: str, kept: list[str]) -> None:
        """Drop the layer gauges of versions the runtime no longer keeps (the version label stays bounded)."""
        gauged = self._gauged.get(model, {})
        for version in [v for v in gauged if v not in kept]:
            for layer in gauged.pop(version):
                for gauge in (self._metrics.layer_dead, self._metrics.layer_saturated, self._metrics.layer_shift):
                    with contextlib.suppress(KeyError):  # a figure never set for this layer
                        gauge.remove(model, version, layer)

    async def _sanity(self, model: str, runtime: ModelRuntime) -> None:
        try:
            checks = await run_bounded(runtime.sanity_check, timeout_s=self._job_timeout_s, name=f"sanity-{model}")
        except TimeoutError:
            raise WorkTimedOut(f"sanity check of {model} timed out after {self._job_timeout_s:g} s") from None
        except Exception:
            log.exception("randomisation sanity check of %s failed", model)
            return
        for check in checks:
            await self._store_sanity(model, runtime, check)

    async def _store_sanity(self, model: str, runtime: ModelRuntime, check: RandomisationCheck) -> None:
        """Store one method's figure for every worker's verdicts. A figure on fewer than ``sanity_min_pairs``
        measured pairs is stored as inconclusive (shown, judging no map) and leaves the gauge alone, so one or two
        pairs cannot raise or clear the sanity alert."""
        if check.similarity is None or not math.isfinite(check.similarity):  # JSON would store NaN as null
            log.warning(
                "%s: %s sanity check measured none of %d inputs (blank or non-finite maps); not stored",
                model,
                check.method,
                check.inputs,
            )
            return
        conclusive = check.measured >= runtime.config.sanity_min_pairs
        if conclusive:
            self._metrics.sanity.labels(model, check.method).set(check.similarity)
        else:
            log.warning(
                "%s: %s sanity check measured only %d pairs of maps (sanity_min_pairs %d): stored as inconclusive, "
                "its maps stay not judged by sanity",
                model,
                check.method,
                check.measured,
                runtime.config.sanity_min_pairs,
            )
        spread = check.spread
        figure = SanityFigure(
            similarity=check.similarity,
            flagged=check.flagged,
            samples=check.measured,  # the pairs the similarity averages, not the configured sanity_samples
            checked_at=time.time(),
            model_digest=runtime.model.digest,
            conclusive=conclusive,
            seeds=check.seeds,
            seed_similarities=tuple(None if d is None or not math.isfinite(d) else d for d in check.draws),
            similarity_spread=spread if spread is not None and math.isfinite(spread) else None,
        )
        await self._store.save_sanity(model, check.method, figure)
        if check.flagged and conclusive:
            log.warning(
                "%s: %s maps barely change on a randomised model (similarity %.2f)",
                model,
                check.method,
                check.similarity,
            )
