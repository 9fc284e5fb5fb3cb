"""The owner's side of the overview views: PCA in the reference's frame, the samples it keeps, reference margins,
and the capped drift-score history (real Redis, real digits embeddings)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson
import pytest
import redis
import torch
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis as AsyncRedis
from sklearn.decomposition import PCA

from common import keys
from demo.models.training import DatasetSplit
from held_out_digits import TORCHSCRIPT_WARNINGS
from helpers import load_torchscript, stream_entries, summarise_rows
from monitors.feed import MonitoringRecord
from monitors.fleet.lease import Leases
from monitors.fleet.metrics import MonitorMetrics
from monitors.fleet.projection import PcaFrame, ProjectionPool, UmapSettings, umap_project
from monitors.fleet.projection_sample import ViewSamples
from monitors.fleet.projection_views import ModelViews
from monitors.fleet.references import ReferenceStore, margins_of, upload_from_arrays
from monitors.fleet.results import DetectorVerdict, DriftStatus
from monitors.fleet.settings import MonitorSettings
from monitors.fleet.views import Projection, ProjectionPoint

pytestmark = TORCHSCRIPT_WARNINGS


@pytest.fixture(scope="module")
def embeddings(
    digits_path: Path, digits_split: DatasetSplit
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Reference and production embeddings of the digits CNN (held-out test images, two disjoint parts)."""
    module = load_torchscript(digits_path)
    with torch.no_grad():
        x = module.embed(torch.from_numpy(digits_split.test.features)).numpy().astype(np.float32)
    return x[150:], x[:150]


def test_pca_coordinates_equal_scikit_learns_up_to_each_axis_sign(
    embeddings: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]],
) -> None:
    reference, production = embeddings
    frame = PcaFrame.fit(reference)
    sklearn = PCA(n_components=2).fit(reference.astype(np.float64))
    for rows in (reference, production):
        ours, theirs = frame.transform(rows), sklearn.transform(rows.astype(np.float64))
        signs = np.sign((ours * theirs).sum(axis=0))
        assert set(signs.tolist()) <= {-1.0, 1.0}
        np.testing.assert_allclose(ours * signs, theirs, atol=1e-9 * float(np.abs(theirs).max()))
    # A frame refitted on the same reference (a new owner) draws every point in the same place.
    np.testing.assert_array_equal(PcaFrame.fit(reference.copy()).transform(production), frame.transform(production))


def test_one_dimensional_embeddings_project_onto_a_line() -> None:
    reference = np.array([[0.0], [1.0], [3.0]], dtype=np.float32)
    placed = PcaFrame.fit(reference).transform(np.array([[2.0]], dtype=np.float32))
    assert placed.shape == (1, 2) and placed[0, 1] == 0.0
    assert abs(placed[0, 0]) == pytest.approx(2.0 - 4.0 / 3.0)


def _point(source: str, n: int) -> ProjectionPoint:
    return ProjectionPoint(x=float(n), y=0.0, source=source)


def test_limit_takes_points_evenly_from_both_sources() -> None:
    points = tuple(_point("reference", n) for n in range(300)) + tuple(_point("production", n) for n in range(100))
    full = Projection(
        model="m", method="pca", computed_at=0.0, seconds=0.0, reference_count=300, production_count=100, points=points
    )
    limited = full.limited(40)
    reference = [p.x for p in limited.points if p.source == "reference"]
    production = [p.x for p in limited.points if p.source == "production"]
    assert (len(reference), len(production)) == (30, 10)
    assert (limited.reference_count, limited.production_count) == (300, 100), "the projection's totals"
    assert (limited.shown_reference, limited.shown_production) == (30, 10), "how many of each the cut shows"
    assert (full.shown_reference, full.shown_production) == (None, None)
    assert reference[0] == 0 and reference[-1] == 299 and production[0] == 0 and production[-1] == 99
    assert np.ptp(np.diff(reference)) <= 1 and np.ptp(np.diff(production)) <= 1, "evenly spaced"
    tiny = full.limited(2)
    assert sorted(p.source for p in tiny.points) == ["production", "reference"], "each source keeps a point"
    assert full.limited(None) is full and full.limited(1000) is full
    older = Projection.model_validate({k: v for k, v in full.model_dump().items() if not k.startswith("shown_")})
    assert older == full, "views without the new fields still read"


def test_reference_margins_are_the_sidecars_margins() -> None:
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(5) * 0.3, size=200)
    probabilities[0] = [1.0, 0.0, 0.0, 0.0, 0.0]  # a runner-up at 0: capped like the sidecar caps it
    probabilities[1] = [0.4, 0.4, 0.2, 0.0, 0.0]  # a tie: margin 0
    sidecar = [m for _, _, m in summarise_rows(list(probabilities), from_logits=False)]
    np.testing.assert_allclose(margins_of(probabilities), sidecar, rtol=1e-12)
    assert margins_of(probabilities)[1] == 0.0


def test_references_stored_before_margins_were_kept_still_read(redis_url: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    p = rng.dirichlet(np.ones(3), size=20)

    async def run() -> None:
        client = AsyncRedis.from_url(redis_url)
        try:
            store = ReferenceStore(client)
            reference, margin = upload_from_arrays(x, p)
            assert margin is not None
            await store.put("with", reference, margin=margin)
            await store.put("without", reference)  # the format before margins: no "margin" field
            assert await client.hexists(keys.drift_reference("without"), "margin") == 0
            stored = await store.get("with")
            assert stored is not None and stored.margin is not None
            np.testing.assert_array_equal(stored.margin, margins_of(p))
            old = await store.get("without")
            assert old is not None and old.margin is None
            assert old.reference.embeddings is not None
            np.testing.assert_array_equal(old.reference.embeddings, x)
        finally:
            await client.aclose()

    asyncio.run(run())


def _record(n: int, *, embedding: bool = True) -> MonitoringRecord:
    return MonitoringRecord(
        model="m",
        request_id=f"r{n}",
        version="v1",
        time_s=float(n),
        predicted=n % 3,
        confidence=0.5,
        margin=0.1 * n,
        num_classes=3,
        embedding=np.full(4, n, dtype=np.float32) if embedding else None,
    )


def test_samples_are_bounded_and_the_first_traffic_becomes_a_frozen_reference() -> None:
    samples = ViewSamples(max_production=5, max_reference=8, distribution_events=7, traffic_rows=6)
    for n in range(4):
        samples.observe(_record(n))
    assert samples.traffic_reference("me") is None, "fewer records than the drift warm-up takes"
    for n in range(4, 12):
        samples.observe(_record(n, embedding=n % 2 == 0))
    reference = samples.traffic_reference("me")
    assert reference is not None and reference.embeddings is not None
    assert samples.traffic_reference("me") is reference, "frozen"
    # The UMAP fits of every model a monitor owns share one cache keyed by reference id: another model's (or
    # a later owner's) traffic reference must never be mistaken for this one.
    other = ViewSamples(max_production=5, max_reference=8, distribution_events=7, traffic_rows=6)
    for n in range(12):
        other.observe(_record(n))
    other_reference = other.traffic_reference("me")
    assert other_reference is not None and other_reference.id != reference.id
    assert reference.embeddings[:, 0].tolist() == [0, 1, 2, 3, 4, 6], "the first six with an embedding"
    assert [s.request_id for s in samples.snapshot()] == ["r3", "r4", "r6", "r8", "r10"]
    confidence, margin = samples.score_arrays()
    assert len(confidence) == 7 and margin.tolist() == pytest.approx([0.1 * n for n in range(5, 12)])
    for n in range(30):
        samples.label(f"r{n}", n % 3)
    assert len(samples.labels) == 20 and "r29" in samples.labels and "r9" not in samples.labels


def _status(scores: list[float], *, at: float) -> DriftStatus:
    return DriftStatus(
        model="m",
        state="monitoring",
        detectors=tuple(
            DetectorVerdict(name=f"d{i}", score=s, threshold=1.0, drift=s > 1.0) for i, s in enumerate(scores)
        ),
        owner="me",
        updated_at=at,
    )


def test_drift_history_is_capped_oldest_first_and_written_only_by_the_owner(
    redis_url: str, redis_client: redis.Redis
) -> None:
    settings = MonitorSettings(redis_url=redis_url, drift_history_s=0.001, drift_history_max=10)

    async def run() -> None:
        client = AsyncRedis.from_url(redis_url)
        leases = Leases(client, owner="me", ttl_ms=60_000)
        views = ModelViews(
            "m",
            redis=client,
            leases=leases,
            references=ReferenceStore(client),
            pool=ProjectionPool(),
            settings=settings,
            metrics=MonitorMetrics(CollectorRegistry()),
        )
        try:
            await views.record_history(_status([0.5], at=1.0))  # not the owner yet: refused
            assert await leases.acquire("m")
            for n in range(30):
                await views.record_history(_status([0.1 * n, 2.0], at=100.0 + n))
                await views.record_history(_status([0.1 * n, 2.0], at=200.0 + n))  # unchanged: not appended
                await asyncio.sleep(0.002)
        finally:
            await client.aclose()

    asyncio.run(run())
    entries = stream_entries(redis_client, keys.drift_history("m"))
    assert len(entries) == 10
    points = [point for _, fields in entries for point in orjson.loads(fields[b"p"])]
    assert [p["time"] for p in points if p["detector"] == "d0"] == [100.0 + n for n in range(20, 30)]
    assert all(p["drift"] == (p["score"] > p["threshold"]) for p in points)


# --- the owner's projection: widths, versions, non-finite coordinates, failover ------------------------


TRAFFIC_30 = {"reference_events": 30, "max_reference": 30, "window_size": 2, "pca_components": 4, "window_tests": False}
"""Drift settings under which the first 30 event embeddings stand in for a reference."""


def _views(
    client: AsyncRedis, owner: str, settings: MonitorSettings, pool: ProjectionPool, model: str = "m"
) -> ModelViews:
    return ModelViews(
        model,
        redis=client,
        leases=Leases(client, owner=owner, ttl_ms=900_000),
        references=ReferenceStore(client),
        pool=pool,
        settings=settings,
        metrics=MonitorMetrics(CollectorRegistry()),
    )


async def _owning(
    client: AsyncRedis,
    owner: str,
    settings: MonitorSettings,
    method: str = "pca",
    pool: ProjectionPool | None = None,
    model: str = "m",
) -> ModelViews:
    """A ``ModelViews`` of ``model`` whose process holds the lease, with ``method`` asked for."""
    views = _views(client, owner, settings, pool or ProjectionPool(), model)
    assert await Leases(client, owner=owner, ttl_ms=900_000).acquire(model)
    await client.set(keys.projection_wanted(model, method), b"1")
    return views


def _with(n: int, embedding: npt.ArrayLike, *, version: str = "v1", model: str = "m") -> MonitoringRecord:
    return MonitoringRecord(
        model=model,
        request_id=f"r{n}",
        version=version,
        time_s=float(n),
        predicted=n % 3,
        confidence=0.5,
        margin=0.1,
        num_classes=3,
        embedding=np.asarray(embedding, dtype=np.float32),
    )


def _published(client: redis.Redis, method: str = "pca", model: str = "m") -> Projection | None:
    body = client.get(keys.projection(model, method))
    return None if body is None else Projection.model_validate_json(body)


def _projection_status(client: redis.Redis, model: str = "m") -> dict[str, dict[str, str]]:
    status: dict[str, dict[str, str]] = orjson.loads(client.get(keys.projection_status(model)) or b"{}")
    return status


@pytest.mark.parametrize(
    ("same", "other", "blocked"),
    [
        pytest.param(0, 50, True, id="all-of-another-width"),
        pytest.param(10, 40, True, id="most-of-another-width"),
        pytest.param(40, 10, False, id="a-few-of-another-width"),
    ],
)
def test_production_of_another_width_is_counted_and_blocks_when_it_is_most_of_it(
    redis_url: str, redis_client: redis.Redis, same: int, other: int, blocked: bool
) -> None:
    """After a model change the reference (64-d) no longer matches production (32-d): that is said, with the
    remedy, not published as "0 production embeddings"."""
    rng = np.random.default_rng(2)
    settings = MonitorSettings(redis_url=redis_url)

    async def run() -> None:
        client = AsyncRedis.from_url(redis_url)
        try:
            reference, _ = upload_from_arrays(rng.normal(size=(40, 64)).astype(np.float32), None)
            await ReferenceStore(client).put("m", reference)
            views = await _owning(client, "me", settings)
            for n in range(same):
                views.observe(_with(n, rng.normal(size=64)))
            for n in range(same, same + other):
                views.observe(_with(n, rng.normal(size=32)))
            await views.publish_projection("pca")
        finally:
            await client.aclose()

    asyncio.run(run())
    status = _projection_status(redis_client)
    published = _published(redis_client)
    if blocked:
        why = status["blocked"]["pca"]
        assert "32" in why and "64" in why and "upload a reference" in why, why
        assert f"{other} of the {same + other}" in why, why
        assert published is None, "nothing published that reads as 'no production traffic'"
    else:
        assert "pca" not in status["blocked"] and published is not None
        assert (published.production_count, published.other_width_count) == (same, other)


def test_the_traffic_reference_takes_the_width_of_the_latest_traffic() -> None:
    """One early event of another width (another replica, an older model) does not block the reference forever;
    and once traffic has changed width for good, the reference taken from traffic follows it."""
    samples = ViewSamples(max_production=50, max_reference=8, distribution_events=7, traffic_rows=6)
    samples.observe(_with(0, np.zeros(32)))
    for n in range(1, 6):
        samples.observe(_with(n, np.full(64, n)))
    assert samples.traffic_reference("me") is None, "5 of the 6 rows of the latest width so far"
    why, curable = samples.no_reference()
    assert curable and "5 of the 6" in why, why
    samples.observe(_with(6, np.full(64, 6)))
    first = samples.traffic_reference("me")
    assert first is not None and first.embeddings is not None
    assert first.embeddings.shape == (6, 64) and first.embeddings[:, 0].tolist() == [1, 2, 3, 4, 5, 6]
    for n in range(7, 12):  # a new model's 16-d embeddings, then one of the old width: the new run starts over
        samples.observe(_with(n, np.full(16, n)))
    samples.observe(_with(12, np.full(64, 12)))
    assert samples.traffic_reference("me") is first
    for n in range(13, 19):
        samples.observe(_with(n, np.full(16, n)))
    latest = samples.traffic_reference("me")
    assert latest is not None and latest.embeddings is not None and latest.id != first.id
    assert latest.embeddings.shape == (6, 16) and latest.embeddings[:, 0].tolist() == list(range(13, 19))


def test_points_carry_their_version_and_traffic_reference_rows_are_not_drawn_again_as_production(
    redis_url: str, redis_client: redis.Redis
) -> None:
    rng = np.random.default_rng(3)
    settings = MonitorSettings(redis_url=redis_url, drift=TRAFFIC_30)

    async def run() -> None:
        client = AsyncRedis.from_url(redis_url)
        try:
            views = await _owning(client, "me", settings)
            for n in range(50):
                views.observe(_with(n, rng.normal(size=8), version="v1" if n < 40 else "v2"))
            await views.publish_projection("pca")
        finally:
            await client.aclose()

    asyncio.run(run())
    published = _published(redis_client)
    assert published is not None and published.reference_count == 30
    production = [p for p in published.points if p.source == "production"]
    assert published.production_count == len(production) == 20, "the 20 records after the 30 taken as reference"
    assert [p.time for p in production] == [float(n) for n in range(30, 50)]
    assert [p.version for p in production] == ["v1"] * 10 + ["v2"] * 10
    assert all(p.version is None for p in published.points if p.source == "reference")


def test_a_new_owner_adopts_the_traffic_reference_instead_of_re_basing_on_current_traffic(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Without an uploaded reference the first owner's first traffic is the reference; after a failover the new
    owner keeps comparing against it (as the drift detectors adopt their stored state), not against drifted
    traffic it happened to see first."""
    rng = np.random.default_rng(4)
    settings = MonitorSettings(redis_url=redis_url, drift=TRAFFIC_30)
    clean = rng.normal(size=(30, 8)).astype(np.float32)
    drifted = (rng.normal(size=(60, 8)) + 3.0).astype(np.float32)

    async def run() -> tuple[str, str]:
        client = AsyncRedis.from_url(redis_url)
        try:
            first = await _owning(client, "first", settings)
            for n, row in enumerate(clean):
                first.observe(_with(n, row))
            await first.publish_projection("pca")
            before = _published(redis_client)
            assert before is not None
            await Leases(client, owner="first", ttl_ms=60_000).release("m")
            second = await _owning(client, "second", settings)
            for n, row in enumerate(drifted):
                second.observe(_with(100 + n, row))
            await second.publish_projection("pca")
            adopted = await second.reference()
            assert adopted is not None and adopted.embeddings is not None
            np.testing.assert_array_equal(adopted.embeddings, clean)
            return before.reference_id, adopted.id
        finally:
            await client.aclose()

    first_id, second_id = asyncio.run(run())
    assert second_id == first_id
    published = _published(redis_client)
    assert published is not None and published.owner == "second" and published.reference_id == first_id
    production = np.array([[p.x, p.y] for p in published.points if p.source == "production"])
    assert len(production) == 60 and float(np.abs(production.mean(axis=0)).max()) > 1.0, "drift stays visible"


def test_max_production_is_bounded_like_max_reference(redis_url: str) -> None:
    assert MonitorSettings(redis_url=redis_url, projection_max_production=5_000).projection_max_production == 5_000
    with pytest.raises(ValueError, match="projection_max_production"):
        MonitorSettings(redis_url=redis_url, projection_max_production=5_001)


@pytest.mark.slow
@pytest.mark.timeout(900)  # the first UMAP fit JIT-compiles numba code
def test_umap_places_embeddings_of_huge_magnitude_and_leaves_out_those_beyond_reach(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Finite float32 embeddings of large magnitude (ingest accepts them): at ~1e30 umap-learn's own fit failed with
    numpy's "zero-size array to reduction operation maximum", at ~1e19 it placed some points at NaN. Scaled first,
    both are placed whole. A production row some 1e20 reference spreads away cannot be placed: it is left out and
    counted, never published as a ``null`` coordinate nobody can read back."""
    rng = np.random.default_rng(0)
    settings = MonitorSettings(redis_url=redis_url, projection_methods=("umap",))
    huge = (rng.random(size=(220, 16)) * 1e30).astype(np.float32)
    unit = rng.normal(size=(220, 16)).astype(np.float32)
    unit[200:203] = 1e20  # 3 production rows beyond reach

    async def run() -> None:
        client = AsyncRedis.from_url(redis_url)
        pool = ProjectionPool()
        try:
            for model, rows in (("m", huge), ("n", unit)):
                views = await _owning(client, "me", settings, method="umap", pool=pool, model=model)
                await ReferenceStore(client).put(model, upload_from_arrays(rows[:200], None)[0])
                for n, row in enumerate(rows[200:]):
                    views.observe(_with(n, row, model=model))
                await views.publish_projection("umap")
        finally:
            pool.close()
            await client.aclose()

    asyncio.run(run())
    for model, left_out in (("m", 0), ("n", 3)):
        published = _published(redis_client, "umap", model=model)
        assert published is not None, _projection_status(redis_client, model)
        coordinates = np.array([[p.x, p.y] for p in published.points])
        assert np.isfinite(coordinates).all()
        assert (published.reference_count, published.production_count) == (200, 20 - left_out)
        assert published.non_finite_count == left_out


@pytest.mark.parametrize(
    ("method", "from_traffic"),
    [
        pytest.param("umap", False, id="umap-uploaded"),
        pytest.param("umap", True, id="umap-first-traffic"),
        pytest.param("pca", True, id="pca-first-traffic"),
    ],
)
def test_a_reference_of_one_repeated_embedding_is_said_not_retried_for_ever(
    redis_url: str, redis_client: redis.Redis, method: str, from_traffic: bool
) -> None:
    """Every reference row the same point: UMAP cannot be fitted (it needs 4 distinct rows) and no traffic changes
    that, so it is blocked (409) with the remedy, not an error "retried when traffic changes"; PCA is drawn, every
    reference point at (0, 0), with a warning saying why the picture means nothing."""
    settings = MonitorSettings(redis_url=redis_url, drift=TRAFFIC_30, projection_methods=(method,))
    flat = np.ones(8, dtype=np.float32)

    async def run() -> None:
        client = AsyncRedis.from_url(redis_url)
        pool = ProjectionPool()
        try:
            views = await _owning(client, "me", settings, method=method, pool=pool)
            if not from_traffic:
                await ReferenceStore(client).put("m", upload_from_arrays(np.tile(flat, (30, 1)), None)[0])
            for n in range(40):
                views.observe(_with(n, flat if n < 30 else flat + n))
            await views.publish_projection(method)
        finally:
            pool.close()
            await client.aclose()

    asyncio.run(run())
    status = _projection_status(redis_client)
    published = _published(redis_client, method)
    if method == "umap":
        why = status["blocked"]["umap"]
        assert "UMAP needs at least 4 distinct reference embeddings, the reference has 1" in why, why
        assert ("taken from the first 30 event embeddings" if from_traffic else "(uploaded)") in why, why
        assert "PUT /v1/models/m/reference" in why and not status["errors"], status
        assert published is None
        return
    assert published is not None and not status["blocked"] and not status["errors"], status
    reference = [(p.x, p.y) for p in published.points if p.source == "reference"]
    assert reference == [(0.0, 0.0)] * 30
    assert published.warning is not None and "same point (no variance)" in published.warning
    assert "PUT /v1/models/m/reference" in published.warning


@pytest.mark.slow
@pytest.mark.timeout(900)  # the first UMAP fit JIT-compiles numba code
@pytest.mark.filterwarnings("ignore:Tensorflow not installed:ImportWarning")  # umap's optional ParametricUMAP
def test_umap_puts_every_copy_of_a_row_on_one_point() -> None:
    """Identical embeddings (a repeated request, a blank input) are one point, as PCA places them: UMAP fitted on
    the copies scattered them into apparent structure."""
    rng = np.random.default_rng(3)
    distinct = rng.normal(size=(80, 8)).astype(np.float32)
    reference = np.concatenate([distinct[:60], np.repeat(distinct[60:61], 40, axis=0)])[rng.permutation(100)]
    production = np.concatenate([distinct[61:71], np.repeat(distinct[71:72], 15, axis=0)])

    result = umap_project("copies", reference, production, UmapSettings())

    copies = (reference == distinct[60]).all(axis=1)
    assert copies.sum() == 40 and np.unique(result.reference[copies], axis=0).shape == (1, 2)
    assert np.unique(result.reference[~copies], axis=0).shape[0] == 60
    assert np.unique(result.production[10:], axis=0).shape == (1, 2)
    assert np.isfinite(result.production).all() and result.production.shape == (25, 2)
    again = umap_project("copies", reference, production[:12], UmapSettings())  # the fitted model, reused
    assert again.cached and np.array_equal(again.reference, result.reference)
    assert np.array_equal(again.production[10], again.production[11])


@pytest.mark.parametrize("total", [pytest.param(30, id="all-of-it"), pytest.param(50, id="sampled")])
def test_a_sampled_reference_says_how_many_rows_it_was_drawn_from(total: int) -> None:
    """The projection's ``reference_count`` is the sample's; a page read "2000 reference embeddings" of 3,000."""
    from monitors.drift.reference import Reference
    from monitors.fleet.projection_sample import ReferenceSample
    from monitors.fleet.references import StoredReference

    embeddings = np.random.default_rng(0).normal(size=(total, 4)).astype(np.float32)
    reference = Reference(np.zeros(total, dtype=np.int64), np.full(total, 0.9), embeddings)
    sample = ReferenceSample.of(StoredReference("r", reference), max_rows=40, seed=1)
    assert sample.embeddings is not None and len(sample.embeddings) == min(total, 40)
    assert sample.total_rows == (total if total > 40 else None)


_CLOSE_AFTER_A_FIT = """
import asyncio
import numpy as np
from monitors.fleet.projection import ProjectionPool

rows = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
pool = ProjectionPool()
asyncio.run(pool.umap("ref", rows, rows[:5]))
pool.close()
print("closed")
"""


@pytest.mark.slow
def test_closing_an_idle_umap_worker_leaks_nothing() -> None:
    """The worker was killed even when idle, and the monitor's exit printed the resource tracker's "leaked
    semaphore" warning after every demo that had drawn a UMAP projection."""
    from helpers import REPO

    done = subprocess.run(
        [sys.executable, "-c", _CLOSE_AFTER_A_FIT],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert done.stdout.strip() == "closed"
    assert "leaked" not in done.stderr, done.stderr
