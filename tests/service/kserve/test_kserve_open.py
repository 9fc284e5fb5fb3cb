"""``VAI_KSERVE_OPEN``: KServe's logger sends no token, so ``POST /v1/cloudevents`` alone may be open; and the
config checks of the ``kserve`` sections at start-up."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from helpers import event
from service import main as cli
from service.settings import SidecarSettings

ClientFactory = Callable[..., TestClient]
TOKENS = {"ingest_tokens": ("i",), "read_tokens": ("r",), "admin_tokens": ("a",)}
MODELS: dict[str, Any] = {"iris": {"sampling": {"every_n": 1}, "kserve": {"scores_are": "probabilities"}}}
RESPONSE = {
    "ce-specversion": "1.0",
    "ce-type": "org.kubeflow.serving.inference.response",
    "ce-inferenceservicename": "iris",
    "ce-component": "predictor",
    "content-type": "application/json",
}
PREDICTIONS = json.dumps({"predictions": [[0.8, 0.15, 0.05]]}).encode()


def _cloudevent(client: TestClient, authorization: str | None = None) -> int:
    headers = RESPONSE | {"ce-id": str(uuid.uuid4())}
    if authorization is not None:
        headers["authorization"] = authorization
    return client.post("/v1/cloudevents", content=PREDICTIONS, headers=headers).status_code


def test_with_kserve_open_cloudevents_needs_no_token_and_every_other_route_keeps_its_tokens(
    make_client: ClientFactory,
) -> None:
    client = make_client(models=MODELS, kserve_open=True, **TOKENS)
    assert _cloudevent(client) == 200
    assert _cloudevent(client, "Bearer wrong") == 200
    assert client.post("/v1/events", json=event("r1")).status_code == 401
    assert client.get("/status").status_code == 401
    assert client.put("/v1/models/m/sampling", json={"every_n": 7}).status_code == 401
    assert client.post("/v1/events", json=event("r2"), headers={"authorization": "Bearer i"}).status_code == 202


def test_without_kserve_open_cloudevents_needs_the_ingest_token(make_client: ClientFactory) -> None:
    client = make_client(models=MODELS, **TOKENS)
    assert _cloudevent(client) == 401
    assert _cloudevent(client, "Bearer r") == 403
    assert _cloudevent(client, "Bearer i") == 200


def test_kserve_open_with_tokens_binds_any_address_and_warns(
    make_settings: Callable[..., SidecarSettings], uvicorn_runs: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(host="0.0.0.0", kserve_open=True, ingest_tokens=("i",), monitors_enabled=False)
    with caplog.at_level(logging.WARNING, logger="vai_sidecar"):
        assert cli.serve_forever(settings) == 0
    assert uvicorn_runs == ["0.0.0.0"]
    assert "NetworkPolicy" in caplog.text


def test_kserve_open_does_not_stand_in_for_tokens(
    make_settings: Callable[..., SidecarSettings], uvicorn_runs: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """With no tokens every route would be open, not only the logger's: still refused, and the fix named."""
    settings = make_settings(host="0.0.0.0", kserve_open=True, monitors_enabled=False)
    with caplog.at_level(logging.ERROR, logger="vai_sidecar"):
        assert cli.serve_forever(settings) == 2
    assert uvicorn_runs == []
    assert "VAI_KSERVE_OPEN" in caplog.text


@pytest.mark.parametrize(
    ("models", "message"),
    [
        pytest.param(
            {"modèle": {"kserve": {"scores_are": "logits"}}}, "models.modèle: not a model name", id="bad-section-name"
        ),
        pytest.param(
            {
                "a": {"kserve": {"scores_are": "logits", "service": "isvc"}},
                "b": {"kserve": {"scores_are": "logits", "service": "isvc"}},
            },
            "models.a.kserve and models.b.kserve both map InferenceService 'isvc'",
            id="same-service-twice",
        ),
        pytest.param(
            {"a": {"kserve": {"scores_are": "logits"}}, "b": {"kserve": {"scores_are": "logits", "service": "a"}}},
            "models.a.kserve and models.b.kserve both map InferenceService 'a'",
            id="service-named-like-another-section",
        ),
    ],
)
def test_kserve_sections_that_could_never_ingest_are_refused_at_start_up(
    make_settings: Callable[..., SidecarSettings], models: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        make_settings(models=models)
