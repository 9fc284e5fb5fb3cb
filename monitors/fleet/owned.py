"""One model owned by this monitor process: its feeds read, its detectors and windows fed, results published."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from common import keys
from common.cardinality import BoundedLabel
from common.redis import REDIS_FAILED, cancelling, execute, text
from monitors.collector import QualityCollector
from monitors.drift.base import DriftEvent
from monitors.drift.buffer import IngestBuffer
from monitors.drift.monitor import DriftMonitor
from monitors.drift.runner import DriftRunner
from monitors.feed import FeedFormatError, MonitoringRecord
from monitors.fleet.carried import CarriedVerdicts, FleetDriftMetrics, StoredVerdicts, load
from monitors.fleet.drift_state import UPLOAD, DriftStates, Kept, Started
from monitors.fleet.labelled import Entries, LabelledFeed
from monitors.fleet.lease import Leases
from monitors.fleet.metrics import MonitorMetrics
from monitors.fleet.projection_views import ModelViews
from monitors.fleet.reports import drift_status
from monitors.fleet.results import REFERENCE_LOST
from monitors.fleet.settings import MonitorSettings
from monitors.fleet.warmup_store import WarmupCopy
from monitors.window import PredictionWindow, WindowStore

log = logging.getLogger(__name__)
RECLAIM_EVERY_TTLS = 5
"""After the take-over, entries another consumer left pending (idle past the lease's TTL) are claimed once every
this many lease TTLs."""


class OwnedModel:
    """Started when this process takes the model's lease, stopped when it loses or gives it up."""

    def __init__(
        self,
        model: str,
        *,
        redis: Redis,
        readers: Redis,
        leases: Leases,
        states: DriftStates,
        runner: DriftRunner,
        windows: WindowStore,
        recent: PredictionWindow,
        collector: QualityCollector,
        metrics: MonitorMetrics,
        settings: MonitorSettings,
        skipped: Any,
        views: ModelViews | None = None,
        warm: DriftMonitor | None = None,
        kept: Kept | None = None,
        drift_metrics: FleetDriftMetrics | None = None,
    ) -> None:
        self.model = model
        self._warm = warm
        """A warm-up this process collected before it lost the model, resumed unless a state was stored since."""
        self._kept = kept
        """This process's calibration of the model from before it gave it up, stored back if Redis lost it."""
        self._skipped = skipped
        self._looked_at: str | None = None
        """The stored state's version last looked at while warming up (a state stored back after Redis lost it)."""
        self._redis = redis
        self._readers = readers
        """For the blocking reads alone (see ``MonitorProcess.readers``)."""
        self._leases = leases
        self._states = states
        self._runner = runner
        self._windows = windows
        self._recent = recent
        self._metrics = metrics
        self._settings = settings
        self._versions = BoundedLabel(settings.max_versions_per_model)
        self.buffer = IngestBuffer(capacity_events=settings.drift_buffer_events, skipped=skipped)
        self._drift: Started | None = None
        self._drift_metrics = drift_metrics
        self._carried: CarriedVerdicts | None = None
        """The previous owner's verdicts, carried over when this process adopted its calibration."""
        self._warmup_copy = WarmupCopy(model, states.warmups)
        """The drift warm-up as stored in Redis, for the next owner should this process die."""
        self._tasks: list[asyncio.Task[None]] = []
        self._redis_backlog = 0
        self._redis_now_s = 0.0
        self._next_waiting_s: float | None = None
        self._examined_seen = 0
        self._stopping = False
        self._claim_from: str | None = "0-0"
        """Where the pass claiming pending entries goes on (``None`` between passes): the take-over starts one."""
        self._claim_idle_ms = 0
        """Idle time of the entries the pass claims: any at the take-over, then those idle past the lease's TTL."""
        self._next_claim_s = 0.0
        self.views = views
        """Projection, drift history and distributions of the model overview."""
        self._labelled = LabelledFeed(
            model,
            redis=redis,
            readers=readers,
            leases=leases,
            windows=windows,
            recent=recent,
            collector=collector,
            metrics=metrics,
            settings=settings,
            versions=self._versions,
            views=views,
        )

    async def start(self) -> None:
        self._looked_at = text(await self._redis.get(keys.drift_version(self.model)))
        self._drift = await self._states.start(self.model, warm=self._warm, kept=self._kept)
        self._warm = self._kept = None
        await self._carry(self._drift)
        self._watch(self._drift)
        await self._ensure_group()
        await self._labelled.reload()
        self._metrics.owned.labels(self.model).set(1)
        self._tasks = [
            asyncio.create_task(self._forever(self._read_feed), name=f"feed-{self.model}"),
            asyncio.create_task(self._forever(self._labelled.read), name=f"labelled-{self.model}"),
            asyncio.create_task(self._every(self._settings.monitor_status_s, self._publish_status)),
            asyncio.create_task(self._every(self._settings.monitor_status_s, self._store_warmup)),
            asyncio.create_task(self._every(self._settings.monitor_report_s, self._publish_quality)),
            *self._view_tasks(),
        ]

    @property
    def warming_up(self) -> DriftMonitor | None:
        """The drift monitor, while it collects a warm-up reference and has collected some of it."""
        monitor = self._drift.monitor if self._drift is not None else None
        progress = monitor.warmup_progress if monitor is not None else None
        return monitor if progress is not None and progress[0] > 0 else None

    @property
    def calibrated(self) -> Kept | None:
        """The calibrated drift monitor (with its reference) to keep when the model is given up; ``None`` before."""
        return None if self._drift is None else self._drift.kept()

    async def stop(self, *, timeout_s: float = 5.0) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=timeout_s)
            for task in stuck:
                log.error("monitor of %s: task %s did not stop within %.0f s", self.model, task.get_name(), timeout_s)
        self._tasks = []
        self._runner.remove(self.model)
        self._windows.forget(self.model)
        self._recent.forget(self.model)

    # --- feeds ---------------------------------------------------------------------------------

    async def _ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(keys.prediction_feed(self.model), keys.MONITOR_GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def _read_feed(self) -> None:
        if len(self.buffer) > self._settings.drift_buffer_events // 2:
            await asyncio.sleep(0.05)  # the detectors are behind: leave the records in Redis, where lag shows
            return
        feed = keys.prediction_feed(self.model)
        count = min(self._settings.monitor_read_batch, self.buffer.room)  # never more than fits: the rest waits
        try:
            entries = await (self._claim(feed, count) if self._claim_due() else self._read_new(feed, count))
        except ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            await self._ensure_group()  # Redis came back empty
            return
        if entries:
            self._take(entries)
            ids = [entry_id for entry_id, _ in entries]
            pipe = self._redis.pipeline(transaction=False)
            pipe.xack(feed, keys.MONITOR_GROUP, *ids)
            pipe.xdel(feed, *ids)  # so the stream's length is what waits (as with the sample streams)
            await execute(pipe)

    def _claim_due(self) -> bool:
        """Whether to claim pending entries now: a pass is going on, or the next one is due."""
        if self._claim_from is None and time.monotonic() >= self._next_claim_s:
            self._claim_from, self._claim_idle_ms = "0-0", self._leases.ttl_ms
        return self._claim_from is not None

    async def _claim(self, feed: str, count: int) -> Entries:
        """One page of the pending entries of the group (what a previous owner read and never acknowledged)."""
        claim: Any = await self._redis.xautoclaim(
            feed,
            keys.MONITOR_GROUP,
            self._leases.owner,
            min_idle_time=self._claim_idle_ms,
            start_id=self._claim_from or "0-0",
            count=count,
        )
        cursor = claim[0].decode() if isinstance(claim[0], bytes) else str(claim[0])
        self._claim_from = None if cursor == "0-0" else cursor
        if self._claim_from is None:
            self._next_claim_s = time.monotonic() + RECLAIM_EVERY_TTLS * self._leases.ttl_ms / 1000
        entries: Entries = claim[1] or []
        return entries

    async def _read_new(self, feed: str, count: int) -> Entries:
        answer: Any = await self._readers.xreadgroup(
            keys.MONITOR_GROUP, self._leases.owner, {feed: ">"}, count=count, block=500
        )
        entries: Entries = answer[0][1] if answer else []
        return entries

    def _take(self, entries: Entries) -> None:
        for entry_id, fields in entries:
            if not fields:
                continue  # trimmed while pending
            try:
                record = MonitoringRecord.from_entry(self.model, fields)
            except FeedFormatError as error:
                self._metrics.invalid.labels(self.model).inc()
                log.debug("skipping a feed entry of %s: %s", self.model, error)
                continue
            entered_s = _entry_time_s(entry_id)
            self.buffer.append(
                DriftEvent(record.predicted, record.confidence, record.embedding, record.time_s, entered_s)
            )
            if self.views is not None:
                self.views.observe(record)
            self._recent.append(
                self.model, self._versions(record.version), record.cohort, min(max(record.confidence, 0.0), 1.0)
            )

    # --- results -------------------------------------------------------------------------------

    async def _publish_status(self) -> None:
        drift = self._drift
        if drift is None:
            return
        await self._follow(drift)
        drift = self._drift
        if drift is None:
            return
        phase = drift.monitor.phase.value  # read once: a calibration ending later in the round shows at the next one,
        if phase == "monitoring" and not drift.stored:  # so "monitoring" is published once its state is stored
            await self._states.store(self.model, drift)
        await self._read_reference(drift)
        if not drift.watching:  # its uploaded reference lost: what comes is passed over, and counted
            self._skipped.inc(len(self.buffer.drain(len(self.buffer))))
        await self._measure_backlog()
        examined = self.buffer.taken_total
        self._metrics.examined.labels(self.model).inc(examined - self._examined_seen)
        self._examined_seen = examined
        backlog = self._redis_backlog + len(self.buffer)
        oldest = self.buffer.oldest_entered_s() or self._next_waiting_s
        waiting_s = max(0.0, self._redis_now_s - oldest) if oldest is not None and backlog else 0.0
        self._metrics.backlog.labels(self.model).set(backlog)
        self._metrics.oldest.labels(self.model).set(waiting_s)
        status = drift_status(
            self.model,
            drift.monitor,
            examined=examined,
            backlog=backlog,
            waiting_s=waiting_s,
            owner=self._leases.owner,
            state=phase if drift.watching else REFERENCE_LOST,
            source=drift.source,
            lost=None if drift.lost is None else drift.lost.note(self.model),
            now_s=self._redis_now_s,  # read with the backlog: every sidecar's age_s is Redis's clock against it
            carried=self._carried,
        )
        values: dict[str, bytes | str] = {keys.drift_status(self.model): status.model_dump_json()}
        if drift.stored and drift.built_from is not None and drift.watching and status.state == "monitoring":
            values[keys.drift_verdicts(self.model)] = StoredVerdicts.of(status, drift.built_from).model_dump_json()
        if await self._leases.set_if_owner(self.model, values):
            self._metrics.publish_drift_state(status)
        if self.views is not None:
            await self.views.record_history(status)

    async def _store_warmup(self) -> None:
        """A task of its own: Redis refusing the warm-up's writes delays nothing else (its rows wait in memory)."""
        drift = self._drift
        if drift is not None:
            keep = not drift.stored and drift.built_from is None
            await self._warmup_copy.sync(drift.monitor, resumed=drift.resumed, keep=keep)

    async def _follow(self, drift: Started) -> None:
        """Run what Redis now says the model's drift monitor is: a newer upload, a calibration stored back after Redis
        lost it, or, once no reason is left to run the settings stored with the state, a calibration under ours."""
        started = await self._newer(drift)
        config = drift.monitor.config
        if started is None and drift.foreign and self._states.keeps_stored(config, drift.rows, drift.dims) is None:
            log.warning(
                "drift monitor of %s ran the settings stored with its state (%s); no longer: recalibrating under "
                "this monitor's",
                self.model,
                drift.foreign,
            )
            started = await self._states.recalibrate(self.model)
        if started is not None:
            self._drift = started
            await self._carry(started)
            self._watch(started)

    async def _newer(self, drift: Started) -> Started | None:
        latest = await self._states.references.latest_id(self.model)
        if latest is not None and latest != drift.built_from:
            log.info("drift monitor of %s follows the uploaded reference %s", self.model, latest)
            return await self._states.start(self.model)
        if drift.stored or drift.built_from is not None:
            return None
        version = text(await self._redis.get(keys.drift_version(self.model)))
        if version is None or version == self._looked_at:
            return None
        self._looked_at = version  # warming up (or waiting) while a state was stored: stored back, say
        started = await self._states.start(self.model, warm=drift.monitor if drift.watching else None)
        return None if started.monitor is drift.monitor else started

    async def _read_reference(self, drift: Started) -> None:
        """Read the uploaded reference of an adopted state once, to keep (see :attr:`calibrated`)."""
        if drift.reference is None and drift.stored and drift.source.startswith(UPLOAD):
            stored = await self._states.references.get(self.model)
            if stored is not None and stored.id == drift.built_from:
                drift.reference = stored

    async def _carry(self, drift: Started) -> None:
        """Carry the previous owner's verdicts over when ``drift`` runs the stored calibration they are of
        (:mod:`monitors.fleet.carried`); none for any other monitor."""
        carried = None
        if drift.stored and drift.built_from is not None and drift.watching:
            carried = await load(self._redis, self.model, calibration=drift.built_from)
        self._carried = carried
        if self._drift_metrics is not None:
            self._drift_metrics.carry(self.model, carried)

    def _watch(self, drift: Started) -> None:
        if drift.watching:
            self._runner.add(monitor=drift.monitor, buffer=self.buffer)
        else:
            self._runner.remove(self.model)

    async def _measure_backlog(self) -> None:
        """Examined entries are deleted, so the feed's length is what waits and its head the oldest. Waits are
        Redis's clock against the entries' ids (Redis's too): the hosts' clocks may disagree."""
        feed = keys.prediction_feed(self.model)
        pipe = self._redis.pipeline(transaction=False)
        pipe.xlen(feed)
        pipe.xrange(feed, count=1)
        pipe.time()
        length, head, (seconds, microseconds) = await execute(pipe)
        self._redis_backlog = int(length)
        self._next_waiting_s = _entry_time_s(head[0][0]) if head else None
        self._redis_now_s = seconds + microseconds / 1e6

    async def _publish_quality(self) -> None:
        await self._labelled.publish_quality(stopping=self._stopping)

    def _view_tasks(self) -> list[asyncio.Task[None]]:
        views = self.views
        if views is None:
            return []
        every = self._settings.projection_refresh_s
        steps = [views.publish_distributions] + [
            partial(views.publish_projection, method) for method in self._settings.projection_methods
        ]
        return [asyncio.create_task(self._every(every, step), name=f"views-{self.model}") for step in steps]

    # --- plumbing ------------------------------------------------------------------------------

    async def _forever(self, step: Callable[[], Awaitable[None]]) -> None:
        await self._every(0.0, step)

    async def _every(self, period_s: float, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` until stopped, riding out failures. A cancellation can reach us disguised (redis-py
        turns one inside its own timeout into ``TimeoutError``) or swallowed, so the loop also checks."""
        failing = False
        while not self._stopping:
            try:
                await step()
            except REDIS_FAILED as error:
                if self._stopping or cancelling():
                    raise asyncio.CancelledError from error
                if not failing:
                    log.warning(
                        "monitor of %s: redis failed (%s: %s); retrying", self.model, type(error).__name__, error
                    )
                failing = True
                await asyncio.sleep(0.5)
                continue
            except Exception:
                log.exception("monitor of %s: %s failed", self.model, getattr(step, "__name__", step))
                await asyncio.sleep(1.0)
                continue
            if self._stopping or cancelling():
                raise asyncio.CancelledError
            if failing:
                log.info("monitor of %s: redis is back", self.model)
            failing = False
            if period_s:
                await asyncio.sleep(period_s)


def _entry_time_s(entry_id: bytes | str) -> float:
    """When Redis wrote a stream entry, from its id (``<milliseconds>-<sequence>``)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0]) / 1000
