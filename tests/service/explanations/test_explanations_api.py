"""GET /v1/explanations: bad cursors and unreadable stored records, against a real Redis."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable

import numpy as np
import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from common import keys
from common.redis import connect
from sampler.explanation_records import (
    ExplanationDetail,
    ExplanationRecord,
    ExplanationSummary,
    SanityFigure,
    StoredAttribution,
)
from sampler.explanations import ExplanationStore
from sampler.layers import FeatureMaps
from sampler.verdicts import MethodTrust, Verdict

T0 = time.time() - 600


def _summary(request_id: str, at: float) -> ExplanationSummary:
    return ExplanationSummary(
        model="digits",
        model_version="v1",
        request_id=request_id,
        status="done",
        reasons=("every_n",),
        predicted=3,
        confidence=0.9,
        timestamp=T0 + at,
        methods=("saliency",),
    )


def _save(redis_url: str, *records: ExplanationRecord) -> None:
    async def save() -> None:
        client = connect(redis_url, timeout_s=2.0)
        store = ExplanationStore(client, ttl_s=3600)
        for record in records:
            await store.save(record)
        await client.aclose()

    asyncio.run(save())


def _cursor(value: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param(_cursor(["nan", "x"]), id="nan-text"),
        pytest.param(_cursor(["inf", "x"]), id="inf-text"),
        pytest.param(base64.urlsafe_b64encode(b'[NaN, "x"]').decode(), id="nan-literal"),
        pytest.param(_cursor([1.5]), id="one-part"),
        pytest.param(_cursor([1, 2]), id="id-not-text"),
        pytest.param(_cursor(["1", "x"]), id="time-as-text"),
        pytest.param(_cursor([True, "x"]), id="time-as-boolean"),
        pytest.param(base64.urlsafe_b64encode(b'[1e999, "x"]').decode(), id="time-overflowing"),
        pytest.param(_cursor({"t": 1, "id": "x"}), id="object"),
        pytest.param("%%%", id="not-base64"),
    ],
)
def test_a_bad_cursor_is_a_422_naming_it(client: TestClient, redis_url: str, cursor: str) -> None:
    _save(redis_url, ExplanationRecord(summary=_summary("a", 1.0)))

    response = client.get("/v1/explanations", params={"model": "digits", "cursor": cursor})

    assert response.status_code == 422, response.text
    assert response.json()["field"] == "cursor" and "retry-after" not in response.headers


def test_a_filter_matching_nothing_examines_a_bounded_part_of_the_index_and_says_so(
    make_client: Callable[..., TestClient], redis_client: redis.Redis
) -> None:
    """The audit's request: cohort and predicted class that never meet, over indices larger than the bound (5,000
    entries examined per request): the empty page says the scan stopped, and its cursor continues it."""
    members = [f"id{i:05d}" for i in range(7_000)]
    redis_client.zadd(
        keys.explanation_index("digits", "cohort", "region=eu"), {m: T0 + i for i, m in enumerate(members)}
    )
    redis_client.zadd(
        keys.explanation_index("digits", "predicted", "99"), {f"p{m}": T0 + i for i, m in enumerate(members)}
    )
    redis_client.sadd(keys.EXPLAINED_MODELS, "digits")  # as the save script does with every record
    params = {"model": "digits", "cohort": "region:eu", "predicted": "99", "limit": "1"}
    client = make_client(cohort_keys=("region",))

    first = client.get("/v1/explanations", params=params).json()
    assert (first["items"], first["examined"], first["complete"]) == ([], 5_000, False)
    assert first["next_cursor"] is not None
    second = client.get("/v1/explanations", params=params | {"cursor": first["next_cursor"]}).json()
    assert (second["items"], second["next_cursor"], second["examined"], second["complete"]) == ([], None, 2_000, True)


def test_a_full_page_is_complete_and_names_what_it_examined(client: TestClient, redis_url: str) -> None:
    _save(redis_url, *(ExplanationRecord(summary=_summary(name, at)) for name, at in (("a", 1.0), ("b", 2.0))))

    body = client.get("/v1/explanations", params={"model": "digits", "limit": "1"}).json()

    assert [item["request_id"] for item in body["items"]] == ["b"]
    assert (body["examined"], body["complete"]) == (2, True) and body["next_cursor"] is not None


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param({"timestamp": None}, id="infinite-time-stored-as-null"),
        pytest.param({"confidence": None}, id="nan-confidence-stored-as-null"),
    ],
)
def test_one_unreadable_record_does_not_break_the_model_s_pages(
    client: TestClient, redis_url: str, redis_client: redis.Redis, broken: dict[str, object]
) -> None:
    _save(redis_url, *(ExplanationRecord(summary=_summary(name, at)) for name, at in (("old", 1.0), ("bad", 2.0))))
    _save(redis_url, ExplanationRecord(summary=_summary("new", 3.0)))
    body = _summary("bad", 2.0).model_dump(mode="json") | broken
    redis_client.hset(keys.explanation("digits", "bad"), "summary", json.dumps(body))

    listing = client.get("/v1/explanations", params={"model": "digits"})
    assert listing.status_code == 200, listing.text
    assert [item["request_id"] for item in listing.json()["items"]] == ["new", "old"]
    assert client.get("/v1/explanations/digits/new").status_code == 200
    missing = client.get("/v1/explanations/digits/bad")
    assert missing.status_code == 404 and missing.json()["field"] == "request_id"
    methods = client.get("/v1/explanations/digits/methods")
    assert methods.status_code == 200 and methods.json()["explanations"] == 2


def test_an_unreadable_sanity_figure_is_left_out_of_the_detail(
    client: TestClient, redis_url: str, redis_client: redis.Redis
) -> None:
    summary = _summary("a", 1.0).model_copy(update={"methods": ("saliency", "gradcam")})
    _save(redis_url, ExplanationRecord(summary=summary))
    redis_client.hset(keys.sanity("digits"), "saliency", '{"similarity":"high","flagged":false}')
    redis_client.hset(
        keys.sanity("digits"),
        "gradcam",
        SanityFigure(similarity=0.2, flagged=False, samples=4, checked_at=T0).model_dump_json(),
    )

    response = client.get("/v1/explanations/digits/a")

    assert response.status_code == 200, response.text
    assert response.json()["sanity_similarity"] == {"gradcam": 0.2}  # saliency reads as never checked
    # What the figure rests on, and when it ran: the verdicts may have used an earlier check.
    assert (response.json()["sanity_samples"], response.json()["sanity_checked_at"]) == (
        {"gradcam": 4},
        {"gradcam": T0},
    )


def test_the_methods_report_has_each_method_s_latest_sanity_check(
    client: TestClient, redis_url: str, redis_client: redis.Redis
) -> None:
    """The pass share counts the checks the verdicts used; the latest check (and its size) is shown beside it."""
    trust = {
        "saliency": MethodTrust(verdict=Verdict(passes_sanity=True)),
        "gradcam": MethodTrust(verdict=Verdict()),
    }
    summary = _summary("a", 1.0).model_copy(update={"methods": ("saliency", "gradcam"), "trust": trust})
    _save(redis_url, ExplanationRecord(summary=summary))
    redis_client.hset(
        keys.sanity("digits"),
        "saliency",
        SanityFigure(similarity=0.7, flagged=True, samples=7, checked_at=T0 + 5).model_dump_json(),
    )

    rows = {row["method"]: row for row in client.get("/v1/explanations/digits/methods").json()["methods"]}

    assert rows["saliency"]["sanity_pass_share"] == 1.0
    assert rows["saliency"]["latest_sanity"] == {
        "similarity": 0.7,
        "flagged": True,
        "samples": 7,
        "conclusive": True,  # a figure stored without the flag (an older worker's) reads conclusive
        "checked_at": T0 + 5,
    }
    assert rows["gradcam"]["latest_sanity"] is None


def test_an_inconclusive_latest_sanity_check_is_not_shown_as_a_pass(
    client: TestClient, redis_url: str, redis_client: redis.Redis
) -> None:
    """The demo's Grad-CAM check often measures fewer pairs than ``sanity_min_pairs``: it read
    ``{similarity: 0.002, flagged: false, samples: 7}``, a pass to any reader. ``conclusive`` says it is none."""
    trust = {"gradcam": MethodTrust(verdict=Verdict()), "saliency": MethodTrust(verdict=Verdict(passes_sanity=True))}
    summary = _summary("a", 1.0).model_copy(update={"methods": ("gradcam", "saliency"), "trust": trust})
    _save(redis_url, ExplanationRecord(summary=summary))
    figures = {
        "gradcam": SanityFigure(similarity=0.002, flagged=False, samples=7, checked_at=T0 + 5, conclusive=False),
        "saliency": SanityFigure(similarity=0.1, flagged=False, samples=16, checked_at=T0 + 6, conclusive=True),
    }
    for method, figure in figures.items():
        redis_client.hset(keys.sanity("digits"), method, figure.model_dump_json())

    rows = {row["method"]: row for row in client.get("/v1/explanations/digits/methods").json()["methods"]}

    assert rows["gradcam"]["latest_sanity"] == {
        "similarity": 0.002,
        "flagged": False,
        "samples": 7,
        "conclusive": False,
        "checked_at": T0 + 5,
    }
    assert rows["saliency"]["latest_sanity"]["conclusive"] is True
    assert client.get("/v1/explanations/digits/a").json()["sanity_conclusive"] == {"gradcam": False, "saliency": True}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(base64.b64encode(b"\x00" * 6).decode(), id="too-short-for-its-shape"),
        pytest.param("not base64 at all!", id="not-base64"),
    ],
)
def test_a_stored_map_that_parses_but_does_not_decode_is_a_404_not_a_500(
    client: TestClient, redis_url: str, data: str
) -> None:
    broken = StoredAttribution(shape=(1, 8, 8), scale=1.0, data=data, target=3)
    maps = FeatureMaps(shape=(1, 8, 8), scale=1.0, data=data, channels=(0,))
    record = ExplanationRecord(
        summary=_summary("broken", 1.0),
        detail=ExplanationDetail(attributions={"saliency": broken}, feature_maps={"conv1": maps}),
    )
    _save(redis_url, record)

    for path, params in (
        ("/v1/explanations/digits/broken", {}),
        ("/v1/explanations/digits/broken/heatmap.png", {"method": "saliency"}),
        ("/v1/explanations/digits/broken/activations.png", {"layer": "conv1"}),
    ):
        response = client.get(path, params=params)
        assert response.status_code == 404, response.text
        assert response.json()["field"] == "request_id" and "unreadable" in response.json()["error"]


def test_a_record_is_made_public_off_the_event_loop(
    client: TestClient, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Image-sized maps are tens of megabytes of JSON numbers: built on the loop, they held up ingest."""
    from service.explanations.public import to_public

    on_loop: list[bool] = []

    def watched(record: ExplanationRecord, sanity: dict[str, SanityFigure]) -> object:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return to_public(record, sanity)

    monkeypatch.setattr("service.routes.explanations.to_public", watched)
    stored = StoredAttribution.from_array(np.linspace(-1.0, 1.0, 64).reshape(1, 8, 8), target=3)
    record = ExplanationRecord(
        summary=_summary("big", 1.0), detail=ExplanationDetail(attributions={"saliency": stored})
    )
    _save(redis_url, record)

    response = client.get("/v1/explanations/digits/big")

    assert response.status_code == 200, response.text
    assert on_loop == [False]
    values = np.array(response.json()["attributions"]["saliency"]["values"])
    assert values.shape == (1, 8, 8) and abs(values.max() - 1.0) < 1e-3


def test_a_negative_predicted_class_is_a_422_naming_it(client: TestClient) -> None:
    response = client.get("/v1/explanations", params={"model": "digits", "predicted": "-1"})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "predicted"


def test_the_list_s_parameters_and_page_are_documented_in_openapi(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/explanations"]["get"]
    documented = {parameter["name"] for parameter in operation["parameters"]}
    assert documented == {"model", "version", "reason", "cohort", "predicted", "since", "until", "limit", "cursor"}
    page = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert page == {"$ref": "#/components/schemas/ExplanationListPublic"}


def test_a_bad_limit_is_still_a_422_in_the_error_shape_naming_it(client: TestClient) -> None:
    response = client.get("/v1/explanations", params={"model": "digits", "limit": "many"})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "limit"
    assert set(response.json()) == {"error", "field"}


def test_a_list_without_model_says_truly_why_it_needs_one(client: TestClient, redis_url: str) -> None:
    """It said "several models have explanations" when none had any."""
    response = client.get("/v1/explanations")
    assert response.status_code == 422 and response.json()["field"] == "model"
    assert "no model has explanations yet" in response.json()["error"]
    records = [
        ExplanationRecord(summary=_summary(f"{model}1", 1.0).model_copy(update={"model": model}))
        for model in ("alpha", "beta")
    ]
    _save(redis_url, *records)
    response = client.get("/v1/explanations")
    assert response.status_code == 422 and "2 models have explanations ('alpha', 'beta')" in response.json()["error"]
