"""GET /v1/explanations against a real Redis: a model the fleet does not know, cohort keys holding ``:``, and the
page as the typed schema it declares, written off the event loop when large."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from common import keys
from common.redis import connect
from helpers import event, wait_until
from sampler.explanation_records import ExplanationRecord, ExplanationSummary, WorkerPrediction
from sampler.explanations import ExplanationStore, ScannedPage
from sampler.verdicts import MethodTrust, Verdict
from service.explanations.public import ExplanationListPublic

T0 = time.time() - 600


def _summary(request_id: str, at: float, **fields: Any) -> ExplanationSummary:
    values: dict[str, Any] = {
        "model": "digits",
        "model_version": "v1",
        "request_id": request_id,
        "status": "done",
        "reasons": ("every_n",),
        "predicted": 3,
        "confidence": 0.9,
        "timestamp": T0 + at,
        "methods": ("saliency",),
    }
    return ExplanationSummary(**(values | fields))


def _save(redis_url: str, *summaries: ExplanationSummary) -> None:
    async def save() -> None:
        client = connect(redis_url, timeout_s=2.0)
        store = ExplanationStore(client, ttl_s=3600)
        for summary in summaries:
            await store.save(ExplanationRecord(summary=summary))
        await client.aclose()

    asyncio.run(save())


def test_a_model_the_fleet_does_not_know_is_a_404_naming_it_as_on_the_methods_route(
    client: TestClient, redis_url: str
) -> None:
    """It answered 200 ``{"items": [], "complete": true}``: the viewer said "No explanations match these filters"
    for a typo."""
    _save(redis_url, _summary("a", 1.0))  # digits is known, digtis is not

    listing = client.get("/v1/explanations", params={"model": "digtis"})
    methods = client.get("/v1/explanations/digtis/methods")

    assert listing.status_code == 404, listing.text
    assert listing.json() == methods.json()
    assert listing.json()["field"] == "model"
    assert listing.json()["error"].startswith("model: 'digtis' is unknown to this fleet (")
    filtered = client.get("/v1/explanations", params={"model": "digtis", "cohort": "region=eu", "predicted": "3"})
    assert filtered.status_code == 404 and filtered.json()["field"] == "model"


@pytest.mark.parametrize(
    "known_by",
    [
        pytest.param("events", id="events-received-here"),
        pytest.param("queued", id="an-event-sampled-not-explained-yet"),
        pytest.param("monitors", id="events-published-by-another-replica"),
    ],
)
def test_a_known_model_without_explanations_has_an_empty_complete_page(
    client: TestClient, redis_url: str, redis_client: redis.Redis, known_by: str
) -> None:
    if known_by == "events":
        assert client.post("/v1/events", json=event("r1", model="other")).status_code == 202
    elif known_by == "queued":
        _save(redis_url, _summary("q1", 1.0, model="other", status="queued", methods=()))
    else:
        redis_client.sadd(keys.MONITORED_MODELS, "other")

    response = client.get("/v1/explanations", params={"model": "other", "reason": "low_margin"})

    assert response.status_code == 200, response.text
    assert (response.json()["items"], response.json()["complete"]) == ([], True)


def test_a_filter_matching_nothing_of_a_known_model_is_an_empty_page(
    make_client: Callable[..., TestClient], redis_url: str
) -> None:
    _save(redis_url, _summary("a", 1.0, cohort={"region": "eu"}))

    response = make_client(cohort_keys=("region",)).get(
        "/v1/explanations", params={"model": "digits", "cohort": "region=us"}
    )

    assert response.status_code == 200, response.text
    assert (response.json()["items"], response.json()["complete"]) == ([], True)


@pytest.fixture
def colon_keys(make_client: Callable[..., TestClient], redis_url: str, redis_client: redis.Redis) -> TestClient:
    """A sidecar whose cohort key ``k8s:zone`` holds ``:``; one record of each of ``k8s:zone=eu``, ``k8s:zone=us``
    and of the other key ``k8s`` (not allowlisted, so not indexed) with the value ``zone:eu``."""
    redis_client.sadd(keys.cohort_values("digits", "k8s:zone"), "eu", "us")  # admitted by the fleet: indexed
    _save(
        redis_url,
        _summary("zone-eu", 1.0, cohort={"k8s:zone": "eu"}),
        _summary("zone-us", 2.0, cohort={"k8s:zone": "us"}),
        _summary("k8s-zone-eu", 3.0, cohort={"k8s": "zone:eu"}),
    )
    return make_client(cohort_keys=("k8s:zone",))


@pytest.mark.parametrize(
    ("cohort", "found"),
    [
        pytest.param("k8s:zone=eu", ["zone-eu"], id="key-with-colon-equals-spelling"),
        pytest.param("k8s:zone:eu", ["zone-eu"], id="key-with-colon-colon-spelling"),
        pytest.param("all", ["k8s-zone-eu", "zone-us", "zone-eu"], id="all-filters-nothing"),
    ],
)
def test_a_cohort_key_holding_a_colon_is_found_in_both_spellings(
    colon_keys: TestClient, cohort: str, found: list[str]
) -> None:
    """The filter split at the first ``:``: ``k8s:zone:eu`` looked for the key ``k8s`` and matched nothing (200,
    complete). It now reads ``cohort`` as the calibration views do."""
    response = colon_keys.get("/v1/explanations", params={"model": "digits", "cohort": cohort})

    assert response.status_code == 200, response.text
    assert [item["request_id"] for item in response.json()["items"]] == found


def test_a_value_holding_a_colon_is_read_as_one_and_its_key_named_when_it_is_not_indexed(
    colon_keys: TestClient,
) -> None:
    """``k8s=zone:eu`` names the key ``k8s``, which is no key of VAI_COHORT_KEYS: not indexed, so refused."""
    response = colon_keys.get("/v1/explanations", params={"model": "digits", "cohort": "k8s=zone:eu"})

    assert response.status_code == 422, response.text
    assert response.json()["field"] == "cohort"
    assert response.json()["error"].startswith("cohort: the key 'k8s' is not indexed")


@pytest.mark.parametrize("cohort", ["eu", "region:", "=eu", ":", ""])
def test_a_cohort_that_names_no_key_and_value_is_a_422_naming_it(colon_keys: TestClient, cohort: str) -> None:
    response = colon_keys.get("/v1/explanations", params={"model": "digits", "cohort": cohort})

    assert response.status_code == 422, response.text
    assert response.json()["field"] == "cohort"


def _full_summary(index: int) -> ExplanationSummary:
    trust = {
        method: MethodTrust(
            verdict=Verdict(trusted=True, passes_sanity=True, beats_random=True, summary="Trusted."),
            fidelity_gain=0.1,
            agreement=None,
        )
        for method in ("saliency", "gradcam")
    }
    prediction = WorkerPrediction(
        predicted=3, probability=0.9, top_probability=0.9, matches=True, reported_probability=0.9
    )
    return _summary(
        f"r{index:02d}",
        float(index),
        cohort={"region": "eu"},
        label=3,
        methods=tuple(trust),
        trust=trust,
        worker_prediction=prediction,
    )


def test_the_page_is_its_declared_schema_written_off_the_loop_when_large(
    client: TestClient, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The route built its body by hand beside the ``ExplanationListPublic`` it declares, and wrote 500 summaries
    on the event loop (9–20 ms a page, raising ``/v1/events``' p95 on the same sidecar)."""
    from service.explanations import reads

    on_loop: list[bool] = []
    written = reads._listing_json

    def watched(page: ScannedPage) -> bytes:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return written(page)

    monkeypatch.setattr(reads, "_listing_json", watched)
    count = reads.SERIALISED_ON_THE_LOOP + 4
    _save(redis_url, *(_full_summary(i) for i in range(count)))

    large = client.get("/v1/explanations", params={"model": "digits", "limit": str(count)})
    small = client.get("/v1/explanations", params={"model": "digits", "limit": "2"})

    assert large.status_code == small.status_code == 200, (large.text, small.text)
    assert on_loop == [False, True]
    body = large.json()
    assert len(body["items"]) == count and body["items"][0]["worker_prediction"]["matches"] is True
    assert body == ExplanationListPublic.model_validate(body).model_dump(mode="json")


def _sampled_client(make_client: Callable[..., TestClient]) -> TestClient:
    """A sidecar sampling every event of ``digits``, its cohort key ``region`` allowlisted with room for 2 values."""
    models = {"digits": {"sampling": {"every_n": 1, "max_per_second": 100_000}}}
    return make_client(models=models, cohort_keys=("region",), max_cohort_values=2)


def _records(redis_client: redis.Redis, count: int) -> None:
    wait_until(
        lambda: len(list(redis_client.scan_iter("vai:expl:digits:*", count=1000))) >= count,
        what=f"{count} sampled events' records",
    )


@pytest.mark.parametrize(
    "cohort",
    [pytest.param("zone=a", id="key-not-allowlisted"), pytest.param("zone:a", id="key-not-allowlisted-colon")],
)
def test_a_filter_on_a_cohort_key_that_is_not_indexed_is_a_422_naming_cohort_not_an_empty_page(
    make_client: Callable[..., TestClient], redis_client: redis.Redis, cohort: str
) -> None:
    """Only the keys of VAI_COHORT_KEYS are indexed: a filter on another matched nothing and answered an empty,
    complete page, as if no record held it."""
    client = _sampled_client(make_client)
    assert client.post("/v1/events", json=event("a", cohort={"zone": "a", "region": "eu"})).status_code == 202
    _records(redis_client, 1)

    response = client.get("/v1/explanations", params={"model": "digits", "cohort": cohort})

    assert response.status_code == 422, response.text
    assert response.json()["field"] == "cohort"
    assert response.json()["error"] == (
        "cohort: the key 'zone' is not indexed: explanations are listed by the cohort keys of VAI_COHORT_KEYS only "
        "('region')"
    )
    unknown = client.get("/v1/explanations", params={"model": "digtis", "cohort": cohort})
    assert (unknown.status_code, unknown.json()["field"]) == (404, "model")  # a typo of the model is named first


def test_a_filter_on_an_admitted_value_lists_it_and_one_on_a_refused_value_is_a_422_naming_cohort(
    make_client: Callable[..., TestClient], redis_client: redis.Redis
) -> None:
    client = _sampled_client(make_client)
    for index, region in enumerate(["eu", "us", "apac"]):
        assert client.post("/v1/events", json=event(f"first-{index}", cohort={"region": region})).status_code == 202
    wait_until(lambda: redis_client.scard(keys.cohort_values("digits", "region")) == 2, what="the fleet's decision")
    assert client.post("/v1/events", json=event("later-eu", cohort={"region": "eu"})).status_code == 202
    _records(redis_client, 4)

    listed = client.get("/v1/explanations", params={"model": "digits", "cohort": "region=eu"})
    assert listed.status_code == 200, listed.text
    assert "later-eu" in [item["request_id"] for item in listed.json()["items"]]

    refused = client.get("/v1/explanations", params={"model": "digits", "cohort": "region=apac"})
    assert refused.status_code == 422, refused.text
    assert refused.json()["field"] == "cohort"
    assert refused.json()["error"].startswith("cohort: the value 'apac' of 'region' is not indexed")
