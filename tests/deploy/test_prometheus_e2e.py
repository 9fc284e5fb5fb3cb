"""End to end: a real Prometheus scraping a real sidecar, monitor and attribution worker.

The three roles run as processes (``vai-sidecar serve | monitor | worker``) on a private Redis with the
compose stack's config file (deploy/compose/vai.toml), the demo's digits CNN, and the compose stack's
traffic entry point (deploy/compose/demo_traffic.py): clean digits first, then corrupted ones. A
Prometheus (the Debian ``prometheus`` binary) scrapes the three under the job names of
deploy/prometheus/prometheus.yml, every second, with deploy/prometheus/alerts.yml loaded. Through its
HTTP API the test checks that every dashboard query (panels, variables, annotations) and every alert
expression parses and evaluates, that they return series where the run produces data, and that the
drift alert fires in the drift phase and not before.

Time is compressed for the drift alert only: its 30-minute window becomes 60 s and its ``for`` 15 s
(the rule's logic is unchanged, and 60 s of the traffic's 40 events a second are more than the 1,000 events
it needs; promtool's unit tests cover it at full length). Other alerts keep their
production durations, so the test checks that they evaluate, not when they fire.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from common.embedded_redis import EmbeddedRedis, free_port
from demo.models import digits
from helpers import REPO, role_env, start_role, stop_process, wait_http, wait_until

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "vai-sidecar.json"
COMPOSE_CONFIG = REPO / "deploy" / "compose" / "vai.toml"
TRAFFIC = REPO / "deploy" / "compose" / "demo_traffic.py"
ADMIN, READ, INGEST = "e2e-admin", "e2e-read", "e2e-ingest"
DRIFT_ALERT = "VaiModelDriftDetected"
CLEAN_S = 45.0
"""Clean traffic watched by the calibrated detectors before the drift phase starts."""
DRIFT_WINDOW, DRIFT_FOR = "60s", "15s"
GRAFANA = {"$__rate_interval": "10s", "$__interval": "5s", "$__range": "5m", "$model": ".*", "$cohort": ".*"}

# What a healthy run of a few minutes legitimately leaves without series, and why.
MAY_BE_EMPTY = {
    "vai_dead_letters_total": "no sampled event fails every delivery",
    "vai_events_rejected_total": "the traffic sends only valid events",
    "vai_sample_dropped_total": "the demo's sampling budget may never be reached",
    "vai_feed_records_dropped_total": "under the drift feed's budget nothing is dropped",
    "vai_drift_events_skipped_total": "records arriving while calibrating may or may not occur",
    "vai_drift_embeddings_skipped_total": "the demo's traffic sends every event with its embedding",
    "vai_feed_records_trimmed_total": "the monitor keeps up: no feed is trimmed before it reads it",
    "vai_buffer_events": "present, but only as a gauge of 0",
    "vai_layer_saturated_ratio": "the digits CNN has no bounded activation (ReLU only)",
    "vai_kserve_events_total": "the demo's traffic posts events, not KServe CloudEvents",
    "ALERTS": "only the drift alert is expected to fire",
}
PRODUCTION_ONLY = ("offset 1d",)
"""Queries that compare with a day earlier: no data a day back in a test."""


@dataclass
class Stack:
    sidecar: str
    prometheus: str
    traffic_log: Path


def _alerts_with_compressed_drift_alert(target: Path) -> None:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text(encoding="utf-8"))
    (drift,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == DRIFT_ALERT]
    assert "[30m]" in drift["expr"] and drift["for"] == "5m", "the drift rule changed: update this test"
    drift["expr"] = drift["expr"].replace("[30m]", f"[{DRIFT_WINDOW}]")
    drift["for"] = DRIFT_FOR
    target.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")


def _prometheus_config(target: Path, ports: dict[str, int]) -> None:
    """deploy/prometheus/prometheus.yml with loopback targets, 1 s intervals and no Alertmanager."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config.pop("alerting")
    for job in config["scrape_configs"]:
        for key in ("static_configs", "dns_sd_configs"):
            job.pop(key, None)
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
    assert set(ports) == {job["job_name"] for job in config["scrape_configs"]}
    target.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def _traffic(stack_tmp: Path, url: str, model: Path, *args: str, log: Path) -> subprocess.Popen[bytes]:
    env = role_env(ADMIN_TOKEN=ADMIN)
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, str(TRAFFIC), "--url", url, "--model-file", str(model), "--rate", "40", *args],
            cwd=stack_tmp,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def stack(own_redis: EmbeddedRedis, tmp_path: Path) -> Iterator[Stack]:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed (scripts/setup.sh --with-test-tools installs it)")
        pytest.skip("prometheus is not installed")
    model = digits.ensure_digits_model(tmp_path / "models", hold_out_reference=True)
    config = tmp_path / "vai.toml"
    weights = digits.ensure_digits_weights(model)  # as the compose stack's models step writes them
    text = COMPOSE_CONFIG.read_text(encoding="utf-8")
    assert f"/models/{weights.name}" in text
    config.write_text(text.replace('"/models/', f'"{model.parent}/'), encoding="utf-8")

    ports = {"vai-sidecar": free_port(), "vai-monitor": free_port(), "vai-worker": free_port()}
    common = {
        "VAI_REDIS_URL": own_redis.url,
        "VAI_CONFIG_FILE": str(config),
        "VAI_INGEST_TOKENS": INGEST,
        "VAI_READ_TOKENS": READ,
        "VAI_ADMIN_TOKENS": ADMIN,
    }
    processes: list[subprocess.Popen[bytes]] = []
    try:
        sidecar = start_role(
            "serve", "--port", str(ports["vai-sidecar"]), env=role_env(**common, VAI_MONITOR="external"), cwd=tmp_path
        )
        processes.append(sidecar)
        monitor_env = {k: v for k, v in common.items() if not k.endswith("_TOKENS")}
        monitor = start_role(
            "monitor", env=role_env(**monitor_env, VAI_MONITOR_METRICS_PORT=str(ports["vai-monitor"])), cwd=tmp_path
        )
        processes.append(monitor)
        worker = start_role(
            "worker",
            env=role_env(**monitor_env, VAI_WORKER_METRICS_PORT=str(ports["vai-worker"]), VAI_WORKER_DEVICE="cpu"),
            cwd=tmp_path,
        )
        processes.append(worker)
        rules = tmp_path / "alerts.yml"
        _alerts_with_compressed_drift_alert(rules)
        prometheus_yml = tmp_path / "prometheus.yml"
        _prometheus_config(prometheus_yml, ports)
        prometheus_port = free_port()
        with (tmp_path / "prometheus.log").open("wb") as log:
            server = subprocess.Popen(
                [
                    prometheus,
                    f"--config.file={prometheus_yml}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    "--log.level=warn",
                ],
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        processes.append(server)
        base = f"http://127.0.0.1:{ports['vai-sidecar']}"
        wait_http(f"{base}/livez", sidecar)
        wait_http(f"http://127.0.0.1:{ports['vai-monitor']}/metrics", monitor)
        wait_http(f"http://127.0.0.1:{ports['vai-worker']}/metrics", worker, timeout_s=120)
        wait_http(f"http://127.0.0.1:{prometheus_port}/-/ready", server)
        yield Stack(base, f"http://127.0.0.1:{prometheus_port}", tmp_path / "traffic.log")
    finally:
        for process in reversed(processes):
            stop_process(process)


def _api(stack: Stack, path: str, **params: str) -> Any:
    answer = httpx.get(f"{stack.prometheus}/api/v1/{path}", params=params, timeout=10)
    body = answer.json()
    assert answer.status_code == 200 and body["status"] == "success", f"{path} {params}: {body}"
    return body["data"]


def _query(stack: Stack, expr: str) -> list[dict[str, Any]]:
    data = _api(stack, "query", query=expr)
    result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else [data["result"]]
    return result


def _drift_alert_states(stack: Stack) -> set[str]:
    return {alert["state"] for alert in _api(stack, "alerts")["alerts"] if alert["labels"]["alertname"] == DRIFT_ALERT}


def _monitoring(stack: Stack) -> bool:
    answer = httpx.get(
        f"{stack.sidecar}/v1/models/digits/drift", headers={"Authorization": f"Bearer {READ}"}, timeout=5
    )
    return answer.status_code == 200 and answer.json()["state"] == "monitoring"


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in items:
            yield item
            yield from panels(item.get("panels", []))

    exprs = [target["expr"] for panel in panels(dashboard["panels"]) for target in panel.get("targets", [])]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    for variable in dashboard["templating"]["list"]:
        found = re.fullmatch(r"label_values\((.+),\s*\w+\)", str(variable.get("query", "")))
        if found:
            exprs.append(found.group(1))
    substituted = []
    for expr in exprs:
        for name, value in GRAFANA.items():
            expr = expr.replace(name, value)
        assert "$" not in expr, expr
        substituted.append(expr)
    return substituted


def _alert_exprs() -> dict[str, str]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text(encoding="utf-8"))
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}


def _names(expr: str) -> set[str]:
    return set(re.findall(r"\b(vai_[a-z0-9_]+|ALERTS|up)\b", expr))


def _has_series(stack: Stack, name: str) -> bool:
    return bool(_query(stack, f'count({{__name__="{name}"}})'))


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_prometheus_sees_every_role_and_the_drift_alert_fires_only_in_the_drift_phase(
    stack: Stack, tmp_path: Path
) -> None:
    model = tmp_path / "models" / digits.HELD_OUT_FILE_NAME
    clean = _traffic(tmp_path, stack.sidecar, model, "--drift-after", "100000", log=stack.traffic_log)
    try:
        wait_until(
            lambda: _monitoring(stack), timeout_s=150, what="the monitor calibrating on the reference", interval_s=1
        )
        targets = _api(stack, "targets")["activeTargets"]
        assert {t["labels"]["job"]: t["health"] for t in targets} == {
            "vai-sidecar": "up",
            "vai-monitor": "up",
            "vai-worker": "up",
        }, targets
        # Clean traffic, watched by the calibrated detectors: the drift alert stays quiet.
        # Polled until the watch ends or the alert goes off (query_range below checks every second of it).
        watched_until = time.monotonic() + CLEAN_S
        wait_until(
            lambda: time.monotonic() >= watched_until or _drift_alert_states(stack),
            timeout_s=CLEAN_S + 30,
            what="the end of the clean watch",
            interval_s=2,
        )
        assert _drift_alert_states(stack) == set(), "the drift alert went off on clean traffic"
    finally:
        clean.send_signal(signal.SIGTERM)
        assert clean.wait(timeout=30) == 0, stack.traffic_log.read_text()
    assert "drift reference uploaded" in stack.traffic_log.read_text()
    clean_end = time.time()
    examined = _query(stack, 'sum(vai_monitor_records_examined_total{model="digits"})')
    assert examined and float(examined[0]["value"][1]) > 0

    drift = _traffic(tmp_path, stack.sidecar, model, "--drift-after", "0", "--no-reference", log=stack.traffic_log)
    try:
        wait_until(
            lambda: "firing" in _drift_alert_states(stack), timeout_s=150, what="the drift alert firing", interval_s=2
        )
        # Let the other rates and the sanity check catch up with the drift phase before reading everything.
        wait_until(
            lambda: _query(stack, "vai_attribution_sanity_similarity") and _query(stack, "vai_class_recall"),
            timeout_s=60,
            what="sanity figures and per-class recall",
            interval_s=1,
        )
        _check_every_query(stack)
    finally:
        drift.send_signal(signal.SIGTERM)
        assert drift.wait(timeout=30) == 0, stack.traffic_log.read_text()

    # Not before: ALERTS never had the drift alert (pending or firing) up to the end of the clean phase.
    before = _api(
        stack,
        "query_range",
        query=f'ALERTS{{alertname="{DRIFT_ALERT}"}}',
        start=str(clean_end - CLEAN_S - 600),
        end=str(clean_end),
        step="1",
    )["result"]
    assert before == [], before
    (firing,) = _query(stack, f'ALERTS{{alertname="{DRIFT_ALERT}", alertstate="firing"}}')
    assert firing["metric"]["model"] == "digits"


def _ever_returned(stack: Stack, expr: str, *, over_s: float = 600) -> bool:
    """Whether ``expr`` had series at any second of the run: a filter such as ``== 1`` (an alarm
    annotation) is empty whenever the condition does not hold right now."""
    now = time.time()
    data = _api(stack, "query_range", query=expr, start=str(now - over_s), end=str(now), step="1")
    return bool(data["result"])


def _check_every_query(stack: Stack) -> None:
    empty: list[str] = []
    for expr in _dashboard_queries():
        if any(marker in expr for marker in PRODUCTION_ONLY) or _query(stack, expr):
            continue
        if not _ever_returned(stack, expr):
            empty.append(expr)
    # Every query without series reads only series the run legitimately lacks.
    for expr in empty:
        missing = {name for name in _names(expr) if not _has_series(stack, name)}
        assert missing and missing <= set(MAY_BE_EMPTY), f"dashboard query returned no series: {expr}"

    rules = {
        rule["name"]: rule
        for group in _api(stack, "rules")["groups"]
        for rule in group["rules"]
        if rule["type"] == "alerting"
    }
    assert set(rules) == set(_alert_exprs())
    for name, expr in _alert_exprs().items():
        assert rules[name]["health"] == "ok", f"{name}: {rules[name].get('lastError')}"
        _query(stack, expr)  # parses and evaluates through the HTTP API
        missing = {n for n in _names(expr) if not _has_series(stack, n)}
        assert missing <= set(MAY_BE_EMPTY), f"{name} reads series nothing exported: {sorted(missing)}"
