"""docker-compose.yml, Dockerfile, .dockerignore and what the stack mounts, checked offline (no Docker here):
the Compose Specification schema, the services and their wiring, every mounted file, the config file
every role reads, Alertmanager's config and its webhook receiver."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic_settings import BaseSettings

from attribution_workers.config import attribution_configs
from attribution_workers.settings import WorkerSettings
from common.embedded_redis import free_port
from demo.models import digits
from helpers import wait_until
from monitors.fleet.settings import MonitorSettings
from service.main import GRACEFUL_SHUTDOWN_S
from service.settings import SidecarSettings
from service.sidecar import CLOSE_S, DRAIN_S

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / "deploy" / "compose" / "env.example"
VAI_CONFIG = ROOT / "deploy" / "compose" / "vai.toml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
ALERT_LOG = ROOT / "deploy" / "alertmanager" / "alert_log.py"

SERVICES = {
    "redis",
    "models",
    "sidecar",
    "monitor",
    "worker",
    "worker-gpu",
    "demo-traffic",
    "prometheus",
    "alertmanager",
    "alert-log",
    "grafana",
}
ONE_SHOT = {"models", "demo-traffic"}
"""Services that run a job and exit: no health check; others wait for them to complete, not to be healthy."""
SECRETS = ("REDIS_PASSWORD", "VAI_INGEST_TOKENS", "VAI_READ_TOKENS", "VAI_ADMIN_TOKENS", "GRAFANA_ADMIN_PASSWORD")
VAI_IMAGE_ROLES: dict[str, type[BaseSettings]] = {
    "sidecar": SidecarSettings,
    "monitor": MonitorSettings,
    "worker": WorkerSettings,
}
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:[?-])(?P<arg>[^}]*))?\}")


def _text() -> str:
    """The compose file without its comment lines (compose interpolates values, not comments)."""
    lines = COMPOSE.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#")) + "\n"


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(_text())
    return loaded


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _env_example() -> dict[str, str]:
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def _interpolated(values: dict[str, str]) -> dict[str, Any]:
    """The compose file as docker compose reads it with ``values`` as its environment (.env): parsed first,
    then ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` substituted in every string value."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if name in values and values[name] != "":
            return values[name]
        assert op != ":?", f"{name} is required: {arg}"
        return arg if op == ":-" else ""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return INTERPOLATION.sub(substitute, node) if isinstance(node, str) else node

    return dict(walk(_compose()))


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _check_jsonschema() -> list[str]:
    try:
        import check_jsonschema  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("check-jsonschema is not installed (a dev dependency: pip install -e '.[dev]')")
        pytest.skip("check-jsonschema is not installed")
    return [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]


# --- the Compose Specification ------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification() -> None:
    command = _check_jsonschema()
    result = subprocess.run([*command, str(COMPOSE)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_as_interpolated_with_the_example_env_matches_the_specification(tmp_path: Path) -> None:
    command = _check_jsonschema()
    path = tmp_path / "docker-compose.json"
    path.write_text(json.dumps(_interpolated(_env_example())), encoding="utf-8")
    result = subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("secret", [pytest.param(name, id=name) for name in SECRETS])
def test_secrets_are_required_and_have_no_default(secret: str) -> None:
    uses = [m for m in INTERPOLATION.finditer(_text()) if m["name"] == secret]
    assert uses, f"{secret} is not used"
    assert all(m["op"] == ":?" and m["arg"].strip() for m in uses), f"{secret} must be ${{{secret}:?message}}"
    example = _env_example()
    with pytest.raises(AssertionError, match=f"{secret} is required"):
        _interpolated({name: value for name, value in example.items() if name != secret})
    assert "CHANGE-ME" in example[secret]


def test_env_example_names_every_variable_the_compose_file_reads() -> None:
    required = {m["name"] for m in INTERPOLATION.finditer(_text()) if m["op"] == ":?"}
    optional = {m["name"] for m in INTERPOLATION.finditer(_text()) if m["op"] != ":?"}
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    assert required == set(SECRETS) <= set(_env_example())
    for name in optional - {"VAI_LOG_LEVEL"}:
        assert f"# {name}=" in text, f"{name} is not documented in {ENV_EXAMPLE.name}"


# --- services and their wiring ------------------------------------------------------------------


def test_compose_runs_every_role_and_the_observability_stack() -> None:
    assert set(_services()) == SERVICES


@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in sorted(SERVICES - ONE_SHOT)])
def test_long_running_service_has_a_healthcheck(name: str) -> None:
    service = _services()[name]
    test = service["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1
    assert "curl" not in " ".join(test), "the images have no curl"
    assert service["restart"] == "unless-stopped"


@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in sorted(ONE_SHOT)])
def test_one_shot_service_has_no_healthcheck_and_no_restart_loop(name: str) -> None:
    service = _services()[name]
    assert service["healthcheck"] == {"disable": True}
    assert service["restart"] in ("no", "on-failure")


def test_dependencies_wait_for_health_or_completion() -> None:
    services = _services()
    edges = {
        (name, dependency): spec["condition"]
        for name, service in services.items()
        for dependency, spec in service.get("depends_on", {}).items()
    }
    assert edges == {
        ("sidecar", "redis"): "service_healthy",
        ("monitor", "redis"): "service_healthy",
        ("worker", "redis"): "service_healthy",
        ("worker", "models"): "service_completed_successfully",
        ("worker-gpu", "redis"): "service_healthy",
        ("worker-gpu", "models"): "service_completed_successfully",
        ("demo-traffic", "sidecar"): "service_healthy",
        ("demo-traffic", "models"): "service_completed_successfully",
        ("prometheus", "alertmanager"): "service_healthy",
        ("alertmanager", "alert-log"): "service_healthy",
        ("grafana", "prometheus"): "service_healthy",
    }
    for (name, dependency), condition in edges.items():
        if condition == "service_healthy":
            assert services[dependency]["healthcheck"].get("disable") is not True, f"{name} -> {dependency}"
        else:
            assert dependency in ONE_SHOT


def test_prometheus_and_grafana_never_wait_for_a_role() -> None:
    """The stack that alerts on a role being down must start while that role is down: not even
    `service_started`, which fails too when the role's own dependency (the `models` job) fails."""
    services = _services()
    roles = {"sidecar", "monitor", "worker", "worker-gpu", "models", "demo-traffic"}

    def depends_on(name: str) -> set[str]:
        direct = set(services[name].get("depends_on", {}))
        return direct.union(*(depends_on(dependency) for dependency in direct))

    for name in ("prometheus", "grafana", "alertmanager"):
        assert depends_on(name) & roles == set(), f"{name} depends on {sorted(depends_on(name) & roles)}"


def test_redis_persists_and_refuses_writes_when_full() -> None:
    redis = _services()["redis"]
    assert redis["image"].startswith("redis:7")
    command = redis["command"]
    option = {command[i]: command[i + 1] for i in range(1, len(command) - 1) if command[i].startswith("--")}
    assert option["--appendonly"] == "yes"
    assert option["--maxmemory-policy"] == "noeviction"
    assert re.fullmatch(r"\$\{REDIS_MAXMEMORY:-\d+[kmg]b\}", option["--maxmemory"])
    assert option["--requirepass"].startswith("${REDIS_PASSWORD:?")
    assert redis["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])


@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in VAI_IMAGE_ROLES])
def test_role_environment_is_made_of_real_settings(name: str) -> None:
    service = _services()[name]
    assert service["build"] == "." and service["image"] == "vai-sidecar:local"
    environment = service["environment"]
    known = {f"VAI_{field.upper()}" for field in VAI_IMAGE_ROLES[name].model_fields}
    assert set(environment) <= known, sorted(set(environment) - known)
    assert environment["VAI_REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")
    assert environment["VAI_REDIS_URL"].endswith("@redis:6379/0")
    assert environment["VAI_CONFIG_FILE"] == "/etc/vai/vai.toml"
    assert "./deploy/compose/vai.toml:/etc/vai/vai.toml:ro" in service["volumes"]


def test_roles_are_wired_as_separate_deployments() -> None:
    services = _services()
    assert services["sidecar"]["environment"]["VAI_MONITOR"] == "external"
    assert "command" not in services["sidecar"], "the image's CMD: serve on 0.0.0.0"
    assert services["monitor"]["command"] == ["vai-sidecar", "monitor"]
    assert services["worker"]["command"] == ["vai-sidecar", "worker"]
    for name in ("monitor", "worker"):
        # Prometheus scrapes them from another container; nothing publishes their ports.
        assert services[name]["environment"]["VAI_HOST"] == "0.0.0.0"
        assert "ports" not in services[name]
    assert "/livez" in " ".join(services["sidecar"]["healthcheck"]["test"])
    assert ":8002/metrics" in " ".join(services["monitor"]["healthcheck"]["test"])
    assert ":8001/metrics" in " ".join(services["worker"]["healthcheck"]["test"])


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return int(match[1])


def test_each_role_has_time_to_stop_before_it_is_killed() -> None:
    """Compose kills 10 s after SIGTERM unless told otherwise: the sidecar needs its graceful period, its drain
    and closing; a worker finishes the batch in hand (its job timeout, as the Kubernetes grace period allows)."""
    services = _services()
    assert _seconds(services["sidecar"]["stop_grace_period"]) >= GRACEFUL_SHUTDOWN_S + DRAIN_S + CLOSE_S
    assert _seconds(services["monitor"]["stop_grace_period"]) >= 10
    job_timeout_s = WorkerSettings.model_fields["worker_job_timeout_s"].default
    for name in ("worker", "worker-gpu"):
        assert _seconds(services[name]["stop_grace_period"]) > job_timeout_s


def test_gpu_worker_is_a_profile_with_a_device_reservation() -> None:
    services = _services()
    gpu, cpu = services["worker-gpu"], services["worker"]
    assert gpu["profiles"] == ["gpu"] and "profiles" not in cpu
    assert gpu["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]
    assert gpu["environment"]["VAI_WORKER_DEVICE"] == "cuda" and cpu["environment"]["VAI_WORKER_DEVICE"] == "cpu"
    assert gpu["networks"]["default"]["aliases"] == ["worker"], "Prometheus finds workers by the name `worker`"
    own = ("profiles", "deploy", "environment", "networks")
    assert {k: v for k, v in gpu.items() if k not in own} == {k: v for k, v in cpu.items() if k not in own}
    assert {k: v for k, v in gpu["environment"].items() if k != "VAI_WORKER_DEVICE"} == {
        k: v for k, v in cpu["environment"].items() if k != "VAI_WORKER_DEVICE"
    }


def test_the_model_the_worker_explains_is_the_one_the_init_service_trains() -> None:
    services = _services()
    trained = services["models"]["command"]
    assert trained[:2] == ["python", "-c"]
    assert 'ensure_digits_weights(ensure_digits_model(Path("/models"), hold_out_reference=True))' in trained[2]
    assert "models:/models" in services["models"]["volumes"]
    path = Path("/models") / digits.HELD_OUT_FILE_NAME
    for name in ("worker", "worker-gpu", "demo-traffic"):
        assert "models:/models:ro" in services[name]["volumes"], name
    traffic = services["demo-traffic"]["command"]
    assert traffic[traffic.index("--model-file") + 1] == str(path)
    assert traffic[traffic.index("--url") + 1] == "http://sidecar:8000"
    assert services["demo-traffic"]["profiles"] == ["demo"]

    worker = WorkerSettings(config_file=VAI_CONFIG)
    (config,) = attribution_configs(worker.models).values()
    # The eager model with the scripted file's weights (hooks need it): the same weights the traffic runs.
    assert config.model.factory == digits.FACTORY and config.model.weights == path.with_suffix(".safetensors")
    assert config.model.input_shape == digits.INPUT_SHAPE and config.model.num_classes == digits.NUM_CLASSES


def test_every_role_reads_the_config_file() -> None:
    sidecar = SidecarSettings(config_file=VAI_CONFIG)
    monitor = MonitorSettings(config_file=VAI_CONFIG)
    assert sidecar.cohort_keys == monitor.cohort_keys == ("region", "device")
    assert sidecar.models["digits"].delayed_labels
    assert monitor.drift.online_detector == "mmd"
    # The methods the sanity-check alert relies on by default are among those the worker computes.
    (config,) = attribution_configs(WorkerSettings(config_file=VAI_CONFIG).models).values()
    relied_on = re.search(r'method=~"([^"]+)"', ALERTS.read_text(encoding="utf-8"))
    assert relied_on is not None and config.methods is not None
    assert set(relied_on.group(1).split("|")) <= set(config.methods)


def test_every_mounted_file_exists_and_named_volumes_are_declared() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"


def test_published_ports_bind_loopback_only() -> None:
    for name, service in _services().items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port}"


def test_prometheus_scrapes_the_services_of_each_role() -> None:
    services = _services()
    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["vai-sidecar"]["static_configs"] == [{"targets": ["sidecar:8000"]}]
    for job, service, port in (
        ("vai-monitor", "monitor", MonitorSettings.model_fields["monitor_metrics_port"].default),
        ("vai-worker", "worker", WorkerSettings.model_fields["worker_metrics_port"].default),
    ):
        (discovery,) = jobs[job]["dns_sd_configs"]
        assert discovery["names"] == [service] and discovery["type"] == "A" and discovery["port"] == port
        assert service in services
    (alertmanager,) = config["alerting"]["alertmanagers"]
    assert alertmanager["static_configs"] == [{"targets": ["alertmanager:9093"]}]
    prometheus = services["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_grafana_service() -> None:
    grafana = _services()["grafana"]
    assert grafana["image"].startswith("grafana/grafana")
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")


# --- Alertmanager and its webhook receiver -------------------------------------------------------


@pytest.fixture(scope="session")
def amtool() -> str:
    found = shutil.which("amtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("amtool is not installed (Debian package prometheus-alertmanager; scripts/setup.sh)")
        pytest.skip("amtool is not installed (Debian package prometheus-alertmanager)")
    return found


def test_amtool_accepts_the_alertmanager_config(amtool: str) -> None:
    result = subprocess.run(
        [amtool, "check-config", str(ALERTMANAGER)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        pytest.param("alertname=VaiSidecarRedisDown severity=critical", "page", id="critical-pages"),
        pytest.param("alertname=VaiModelDriftDetected severity=warning model=digits", "ticket", id="warning-ticket"),
        pytest.param("alertname=VaiAttributionMethodFailsSanityCheck severity=info model=d", "none", id="info-silent"),
    ],
)
def test_alertmanager_routes_by_severity(amtool: str, labels: str, receiver: str) -> None:
    result = subprocess.run(
        [amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels.split()],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_alertmanager_config_names_real_alerts_and_the_webhook_service() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text(encoding="utf-8"))
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    named: set[str] = set()
    for rule in config["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            found = re.fullmatch(r'alertname=~?"([^"]+)"', matcher)
            if found:
                named.update(found.group(1).split("|"))
    assert named and named <= alerts, sorted(named - alerts)
    assert {"VaiSidecarRedisDown", "VaiWorkerRedisDown", "VaiSidecarQueueBacklogHigh", "VaiExplanationLagHigh"} <= named
    assert "model" in config["route"]["group_by"]
    command = _services()["alert-log"]["command"]
    port = command[command.index("--port") + 1]
    urls = [hook["url"] for receiver in config["receivers"] for hook in receiver.get("webhook_configs", [])]
    assert urls and all(url.startswith(f"http://alert-log:{port}/") for url in urls)
    assert "./deploy/alertmanager:/etc/alertmanager:ro" in _services()["alertmanager"]["volumes"]


_AGGREGATION = re.compile(r"\b(?:sum|max|min|avg|count)\s*(?:by\s*\(([^)]*)\)\s*)?\(")


def _carried_labels(expr: str) -> set[str]:
    """Of instance and model, the labels an alert's series carry (an aggregation keeps them)."""
    aggregations = _AGGREGATION.findall(expr)
    if not aggregations:
        return {"instance"}  # a per-target series (up, vai_redis_up, ...): instance, never model
    kept = {label.strip() for by in aggregations for label in by.split(",")}
    return kept & {"instance", "model"}


def _inhibit_cases() -> list[Any]:
    alerts = {
        rule["alert"]: _carried_labels(rule["expr"])
        for group in yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    cases = []
    for rule in yaml.safe_load(ALERTMANAGER.read_text(encoding="utf-8"))["inhibit_rules"]:
        named = []
        for side in ("source_matchers", "target_matchers"):
            found = [re.fullmatch(r'alertname=~?"([^"]+)"', matcher) for matcher in rule[side]]
            named.append({name: alerts[name] for match in found if match for name in match.group(1).split("|")})
        if named[0]:
            cases.append(pytest.param(named[0], named[1], set(rule.get("equal", [])), id="+".join(sorted(named[0]))))
    return cases


@pytest.mark.parametrize(("sources", "targets", "equal"), _inhibit_cases())
def test_inhibitions_hold_back_only_what_their_cause_explains(
    sources: dict[str, set[str]], targets: dict[str, set[str]], equal: set[str]
) -> None:
    """Alertmanager treats a missing `equal` as always equal: a per-instance source with no
    `equal: [instance]` would let one replica or worker silence the whole fleet's alerts."""
    for source, carried in sources.items():
        for label in ("instance", "model"):
            if label in carried:
                assert label in equal, f"{source} is per {label}: it may only hold back its own {label}'s alerts"
    for label in equal:
        for name, carried in {**sources, **targets}.items():
            assert label in carried, f"equal: [{label}], but {name} has no {label}: the rule never matches"


def _alert(name: str, severity: str = "warning", **labels: str) -> dict[str, Any]:
    return {"labels": {"alertname": name, "severity": severity, **labels}, "annotations": {}}


def test_alertmanager_inhibits_only_within_the_cause_s_scope(tmp_path: Path) -> None:
    """A real Alertmanager with deploy/alertmanager/alertmanager.yml: one worker or one replica in
    trouble silences nothing of the rest of the fleet; a fleet-wide cause silences what it explains."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("alertmanager is not installed (Debian package prometheus-alertmanager)")
        pytest.skip("alertmanager is not installed (Debian package prometheus-alertmanager)")
    port = free_port()
    log = tmp_path / "alertmanager.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={ALERTMANAGER}",
                f"--storage.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            stdout=out,
            stderr=out,
        )
    try:
        url = f"http://127.0.0.1:{port}/api/v2"

        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout_s=30, what="Alertmanager to answer", interval_s=0.1)
        sent = [
            # One worker cut off from Redis, one worker down, one sidecar replica cut off from Redis.
            _alert("VaiWorkerRedisDown", job="vai-worker", instance="w1:8001"),
            _alert("VaiAttributionWorkerDown", job="vai-worker", instance="w2:8001"),
            _alert("VaiSidecarRedisDown", "critical", job="vai-sidecar", instance="a:8000"),
            _alert("VaiSidecarBufferNotDraining", job="vai-sidecar", instance="a:8000"),
            _alert("VaiSidecarBufferNotDraining", job="vai-sidecar", instance="b:8000"),
            _alert("VaiDeadLetters", model="digits"),
            _alert("VaiSidecarSamplesLost", model="digits", reason="queue_full"),
            _alert("VaiExplanationLagHigh", model="img"),
            # No worker at all for `text`.
            _alert("VaiNoAttributionWorker", model="text"),
            _alert("VaiSidecarQueueBacklogHigh", model="text"),
            _alert("VaiSidecarQueueBacklogHigh", model="img"),
            # Drift of img's embeddings and of its outputs: one problem. Output drift alone on `tabular`.
            _alert("VaiModelDriftDetected", model="img"),
            _alert("VaiModelOutputDriftDetected", model="img"),
            _alert("VaiModelOutputDriftDetected", model="tabular"),
        ]
        assert httpx.post(f"{url}/alerts", json=sent, timeout=5).status_code == 200

        def inhibited() -> dict[tuple[str, str], bool] | None:
            alerts = httpx.get(f"{url}/alerts", timeout=5).json()
            if len(alerts) < len(sent):
                return None
            return {
                (a["labels"]["alertname"], a["labels"].get("instance") or a["labels"].get("model", "")): bool(
                    a["status"]["inhibitedBy"]
                )
                for a in alerts
            }

        state = wait_until(inhibited, timeout_s=10, what="the alerts stored")
        assert state == {
            ("VaiWorkerRedisDown", "w1:8001"): False,
            ("VaiAttributionWorkerDown", "w2:8001"): False,
            ("VaiSidecarRedisDown", "a:8000"): False,
            ("VaiSidecarBufferNotDraining", "a:8000"): True,
            ("VaiSidecarBufferNotDraining", "b:8000"): False,
            ("VaiDeadLetters", "digits"): False,
            ("VaiSidecarSamplesLost", "digits"): False,
            ("VaiExplanationLagHigh", "img"): False,
            ("VaiNoAttributionWorker", "text"): False,
            ("VaiSidecarQueueBacklogHigh", "text"): True,
            ("VaiSidecarQueueBacklogHigh", "img"): False,
            ("VaiModelDriftDetected", "img"): False,
            ("VaiModelOutputDriftDetected", "img"): True,
            ("VaiModelOutputDriftDetected", "tabular"): False,
        }
        # Redis down for every sidecar: the outage pages once.
        assert httpx.post(f"{url}/alerts", json=[_alert("VaiRedisDown", "critical")], timeout=5).status_code == 200

        def fleet_inhibited() -> dict[tuple[str, str], bool] | None:
            now = inhibited()
            return now if now and now[("VaiDeadLetters", "digits")] else None

        state = wait_until(fleet_inhibited, timeout_s=10, what="the fleet-wide inhibition")
        held = {key for key, value in state.items() if value}
        assert held == {
            ("VaiWorkerRedisDown", "w1:8001"),
            ("VaiSidecarRedisDown", "a:8000"),
            ("VaiSidecarBufferNotDraining", "a:8000"),
            ("VaiSidecarBufferNotDraining", "b:8000"),
            ("VaiDeadLetters", "digits"),
            ("VaiSidecarSamplesLost", "digits"),
            ("VaiExplanationLagHigh", "img"),
            ("VaiSidecarQueueBacklogHigh", "text"),
            ("VaiSidecarQueueBacklogHigh", "img"),
            ("VaiModelOutputDriftDetected", "img"),
        }
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_alert_log_prints_each_alert_it_is_sent(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "alert-log.txt"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(ALERT_LOG), "--host", "127.0.0.1", "--port", str(port)], stdout=out, stderr=out
        )
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout_s=20, what="alert_log.py to answer", interval_s=0.05)
        notification = {
            "version": "4",
            "status": "firing",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"alertname": "VaiModelDriftDetected", "severity": "warning", "model": "digits"},
                    "annotations": {"summary": "Drift detected on digits"},
                }
            ],
        }
        assert httpx.post(f"{url}/ticket", content=json.dumps(notification), timeout=5).status_code == 200
        assert httpx.post(f"{url}/ticket", content=b"not json", timeout=5).status_code == 400
        expected = "[ticket] FIRING warning VaiModelDriftDetected model=digits :: Drift detected on digits"
        wait_until(lambda: expected in log.read_text(), timeout_s=10, what="the alert printed")
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


# --- the image ----------------------------------------------------------------------------------


def test_dockerfile() -> None:
    instructions = _instructions()
    froms = [arguments for keyword, arguments in instructions if keyword == "FROM"]
    assert froms and all(arguments.split()[0] == "python:3.11-slim" for arguments in froms)

    runs = [arguments for keyword, arguments in instructions if keyword == "RUN"]
    pinned = next(
        dependency for dependency in _pyproject()["project"]["dependencies"] if dependency.startswith("torch")
    )
    torch_at = next(index for index, run in enumerate(runs) if f"pip install {pinned}" in run)
    project_at = next(index for index, run in enumerate(runs) if re.search(r"pip install \.(\s|$)", run))
    assert torch_at < project_at, "torch must be installed (pinned) before the project"
    # The models volume starts with the image's owner of /models: the vai user must be able to write it.
    assert any(re.search(r"install -d -o vai -g vai /models\b", run) for run in runs)

    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "the sidecar must not run as root"

    healthcheck = next(arguments for keyword, arguments in instructions if keyword == "HEALTHCHECK")
    assert "/livez" in healthcheck and "python" in healthcheck and "curl" not in healthcheck

    cmd = [arguments for keyword, arguments in instructions if keyword == "CMD"][-1]
    assert json.loads(cmd) == ["vai-sidecar", "serve", "--host", "0.0.0.0"]
    assert "tokens" in DOCKERFILE.read_text(encoding="utf-8").lower()


def test_dockerignore_lets_through_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "allow-list: only what is named below is sent to the build"
    allowed = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    copies = [
        arguments.split() for keyword, arguments in _instructions() if keyword == "COPY" and "--from=" not in arguments
    ]
    sources = {source.rstrip("/") for copy in copies for source in copy[:-1]}
    assert sources == allowed
    for source in sources:
        assert (ROOT / source).exists(), source
    for package in _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert package.rstrip("*") in sources, f"{package} is packaged but not copied into the image"
