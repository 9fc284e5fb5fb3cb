"""BatchHistogram exposes exactly what prometheus_client's Histogram would for the same values."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from service.histograms import BatchHistogram

BUCKETS = (0.1, 0.5, 1.0, 4.0)


def _exposition(registry: CollectorRegistry) -> list[str]:
    lines = generate_latest(registry).decode().splitlines()
    return sorted(line for line in lines if not line.startswith("#") and "_created" not in line)


def test_same_exposition_as_prometheus_client() -> None:
    rng = np.random.default_rng(0)
    values = {("a", "v1"): [*rng.uniform(0, 5, 300).tolist(), *BUCKETS, 0.0, *BUCKETS], ("b", "v2"): [7.5]}
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("x_seconds", "Help.", ["model", "version"], buckets=BUCKETS, registry=theirs)
    batch = BatchHistogram("x_seconds", "Help.", ["model", "version"], buckets=BUCKETS, registry=ours)
    for labels, observed in values.items():
        for value in observed:
            reference.labels(*labels).observe(value)
        half = len(observed) // 2
        batch.observe_many(labels, observed[:half])  # numpy's way
        for value in observed[half : half + 5]:
            batch.observe_many(labels, [value])  # the few-values way
        batch.observe_many(labels, observed[half + 5 :])
    assert _exposition(ours) == _exposition(theirs)


def test_wrong_labels_and_buckets_are_refused() -> None:
    histogram = BatchHistogram("y", "Help.", ["model"], buckets=BUCKETS, registry=CollectorRegistry())
    with pytest.raises(ValueError, match="expected labels"):
        histogram.observe_many(("a", "b"), [1.0])
    with pytest.raises(ValueError, match="increasing"):
        BatchHistogram("z", "Help.", ["model"], buckets=(1.0, 0.5), registry=CollectorRegistry())


def test_a_second_histogram_of_the_same_name_is_refused() -> None:
    registry = CollectorRegistry()
    BatchHistogram("dup", "Help.", ["model"], buckets=BUCKETS, registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        BatchHistogram("dup", "Help.", ["model"], buckets=BUCKETS, registry=registry)
