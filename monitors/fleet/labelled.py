"""The labelled side of an owned model: the labelled feed read into the window, and the quality report published.

The report is measured and published when a record or label reached the model's windows since the last one, and
at least every :data:`QUALITY_REFRESH_S` (labels leave the window as time passes, and readers show how old the
report is); the window of recent predictions is stored for the next owner when it changed, at most every
``VAI_MONITOR_RECENT_SAVE_S`` and once more when the model is handed back. Each measure lets go of the versions
nothing in the windows holds any more (:data:`VERSION_GRACE_S`), so that a new version takes their slot.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
from pydantic import ValidationError

from common import keys
from common.cardinality import ReleasableLabel
from common.redis import stream_entry_time_s
from monitors.collector import SeriesFigures
from monitors.feed import FeedFormatError, MonitoringRecord
from monitors.fleet.context import OwnerContext
from monitors.fleet.projection_views import ModelViews
from monitors.fleet.recent_store import RecentStore, encode
from monitors.fleet.reports import quality_report
from monitors.fleet.results import QualityReport
from monitors.records import LabelledPrediction

log = logging.getLogger(__name__)
Entries = list[tuple[bytes, dict[bytes, bytes]]]
Labels = list[tuple[str, int]]
"""Labels taken, by request id."""
PAGE = 2000
"""Entries read from the labelled feed at a time."""
REPLAYS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="labelled-replay")
"""The thread where the pages of every replay are taken, one page at a time (the work holds the GIL: more threads at
it would leave the event loop less of it, and the default executor, which the reports use, none)."""
RECENT_REQUESTS = 100_000
"""Request ids of labelled records remembered per model to leave out a second copy of one. A sidecar
whose write timed out sends the batch again (the first may have landed): at-least-once delivery, and a
copy would count its event twice in the calibration figures. Copies arrive within seconds."""
QUALITY_REFRESH_S = 30.0
"""Longest time between two reports of a model with no new record or label: its labels leave the window as time
passes (the figures change with nothing read), and ``updated_at`` says how old the figures are on ``/calibration``
and the overview page. Between changes a report round costs no Redis call and no measure."""
VERSION_GRACE_S = 60.0
"""A version is let go only when the windows hold nothing of it and it was last read longer ago than this: a
prediction read while the windows were measured, or waiting for a cohort decision (seconds), keeps it."""


class LabelledFeed:
    """Feeds the model's labelled window from ``vai:labelled:{model}`` and publishes its quality report."""

    def __init__(
        self,
        model: str,
        context: OwnerContext,
        *,
        versions: ReleasableLabel,
        views: ModelViews | None,
        store: RecentStore | None = None,
    ) -> None:
        self.model = model
        self._redis = context.redis
        self._readers = context.readers
        """For the blocking read alone."""
        self._leases = context.leases
        self._windows = context.windows
        self._recent = context.recent
        self._collector = context.collector
        self._metrics = context.metrics
        self._settings = context.settings
        self._versions = versions
        self._views = views
        self._store = store or RecentStore(context.redis, context.leases, horizon_s=context.settings.estimate_window_s)
        """Where the window of recent predictions is kept for the next owner."""
        self._last = "0-0"
        """The last labelled entry read."""
        self._taken: OrderedDict[str, None] = OrderedDict()
        """Request ids of the labelled records taken, oldest first (at most ``RECENT_REQUESTS``)."""
        self._rebuilds = context.rebuilds
        self._page: Future[Labels] | None = None
        """The page of the replay being taken in a worker thread (see :meth:`settled`)."""
        self._measured: tuple[int, int] | None = None
        """The windows' change counts at the last report (``None``: none yet)."""
        self._next_report_s = 0.0
        """When (``time.monotonic``) the report is due even if nothing changed."""
        self._saved = -1
        """The window of recent predictions' change count at its last write."""
        self._next_save_s = 0.0
        """When (``time.monotonic``) the window of recent predictions may be written again."""

    async def reload(self) -> None:
        """Rebuild the labelled window from the feed (trimmed to the window), as a new owner must; each record
        is timed by its entry's id (Redis's clock, as is ``now``), so it leaves the window when it would have. Then
        restore the window of recent predictions its predecessor stored (:mod:`monitors.fleet.recent_store`).
        First of all, keep the versions its predecessor's report named (:meth:`_keep_reported_versions`).

        The feed may hold a hundred thousand records: each page read is taken in a worker thread (:data:`REPLAYS`),
        so the event loop (which renews the leases) is never held for long. Called again after a failure, the replay
        goes on after the last record taken."""
        await self._keep_reported_versions()
        kept_at = self._versions.now()  # the report's versions were last used by then: unless the windows use them
        await self._replay()
        await self._store.restore(self.model, self._recent, version=self._versions)
        held = await asyncio.to_thread(self._versions_held)
        gone = self._versions.release(held, unused_since=math.nextafter(kept_at, math.inf))
        if gone:
            log.info("versions of %s its last report named and no window holds any more: %s", self.model, gone)

    def _versions_held(self) -> set[str]:
        """The versions the model's windows (labelled and recent) hold a prediction of."""
        return self._windows.versions(self.model) | self._recent.versions(self.model)

    async def _keep_reported_versions(self) -> None:
        """Keep the versions the model's last published report names, before any record is read: kept first, they
        keep their slots, and a version the predecessor counted as ``__other__`` stays so while they are in the
        windows. Those the rebuilt windows hold nothing of are let go once they are rebuilt (:meth:`reload`), so an
        owner carries on only versions still in use, not every version ever kept (a predecessor of an earlier
        release named every one). A report of an earlier release may name none; one that does not read back is
        passed over, logged."""
        body = await self._redis.get(keys.quality_report(self.model))
        if body is None:
            return
        try:
            previous = QualityReport.model_validate_json(body)
        except ValidationError as error:
            log.warning("versions named by the last report of %s not kept: %s", self.model, str(error).splitlines()[0])
            return
        self._versions.keep(previous.versions or ())

    async def _replay(self) -> None:
        """The labelled window rebuilt from the feed; one model's replay at a time in a process (:data:`REPLAYS` is
        one thread), so that each model taken comes online once its own is done, not all together at the end."""
        async with self._rebuilds:
            await self._replay_pages()

    async def _replay_pages(self) -> None:
        seconds, microseconds = await self._redis.time()
        now_s = seconds + microseconds / 1e6
        if self._last == "0-0":  # from the window's start; older entries the approximate trim left are never taken
            self._last = start = f"{int((now_s - self._settings.calibration_window_s) * 1000)}-0"
        else:  # a replay that failed part way goes on where it stopped
            start = "(" + self._last
        while True:
            entries: Entries = await self._redis.xrange(  # type: ignore[assignment]
                keys.labelled_feed(self.model), min=start, count=PAGE
            )
            if not entries:
                return
            self._page = REPLAYS.submit(partial(self._take, entries, replayed_at_s=now_s))
            self._label(await asyncio.shield(asyncio.wrap_future(self._page)))  # a cancel: see settled()
            start = "(" + entries[-1][0].decode()

    async def settled(self, *, timeout_s: float) -> None:
        """Wait (up to ``timeout_s``) for the page of the replay a worker thread may still be taking: cancelling the
        replay does not stop the thread, and the model's windows are forgotten only once nothing is put into them.
        A page not started yet is cancelled: it never will be."""
        page = self._page
        if page is None or page.cancel() or page.done():
            return
        await asyncio.wait([asyncio.wrap_future(page)], timeout=timeout_s)

    async def read(self) -> None:
        answer: Any = await self._readers.xread({keys.labelled_feed(self.model): self._last}, count=PAGE, block=500)
        if answer:
            self._label(self._take(answer[0][1]))

    def _label(self, labels: Labels) -> None:
        """Give the model's views the labels taken (on the event loop, where their sample grows)."""
        if self._views is not None:
            for request_id, label in labels:
                self._views.label(request_id, label)

    def _take(self, entries: Entries, *, replayed_at_s: float | None = None) -> Labels:
        """Take labelled entries into the windows: as read now, or (``replayed_at_s``, Redis's time) aged by their
        ids; returns the labels taken, by request id, for the views (:meth:`_label`). The windows are thread-safe:
        the replay runs this in a worker thread, while nothing else reads the feed."""
        labels: Labels = []
        for entry_id, fields in entries:
            self._last = entry_id.decode()
            try:
                record = MonitoringRecord.from_entry(self.model, fields)
            except FeedFormatError:
                self._metrics.invalid.labels(self.model).inc()
                continue
            if record.label is None:  # its range is checked as the record is read
                self._metrics.invalid.labels(self.model).inc()
                continue
            if record.request_id in self._taken:
                self._metrics.duplicates.labels(self.model).inc()
                continue
            self._taken[record.request_id] = None
            if len(self._taken) > RECENT_REQUESTS:
                self._taken.popitem(last=False)
            self._windows.append(
                LabelledPrediction(
                    model=self.model,
                    version=self._versions(record.version),
                    predicted=record.predicted,
                    confidence=min(max(record.confidence, 0.0), 1.0),
                    label=record.label,
                    time_s=record.time_s,
                    cohort=record.cohort,
                    probabilities=None if record.probabilities is None else np.asarray(record.probabilities),
                ),
                age_s=0.0 if replayed_at_s is None else replayed_at_s - stream_entry_time_s(entry_id),
            )
            self._metrics.labelled.labels(self.model).inc()
            labels.append((record.request_id, record.label))
        return labels

    async def publish_quality(self, *, stopping: bool) -> None:
        """The window's report to Redis and, unless ``stopping``, to this process's metrics; the window of recent
        predictions stored for the next owner when it changed (at most every ``VAI_MONITOR_RECENT_SAVE_S``); the feed
        trimmed. Nothing at all (not a Redis call) while no record or label reached the windows since the last
        report, until :data:`QUALITY_REFRESH_S` has passed."""
        changes = (self._windows.changes(self.model), self._recent.changes(self.model))
        exported = self._recent.export_changes(self.model)
        save = exported != self._saved and time.monotonic() >= self._next_save_s
        if changes == self._measured and not save and time.monotonic() < self._next_report_s:
            return
        seconds, microseconds = await self._redis.time()
        now_s = seconds + microseconds / 1e6
        since = self._versions.now() - VERSION_GRACE_S
        report, figures, recent = await asyncio.to_thread(self._measure, now_s, unused_since=since, save=save)
        # The window first (when it is written): a next owner restores at least the predictions of that report.
        if recent is not None and not await self._save(recent, exported):  # another monitor took the model
            return
        if not await self._leases.set_if_owner(self.model, {keys.quality_report(self.model): report.model_dump_json()}):
            return
        self._measured, self._next_report_s = changes, time.monotonic() + QUALITY_REFRESH_S
        if not stopping:
            self._metrics.publish_estimates(report)
            self._collector.publish(self.model, figures)
        # The labelled feed needs to hold the window only (a new owner rebuilds the window from it). Entry ids are
        # Redis's clock, so the cut-off is too: a monitor whose clock runs ahead would trim the whole window.
        horizon_ms = int((now_s - self._settings.calibration_window_s) * 1000)
        await self._redis.xtrim(keys.labelled_feed(self.model), minid=f"{horizon_ms}-0", approximate=True)

    async def save_recent(self) -> None:
        """Store the window of recent predictions if it changed since its last write, at once (a hand-back: the
        next owner misses nothing of it). Fenced by the lease, as every write."""
        changes = self._recent.export_changes(self.model)
        if changes == self._saved:
            return
        seconds, microseconds = await self._redis.time()
        copy = self._recent.export(self.model)
        body = await asyncio.to_thread(encode, copy, owner=self._leases.owner, at=seconds + microseconds / 1e6)
        await self._save(body, changes)

    async def _save(self, body: str, changes: int) -> bool:
        if not await self._store.save(self.model, body):
            return False
        self._saved, self._next_save_s = changes, time.monotonic() + self._settings.monitor_recent_save_s
        return True

    def _measure(
        self, now_s: float, *, unused_since: float, save: bool
    ) -> tuple[QualityReport, list[SeriesFigures], str | None]:
        """The model's report, the figures of its windows and (``save``) the window of recent predictions to store
        (written at ``now_s``, Redis's clock). Versions the windows hold nothing of and unused since
        ``unused_since`` are let go (:meth:`~common.cardinality.ReleasableLabel.release`): their series are gone
        from the figures already, and their slots are the next versions'. It copies the windows and computes: run
        it in a worker thread, never on the event loop (which renews the leases)."""
        snapshots, figures = self._collector.measure(self.model)
        recent_snapshots = self._recent.snapshots(self.model)
        held = {s.key.version for s in snapshots} | {r.key.version for r in recent_snapshots}
        gone = self._versions.release(held, unused_since=unused_since)
        if gone:
            log.info("versions of %s no window holds any more, their slots freed: %s", self.model, gone)
        report = quality_report(
            self.model,
            snapshots,
            window_s=self._settings.calibration_window_s,
            owner=self._leases.owner,
            recent=recent_snapshots,
            min_labelled=self._settings.estimate_min_labelled,
            figures=figures,
            versions=self._versions.kept,  # after the windows' snapshots: each version of their series is kept
        )
        if not save:
            return report, figures, None
        # After the report's snapshot, so that it holds every prediction the report counts; the rings and the feed
        # entries counted in them and not acknowledged are read in one step (the next owner skips those).
        recent = encode(self._recent.export(self.model), owner=self._leases.owner, at=now_s)
        return report, figures, recent
