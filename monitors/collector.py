"""Prometheus collector exporting the calibration and quality of the windows as last measured.

A scrape never reads the windows or computes anything: the owner of a model measures its windows off the
event loop (:meth:`QualityCollector.measure`, with the report it publishes) and hands the figures over
(:meth:`QualityCollector.publish`); a scrape exports the latest of each model.

Labels: ``model``, ``version``, ``cohort`` and ``value``: a slice's key and value, as the sidecar's
``vai_cohort_events_total`` has them (``cohort="region", value="eu"``), the whole model version
``cohort="all", value="all"`` (see :mod:`monitors.cohorts`); per-class figures add ``class`` (the class index).

| metric | type | meaning |
| --- | --- | --- |
| ``vai_calibration_ece`` | gauge | expected calibration error, 15 bins |
| ``vai_calibration_mce`` | gauge | maximum calibration error over non-empty bins |
| ``vai_brier_score`` | gauge | multi-class Brier score (only series whose events carry probability vectors) |
| ``vai_brier_count`` | gauge | labelled predictions with a probability vector the Brier score is over (with it) |
| ``vai_accuracy`` / ``_lower`` / ``_upper`` | gauge | accuracy and its 95% Wilson interval |
| ``vai_cohort_window_events`` | gauge | labelled predictions in the window now (what ECE, MCE and accuracy rest on) |
| ``vai_cohort_labelled_total`` | counter | labelled predictions received since start |
| ``vai_class_precision`` / ``vai_class_recall`` | gauge | per class, the ``max_classes`` classes with most support |
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from monitors.calibration import CalibrationReport, calibration_of
from monitors.cohorts import LABELS, slice_labels
from monitors.quality import ClassQuality, QualityReport, quality_of
from monitors.series import SeriesKey
from monitors.window import SeriesSnapshot, WindowStore

SERIES_LABELS = ("model", "version", *LABELS)
CLASS_LABELS = (*SERIES_LABELS, "class")


@dataclass(frozen=True, slots=True)
class SeriesFigures:
    """Calibration and quality of one window, computed once for the published report and the scrape."""

    key: SeriesKey
    labelled_total: int
    calibration: CalibrationReport
    quality: QualityReport

    @classmethod
    def of(cls, snapshot: SeriesSnapshot) -> SeriesFigures:
        return cls(
            key=snapshot.key,
            labelled_total=snapshot.labelled_total,
            calibration=calibration_of(snapshot.records),
            quality=quality_of(snapshot.records),
        )


class _Families:
    """The metric families of one scrape."""

    def __init__(self) -> None:
        def gauge(name: str, doc: str, labels: tuple[str, ...] = SERIES_LABELS) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=labels)

        self.ece = gauge("vai_calibration_ece", "Expected calibration error (top-label, 15 equal-width bins).")
        self.mce = gauge("vai_calibration_mce", "Maximum calibration error over non-empty bins.")
        self.brier = gauge("vai_brier_score", "Multi-class Brier score over events with a probability vector.")
        self.brier_count = gauge(
            "vai_brier_count", "Labelled predictions with a probability vector: what vai_brier_score rests on."
        )
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
            self.brier_count,
            self.accuracy,
            self.lower,
            self.upper,
            self.window,
            self.total,
            self.precision,
            self.recall,
        ]


class QualityCollector(Collector):
    """Exposes calibration and cohort quality of a :class:`WindowStore`'s models as last published; registers
    itself on ``registry``. Thread-safe."""

    def __init__(self, *, store: WindowStore, registry: CollectorRegistry, max_classes: int = 20) -> None:
        if max_classes < 0:
            raise ValueError(f"max_classes must be >= 0, got {max_classes}")
        self._store = store
        self._max_classes = max_classes
        self._published: dict[str, tuple[SeriesFigures, ...]] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def measure(self, model: str) -> tuple[list[SeriesSnapshot], list[SeriesFigures]]:
        """``model``'s windows and their figures. It copies the windows and computes: call it off the event loop."""
        snapshots = self._store.snapshots(model)
        return snapshots, [SeriesFigures.of(s) for s in snapshots]

    def publish(self, model: str, figures: Sequence[SeriesFigures]) -> None:
        """What scrapes export for ``model`` until the next :meth:`publish` or :meth:`forget`."""
        with self._lock:
            self._published[model] = tuple(figures)

    def forget(self, model: str) -> None:
        with self._lock:
            self._published.pop(model, None)

    def describe(self) -> list[Metric]:
        """The families without samples, so registering does not compute anything."""
        return _Families().all()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            published = sorted((f for figures in self._published.values() for f in figures), key=lambda f: f.key)
        families = _Families()
        for figures in published:
            self._add(families, figures)
        yield from families.all()

    def _add(self, families: _Families, figures: SeriesFigures) -> None:
        key, calibration, quality = figures.key, figures.calibration, figures.quality
        labels = [key.model, key.version, *slice_labels(key.cohort)]
        families.total.add_metric(labels, figures.labelled_total)
        families.window.add_metric(labels, calibration.count)
        families.ece.add_metric(labels, calibration.ece)
        families.mce.add_metric(labels, calibration.mce)
        if calibration.brier_score is not None:
            families.brier.add_metric(labels, calibration.brier_score)
            families.brier_count.add_metric(labels, calibration.brier_count)
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
