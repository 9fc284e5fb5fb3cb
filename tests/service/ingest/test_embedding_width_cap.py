"""An embedding wider than VAI_MAX_EMBEDDING_DIMS is refused, on events (list or tensor) and on references: a model's
width is set by its first event, and the monitor keeps thousands of rows of it (150 events of 500,000 values took a
monitor from 0.5 to 1.2 GB)."""

from __future__ import annotations

import base64
from collections.abc import Callable

import numpy as np
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry

from helpers import event


def _compact(values: NDArray[np.float64]) -> dict[str, object]:
    data = base64.b64encode(values.astype("<f4").tobytes()).decode()
    return {"dtype": "float32", "shape": list(values.shape), "data": data}


def test_a_too_wide_embedding_rejects_its_event_alone(make_client: Callable[..., TestClient]) -> None:
    registry = CollectorRegistry()
    client = make_client(registry=registry, max_embedding_dims=16)
    events = [
        event("wide", embedding=[0.5] * 17),
        event("wide-tensor", embedding=_compact(np.full(17, 0.5))),
        event("fits", embedding=[0.5] * 16),
    ]
    answer = client.post("/v1/events", json={"events": events})
    assert answer.status_code == 202, answer.text
    assert answer.json()["accepted"] == 1
    rejected = {r["request_id"]: (r["field"], r["error"]) for r in answer.json()["rejected"]}
    assert rejected == {
        rid: ("embedding", "embedding: 17 values: more than 16 (VAI_MAX_EMBEDDING_DIMS)")
        for rid in ("wide", "wide-tensor")
    }
    assert registry.get_sample_value("vai_events_rejected_total", {"reason": "embedding_length"}) == 2


def test_a_too_wide_reference_is_refused_naming_its_rows(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_embedding_dims=16)
    answer = client.put("/v1/models/digits/reference", json={"embeddings": [[0.1 * i] * 17 for i in range(12)]})
    assert answer.status_code == 422 and answer.json()["field"] == "embeddings", answer.text
    assert "more than 16 (VAI_MAX_EMBEDDING_DIMS)" in answer.json()["error"]
