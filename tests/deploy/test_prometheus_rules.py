"""deploy/prometheus and deploy/RUNBOOK.md: promtool accepts the config and the rules, the rule
unit tests pass, every alert can be acted on, and it only reads series the sidecar exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from demo import settings as demo_settings

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
RUNBOOK = ROOT / "deploy" / "RUNBOOK.md"

METRIC_NAME = re.compile(r"\bvai_[a-z0-9_]+\b")
SEVERITIES = {"critical", "warning", "info"}


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in _load(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule]


def _by_alert() -> list[Any]:
    return [pytest.param(rule, id=rule["alert"]) for rule in _alerts()]


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def _runbook_anchors() -> set[str]:
    """GitHub's anchors of the runbook's headings: lower case, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", RUNBOOK.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize(
    ("config", "cwd"),
    [
        pytest.param("deploy/prometheus/prometheus.yml", ROOT, id="relative-from-repo-root"),
        # rule_files are resolved against the config file's folder, as in the container.
        pytest.param(str(CONFIG), None, id="absolute-from-elsewhere"),
    ],
)
def test_promtool_accepts_the_config(promtool: str, config: str, cwd: Path | None, tmp_path: Path) -> None:
    result = _run([promtool, "check", "config", config], cwd=cwd or tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr
    assert f"{len(_alerts())} rules found" in result.stdout + result.stderr


def test_promtool_accepts_the_rules(promtool: str) -> None:
    result = _run([promtool, "check", "rules", "deploy/prometheus/alerts.yml"], cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass(promtool: str) -> None:
    result = _run([promtool, "test", "rules", "deploy/prometheus/alerts_test.yml"], cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_config_scrapes_every_role_loads_the_alerts_and_sends_them_to_alertmanager() -> None:
    config = _load(CONFIG)
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"vai-sidecar", "vai-monitor", "vai-worker"}, "the job names the alerts use"
    for job in jobs.values():
        assert job.get("metrics_path", "/metrics") == "/metrics"
    # docker-compose.yml names the service "sidecar"; the CLI's default port is 8000.
    assert [target for static in jobs["vai-sidecar"]["static_configs"] for target in static["targets"]] == [
        "sidecar:8000"
    ]
    # Monitors (8002) and workers (8001) by DNS: every replica of the service (tests/deploy/test_compose.py).
    assert [(d["names"], d["port"]) for d in jobs["vai-monitor"]["dns_sd_configs"]] == [(["monitor"], 8002)]
    assert [(d["names"], d["port"]) for d in jobs["vai-worker"]["dns_sd_configs"]] == [(["worker"], 8001)]
    assert config["alerting"]["alertmanagers"][0]["static_configs"] == [{"targets": ["alertmanager:9093"]}]


def test_drift_pages_once_per_model_from_the_online_detector_only() -> None:
    (drift,) = [rule for rule in _alerts() if rule["alert"] == "VaiModelDriftDetected"]
    assert 'detector=~"mmd_online|lsdd_online"' in drift["expr"]
    assert re.search(r"max by \(model\)", drift["expr"])
    # The other detectors appear as evidence in the description, queried when the alert fires.
    assert 'detector!~"mmd_online|lsdd_online"' in drift["annotations"]["description"]


def test_drift_alerts_read_alarm_shares_not_the_latest_verdict() -> None:
    """vai_drift_detected is one reading per batch, blind to the events between readings. The alerts read the share
    of tests that alarmed, and the online one its detector's own ERT."""
    rules = {rule["alert"]: rule["expr"] for rule in _alerts()}
    assert not any("vai_drift_detected" in expr for expr in rules.values())
    for name in ("VaiModelDriftDetected", "VaiModelOutputDriftDetected"):
        assert "vai_drift_alarms_total" in rules[name] and "vai_drift_tests_total" in rules[name], name
    assert "vai_drift_ert_events" in rules["VaiModelDriftDetected"]
    assert 'detector=~"output_class_chi2|output_confidence_ks"' in rules["VaiModelOutputDriftDetected"]


def test_calibration_alert_needs_enough_labels_for_a_calibrated_model_to_stay_below_it() -> None:
    """ECE is biased upwards on few labels. A perfectly calibrated model (right with probability = its confidence,
    confidences uniform on [0.1, 1], the widest spread of ten classes) must stay below the alert's ECE with the
    fewest labels it accepts, in all but a few of 2,000 windows (about 1 in 2,500 at 500 labels; 23% at 200)."""
    from monitors.calibration import compute_calibration

    (rule,) = [rule for rule in _alerts() if rule["alert"] == "VaiModelCalibrationDegraded"]
    found = re.search(r'vai_calibration_ece\{cohort="all"\}\) > ([\d.]+)', rule["expr"])
    floor = re.search(r'vai_cohort_window_events\{cohort="all"\}\) >= (\d+)', rule["expr"])
    assert found is not None and floor is not None
    threshold, labels = float(found.group(1)), int(floor.group(1))
    rng = np.random.default_rng(0)
    above = 0
    for _ in range(2000):
        confidence = rng.uniform(0.1, 1.0, labels)
        right = rng.random(labels) < confidence
        report = compute_calibration(
            confidence=confidence, predicted=np.zeros(labels, dtype=np.int64), labels=np.where(right, 0, 1)
        )
        above += report.ece > threshold
    assert above <= 10, f"{above} of 2000 windows of {labels} labels above ECE {threshold}"


def test_sanity_alert_watches_only_the_methods_relied_on() -> None:
    (sanity,) = [rule for rule in _alerts() if rule["alert"] == "VaiAttributionMethodFailsSanityCheck"]
    # The demo's methods, which pass the check on its model; the others it offers are flagged there.
    watched = re.search(r'vai_attribution_sanity_similarity\{method=~"([^"]+)"\}', sanity["expr"])
    assert watched is not None and set(watched.group(1).split("|")) == set(demo_settings.METHODS)


@pytest.mark.parametrize("rule", _by_alert())
def test_alert_reads_only_exported_series(rule: dict[str, Any], exported_names: frozenset[str]) -> None:
    used = set(METRIC_NAME.findall(rule["expr"]))
    assert used or rule["expr"].startswith("up{"), "reads no vai_* series (only the down alert may)"
    assert used <= exported_names, f"not exported by the sidecar: {sorted(used - exported_names)}"


@pytest.mark.parametrize("rule", _by_alert())
def test_alert_can_be_acted_on(rule: dict[str, Any]) -> None:
    assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), "every alert needs a `for:` duration"
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert set(annotations) >= {"summary", "description", "runbook"}
    assert "$value" in annotations["description"], "the description should state the measured value"
    if re.search(r"by \([^)]*\bmodel\b", rule["expr"]):
        assert "$labels.model" in annotations["description"]
        assert "$labels.model" in annotations["summary"]
    page, _, anchor = annotations["runbook"].partition("#")
    assert page == "deploy/RUNBOOK.md"
    assert anchor == rule["alert"].lower()
    assert anchor in _runbook_anchors(), f"RUNBOOK.md has no section #{anchor}"


def test_every_alert_fires_and_stays_quiet_in_the_unit_tests() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for test in _load(ALERTS_TEST)["tests"]:
        for case in test.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in _alerts()}
    assert names - fired == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown staying quiet"
    assert fired | quiet <= names, "unit tests of alerts that do not exist"


def test_alert_names_are_unique() -> None:
    names = [rule["alert"] for rule in _alerts()]
    assert len(names) == len(set(names))


def test_runbook_names_only_exported_series(exported_names: frozenset[str]) -> None:
    used = set(METRIC_NAME.findall(RUNBOOK.read_text(encoding="utf-8")))
    assert used <= exported_names, f"not exported by the sidecar: {sorted(used - exported_names)}"


def _runbook_sections() -> dict[str, str]:
    parts = re.split(r"^## (.+)$", RUNBOOK.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_runbook_names_only_files_that_exist() -> None:
    paths = set(re.findall(r"`([\w./-]+\.(?:py|ya?ml|json|toml|env|md))`", RUNBOOK.read_text(encoding="utf-8")))
    assert paths
    assert {path for path in paths if not (ROOT / path).exists()} == set()


@pytest.mark.parametrize("section", list(_runbook_sections()))
def test_runbook_gives_kubernetes_commands_beside_compose_ones(section: str) -> None:
    text = _runbook_sections()[section]
    if "docker compose" in text:
        assert "kubectl" in text, f"{section}: docker compose commands only"
    for command in re.findall(r"docker inspect [^`]*", text):
        assert not command.rstrip().endswith("'"), f"{section}: `{command}` names no container"


def test_runbook_lists_every_rejection_reason() -> None:
    from service.routes.ingest import _BODY_REFUSED, _REFUSED

    reasons = set(_REFUSED.values()) | set(_BODY_REFUSED.values()) | {"invalid_body", "invalid"}
    for source in (ROOT / "service").glob("*.py"):
        reasons |= set(re.findall(r'reason="([a-z_]+)"', source.read_text(encoding="utf-8")))
    section = _runbook_sections()["VaiSidecarEventsRejected"]
    table = {
        name
        for row in re.findall(r"^\s*\| (.+?) \|", section, flags=re.MULTILINE)
        for name in re.findall(r"`(\w+)`", row)
    }
    assert reasons - table == set(), "reasons missing from the RUNBOOK table"


def test_runbook_does_not_break_failures_down_by_method() -> None:
    """The worker counts failed, dead and trimmed explanations once per entry with method="-"."""
    text = RUNBOOK.read_text(encoding="utf-8")
    assert not re.search(r'by \(method\) \(rate\(vai_explanations_total\{[^}]*status="(failed|dead|trimmed)"', text)


def test_config_says_how_to_scrape_an_embedded_monitor() -> None:
    """With VAI_MONITOR=embedded (the default) the monitor child serves on the sidecar's port 8002,
    which no job of this config (sidecar:8000) reads: the config must say how."""
    text = CONFIG.read_text(encoding="utf-8")
    assert "VAI_MONITOR=embedded" in text and '"sidecar:8002"' in text
