"""The monitor's own metrics: how much it has examined and how far behind it is.

| metric | type | labels | meaning |
| --- | --- | --- | --- |
| ``vai_monitor_records_examined_total`` | counter | model | records the detectors examined or the warm-up collected |
| ``vai_monitor_labelled_records_total`` | counter | model | labelled records taken into the windows |
| ``vai_monitor_records_invalid_total`` | counter | model | feed entries that did not decode (skipped) |
| ``vai_monitor_backlog_records`` | gauge | model | records published and not yet examined |
| ``vai_monitor_oldest_waiting_seconds`` | gauge | model | how long the oldest record not yet examined has waited |
| ``vai_monitor_owned`` | gauge | model | 1 on the monitor process that owns the model |
| ``vai_drift_monitoring`` | gauge | model | 1 while the drift detectors watch; 0 warming up or calibrating |
| ``vai_drift_warmup_records`` | gauge | model | records collected for the reference while warming up (else 0) |
| ``vai_drift_calibration_failed`` | gauge | model | 1: last calibration failed or left detectors out |
| ``vai_monitor_members`` | gauge | | monitor processes alive, as this one sees them |
| ``vai_monitor_drift_configs`` | gauge | | distinct drift settings among the live monitors (above 1: they differ) |
| ``vai_redis_used_memory_bytes``, ``vai_redis_maxmemory_bytes`` | gauge | | how full the shared Redis is |
| ``vai_estimated_accuracy`` | gauge | model, version, cohort, value | accuracy estimated from confidences alone (ATC) |
| ``vai_estimated_accuracy_predictions`` | gauge | model, version, cohort, value | recent predictions it is a share of |
| ``vai_estimated_accuracy_fitted_on`` | gauge | model, version, cohort, value | labels its threshold was fitted on |
| ``vai_calibration_temperature`` | gauge | model, version | temperature minimising the labelled window's NLL |
| ``vai_calibration_temperature_count`` | gauge | model, version | probability vectors T was fitted on |
| ``vai_calibration_ece_after_temperature`` | gauge | model, version | ECE the window would have after that scaling |
| ``vai_monitor_projection_seconds`` | gauge | model, method | compute time of the latest embedding projection |

Only the owner of a model exports its series, so each has exactly one source in the fleet. ``cohort`` and
``value`` are a slice's key and value as in the sidecar's ``vai_cohort_events_total`` (the whole model version:
``all`` and ``all``, see :mod:`monitors.cohorts`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from monitors.cohorts import LABELS, slice_labels
from monitors.fleet.results import DriftStatus, QualityReport

ESTIMATE_LABELS = ("model", "version", *LABELS)


class MonitorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        model = ("model",)
        self.examined = Counter(
            "vai_monitor_records_examined",
            "Records examined by the drift detectors or collected into the warm-up.",
            model,
            registry=registry,
        )
        self.labelled = Counter(
            "vai_monitor_labelled_records", "Labelled records taken into the windows.", model, registry=registry
        )
        self.invalid = Counter(
            "vai_monitor_records_invalid", "Feed entries that did not decode.", model, registry=registry
        )
        self.duplicates = Counter(
            "vai_monitor_labelled_duplicates",
            "Labelled records of a request already taken (a writer re-sent a batch whose reply timed out), left out.",
            model,
            registry=registry,
        )
        self.backlog = Gauge(
            "vai_monitor_backlog_records", "Records published and not yet examined.", model, registry=registry
        )
        self.oldest = Gauge(
            "vai_monitor_oldest_waiting_seconds",
            "How long the oldest record not yet examined has waited since it entered the feed (Redis's clock).",
            model,
            registry=registry,
        )
        self.owned = Gauge("vai_monitor_owned", "1 on the process that owns the model.", model, registry=registry)
        self.drift_monitoring = Gauge(
            "vai_drift_monitoring",
            "1 while the model's drift detectors watch its records; 0 while warming up or calibrating.",
            model,
            registry=registry,
        )
        self.drift_warmup = Gauge(
            "vai_drift_warmup_records",
            "Records collected for the drift reference while warming up (VAI_DRIFT__REFERENCE_EVENTS needed); 0 after.",
            model,
            registry=registry,
        )
        self.drift_calibration_failed = Gauge(
            "vai_drift_calibration_failed",
            "1 while the model's last drift calibration failed, or left detectors out (too few distinct embeddings: "
            "the output tests run alone); why is calibration_error in GET /v1/models/{model}/drift.",
            model,
            registry=registry,
        )
        self.members = Gauge("vai_monitor_members", "Monitor processes alive.", registry=registry)
        self.drift_configs = Gauge(
            "vai_monitor_drift_configs",
            "Distinct drift settings among the live monitors: above 1 they differ (uploads are checked against the "
            "strictest; a model keeps the settings it was calibrated with when another monitor takes it).",
            registry=registry,
        )
        self.estimated_accuracy = Gauge(
            "vai_estimated_accuracy",
            "Accuracy estimated from the confidences of recent predictions (ATC): an estimate, not a measurement.",
            ESTIMATE_LABELS,
            registry=registry,
        )
        self.estimate_predictions = Gauge(
            "vai_estimated_accuracy_predictions",
            "Recent predictions, labelled or not, vai_estimated_accuracy is the share of: what it rests on.",
            ESTIMATE_LABELS,
            registry=registry,
        )
        self.estimate_fitted_on = Gauge(
            "vai_estimated_accuracy_fitted_on",
            "Labelled predictions the threshold of vai_estimated_accuracy was fitted on (its cohort's, or all's).",
            ESTIMATE_LABELS,
            registry=registry,
        )
        self.temperature = Gauge(
            "vai_calibration_temperature",
            "Temperature minimising the NLL of the labelled window.",
            ("model", "version"),
            registry=registry,
        )
        self.temperature_count = Gauge(
            "vai_calibration_temperature_count",
            "Labelled probability vectors the temperature (and the ECE after it) was fitted on.",
            ("model", "version"),
            registry=registry,
        )
        self.ece_after_temperature = Gauge(
            "vai_calibration_ece_after_temperature",
            "ECE of the labelled window after temperature scaling.",
            ("model", "version"),
            registry=registry,
        )
        self._estimate_series: dict[str, dict[Gauge, set[tuple[str, ...]]]] = {}
        self.projection_seconds = Gauge(
            "vai_monitor_projection_seconds",
            "Compute time of the latest embedding projection (UMAP: fit included when it fitted).",
            ("model", "method"),
            registry=registry,
        )

    def publish_estimates(self, report: QualityReport) -> None:
        """Set the estimate and temperature gauges of ``report``'s model, each with the count it rests on; drop its
        series the report no longer has."""
        model = report.model
        estimates = [((model, e.version, *slice_labels(e.cohort)), e) for e in report.estimates]
        values: dict[Gauge, dict[tuple[str, ...], float]] = {
            self.estimated_accuracy: {labels: e.estimated_accuracy for labels, e in estimates},
            self.estimate_predictions: {labels: e.predictions for labels, e in estimates},
            self.estimate_fitted_on: {labels: e.fitted_on for labels, e in estimates},
            self.temperature: {(report.model, t.version): t.temperature for t in report.temperature},
            self.temperature_count: {(report.model, t.version): t.count for t in report.temperature},
            self.ece_after_temperature: {(report.model, t.version): t.ece_after for t in report.temperature},
        }
        seen = self._estimate_series.setdefault(report.model, {})
        for family, series in values.items():
            for labels in seen.get(family, set()) - series.keys():
                family.remove(*labels)
            for labels, value in series.items():
                family.labels(*labels).set(value)
            seen[family] = set(series)

    def publish_drift_state(self, status: DriftStatus) -> None:
        """The drift monitor's state as the owner just published it (``/drift``), for alerts and dashboards."""
        model = status.model
        self.drift_monitoring.labels(model).set(1 if status.state == "monitoring" else 0)
        self.drift_warmup.labels(model).set(status.warmup_collected or 0)
        self.drift_calibration_failed.labels(model).set(1 if status.calibration_error else 0)

    def forget(self, model: str) -> None:
        families = (self.examined, self.labelled, self.invalid, self.duplicates, self.backlog, self.oldest, self.owned)
        drift = (self.drift_monitoring, self.drift_warmup, self.drift_calibration_failed)
        for family in (*families, *drift):
            if (model,) in family._metrics:
                family.remove(model)
        for estimated, series in self._estimate_series.pop(model, {}).items():
            for labels in series:
                estimated.remove(*labels)
        for placed in [key for key in self.projection_seconds._metrics if key[0] == model]:
            self.projection_seconds.remove(*placed)
