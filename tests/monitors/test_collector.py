from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitors.calibration import calibration_of
from monitors.cohorts import CohortGuard
from monitors.collector import QualityCollector, SeriesFigures
from monitors.quality import quality_of
from monitors.records import LabelledPrediction
from monitors.series import SeriesKey
from monitors.window import WindowStore


def scrape(registry: CollectorRegistry) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Parse the exposition text back: {sample name: {sorted labels: value}}."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def measured(store: WindowStore, registry: CollectorRegistry, **settings: int) -> QualityCollector:
    """A collector of ``store`` on ``registry`` that has published the figures of model ``digits``."""
    collector = QualityCollector(store=store, registry=registry, **settings)
    _, figures = collector.measure("digits")
    collector.publish("digits", figures)
    return collector


def key(cohort: str, value: str | None = None, **extra: str) -> tuple[tuple[str, str], ...]:
    """The sorted labels of a series of model ``digits`` version ``v1``: cohort ``all`` (value ``all``), or a key
    and its value."""
    labels = {"model": "digits", "version": "v1", "cohort": cohort, "value": value or cohort, **extra}
    return tuple(sorted(labels.items()))


@pytest.fixture
def store() -> WindowStore:
    rng = np.random.default_rng(3)
    store = WindowStore(guard=CohortGuard(keys=["region"], max_values_per_key=2))
    for i in range(600):
        probs = rng.dirichlet(np.ones(3))
        predicted = int(probs.argmax())
        region = ("eu", "us", "ap", "sa")[i % 4]
        correct = rng.random() < (0.9 if region == "eu" else 0.5)
        store.append(
            LabelledPrediction(
                model="digits",
                version="v1",
                predicted=predicted,
                confidence=float(probs.max()),
                label=predicted if correct else (predicted + 1) % 3,
                time_s=float(i),
                cohort={"region": region, "device": "phone"},
                probabilities=probs,
            )
        )
    return store


def test_scrape_round_trip(store: WindowStore) -> None:
    registry = CollectorRegistry()
    measured(store, registry)

    samples = scrape(registry)

    cohorts = {(dict(labels)["cohort"], dict(labels)["value"]) for labels in samples["vai_accuracy"]}
    assert cohorts == {("all", "all"), ("region", "eu"), ("region", "us"), ("region", "__other__")}
    (records,) = [s.records for s in store.snapshots("digits") if s.key == SeriesKey("digits", "v1", "region=eu")]
    calibration, quality = calibration_of(records), quality_of(records)
    eu = key("region", "eu")
    assert samples["vai_calibration_ece"][eu] == pytest.approx(calibration.ece)
    assert samples["vai_calibration_mce"][eu] == pytest.approx(calibration.mce)
    assert samples["vai_brier_score"][eu] == pytest.approx(calibration.brier_score)
    assert samples["vai_accuracy"][eu] == pytest.approx(quality.accuracy.value)
    assert samples["vai_accuracy_lower"][eu] == pytest.approx(quality.accuracy.lower)
    assert samples["vai_accuracy_upper"][eu] == pytest.approx(quality.accuracy.upper)
    assert samples["vai_cohort_window_events"][key("all")] == 600
    assert samples["vai_cohort_labelled_total"][key("region", "__other__")] == 300
    assert samples["vai_accuracy"][key("region", "eu")] > samples["vai_accuracy"][key("region", "__other__")]
    for cls in quality.classes:
        assert samples["vai_class_recall"][key("region", "eu", **{"class": str(cls.class_index)})] == pytest.approx(
            cls.recall
        )


def test_metric_types(store: WindowStore) -> None:
    registry = CollectorRegistry()
    measured(store, registry)
    types = {f.name: f.type for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert types["vai_cohort_labelled"] == "counter"
    assert types["vai_calibration_ece"] == "gauge"


def test_empty_store_exposes_no_samples() -> None:
    registry = CollectorRegistry()
    QualityCollector(store=WindowStore(guard=CohortGuard(keys=[], max_values_per_key=1)), registry=registry)
    assert all(not f.samples for f in text_string_to_metric_families(generate_latest(registry).decode()))


def test_no_brier_without_probability_vectors() -> None:
    store = WindowStore(guard=CohortGuard(keys=[], max_values_per_key=1))
    store.append(LabelledPrediction(model="digits", version="v1", predicted=1, confidence=0.7, label=1, time_s=0.0))
    registry = CollectorRegistry()
    measured(store, registry)
    samples = scrape(registry)
    assert "vai_brier_score" not in samples
    assert "vai_brier_count" not in samples, "no count without its figure"
    assert samples["vai_calibration_ece"][key("all")] == pytest.approx(0.3)


def test_the_brier_score_comes_with_the_count_of_events_it_rests_on() -> None:
    """Events without a probability vector count in the ECE (``vai_cohort_window_events``) but not in the Brier
    score: its own count says how much data it rests on."""
    store = WindowStore(guard=CohortGuard(keys=[], max_values_per_key=1))
    probabilities = np.array([0.2, 0.7, 0.1])
    for i in range(10):
        store.append(
            LabelledPrediction(
                model="digits",
                version="v1",
                predicted=1,
                confidence=0.7,
                label=1,
                time_s=float(i),
                probabilities=probabilities if i < 3 else None,
            )
        )
    registry = CollectorRegistry()
    measured(store, registry)
    samples = scrape(registry)
    assert samples["vai_cohort_window_events"][key("all")] == 10
    assert samples["vai_brier_count"][key("all")] == 3
    assert samples["vai_brier_score"][key("all")] == pytest.approx(0.09 + 0.04 + 0.01)


def test_class_series_capped_by_support() -> None:
    store = WindowStore(guard=CohortGuard(keys=[], max_values_per_key=1))
    for label, count in ((0, 5), (1, 3), (2, 1)):
        for _ in range(count):
            store.append(
                LabelledPrediction(model="digits", version="v1", predicted=label, confidence=0.9, label=label, time_s=0)
            )
    registry = CollectorRegistry()
    measured(store, registry, max_classes=2)
    classes = {dict(labels)["class"] for labels in scrape(registry)["vai_class_precision"]}
    assert classes == {"0", "1"}


def test_a_scrape_exports_what_was_published_and_never_reads_the_windows(
    store: WindowStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The windows' lock is the one appends take on the event loop: a scrape must not wait on it, or compute."""
    registry = CollectorRegistry()
    collector = QualityCollector(store=store, registry=registry)
    snapshots, figures = collector.measure("digits")
    assert figures == [SeriesFigures.of(s) for s in snapshots]
    collector.publish("digits", figures)

    def refused(*_: object) -> None:
        raise AssertionError("a scrape read the windows")

    monkeypatch.setattr(store, "snapshots", refused)
    store.append(LabelledPrediction(model="digits", version="v1", predicted=0, confidence=0.9, label=0, time_s=0.0))
    assert scrape(registry)["vai_cohort_window_events"][key("all")] == 600, "the last published figures"
    collector.publish("digits", [])
    assert "vai_cohort_window_events" not in scrape(registry)


def test_a_forgotten_model_leaves_the_scrape(store: WindowStore) -> None:
    registry = CollectorRegistry()
    collector = measured(store, registry)
    assert scrape(registry)["vai_accuracy"]
    collector.forget("digits")
    assert "vai_accuracy" not in scrape(registry)
