"""A monitor that hands a model over stops exporting every per-model series of it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from monitors.fleet.metrics import MonitorMetrics


def test_forgetting_a_model_removes_each_of_its_per_model_series() -> None:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    per_model = [
        family
        for family in vars(metrics).values()
        if isinstance(family, Counter | Gauge) and family._labelnames == ("model",)
    ]
    assert len(per_model) >= 7
    for family in per_model:
        family.labels("m").inc()
        family.labels("kept").inc()

    metrics.forget("m")

    models = {sample.labels.get("model") for metric in registry.collect() for sample in metric.samples} - {None}
    assert models == {"kept"}
