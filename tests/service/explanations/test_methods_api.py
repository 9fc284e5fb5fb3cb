"""GET /v1/explanations/{model}/methods: per-method trust over a model's latest done explanations, real Redis.

The expected figures are computed here, independently, from the records as they were stored (or, end to end,
from each explanation's detail as the API serves it), never from the summaries the route reads.
"""

from __future__ import annotations

import asyncio
import base64
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import httpx
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from small_models import served_logits

from attribution_workers.loader import ModelSpec, model_digest
from attribution_workers.settings import WorkerSettings
from common import keys
from common.embedded_redis import EmbeddedRedis
from common.redis import connect
from demo.models import digits
from demo.models.training import DatasetSplit
from helpers import drain_worker, event, serve_app, wait_until
from sampler.explanation_records import (
    ExplanationDetail,
    ExplanationRecord,
    ExplanationStatus,
    ExplanationSummary,
    Fidelity,
    SanityFigure,
    StoredAttribution,
)
from sampler.explanations import ExplanationStore
from sampler.verdicts import MethodTrust, Verdict
from service.app import create_app

METHODS = ("gradcam", "saliency", "lime")
T0 = time.time() - 600


def _save(redis_url: str, records: list[ExplanationRecord], sanity: dict[str, SanityFigure] | None = None) -> None:
    async def save() -> None:
        client = connect(redis_url, timeout_s=2.0)
        store = ExplanationStore(client, ttl_s=3600)
        for record in records:
            await store.save(record)
        for method, figure in (sanity or {}).items():
            await store.save_sanity("digits", method, figure)
        await client.aclose()

    asyncio.run(save())


def _maybe(rng: np.random.Generator, value: Any, chance: float = 0.25) -> Any:
    return None if rng.random() < chance else value


def _trust(rng: np.random.Generator) -> MethodTrust:
    verdict = Verdict(
        trusted=_maybe(rng, bool(rng.random() < 0.6)),
        passes_sanity=_maybe(rng, bool(rng.random() < 0.7)),
        beats_random=_maybe(rng, bool(rng.random() < 0.8)),
        agrees=_maybe(rng, bool(rng.random() < 0.5)),
        summary="fixed",
    )
    gain = _maybe(rng, float(rng.normal(0.2, 0.2)))
    return MethodTrust(verdict=verdict, fidelity_gain=gain, agreement=_maybe(rng, float(rng.uniform(-0.2, 0.8))))


def _record(
    index: int, status: ExplanationStatus, rng: np.random.Generator, methods: tuple[str, ...]
) -> ExplanationRecord:
    trust = {method: _trust(rng) for method in methods} if status == "done" else {}
    summary = ExplanationSummary(
        model="digits",
        model_version="v1",
        request_id=f"r{index:03d}",
        status=status,
        reasons=("every_n",),
        predicted=index % 10,
        confidence=0.8,
        timestamp=T0 + index,
        methods=methods if status == "done" else (),
        trust=trust,
    )
    maps = {
        method: StoredAttribution.from_array(
            np.ones((1, 2, 2), dtype=np.float32),
            target=index % 10,
            fidelity=None if t.fidelity_gain is None else Fidelity(deletion_auc=0.3, random_auc=0.3 + t.fidelity_gain),
            agreement=t.agreement,
            verdict=t.verdict,
        )
        for method, t in trust.items()
    }
    maps |= {f"{m}@label": StoredAttribution.from_array(np.ones((1, 2, 2)), target=0) for m in trust}
    return ExplanationRecord(summary=summary, detail=ExplanationDetail(attributions=maps))


def _expected(trusts: list[dict[str, MethodTrust]]) -> dict[str, Any]:
    """The contract's figures, computed plainly from per-explanation trust."""
    methods = []
    for method in sorted({m for trust in trusts for m in trust}):
        found = [trust[method] for trust in trusts if method in trust]
        sanity = [t.verdict.passes_sanity for t in found if t.verdict.passes_sanity is not None]
        gains = [t.fidelity_gain for t in found if t.fidelity_gain is not None]
        agreements = [t.agreement for t in found if t.agreement is not None]
        checked = [t.verdict for t in found if t.verdict.passes_sanity is not None]  # after a sanity check
        trusted = [verdict.trusted for verdict in checked if verdict.trusted is not None]
        methods.append(
            {
                "method": method,
                "explanations": len(found),
                "sanity_checked": len(sanity),
                "sanity_pass_share": sum(sanity) / len(sanity) if sanity else None,
                "mean_fidelity_gain": sum(gains) / len(gains) if gains else None,
                "fidelity_count": len(gains),
                "mean_agreement": sum(agreements) / len(agreements) if agreements else None,
                "trusted_share": sum(trusted) / len(trusted) if trusted else None,
            }
        )
    return {"model": "digits", "explanations": len(trusts), "methods": methods}


def _contract(body: dict[str, Any]) -> dict[str, Any]:
    fields = (
        "method",
        "explanations",
        "sanity_checked",
        "sanity_pass_share",
        "mean_fidelity_gain",
        "fidelity_count",
        "mean_agreement",
        "trusted_share",
    )
    return {
        "model": body["model"],
        "explanations": body["explanations"],
        "methods": [{name: row[name] for name in fields} for row in body["methods"]],
    }


def _assert_same(answer: dict[str, Any], expected: dict[str, Any]) -> None:
    found = _contract(answer)
    assert (found["model"], found["explanations"]) == (expected["model"], expected["explanations"])
    assert [row["method"] for row in found["methods"]] == [row["method"] for row in expected["methods"]]
    for row, wanted in zip(found["methods"], expected["methods"], strict=True):
        assert row == pytest.approx(wanted), (row, wanted)


@pytest.mark.parametrize("limit", [pytest.param(None, id="default-200"), pytest.param(7, id="latest-7")])
def test_the_aggregate_equals_a_direct_computation_over_the_stored_records(
    make_client: Callable[..., TestClient], redis_url: str, limit: int | None
) -> None:
    rng = np.random.default_rng(5)
    statuses = cast(list[ExplanationStatus], ["done"] * 30 + ["failed"] * 3 + ["queued"] * 2)
    order = rng.permutation(len(statuses))
    records = [
        _record(i, statuses[order[i]], rng, METHODS if i % 4 else ("saliency", "lime")) for i in range(len(statuses))
    ]
    old_format = _record(len(statuses), "done", rng, ())  # a record from before verdicts: no trust at all
    _save(redis_url, [*records, old_format])
    client = make_client(read_tokens=("r",))

    params = {} if limit is None else {"limit": limit}
    response = client.get("/v1/explanations/digits/methods", params=params, headers={"authorization": "Bearer r"})

    assert response.status_code == 200, response.text
    done = sorted((r for r in [*records, old_format] if r.summary.status == "done"), key=lambda r: -r.summary.timestamp)
    latest = done[: limit or 200]
    _assert_same(response.json(), _expected([r.summary.trust for r in latest]))
    assert response.json()["explanations"] == (limit or 31)
    assert all(row["method"] in METHODS for row in response.json()["methods"])  # maps towards the label: not methods


@pytest.mark.parametrize(
    "known_by",
    [
        pytest.param("events", id="events-received-here"),
        pytest.param("queued", id="an-event-sampled-not-explained-yet"),
        pytest.param("monitors", id="events-published-by-another-replica"),
    ],
)
def test_a_known_model_without_explanations_has_no_methods(
    client: TestClient, redis_url: str, redis_client: redis.Redis, known_by: str
) -> None:
    if known_by == "events":
        assert client.post("/v1/events", json=event("r1", model="other")).status_code == 202
    elif known_by == "queued":
        record = _record(1, "queued", np.random.default_rng(1), ())
        _save(redis_url, [record.model_copy(update={"summary": record.summary.model_copy(update={"model": "other"})})])
    else:
        redis_client.sadd(keys.MONITORED_MODELS, "other")

    response = client.get("/v1/explanations/other/methods")

    assert response.status_code == 200, response.text
    assert response.json() == {"model": "other", "explanations": 0, "methods": []}


def test_a_model_the_fleet_does_not_know_is_a_404_naming_it(client: TestClient, redis_url: str) -> None:
    """A typo in a name is not "no finished explanations yet": the overview would blame the workers."""
    _save(redis_url, [_record(1, "done", np.random.default_rng(2), ("saliency",))])  # digits is known, not digtis

    response = client.get("/v1/explanations/digtis/methods")

    assert response.status_code == 404
    assert response.json()["field"] == "model"
    assert response.json()["error"].startswith("model: 'digtis' is unknown to this fleet ("), response.text
    assert client.get("/v1/explanations/digits/methods").status_code == 200


@pytest.mark.parametrize("request_id", ["tenant/7/a b", "x?y#z%/", "a/methods"])
def test_a_request_id_holding_a_slash_is_readable_by_id(client: TestClient, redis_url: str, request_id: str) -> None:
    record = _record(1, "done", np.random.default_rng(3), ("saliency",))
    record = record.model_copy(update={"summary": record.summary.model_copy(update={"request_id": request_id})})
    _save(redis_url, [record])
    encoded = quote(request_id, safe="")

    for path in (f"/v1/explanations/digits/{encoded}", f"/v1/explanations/digits/{quote(request_id, safe='/')}"):
        response = client.get(path)
        assert response.status_code == 200, (path, response.text)
        assert response.json()["request_id"] == request_id
    png = client.get(f"/v1/explanations/digits/{encoded}/heatmap.png", params={"method": "saliency"})
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    missing = client.get(f"/v1/explanations/digits/{quote(request_id + '/x', safe='')}")
    assert missing.status_code == 404 and missing.json()["field"] == "request_id"


def test_the_route_needs_the_read_token(make_client: Callable[..., TestClient]) -> None:
    client = make_client(read_tokens=("r",), ingest_tokens=("i",))

    assert client.post("/v1/events", json=event(), headers={"authorization": "Bearer i"}).status_code == 202
    assert client.get("/v1/explanations/digits/methods").status_code == 401
    assert client.get("/v1/explanations/digits/methods", headers={"authorization": "Bearer i"}).status_code == 403
    assert client.get("/v1/explanations/digits/methods", headers={"authorization": "Bearer r"}).status_code == 200


@pytest.mark.parametrize(
    ("query", "field"),
    [
        pytest.param("limit=0", "limit", id="zero"),
        pytest.param("limit=-3", "limit", id="negative"),
        pytest.param("limit=1001", "limit", id="too-many"),
        pytest.param("limit=many", "limit", id="not-a-number"),
        pytest.param("limit=2.5", "limit", id="fraction"),
    ],
)
def test_a_bad_limit_is_a_422_naming_it(client: TestClient, query: str, field: str) -> None:
    response = client.get(f"/v1/explanations/digits/methods?{query}")

    assert response.status_code == 422
    assert response.json()["field"] == field and response.json()["error"].startswith(f"{field}:")


def test_a_bad_model_name_is_a_422_naming_it(client: TestClient) -> None:
    response = client.get("/v1/explanations/bad%20name!/methods")

    assert response.status_code == 422 and response.json()["field"] == "model"


def test_redis_down_is_a_503_with_retry_after(own_redis: EmbeddedRedis, make_settings: Callable[..., Any]) -> None:
    app = create_app(make_settings(redis_url=own_redis.url, redis_timeout_s=0.2))
    with serve_app(app) as url, httpx.Client(base_url=url, timeout=10) as http:
        assert http.post("/v1/events", json=event()).status_code == 202
        assert http.get("/v1/explanations/digits/methods").status_code == 200
        own_redis.kill()
        response = http.get("/v1/explanations/digits/methods")

    assert response.status_code == 503 and response.headers["retry-after"].isdigit()
    assert response.json()["error"] and str(own_redis.port) not in response.text


def _image_event(index: int, image: NDArray[np.float32], logits: NDArray[np.float32], label: int) -> dict[str, Any]:
    data = base64.b64encode(np.ascontiguousarray(image, dtype="<f4").tobytes()).decode()
    return {
        "model": "digits",
        "request_id": f"img{index}",
        "logits": logits.tolist(),
        "label": label,
        "input": {"shape": list(image.shape), "dtype": "float32", "data": data},
    }


def test_the_worker_stores_verdicts_that_the_detail_and_the_aggregate_serve(
    make_client: Callable[..., TestClient],
    make_worker_settings: Callable[..., WorkerSettings],
    digits_path: Path,
    digits_split: DatasetSplit,
    redis_client: redis.Redis,
    redis_url: str,
) -> None:
    section = {
        "model": {"torchscript": str(digits_path), "input_shape": list(digits.INPUT_SHAPE), "num_classes": 10},
        "methods": list(METHODS),
        "fidelity_steps": 4,
        "fidelity_random_orders": 1,
        "inspect_layers": [],
    }
    settings = make_worker_settings(models={"digits": {"attribution": section}}, worker_retry_after_ms=100)
    digest = model_digest(ModelSpec.model_validate(section["model"]))  # figures of this very model judge its maps
    flagged = SanityFigure(similarity=0.93, flagged=True, samples=16, checked_at=time.time(), model_digest=digest)
    passing = SanityFigure(similarity=0.12, flagged=False, samples=16, checked_at=time.time(), model_digest=digest)
    _save(redis_url, [], sanity={"saliency": flagged, "gradcam": passing})
    client = make_client(sampling={"every_n": 1, "max_per_second": 10_000})
    images, labels = digits_split.test.features[:6], digits_split.test.labels[:6]
    logits = served_logits(digits_path, images)  # what a server running the worker's model returns
    events = [_image_event(i, images[i], logits[i], int(labels[(i + 1) % 6])) for i in range(6)]
    assert client.post("/v1/events", json={"events": events}).json()["accepted"] == 6
    wait_until(lambda: redis_client.xlen(keys.sample_stream("digits")) == 6, what="6 queued")

    def finished() -> bool:
        statuses = _statuses(redis_client)
        return len(statuses) == 6 and all(s == b"done" for s in statuses)

    drain_worker(settings, finished, timeout_s=120.0)

    details = [client.get(f"/v1/explanations/digits/img{i}").json() for i in range(6)]
    trusts = []
    for detail in details:  # the logits are the worker's model's own: it agrees on class and confidence
        prediction = detail["worker_prediction"]
        assert prediction["matches"] and prediction["confidence_check"] == "passed", prediction
        for name, attribution in detail["attributions"].items():
            verdict_fields = {
                "trusted",
                "passes_sanity",
                "beats_random",
                "agrees",
                "converges",
                "summary",
                "min_agreement",
            }
            assert set(attribution["verdict"]) == verdict_fields
            assert attribution["verdict"]["min_agreement"] == 0.2  # the threshold the viewer's badge uses
            assert attribution["verdict"]["passes_sanity"] is {"saliency": False, "gradcam": True}.get(
                name.removesuffix("@label")
            )
        assert detail["attributions"]["saliency"]["verdict"]["trusted"] is False
        assert detail["attributions"]["lime"]["verdict"]["summary"].endswith("(no sanity check has run yet).")
        trusts.append(
            {
                method: MethodTrust(
                    verdict=Verdict.model_validate(detail["attributions"][method]["verdict"]),
                    fidelity_gain=_gain(detail["attributions"][method]["fidelity"]),
                    agreement=detail["attributions"][method]["agreement"],
                )
                for method in METHODS
            }
        )
    answer = client.get("/v1/explanations/digits/methods", params={"limit": 50}).json()
    _assert_same(answer, _expected(trusts))
    by_method = {row["method"]: row for row in answer["methods"]}
    assert by_method["saliency"]["sanity_pass_share"] == 0.0 and by_method["saliency"]["trusted_share"] == 0.0
    assert by_method["lime"]["sanity_checked"] == 0 and by_method["lime"]["sanity_pass_share"] is None
    assert by_method["gradcam"]["sanity_checked"] == 6 and by_method["lime"]["fidelity_count"] == 6
    # Judged on their own figures, gradcam's maps (which pass the sanity check) are some trusted, some not
    # (deletion no better than random, low agreement). Made-up logits (3.0 for the class, -2.0 for the rest:
    # confidence 0.943) made the maps of 5 of these 6 digits, which the model gives 0.9997 and more, not
    # trusted for the confidence mismatch whatever their figures.
    assert 0 < by_method["gradcam"]["trusted_share"] < 1, by_method["gradcam"]
    assert all(math.isfinite(row["mean_agreement"]) for row in answer["methods"])


def _gain(fidelity: dict[str, float] | None) -> float | None:
    return None if fidelity is None else fidelity["random_auc"] - fidelity["deletion_auc"]


def _statuses(client: redis.Redis) -> list[Any]:
    return [client.hget(key, "status") for key in client.scan_iter("vai:expl:digits:*")]
