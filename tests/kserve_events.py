"""What the KServe tests share: the logger's event types, posting a CloudEvent, and reading what it became."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import redis
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from common import keys
from helpers import stream_entries, wait_until
from sampler.contract import SampledEvent

REQUEST = "org.kubeflow.serving.inference.request"
RESPONSE = "org.kubeflow.serving.inference.response"


def cloudevent_headers(ce_id: str, kind: str, service: str, **attributes: str) -> dict[str, str]:
    """Binary-mode CloudEvent headers as KServe's logger sends them; ``attributes`` override ``ce-*`` ones."""
    headers = {
        "ce-specversion": "1.0",
        "ce-id": ce_id,
        "ce-type": kind,
        "ce-source": f"http://localhost:9081/{service}",
        "ce-inferenceservicename": service,
        "ce-namespace": "models",
        "ce-component": "predictor",
        "ce-endpoint": "default",
        "content-type": "application/json",
    }
    return headers | {f"ce-{name}": value for name, value in attributes.items()}


def post_event(client: TestClient, headers: dict[str, str], body: bytes | dict[str, Any]) -> httpx2.Response:
    """``POST /v1/cloudevents`` with ``body`` (a dict is sent as JSON)."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/v1/cloudevents", content=content, headers=headers)


def outcome_count(registry: CollectorRegistry, model: str, name: str) -> float:
    """How many CloudEvents of ``model`` ended as ``name`` (``vai_kserve_events_total``)."""
    return registry.get_sample_value("vai_kserve_events_total", {"model": model, "outcome": name}) or 0.0


def sampled(client: redis.Redis, model: str, count: int) -> list[SampledEvent]:
    """The sampled events of ``model`` once its stream holds at least ``count`` (within 5 s)."""

    def found() -> list[SampledEvent] | None:
        entries = stream_entries(client, keys.sample_stream(model))
        return [SampledEvent.decode(fields) for _, fields in entries] if len(entries) >= count else None

    events: list[SampledEvent] = wait_until(found, timeout_s=5.0, what=f"{count} entries in the stream of {model}")
    return events
