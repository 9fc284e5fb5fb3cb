"""Layer inspection never fails a batch: a layer giving one number per input is inspected, and a layer whose figures
cannot be taken is left out of the batch (logged once) while its events are explained, through the real worker."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from small_models import small_inspector
from torch import nn

from attribution_workers.config import AttributionConfig
from attribution_workers.inspection_health import LayerHealthTracker
from attribution_workers.runtime import ModelRuntime
from attribution_workers.settings import WorkerSettings
from common import keys
from helpers import drain_worker, hash_field, wait_until
from sampler.contract import InputTensor, SampledEvent

FACTORY = f"{__name__}:gated"


class Gated(nn.Module):
    """A classifier scaled by a per-input scalar gate: ``sig`` gives one number per input (output ``[B]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.head = nn.Linear(8, 2)
        self.gate = nn.Linear(4, 1)
        self.sig = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.sig(self.gate(x).squeeze(-1))
        out: torch.Tensor = self.head(self.act(self.fc(x))) * g[:, None]
        return out


class Sparse(nn.Module):
    """Passes its input on as a sparse tensor: an output the inspection cannot summarise (no reshape)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to_sparse()


class WithSparse(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.sparse = Sparse()
        self.act = nn.ReLU()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.act(self.sparse(self.fc(x)).to_dense()))
        return out


def gated() -> Gated:
    return Gated()


def with_sparse() -> WithSparse:
    return WithSparse()


def _runtime(tmp_path: Path, factory: str, **fields: Any) -> ModelRuntime:
    torch.manual_seed(0)
    weights = tmp_path / "model.pt"
    module = gated() if factory == "gated" else with_sparse()
    torch.save(module.state_dict(), weights)
    spec = {"factory": f"{__name__}:{factory}", "weights": str(weights), "input_shape": [4], "num_classes": 2}
    config = AttributionConfig.model_validate(
        {"model": spec, "methods": ["saliency"], "fidelity_steps": 2, "fidelity_random_orders": 1, **fields}
    )
    return ModelRuntime("m", config, device="cpu")


def _events(count: int, *, prefix: str) -> list[SampledEvent]:
    rng = np.random.default_rng(0)
    now = time.time()
    return [
        SampledEvent(
            model="m",
            model_version="v1",
            request_id=f"{prefix}{i}",
            timestamp=now,
            received_at=now,
            reasons=("every_n",),
            predicted=i % 2,
            confidence=0.6,
            margin=0.4,
            num_classes=2,
            input=InputTensor.of(rng.random(4).astype(np.float32)),
        )
        for i in range(count)
    ]


def test_a_layer_giving_one_number_per_input_is_inspected_and_its_batch_explained(tmp_path: Path) -> None:
    """``sig`` gives ``[B]``: its figures are taken over that one number (one unit); it used to fail every event
    of the model with an IndexError, and each was dead-lettered although the attributions alone worked."""
    runtime = _runtime(tmp_path, "gated")
    assert [layer.name for layer in runtime.inspector.layers] == ["fc", "act", "head", "gate", "sig"]
    result = runtime.explain(_events(4, prefix="g"))
    assert all(outcome.ok for outcome in result.outcomes), [o.record.detail.error for o in result.outcomes]
    stats = {s.name: s for s in result.outcomes[0].record.detail.layers}
    assert stats["sig"].shape == () and stats["gate"].shape == (1,)
    assert stats["sig"].mean is not None and 0.0 < stats["sig"].mean < 1.0 and stats["sig"].std == 0.0
    (snapshot,) = result.layer_health
    units = {layer.name: layer.units for layer in snapshot.layers}
    assert units == {"fc": 8, "act": 8, "head": 2, "gate": 1, "sig": 1}


def test_a_layer_whose_figures_fail_is_left_out_and_logged_once_while_the_batch_is_explained(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="attribution_workers.inspection")
    runtime = _runtime(tmp_path, "with_sparse", inspect_layers=["fc", "sparse", "act"])
    for prefix in ("a", "b"):
        result = runtime.explain(_events(3, prefix=prefix))
        assert all(outcome.ok for outcome in result.outcomes), [o.record.detail.error for o in result.outcomes]
        assert all("saliency" in outcome.record.detail.attributions for outcome in result.outcomes)
        assert [s.name for s in result.outcomes[0].record.detail.layers] == ["fc", "act"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "sparse" in warnings[0] and "left out" in warnings[0]
    inspection = runtime.inspector.inspect(torch.rand(2, 4))
    assert inspection.failed == ("sparse",) and [c.name for c in inspection.captures] == ["fc", "act"]
    assert len(caplog.records) == 1, "the same layer is not logged again"


def test_a_layer_whose_units_change_is_left_out_of_its_health_rather_than_failing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A ReLU on a sequence's positions has as many units as the input is long: an input of another length
    cannot join its window (the figures would not stack); it is left out of that layer's health, logged once."""
    caplog.set_level(logging.WARNING, logger="attribution_workers.inspection_health")
    inspector = small_inspector(nn.Sequential(nn.ReLU()), (5,))
    tracker = LayerHealthTracker(window=3)
    short, long = inspector.inspect(torch.rand(2, 5) + 0.1), inspector.inspect(torch.rand(2, 7))
    for inspection in (short, long, short):
        for row in range(2):
            tracker.add("v1", inspection, row)
    snapshot = tracker.snapshot("v1")
    assert snapshot is not None and snapshot.samples == 6
    (layer,) = snapshot.layers
    assert (layer.units, layer.inputs, layer.dead_ratio) == (5, 3, 0.0)
    assert len([r for r in caplog.records if "7 units" in r.getMessage()]) == 1


# --- through the real worker and sidecar ---------------------------------------------------------------------------


def _queue_flat_inputs(
    client: TestClient, redis_client: redis.Redis, model: str, *, count: int, seed: int
) -> Callable[[], set[bytes | None]]:
    """Post ``count`` events of ``model`` with a random 4-value input (request ids ``{model[0]}{i}``), wait until
    all are queued, and return what reads their explanations' statuses."""
    rng = np.random.default_rng(seed)
    ids = [f"{model[0]}{i}" for i in range(count)]
    events = [
        {
            "model": model,
            "request_id": request_id,
            "logits": [0.3, 0.7],
            "input": {
                "shape": [4],
                "dtype": "float32",
                "data": base64.b64encode(rng.random(4).astype("<f4").tobytes()).decode(),
            },
        }
        for request_id in ids
    ]
    assert client.post("/v1/events", json={"events": events}).json()["accepted"] == count
    wait_until(lambda: redis_client.xlen(keys.sample_stream(model)) == count, what=f"{count} queued")

    def statuses() -> set[bytes | None]:
        return {hash_field(redis_client, keys.explanation(model, request_id), "status") for request_id in ids}

    return statuses


def test_events_of_a_model_with_a_scalar_gate_are_explained_not_dead_lettered(
    make_worker_settings: Callable[..., WorkerSettings],
    make_client: Callable[..., TestClient],
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "gated.pt"
    torch.save(gated().state_dict(), weights)
    model = {"factory": FACTORY, "weights": str(weights), "input_shape": [4], "num_classes": 2}
    attribution = {"model": model, "methods": ["saliency"], "fidelity_steps": 2, "fidelity_random_orders": 1}
    settings = make_worker_settings(
        models={"gated": {"attribution": attribution}}, worker_retry_after_ms=100, worker_max_deliveries=2
    )
    client = make_client(sampling={"every_n": 1, "max_per_second": 10_000})
    statuses = _queue_flat_inputs(client, redis_client, "gated", count=5, seed=1)

    registry = CollectorRegistry()
    drain_worker(settings, lambda: statuses() <= {b"done", b"failed"} and None not in statuses(), registry=registry)
    assert statuses() == {b"done"}
    assert redis_client.xlen(keys.dead_letter_stream("gated")) == 0
    record = client.get("/v1/explanations/gated/g0").json()
    assert {layer["name"]: layer["shape"] for layer in record["layers"]}["sig"] == []
    layers = client.get("/v1/models/gated/layers").json()["reports"][0]["layers"]
    assert {layer["name"]: layer["units"] for layer in layers}["sig"] == 1


def test_a_layer_left_out_of_the_inspection_is_counted_per_batch(
    make_worker_settings: Callable[..., WorkerSettings],
    make_client: Callable[..., TestClient],
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "sparse.pt"
    torch.save(with_sparse().state_dict(), weights)
    model = {"factory": f"{__name__}:with_sparse", "weights": str(weights), "input_shape": [4], "num_classes": 2}
    attribution = {
        "model": model,
        "methods": ["saliency"],
        "fidelity_steps": 2,
        "fidelity_random_orders": 1,
        "inspect_layers": ["fc", "sparse", "act"],
    }
    settings = make_worker_settings(models={"sparse": {"attribution": attribution}}, worker_retry_after_ms=100)
    client = make_client(sampling={"every_n": 1, "max_per_second": 10_000})
    statuses = _queue_flat_inputs(client, redis_client, "sparse", count=3, seed=2)

    registry = CollectorRegistry()
    drain_worker(settings, lambda: statuses() == {b"done"}, registry=registry)
    batches = registry.get_sample_value("vai_worker_batch_size_count")
    counted = registry.get_sample_value("vai_layer_inspection_failures_total", {"model": "sparse", "layer": "sparse"})
    assert batches is not None and batches >= 1 and counted == batches
    assert registry.get_sample_value("vai_layer_inspection_failures_total", {"model": "sparse", "layer": "fc"}) is None
