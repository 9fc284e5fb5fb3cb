"""The dashboard's cohort joins, evaluated by promtool on what the real exporters put on the wire.

The sidecar's cohort counter (``service.ingest.cohorts``) and the monitor's windows and collector
(``monitors.window``, ``monitors.collector``) take the same events, their cohort values decided for the fleet; their
samples become promtool input series (the sidecar's under job vai-sidecar, the monitor's under vai-monitor), and
the dashboard's join queries must give, per (model, cohort, value), what the events say.
"""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from monitors.cohorts import CohortGuard
from monitors.collector import QualityCollector
from monitors.records import LabelledPrediction
from monitors.window import WindowStore
from service.events.schemas import EventIn
from service.ingest.cohorts import CohortCounts
from service.metrics import IngestMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "vai-sidecar.json"
MINUTES = 60
"""Input series last an hour at one sample a minute: a counter grows by its exported value each minute."""
ADMITTED = {"region": ["eu", "us", "ap", "af"], "device": ["phone", "desktop"]}
"""The fleet's decision: ``sa``, the fifth region, counts as ``__other__``."""
REGIONS = {"eu": (50, 20), "us": (30, 30), "ap": (15, 6), "af": (3, 0), "sa": (5, 5)}
"""Per region, the events and how many of them are labelled (the first ones): ``af`` has none, so the monitor
exports no labelled counter for it, and its share is 0, not missing."""

STEP = 0.001
"""What the shares are rounded to."""

Slice = tuple[str, str]
"""(cohort, value) of model digits."""


@dataclass(frozen=True)
class Event:
    region: str
    device: str
    labelled: bool

    def slices(self) -> list[Slice]:
        """The slices the fleet's decision puts it in."""
        return [("region", self.region if self.region != "sa" else "__other__"), ("device", self.device)]


def _events() -> list[Event]:
    found: list[Event] = []
    for region, (count, labelled) in REGIONS.items():
        for i in range(count):
            found.append(Event(region, "phone" if len(found) % 5 < 3 else "desktop", i < labelled))
    return found


def _guard() -> CohortGuard:
    guard = CohortGuard(keys=tuple(ADMITTED), max_values_per_key=len(ADMITTED["region"]), fleet=True)
    for key, values in ADMITTED.items():
        guard.admit("digits", key, values)
    return guard


def _exported(events: list[Event]) -> tuple[CollectorRegistry, CollectorRegistry]:
    """The sidecar's and the monitor's registries once both have taken ``events``."""
    sidecar, monitor = CollectorRegistry(), CollectorRegistry()
    counts = CohortCounts(IngestMetrics(sidecar), _guard())
    windows = WindowStore(guard=_guard())
    collector = QualityCollector(store=windows, registry=monitor)
    counts.count(
        [
            EventIn(model="digits", request_id=f"r{i}", cohort={"region": e.region, "device": e.device})
            for i, e in enumerate(events)
        ]
    )
    for i, e in enumerate(events):
        if e.labelled:
            cohort = {"region": e.region, "device": e.device}
            windows.append(LabelledPrediction("digits", "1", i % 2, 0.8, 0, float(i), cohort))
    collector.publish("digits", collector.measure("digits")[1])
    return sidecar, monitor


def _input_series(registry: CollectorRegistry, job: str, names: set[str]) -> list[dict[str, str]]:
    series = []
    for family in registry.collect():
        for sample in family.samples:
            if sample.name not in names:
                continue
            labels = {"job": job, "instance": f"{job}:8000", **sample.labels}
            selector = ", ".join(f'{key}="{value}"' for key, value in labels.items())
            grows = family.type == "counter"
            values = f"0+{sample.value:g}x{MINUTES}" if grows else f"{sample.value!r}x{MINUTES}"
            series.append({"series": f"{sample.name}{{{selector}}}", "values": values})
    return series


def _dashboard_expr(title: str) -> str:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    (panel,) = [p for p in dashboard["panels"] if p.get("title") == title]
    (target,) = panel["targets"]
    expr: str = target["expr"]
    return expr.replace("$model", ".*").replace("$cohort", ".*")


def _rounded(share: float) -> float:
    """``share`` as PromQL's ``round(share, STEP)`` gives it."""
    return math.floor(share * (1 / STEP) + 0.5) / (1 / STEP)


def _labels(cohort: str, value: str, **more: str) -> str:
    labels = {"cohort": cohort, "model": "digits", "value": value, **more}
    return "{" + ", ".join(f'{key}="{labels[key]}"' for key in sorted(labels)) + "}"


def test_the_dashboards_cohort_joins_match_the_events(promtool: str, tmp_path: Path) -> None:
    events = _events()
    sidecar, monitor = _exported(events)
    per_slice: dict[Slice, list[Event]] = {}
    for e in events:
        for at in e.slices():
            per_slice.setdefault(at, []).append(e)
    accuracy = {
        (s.labels["cohort"], s.labels["value"]): s.value
        for family in monitor.collect()
        for s in family.samples
        if s.name == "vai_accuracy"
    }
    busiest = sorted(per_slice, key=lambda at: -len(per_slice[at]))[:5]
    left_out = ("region", "__other__")
    assert len(per_slice) == 7 and left_out not in busiest and left_out in accuracy, "the top 5 leave a slice out"
    assert ("region", "af") not in accuracy, "a slice without labels has no figures of the monitor"

    share = [
        {"labels": _labels(*at), "value": _rounded(sum(e.labelled for e in found) / len(found))}
        for at, found in sorted(per_slice.items())
    ]
    share_expr = _dashboard_expr("Labelled share of each cohort's events")
    top = [{"labels": _labels(*at, version="1"), "value": accuracy[at]} for at in sorted(busiest)]
    spec = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": _input_series(sidecar, "vai-sidecar", {"vai_cohort_events_total"})
                + _input_series(monitor, "vai-monitor", {"vai_cohort_labelled_total", "vai_accuracy"}),
                "promql_expr_test": [
                    {
                        # Rounded as the expected shares are: two rates' quotient is off in the last bit.
                        "expr": f"round({share_expr}, {STEP})",
                        "eval_time": f"{MINUTES}m",
                        "exp_samples": share,
                    },
                    {
                        "expr": _dashboard_expr("Accuracy of the busiest cohorts"),
                        "eval_time": f"{MINUTES}m",
                        "exp_samples": top,
                    },
                ],
            }
        ],
    }
    path = tmp_path / "cohort_join_test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    result = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
