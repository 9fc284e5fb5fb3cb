"""Shared fixtures: a real redis-server on a random loopback port, settings, a running app."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

import monitors.drift.online  # noqa: F401  # alibi-detect's slow import once, here, never racing in a monitor thread
from attribution_workers.loader import LoadedModel, ModelSpec, load_model
from attribution_workers.settings import WorkerSettings
from common.embedded_redis import EmbeddedRedis
from demo.models import digits, tabular
from demo.models.training import DatasetSplit
from helpers import MonitorRunner
from service.app import create_app
from service.settings import SidecarSettings


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """One real redis-server for the session; tests flush it through ``redis_url``."""
    server = EmbeddedRedis(data_dir=tmp_path_factory.mktemp("redis"), append_only=False).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def make_settings(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Callable[..., SidecarSettings]:
    """SidecarSettings on the test Redis, isolated from the caller's ``VAI_*`` environment."""
    import os

    for name in list(os.environ):
        if name.startswith("VAI_"):
            monkeypatch.delenv(name)

    def make(**overrides: Any) -> SidecarSettings:
        # A 2-core CI runner busy with a monitor process can stall a Redis reply past the 0.5 s default,
        # which the sidecar rightly answers with 503; tests about timeouts set their own.
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "policy_refresh_s": 0.1,
            "queue_poll_s": 0.1,
            "redis_timeout_s": 5.0,
        }
        values.update(overrides)
        return SidecarSettings(**values)

    return make


@pytest.fixture
def make_worker_settings(
    redis_url: str, make_settings: Callable[..., SidecarSettings]
) -> Callable[..., WorkerSettings]:
    """Attribution-worker settings on the test Redis (``make_settings`` has cleared ``VAI_*``)."""

    def make(**overrides: Any) -> WorkerSettings:
        values: dict[str, Any] = {"redis_url": redis_url, "worker_block_ms": 50, "worker_metrics_port": 0}
        values.update(overrides)
        return WorkerSettings(**values)

    return make


@pytest.fixture(name="monitors")  # the function's own name would shadow the ``monitors`` package imported above
def monitor_runner(redis_url: str, make_settings: Callable[..., SidecarSettings]) -> Iterator[MonitorRunner]:
    """Start in-process monitors with ``monitors.start(**settings)``; all are stopped after the test."""
    runner = MonitorRunner(redis_url)
    yield runner
    for process in reversed(runner.started):
        runner.stop(process)


@pytest.fixture
def make_client(make_settings: Callable[..., SidecarSettings]) -> Iterator[Callable[..., TestClient]]:
    """Start the app (lifespan included) with settings overrides; stopped after the test."""
    clients: list[TestClient] = []

    def make(registry: CollectorRegistry | None = None, **overrides: Any) -> TestClient:
        client = TestClient(create_app(make_settings(**overrides), registry=registry))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of this test alone, free to be stopped and restarted (same port, same data)."""
    server = EmbeddedRedis(data_dir=tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread: these models are tiny, and spinning OpenMP threads crawl on a busy 2-core runner."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def digits_split() -> DatasetSplit:
    return digits.load_digits_split()


@pytest.fixture(scope="session")
def digits_path(model_dir: Path) -> Path:
    return digits.ensure_digits_model(model_dir)


@pytest.fixture(scope="session")
def digits_model(digits_path: Path) -> LoadedModel:
    spec = ModelSpec(torchscript=digits_path, input_shape=digits.INPUT_SHAPE, num_classes=digits.NUM_CLASSES)
    return load_model(spec, device="cpu")


@pytest.fixture(scope="session")
def tabular_split() -> DatasetSplit:
    return tabular.load_breast_cancer_split()


@pytest.fixture(scope="session")
def tabular_path(model_dir: Path) -> Path:
    return tabular.ensure_breast_cancer_model(model_dir)


@pytest.fixture(scope="session")
def tabular_model(tabular_path: Path) -> LoadedModel:
    spec = ModelSpec(torchscript=tabular_path, input_shape=(tabular.NUM_FEATURES,), num_classes=tabular.NUM_CLASSES)
    return load_model(spec, device="cpu")
