"""docker-compose.yml, Dockerfile and .dockerignore, checked by reading them (no Docker here)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import SidecarSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SERVICES = ("redis", "sidecar", "prometheus", "grafana")


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    return services


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_compose_has_the_four_services() -> None:
    assert set(_services()) == set(SERVICES)


@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in SERVICES])
def test_service_has_a_healthcheck(name: str) -> None:
    test = _services()[name]["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1
    assert "curl" not in test, "the images have no curl"


def test_dependencies_wait_for_health() -> None:
    services = _services()
    edges = {
        (name, dependency): spec
        for name, service in services.items()
        for dependency, spec in service.get("depends_on", {}).items()
    }
    assert set(edges) == {("sidecar", "redis"), ("prometheus", "sidecar"), ("grafana", "prometheus")}
    for (name, dependency), spec in edges.items():
        assert spec == {"condition": "service_healthy"}, f"{name} -> {dependency}"
        assert "healthcheck" in services[dependency]


def test_sidecar_service() -> None:
    sidecar = _services()["sidecar"]
    assert sidecar["build"] == "."
    environment = sidecar["environment"]
    assert environment["VAI_REDIS_URL"] == "redis://redis:6379/0"
    for name in ("VAI_INGEST_TOKENS", "VAI_READ_TOKENS", "VAI_ADMIN_TOKENS"):
        # Overridable from the environment, with a default that says it is a placeholder.
        assert re.fullmatch(rf"\$\{{{name}:-change-me-[a-z]+\}}", environment[name]), environment[name]
    # Every VAI_* variable set is a real setting (SidecarSettings forbids unknown ones anyway).
    known = {f"VAI_{field.upper()}" for field in SidecarSettings.model_fields}
    assert set(environment) <= known
    assert "/livez" in " ".join(sidecar["healthcheck"]["test"])


def test_redis_service() -> None:
    redis = _services()["redis"]
    assert redis["image"].startswith("redis:7")
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert redis["healthcheck"]["test"][1:] == ["redis-cli", "ping"]


def test_prometheus_and_grafana_services() -> None:
    services = _services()
    prometheus = services["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus")
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana")
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "change-me" in grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]


def test_bind_mounts_exist() -> None:
    for name, service in _services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).is_dir(), f"{name}: {source} does not exist"


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
