"""``POST /v1/cloudevents``: the join's scope, what a response keeps when a part of it is unusable, and accounting."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from kserve_events import REQUEST, RESPONSE, cloudevent_headers, outcome_count, post_event, sampled
from prometheus_client import CollectorRegistry
from redis.exceptions import TimeoutError as RedisTimeoutError

import service.kserve.logger
from common import keys
from common.names import VERSION_RE
from common.redis import execute

ClientFactory = Callable[..., TestClient]
LONG_SERVICE = "s" * 63
MODELS: dict[str, Any] = {
    "iris": {
        "sampling": {"every_n": 1},
        "kserve": {
            "scores_are": "probabilities",
            "input": "instances",
            "label_metadata": "X-Label",
            "cohort_metadata": ["X-Region", "X-Tier"],
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
        },
    },
    "long": {"sampling": {"every_n": 1}, "kserve": {"service": LONG_SERVICE, "scores_are": "logits"}},
    "pre": {
        "sampling": {"every_n": 1},
        "kserve": {"service": "pre-isvc", "scores_are": "logits", "component": "transformer"},
    },
}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def kserve(make_client: ClientFactory, registry: CollectorRegistry) -> TestClient:
    return make_client(registry=registry, models=MODELS)


def _headers(ce_id: str, kind: str, service: str = "iris", **attributes: str) -> dict[str, str]:
    return cloudevent_headers(ce_id, kind, service, **attributes)


def _v1_request(value: float = 5.1) -> dict[str, Any]:
    return {"instances": [[value, 3.5, 1.4, 0.2]]}


def _v1_response() -> dict[str, Any]:
    return {"predictions": [[0.8, 0.15, 0.05]]}


def _v2_request(count: int, start: float = 0.0) -> dict[str, Any]:
    pixels = np.arange(count * 4, dtype=np.float32) + start
    return {"inputs": [{"name": "pixels", "shape": [count, 4], "datatype": "FP32", "data": pixels.tolist()}]}


def _v2_response(count: int, **document: Any) -> dict[str, Any]:
    logits = np.tile(np.array([3.0, 0.5, -1.0], dtype=np.float32), (count, 1))
    outputs = [
        {"name": "logits", "shape": [count, 3], "datatype": "FP32", "data": logits.ravel().tolist()},
        {"name": "features", "shape": [count, 2], "datatype": "FP64", "data": [0.5, 1.5] * count},
    ]
    return {"model_name": "digits", "model_version": "v3", "outputs": outputs} | document


def _dropped(registry: CollectorRegistry, model: str, part: str) -> float:
    return registry.get_sample_value("vai_kserve_parts_dropped_total", {"model": model, "part": part}) or 0.0


# --- H1: the join is scoped by model and namespace ------------------------------------------------


def test_a_ce_id_shared_by_two_services_joins_each_to_its_own_request(
    kserve: TestClient, registry: CollectorRegistry, redis_client: redis.Redis
) -> None:
    ce_id = str(uuid.uuid4())
    assert post_event(kserve, _headers(ce_id, REQUEST), _v1_request()).json()["outcome"] == "request_stored"
    second = post_event(kserve, _headers(ce_id, REQUEST, "digits-isvc"), _v2_request(1, start=100.0))
    assert second.json()["outcome"] == "request_stored", second.text
    digits = post_event(kserve, _headers(ce_id, RESPONSE, "digits-isvc"), _v2_response(1))
    iris = post_event(kserve, _headers(ce_id, RESPONSE), _v1_response())
    assert (digits.json()["outcome"], digits.json()["accepted"]) == ("joined", 1), digits.text
    assert (iris.json()["outcome"], iris.json()["accepted"]) == ("joined", 1), iris.text
    (digits_sample,) = sampled(redis_client, "digits", 1)
    assert digits_sample.input is not None
    assert digits_sample.input.decode().tolist() == [100.0, 101.0, 102.0, 103.0]
    (iris_sample,) = sampled(redis_client, "iris", 1)
    assert iris_sample.input is not None
    assert iris_sample.input.decode().tolist() == pytest.approx([5.1, 3.5, 1.4, 0.2])
    assert redis_client.zcard(keys.KSERVE_PENDING_INDEX) == 0


def test_the_same_ce_id_in_two_namespaces_is_two_requests(kserve: TestClient, redis_client: redis.Redis) -> None:
    ce_id = str(uuid.uuid4())
    for namespace, value in (("team-a", 1.0), ("team-b", 2.0)):
        stored = post_event(kserve, _headers(ce_id, REQUEST, namespace=namespace), _v1_request(value))
        assert stored.json()["outcome"] == "request_stored", stored.text
    joined = post_event(kserve, _headers(ce_id, RESPONSE, namespace="team-b"), _v1_response())
    assert joined.json()["outcome"] == "joined", joined.text
    (sample,) = sampled(redis_client, "iris", 1)
    assert sample.input is not None and sample.input.decode().tolist()[0] == 2.0


@pytest.mark.parametrize(
    ("one", "other"),
    [
        pytest.param(("a", "b:c", "d"), ("a", "b", "c:d"), id="namespace-or-id"),
        pytest.param(("a1", "", "x"), ("a", "1", "x"), id="model-or-namespace"),
    ],
)
def test_join_keys_are_unambiguous(one: tuple[str, str, str], other: tuple[str, str, str]) -> None:
    assert keys.kserve_pending(*one) != keys.kserve_pending(*other)
    assert keys.kserve_join_member(*one) != keys.kserve_join_member(*other)
    assert keys.kserve_member_model(keys.kserve_join_member(*one)) == one[0]


def test_an_orphan_is_counted_against_its_model(kserve: TestClient, registry: CollectorRegistry) -> None:
    from helpers import sidecar_of

    assert post_event(kserve, _headers(str(uuid.uuid4()), REQUEST, "digits-isvc"), _v2_request(1)).status_code == 200
    sweeper = sidecar_of(kserve).kserve
    assert kserve.portal is not None
    assert kserve.portal.call(lambda: sweeper.sweep(ahead_s=3600)) == 1
    assert outcome_count(registry, "digits", "request_expired") == 1


# --- M1: structured data nested deeper than orjson writes ------------------------------------------


def _deep(depth: int) -> Any:
    value: Any = [1.0, 2.0]
    for _ in range(depth):
        value = [value]
    return value


def test_a_structured_prediction_nested_past_orjson_s_write_limit_is_rejected_alone_not_500(
    kserve: TestClient, registry: CollectorRegistry
) -> None:
    data = {"predictions": [_deep(300), [0.8, 0.2]]}
    document = {"specversion": "1.0", "id": "deep", "type": RESPONSE, "inferenceservicename": "iris", "data": data}
    answer = post_event(kserve, {"content-type": "application/cloudevents+json"}, document)
    assert (answer.status_code, answer.json()["accepted"]) == (200, 1), answer.text
    assert [rejected["field"] for rejected in answer.json()["rejected"]] == ["predictions[0]"]
    assert outcome_count(registry, "iris", "invalid") == 0


def test_a_structured_request_input_nested_past_orjson_s_write_limit_is_left_out(
    kserve: TestClient, registry: CollectorRegistry
) -> None:
    data = {"instances": [_deep(300)]}
    document = {"specversion": "1.0", "id": "deep", "type": REQUEST, "inferenceservicename": "iris", "data": data}
    document["namespace"] = "models"  # as _headers() sends it
    answer = post_event(kserve, {"content-type": "application/cloudevents+json"}, document)
    assert (answer.status_code, answer.json()["outcome"]) == (200, "request_stored"), answer.text
    response = post_event(kserve, _headers("deep", RESPONSE), _v1_response())
    assert (response.json()["outcome"], response.json()["accepted"]) == ("joined", 1), response.text
    assert _dropped(registry, "iris", "input") == 1


# --- M2: a join whose Redis reply came too late -----------------------------------------------------


def test_a_response_whose_join_reply_times_out_is_still_monitored(
    kserve: TestClient, registry: CollectorRegistry, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis ran the join (the request is consumed) but its reply came too late: the prediction is monitored
    without its inputs, not answered 503 and then lost as a duplicate of itself."""
    ce_id = str(uuid.uuid4())
    assert post_event(kserve, _headers(ce_id, REQUEST), _v1_request()).json()["outcome"] == "request_stored"

    async def late(pipe: Any, **options: Any) -> list[Any]:
        await execute(pipe, **options)
        raise RedisTimeoutError("Timeout reading from socket")

    monkeypatch.setattr(service.kserve.logger, "execute", late)
    answer = post_event(kserve, _headers(ce_id, RESPONSE), _v1_response())
    assert answer.status_code == 200, answer.text
    assert (answer.json()["outcome"], answer.json()["accepted"]) == ("response_only", 1)
    (sample,) = sampled(redis_client, "iris", 1)
    assert sample.request_id == f"{ce_id}:0"
    assert outcome_count(registry, "iris", "response_only") == 1


# --- M3, M5, L5: a bad part is dropped (and counted), the prediction kept ------------------------------


@pytest.mark.parametrize("label", ["3", "7", "999999999"])
def test_an_out_of_range_label_is_dropped_and_counted_not_the_prediction(
    kserve: TestClient, registry: CollectorRegistry, redis_client: redis.Redis, label: str
) -> None:
    ce_id = str(uuid.uuid4())
    metadata = json.dumps({"X-Label": [label]})
    assert post_event(kserve, _headers(ce_id, REQUEST, metadata=metadata), _v1_request()).status_code == 200
    answer = post_event(kserve, _headers(ce_id, RESPONSE, metadata=metadata), _v1_response())
    assert answer.status_code == 200, answer.text
    assert (answer.json()["outcome"], answer.json()["accepted"]) == ("joined", 1)
    (sample,) = sampled(redis_client, "iris", 1)
    assert sample.label is None and sample.input is not None
    assert _dropped(registry, "iris", "label") == 1


def test_a_request_input_past_float32_is_left_out_and_the_response_joined_without_it(
    kserve: TestClient, registry: CollectorRegistry, redis_client: redis.Redis
) -> None:
    """The worker explains inputs as float32, where it would be infinity: that input is dropped, not the request
    (its response is joined, and monitored without it). More cases: test_kserve_parts.py."""
    ce_id = str(uuid.uuid4())
    stored = post_event(kserve, _headers(ce_id, REQUEST), _v1_request(1e39))
    assert (stored.status_code, stored.json()["outcome"]) == (200, "request_stored"), stored.text
    answer = post_event(kserve, _headers(ce_id, RESPONSE), _v1_response())
    assert (answer.status_code, answer.json()["outcome"], answer.json()["accepted"]) == (200, "joined", 1)
    (sample,) = sampled(redis_client, "iris", 1)
    assert sample.input is None
    assert _dropped(registry, "iris", "input") == 1
    assert outcome_count(registry, "iris", "invalid") == 0


def test_a_v2_request_input_row_holding_infinity_costs_that_instance_s_input_only(
    kserve: TestClient, registry: CollectorRegistry, redis_client: redis.Redis
) -> None:
    raw = np.array([[1.0, np.inf, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]], dtype="<f4").tobytes()
    header = json.dumps(
        {"inputs": [{"name": "pixels", "shape": [2, 4], "datatype": "FP32", "parameters": {"binary_data_size": 32}}]}
    ).encode()
    ce_id = str(uuid.uuid4())
    headers = _headers(ce_id, REQUEST, "digits-isvc") | {"inference-header-content-length": str(len(header))}
    stored = post_event(kserve, headers | {"content-type": "application/octet-stream"}, header + raw)
    assert (stored.status_code, stored.json()["outcome"]) == (200, "request_stored"), stored.text
    answer = post_event(kserve, _headers(ce_id, RESPONSE, "digits-isvc"), _v2_response(2))
    assert (answer.status_code, answer.json()["outcome"], answer.json()["accepted"]) == (200, "joined", 2)
    first, second = sampled(redis_client, "digits", 2)
    assert first.input is None
    assert second.input is not None and second.input.decode().tolist() == [1.0, 2.0, 3.0, 4.0]
    assert _dropped(registry, "digits", "input") == 1


def test_a_missing_embedding_output_is_monitored_without_it_and_counted(
    kserve: TestClient, registry: CollectorRegistry, redis_client: redis.Redis
) -> None:
    response = _v2_response(2)
    response["outputs"] = response["outputs"][:1]
    answer = post_event(kserve, _headers(str(uuid.uuid4()), RESPONSE, "digits-isvc"), response)
    assert (answer.status_code, answer.json()["accepted"]) == (200, 2), answer.text
    assert len(sampled(redis_client, "digits", 2)) == 2
    assert _dropped(registry, "digits", "embedding") == 2


def test_a_1d_embedding_of_a_batch_is_monitored_without_it_and_counted(
    kserve: TestClient, registry: CollectorRegistry
) -> None:
    response = _v2_response(2)
    response["outputs"][1] = {"name": "features", "shape": [4], "datatype": "FP64", "data": [0.5, 1.5, 2.5, 3.5]}
    answer = post_event(kserve, _headers(str(uuid.uuid4()), RESPONSE, "digits-isvc"), response)
    assert (answer.status_code, answer.json()["accepted"]) == (200, 2), answer.text
    assert _dropped(registry, "digits", "embedding") == 2


# --- L3: a 1-D scores tensor is a batch of single values, not one instance's scores ---------------------


def test_a_1d_scores_tensor_is_refused_naming_it(kserve: TestClient, registry: CollectorRegistry) -> None:
    response = {"outputs": [{"name": "logits", "shape": [3], "datatype": "INT64", "data": [1, 0, 1]}]}
    answer = post_event(kserve, _headers(str(uuid.uuid4()), RESPONSE, "digits-isvc"), response)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == "outputs[0]"
    assert outcome_count(registry, "digits", "invalid") == 1


# --- M4: an odd model_version or a long service name still gives a valid version ------------------------


@pytest.mark.parametrize(
    ("service", "endpoint", "version"),
    [
        pytest.param("digits-isvc", "default", "v 1", id="space-in-version"),
        pytest.param("digits-isvc", "default", "vé", id="non-ascii-version"),
        pytest.param("digits-isvc", "default", "v" * 65, id="long-version"),
        pytest.param(LONG_SERVICE, "default", None, id="long-service-name"),
        pytest.param("digits-isvc", "canary x" * 20, None, id="odd-endpoint"),
    ],
)
def test_an_odd_version_is_made_valid_not_refused(
    kserve: TestClient, redis_client: redis.Redis, service: str, endpoint: str, version: str | None
) -> None:
    model = "long" if service == LONG_SERVICE else "digits"
    response = _v2_response(1, model_version=version)
    headers = _headers(str(uuid.uuid4()), RESPONSE, service, endpoint=endpoint)
    answer = post_event(kserve, headers, response)
    assert (answer.status_code, answer.json()["accepted"]) == (200, 1), answer.text
    (sample,) = sampled(redis_client, model, 1)
    assert VERSION_RE.match(sample.model_version), sample.model_version


def test_long_versions_that_share_a_prefix_stay_apart(kserve: TestClient, redis_client: redis.Redis) -> None:
    for suffix in ("a", "b"):
        response = _v2_response(1, model_version="v" * 70 + suffix)
        assert post_event(kserve, _headers(str(uuid.uuid4()), RESPONSE, "digits-isvc"), response).status_code == 200
    first, second = sampled(redis_client, "digits", 2)
    assert first.model_version != second.model_version


# --- M6: only the mapped component's events are ingested ------------------------------------------------


def test_a_transformer_s_events_are_skipped_and_counted_once(
    kserve: TestClient, registry: CollectorRegistry, redis_client: redis.Redis
) -> None:
    ce_id = str(uuid.uuid4())
    raw_image = {"instances": [{"image": {"b64": "aGk="}}]}
    for kind, body in ((REQUEST, raw_image), (RESPONSE, _v1_response())):
        skipped = post_event(kserve, _headers(ce_id, kind, component="transformer"), body)
        assert skipped.status_code == 200, skipped.text
        assert skipped.json() == {
            "outcome": "other_component",
            "model": "iris",
            "id": ce_id,
            "accepted": 0,
            "rejected": [],
        }
    assert post_event(kserve, _headers(ce_id, REQUEST), _v1_request()).json()["outcome"] == "request_stored"
    assert post_event(kserve, _headers(ce_id, RESPONSE), _v1_response()).json()["outcome"] == "joined"
    assert len(sampled(redis_client, "iris", 1)) == 1
    assert outcome_count(registry, "iris", "other_component") == 2
    assert outcome_count(registry, "iris", "invalid") == outcome_count(registry, "iris", "response_only") == 0


def test_a_mapping_may_pick_the_transformer(kserve: TestClient, registry: CollectorRegistry) -> None:
    ce_id = str(uuid.uuid4())
    predictor = post_event(kserve, _headers(ce_id, RESPONSE, "pre-isvc"), _v1_response())
    assert predictor.json()["outcome"] == "other_component", predictor.text
    transformer = post_event(kserve, _headers(ce_id, RESPONSE, "pre-isvc", component="transformer"), _v1_response())
    assert (transformer.json()["outcome"], transformer.json()["accepted"]) == ("response_only", 1), transformer.text


# --- L1: every reply has the README's shape -------------------------------------------------------------


def test_every_reply_has_accepted_and_rejected(kserve: TestClient) -> None:
    ce_id = str(uuid.uuid4())
    replies = [
        post_event(kserve, _headers(ce_id, REQUEST), _v1_request()),  # request_stored
        post_event(kserve, _headers(ce_id, REQUEST), _v1_request()),  # duplicate request
        post_event(kserve, _headers(ce_id, RESPONSE), _v1_response()),  # joined
        post_event(kserve, _headers(ce_id, RESPONSE), _v1_response()),  # duplicate response
        post_event(kserve, _headers(ce_id, REQUEST), _v1_request()),  # request_dropped
    ]
    for reply in replies:
        assert set(reply.json()) == {"outcome", "model", "id", "accepted", "rejected"}, reply.text
    assert [reply.json()["outcome"] for reply in replies] == [
        "request_stored",
        "duplicate",
        "joined",
        "duplicate",
        "request_dropped",
    ]


# --- L6: Redis down: a request is answered 503 and counted; a response is still monitored -------------


def test_redis_down_a_request_is_503_and_a_response_is_monitored_without_inputs(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    """KServe's logger never retries: a 503 to a response would lose the prediction for good."""
    client = make_client(registry=registry, models=MODELS, redis_url="redis://127.0.0.1:1", redis_timeout_s=0.2)
    request = post_event(client, _headers(str(uuid.uuid4()), REQUEST), _v1_request())
    assert request.status_code == 503, request.text
    assert request.headers["retry-after"] == "1"
    assert outcome_count(registry, "iris", "redis_unavailable") == 1
    response = post_event(client, _headers(str(uuid.uuid4()), RESPONSE), _v1_response())
    assert (response.status_code, response.json()["outcome"], response.json()["accepted"]) == (
        200,
        "response_only",
        1,
    ), response.text
    assert outcome_count(registry, "iris", "response_only") == 1
    assert outcome_count(registry, "iris", "redis_unavailable") == 1


def test_a_skipped_component_s_payload_is_not_read(kserve: TestClient, registry: CollectorRegistry) -> None:
    """A transformer's request may hold anything (raw image bytes): skipped before its payload is parsed."""
    skipped = post_event(kserve, _headers("raw", REQUEST, component="transformer"), b"\x89PNG\r\n\x1a\n")
    assert (skipped.status_code, skipped.json()["outcome"]) == (200, "other_component"), skipped.text
    assert outcome_count(registry, "iris", "invalid") == 0


def test_a_request_of_a_model_that_keeps_no_input_is_not_read(kserve: TestClient, registry: CollectorRegistry) -> None:
    """Its payload is of no use (no `kserve.input`), so a payload the sidecar could not read costs nothing."""
    answer = post_event(kserve, _headers(str(uuid.uuid4()), REQUEST, LONG_SERVICE), b"not a payload we read")
    assert answer.status_code == 200 and answer.json()["outcome"] == "request_stored", answer.text
    assert outcome_count(registry, "long", "invalid") == 0


# --- a bad attribute value costs that part, never the prediction ------------------------------------------


@pytest.mark.parametrize("value", [pytest.param("r" * 129, id="too-long"), pytest.param("", id="empty")])
def test_a_cohort_value_of_no_allowed_length_is_left_out_and_counted_not_the_prediction(
    kserve: TestClient, registry: CollectorRegistry, redis_client: redis.Redis, value: str
) -> None:
    ce_id = str(uuid.uuid4())
    metadata = json.dumps({"X-Region": [value], "X-Tier": ["gold"]})
    assert post_event(kserve, _headers(ce_id, REQUEST, metadata=metadata), _v1_request()).status_code == 200
    answer = post_event(kserve, _headers(ce_id, RESPONSE, metadata=metadata), _v1_response())
    assert (answer.status_code, answer.json()["outcome"], answer.json()["accepted"]) == (200, "joined", 1), answer.text
    (sample,) = sampled(redis_client, "iris", 1)
    assert sample.cohort == {"X-Tier": "gold"} and sample.input is not None
    assert _dropped(registry, "iris", "cohort") == 1


@pytest.mark.parametrize(
    "ce_time",
    [
        pytest.param("1970-01-01T00:00:00Z", id="epoch-zero"),
        pytest.param("9999-12-31T23:59:59Z", id="year-9999"),
        pytest.param("yesterday", id="not-a-time"),
    ],
)
def test_a_ce_time_no_event_may_have_gives_the_receive_time_and_is_counted(
    kserve: TestClient, registry: CollectorRegistry, redis_client: redis.Redis, ce_time: str
) -> None:
    before = time.time()
    answer = post_event(kserve, _headers(str(uuid.uuid4()), RESPONSE, time=ce_time), _v1_response())
    assert (answer.status_code, answer.json()["accepted"]) == (200, 1), answer.text
    (sample,) = sampled(redis_client, "iris", 1)
    assert before <= sample.timestamp <= time.time()
    assert _dropped(registry, "iris", "time") == 1


def test_a_valid_ce_time_is_the_event_s_time(kserve: TestClient, redis_client: redis.Redis) -> None:
    answer = post_event(kserve, _headers(str(uuid.uuid4()), RESPONSE, time="2026-11-30T08:00:00Z"), _v1_response())
    assert answer.status_code == 200, answer.text
    (sample,) = sampled(redis_client, "iris", 1)
    assert sample.timestamp == 1_796_025_600.0  # 2026-11-30T08:00:00Z


def test_ce_metadata_null_is_no_metadata(kserve: TestClient) -> None:
    answer = post_event(kserve, _headers(str(uuid.uuid4()), RESPONSE, metadata="null"), _v1_response())
    assert (answer.status_code, answer.json()["accepted"]) == (200, 1), answer.text


# --- canary and default stay apart when the server reports one model_version for both -----------------------


def test_canary_and_default_with_the_same_model_version_are_two_versions(
    kserve: TestClient, redis_client: redis.Redis
) -> None:
    for endpoint in ("default", "canary"):
        headers = _headers(str(uuid.uuid4()), RESPONSE, "digits-isvc", endpoint=endpoint)
        assert post_event(kserve, headers, _v2_response(1, model_version="1")).status_code == 200
    assert [sample.model_version for sample in sampled(redis_client, "digits", 2)] == ["1", "1-canary"]


# --- a CloudEvent refused before it is read is counted too -------------------------------------------------


def test_cloudevents_refused_before_being_read_are_counted(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    client = make_client(registry=registry, models=MODELS, max_body_bytes=4096, ingest_tokens=("i",))
    token = {"authorization": "Bearer i"}
    refusals = [
        (_headers("a", RESPONSE), _v1_response(), 401, "unauthorized"),
        (_headers("b", RESPONSE) | token, {"predictions": [[0.5, 0.5]] * 1000}, 413, "body_too_large"),
        (_headers("c", RESPONSE) | token | {"content-encoding": "gzip"}, _v1_response(), 415, "invalid_body"),
    ]
    for headers, body, status, outcome in refusals:
        answer = post_event(client, headers, body)
        assert answer.status_code == status, answer.text
        assert outcome_count(registry, "iris", outcome) == 1
    unmapped = post_event(client, _headers("d", RESPONSE, "nobody"), _v1_response())
    assert unmapped.status_code == 401
    assert outcome_count(registry, service.kserve.logger.UNMAPPED, "unauthorized") == 1
