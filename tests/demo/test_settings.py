"""The demo's settings of each role (that nothing in the product imports the demo: tests/test_architecture.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from attribution_workers.config import attribution_configs
from demo.settings import COHORT_KEYS, METHODS, MODEL, monitor_settings, sidecar_settings, worker_settings
from service.settings import SidecarSettings


@pytest.fixture
def base(monkeypatch: pytest.MonkeyPatch) -> SidecarSettings:
    for name in [name for name in os.environ if name.startswith("VAI_")]:
        monkeypatch.delenv(name)
    return SidecarSettings(port=0)


def test_each_role_gets_its_own_settings_on_the_demo_redis(base: SidecarSettings, tmp_path: Path) -> None:
    url = "redis://127.0.0.1:1/0"
    model_path = tmp_path / "digits.pt"
    model_path.touch()

    sidecar = sidecar_settings(base, redis_url=url)
    monitor = monitor_settings(base, redis_url=url)
    worker = worker_settings(base, redis_url=url, model_path=model_path)

    assert sidecar.monitor == "external", "the demo runs the monitor itself; serve must not start another"
    assert sidecar.redis_url == monitor.redis_url == worker.redis_url == url
    assert sidecar.cohort_keys == monitor.cohort_keys == COHORT_KEYS
    assert sidecar.model_policy(MODEL).every_n == 20 and sidecar.port == 0
    config = attribution_configs(worker.models)[MODEL]
    assert config.methods == METHODS and config.model.torchscript == model_path.resolve()
