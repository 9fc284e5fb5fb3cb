"""One model owned by this monitor process: its feeds read, its detectors and windows fed, results published.

Its parts: the prediction feed (:mod:`monitors.fleet.owned_feed`), the drift monitor
(:mod:`monitors.fleet.owned_drift`) and the labelled feed (:mod:`monitors.fleet.labelled`); each runs in a task
named by its step and model (``feed-m``, ``status-m``, ``views-m-pca``…), in :func:`common.redis.rounds`.

Taking the model (:meth:`OwnedModel.start`) is a few round trips: its drift monitor started (a stored calibration
adopted) and its feed's group made. The labelled window is rebuilt from the labelled feed in the first round of the
``labelled`` task, up to ``monitor_stream_maxlen`` records, which can take seconds; the model's other tasks start once
it is (its feed is claimed only after the window of recent predictions is restored), and until then it publishes
nothing. The lease, meanwhile, is renewed with the others (:mod:`monitors.fleet.lease_round`). The ``quality`` task
wakes every ``VAI_MONITOR_REPORT_S`` and measures, publishes and stores only what changed
(:meth:`LabelledFeed.publish_quality`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial

from common import keys
from common.cardinality import ReleasableLabel
from common.redis import rounds
from monitors.drift.buffer import IngestBuffer
from monitors.drift.monitor import DriftMonitor
from monitors.fleet.carried import StoredVerdicts
from monitors.fleet.context import OwnerContext
from monitors.fleet.drift_started import Kept, Started
from monitors.fleet.labelled import LabelledFeed
from monitors.fleet.owned_drift import OwnedDrift
from monitors.fleet.owned_feed import OwnedFeed
from monitors.fleet.projection_views import ModelViews
from monitors.fleet.reports import drift_status
from monitors.fleet.results import REFERENCE_LOST, DriftStatus

log = logging.getLogger(__name__)


class OwnedModel:
    """Started when this process takes the model's lease, stopped when it loses or gives it up."""

    def __init__(
        self,
        model: str,
        context: OwnerContext,
        *,
        views: ModelViews | None = None,
        warm: DriftMonitor | None = None,
        kept: Kept | None = None,
    ) -> None:
        settings = context.settings
        self.model = model
        self._context = context
        self._skipped = context.drift_metrics.skipped(model)
        versions = ReleasableLabel(settings.max_versions_per_model)
        self.buffer = IngestBuffer(capacity_events=settings.drift_buffer_events, skipped=self._skipped)
        self.views = views
        """Projection, drift history and distributions of the model overview."""
        self._feed = OwnedFeed(model, context, buffer=self.buffer, versions=versions, views=views)
        self._drift = OwnedDrift(model, context, buffer=self.buffer, warm=warm, kept=kept)
        self._labelled = LabelledFeed(model, context, versions=versions, views=views)
        self._tasks: list[asyncio.Task[None]] = []
        self._examined_seen = 0
        self._stopping = False
        self._loaded = False
        """Whether the labelled window is rebuilt (and the model's other tasks started)."""

    async def start(self) -> None:
        """Take the model: a few round trips; the labelled window is rebuilt in the ``labelled`` task."""
        await self._drift.start()
        await self._feed.ensure_group()
        self._tasks = [self._run("labelled", self._read_labelled)]

    async def _read_labelled(self) -> None:
        """A round of the ``labelled`` task: the labelled feed read, once the window is rebuilt from it
        (:meth:`LabelledFeed.reload`: retried by the task's loop should Redis fail, going on where it stopped) and
        the model's other tasks are started."""
        if self._loaded:
            await self._labelled.read()
            return
        await self._labelled.reload()
        if self._stopping:  # redis-py can swallow a cancellation: start nothing for a model being given up
            return
        self._loaded = True
        self._context.metrics.owned.labels(self.model).set(1)
        status_s, report_s = self._context.settings.monitor_status_s, self._context.settings.monitor_report_s
        self._tasks += [
            self._run("feed", self._feed.read),
            self._run("status", self._publish_status, period_s=status_s),
            self._run("warmup", self._drift.store_warmup, period_s=status_s),
            self._run("quality", self._publish_quality, period_s=report_s),
            *self._view_tasks(),
        ]

    @property
    def warming_up(self) -> DriftMonitor | None:
        """The drift monitor, while it collects a warm-up reference and has collected some of it."""
        return self._drift.warming_up

    @property
    def calibrated(self) -> Kept | None:
        """The calibrated drift monitor (with its reference) to keep when the model is given up; ``None`` before."""
        return self._drift.calibrated

    async def stop(self, *, timeout_s: float = 5.0) -> None:
        self._stopping = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=timeout_s)
            for task in stuck:
                log.error("monitor of %s: task %s did not stop within %.0f s", self.model, task.get_name(), timeout_s)
        await self._labelled.settled(timeout_s=timeout_s)  # a page of the replay in its thread: before the forgetting
        self._drift.stop()
        try:  # what was examined need not be examined again; the rest stays pending for the next owner
            await asyncio.wait_for(self._feed.settle(), timeout=timeout_s)
        except Exception as error:  # Redis away: the next owner examines those again
            log.debug("monitor of %s: examined entries not acknowledged at the stop: %s", self.model, error)
        else:
            try:
                await asyncio.wait_for(self._publish_final_status(), timeout=timeout_s)
            except Exception as error:
                log.debug("monitor of %s: no last status at the stop: %s", self.model, error)
            await self._save_recent(timeout_s=timeout_s)
        self._context.windows.forget(self.model)
        self._context.recent.forget(self.model)

    async def _save_recent(self, *, timeout_s: float) -> None:
        """The window of recent predictions stored once more at the stop (while owned it is written at most every
        ``VAI_MONITOR_RECENT_SAVE_S``): a next owner taking the model handed back misses none of it. Not before the
        window is rebuilt: what was restored so far is less than what is stored."""
        if not self._loaded:
            return
        try:
            await asyncio.wait_for(self._labelled.save_recent(), timeout=timeout_s)
        except Exception as error:
            log.debug("monitor of %s: window of recent predictions not stored at the stop: %s", self.model, error)

    def _run(
        self, step: str, action: Callable[[], Awaitable[None]], *, period_s: float = 0.0, part: str = ""
    ) -> asyncio.Task[None]:
        """``action`` in a task named ``{step}-{model}`` (``-{part}`` after it), run at once and then every
        ``period_s`` until stopped."""
        loop = rounds(action, period_s=period_s, what=f"monitor of {self.model}", stopping=lambda: self._stopping)
        return asyncio.create_task(loop, name="-".join(filter(None, (step, self.model, part))))

    async def _publish_status(self) -> None:
        drift = await self._drift.current()
        if drift is None:
            return
        phase = drift.monitor.phase.value  # read once: a calibration ending later in the round shows at the next one,
        if phase == "monitoring" and not drift.stored:  # so "monitoring" is published once its state is stored
            await self._context.states.store(self.model, drift)
        await self._drift.read_reference(drift)
        if not drift.watching:  # its uploaded reference lost: what comes is passed over, and counted
            self._skipped.inc(len(self.buffer.drain(len(self.buffer))))
        status = await self._status(drift, phase)
        values: dict[str, bytes | str] = {keys.drift_status(self.model): status.model_dump_json()}
        if drift.stored and drift.built_from is not None and drift.watching and status.state == "monitoring":
            values[keys.drift_verdicts(self.model)] = StoredVerdicts.of(status, drift.built_from).model_dump_json()
        if await self._context.leases.set_if_owner(self.model, values):
            self._context.metrics.publish_drift_state(status)
        if self.views is not None:
            await self.views.record_history(status)

    async def _publish_final_status(self) -> None:
        """The status once more, once the stop has acknowledged what was examined: the next owner carries its
        ``examined`` on from it, and the records examined since the last status would otherwise be acknowledged
        and counted nowhere. Written only while the lease is still this process's (a hand-back, not a loss)."""
        drift = await self._drift.current()
        if drift is None:
            return
        status = await self._status(drift, drift.monitor.phase.value)
        await self._context.leases.set_if_owner(self.model, {keys.drift_status(self.model): status.model_dump_json()})

    async def _status(self, drift: Started, phase: str) -> DriftStatus:
        """The status to publish, with what waits: the feed's backlog and the buffer's, both timed on Redis's clock
        against the entries' ids (Redis's too), as the hosts' clocks may disagree; the backlog metrics set."""
        metrics = self._context.metrics
        feed = await self._feed.backlog()
        examined = self.buffer.examined_total
        metrics.examined.labels(self.model).inc(examined - self._examined_seen)
        self._examined_seen = examined
        backlog = feed.length  # the buffer's included: its entries are deleted once examined
        waiting_s = max(0.0, feed.now_s - feed.head_s) if feed.head_s is not None and backlog else 0.0
        metrics.backlog.labels(self.model).set(backlog)
        metrics.oldest.labels(self.model).set(waiting_s)
        return drift_status(
            self.model,
            drift.monitor,
            examined=examined,
            backlog=backlog,
            waiting_s=waiting_s,
            owner=self._context.leases.owner,
            state=phase if drift.watching else REFERENCE_LOST,
            source=drift.source,
            lost=None if drift.lost is None else drift.lost.note(self.model),
            now_s=feed.now_s,  # read with the backlog: every sidecar's age_s is Redis's clock against it
            carried=self._drift.carried,
        )

    async def _publish_quality(self) -> None:
        await self._labelled.publish_quality(stopping=self._stopping)

    def _view_tasks(self) -> list[asyncio.Task[None]]:
        views = self.views
        if views is None:
            return []
        every = self._context.settings.projection_refresh_s
        tasks = [self._run("views", views.publish_distributions, period_s=every, part="distributions")]
        for method in self._context.settings.projection_methods:
            tasks.append(self._run("views", partial(views.publish_projection, method), period_s=every, part=method))
        return tasks
