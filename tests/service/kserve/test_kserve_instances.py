"""``POST /v1/cloudevents``: a response's instances, one by one and as a whole.

A v1 prediction that cannot be read (not numbers, text or booleans among them) rejects its own event only; a
response whose every instance is rejected is answered 200 with them, in its join's outcome; a response of no
instance, or of more than ``VAI_MAX_BATCH``, is refused before its join takes the waiting request; and the orphan
index is scored and swept on Redis's clock, whatever a replica's clock says.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from kserve_events import REQUEST, RESPONSE, cloudevent_headers, outcome_count, post_event, sampled
from prometheus_client import CollectorRegistry

from common import keys
from helpers import sidecar_of
from service.kserve.logger import GRACE_S, MARKER

ClientFactory = Callable[..., TestClient]
MODELS: dict[str, Any] = {
    "v1m": {"sampling": {"every_n": 1}, "kserve": {"scores_are": "probabilities", "input": "instances"}},
    "digits": {"sampling": {"every_n": 1}, "kserve": {"scores_are": "logits", "scores": "logits"}},
}
OUTCOMES = (
    "request_stored",
    "joined",
    "count_mismatch",
    "response_only",
    "request_dropped",
    "request_expired",
    "duplicate",
    "invalid",
)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def kserve(make_client: ClientFactory, registry: CollectorRegistry) -> TestClient:
    return make_client(registry=registry, models=MODELS, max_batch=4)


def _headers(ce_id: str, kind: str, service: str = "v1m") -> dict[str, str]:
    return cloudevent_headers(ce_id, kind, service)


def _outcomes(registry: CollectorRegistry, model: str) -> dict[str, float]:
    """The outcomes ``model``'s CloudEvents ended in, those that did."""
    counts = {name: outcome_count(registry, model, name) for name in OUTCOMES}
    return {name: count for name, count in counts.items() if count}


def _rejections(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("vai_events_rejected_total", {"reason": reason}) or 0.0


def _rejected(answer: Any) -> list[tuple[int, str, str]]:
    return [(item["index"], item["request_id"], item["field"]) for item in answer.json()["rejected"]]


# --- a v1 prediction that cannot be read rejects its own event only ------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("oops", id="text"),
        pytest.param([0.5, "0.5"], id="a-number-as-text"),
        pytest.param([True, False], id="booleans"),
        pytest.param([0.5, None], id="null"),
        pytest.param({"scores": [0.5, 0.5]}, id="an-object"),
        pytest.param([[0.5], [0.2, 0.8]], id="ragged"),
        pytest.param(0.5, id="one-number"),
    ],
)
def test_an_unreadable_v1_prediction_rejects_its_event_alone(
    kserve: TestClient, registry: CollectorRegistry, redis_client: redis.Redis, bad: Any
) -> None:
    ce_id = str(uuid.uuid4())
    answer = post_event(kserve, _headers(ce_id, RESPONSE), {"predictions": [[0.2, 0.8], bad, [0.6, 0.4]]})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["outcome"], answer.json()["accepted"]) == ("response_only", 2)
    assert _rejected(answer) == [(1, f"{ce_id}:1", "predictions[1]")]
    assert "must be" in answer.json()["rejected"][0]["error"]
    assert [sample.request_id for sample in sampled(redis_client, "v1m", 2)] == [f"{ce_id}:0", f"{ce_id}:2"]
    assert _rejections(registry, "invalid") == 1  # as /v1/events counts an event it rejects
    assert _outcomes(registry, "v1m") == {"response_only": 1}


def test_the_events_after_an_unreadable_prediction_keep_their_instance_s_input_and_index(
    kserve: TestClient, redis_client: redis.Redis
) -> None:
    ce_id = str(uuid.uuid4())
    request = {"instances": [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]}
    assert post_event(kserve, _headers(ce_id, REQUEST), request).json()["outcome"] == "request_stored"
    body = b'{"predictions":["oops",[NaN,1.0],[0.6,0.4]]}'  # JSON NaN, as a model server may write it
    answer = post_event(kserve, _headers(ce_id, RESPONSE), body)
    assert (answer.status_code, answer.json()["outcome"], answer.json()["accepted"]) == (200, "joined", 1)
    (first, second) = _rejected(answer)
    assert first == (0, f"{ce_id}:0", "predictions[0]")
    assert second[:2] == (1, f"{ce_id}:1")  # ingest's rejection, told by its instance, not its place in the body
    (sample,) = sampled(redis_client, "v1m", 1)
    assert sample.request_id == f"{ce_id}:2"
    assert sample.input is not None and sample.input.decode().tolist() == [3.0, 3.0]


def test_v1_instances_of_text_or_booleans_are_left_out_not_read_as_numbers(
    kserve: TestClient, registry: CollectorRegistry, redis_client: redis.Redis
) -> None:
    ce_id = str(uuid.uuid4())
    request = {"instances": [[1.0, "2.0"], [True, False], [3.0, 4.0]]}
    assert post_event(kserve, _headers(ce_id, REQUEST), request).json()["outcome"] == "request_stored"
    answer = post_event(kserve, _headers(ce_id, RESPONSE), {"predictions": [[0.5, 0.5]] * 3})
    assert (answer.status_code, answer.json()["outcome"], answer.json()["accepted"]) == (200, "joined", 3)
    inputs = [sample.input for sample in sampled(redis_client, "v1m", 3)]
    assert inputs[0] is None and inputs[1] is None
    assert inputs[2] is not None and inputs[2].decode().tolist() == [3.0, 4.0]
    dropped = registry.get_sample_value("vai_kserve_parts_dropped_total", {"model": "v1m", "part": "input"})
    assert dropped == 2


# --- a response whose every instance is rejected: 200, its join's outcome ------------------------------------


def test_a_v2_response_whose_only_row_is_nan_is_200_and_ends_in_one_outcome(
    kserve: TestClient, registry: CollectorRegistry
) -> None:
    body = b'{"outputs":[{"name":"logits","shape":[1,2],"datatype":"FP32","data":[NaN,1]}]}'
    answer = post_event(kserve, _headers("bb9", RESPONSE, "digits"), body)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "outcome": "response_only",
        "model": "digits",
        "id": "bb9",
        "accepted": 0,
        "rejected": [
            {"index": 0, "request_id": "bb9:0", "field": "logits.data", "error": answer.json()["rejected"][0]["error"]}
        ],
    }
    assert _outcomes(registry, "digits") == {"response_only": 1}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"predictions":[[NaN,1.0],[0.5,Infinity]]}', id="rejected-by-ingest"),
        pytest.param(b'{"predictions":["oops",[0.5,"0.5"]]}', id="unreadable"),
    ],
)
def test_a_joined_response_whose_every_instance_is_rejected_takes_its_request_once(
    kserve: TestClient, registry: CollectorRegistry, redis_client: redis.Redis, body: bytes
) -> None:
    """The join took the request and left the marker: the CloudEvent is `joined` (not also invalid), the request
    is no orphan, and a second copy of the response is a duplicate."""
    ce_id = str(uuid.uuid4())
    assert post_event(kserve, _headers(ce_id, REQUEST), {"instances": [[1.0], [2.0]]}).status_code == 200
    answer = post_event(kserve, _headers(ce_id, RESPONSE), body)
    assert (answer.status_code, answer.json()["outcome"], answer.json()["accepted"]) == (200, "joined", 0)
    assert [index for index, _, _ in _rejected(answer)] == [0, 1]
    assert redis_client.get(keys.kserve_pending("v1m", "models", ce_id)) == MARKER
    sweeper = sidecar_of(kserve).kserve
    assert kserve.portal is not None
    assert kserve.portal.call(lambda: sweeper.sweep(ahead_s=3600)) == 0
    again = post_event(kserve, _headers(ce_id, RESPONSE), body)
    assert (again.status_code, again.json()["outcome"]) == (200, "duplicate"), again.text
    assert _outcomes(registry, "v1m") == {"request_stored": 1, "joined": 1, "duplicate": 1}


# --- no instance, or too many: refused before the join -------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "response", "field"),
    [
        pytest.param("v1m", {"predictions": []}, "predictions", id="no-prediction"),
        pytest.param("v1m", {"predictions": [[0.5, 0.5]] * 5}, "predictions", id="v1-over-max-batch"),
        pytest.param("v1m", {"predictions": ["x"] * 5}, "predictions", id="v1-over-max-batch-unreadable"),
        pytest.param(
            "digits",
            {"outputs": [{"name": "logits", "shape": [5, 2], "datatype": "FP32", "data": [0.5] * 10}]},
            "outputs",
            id="v2-over-max-batch",
        ),
    ],
)
def test_a_response_of_no_instance_or_too_many_is_refused_before_its_join(
    kserve: TestClient,
    registry: CollectorRegistry,
    redis_client: redis.Redis,
    service: str,
    response: dict[str, Any],
    field: str,
) -> None:
    """Refused naming its instances (not the `events` of /v1/events), and its request left waiting: a good copy
    still joins it; had none come, it would expire and be counted once."""
    ce_id = str(uuid.uuid4())
    stored = post_event(kserve, _headers(ce_id, REQUEST, service), {"instances": [[1.0, 1.0]]})
    assert stored.json()["outcome"] == "request_stored", stored.text
    answer = post_event(kserve, _headers(ce_id, RESPONSE, service), response)
    assert (answer.status_code, answer.json()["field"]) == (422, field), answer.text
    assert redis_client.get(keys.kserve_pending(service, "models", ce_id)) not in (None, MARKER)
    assert redis_client.zcard(keys.KSERVE_PENDING_INDEX) == 1
    good: dict[str, Any] = {"predictions": [[0.5, 0.5]]}
    if service == "digits":
        good = {"outputs": [{"name": "logits", "shape": [1, 2], "datatype": "FP32", "data": [0.5, 0.5]}]}
    assert post_event(kserve, _headers(ce_id, RESPONSE, service), good).json()["outcome"] == "joined"
    assert _outcomes(registry, service) == {"request_stored": 1, "invalid": 1, "joined": 1}


# --- the orphan index runs on Redis's clock ------------------------------------------------------------------


def _clock_ahead(monkeypatch: pytest.MonkeyPatch, kserve: TestClient, skew_s: float) -> None:
    """Run this replica's clock ``skew_s`` ahead (behind, when negative): the process's ``time.time``, and the
    clock a ``KServeLogger`` once took (``_clock``, read for the index before it read Redis's ``TIME``)."""
    real = time.time

    def skewed() -> float:
        return real() + skew_s

    monkeypatch.setattr(time, "time", skewed)
    monkeypatch.setattr(sidecar_of(kserve).kserve, "_clock", skewed, raising=False)


@pytest.mark.parametrize(
    ("storing_skew_s", "sweeping_skew_s"),
    [
        pytest.param(0.0, 120.0, id="sweeping-replica-ahead"),
        pytest.param(-120.0, 0.0, id="storing-replica-behind"),
    ],
)
def test_a_replica_s_skewed_clock_never_counts_a_waiting_request_as_expired(
    kserve: TestClient,
    registry: CollectorRegistry,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    storing_skew_s: float,
    sweeping_skew_s: float,
) -> None:
    """Replicas' clocks 2 minutes apart (more than the 60 s TTL): the request is due by Redis's clock only, so it
    is joined, not also counted as expired while its key lives."""
    ce_id = str(uuid.uuid4())
    sweeper = sidecar_of(kserve).kserve
    assert kserve.portal is not None
    with monkeypatch.context() as patched:
        _clock_ahead(patched, kserve, storing_skew_s)
        stored = post_event(kserve, _headers(ce_id, REQUEST), {"instances": [[1.0, 1.0]]})
    assert stored.json()["outcome"] == "request_stored", stored.text
    seconds, micros = redis_client.time()
    due = redis_client.zscore(keys.KSERVE_PENDING_INDEX, keys.kserve_join_member("v1m", "models", ce_id))
    assert due == pytest.approx(seconds + micros / 1e6 + 60 + GRACE_S, abs=5.0)
    with monkeypatch.context() as patched:
        _clock_ahead(patched, kserve, sweeping_skew_s)
        assert kserve.portal.call(sweeper.sweep) == 0
    joined = post_event(kserve, _headers(ce_id, RESPONSE), {"predictions": [[0.5, 0.5]]})
    assert joined.json()["outcome"] == "joined", joined.text
    assert _outcomes(registry, "v1m") == {"request_stored": 1, "joined": 1}


def test_an_orphan_is_counted_once_its_time_is_past_on_redis_s_clock(
    make_client: ClientFactory, registry: CollectorRegistry, redis_client: redis.Redis
) -> None:
    client = make_client(registry=registry, models=MODELS, kserve_join_ttl_s=1)
    ce_id = str(uuid.uuid4())
    assert post_event(client, _headers(ce_id, REQUEST), {"instances": [[1.0]]}).status_code == 200
    sweeper = sidecar_of(client).kserve
    assert client.portal is not None
    assert client.portal.call(sweeper.sweep) == 0
    assert client.portal.call(lambda: sweeper.sweep(ahead_s=1 + GRACE_S + 1)) == 1
    assert client.portal.call(lambda: sweeper.sweep(ahead_s=3600)) == 0
    assert _outcomes(registry, "v1m") == {"request_stored": 1, "request_expired": 1}
    assert redis_client.zcard(keys.KSERVE_PENDING_INDEX) == 0
