"""Prometheus collector computing calibration and quality from the windows at scrape time.

Labels: ``model``, ``version`` and ``cohort`` (``all`` or ``key=value``, see
:mod:`monitors.cohorts`); per-class figures add ``class`` (the class index).

| metric | type | meaning |
| --- | --- | --- |
| ``vai_calibration_ece`` | gauge | expected calibration error, 15 bins |
| ``vai_calibration_mce`` | gauge | maximum calibration error over non-empty bins |
| ``vai_brier_score`` | gauge | multi-class Brier score (only series whose events carry probability vectors) |
| ``vai_accuracy`` / ``_lower`` / ``_upper`` | gauge | accuracy and its 95% Wilson interval |
| ``vai_cohort_window_events`` | gauge | labelled predictions in the window now |
| ``vai_cohort_labelled_total`` | counter | labelled predictions received since start |
| ``vai_class_precision`` / ``vai_class_recall`` | gauge | per class, the ``max_classes`` classes with most support |
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from monitors.calibration import calibration_of
from monitors.quality import ClassQuality, quality_of
from monitors.window import SeriesSnapshot, WindowStore

SERIES_LABELS = ("model", "version", "cohort")
CLASS_LABELS = (*SERIES_LABELS, "class")


class _Families:
    """The metric families of one scrape."""

    def __init__(self) -> None:
        def gauge(name: str, doc: str, labels: tuple[str, ...] = SERIES_LABELS) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=labels)

        self.ece = gauge("vai_calibration_ece", "Expected calibration error (top-label, 15 equal-width bins).")
        self.mce = gauge("vai_calibration_mce", "Maximum calibration error over non-empty bins.")
        self.brier = gauge("vai_brier_score", "Multi-class Brier score over events with a probability vector.")
        self.accuracy = gauge("vai_accuracy", "Share of labelled predictions that were right.")
        self.lower = gauge("vai_accuracy_lower", "Lower end of the 95% Wilson interval of the accuracy.")
        self.upper = gauge("vai_accuracy_upper", "Upper end of the 95% Wilson interval of the accuracy.")
        self.window = gauge("vai_cohort_window_events", "Labelled predictions in the sliding window.")
        self.total = CounterMetricFamily(
            "vai_cohort_labelled", "Labelled predictions received since start.", labels=SERIES_LABELS
        )
        self.precision = gauge("vai_class_precision", "Precision of a class in the window.", CLASS_LABELS)
        self.recall = gauge("vai_class_recall", "Recall of a class in the window.", CLASS_LABELS)

    def all(self) -> list[Metric]:
        return [
            self.ece,
            self.mce,
            self.brier,
            self.accuracy,
            self.lower,
            self.upper,
            self.window,
            self.total,
            self.precision,
            self.recall,
        ]


class QualityCollector(Collector):
    """Exposes calibration and cohort quality of a :class:`WindowStore`; registers itself on ``registry``."""

    def __init__(self, *, store: WindowStore, registry: CollectorRegistry, max_classes: int = 20) -> None:
        if max_classes < 0:
            raise ValueError(f"max_classes must be >= 0, got {max_classes}")
        self._store = store
        self._max_classes = max_classes
        registry.register(self)

    def describe(self) -> list[Metric]:
        """The families without samples, so registering does not compute anything."""
        return _Families().all()

    def collect(self) -> Iterator[Metric]:
        families = _Families()
        for snapshot in self._store.snapshots():
            self._add(families, snapshot)
        yield from families.all()

    def _add(self, families: _Families, snapshot: SeriesSnapshot) -> None:
        key = snapshot.key
        labels = [key.model, key.version, key.cohort]
        families.total.add_metric(labels, snapshot.labelled_total)
        families.window.add_metric(labels, len(snapshot.records))
        calibration = calibration_of(snapshot.records)
        quality = quality_of(snapshot.records)
        families.ece.add_metric(labels, calibration.ece)
        families.mce.add_metric(labels, calibration.mce)
        if calibration.brier_score is not None:
            families.brier.add_metric(labels, calibration.brier_score)
        families.accuracy.add_metric(labels, quality.accuracy.value)
        families.lower.add_metric(labels, quality.accuracy.lower)
        families.upper.add_metric(labels, quality.accuracy.upper)
        for cls in self._top_classes(quality.classes):
            class_labels = [*labels, str(cls.class_index)]
            if cls.precision is not None:
                families.precision.add_metric(class_labels, cls.precision)
            if cls.recall is not None:
                families.recall.add_metric(class_labels, cls.recall)

    def _top_classes(self, classes: tuple[ClassQuality, ...]) -> list[ClassQuality]:
        ranked = sorted(classes, key=lambda c: (-c.support, -c.predicted_count, c.class_index))
        return sorted(ranked[: self._max_classes], key=lambda c: c.class_index)
