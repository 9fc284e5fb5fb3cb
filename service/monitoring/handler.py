"""The sidecar's side of monitoring: delayed labels, drift references, and the fleet monitor's figures.

Nothing statistical runs here. The sidecar publishes records (``service.feed.writer``), joins
delayed labels to the prediction records kept in Redis (``service.feed.labels``), stores uploaded references for the
monitor to calibrate on, and answers with the figures the owning monitor published for the whole fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import BaseModel, ValidationError
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from common import keys
from common.errors import InvalidInput, RedisUnavailable, Unavailable, VaiError
from common.redis import REDIS_FAILED, execute, queue_script
from monitors.cohorts import ALL
from monitors.drift.reference import Reference
from monitors.fleet.lease import live_drift_settings, strictest
from monitors.fleet.references import ReferenceStore, WriteUnconfirmed
from monitors.fleet.results import DriftStatus, QualityReport, SeriesQuality
from monitors.fleet.views import WANTED_TTL_S, DriftHistory, HistoryPoint, ProjectionStatus
from service.feed.labels import DelayedLabels
from service.feed.writer import FeedWriter
from service.metrics import FeedMetrics
from service.monitoring.cohorts import KnownCohorts, no_labels_yet
from service.monitoring.public import CalibrationPublic, DriftStatusPublic, ReferenceAccepted, newest
from service.monitoring.reference_upload import ModelSlots, parsed
from service.monitoring.versions import check_version
from service.monitoring.views import PublishedView, unknown_model

log = logging.getLogger(__name__)
_Result = TypeVar("_Result", bound=BaseModel)
_WATCHED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
return redis.call('ZCOUNT', KEYS[2], now_ms, '+inf')
"""
"""Whether a model is watched (non-zero): its lease is held (KEYS[1]), or some monitor is a live member
(KEYS[2], scored by when each membership expires, by Redis's clock: the hosts' clocks may disagree) and will take
it within a lease round. Reads only."""
UPLOAD_BUSY_RETRY_S = 5
"""Retry-After of an upload refused while another reference is being read on this sidecar."""


class ReferenceOutcomeUnknown(VaiError):
    """A reference's write was sent but Redis did not confirm it: it may be stored. No Retry-After: sending it
    again blindly could store it twice (and make the monitor calibrate twice); the message says how to check."""

    status = 504


class Monitoring:
    """The sidecar's monitoring routes' plain object: delayed labels, references, and the published figures."""

    def __init__(
        self,
        redis: Redis,
        writer: FeedWriter,
        metrics: FeedMetrics,
        *,
        timeout_s: float,
        label_retry_s: float = 0.0,
        cohort_keys: tuple[str, ...] = (),
    ) -> None:
        self._redis = redis
        self._cohorts = KnownCohorts(redis, cohort_keys=cohort_keys)
        self.references = ReferenceStore(redis)
        self.delayed_labels = DelayedLabels(redis, writer, metrics, timeout_s=timeout_s, retry_s=label_retry_s)
        self._upload = threading.Lock()
        """Held while one reference is read, checked and stored: one at a time per process, since each costs a few
        times its body in memory and holds the GIL in stretches (JSON parsing, numpy)."""
        self._unreadable: set[tuple[str, str]] = set()
        """(model, what) of published results found unreadable, warned about once until one reads again."""

    @contextlib.contextmanager
    def reference_upload(self) -> Iterator[None]:
        """Held from before a reference's body is read until it is stored: one upload at a time in this process,
        whichever the model (a failed one undoes only its own width claim). Another upload meanwhile is refused
        at once (503, ``Retry-After``), before its body is read: nothing of it was applied, so it is safe to
        send again. Never waits, so it never blocks the event loop."""
        if not self._upload.acquire(blocking=False):
            raise Unavailable(
                "another drift reference is being uploaded to this sidecar (one at a time); "
                f"try again in {UPLOAD_BUSY_RETRY_S} s",
                retry_after_s=UPLOAD_BUSY_RETRY_S,
            )
        try:
            yield
        finally:
            self._upload.release()

    async def accept_reference(
        self, model: str, body: bytes, content_type: str | None, slots: ModelSlots
    ) -> ReferenceAccepted:
        """Parse (in a worker thread), check and store an uploaded reference of ``model``, read under
        :meth:`reference_upload`. ``slots`` (the ingest handler) holds the model's embedding width meanwhile and
        gives it a model slot after the checks, so an upload they refuse takes none; before the write, so no
        reference is stored for a model past ``VAI_MAX_MODELS`` (one Redis then fails keeps it)."""
        reference, margin = await asyncio.to_thread(parsed, body, content_type)
        dims = int(reference.embeddings.shape[1]) if reference.embeddings is not None else 0
        with slots.embedding_width_claimed(model, dims):
            await self.check_reference(reference)
            slots.register(model)  # TooManyModels (422) past the cap
            await self.set_reference(model, reference, margin=margin)
        return ReferenceAccepted(model=model, rows=len(reference), dims=dims, outputs=reference.has_outputs)

    async def set_reference(
        self, model: str, reference: Reference, *, margin: npt.NDArray[np.float64] | None = None
    ) -> str:
        try:
            return await self.references.put(model, reference, margin=margin)
        except WriteUnconfirmed as unconfirmed:
            raise ReferenceOutcomeUnknown(
                "redis: the reference was sent but its write was not confirmed (no answer in time, or the "
                f"connection lost); it may still be stored, as id {unconfirmed.id}. Before sending it again, "
                f"check GET /v1/models/{model}/drift: "
                f'"reference_source" becomes "upload:{unconfirmed.id}" once the monitor has taken it'
            ) from None
        except REDIS_FAILED:
            raise RedisUnavailable("redis: reference not stored") from None

    async def check_reference(self, reference: Reference) -> None:
        """Raises ``InvalidInput`` when ``reference`` has fewer distinct rows than the strictest of the live monitors'
        drift settings needs to calibrate (``DriftConfig.least_rows``): whichever monitor owns the model, now or
        after a hand-over, can calibrate it. Settings no live monitor has published, or that this release cannot
        read, check nothing here: the monitor then reports the failure on ``/drift``."""
        if reference.embeddings is None:
            return
        try:
            configs = await live_drift_settings(self._redis)
        except REDIS_FAILED:
            raise RedisUnavailable("redis: drift settings not read") from None
        width = int(reference.embeddings.shape[1])
        config = strictest(configs, width)
        if config is None:
            return
        least = config.least_rows(width)
        distinct = await asyncio.to_thread(_distinct_rows, reference)
        if distinct >= least:
            return
        raise InvalidInput(
            f"embeddings: {distinct} distinct rows, but the monitors' drift detectors need at least {least} "
            f"for {width}-d embeddings (VAI_DRIFT__WINDOW_SIZE={config.window_size}"
            + (f", VAI_DRIFT__PCA_SHARE={config.pca_share:g} of them fit PCA" if least > config.least_reference else "")
            + ")",
            field="embeddings",
        )

    async def drift_status(self, model: str) -> DriftStatusPublic | None:
        """The published drift status and how old it is (``age_s``): Redis's clock against the ``updated_at`` the
        owner stamped with Redis's clock, so neither host's clock (nor a skew between them) enters it."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(keys.drift_status(model))
        pipe.time()
        try:
            body, (seconds, microseconds) = await execute(pipe)
        except REDIS_FAILED:
            raise RedisUnavailable("redis: drift status not read") from None
        if body is None:
            return None
        status = self._published(DriftStatus, body, model, "drift status")
        return DriftStatusPublic.of(status, max(0.0, seconds + microseconds / 1e6 - status.updated_at))

    async def calibration(self, model: str, *, version: str | None, cohort: str | None) -> CalibrationPublic:
        """The published calibration narrowed to ``version`` and ``cohort`` (``None``: all); empty before any
        labels of them. ``NotFound`` naming the model, version or cohort when the monitors never saw it (a typo in
        a name is not "no labels yet")."""
        report = await self._quality(model, version, cohort)
        return CalibrationPublic.of(model, None if report is None else report.chosen(version=version, cohort=cohort))

    async def reliability(self, model: str, *, version: str | None, cohort: str) -> SeriesQuality:
        """The series the reliability diagram draws: of ``cohort`` (``all``: the whole model), of the newest
        version unless ``version`` is given. ``NotFound`` as :meth:`calibration` for a name the monitors never
        saw, and saying "yet" when they did but none of its predictions is labelled in the window: the picture
        of no series cannot be drawn, where the JSON is an empty list."""
        report = await self._quality(model, version, cohort)
        series = () if report is None else report.chosen(version=version, cohort=cohort).series
        if not series:
            raise no_labels_yet(model, version=version, cohort=cohort)
        return newest(series)

    async def _quality(self, model: str, version: str | None, cohort: str | None) -> QualityReport | None:
        """The published quality report of ``model`` (``None`` before the first), once ``model``, ``version`` and
        ``cohort`` are known to the monitors; one round trip, two when ``cohort`` is not in the report."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(keys.quality_report(model))
        pipe.sismember(keys.MONITORED_MODELS, model)
        try:
            body, monitored = await execute(pipe)
        except REDIS_FAILED:
            raise RedisUnavailable("redis: calibration not read") from None
        report = None if body is None else self._published(QualityReport, body, model, "calibration")
        if report is None and not monitored:
            raise unknown_model(model)
        if version is not None:
            check_version(model, version, report)
        if cohort is not None and cohort != ALL:
            await self._cohorts.check(model, cohort, report)
        return report

    async def projection(self, model: str, method: str) -> PublishedView:
        """The published projection; asking marks it wanted, so the owner keeps computing it for a while."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(keys.projection(model, method))
        pipe.get(keys.projection_status(model))
        pipe.sismember(keys.MONITORED_MODELS, model)
        _queue_watched(pipe, model)
        try:
            body, status, monitored, watched = await execute(pipe)
            if monitored:  # only models the monitors know: a reader cannot create keys for any name
                await self._redis.set(keys.projection_wanted(model, method), b"1", ex=WANTED_TTL_S)
        except REDIS_FAILED:
            raise RedisUnavailable("redis: projection not read") from None
        return PublishedView(
            body=body, monitored=bool(monitored), status=_projection_status(status), watched=bool(watched)
        )

    async def distributions(self, model: str) -> PublishedView:
        """The published distributions, whether the model is known to the monitors, and whether one watches it."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(keys.distributions(model))
        pipe.sismember(keys.MONITORED_MODELS, model)
        _queue_watched(pipe, model)
        try:
            body, monitored, watched = await execute(pipe)
        except REDIS_FAILED:
            raise RedisUnavailable("redis: distributions not read") from None
        return PublishedView(body=body, monitored=bool(monitored), watched=bool(watched))

    async def drift_history(self, model: str) -> tuple[DriftHistory, bool]:
        """The model's drift-score history, oldest first, and whether the model is known to the monitors."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.xrange(keys.drift_history(model))
        pipe.sismember(keys.MONITORED_MODELS, model)
        try:
            entries, monitored = await execute(pipe)
        except REDIS_FAILED:
            raise RedisUnavailable("redis: drift history not read") from None
        history = await asyncio.to_thread(_history, model, entries)
        return history, bool(monitored)

    def _published(self, kind: type[_Result], body: bytes, model: str, what: str) -> _Result:
        """A result the owning monitor published; one this sidecar cannot read (a monitor of another release, a
        value out of its contract) is a 503 while the owner writes it again, not a 500. Logged once until it reads."""
        try:
            found = kind.model_validate_json(body)
        except ValidationError as error:
            if (model, what) not in self._unreadable:
                self._unreadable.add((model, what))
                log.warning("%s of model %s unreadable: %s", what, model, error.errors(include_url=False)[:1])
            raise Unavailable(f"{what} of model {model!r} cannot be read now; try again", retry_after_s=5) from None
        self._unreadable.discard((model, what))
        return found


def _queue_watched(pipe: Pipeline, model: str) -> None:
    """Queue :data:`_WATCHED` of ``model`` on ``pipe``: one more reply, in the same round trip."""
    queue_script(pipe, _WATCHED, [keys.monitor_lease(model), keys.MONITOR_MEMBERS], [])


def _distinct_rows(reference: Reference) -> int:
    """How many distinct embedding rows ``reference`` holds (one or more: a ``Reference`` of them could not be
    built below two rows)."""
    return 0 if reference.embeddings is None else len(np.unique(reference.embeddings, axis=0))


def _history(model: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> DriftHistory:
    points: list[HistoryPoint] = []
    for _, fields in entries:
        try:
            points += [HistoryPoint.model_validate(item) for item in orjson.loads(fields.get(b"p", b"[]"))]
        except (ValueError, TypeError) as error:  # a foreign or newer entry: skip it, serve the rest
            log.warning("skipping an unreadable drift-history entry of %s: %s", model, error)
    return DriftHistory(model=model, points=tuple(points))


def _projection_status(body: bytes | None) -> ProjectionStatus | None:
    """The owner's projection status, or ``None`` when absent or unreadable (an owner of another version)."""
    if body is None:
        return None
    try:
        return ProjectionStatus.model_validate_json(body)
    except ValidationError as error:
        log.warning("projection status skipped, not readable: %s", str(error).splitlines()[0])
        return None
