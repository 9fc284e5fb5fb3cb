"""The model-overview views through the sidecar: the embedding projection with click-through ids, the drift-score
history and the confidence/margin distributions, computed once by the owning monitor and served by every replica."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import redis
import torch
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis as AsyncRedis
from sklearn.decomposition import PCA

import monitors.drift.online  # noqa: F401  # alibi-detect's slow import here, not racing in a monitor thread
from common import keys
from common.embedded_redis import EmbeddedRedis
from demo.corruptions import corrupt
from demo.models.training import DatasetSplit
from helpers import FAST_DRIFT, MonitorRunner, event, load_torchscript, serve_app, summarise_rows, wait_until
from monitors.fleet.views import WANTED_TTL_S, Projection, ProjectionStatus
from sampler.explanation_records import ExplanationRecord, ExplanationStatus, ExplanationSummary
from sampler.explanations import ExplanationStore
from service.app import create_app

Array = npt.NDArray[Any]
FAST_VIEWS: dict[str, Any] = {
    "projection_refresh_s": 0.1,
    "drift_history_s": 0.05,
    "drift": FAST_DRIFT,
    "monitor_lease_ttl_s": 5.0,
}
"""Quick refreshes; a lease that a busy 2-core box cannot lose (a new owner starts its traffic sample afresh)."""
LABELLED = {"digits": {"delayed_labels": True}}
NO_SAMPLING = {"every_n": None, "confidence_below": None}


@pytest.fixture(scope="module")
def digits_module(digits_path: Path) -> torch.jit.ScriptModule:
    module = load_torchscript(digits_path)
    return module


def _digits(module: torch.jit.ScriptModule, images: Array) -> tuple[Array, Array]:
    """Embeddings (float32, as the feed carries them) and probabilities of digit images."""
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        probabilities = torch.softmax(module(x).double(), dim=1).numpy()
        return module.embed(x).numpy().astype(np.float32), probabilities / probabilities.sum(axis=1, keepdims=True)


def _post(client: TestClient, prefix: str, embeddings: Array, probabilities: Array) -> list[str]:
    ids = [f"{prefix}{i}" for i in range(len(embeddings))]
    events = [
        {**event(rid), "embedding": e.tolist(), "probabilities": p.tolist()}
        for rid, e, p in zip(ids, embeddings, probabilities, strict=True)
    ]
    for body in events:
        body.pop("logits")
    for start in range(0, len(events), 200):
        assert client.post("/v1/events", json={"events": events[start : start + 200]}).status_code == 202
    return ids


def _upload(client: TestClient, embeddings: Array, probabilities: Array) -> None:
    body = {"embeddings": embeddings.tolist(), "probabilities": probabilities.tolist()}
    assert client.put("/v1/models/digits/reference", json=body).status_code == 202


def _store_explanations(redis_url: str, request_ids: list[str], *, status: ExplanationStatus = "done") -> None:
    """Real explanation records, as an attribution worker stores them (``queued``: as the sidecar marks a
    sampled event before any worker explained it)."""

    async def save() -> None:
        client = AsyncRedis.from_url(redis_url)
        try:
            store = ExplanationStore(client, ttl_s=3600)
            for n, request_id in enumerate(request_ids):
                summary = ExplanationSummary(
                    model="digits",
                    model_version="v1",
                    request_id=request_id,
                    status=status,
                    reasons=("every_n",),
                    predicted=n % 10,
                    confidence=0.9,
                    timestamp=time.time(),
                )
                assert await store.save(ExplanationRecord(summary=summary))
        finally:
            await client.aclose()

    asyncio.run(save())


def _projection(client: TestClient, done: Callable[[dict[str, Any]], bool], **params: Any) -> dict[str, Any]:
    def published() -> dict[str, Any] | None:
        response = client.get("/v1/models/digits/projection", params=params)
        if response.status_code == 503:  # being computed (or Redis slow to answer on a busy box)
            assert response.headers["retry-after"].isdigit()
            return None
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body if done(body) else None

    body: dict[str, Any] = wait_until(published, timeout_s=600, what=f"the projection {params}", interval_s=0.2)
    return body


def test_projection_has_reference_and_production_points_with_working_click_through_ids(
    make_client: Callable[..., TestClient],
    monitors: MonitorRunner,
    digits_module: torch.jit.ScriptModule,
    digits_split: DatasetSplit,
    redis_url: str,
) -> None:
    monitors.start(projection_methods=("pca",), **FAST_VIEWS)
    client = make_client(monitor_max_per_second=0, models=LABELLED, sampling=NO_SAMPLING)
    reference_x, reference_p = _digits(digits_module, digits_split.test.features[200:])
    _upload(client, reference_x, reference_p)
    production_x, production_p = _digits(digits_module, digits_split.test.features[:200])
    ids = _post(client, "p", production_x, production_p)
    explained = ids[::25]
    _store_explanations(redis_url, explained)
    _store_explanations(redis_url, ids[5::25], status="queued")  # sampled, not explained: no ring, no link
    first = client.get("/v1/models/digits/projection")  # asking is what makes the monitor compute it
    assert first.status_code == 503 and first.headers["retry-after"].isdigit()
    assert "being computed" in first.json()["error"]
    labels = {rid: int(p.argmax() + 1) % 10 for rid, p in zip(ids[:30], production_p[:30], strict=True)}
    answer = client.post(
        "/v1/labels", json={"labels": [{"model": "digits", "request_id": r, "label": y} for r, y in labels.items()]}
    )
    assert answer.json()["matched"] == 30

    def complete(body: dict[str, Any]) -> bool:
        labelled = sum(p["label"] is not None for p in body["points"])
        return body["production_count"] == 200 and labelled == 30

    body = _projection(client, complete)
    assert body["method"] == "pca" and body["reference_count"] == len(reference_x) and body["note"]
    production = [p for p in body["points"] if p["source"] == "production"]
    reference = [p for p in body["points"] if p["source"] == "reference"]
    assert len(production) == 200 and len(reference) == len(reference_x)
    assert all(p["request_id"] is None and p["time"] is None for p in reference)
    assert [p["predicted"] for p in reference] == reference_p.argmax(axis=1).tolist()
    by_order = dict(zip(ids, production, strict=True))  # the latest examined records, oldest first
    assert {rid: by_order[rid]["label"] for rid in labels} == labels
    assert all(by_order[rid]["label"] is None for rid in ids[30:])
    # Click-through: exactly the explained events carry their id, and each id opens its explanation.
    clickable = [p["request_id"] for p in production if p["request_id"] is not None]
    assert clickable == explained
    for request_id in clickable:
        record = client.get(f"/v1/explanations/digits/{request_id}")
        assert record.status_code == 200 and record.json()["request_id"] == request_id
    # The coordinates are scikit-learn's PCA fitted on the reference (up to each axis's sign).
    pca = PCA(n_components=2).fit(reference_x.astype(np.float64))
    expected = np.vstack(
        [pca.transform(reference_x.astype(np.float64)), pca.transform(production_x.astype(np.float64))]
    )
    got = np.array([[p["x"], p["y"]] for p in reference + production])
    signs = np.sign((expected * got).sum(axis=0))
    np.testing.assert_allclose(got * signs, expected, atol=1e-6 * float(np.abs(expected).max()))

    limited = client.get("/v1/models/digits/projection", params={"limit": 50}).json()
    sources = [p["source"] for p in limited["points"]]
    assert len(sources) == 50 and limited["shown_reference"] == sources.count("reference")
    assert (limited["reference_count"], limited["production_count"]) == (len(reference_x), 200), "the totals"
    assert set(limited) - set(body) == {"shown_reference", "shown_production"}, "one shape, cut or not"
    assert body["warning"] is None and body["reference_rows"] is None  # every reference row is drawn
    assert sources.count("reference") == round(50 * len(reference_x) / (len(reference_x) + 200))


@pytest.mark.parametrize(
    ("query", "status", "field"),
    [
        pytest.param("method=tsne", 422, "method", id="unknown-method"),
        pytest.param("limit=1", 422, "limit", id="limit-too-small"),
        pytest.param("limit=many", 422, "limit", id="limit-not-a-number"),
        pytest.param("method=umap", 422, "method", id="method-not-enabled"),
    ],
)
def test_bad_projection_queries_are_4xx_naming_the_field(
    make_client: Callable[..., TestClient], monitors: MonitorRunner, query: str, status: int, field: str
) -> None:
    monitors.start(projection_methods=("pca",), **FAST_VIEWS)
    client = make_client()
    client.post("/v1/events", json=event("a", embedding=[0.5, 0.25]))
    wait_until(lambda: client.get("/v1/models/digits/distributions").status_code == 200, what="the owner's status")
    response = client.get(f"/v1/models/digits/projection?{query}")
    assert response.status_code == status and response.json()["field"] == field, response.text


def test_projections_are_computed_only_while_asked_for(
    make_client: Callable[..., TestClient], monitors: MonitorRunner, redis_client: redis.Redis
) -> None:
    registry = CollectorRegistry()
    monitors.start(registry=registry, projection_methods=("pca",), **FAST_VIEWS)
    client = make_client(monitor_max_per_second=0)
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(50, 8)).astype(np.float32)
    assert client.put("/v1/models/digits/reference", json={"embeddings": reference.tolist()}).status_code == 202
    client.post("/v1/events", json={"events": [event(f"e{i}", embedding=[float(i)] * 8) for i in range(20)]})

    def counted() -> bool:
        response = client.get("/v1/models/digits/distributions")
        return response.status_code == 200 and response.json()["production_count"] == 20

    wait_until(counted, what="the owner's views loop to run")
    assert redis_client.exists(keys.projection("digits", "pca")) == 0, "nobody asked: nothing computed"
    assert registry.get_sample_value("vai_monitor_projection_seconds", {"model": "digits", "method": "pca"}) is None
    body = _projection(client, lambda b: b["production_count"] == 20)
    assert body["reference_count"] == 50 and all(p["predicted"] is None for p in body["points"][:50])
    wait_until(  # the monitor writes the projection to Redis, then its gauge
        lambda: (
            registry.get_sample_value("vai_monitor_projection_seconds", {"model": "digits", "method": "pca"})
            is not None
        ),
        what="the projection's gauge",
    )
    assert 0 < redis_client.ttl(keys.projection_wanted("digits", "pca")) <= WANTED_TTL_S


def test_a_published_projection_this_sidecar_cannot_read_is_503_when_limited(
    client: TestClient, redis_client: redis.Redis
) -> None:
    """A body that does not validate (a null coordinate, a monitor of another release) is served as published
    without ``limit``; with ``limit`` it has to be parsed, and then it is a 503 while the owner writes it again,
    as the other views answer, never a 500."""
    redis_client.sadd(keys.MONITORED_MODELS, "digits")
    points = [{"x": None, "y": 0.0, "source": "reference"}, {"x": 1.0, "y": 0.0, "source": "production"}]
    body = {"v": 1, "model": "digits", "method": "pca", "computed_at": time.time(), "seconds": 0.1}
    body.update(reference_count=1, production_count=1, points=points)
    redis_client.set(keys.projection("digits", "pca"), json.dumps(body))
    assert client.get("/v1/models/digits/projection").status_code == 200
    response = client.get("/v1/models/digits/projection", params={"limit": 2})
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"].isdigit() and "cannot be read" in response.json()["error"]


def _published_with(redis_client: redis.Redis, **status: dict[str, str]) -> dict[str, Any]:
    """A projection of 30 reference and 10 production points published for ``digits``, with the owner's status (and
    its lease: an owner's status with no monitor left says nothing)."""
    redis_client.sadd(keys.MONITORED_MODELS, "digits")
    redis_client.set(keys.monitor_lease("digits"), b"the-owner", ex=600)
    points = [{"x": float(i), "y": 0.0, "source": "reference" if i < 30 else "production"} for i in range(40)]
    body = {"v": 1, "model": "digits", "method": "pca", "computed_at": time.time() - 600, "seconds": 0.1}
    body.update(reference_count=30, production_count=10, points=points)
    redis_client.set(keys.projection("digits", "pca"), json.dumps(body))
    redis_client.set(
        keys.projection_status("digits"), ProjectionStatus(methods=("pca",), updated_at=0, **status).model_dump_json()
    )
    return body


@pytest.mark.parametrize("limit", [pytest.param(None, id="as-published"), pytest.param(20, id="limited")])
def test_a_projection_whose_reference_became_unusable_is_503_with_why_not_the_old_body(
    client: TestClient, redis_client: redis.Redis, limit: int | None
) -> None:
    """After a width change the owner waits for a new traffic reference: the body left from before is in the old
    reference's frame and leaves the new traffic out, so it is not served as if current."""
    why = "40 of the 50 latest production embeddings are 32-d, the reference's 64-d (taken from the first traffic)"
    _published_with(redis_client, waiting={"pca": why})
    response = client.get("/v1/models/digits/projection", params={} if limit is None else {"limit": limit})
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "10" and why in response.json()["error"]


@pytest.mark.parametrize("limit", [pytest.param(None, id="as-published"), pytest.param(20, id="limited")])
def test_the_last_good_projection_says_that_its_recompute_failed(
    client: TestClient, redis_client: redis.Redis, limit: int | None
) -> None:
    """A failed recompute leaves the last good projection, a true picture of the traffic at its ``computed_at``:
    served, with the failure and its reason (``recompute_error``), not as if current."""
    error = "ValueError: 150 of the 220 points were placed at non-finite coordinates"
    published = _published_with(redis_client, errors={"pca": error})
    response = client.get("/v1/models/digits/projection", params={} if limit is None else {"limit": limit})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["recompute_error"] == error and body["computed_at"] == published["computed_at"]
    assert len(body["points"]) == (limit or 40) and body["reference_count"] == 30
    assert Projection.model_validate_json(response.content).recompute_error == error
    redis_client.set(
        keys.projection_status("digits"), ProjectionStatus(methods=("pca",), updated_at=0).model_dump_json()
    )
    assert "recompute_error" not in client.get("/v1/models/digits/projection", params={"limit": 20}).json()


def test_a_limited_projection_keeps_its_totals_and_says_how_many_it_shows(
    client: TestClient, redis_client: redis.Redis
) -> None:
    _published_with(redis_client)
    body = client.get("/v1/models/digits/projection", params={"limit": 20}).json()
    assert len(body["points"]) == 20 and (body["reference_count"], body["production_count"]) == (30, 10)
    assert (body["shown_reference"], body["shown_production"]) == (15, 5)
    whole = client.get("/v1/models/digits/projection").json()
    assert "shown_reference" not in whole and len(whole["points"]) == 40


def test_unknown_model_is_404_on_every_view(client: TestClient, redis_client: redis.Redis) -> None:
    for path in ("projection", "drift/history", "distributions"):
        response = client.get(f"/v1/models/nobody/{path}")
        assert response.status_code == 404 and response.json()["field"] == "model", path
    assert redis_client.exists(keys.projection_wanted("nobody", "pca")) == 0, "a reader created a key for any name"


def test_drift_history_and_distributions_are_served_by_every_replica(
    make_client: Callable[..., TestClient],
    monitors: MonitorRunner,
    digits_module: torch.jit.ScriptModule,
    digits_split: DatasetSplit,
) -> None:
    monitors.start(**FAST_VIEWS)
    first, second = make_client(monitor_max_per_second=0), make_client(monitor_max_per_second=0)
    reference_x, reference_p = _digits(digits_module, digits_split.test.features[260:])
    _upload(first, reference_x, reference_p)
    wait_until(lambda: first.get("/v1/models/digits/drift").json().get("state") == "monitoring", timeout_s=60)
    clean_x, clean_p = _digits(digits_module, digits_split.test.features[:60])
    _post(first, "clean", clean_x, clean_p)
    # A clear shift: at severity 1.5 too few events rise above threshold for the latest-event verdict.
    shifted, _ = corrupt(digits_split.test.features[60:260], seed=0, kinds=("noise",), severity=3.0)
    drift_x, drift_p = _digits(digits_module, shifted)

    def history(points_wanted: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
        def got() -> list[dict[str, Any]] | None:
            points: list[dict[str, Any]] = second.get("/v1/models/digits/drift/history").json()["points"]
            return points if points_wanted(points) else None

        found: list[dict[str, Any]] = wait_until(got, timeout_s=60, what="the drift history")
        return found

    def online(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [p for p in points if p["detector"] == "mmd_online"]

    history(lambda points: bool(online(points)))
    _post(first, "drift", drift_x, drift_p)
    points = history(lambda points: any(p["drift"] for p in online(points)))
    times = [p["time"] for p in points]
    assert times == sorted(times), "oldest first"
    alarm = online(points)
    assert not alarm[0]["drift"] and alarm[-1]["drift"], "quiet on clean traffic, then the alarm"
    assert all(p["drift"] == (p["score"] > p["threshold"]) for p in alarm)

    def distributions() -> dict[str, Any] | None:
        response = second.get("/v1/models/digits/distributions")
        body: dict[str, Any] = response.json()
        return body if response.status_code == 200 and body["production_count"] == 260 else None

    body = wait_until(distributions, timeout_s=30, what="the distributions of all 260 events")
    assert body["reference_count"] == len(reference_x)
    production_p = np.vstack([clean_p, drift_p])
    for name, production, reference in (
        ("confidence", production_p.max(axis=1), reference_p.max(axis=1)),
        ("margin", _margins(production_p), _margins(reference_p)),
    ):
        edges = np.asarray(body[name]["edges"])
        assert body[name]["production"] == _counts(production, edges), name
        assert body[name]["reference"] == _counts(reference, edges), name
    assert body["confidence"]["edges"][0] == 0.0 and body["confidence"]["edges"][-1] == 1.0


def _margins(probabilities: Array) -> Array:
    """The sidecar's own margin (what it publishes with each event)."""
    return np.array([m for _, _, m in summarise_rows(list(probabilities), from_logits=False)])


def _counts(values: Array, edges: Array) -> list[int]:
    """Histogram written out: bins [e_k, e_k+1), the last closed, values past either end in the end bins."""
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    counts: list[int] = np.bincount(index, minlength=len(edges) - 1).tolist()
    return counts


@pytest.fixture
def sidecar_url(own_redis: EmbeddedRedis, make_settings: Callable[..., Any]) -> Iterator[str]:
    with serve_app(create_app(make_settings(redis_url=own_redis.url, redis_timeout_s=0.2))) as url:
        yield url


def test_views_are_503_with_retry_after_when_redis_is_down(own_redis: EmbeddedRedis, sidecar_url: str) -> None:
    with httpx.Client(base_url=sidecar_url, timeout=10) as client:
        assert client.get("/v1/models/digits/drift/history").status_code == 404
        own_redis.kill()
        for path in ("projection?method=umap", "projection", "drift/history", "distributions"):
            response = client.get(f"/v1/models/digits/{path}")
            assert response.status_code == 503, (path, response.text)
            assert response.headers["retry-after"].isdigit() and response.json()["error"], path
            assert str(own_redis.port) not in response.text, path


@pytest.mark.slow
@pytest.mark.timeout(900)  # the first UMAP fit JIT-compiles numba code: about a minute on a busy 2-core box
def test_umap_projection_on_digits_embeddings(
    make_client: Callable[..., TestClient],
    monitors: MonitorRunner,
    digits_module: torch.jit.ScriptModule,
    digits_split: DatasetSplit,
) -> None:
    """The UMAP path end to end: fitted on the reference in the monitor's worker process, production transformed."""
    monitors.start(projection_methods=("umap",), **FAST_VIEWS)
    client = make_client(monitor_max_per_second=0, sampling=NO_SAMPLING, redis_timeout_s=5.0)
    reference_x, reference_p = _digits(digits_module, digits_split.test.features[150:])
    _upload(client, reference_x, reference_p)
    production_x, production_p = _digits(digits_module, digits_split.test.features[:150])
    _post(client, "u", production_x, production_p)
    body = _projection(client, lambda b: b["production_count"] == 150, method="umap")
    assert body["method"] == "umap" and body["reference_count"] == len(reference_x) and body["seconds"] > 0
    reference = np.array([[p["x"], p["y"]] for p in body["points"] if p["source"] == "reference"])
    production = np.array([[p["x"], p["y"]] for p in body["points"] if p["source"] == "production"])
    assert np.isfinite(reference).all() and np.isfinite(production).all()
    # Production lands among reference points of its own predicted class: 10-NN vote in the 2-D layout.
    reference_class = reference_p.argmax(axis=1)
    distances = ((production[:, None, :] - reference[None, :, :]) ** 2).sum(axis=2)
    nearest = np.argsort(distances, axis=1)[:, :10]
    votes = np.array([np.bincount(reference_class[row], minlength=10).argmax() for row in nearest])
    agreement = float((votes == production_p.argmax(axis=1)).mean())
    assert agreement >= 0.8, agreement


def test_a_projection_that_cannot_come_says_why(
    make_client: Callable[..., TestClient], monitors: MonitorRunner
) -> None:
    """Without a reference the first 400 event embeddings stand in for one: until then the answer says how
    many it has (503, it comes by itself); events without embeddings never make one (409), nor "try again"."""
    monitors.start(projection_methods=("pca",), **FAST_VIEWS)
    client = make_client(monitor_max_per_second=0, sampling=NO_SAMPLING)
    client.post("/v1/events", json={"events": [event(f"a{i}", model="plain") for i in range(20)]})
    client.post("/v1/events", json={"events": [event(f"b{i}", embedding=[float(i)] * 8) for i in range(20)]})

    def answer(model: str, status: int) -> dict[str, Any] | None:
        response = client.get(f"/v1/models/{model}/projection")
        return response.json() if response.status_code == status else None

    blocked = wait_until(lambda: answer("plain", 409), what="the owner to say it has no embeddings")
    assert blocked["field"] == "method" and "none of the 20 events examined carries an embedding" in blocked["error"]
    waiting = wait_until(  # the first asking only tells the owner the projection is wanted
        lambda: (found := answer("digits", 503)) and "20 of the 400 event embeddings" in found["error"] and found,
        what="the owner to say what it waits for",
    )
    assert "try again" not in waiting["error"], waiting
    assert client.get("/v1/models/digits/projection").headers["retry-after"] == "10"
