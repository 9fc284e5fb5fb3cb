"""deploy/grafana: the dashboard is well formed, reads only series the sidecar exports, every query
is valid PromQL, and the provisioning files point at each other and at the compose stack."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "vai-sidecar.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "vai.yml"
COMPOSE = ROOT / "docker-compose.yml"

METRIC_NAME = re.compile(r"\bvai_[a-z0-9_]+\b")
DATASOURCE_REFS = ({"type": "prometheus", "uid": "${datasource}"}, {"type": "prometheus", "uid": "prometheus"})
# What Grafana substitutes before a query reaches Prometheus, for checking the PromQL offline.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$model": ".*",
    "$cohort": ".*",
}


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _queries() -> list[dict[str, Any]]:
    return [panel for panel in _panels(_dashboard()["panels"]) if panel.get("type") != "row"]


def _exprs() -> list[str]:
    """Every PromQL expression of the dashboard: the panels' queries and the annotations'."""
    panels = [target["expr"] for panel in _queries() for target in panel.get("targets", [])]
    return panels + [annotation["expr"] for annotation in _dashboard()["annotations"]["list"] if "expr" in annotation]


def _variables() -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in _dashboard()["templating"]["list"]}


def _variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query", "")
    return str(query["query"] if isinstance(query, dict) else query)


@pytest.mark.parametrize(
    "panel", [pytest.param(panel, id=panel.get("title") or f"id-{panel.get('id')}") for panel in _queries()]
)
def test_panel_has_a_title_and_queries(panel: dict[str, Any]) -> None:
    assert panel.get("title", "").strip()
    assert panel.get("description", "").strip(), "on-call needs to know what a panel shows"
    targets = panel.get("targets", [])
    assert targets, "a panel without a query shows nothing"
    for target in targets:
        assert target.get("expr", "").strip()
        assert target.get("datasource", panel.get("datasource")) in DATASOURCE_REFS
    ref_ids = [target["refId"] for target in targets]
    assert len(ref_ids) == len(set(ref_ids))


def test_panel_ids_are_unique() -> None:
    ids = [panel["id"] for panel in _panels(_dashboard()["panels"])]
    assert len(ids) == len(set(ids)), sorted(ids)


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in _panels(_dashboard()["panels"]):
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_dashboard_reads_only_exported_series(exported_names: frozenset[str]) -> None:
    texts = _exprs() + [_variable_query(variable) for variable in _variables().values()]
    used = {name for text in texts for name in METRIC_NAME.findall(text)}
    assert used <= exported_names, f"not exported by the sidecar: {sorted(used - exported_names)}"
    # The panels named in the brief, by the series behind them.
    assert used >= {
        "vai_events_total",
        "vai_events_rejected_total",
        "vai_prediction_confidence_bucket",
        "vai_low_confidence_total",
        "vai_logit_margin_bucket",
        "vai_cohort_events_total",
        "vai_sampled_total",
        "vai_sample_dropped_total",
        "vai_queue_length",
        "vai_queue_max_length",
        "vai_redis_up",
        "vai_buffer_events",
        # drift, calibration, cohort quality
        "vai_drift_score",
        "vai_drift_threshold",
        "vai_drift_detected",
        "vai_calibration_ece",
        "vai_brier_score",
        "vai_accuracy",
        "vai_accuracy_lower",
        "vai_accuracy_upper",
        "vai_cohort_window_events",
        # the attribution pipeline and explanation trust
        "vai_explanations_total",
        "vai_explanation_lag_seconds_bucket",
        "vai_dead_letters_total",
        "vai_worker_redis_up",
        "vai_attribution_sanity_similarity",
        "vai_explanation_fidelity",
        "vai_attribution_agreement",
        # the monitor
        "vai_monitor_records_examined_total",
        "vai_monitor_backlog_records",
        "vai_monitor_oldest_waiting_seconds",
        "vai_monitor_owned",
        "vai_feed_records_trimmed_total",
        "vai_labels_total",
        # what the drift alerts read
        "vai_drift_tests_total",
        "vai_drift_alarms_total",
        "vai_drift_ert_events",
    }


def test_rows_cover_every_signal() -> None:
    rows = [panel["title"] for panel in _dashboard()["panels"] if panel["type"] == "row"]
    assert rows == [
        "Health",
        "Traffic",
        "Prediction quality",
        "Sampling pipeline",
        "Drift",
        "Calibration",
        "Cohort quality",
        "Attribution pipeline",
        "Explanation trust",
        "Layer health",
        "Monitor",
    ]


def _links() -> list[tuple[str, str]]:
    """Every link of the dashboard, as (where, url): the dashboard's, the panels' and their data links."""
    found = [("dashboard", link["url"]) for link in _dashboard()["links"]]
    for panel in _queries():
        found += [(panel["title"], link["url"]) for link in panel.get("links", [])]
        field = panel.get("fieldConfig", {})
        found += [(panel["title"], link["url"]) for link in field.get("defaults", {}).get("links", [])]
        for override in field.get("overrides", []):
            for prop in override["properties"]:
                if prop["id"] == "links":
                    found += [(panel["title"], link["url"]) for link in prop["value"]]
    return found


OVERVIEW_LINK = "${sidecar}/ui/models/${__field.labels.model}"
"""A model's overview page from the series clicked: a data link, whose model label is always one model's name."""


def test_drift_alarms_are_annotations_and_the_viewer_is_linked() -> None:
    annotations = {a["name"]: a for a in _dashboard()["annotations"]["list"] if "expr" in a}
    assert 'detector=~"mmd_online|lsdd_online"' in annotations["Online drift alarms"]["expr"]
    assert 'alertname=~"VaiModelDriftDetected|VaiModelOutputDriftDetected"' in annotations["Drift alerts"]["expr"]
    assert {"${sidecar}/ui", "${sidecar}/openapi.json"} <= {link["url"] for link in _dashboard()["links"]}
    assert _variables()["sidecar"]["type"] == "textbox"
    linked = [
        panel["title"] for panel in _queries() if any(link["url"] == "${sidecar}/ui" for link in panel.get("links", []))
    ]
    assert len(linked) >= 3, linked
    overview = {where for where, url in _links() if url == OVERVIEW_LINK}
    assert {"Online detector: score vs threshold", "Alarm share per detector", "Dead units per layer"} <= overview


def test_no_link_is_built_from_the_model_variable() -> None:
    """$model is a regex (".*" for All) or a list when several models are chosen: /ui/models/.* is a 422."""
    assert [(where, url) for where, url in _links() if "${model" in url or "$model" in url] == []


@pytest.mark.parametrize(("where", "url"), [pytest.param(w, u, id=f"{w}: {u}") for w, u in sorted(set(_links()))])
def test_every_link_opens_a_page_of_the_sidecar(where: str, url: str) -> None:
    """Each link, as Grafana fills it in (All models chosen; a data link on a series of model digits), answers 200
    from a real sidecar app (no Redis needed: none of these pages reads it)."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import SidecarSettings

    filled = url.replace("${sidecar}", "").replace("${__field.labels.model}", "digits").replace("${model}", ".*")
    assert filled.startswith("/") and "$" not in filled, f"{where}: {url} is not a link to the sidecar"
    client = TestClient(create_app(SidecarSettings(redis_url="redis://127.0.0.1:1")))  # no lifespan: no Redis
    assert client.get(filled).status_code == 200, f"{where}: {url}"


def test_template_variables() -> None:
    variables = _variables()
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    model = variables["model"]
    assert model["type"] == "query"
    assert re.sub(r"\s", "", _variable_query(model)) == "label_values(vai_events_total,model)"
    assert model["multi"] and model["includeAll"]
    # "All" as a regex keeps models that appear after the dashboard was loaded.
    assert model["allValue"] == ".*"
    # Cohort keys as the sidecar counts them; the monitor's series carry the same cohort label.
    cohort = variables["cohort"]
    assert cohort["type"] == "query"
    assert re.sub(r"\s", "", _variable_query(cohort)) == 'label_values(vai_cohort_events_total{model=~"$model"},cohort)'
    assert cohort["multi"] and cohort["includeAll"] and cohort["allValue"] == ".*"


def test_cohort_panels_read_the_slices_by_key_and_value() -> None:
    """Every query of a cohort-sliced series keeps (or joins on) both labels of a slice, cohort and value: one of
    them alone would merge the values of a key."""
    sliced = ("vai_cohort_events_total", "vai_accuracy", "vai_cohort_window_events", "vai_cohort_labelled_total")
    for panel in _queries():
        for target in panel.get("targets", []):
            expr = target["expr"]
            if not any(re.search(rf"\b{name}\b", expr) for name in sliced) or 'cohort="all"' in expr:
                continue
            for grouping in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
                labels = {label.strip() for label in grouping.split(",")}
                assert "cohort" not in labels or "value" in labels, f"{panel['title']}: {expr}"
            assert "{{cohort}}={{value}}" in target["legendFormat"], panel["title"]


def test_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    def substituted(expr: str) -> str:
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
        return expr

    rules = [{"record": f"dashboard:query_{index}", "expr": substituted(expr)} for index, expr in enumerate(_exprs())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_provisioning_matches_the_dashboard_and_compose() -> None:
    datasource = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"][0]
    assert datasource["type"] == "prometheus"
    # The dashboard's datasource variable defaults to the provisioned uid.
    assert _variables()["datasource"]["current"]["value"] == datasource["uid"] == "prometheus"
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in compose

    provider = yaml.safe_load(PROVIDERS.read_text(encoding="utf-8"))["providers"][0]
    mounts = dict(volume.split(":")[:2] for volume in compose["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"


def _unit_kind(unit: str) -> str:
    return {"s": "seconds", "ms": "seconds", "bytes": "bytes", "decbytes": "bytes"}.get(unit, "other")


def _query_kind(expr: str) -> str:
    names = set(METRIC_NAME.findall(expr))
    if names and all(re.search(r"_seconds(_bucket|_sum|_count)?$", name) for name in names):
        return "other" if "_count" in expr and "histogram_quantile" not in expr else "seconds"
    if names and all(re.search(r"_bytes$", name) for name in names):
        return "bytes"
    return "other"


@pytest.mark.parametrize(
    "panel", [pytest.param(p, id=f"{p['id']}-{p['title']}") for p in _queries() if len(p.get("targets", [])) > 1]
)
def test_a_query_in_another_unit_than_the_panels_has_its_own_unit(panel: dict[str, Any]) -> None:
    """Records and seconds on one axis read as one scale: the odd query needs an override with its unit."""
    default = _unit_kind(panel["fieldConfig"]["defaults"].get("unit", ""))
    overridden = {
        override["matcher"]["options"]
        for override in panel["fieldConfig"].get("overrides", [])
        if override["matcher"]["id"] == "byFrameRefID" and any(p["id"] == "unit" for p in override["properties"])
    }
    for target in panel["targets"]:
        if _query_kind(target["expr"]) != default:
            assert target["refId"] in overridden, f"query {target['refId']} is in another unit than the panel's"


def test_sanity_panel_names_the_methods_the_alert_watches() -> None:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text(encoding="utf-8"))
    (sanity,) = [
        r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "VaiAttributionMethodFailsSanityCheck"
    ]
    watched = re.search(r'method=~"([^"]+)"', sanity["expr"])
    assert watched is not None
    (panel,) = [p for p in _queries() if "vai_attribution_sanity_similarity" in json.dumps(p.get("targets"))]
    methods = {"gradcam", "saliency", "lime", "integrated_gradients", "occlusion", "gradient_shap"}
    named = {word for word in re.findall(r"[a-z_]+", panel["description"]) if word in methods}
    assert named == set(watched.group(1).split("|"))


def test_explanation_status_panel_says_failures_count_once() -> None:
    """The worker counts failed, dead and trimmed entries once, with method="-" (attribution_workers/worker.py)."""
    (panel,) = [p for p in _queries() if p["title"] == "Explanations by status"]
    assert 'method="-"' in panel["description"]
    assert "once" in panel["description"]
