"""The monitor's own metrics: how much it has examined and how far behind it is.

| metric | type | labels | meaning |
| --- | --- | --- | --- |
| ``vai_monitor_records_examined_total`` | counter | model | records the detectors have examined |
| ``vai_monitor_labelled_records_total`` | counter | model | labelled records taken into the windows |
| ``vai_monitor_records_invalid_total`` | counter | model | feed entries that did not decode (skipped) |
| ``vai_monitor_backlog_records`` | gauge | model | records published and not yet examined |
| ``vai_monitor_oldest_waiting_seconds`` | gauge | model | age of the oldest record not yet examined |
| ``vai_monitor_owned`` | gauge | model | 1 on the monitor process that owns the model |
| ``vai_monitor_members`` | gauge | | monitor processes alive, as this one sees them |

Only the owner of a model exports its series, so each has exactly one source in the fleet.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class MonitorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        model = ("model",)
        self.examined = Counter(
            "vai_monitor_records_examined", "Records examined by the drift detectors.", model, registry=registry
        )
        self.labelled = Counter(
            "vai_monitor_labelled_records", "Labelled records taken into the windows.", model, registry=registry
        )
        self.invalid = Counter(
            "vai_monitor_records_invalid", "Feed entries that did not decode.", model, registry=registry
        )
        self.backlog = Gauge(
            "vai_monitor_backlog_records", "Records published and not yet examined.", model, registry=registry
        )
        self.oldest = Gauge(
            "vai_monitor_oldest_waiting_seconds", "Age of the oldest record not yet examined.", model, registry=registry
        )
        self.owned = Gauge("vai_monitor_owned", "1 on the process that owns the model.", model, registry=registry)
        self.members = Gauge("vai_monitor_members", "Monitor processes alive.", registry=registry)

    def forget(self, model: str) -> None:
        for family in (self.examined, self.labelled, self.invalid, self.backlog, self.oldest, self.owned):
            if (model,) in family._metrics:
                family.remove(model)
