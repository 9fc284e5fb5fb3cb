"""``POST /v1/cloudevents``: one bad instance, or a bad optional part, costs that instance or that part alone.

A v2 scores row holding NaN rejects its instance only, as a v1 prediction does; an unusable embedding or input
(non-finite, past float32, not numeric, not one vector per instance, of another width than the model's) is left
out, the event monitored without it and counted in ``vai_kserve_parts_dropped_total``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from kserve_events import REQUEST, RESPONSE, cloudevent_headers, outcome_count, post_event, sampled
from prometheus_client import CollectorRegistry

from helpers import sidecar_of

ClientFactory = Callable[..., TestClient]
MODELS: dict[str, Any] = {
    "iris": {"sampling": {"every_n": 1}, "kserve": {"scores_are": "probabilities", "input": "instances"}},
    "digits": {
        "sampling": {"every_n": 1},
        "kserve": {
            "service": "digits-isvc",
            "scores_are": "logits",
            "scores": "logits",
            "embedding": "features",
            "input": "pixels",
        },
    },
    "plain": {"sampling": {"every_n": 1}, "kserve": {"scores_are": "logits", "cohort_metadata": ["X-Region"]}},
}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def kserve(make_client: ClientFactory, registry: CollectorRegistry) -> TestClient:
    return make_client(registry=registry, models=MODELS)


def _headers(ce_id: str, kind: str, service: str = "digits-isvc", **attributes: str) -> dict[str, str]:
    return cloudevent_headers(ce_id, kind, service, **attributes)


def _binary(headers: dict[str, str], document: dict[str, Any], *sections: bytes) -> tuple[dict[str, str], bytes]:
    """Headers and body of a payload in the binary tensor extension."""
    header = json.dumps(document).encode()
    framing = {"content-type": "application/octet-stream", "inference-header-content-length": str(len(header))}
    return headers | framing, header + b"".join(sections)


def _tensor(name: str, shape: list[int], datatype: str, data: Any) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def _logits(count: int) -> dict[str, Any]:
    return _tensor("logits", [count, 3], "FP32", [3.0, 0.5, -1.0] * count)


def _features(count: int, width: int = 2) -> dict[str, Any]:
    return _tensor("features", [count, width], "FP64", [0.5] * (count * width))


def _dropped(registry: CollectorRegistry, model: str, part: str) -> float:
    return registry.get_sample_value("vai_kserve_parts_dropped_total", {"model": model, "part": part}) or 0.0


def _rejections(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("vai_events_rejected_total", {"reason": reason}) or 0.0


# --- a bad row of the scores tensor rejects that instance only ---------------------------------------------


def _nan_as_json(ce_id: str) -> tuple[dict[str, str], bytes]:
    body = b'{"outputs":[{"name":"logits","shape":[3,2],"datatype":"FP32","data":[0.5,0.5,NaN,1.0,0.2,0.8]}]}'
    return _headers(ce_id, RESPONSE), body


def _nan_in_a_section(ce_id: str) -> tuple[dict[str, str], bytes]:
    raw = np.array([[0.5, 0.5], [np.nan, 1.0], [0.2, 0.8]], dtype="<f4").tobytes()
    tensor = {"name": "logits", "shape": [3, 2], "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}
    return _binary(_headers(ce_id, RESPONSE), {"outputs": [tensor]}, raw)


def _past_float32(ce_id: str) -> tuple[dict[str, str], bytes]:
    document = {"outputs": [_tensor("logits", [3, 2], "FP32", [0.5, 0.5, 1e39, 1.0, 0.2, 0.8])]}
    return _headers(ce_id, RESPONSE), json.dumps(document).encode()


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(_nan_as_json, id="nan-token"),
        pytest.param(_nan_in_a_section, id="nan-in-a-binary-section"),
        pytest.param(_past_float32, id="fp32-value-past-float32"),
    ],
)
def test_a_v2_scores_row_holding_nan_rejects_that_instance_only(
    kserve: TestClient,
    registry: CollectorRegistry,
    redis_client: redis.Redis,
    payload: Callable[[str], tuple[dict[str, str], bytes]],
) -> None:
    ce_id = str(uuid.uuid4())
    answer = post_event(kserve, *payload(ce_id))
    assert answer.status_code == 200, answer.text
    assert (answer.json()["outcome"], answer.json()["accepted"]) == ("response_only", 2)
    (rejected,) = answer.json()["rejected"]
    assert (rejected["index"], rejected["request_id"], rejected["field"]) == (1, f"{ce_id}:1", "logits.data")
    assert [sample.request_id for sample in sampled(redis_client, "digits", 2)] == [f"{ce_id}:0", f"{ce_id}:2"]
    assert _rejections(registry, "non_finite") == 1
    assert outcome_count(registry, "digits", "response_only") == 1
    assert outcome_count(registry, "digits", "invalid") == 0


def test_a_v2_nan_row_is_answered_as_its_v1_twin(kserve: TestClient) -> None:
    v1 = b'{"predictions":[[0.5,0.5],[NaN,1.0],[0.2,0.8]]}'
    v1_answer = post_event(kserve, _headers("twin", RESPONSE, "plain"), v1).json()
    v2_answer = post_event(kserve, *_nan_as_json("twin")).json()
    assert v1_answer | {"model": "digits"} == v2_answer


def test_a_v2_response_whose_every_scores_row_is_bad_is_answered_200_with_them_and_counted_once(
    kserve: TestClient, registry: CollectorRegistry
) -> None:
    """KServe logs any answer but 200 as a failure: the rows are rejected (and counted) as a bad row next to a good
    one is, the CloudEvent ends in its join's outcome."""
    document = {"outputs": [_tensor("logits", [2, 2], "FP64", [1e400, 0.5, 0.5, 1e400])]}
    answer = post_event(kserve, _headers(str(uuid.uuid4()), RESPONSE), json.dumps(document).encode())
    assert (answer.status_code, answer.json()["outcome"], answer.json()["accepted"]) == (200, "response_only", 0)
    assert [rejected["field"] for rejected in answer.json()["rejected"]] == ["logits.data", "logits.data"]
    assert _rejections(registry, "non_finite") == 2
    assert outcome_count(registry, "digits", "response_only") == 1
    assert outcome_count(registry, "digits", "invalid") == 0


# --- an unusable embedding is left out, the prediction kept -------------------------------------------------


@pytest.mark.parametrize(
    ("features", "dropped"),
    [
        pytest.param(_tensor("features", [3, 2], "FP64", [0.5, 0.5, float("nan"), 1.0, 0.5, 0.5]), 1, id="nan-row"),
        pytest.param(_tensor("features", [3, 2], "FP64", [0.5, 0.5, 0.5, 0.5, 1e39, 0.5]), 1, id="past-float32"),
        pytest.param(_tensor("features", [3, 2], "FP32", [0.5, 0.5, 0.5, 0.5, 1e39, 0.5]), 1, id="fp32-overflow"),
        pytest.param(_tensor("features", [3, 2], "BYTES", ["a", "b", "c", "d", "e", "f"]), 3, id="bytes"),
        pytest.param(_tensor("features", [3, 2], "FP32", [[0.5, 0.5], [0.5], [0.5, 0.5, 0.5]]), 3, id="ragged"),
        pytest.param(_tensor("features", [3, 2, 2], "FP32", [0.5] * 12), 3, id="not-vectors"),
        pytest.param(_tensor("features", [3, 2], "FP32", [0.5] * 5), 3, id="short-of-its-shape"),
    ],
)
def test_an_unusable_embedding_is_left_out_and_counted_not_the_prediction(
    kserve: TestClient, registry: CollectorRegistry, features: dict[str, Any], dropped: int
) -> None:
    document = {"outputs": [_logits(3), features]}
    answer = post_event(kserve, _headers(str(uuid.uuid4()), RESPONSE), json.dumps(document).encode())
    assert (answer.status_code, answer.json()["accepted"], answer.json()["rejected"]) == (200, 3, []), answer.text
    assert _dropped(registry, "digits", "embedding") == dropped
    assert outcome_count(registry, "digits", "invalid") == 0


def test_an_embedding_whose_section_runs_past_the_body_is_left_out(
    kserve: TestClient, registry: CollectorRegistry
) -> None:
    logits = np.tile(np.array([3.0, 0.5, -1.0], dtype="<f4"), (2, 1)).tobytes()
    features = np.full((2, 2), 0.5, dtype="<f8").tobytes()
    sized = [
        {"name": "logits", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": len(logits)}},
        {"name": "features", "shape": [2, 2], "datatype": "FP64", "parameters": {"binary_data_size": len(features)}},
    ]
    headers, body = _binary(_headers(str(uuid.uuid4()), RESPONSE), {"outputs": sized}, logits, features)
    answer = post_event(kserve, headers, body[:-5])
    assert (answer.status_code, answer.json()["accepted"]) == (200, 2), answer.text
    assert _dropped(registry, "digits", "embedding") == 2


def test_an_unusable_v1_embedding_is_left_out_not_the_prediction(make_client: ClientFactory) -> None:
    registry = CollectorRegistry()
    models = {
        "v1": {
            "sampling": {"every_n": 1},
            "kserve": {"scores_are": "logits", "scores": "logits", "embedding": "features"},
        }
    }
    client = make_client(registry=registry, models=models)
    predictions = [
        {"logits": [3.0, 0.5], "features": [0.5, 1.5]},
        {"logits": [3.0, 0.5], "features": ["not", "numbers"]},
        {"logits": [3.0, 0.5], "features": [1e39, 1.5]},
        {"logits": [3.0, 0.5], "features": [[0.5, 1.5], [0.5, 1.5]]},
        {"logits": [3.0, 0.5], "features": [0.5, 1.5, 2.5]},  # another width than the first's
    ]
    answer = post_event(client, _headers("v1", RESPONSE, "v1"), {"predictions": predictions})
    assert (answer.status_code, answer.json()["accepted"], answer.json()["rejected"]) == (200, 5, []), answer.text
    assert _dropped(registry, "v1", "embedding") == 4
    assert sidecar_of(client).ingest.embedding_dims["v1"] == 2


# --- an embedding of another width than the model's (a canary) is left out --------------------------------


def test_a_canary_embedding_of_another_width_is_left_out_not_the_prediction(
    kserve: TestClient, registry: CollectorRegistry
) -> None:
    default = {"outputs": [_logits(2), _features(2, width=64)]}
    canary = {"outputs": [_logits(2), _features(2, width=32)]}
    first = post_event(kserve, _headers(str(uuid.uuid4()), RESPONSE), default)
    assert (first.status_code, first.json()["accepted"]) == (200, 2), first.text
    answer = post_event(kserve, _headers(str(uuid.uuid4()), RESPONSE, endpoint="canary"), canary)
    assert (answer.status_code, answer.json()["accepted"], answer.json()["rejected"]) == (200, 2, []), answer.text
    assert _dropped(registry, "digits", "embedding") == 2
    assert sidecar_of(kserve).ingest.embedding_dims["digits"] == 64
    assert outcome_count(registry, "digits", "invalid") == 0


def test_events_of_another_embedding_width_are_still_refused_on_v1_events(kserve: TestClient) -> None:
    """/v1/events keeps its documented answer: the sender chose the embedding, and hears that it is wrong."""
    first = post_event(kserve, _headers(str(uuid.uuid4()), RESPONSE), {"outputs": [_logits(1), _features(1, 4)]})
    assert first.status_code == 200, first.text
    event = {"model": "digits", "request_id": "r", "logits": [1.0, 2.0, 3.0], "embedding": [0.5] * 8}
    refused = kserve.post("/v1/events", json=event)
    assert (refused.status_code, refused.json()["field"]) == (422, "embedding"), refused.text


# --- an unusable input is left out of its instance's event, the others kept ----------------------------------


def _v2_inputs(tensor: dict[str, Any]) -> dict[str, Any]:
    return {"inputs": [tensor]}


@pytest.mark.parametrize(
    ("request_body", "usable"),
    [
        pytest.param({"instances": [[1.0, 2.0], [1e39, 2.0]]}, [True, False], id="v1-past-float32"),
        pytest.param({"instances": [[1.0, 2.0], ["a", "b"]]}, [True, False], id="v1-not-numbers"),
        pytest.param(
            _v2_inputs(_tensor("pixels", [2, 2], "FP64", [1.0, 2.0, 3.5e38, 0.0])), [True, False], id="v2-past-float32"
        ),
        pytest.param(
            _v2_inputs(_tensor("pixels", [2, 2], "FP32", [float("inf"), 2.0, 3.0, 4.0])), [False, True], id="v2-inf"
        ),
        pytest.param(_v2_inputs(_tensor("pixels", [2, 2], "BYTES", ["a"] * 4)), [False, False], id="v2-bytes"),
        pytest.param(_v2_inputs(_tensor("other", [2, 2], "FP32", [0.5] * 4)), [False, False], id="v2-missing"),
    ],
)
def test_an_unusable_input_is_left_out_of_its_instance_and_counted(
    kserve: TestClient,
    registry: CollectorRegistry,
    redis_client: redis.Redis,
    request_body: dict[str, Any],
    usable: list[bool],
) -> None:
    service = "iris" if "instances" in request_body else "digits-isvc"
    model = "iris" if "instances" in request_body else "digits"
    response = {"predictions": [[0.8, 0.2], [0.6, 0.4]]} if model == "iris" else {"outputs": [_logits(2), _features(2)]}
    ce_id = str(uuid.uuid4())
    stored = post_event(kserve, _headers(ce_id, REQUEST, service), json.dumps(request_body).encode())
    assert (stored.status_code, stored.json()["outcome"]) == (200, "request_stored"), stored.text
    answer = post_event(kserve, _headers(ce_id, RESPONSE, service), response)
    assert (answer.status_code, answer.json()["outcome"], answer.json()["accepted"]) == (200, "joined", 2), answer.text
    samples = sampled(redis_client, model, 2)
    assert [sample.input is not None for sample in samples] == usable
    assert _dropped(registry, model, "input") == usable.count(False)


# --- a request that holds nothing for its response is not answered 503 with Redis down -------------------------


@pytest.mark.parametrize(
    ("service", "body", "metadata", "status"),
    [
        pytest.param("plain", {"instances": [[1.0]]}, {}, 200, id="no-input-mapped"),
        pytest.param("iris", {"instances": [[1e39, 2.0]]}, {}, 200, id="no-usable-input"),
        pytest.param("plain", {"instances": [[1.0]]}, {"X-Region": ["eu"]}, 503, id="cohort-metadata"),
        pytest.param("iris", {"instances": [[1.0, 2.0]]}, {}, 503, id="usable-input"),
    ],
)
def test_with_redis_down_only_a_request_holding_something_for_its_response_is_503(
    make_client: ClientFactory,
    registry: CollectorRegistry,
    service: str,
    body: dict[str, Any],
    metadata: dict[str, list[str]],
    status: int,
) -> None:
    client = make_client(registry=registry, models=MODELS, redis_url="redis://127.0.0.1:1", redis_timeout_s=0.2)
    headers = _headers(str(uuid.uuid4()), REQUEST, service, metadata=json.dumps(metadata))
    answer = post_event(client, headers, body)
    assert answer.status_code == status, answer.text
    if status == 200:
        assert answer.json()["outcome"] == "redis_unavailable"
    assert outcome_count(registry, service, "redis_unavailable") == 1
