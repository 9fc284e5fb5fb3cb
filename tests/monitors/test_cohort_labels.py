"""The monitor's cohort series carry the labels the sidecar counts the same events under in
``vai_cohort_events_total``: the cohort key as ``cohort`` and its value (or ``__other__``) as ``value``, so PromQL
joins them ``on(model, cohort, value)``; the whole model version is ``cohort="all", value="all"``, a pair the
sidecar's counter never has. Real code on both sides, the values admitted for the fleet in a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from common.redis import connect
from monitors.cohort_admission import CohortAdmission
from monitors.cohorts import CohortGuard, slice_labels
from monitors.collector import QualityCollector
from monitors.fleet.metrics import MonitorMetrics
from monitors.fleet.reports import quality_report
from monitors.prediction_window import PredictionWindow
from monitors.records import LabelledPrediction
from monitors.window import WindowStore
from service.events.schemas import EventIn
from service.ingest.cohorts import CohortCounts
from service.metrics import IngestMetrics

pytestmark = pytest.mark.anyio

KEYS = ("region", "device")
CAP = 2
"""Values per key: of four regions, two are admitted and two count as ``__other__``."""
REGIONS = ("eu", "us", "ap", "sa")
SLICE_FAMILIES = (
    "vai_calibration_ece",
    "vai_calibration_mce",
    "vai_brier_score",
    "vai_brier_count",
    "vai_accuracy",
    "vai_accuracy_lower",
    "vai_accuracy_upper",
    "vai_cohort_window_events",
    "vai_cohort_labelled_total",
    "vai_class_precision",
    "vai_class_recall",
    "vai_estimated_accuracy",
    "vai_estimated_accuracy_predictions",
    "vai_estimated_accuracy_fitted_on",
)
"""Every series of the monitor sliced by cohort (``vai_cohort_labelled`` on the wire as ``_total``)."""

Slice = tuple[str, str, str]
"""(model, cohort, value)."""


def _events() -> list[EventIn]:
    """Labelled events of model ``digits``: regions in turn, two devices, one key outside the allowlist, and a few
    without a cohort."""
    rng = np.random.default_rng(7)
    events = []
    for i in range(160):
        p = rng.dirichlet(np.ones(3))
        cohort = {"region": REGIONS[i % 4], "device": ("phone", "desktop")[i % 2], "tier": "free"}
        events.append(
            EventIn(
                model="digits",
                request_id=f"r{i}",
                probabilities=p.tolist(),
                cohort=None if i % 40 == 39 else cohort,
                label=int(p.argmax()) if i % 3 else (int(p.argmax()) + 1) % 3,
            )
        )
    return events


@dataclass
class Sidecar:
    """The sidecar's cohort counter, as ``service.sidecar`` builds it (a fleet guard and its admission)."""

    registry: CollectorRegistry
    counts: CohortCounts
    admission: CohortAdmission


@dataclass
class Monitor:
    """The owning monitor's windows, collector and estimate gauges, as ``monitors.fleet.process`` builds them."""

    registry: CollectorRegistry
    windows: WindowStore
    recent: PredictionWindow
    collector: QualityCollector
    metrics: MonitorMetrics
    admission: CohortAdmission

    def take(self, event: EventIn) -> None:
        """What the monitor makes of an event's records: a labelled prediction and a recent confidence."""
        p = np.asarray(event.probabilities, dtype=np.float64)
        cohort = event.cohort or {}
        assert event.label is not None
        self.windows.append(
            LabelledPrediction(
                event.model, event.model_version, int(p.argmax()), float(p.max()), event.label, 0.0, cohort, p
            )
        )
        self.recent.append(event.model, event.model_version, cohort, float(p.max()))

    def publish(self, model: str) -> None:
        snapshots, figures = self.collector.measure(model)
        self.collector.publish(model, figures)
        report = quality_report(
            model, snapshots, window_s=60, owner="me", recent=self.recent.snapshots(model), figures=figures
        )
        self.metrics.publish_estimates(report)


@pytest.fixture
async def processes(redis_url: str) -> AsyncIterator[tuple[Sidecar, Monitor]]:
    client = connect(redis_url, timeout_s=0.5)
    sidecar_registry, monitor_registry = CollectorRegistry(), CollectorRegistry()
    counts = CohortCounts(IngestMetrics(sidecar_registry), CohortGuard(keys=KEYS, max_values_per_key=CAP, fleet=True))
    guard = CohortGuard(keys=KEYS, max_values_per_key=CAP, fleet=True)
    windows, recent = WindowStore(guard=guard), PredictionWindow(guard=guard)
    try:
        yield (
            Sidecar(sidecar_registry, counts, CohortAdmission(client, counts.guard, [counts])),
            Monitor(
                monitor_registry,
                windows,
                recent,
                QualityCollector(store=windows, registry=monitor_registry),
                MonitorMetrics(monitor_registry),
                CohortAdmission(client, guard, [windows, recent]),
            ),
        )
    finally:
        await client.aclose()


def _samples(registry: CollectorRegistry, name: str) -> list[dict[str, str]]:
    return [dict(s.labels) for family in registry.collect() for s in family.samples if s.name == name]


def _counted(registry: CollectorRegistry, name: str) -> dict[Slice, float]:
    """``name``'s samples summed per (model, cohort, value), over every other label."""
    found: dict[Slice, float] = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name == name:
                at = (s.labels["model"], s.labels["cohort"], s.labels["value"])
                found[at] = found.get(at, 0.0) + s.value
    return found


async def test_the_monitor_labels_each_slice_as_the_sidecar_counts_its_events(
    processes: tuple[Sidecar, Monitor],
) -> None:
    sidecar, monitor = processes
    events = _events()
    # The sidecar sees the values first (its order admits eu and us); the monitor sees the events the other way
    # round, so by its own order it would keep sa and ap.
    sidecar.counts.count(events)
    await sidecar.admission.settle()
    for event in reversed(events):
        monitor.take(event)
    await monitor.admission.settle()
    monitor.publish("digits")

    counted = _counted(sidecar.registry, "vai_cohort_events_total")
    assert set(counted) == {
        ("digits", "region", "eu"),
        ("digits", "region", "us"),
        ("digits", "region", "__other__"),
        ("digits", "device", "phone"),
        ("digits", "device", "desktop"),
    }
    whole = ("digits", "all", "all")
    for name in SLICE_FAMILIES:
        samples = _samples(monitor.registry, name)
        assert samples, f"{name}: no series"
        assert all({"model", "version", "cohort", "value"} <= set(labels) for labels in samples), name
        slices = {(labels["model"], labels["cohort"], labels["value"]) for labels in samples}
        assert whole in slices, name
        assert slices - {whole} == set(counted), name
    # Every event is labelled, so each slice's labelled predictions are its events: the join gives a share of 1.
    labelled = _counted(monitor.registry, "vai_cohort_labelled_total")
    assert {at: labelled[at] for at in counted} == counted
    assert labelled[whole] == len(events)


@pytest.mark.parametrize(
    ("name", "labels"),
    [
        pytest.param("all", ("all", "all"), id="whole-model"),
        pytest.param("region=eu", ("region", "eu"), id="key-value"),
        pytest.param("region=__other__", ("region", "__other__"), id="other"),
        pytest.param("region=a=b", ("region", "a=b"), id="value-holding-equals"),
    ],
)
def test_slice_labels(name: str, labels: tuple[str, str]) -> None:
    assert slice_labels(name) == labels


def test_a_slice_name_without_a_key_is_refused() -> None:
    with pytest.raises(ValueError, match="no cohort slice"):
        slice_labels("eu")


@pytest.mark.parametrize(
    "key", [pytest.param("all", id="all"), pytest.param("a=b", id="equals"), pytest.param("", id="empty")]
)
def test_a_key_that_would_clash_with_a_label_is_refused(key: str) -> None:
    """``all`` is the whole-model slice's ``cohort`` label: a key of that name would merge with it."""
    with pytest.raises(ValueError, match="VAI_COHORT_KEYS"):
        CohortGuard(keys=["region", key], max_values_per_key=2)
