"""deploy/k8s, checked offline: every file parses and every reference resolves; both overlays build
(``kubectl kustomize`` when kubectl is installed, else a plain merge of the resource lists); the core
objects validate against the Kubernetes JSON schemas of kubernetes-validate; the custom resources
(KEDA, Prometheus Operator) against tests/deploy/k8s_crd_schemas.yaml; and the pieces agree with
one another and with the code: selectors select, named ports exist, every VAI_* variable is a real
setting that its role accepts, the autoscaler watches the streams and group the workers read, and
the PrometheusRule is the rules file promtool tests."""

from __future__ import annotations

import base64
import functools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from attribution_workers.config import attribution_configs
from attribution_workers.settings import WorkerSettings
from common import keys
from common.settings import RoleSettings
from monitors.fleet.settings import MonitorSettings
from scripts import k8s_rules
from service.main import GRACEFUL_SHUTDOWN_S
from service.settings import SidecarSettings
from service.sidecar import CLOSE_S, DRAIN_S

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("example", "example-cpu")
CRD_SCHEMAS = Path(__file__).with_name("k8s_crd_schemas.yaml")
# The oldest Kubernetes the manifests are meant for, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.29", "1.37")
CORE_GROUPS = ("v1", "apps/v1", "policy/v1", "networking.k8s.io/v1")
ROLES: dict[str, type[RoleSettings]] = {"serve": SidecarSettings, "monitor": MonitorSettings, "worker": WorkerSettings}
WORKLOADS = ("Deployment", "StatefulSet")
PLACEHOLDER = "CHANGE-ME"

Obj = dict[str, Any]


# --- building the overlays --------------------------------------------------------------------------


def _docs(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _kustomization(directory: Path) -> Obj:
    loaded: Obj = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    return loaded


def _env_file(path: Path) -> dict[str, str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    pairs = [line.split("=", 1) for line in lines if line and not line.startswith("#")]
    assert all(len(pair) == 2 for pair in pairs), f"{path}: every line must be KEY=VALUE"
    return dict((key, value) for key, value in pairs)


def _generated(kustomization: Obj, directory: Path) -> Iterator[Obj]:
    """The ConfigMaps and Secrets of the generators, without kustomize's hash suffix."""
    for generator in kustomization.get("configMapGenerator", []):
        data = {}
        for entry in generator.get("files", []):
            key, _, file = entry.rpartition("=")
            data[key or PurePosixPath(file).name] = (directory / file).read_text(encoding="utf-8")
        yield {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}
    for generator in kustomization.get("secretGenerator", []):
        values: dict[str, str] = {}
        for env in generator.get("envs", []):
            values.update(_env_file(directory / env))
        data = {key: base64.b64encode(value.encode()).decode() for key, value in values.items()}
        yield {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": generator["name"]},
            "type": "Opaque",
            "data": data,
        }


def _merged(directory: Path) -> list[Obj]:
    """The objects of a kustomization without kustomize: resources, components and generators, with
    no patch applied (the patches' targets are checked on their own)."""
    kustomization = _kustomization(directory)
    objects: list[Obj] = []
    for entry in [*kustomization.get("resources", []), *kustomization.get("components", [])]:
        path = directory / entry
        objects += _merged(path) if path.is_dir() else _docs(path)
    return objects + list(_generated(kustomization, directory))


@functools.cache
def _kubectl_build(overlay: str) -> tuple[Obj, ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def _build(overlay: str) -> list[Obj]:
    """The overlay as the cluster would get it: kubectl's kustomize when installed (it is on our
    machines), else the plain merge."""
    if shutil.which("kubectl"):
        return list(_kubectl_build(overlay))
    return _merged(K8S / "overlays" / overlay)


@pytest.fixture(params=[pytest.param(overlay, id=overlay) for overlay in OVERLAYS])
def built(request: pytest.FixtureRequest) -> list[Obj]:
    return _build(request.param)


def _by_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [obj for obj in objects if obj["kind"] == kind]


def _one(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [obj for obj in _by_kind(objects, kind) if obj["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _templates(objects: list[Obj]) -> list[tuple[Obj, Obj]]:
    """(workload, pod template) of every Deployment and StatefulSet."""
    return [(obj, obj["spec"]["template"]) for obj in objects if obj["kind"] in WORKLOADS]


def _vai_containers(objects: list[Obj]) -> list[tuple[str, Obj, Obj]]:
    """(role, pod template, container) of every container running `vai-sidecar ROLE`."""
    found = []
    for _, template in _templates(objects):
        for container in _all_containers(template):
            command = container.get("command", [])
            if command[:1] == ["vai-sidecar"]:
                found.append((command[1], template, container))
    return found


def _all_containers(template: Obj) -> list[Obj]:
    """A pod template's containers, its init containers (native sidecars among them) included."""
    containers: list[Obj] = template["spec"]["containers"] + template["spec"].get("initContainers", [])
    return containers


def _labels(template: Obj) -> dict[str, str]:
    labels: dict[str, str] = template["metadata"].get("labels", {})
    return labels


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    if not selector:
        return True
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        ok = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]
        if not ok:
            return False
    return True


def _selected(objects: list[Obj], selector: Obj) -> list[Obj]:
    return [template for _, template in _templates(objects) if _selects(selector, _labels(template))]


def _port_names(template: Obj) -> set[str]:
    return {port["name"] for container in _all_containers(template) for port in container.get("ports", [])}


def _secret(objects: list[Obj], name: str) -> dict[str, str]:
    data = _one(objects, "Secret", name)["data"]
    return {key: base64.b64decode(value).decode() for key, value in data.items()}


def _env(container: Obj, name: str) -> Obj:
    found: list[Obj] = [var for var in container.get("env", []) if var["name"] == name]
    assert len(found) == 1, f"{container['name']}: {name} set {len(found)} times"
    return found[0]


def _setting_exists(settings: type[BaseModel], variable: str) -> bool:
    """Whether `variable` is VAI_<FIELD> (or VAI_<FIELD>__<NESTED>...) of `settings`."""
    if not variable.startswith("VAI_"):
        return False
    model: Any = settings
    for part in variable.removeprefix("VAI_").lower().split("__"):
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return False
        model = model.model_fields[part].annotation
    return True


# --- the files ---------------------------------------------------------------------------------------


def _kustomization_dirs() -> list[Path]:
    return sorted(path.parent for path in K8S.rglob("kustomization.yaml"))


def test_every_yaml_file_parses() -> None:
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        for doc in _docs(path):
            assert isinstance(doc, dict), path
    for path in K8S.rglob("*.env"):
        assert _env_file(path), path


@pytest.mark.parametrize(
    "directory", [pytest.param(path, id=str(path.relative_to(K8S))) for path in _kustomization_dirs()]
)
def test_every_file_a_kustomization_names_exists(directory: Path) -> None:
    kustomization = _kustomization(directory)
    named = [*kustomization.get("resources", []), *kustomization.get("components", [])]
    named += [patch["path"] for patch in kustomization.get("patches", []) if "path" in patch]
    for generator in kustomization.get("configMapGenerator", []) + kustomization.get("secretGenerator", []):
        named += [entry.rpartition("=")[2] for entry in generator.get("files", [])] + generator.get("envs", [])
    for entry in named:
        assert (directory / entry).exists(), f"{directory.relative_to(K8S)}: {entry} does not exist"


def test_every_patch_has_a_target() -> None:
    """A patch whose target is missing fails `kubectl apply -k`; one in a component, silently nothing."""
    existing = {
        (obj["kind"], obj["metadata"]["name"]) for overlay in OVERLAYS for obj in _merged(K8S / "overlays" / overlay)
    }
    for directory in _kustomization_dirs():
        for patch in _kustomization(directory).get("patches", []):
            if "path" in patch:
                targets = [(doc["kind"], doc["metadata"]["name"]) for doc in _docs(directory / patch["path"])]
            else:
                targets = [(patch["target"]["kind"], patch["target"]["name"])]
            for target in targets:
                assert target in existing, f"{directory.relative_to(K8S)}: patch target {target} does not exist"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_builds_what_the_resource_lists_name(overlay: str) -> None:
    def names(objects: list[Obj] | tuple[Obj, ...]) -> set[tuple[str, str]]:
        # kustomize appends a content hash to generated ConfigMaps.
        return {(obj["kind"], re.sub(r"-[a-z0-9]{10}$", "", obj["metadata"]["name"])) for obj in objects}

    assert names(_kubectl_build(overlay)) == names(_merged(K8S / "overlays" / overlay))


# --- schemas ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kubernetes_validate() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("kubernetes-validate is not installed (it is a dev dependency)")
        pytest.skip("kubernetes-validate is not installed")
    return kubernetes_validate


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_objects_match_the_kubernetes_schemas(built: list[Obj], version: str, kubernetes_validate: Any) -> None:
    core = [obj for obj in built if obj["apiVersion"] in CORE_GROUPS]
    assert len(core) >= 15
    for obj in core:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} ({version}): {error.message} at {list(error.path)}")


def test_custom_resources_match_their_crd_schemas(built: list[Obj]) -> None:
    schemas = yaml.safe_load(CRD_SCHEMAS.read_text(encoding="utf-8"))
    definitions = schemas.pop("$defs")
    custom = [obj for obj in built if obj["apiVersion"] not in CORE_GROUPS]
    assert {obj["kind"] for obj in custom} == set(schemas), "a kind with no schema, or a schema for no object"
    for obj in custom:
        schema = {"$defs": definitions, **schemas[obj["kind"]]}
        errors = list(jsonschema.Draft202012Validator(schema).iter_errors(obj))
        assert not errors, f"{obj['kind']}/{obj['metadata']['name']}: " + "; ".join(
            f"{error.message} at {list(error.path)}" for error in errors
        )


# --- the PrometheusRule --------------------------------------------------------------------------------


def test_prometheus_rule_is_generated_from_the_rules_file() -> None:
    assert k8s_rules.TARGET.read_text(encoding="utf-8") == k8s_rules.render(), (
        "deploy/k8s/base/prometheusrule.yaml is out of date: run python scripts/k8s_rules.py"
    )
    generated = _docs(k8s_rules.TARGET)[0]
    assert generated["spec"]["groups"] == yaml.safe_load(k8s_rules.SOURCE.read_text(encoding="utf-8"))["groups"]


def test_prometheus_rule_passes_promtool(promtool: str, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": _docs(k8s_rules.TARGET)[0]["spec"]["groups"]}), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the vai containers and their settings ---------------------------------------------------------------


def test_every_vai_variable_is_a_setting_of_its_role(built: list[Obj]) -> None:
    containers = _vai_containers(built)
    assert {role for role, _, _ in containers} == set(ROLES)
    for role, _, container in containers:
        for var in container.get("env", []):
            assert _setting_exists(ROLES[role], var["name"]), (
                f"{role}: {var['name']} is no setting of {ROLES[role].__name__}"
            )
    # The other containers (the model server) set no VAI_* variable: those are the roles' own.
    for _, template in _templates(built):
        for container in _all_containers(template):
            if container.get("command", [])[:1] != ["vai-sidecar"]:
                assert not [var for var in container.get("env", []) if var["name"].startswith("VAI_")]


def _environment(container: Obj, template: Obj, objects: list[Obj], tmp_path: Path) -> dict[str, str]:
    """The container's environment, Secrets resolved, with its config file copied out of its ConfigMap."""
    environment: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            environment[var["name"]] = var["value"]
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            environment[var["name"]] = _secret(objects, ref["name"])[ref["key"]]
        else:
            assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            environment[var["name"]] = "pod-0"
    config = PurePosixPath(environment["VAI_CONFIG_FILE"])
    (mount,) = [m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == config.parent]
    (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == mount["name"]]
    text = _one(objects, "ConfigMap", volume["configMap"]["name"])["data"][config.name]
    copy = tmp_path / config.name
    copy.write_text(text, encoding="utf-8")
    environment["VAI_CONFIG_FILE"] = str(copy)
    return environment


def _settings(
    container: Obj, template: Obj, objects: list[Obj], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:
    for name in [name for name in os.environ if name.startswith("VAI_")]:
        monkeypatch.delenv(name)
    for name, value in _environment(container, template, objects, tmp_path).items():
        monkeypatch.setenv(name, value)
    return ROLES[container["command"][1]]()


def _container_port(container: Obj, name: str) -> int:
    (port,) = [port["containerPort"] for port in container["ports"] if port["name"] == name]
    return int(port)


def test_each_role_accepts_its_environment_and_the_config_file(
    built: list[Obj], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for role, template, container in _vai_containers(built):
        settings = _settings(container, template, built, tmp_path, monkeypatch)
        # Bound to every interface, or neither the kubelet's probes nor Prometheus reach it.
        assert settings.host == "0.0.0.0", role
        assert settings.redis_url and settings.redis_url.startswith("redis"), role
        if role == "serve":
            assert settings.monitor == "external"
            assert settings.port == _container_port(container, "vai-http")
            assert settings.ingest_tokens and settings.read_tokens and settings.admin_tokens
            assert "digits" in settings.models
        elif role == "monitor":
            assert settings.monitor_metrics_port == _container_port(container, "metrics")
        else:
            assert settings.worker_metrics_port == _container_port(container, "metrics")
            configs = attribution_configs(settings.models)
            assert set(configs) == {"digits"}
            mounts = [PurePosixPath(mount["mountPath"]) for mount in container["volumeMounts"]]
            for config in configs.values():
                weights = PurePosixPath(str(config.model.weights or config.model.torchscript))
                assert any(weights.is_relative_to(mount) for mount in mounts), f"{weights} is on no volume"


MIB = 1024 * 1024
_QUANTITY = {"Ki": 1024, "Mi": MIB, "Gi": 1024 * MIB}
SIDECAR_IDLE_BYTES = 90 * MIB
"""Resident sidecar with headroom, buffers empty (measured ~80-95 MiB, python -m benchmarks.startup)."""
EMBEDDING_WIDTH = 512
"""The widest embedding the example is sized for (the comment in model-server.yaml gives the formula)."""
MONITOR_RECORD_OVERHEAD_BYTES = 1024


def _bytes(quantity: str) -> int:
    found = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity)
    assert found is not None, f"{quantity}: not a quantity in Ki, Mi or Gi"
    return int(found.group(1)) * _QUANTITY[found.group(2)]


def test_the_sidecar_is_sized_for_its_footprint_and_probed_on_livez(
    built: list[Obj], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sidecars = [(template, container) for role, template, container in _vai_containers(built) if role == "serve"]
    assert len(sidecars) == 1
    template, container = sidecars[0]
    assert container["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}
    assert set(container["resources"]["limits"]) == {"memory"}, "no CPU limit: throttling only delays events"
    # A Redis outage fills both buffers to their caps; an OOM kill then loses every buffered sample.
    # Measured: 348 MiB resident at the default caps with 512-wide embeddings.
    settings = _settings(container, template, built, tmp_path, monkeypatch)
    full = (
        SIDECAR_IDLE_BYTES
        + settings.buffer_max_bytes
        + settings.monitor_buffer_records * (8 * EMBEDDING_WIDTH + MONITOR_RECORD_OVERHEAD_BYTES)
    )
    limit = _bytes(container["resources"]["limits"]["memory"])
    assert limit >= full, f"limit {limit / MIB:.0f} MiB < {full / MIB:.0f} MiB with both buffers full"
    assert limit >= 348 * MIB
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/livez", "port": "vai-http"}, probe
    # The pod also runs the model server: the sidecar's port name must not clash with its ports.
    names = [port["name"] for c in _all_containers(template) for port in c.get("ports", [])]
    assert len(names) == len(set(names))
    assert _labels(template)["vai-sidecar/enabled"] == "true"


def test_the_sidecar_starts_before_and_stops_after_the_model_server(built: list[Obj]) -> None:
    """A native sidecar: an init container that keeps running. The model server starts once it answers /livez
    and it is stopped only after the model server exits, so the events of the server's own start and shutdown
    land; the grace period leaves room for the model server's drain and then the sidecar's whole stop."""
    ((template, container),) = [(t, c) for role, t, c in _vai_containers(built) if role == "serve"]
    assert container in template["spec"]["initContainers"] and container["restartPolicy"] == "Always"
    assert container["startupProbe"]["httpGet"] == {"path": "/livez", "port": "vai-http"}
    sidecar_stop = GRACEFUL_SHUTDOWN_S + DRAIN_S + CLOSE_S
    assert template["spec"]["terminationGracePeriodSeconds"] >= sidecar_stop + 30  # 30 s: the default grace


def test_the_monitor_runs_two_replicas_probed_on_metrics(built: list[Obj]) -> None:
    monitor = _one(built, "Deployment", "vai-monitor")
    assert monitor["spec"]["replicas"] == 2
    (container,) = monitor["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, probe
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    pdb = _one(built, "PodDisruptionBudget", "vai-monitor")
    assert _selected(built, pdb["spec"]["selector"]) == [monitor["spec"]["template"]]


def test_the_worker_asks_for_a_gpu_and_the_cpu_variant_does_not() -> None:
    variants = [("example", "cuda"), ("example-cpu", "cpu")]
    # The plain merge applies no patch, so only kustomize builds the CPU variant.
    for overlay, device in variants if shutil.which("kubectl") else variants[:1]:
        worker = _one(_build(overlay), "Deployment", "vai-worker")
        spec = worker["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        assert _env(container, "VAI_WORKER_DEVICE")["value"] == device, overlay
        gpus = {section: container["resources"][section].get("nvidia.com/gpu") for section in ("requests", "limits")}
        if device == "cuda":
            assert gpus == {"requests": "1", "limits": "1"}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        else:
            assert gpus == {"requests": None, "limits": None}
            assert not spec.get("tolerations")


# --- objects that refer to one another ----------------------------------------------------------------------


def test_workloads_and_services_select_their_pods(built: list[Obj]) -> None:
    for workload, template in _templates(built):
        assert _selects(workload["spec"]["selector"], _labels(template)), workload["metadata"]["name"]
        assert len(_selected(built, workload["spec"]["selector"])) == 1, workload["metadata"]["name"]
    for service in _by_kind(built, "Service"):
        pods = _selected(built, {"matchLabels": service["spec"]["selector"]})
        assert pods, f"Service/{service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert all(target in _port_names(pod) for pod in pods), f"Service/{service['metadata']['name']}: {target}"


def _scrape_jobs() -> set[str]:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    return {job["job_name"] for job in config["scrape_configs"]}


def test_prometheus_scrapes_every_role_under_the_job_names_the_alerts_use(built: list[Obj]) -> None:
    jobs: dict[str, list[Obj]] = {}
    for monitor in _by_kind(built, "PodMonitor"):
        pods = _selected(built, monitor["spec"]["selector"])
        assert pods, f"PodMonitor/{monitor['metadata']['name']} selects no pod"
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert all(endpoint["port"] in _port_names(pod) for pod in pods)
            (job,) = [r["replacement"] for r in endpoint["relabelings"] if r.get("targetLabel") == "job"]
            jobs[job] = pods
    for monitor in _by_kind(built, "ServiceMonitor"):
        services = [
            s
            for s in _by_kind(built, "Service")
            if _selects(monitor["spec"]["selector"], s["metadata"].get("labels", {}))
        ]
        assert len(services) == 1, f"ServiceMonitor/{monitor['metadata']['name']}"
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in {port["name"] for port in services[0]["spec"]["ports"]}
            (job,) = [r["replacement"] for r in endpoint["relabelings"] if r.get("targetLabel") == "job"]
            jobs[job] = _selected(built, {"matchLabels": services[0]["spec"]["selector"]})
    assert set(jobs) == _scrape_jobs() == {"vai-sidecar", "vai-monitor", "vai-worker"}
    # Each job scrapes the pods of its role, and every vai container is scraped.
    role_jobs = {"serve": "vai-sidecar", "monitor": "vai-monitor", "worker": "vai-worker"}
    for role, template, _ in _vai_containers(built):
        assert template in jobs[role_jobs[role]], role


def test_network_policies_select_pods_and_name_their_ports(built: list[Obj]) -> None:
    policies = _by_kind(built, "NetworkPolicy")
    assert {policy["metadata"]["name"] for policy in policies} == {"model-server", "redis", "vai-metrics"}
    for policy in policies:
        pods = _selected(built, policy["spec"]["podSelector"])
        assert pods, f"NetworkPolicy/{policy['metadata']['name']} selects no pod"
        for rule in policy["spec"]["ingress"]:
            for port in rule["ports"]:
                assert all(port["port"] in _port_names(pod) for pod in pods), policy["metadata"]["name"]


def test_only_monitoring_and_labelled_clients_reach_the_sidecar_port(built: list[Obj]) -> None:
    policy = _one(built, "NetworkPolicy", "model-server")
    rules = {tuple(port["port"] for port in rule["ports"]): rule.get("from") for rule in policy["spec"]["ingress"]}
    assert rules[("vai-http",)] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
        {"podSelector": {"matchLabels": {"vai-sidecar/api-client": "true"}}},
    ]
    assert rules[("http",)] is None  # the model server's own port stays open
    for role, template, _ in _vai_containers(built):
        if role == "serve":
            assert _selects(policy["spec"]["podSelector"], _labels(template))


def test_every_redis_client_may_reach_redis_and_nothing_else(built: list[Obj]) -> None:
    policy = _one(built, "NetworkPolicy", "redis")
    (rule,) = policy["spec"]["ingress"]
    pod_peers = [peer["podSelector"] for peer in rule["from"] if "namespaceSelector" not in peer]
    clients = [
        template
        for _, template in _templates(built)
        if any(
            var["name"] in ("VAI_REDIS_URL", "REDIS_PASSWORD")
            and template["metadata"]["labels"].get("app.kubernetes.io/name") != "redis"
            for container in _all_containers(template)
            for var in container.get("env", [])
        )
    ]
    assert len(clients) == 3  # model-server (sidecar), monitor, worker
    for template in clients:
        assert any(_selects(peer, _labels(template)) for peer in pod_peers), _labels(template)
    # KEDA's operator reads the stream backlog from its own namespace.
    assert any(
        peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") == "keda"
        for peer in rule["from"]
    )


def test_pods_get_no_service_variables_that_could_shadow_a_setting(built: list[Obj]) -> None:
    """Kubernetes injects NAME_SERVICE_HOST, NAME_PORT=tcp://... for every Service; a Service named
    "vai" would set VAI_PORT and the sidecar would refuse to start."""
    for workload, template in _templates(built):
        assert template["spec"].get("enableServiceLinks") is False, workload["metadata"]["name"]
    for service in _by_kind(built, "Service"):
        prefix = service["metadata"]["name"].upper().replace("-", "_")
        injected = [f"{prefix}_SERVICE_HOST", f"{prefix}_SERVICE_PORT", f"{prefix}_PORT"]
        for port in service["spec"]["ports"]:
            injected += [
                f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}",
                f"{prefix}_PORT_{port['port']}_TCP",
            ]
        for variable in injected:
            assert not any(_setting_exists(settings, variable) for settings in ROLES.values()), variable


# --- autoscaling ---------------------------------------------------------------------------------------------


def test_keda_scales_the_workers_on_the_backlog_of_every_explained_model(
    built: list[Obj], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (scaled,) = _by_kind(built, "ScaledObject")
    spec = scaled["spec"]
    target = _one(built, "Deployment", spec["scaleTargetRef"]["name"])
    assert spec["scaleTargetRef"]["kind"] == "Deployment"
    assert "replicas" not in target["spec"], "re-applying would reset the autoscaler's choice"
    assert 1 == spec["minReplicaCount"] < spec["maxReplicaCount"]
    (worker,) = [(template, c) for role, template, c in _vai_containers(built) if role == "worker"]
    models = attribution_configs(_settings(worker[1], worker[0], built, tmp_path, monkeypatch).models)
    streams = {keys.sample_stream(model) for model in models}
    by_kind: dict[str, set[str]] = {"lagCount": set(), "pendingEntriesCount": set()}
    for trigger in spec["triggers"]:
        metadata = trigger["metadata"]
        assert trigger["type"] == "redis-streams"
        assert metadata["consumerGroup"] == keys.CONSUMER_GROUP
        (kind,) = [kind for kind in by_kind if kind in metadata]
        assert int(metadata[kind]) >= 1
        by_kind[kind].add(metadata["stream"])
    assert by_kind == {"lagCount": streams, "pendingEntriesCount": streams}


def test_keda_reads_the_redis_the_workers_use(built: list[Obj]) -> None:
    (scaled,) = _by_kind(built, "ScaledObject")
    for trigger in scaled["spec"]["triggers"]:
        auth = _one(built, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        params = {ref["parameter"]: _secret(built, ref["name"])[ref["key"]] for ref in auth["spec"]["secretTargetRef"]}
        url = urlsplit(_secret(built, "vai-redis")["url"])
        assert params["address"] == f"{url.hostname}:{url.port}"
        assert params["password"] == url.password
        assert trigger["metadata"]["databaseIndex"] == (url.path.strip("/") or "0")
        assert trigger["metadata"]["enableTLS"] == str(url.scheme == "rediss").lower()


def test_the_model_server_sends_exactly_one_ingest_token(
    built: list[Obj], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sidecar takes a comma-separated list (several during a rotation); a bearer header takes one."""
    (server,) = [
        container
        for template in (t for _, t in _templates(built))
        for container in template["spec"].get("containers", [])
        if container["name"] == "model-server"
    ]
    ref = _env(server, "SIDECAR_INGEST_TOKEN")["valueFrom"]["secretKeyRef"]
    token = _secret(built, ref["name"])[ref["key"]]
    assert "," not in token and token.strip() == token and token
    ((_, template, sidecar),) = [entry for entry in _vai_containers(built) if entry[0] == "serve"]
    ingest = _env(sidecar, "VAI_INGEST_TOKENS")["valueFrom"]["secretKeyRef"]
    assert ref["key"] != ingest["key"], "the ingest-tokens key is a list, documented as comma-separated"
    settings = _settings(sidecar, template, built, tmp_path, monkeypatch)
    assert token in list(settings.ingest_tokens)


def test_example_secrets_are_marked_placeholders(built: list[Obj]) -> None:
    for name in ("vai-tokens", "vai-redis"):
        for key, value in _secret(built, name).items():
            if key != "address":
                assert PLACEHOLDER in value, f"Secret {name}/{key} is not marked as a placeholder"
