"""``POST /v1/cloudevents`` is open to anyone who reaches it (``VAI_KSERVE_OPEN``): what a pending request stores is
bounded (only the ``ce-metadata`` keys its mapping reads, each value of at most 128 characters; a namespace of a
Kubernetes namespace's length), and so is the number of a model's requests waiting for their responses."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis
from fastapi.testclient import TestClient
from kserve_events import REQUEST, RESPONSE, cloudevent_headers, outcome_count, post_event, sampled
from prometheus_client import CollectorRegistry

from common import keys
from helpers import wait_until

ClientFactory = Callable[..., TestClient]
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
    "digits": {"sampling": {"every_n": 1}, "kserve": {"service": "digits-isvc", "scores_are": "logits"}},
}
REQUEST_BODY = {"instances": [[5.1, 3.5, 1.4, 0.2]]}
RESPONSE_BODY = {"predictions": [[0.8, 0.15, 0.05]]}
MAPPED = {"X-Region": ["eu"], "X-Label": ["1"]}
"""The keys the mapping reads, with usable values."""
EXTRA = {f"X-Extra-{i}": ["e" * 10_000] for i in range(100)} | {"X-Other": "short"}
"""Keys the mapping does not read: 1 MB of them."""


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def kserve(make_client: ClientFactory, registry: CollectorRegistry) -> TestClient:
    return make_client(registry=registry, models=MODELS)


def _dropped(registry: CollectorRegistry, part: str, model: str = "iris") -> float:
    return registry.get_sample_value("vai_kserve_parts_dropped_total", {"model": model, "part": part}) or 0.0


def _stored(redis_client: redis.Redis, ce_id: str, model: str = "iris") -> dict[str, Any]:
    raw = redis_client.get(keys.kserve_pending(model, "models", ce_id))
    assert isinstance(raw, bytes), raw
    record: dict[str, Any] = orjson.loads(raw)
    return record


def _post_request(client: TestClient, ce_id: str, metadata: dict[str, Any], *, structured: bool) -> Any:
    """A request whose ``ce-metadata`` is ``metadata``: a header (binary mode), or the structured body's attribute."""
    if not structured:
        return post_event(
            client, cloudevent_headers(ce_id, REQUEST, "iris", metadata=json.dumps(metadata)), REQUEST_BODY
        )
    document = {
        "specversion": "1.0",
        "id": ce_id,
        "type": REQUEST,
        "inferenceservicename": "iris",
        "namespace": "models",
        "metadata": json.dumps(metadata),
        "data": REQUEST_BODY,
    }
    return post_event(client, {"content-type": "application/cloudevents+json"}, document)


# --- only the keys the mapping reads are stored, each value bounded ---------------------------------------------


@pytest.mark.parametrize("structured", [pytest.param(False, id="binary-header"), pytest.param(True, id="structured")])
def test_a_request_stores_only_the_metadata_its_mapping_reads(
    kserve: TestClient, registry: CollectorRegistry, redis_client: redis.Redis, structured: bool
) -> None:
    """Every key of ``ce-metadata``, of any length, was stored in the pending record: 40 requests with 4 MB of it
    each took Redis from 1 MB to 161 MB."""
    ce_id = str(uuid.uuid4())
    metadata = EXTRA | MAPPED | {"X-Tier": ["t" * 129]}
    answer = _post_request(kserve, ce_id, metadata, structured=structured)
    assert (answer.status_code, answer.json()["outcome"]) == (200, "request_stored"), answer.text

    record = _stored(redis_client, ce_id)
    assert record["metadata"] == {"X-Region": "eu", "X-Label": "1"}
    assert record["overlong"] == ["X-Tier"]
    assert redis_client.strlen(keys.kserve_pending("iris", "models", ce_id)) < 1024

    joined = post_event(kserve, cloudevent_headers(ce_id, RESPONSE, "iris"), RESPONSE_BODY)
    assert (joined.json()["outcome"], joined.json()["accepted"]) == ("joined", 1), joined.text
    (sample,) = sampled(redis_client, "iris", 1)
    assert (sample.cohort, sample.label) == ({"X-Region": "eu"}, 1)
    assert _dropped(registry, "cohort") == 1  # the over-long X-Tier, as an over-long value always was


def test_many_requests_with_megabytes_of_metadata_leave_redis_small(
    kserve: TestClient, redis_client: redis.Redis
) -> None:
    before = redis_client.info("memory")["used_memory"]
    for _ in range(20):
        answer = _post_request(kserve, str(uuid.uuid4()), EXTRA | MAPPED, structured=True)
        assert answer.json()["outcome"] == "request_stored", answer.text
    assert redis_client.info("memory")["used_memory"] - before < 1_000_000  # was 20 MB


@pytest.mark.parametrize(
    ("metadata", "part", "cohort", "label"),
    [
        pytest.param({"X-Label": ["1" + " " * 200]}, "label", {"X-Region": "eu"}, None, id="label"),
        pytest.param({"X-Region": ["r" * 129]}, "cohort", {}, 1, id="cohort"),
    ],
)
def test_an_over_long_value_of_the_response_wins_over_its_request_s_and_is_dropped(
    kserve: TestClient,
    registry: CollectorRegistry,
    redis_client: redis.Redis,
    metadata: dict[str, list[str]],
    part: str,
    cohort: dict[str, str],
    label: int | None,
) -> None:
    """The response's metadata wins key by key, as before; a value too long to keep is still the response's."""
    ce_id = str(uuid.uuid4())
    assert _post_request(kserve, ce_id, MAPPED, structured=False).json()["outcome"] == "request_stored"
    headers = cloudevent_headers(ce_id, RESPONSE, "iris", metadata=json.dumps(metadata))
    joined = post_event(kserve, headers, RESPONSE_BODY)
    assert (joined.json()["outcome"], joined.json()["accepted"]) == ("joined", 1), joined.text
    (sample,) = sampled(redis_client, "iris", 1)
    assert (sample.cohort, sample.label) == (cohort, label)
    assert _dropped(registry, part) == 1


def test_a_namespace_longer_than_a_kubernetes_namespace_is_refused_naming_it(
    kserve: TestClient, registry: CollectorRegistry, redis_client: redis.Redis
) -> None:
    """The namespace is part of the pending request's key and index member."""
    answer = post_event(kserve, cloudevent_headers("n1", REQUEST, "iris", namespace="n" * 5000), REQUEST_BODY)
    assert (answer.status_code, answer.json()["field"]) == (400, "ce-namespace"), answer.text
    assert outcome_count(registry, "iris", "invalid") == 1
    assert redis_client.zcard(keys.KSERVE_PENDING_INDEX) == 0
    ok = post_event(kserve, cloudevent_headers("n2", REQUEST, "iris", namespace="n" * 63), REQUEST_BODY)
    assert ok.json()["outcome"] == "request_stored", ok.text


def test_an_unmapped_service_name_is_not_repeated_whole_in_the_error(kserve: TestClient) -> None:
    answer = post_event(kserve, cloudevent_headers("u1", RESPONSE, "s" * 100_000), RESPONSE_BODY)
    assert (answer.status_code, answer.json()["field"]) == (422, "ce-inferenceservicename"), answer.text
    assert len(answer.text) < 1000


# --- a model's pending requests are capped ------------------------------------------------------------------------


@pytest.fixture
def capped(make_client: ClientFactory, registry: CollectorRegistry) -> TestClient:
    return make_client(registry=registry, models=MODELS, kserve_max_pending=3)


def test_a_request_past_the_model_s_pending_cap_is_refused_and_counted(
    capped: TestClient, registry: CollectorRegistry, redis_client: redis.Redis
) -> None:
    ids = [str(uuid.uuid4()) for _ in range(4)]
    outcomes = [_post_request(capped, ce_id, MAPPED, structured=False).json()["outcome"] for ce_id in ids]
    assert outcomes == ["request_stored"] * 3 + ["pending_full"]
    assert outcome_count(registry, "iris", "pending_full") == 1
    assert not redis_client.exists(keys.kserve_pending("iris", "models", ids[3]))
    pending = keys.kserve_pending_of("iris")
    assert redis_client.zcard(keys.KSERVE_PENDING_INDEX) == redis_client.zcard(pending) == 3

    # its response is monitored without its inputs; a stored request's is joined, which frees a place
    refused = post_event(capped, cloudevent_headers(ids[3], RESPONSE, "iris"), RESPONSE_BODY)
    assert (refused.json()["outcome"], refused.json()["accepted"]) == ("response_only", 1), refused.text
    assert post_event(capped, cloudevent_headers(ids[0], RESPONSE, "iris"), RESPONSE_BODY).json()["outcome"] == "joined"
    assert redis_client.zcard(keys.kserve_pending_of("iris")) == 2
    assert _post_request(capped, str(uuid.uuid4()), MAPPED, structured=False).json()["outcome"] == "request_stored"

    # a request already there is still a duplicate, and one whose response came first still dropped, when full
    assert _post_request(capped, ids[1], MAPPED, structured=False).json()["outcome"] == "duplicate"
    assert _post_request(capped, ids[3], MAPPED, structured=False).json()["outcome"] == "request_dropped"
    assert outcome_count(registry, "iris", "pending_full") == 1


def test_the_cap_is_per_model(capped: TestClient, registry: CollectorRegistry) -> None:
    for _ in range(4):
        _post_request(capped, str(uuid.uuid4()), MAPPED, structured=False)
    assert outcome_count(registry, "iris", "pending_full") == 1
    other = post_event(capped, cloudevent_headers(str(uuid.uuid4()), REQUEST, "digits-isvc"), {"instances": [[1.0]]})
    assert other.json()["outcome"] == "request_stored", other.text


def test_expired_requests_leave_the_cap(
    make_client: ClientFactory, registry: CollectorRegistry, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request whose response never came stops counting once its record expires, before any sweep."""
    client = make_client(registry=registry, models=MODELS, kserve_join_ttl_s=1, kserve_max_pending=2)
    ids = [str(uuid.uuid4()) for _ in range(3)]
    outcomes = [_post_request(client, ce_id, MAPPED, structured=False).json()["outcome"] for ce_id in ids]
    assert outcomes == ["request_stored", "request_stored", "pending_full"]
    wait_until(
        lambda: not any(redis_client.exists(keys.kserve_pending("iris", "models", ce_id)) for ce_id in ids[:2]),
        what="the pending records expired",
    )
    assert _post_request(client, str(uuid.uuid4()), MAPPED, structured=False).json()["outcome"] == "request_stored"
    assert redis_client.zcard(keys.kserve_pending_of("iris")) == 1
    assert 0 < redis_client.ttl(keys.kserve_pending_of("iris")) <= 2
