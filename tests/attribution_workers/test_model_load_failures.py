"""A model that does not load stops only itself: the worker logs why, once, exports it, and explains the others.

Under a supervisor that restarts it (compose ``restart: unless-stopped``, Kubernetes), a worker that exited on one
bad weights file was a crash loop that left every model unexplained.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from small_models import sampled_digit

from attribution_workers.main import load_runtimes, report_failures, run_worker
from attribution_workers.settings import WorkerSettings
from common import keys
from common.embedded_redis import free_port
from demo.models import digits
from demo.models.training import DatasetSplit
from helpers import hash_field, wait_until

REPO = Path(__file__).parents[2]
SHAPE = list(digits.INPUT_SHAPE)


def good_section(digits_path: Path) -> dict[str, Any]:
    spec = {"torchscript": str(digits_path), "input_shape": SHAPE, "num_classes": 10}
    return {"attribution": {"model": spec, "methods": ["saliency"], "fidelity_steps": 2, "inspect_layers": []}}


def factory_section(weights: Path, factory: str = digits.FACTORY) -> dict[str, Any]:
    spec = {"factory": factory, "weights": str(weights), "input_shape": SHAPE, "num_classes": 10}
    return {"attribution": {"model": spec, "methods": ["saliency"]}}


@pytest.fixture
def bad_weights(tmp_path: Path) -> Path:
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a state dict")
    return path


def test_the_models_that_load_are_served_and_each_other_one_says_why(
    make_worker_settings: Callable[..., WorkerSettings],
    digits_path: Path,
    bad_weights: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    models = {
        "digits": good_section(digits_path),
        "bad": factory_section(bad_weights),
        "broken": factory_section(bad_weights, factory="json:loads"),  # raises TypeError when called bare
    }
    loaded = load_runtimes(make_worker_settings(models=models))

    assert set(loaded.runtimes) == {"digits"}
    assert set(loaded.failures) == {"bad", "broken"}
    assert loaded.failures["bad"].reason.startswith(f"[models.bad.attribution]: weights {bad_weights} are not a")
    assert loaded.failures["bad"].expected
    assert loaded.failures["broken"].reason.startswith("[models.broken.attribution]: TypeError: ")
    assert not loaded.failures["broken"].expected

    with caplog.at_level(logging.ERROR, logger="attribution_workers.main"):
        assert report_failures(make_worker_settings(models=models), loaded)
    by_model = {record.getMessage().split("]")[0]: record for record in caplog.records}
    assert set(by_model) == {"[models.bad.attribution", "[models.broken.attribution"}, "one ERROR line per model"
    assert by_model["[models.bad.attribution"].exc_info is None, "its reason says it all: no traceback"
    assert by_model["[models.broken.attribution"].exc_info is not None, "not a load error we know: traceback"


@pytest.mark.parametrize(
    ("strict", "with_good", "why"),
    [
        pytest.param(False, False, "no model of VAI_CONFIG_FILE could be loaded", id="none-loads"),
        pytest.param(True, True, "VAI_WORKER_REQUIRE_ALL_MODELS is set and 1 model(s) did not load", id="strict"),
    ],
)
def test_the_worker_exits_when_nothing_loads_or_when_told_to_require_every_model(
    make_worker_settings: Callable[..., WorkerSettings],
    digits_path: Path,
    bad_weights: Path,
    caplog: pytest.LogCaptureFixture,
    strict: bool,
    with_good: bool,
    why: str,
) -> None:
    models = {"bad": factory_section(bad_weights)} | ({"digits": good_section(digits_path)} if with_good else {})
    settings = make_worker_settings(models=models, worker_require_all_models=strict, worker_torch_threads=0)

    with caplog.at_level(logging.ERROR, logger="attribution_workers.main"):
        assert run_worker(settings) == 1

    messages = [record.getMessage() for record in caplog.records]
    assert sum(message.startswith("[models.bad.attribution]: weights") for message in messages) == 1, messages
    assert why in messages[-1]


def test_sections_that_do_not_validate_refuse_the_file_naming_each_before_anything_loads(
    make_worker_settings: Callable[..., WorkerSettings], digits_path: Path
) -> None:
    """A typo in a setting is a mistake in the file: starting without that model would hide it."""
    models = {
        "digits": good_section(digits_path),
        "typo": {"attribution": good_section(digits_path)["attribution"] | {"ig_step": 64}},
        "zero": {"attribution": good_section(digits_path)["attribution"] | {"ig_steps": 0}},
    }
    with pytest.raises(SystemExit) as stopped:
        load_runtimes(make_worker_settings(models=models))

    lines = str(stopped.value.code).splitlines()
    assert lines[0] == "VAI_CONFIG_FILE: attribution sections that do not validate:"
    assert lines[1].startswith("[models.typo.attribution]: ig_step: Extra inputs are not permitted")
    assert lines[2].startswith("[models.zero.attribution]: ig_steps: Input should be greater than or equal to 1")
    assert len(lines) == 3


# --- a real worker process -----------------------------------------------------------------------


@pytest.fixture
def worker_process(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], tuple[subprocess.Popen[bytes], Path]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(settings: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VAI_")}
        env.update({"PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore", "VAI_LOG_LEVEL": "info"} | settings)
        log_file = tmp_path / "worker.log"
        with log_file.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "common.cli", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        started.append(process)
        return process, log_file

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


@pytest.mark.slow
def test_a_worker_with_one_unreadable_model_stays_up_explains_the_other_and_exports_the_failure(
    worker_process: Callable[[dict[str, str]], tuple[subprocess.Popen[bytes], Path]],
    redis_url: str,
    redis_client: redis.Redis,
    digits_path: Path,
    digits_split: DatasetSplit,
    bad_weights: Path,
) -> None:
    port = free_port()
    models = {"digits": good_section(digits_path), "bad": factory_section(bad_weights)}
    process, log_file = worker_process(
        {
            "VAI_REDIS_URL": redis_url,
            "VAI_MODELS": json.dumps(models),
            "VAI_WORKER_CONSUMER": "partial",
            "VAI_WORKER_METRICS_PORT": str(port),
            "VAI_WORKER_BLOCK_MS": "100",
        }
    )
    heartbeat = keys.worker_heartbeat("partial")
    wait_until(lambda: redis_client.exists(heartbeat) or process.poll() is not None, timeout_s=90, what="a start")
    assert process.poll() is None, log_file.read_text(errors="replace")
    image, label = digits_split.test.features[0], int(digits_split.test.labels[0])
    event = sampled_digit("good", image, predicted=label)
    redis_client.xadd(keys.sample_stream("digits"), event.encode())  # type: ignore[arg-type]  # redis-py types fields as a dict (invariant) of unions
    wait_until(
        lambda: hash_field(redis_client, keys.explanation("digits", "good"), "status") == b"done",
        timeout_s=60,
        what="the good model's sample explained",
    )

    metrics = scrape(port)
    assert 'vai_worker_model_load_failed{model="bad"} 1.0' in metrics
    assert 'vai_worker_models{model="digits"} 1.0' in metrics
    assert 'vai_worker_models{model="bad"}' not in metrics
    assert process.poll() is None, "still up"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    log = log_file.read_text(errors="replace")
    failures = [line for line in log.splitlines() if "[models.bad.attribution]" in line]
    assert len(failures) == 1, log
    assert " ERROR " in failures[0] and f"weights {bad_weights} are not a readable state dict" in failures[0], log
    assert "Traceback" not in log, log
