"""What a request's accepted events are counted into: the ingest metrics (each touched once per label set), the
accepted counts per model, the cohort counts and the monitoring feed. No HTTP here."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable
from typing import TypeVar

from prometheus_client import Counter as PromCounter

from service.events.accepted import Accepted
from service.feed.writer import FeedWriter
from service.ingest.cohorts import CohortCounts
from service.ingest.known_models import KnownModels
from service.metrics import IngestMetrics
from service.settings import SidecarSettings

_Key = TypeVar("_Key", bound=Hashable)


class IngestObserver:
    """Records a request's accepted events in the metrics and hands them to the monitors."""

    def __init__(
        self,
        settings: SidecarSettings,
        *,
        metrics: IngestMetrics,
        known: KnownModels,
        cohorts: CohortCounts,
        feed: FeedWriter | None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._known = known
        self._cohorts = cohorts
        self._feed = feed
        self.counts: Counter[str] = Counter()
        """Accepted events per model since start (for /status)."""
        self._children: dict[tuple[int, tuple[str, str]], PromCounter] = {}
        """``counter.labels(model, version)`` of the version-labelled counters, cached (the lookup costs as much as
        the increment) here rather than in ``IngestMetrics.child``, so that a version let go is forgotten."""

    def _child(self, counter: PromCounter, labels: tuple[str, str]) -> PromCounter:
        key = (id(counter), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = counter.labels(*labels)
        return found

    def _forget(self, labels: tuple[str, str]) -> None:
        """Remove every series of a version let go (``KnownModels.versions_let_go``): its slot is another's now."""
        for counter in (self._metrics.events, self._metrics.low_confidence):
            counter.remove(*labels)
            self._children.pop((id(counter), labels), None)
        self._metrics.confidence.remove(labels)
        self._metrics.margin.remove(labels)

    def observe(self, accepted: Accepted, by_model: list[tuple[str, list[int]]]) -> None:
        """Metrics and monitors for a request's accepted events, each metric touched once per label set."""
        groups: dict[tuple[str, str], list[int]] = {}
        for (model, version), at in positions([(event.model, event.model_version) for event in accepted.events]):
            # taken in arrival order: the labels taken per event
            labels = (model, self._known.version_label(model, version))
            groups[labels] = sorted(groups[labels] + at) if labels in groups else at  # versions past the cap meet
        for gone in self._known.versions_let_go():  # before counting: one let go and back at once starts anew
            self._forget(gone)
        for labels, at in groups.items():
            every = len(at) == len(accepted)
            confidences = accepted.confidences if every else [accepted.confidences[i] for i in at]
            self._metrics.confidence.observe_many(labels, confidences)
            self._metrics.margin.observe_many(labels, accepted.margins if every else [accepted.margins[i] for i in at])
            self._child(self._metrics.events, labels).inc(len(at))
            self.counts[labels[0]] += len(at)
            threshold = self._settings.low_confidence_threshold(labels[0])
            low = sum(confidence < threshold for confidence in confidences)
            if low:
                self._child(self._metrics.low_confidence, labels).inc(low)
        self._cohorts.count(accepted.events)
        if self._feed is not None:
            self._feed_all(self._feed, accepted, by_model)

    @staticmethod
    def _feed_all(feed: FeedWriter, accepted: Accepted, by_model: list[tuple[str, list[int]]]) -> None:
        events = accepted.events
        admitted = feed.admit(accepted.received_at, len(events))
        keeping: set[str] = set()  # models whose every event waits in Redis for a delayed label
        for model, at in by_model:
            kept = admitted.count(True) if len(at) == len(events) else sum(admitted[i] for i in at)
            feed.count_budget_drops(model, len(at) - kept)
            if feed.keeps_records(model):
                keeping.add(model)
        for index, event in enumerate(events):  # most events past the budget need no Prediction at all
            if admitted[index] or event.label is not None or event.model in keeping:
                feed.take(accepted.prediction(index), event.model_version, admitted=admitted[index])


def positions(keys: list[_Key]) -> Iterable[tuple[_Key, list[int]]]:
    """Each distinct key with its positions in ``keys``, in order of first appearance (most requests have one)."""
    if len(set(keys)) == 1:
        return [(keys[0], list(range(len(keys))))]
    found: dict[_Key, list[int]] = {}
    for position, key in enumerate(keys):
        at = found.get(key)
        if at is None:
            at = found[key] = []
        at.append(position)
    return found.items()
