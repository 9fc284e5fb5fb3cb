"""Prometheus metrics of drift monitoring, on a registry passed in.

| metric | type | labels | meaning |
| --- | --- | --- | --- |
| ``vai_drift_score`` | gauge | model, detector | latest test statistic (larger = more drift) |
| ``vai_drift_threshold`` | gauge | model, detector | the score above which the detector reports drift |
| ``vai_drift_detected`` | gauge | model, detector | 1 while the latest verdict is drift, else 0 |
| ``vai_drift_p_value`` | gauge | model, detector | latest p-value (windowed tests only) |
| ``vai_drift_tests_total`` | counter | model, detector | tests run: each event an online detector scored, |
|   |   |   | each window of a windowed test (not a window ``output_class_chi2`` cannot test: one class) |
| ``vai_drift_alarms_total`` | counter | model, detector | tests whose statistic was above the threshold |
| ``vai_drift_ert_events`` | gauge | model, detector | the ERT an online detector is calibrated to (events |
|   |   |   | between false alarms on clean traffic); online detectors only |
| ``vai_embedding_distance`` | histogram | model | cosine distance of each embedding to the reference centroid |
|   |   |   | (all-zero embeddings, which have no direction, left out) |
| ``vai_drift_events_skipped_total`` | counter | model | events not examined (buffer full, calibrating, not |
|   |   |   | collected into a warm-up, or a batch the detectors failed on) |
| ``vai_drift_embeddings_skipped_total`` | counter | model, reason | events examined without their embedding: |
|   |   |   | ``missing`` (sent without one), ``width`` (another width than the reference's), |
|   |   |   | ``too_large`` (values too large for float32 arithmetic, past ~1.8e19) |

``detector`` takes the closed set of result names: ``mmd_online``/``lsdd_online``,
``window_mmd``, ``window_ks``, ``output_class_chi2``, ``output_confidence_ks``,
``embedding_distance``.

``vai_drift_detected`` is the latest verdict of a batch or window, for dashboards. Alerts read the counters
instead: the share of an online detector's events that alarm does not depend on how many events a batch
holds (a batch of ``b`` clean events holds an alarm about ``1 - exp(-b / ERT)`` of the time), and the share
of a windowed test's windows that alarm is its false-alarm rate, alpha, on clean traffic.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from monitors.drift.base import DriftResult, OnlineResult

DISTANCE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0)
"""Cosine distance lies in [0, 2]; most in-distribution embeddings sit well below 0.5."""


class DriftMetrics:
    def __init__(self, *, registry: CollectorRegistry, distance_buckets: Sequence[float] = DISTANCE_BUCKETS) -> None:
        labels = ("model", "detector")
        self._score = Gauge("vai_drift_score", "Latest drift test statistic.", labels, registry=registry)
        self._threshold = Gauge(
            "vai_drift_threshold", "Score above which drift is reported.", labels, registry=registry
        )
        self._detected = Gauge("vai_drift_detected", "1 while the latest verdict is drift.", labels, registry=registry)
        self._p_value = Gauge("vai_drift_p_value", "Latest p-value of a windowed test.", labels, registry=registry)
        self._tests = Counter(
            "vai_drift_tests",
            "Tests run: each event an online detector scored, each window of a windowed test.",
            labels,
            registry=registry,
        )
        self._alarms = Counter(
            "vai_drift_alarms", "Tests whose statistic was above the threshold.", labels, registry=registry
        )
        self._ert = Gauge(
            "vai_drift_ert_events",
            "Expected events between false alarms the online detector is calibrated to (ERT).",
            labels,
            registry=registry,
        )
        self._distance = Histogram(
            "vai_embedding_distance",
            "Cosine distance of embeddings to the reference centroid.",
            ("model",),
            buckets=tuple(distance_buckets),
            registry=registry,
        )
        self._skipped = Counter(
            "vai_drift_events_skipped", "Events not examined by drift detection.", ("model",), registry=registry
        )
        self._embeddings_skipped = Counter(
            "vai_drift_embeddings_skipped",
            "Events whose outputs were examined but not their embedding (reason: missing, width, too_large).",
            ("model", "reason"),
            registry=registry,
        )

    def record(self, model: str, result: DriftResult) -> None:
        """Expose one detector's latest verdict, and count the tests behind it and their alarms."""
        self.show(
            model,
            result.name,
            score=result.score,
            threshold=result.threshold,
            drift=result.drift,
            p_value=result.p_value,
        )
        tests, alarms = 1, int(result.drift)
        if isinstance(result, OnlineResult):
            tests, alarms = result.events, result.alarms
            self._ert.labels(model, result.name).set(result.ert)
        # Both counters are created together, at 0 alarms too, so that a rate over them sees the first alarm.
        self._tests.labels(model, result.name).inc(tests)
        self._alarms.labels(model, result.name).inc(alarms)

    def show(
        self, model: str, detector: str, *, score: float, threshold: float, drift: bool, p_value: float | None
    ) -> None:
        """Set one detector's latest-verdict gauges (score, threshold, detected, p-value), counting nothing."""
        self._score.labels(model, detector).set(score)
        self._threshold.labels(model, detector).set(threshold)
        self._detected.labels(model, detector).set(1.0 if drift else 0.0)
        if p_value is not None:
            self._p_value.labels(model, detector).set(p_value)

    def clear_verdicts(self, model: str) -> None:
        """Drop ``model``'s latest-verdict gauges (score, threshold, detected, p-value): a new calibration replaced
        the one they were of, and an alarm of the replaced reference must not stay up until new traffic arrives.
        The counters stay: they count the tests that ran."""
        for family in (self._score, self._threshold, self._detected, self._p_value):
            for labels in [key for key in family._metrics if key[0] == model]:
                family.remove(*labels)

    def forget(self, model: str) -> None:
        """Drop every series of ``model`` (this process no longer monitors it: another one exports them)."""
        labelled: tuple[Gauge | Counter, ...] = (
            self._score,
            self._threshold,
            self._detected,
            self._p_value,
            self._tests,
            self._alarms,
            self._ert,
            self._embeddings_skipped,
        )
        for family in labelled:
            for labels in [key for key in family._metrics if key[0] == model]:
                family.remove(*labels)
        per_model: tuple[Histogram | Counter, ...] = (self._distance, self._skipped)
        for single in per_model:
            if (model,) in single._metrics:
                single.remove(model)

    def skipped(self, model: str) -> Counter:
        """The model's counter of skipped events (handed to its ingest buffer)."""
        return self._skipped.labels(model)

    def embeddings_skipped(self, model: str, *, missing: int, other_width: int, too_large: int = 0) -> None:
        """Count events whose outputs were examined but not their embedding."""
        for reason, count in (("missing", missing), ("width", other_width), ("too_large", too_large)):
            if count:
                self._embeddings_skipped.labels(model, reason).inc(count)

    def distance_histogram(self, model: str) -> Histogram:
        return self._distance.labels(model)


class Tally:
    """A counter's increments, also summed here: what one call counted (:meth:`DriftMonitor.update
    <monitors.drift.monitor.DriftMonitor.update>` tells the events it examined from those it skipped)."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self.count = 0

    def inc(self, amount: int = 1) -> None:
        self._counter.inc(amount)
        self.count += amount
