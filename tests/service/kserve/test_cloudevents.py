"""``POST /v1/cloudevents``: KServe inference-logger CloudEvents, shaped as KServe sends them, end as events."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from kserve_events import REQUEST, RESPONSE, outcome_count, post_event, sampled
from prometheus_client import CollectorRegistry

from common import keys
from helpers import sidecar_of

ClientFactory = Callable[..., TestClient]
MODELS: dict[str, Any] = {
    "iris": {
        "sampling": {"every_n": 1},
        "kserve": {
            "scores_are": "probabilities",
            "input": "instances",
            "cohort_metadata": ["X-Region"],
            "label_metadata": "X-Label",
        },
    },
    "digits": {
        "sampling": {"every_n": 1},
        "kserve": {
            "service": "digits-isvc",
            "scores_are": "logits",
            "scores": "logits",
            "embedding": "features",
            "input": "pixels",
            "input_shape": [2, 2],
        },
    },
}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def kserve(make_client: ClientFactory, registry: CollectorRegistry) -> TestClient:
    return make_client(registry=registry, models=MODELS)


def _headers(
    ce_id: str,
    kind: str,
    service: str = "iris",
    *,
    endpoint: str = "default",
    metadata: dict[str, list[str]] | None = None,
    content_type: str = "application/json",
) -> dict[str, str]:
    """The headers of KServe's logger (pkg/logger/worker.go), binary-mode CloudEvents."""
    return {
        "ce-specversion": "1.0",
        "ce-id": ce_id,
        "ce-type": kind,
        "ce-source": f"http://localhost:9081/{service}",
        "ce-time": "2026-11-29T04:05:06.123456789Z",
        "ce-inferenceservicename": service,
        "ce-namespace": "models",
        "ce-component": "predictor",
        "ce-endpoint": endpoint,
        "ce-metadata": json.dumps(metadata or {}),
        "content-type": content_type,
    }


def _v1_request(count: int = 1) -> dict[str, Any]:
    return {"instances": [[5.1 + i, 3.5, 1.4, 0.2] for i in range(count)]}


def _v1_response(count: int = 1) -> dict[str, Any]:
    return {"predictions": [[0.8, 0.15, 0.05] for _ in range(count)]}


def _v2_request(count: int) -> dict[str, Any]:
    pixels = np.arange(count * 4, dtype=np.float32)
    return {
        "id": "x",
        "inputs": [
            {"name": "pixels", "shape": [count, 4], "datatype": "FP32", "data": pixels.tolist()},
            {"name": "note", "shape": [count], "datatype": "BYTES", "data": ["a"] * count},
        ],
    }


def _v2_response(count: int, version: str | None = "v3") -> dict[str, Any]:
    logits = np.tile(np.array([3.0, 0.5, -1.0], dtype=np.float32), (count, 1))
    document: dict[str, Any] = {
        "model_name": "digits",
        "id": "x",
        "outputs": [
            {"name": "logits", "shape": [count, 3], "datatype": "FP32", "data": logits.ravel().tolist()},
            {"name": "features", "shape": [count, 2], "datatype": "FP64", "data": [0.5, 1.5] * count},
        ],
    }
    if version is not None:
        document["model_version"] = version
    return document


def _v2_binary_response(count: int) -> tuple[bytes, int]:
    """The v2 response in the binary tensor extension: JSON header, then the raw little-endian tensors."""
    logits = np.tile(np.array([3.0, 0.5, -1.0], dtype="<f4"), (count, 1)).tobytes()
    features = np.tile(np.array([0.5, 1.5], dtype="<f8"), (count, 1)).tobytes()
    header = json.dumps(
        {
            "model_name": "digits",
            "model_version": "v3",
            "id": "x",
            "outputs": [
                {
                    "name": "logits",
                    "shape": [count, 3],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(logits)},
                },
                {
                    "name": "features",
                    "shape": [count, 2],
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": len(features)},
                },
            ],
        }
    ).encode()
    return header + logits + features, len(header)


def _accepted(registry: CollectorRegistry, model: str, version: str) -> float:
    return registry.get_sample_value("vai_events_total", {"model": model, "version": version}) or 0.0


def test_v1_request_then_response_joins_inputs_cohort_and_label(
    kserve: TestClient, registry: CollectorRegistry, redis_client: redis.Redis
) -> None:
    ce_id = str(uuid.uuid4())
    metadata = {"X-Region": ["eu"], "X-Label": ["0"]}
    stored = post_event(kserve, _headers(ce_id, REQUEST, metadata=metadata), _v1_request())
    assert stored.status_code == 200, stored.text
    assert stored.json()["outcome"] == "request_stored"
    joined = post_event(kserve, _headers(ce_id, RESPONSE, metadata=metadata), _v1_response())
    assert joined.status_code == 200, joined.text
    assert joined.json() | {"rejected": []} == {
        "outcome": "joined",
        "model": "iris",
        "id": ce_id,
        "accepted": 1,
        "rejected": [],
    }
    (sample,) = sampled(redis_client, "iris", 1)
    assert (sample.request_id, sample.model_version, sample.label) == (f"{ce_id}:0", "iris-default", 0)
    assert sample.cohort == {"X-Region": "eu"}
    assert sample.input is not None
    assert sample.input.decode().tolist() == pytest.approx([5.1, 3.5, 1.4, 0.2])
    assert outcome_count(registry, "iris", "request_stored") == 1
    assert outcome_count(registry, "iris", "joined") == 1
    assert _accepted(registry, "iris", "iris-default") == 1
    assert redis_client.zcard(keys.KSERVE_PENDING_INDEX) == 0


@pytest.mark.parametrize("label", ["\u00b2", "1" * 25, "0" * 5000 + "1"])
def test_a_label_that_is_not_a_small_ascii_number_is_left_out_not_a_crash(
    kserve: TestClient, registry: CollectorRegistry, redis_client: redis.Redis, label: str
) -> None:
    """'²'.isdigit() is true but int() refuses it; 25 digits overflow the JSON encoder's 64 bits; int() refuses
    5,000 digits. Such a label is no label, and the event is still monitored."""
    ce_id = str(uuid.uuid4())
    metadata = {"X-Region": ["eu"], "X-Label": [label]}
    assert post_event(kserve, _headers(ce_id, REQUEST, metadata=metadata), _v1_request()).status_code == 200
    joined = post_event(kserve, _headers(ce_id, RESPONSE, metadata=metadata), _v1_response())
    assert joined.status_code == 200, joined.text
    assert joined.json()["accepted"] == 1
    (sample,) = sampled(redis_client, "iris", 1)
    assert sample.label is None


def test_v2_response_then_request_is_monitored_and_the_late_request_dropped(
    kserve: TestClient, registry: CollectorRegistry, redis_client: redis.Redis
) -> None:
    ce_id = str(uuid.uuid4())
    first = post_event(kserve, _headers(ce_id, RESPONSE, "digits-isvc"), _v2_response(1))
    assert first.status_code == 200, first.text
    assert (first.json()["outcome"], first.json()["accepted"]) == ("response_only", 1)
    late = post_event(kserve, _headers(ce_id, REQUEST, "digits-isvc"), _v2_request(1))
    assert (late.status_code, late.json()["outcome"]) == (200, "request_dropped")
    (sample,) = sampled(redis_client, "digits", 1)
    assert (sample.request_id, sample.model_version, sample.input) == (f"{ce_id}:0", "v3", None)
    assert outcome_count(registry, "digits", "response_only") == 1
    assert outcome_count(registry, "digits", "request_dropped") == 1
    assert _accepted(registry, "digits", "v3") == 1
    assert redis_client.zcard(keys.KSERVE_PENDING_INDEX) == 0  # the dropped request is no orphan


def test_response_only_is_monitored_and_a_repeated_response_is_not_counted_twice(
    kserve: TestClient, registry: CollectorRegistry
) -> None:
    ce_id = str(uuid.uuid4())
    assert post_event(kserve, _headers(ce_id, RESPONSE), _v1_response()).json()["outcome"] == "response_only"
    assert post_event(kserve, _headers(ce_id, RESPONSE), _v1_response()).json()["outcome"] == "duplicate"
    assert _accepted(registry, "iris", "iris-default") == 1


def test_batch_of_8_in_the_binary_extension_becomes_8_events_with_their_inputs(
    kserve: TestClient, registry: CollectorRegistry, redis_client: redis.Redis
) -> None:
    ce_id = str(uuid.uuid4())
    assert post_event(kserve, _headers(ce_id, REQUEST, "digits-isvc"), _v2_request(8)).status_code == 200
    body, header_length = _v2_binary_response(8)
    headers = _headers(ce_id, RESPONSE, "digits-isvc", content_type="application/octet-stream")
    answer = post_event(kserve, headers | {"inference-header-content-length": str(header_length)}, body)
    assert answer.status_code == 200, answer.text
    assert (answer.json()["outcome"], answer.json()["accepted"]) == ("joined", 8)
    samples = sampled(redis_client, "digits", 8)
    assert [sample.request_id for sample in samples] == [f"{ce_id}:{i}" for i in range(8)]
    for index, sample in enumerate(samples):
        assert sample.input is not None
        assert sample.input.decode().tolist() == [[4 * index, 4 * index + 1], [4 * index + 2, 4 * index + 3]]
    assert _accepted(registry, "digits", "v3") == 8


@pytest.mark.parametrize("datatype", ["UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT64", "BOOL", "FP16"])
def test_an_input_tensor_of_any_numeric_datatype_is_kept_for_attribution(
    kserve: TestClient, redis_client: redis.Redis, datatype: str
) -> None:
    dtype = np.dtype("float16" if datatype == "FP16" else datatype.lower()).newbyteorder("<")
    pixels = (np.arange(8) % 2 if datatype == "BOOL" else np.arange(8) * 3).astype(dtype).reshape(2, 4)
    request = {
        "inputs": [
            {"name": "pixels", "shape": [2, 4], "datatype": datatype, "parameters": {"binary_data_size": pixels.nbytes}}
        ]
    }
    header = json.dumps(request).encode()
    ce_id = str(uuid.uuid4())
    headers = _headers(ce_id, REQUEST, "digits-isvc", content_type="application/octet-stream")
    stored = post_event(
        kserve, headers | {"inference-header-content-length": str(len(header))}, header + pixels.tobytes()
    )
    assert stored.status_code == 200, stored.text
    assert stored.json()["outcome"] == "request_stored", stored.text
    assert post_event(kserve, _headers(ce_id, RESPONSE, "digits-isvc"), _v2_response(2)).json()["accepted"] == 2
    for index, sample in enumerate(sampled(redis_client, "digits", 2)):
        assert sample.input is not None
        assert sample.input.dtype == ("uint8" if datatype == "BOOL" else dtype.name)  # BOOL kept as its bytes
        assert sample.input.decode().astype(np.float64).ravel().tolist() == pixels[index].astype(np.float64).tolist()


def test_binary_extension_without_its_header_length_is_still_read(kserve: TestClient) -> None:
    body, _ = _v2_binary_response(2)
    headers = _headers(str(uuid.uuid4()), RESPONSE, "digits-isvc", content_type="application/octet-stream")
    answer = post_event(kserve, headers, body)
    assert (answer.status_code, answer.json()["accepted"]) == (200, 2), answer.text


def test_canary_endpoint_becomes_the_version(kserve: TestClient, registry: CollectorRegistry) -> None:
    for endpoint in ("default", "canary", "canary"):
        ce_id = str(uuid.uuid4())
        assert post_event(kserve, _headers(ce_id, REQUEST, endpoint=endpoint), _v1_request()).status_code == 200
        assert post_event(kserve, _headers(ce_id, RESPONSE, endpoint=endpoint), _v1_response()).status_code == 200
    assert _accepted(registry, "iris", "iris-default") == 1
    assert _accepted(registry, "iris", "iris-canary") == 2


def test_v2_without_model_version_falls_back_to_the_endpoint(kserve: TestClient, registry: CollectorRegistry) -> None:
    headers = _headers(str(uuid.uuid4()), RESPONSE, "digits-isvc", endpoint="canary")
    assert post_event(kserve, headers, _v2_response(1, version=None)).status_code == 200
    assert _accepted(registry, "digits", "digits-isvc-canary") == 1


def test_structured_mode_request_and_response(kserve: TestClient, registry: CollectorRegistry) -> None:
    ce_id = str(uuid.uuid4())

    def structured(kind: str, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "specversion": "1.0",
            "id": ce_id,
            "type": kind,
            "source": "http://localhost:9081/iris",
            "time": "2026-11-29T04:05:06Z",
            "inferenceservicename": "iris",
            "namespace": "models",
            "component": "predictor",
            "endpoint": "default",
            "metadata": json.dumps({"X-Region": ["us"]}),
            "datacontenttype": "application/json",
            "data": data,
        }

    headers = {"content-type": "application/cloudevents+json; charset=utf-8"}
    assert post_event(kserve, headers, structured(REQUEST, _v1_request(2))).json()["outcome"] == "request_stored"
    answer = post_event(kserve, headers, structured(RESPONSE, _v1_response(2)))
    assert (answer.status_code, answer.json()["outcome"], answer.json()["accepted"]) == (200, "joined", 2)
    assert _accepted(registry, "iris", "iris-default") == 2


def test_orphaned_requests_are_counted_once(kserve: TestClient, registry: CollectorRegistry) -> None:
    ce_id = str(uuid.uuid4())
    assert post_event(kserve, _headers(ce_id, REQUEST), _v1_request()).status_code == 200
    sweeper = sidecar_of(kserve).kserve
    assert kserve.portal is not None
    assert kserve.portal.call(sweeper.sweep) == 0  # not yet due
    assert kserve.portal.call(lambda: sweeper.sweep(ahead_s=3600)) == 1
    assert kserve.portal.call(lambda: sweeper.sweep(ahead_s=3600)) == 0
    assert outcome_count(registry, "iris", "request_expired") == 1


def _sized(size: float, **tensor: Any) -> bytes:
    """The JSON header of a v2 response whose scores tensor has ``binary_data_size`` ``size``."""
    logits = {"name": "logits", "shape": [1, 3], "datatype": "FP32", "parameters": {"binary_data_size": size}}
    return json.dumps({"outputs": [logits | tensor]}).encode()


def _bad(ce_id: str) -> list[Any]:
    good = _headers(ce_id, RESPONSE)
    binary, length = _v2_binary_response(2)
    v2 = _headers(ce_id, RESPONSE, "digits-isvc", content_type="application/octet-stream")
    return [
        pytest.param({k: v for k, v in good.items() if k != "ce-id"}, _v1_response(), 400, "ce-id", id="no-ce-id"),
        pytest.param(
            {k: v for k, v in good.items() if k != "ce-type"}, _v1_response(), 400, "ce-type", id="no-ce-type"
        ),
        pytest.param(good | {"ce-type": "org.kubeflow.other"}, _v1_response(), 400, "ce-type", id="unknown-type"),
        pytest.param(good | {"ce-specversion": "0.3"}, _v1_response(), 400, "ce-specversion", id="old-specversion"),
        pytest.param(good | {"ce-metadata": "{not json"}, _v1_response(), 400, "ce-metadata", id="bad-metadata"),
        pytest.param(good | {"ce-id": "x" * 121}, _v1_response(), 400, "ce-id", id="ce-id-too-long"),
        pytest.param(v2, {"model_name": "digits", "outputs": []}, 422, "outputs", id="v2-no-outputs"),
        pytest.param(
            good | {"ce-metadata": '{"X-Region": ["\\ud800"]}'}, _v1_response(), 400, "ce-metadata", id="lone-surrogate"
        ),
        pytest.param(good, {"answer": 42}, 422, "body", id="not-v1-or-v2"),
        pytest.param(good, b'{"predictions": [[0.8, 0.2]', 422, "body", id="truncated-json"),
        pytest.param(good, {"predictions": []}, 422, "predictions", id="v1-no-predictions"),
        pytest.param(
            good | {"ce-inferenceservicename": "nobody"}, _v1_response(), 422, "ce-inferenceservicename", id="unmapped"
        ),
        pytest.param(
            {k: v for k, v in good.items() if k != "ce-inferenceservicename"},
            _v1_response(),
            422,
            "ce-inferenceservicename",
            id="no-service",
        ),
        pytest.param(
            v2 | {"inference-header-content-length": str(length)},
            binary[:-40],
            422,
            "outputs[0].parameters.binary_data_size",
            id="truncated-binary",
        ),
        pytest.param(
            v2 | {"inference-header-content-length": str(len(_sized(1e30)))},
            _sized(1e30),
            422,
            "outputs[0].parameters.binary_data_size",
            id="binary-size-past-64-bits",
        ),
        pytest.param(
            v2 | {"inference-header-content-length": str(len(_sized(12, data=[1.0, 2.0, 3.0])))},
            _sized(12, data=[1.0, 2.0, 3.0]) + b"\x00" * 12,
            422,
            "outputs[0].parameters.binary_data_size",
            id="binary-size-and-data",
        ),
        pytest.param(good, json.dumps(_v1_response()).encode() + b"garbage", 422, "body", id="json-then-garbage"),
        pytest.param(
            _headers(ce_id, RESPONSE, "digits-isvc"),
            {"outputs": [{"name": "logits", "shape": [3], "datatype": "FP32", "data": [[1.0, 2.0], [3.0]]}]},
            422,
            "outputs[0].data",
            id="v2-ragged-data",
        ),
        pytest.param(
            v2 | {"inference-header-content-length": str(len(binary) + 1)},
            binary,
            422,
            "inference-header-content-length",
            id="header-length-past-body",
        ),
        pytest.param(
            _headers(ce_id, RESPONSE, "digits-isvc"),
            _v2_response(1) | {"outputs": [{"name": "logits", "shape": [1, 3], "datatype": "FP32", "data": [1.0]}]},
            422,
            "outputs[0].data",
            id="v2-data-short-of-shape",
        ),
    ]


@pytest.mark.parametrize(("headers", "body", "status", "field"), _bad("bad-1"))
def test_malformed_cloudevents_are_refused_naming_the_field(
    kserve: TestClient, registry: CollectorRegistry, headers: dict[str, str], body: Any, status: int, field: str
) -> None:
    answer = post_event(kserve, headers, body)
    assert answer.status_code == status, answer.text
    assert answer.json()["field"] == field
    assert sum(outcome_count(registry, model, "invalid") for model in ("iris", "digits", "__unmapped__")) == 1
    assert _accepted(registry, "iris", "iris-default") == 0


def test_ingest_token_is_required_when_set(make_client: ClientFactory) -> None:
    client = make_client(models=MODELS, ingest_tokens="secret")
    headers = _headers(str(uuid.uuid4()), RESPONSE)
    assert post_event(client, headers, _v1_response()).status_code == 401
    assert post_event(client, headers | {"authorization": "Bearer secret"}, _v1_response()).status_code == 200


def test_redis_down_is_503_with_retry_after(make_client: ClientFactory) -> None:
    client = make_client(models=MODELS, redis_url="redis://127.0.0.1:1", redis_timeout_s=0.2)
    answer = post_event(client, _headers(str(uuid.uuid4()), REQUEST), _v1_request())
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "1"


@pytest.mark.parametrize(("instances", "predictions"), [(2, 1), (1, 3)], ids=["fewer-predictions", "more"])
def test_a_response_whose_count_differs_from_its_request_is_counted_as_such(
    kserve: TestClient, registry: CollectorRegistry, instances: int, predictions: int
) -> None:
    """Which instance is whose cannot be told: the predictions are monitored without inputs, and counted apart."""
    ce_id = str(uuid.uuid4())
    assert post_event(kserve, _headers(ce_id, REQUEST), _v1_request(instances)).json()["outcome"] == "request_stored"
    answer = post_event(kserve, _headers(ce_id, RESPONSE), _v1_response(predictions))
    assert answer.status_code == 200, answer.text
    assert (answer.json()["outcome"], answer.json()["accepted"]) == ("count_mismatch", predictions)
    assert outcome_count(registry, "iris", "count_mismatch") == 1 and outcome_count(registry, "iris", "joined") == 0


def test_a_request_over_the_batch_limit_is_refused_not_left_to_expire(
    make_client: ClientFactory, registry: CollectorRegistry, redis_client: redis.Redis
) -> None:
    client = make_client(registry=registry, models=MODELS, max_batch=10)
    answer = post_event(client, _headers(str(uuid.uuid4()), REQUEST), _v1_request(11))
    assert answer.status_code == 422 and answer.json()["field"] == "inputs", answer.text
    assert redis_client.zcard(keys.KSERVE_PENDING_INDEX) == 0


def test_a_response_over_the_batch_limit_ends_in_one_outcome(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    """Refused whole, naming its predictions: the CloudEvent is counted once, as invalid, not also as monitored."""
    client = make_client(registry=registry, models=MODELS, max_batch=10)
    answer = post_event(client, _headers(str(uuid.uuid4()), RESPONSE), _v1_response(11))
    assert (answer.status_code, answer.json()["field"]) == (422, "predictions"), answer.text
    outcomes = ("response_only", "joined", "count_mismatch", "invalid")
    assert {name: outcome_count(registry, "iris", name) for name in outcomes} == {
        "response_only": 0,
        "joined": 0,
        "count_mismatch": 0,
        "invalid": 1,
    }
