"""The explanation viewer at /ui: its HTTP surface, then the page itself in a real headless Chromium.

The browser test serves the real app with uvicorn on a loopback port, fills Redis with
explanations made by the real digits model and an in-process worker, and drives
Chromium over the DevTools protocol (:mod:`cdp`: stdlib only, through ``--remote-debugging-pipe``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import redis
import torch
from fastapi.testclient import TestClient
from redis.asyncio import Redis as AsyncRedis
from small_models import served_logits

from attribution_workers.settings import WorkerSettings
from cdp import Browser
from common import keys
from demo.models import digits
from demo.models.training import DatasetSplit
from helpers import drain_worker, serve_app, wait_until
from sampler.explanation_records import (
    ExplanationDetail,
    ExplanationRecord,
    ExplanationSummary,
    StoredAttribution,
    WorkerPrediction,
)
from sampler.explanations import ExplanationStore
from service.app import create_app
from service.routes.ui import CONTENT_SECURITY_POLICY
from service.settings import SidecarSettings

STATIC = Path(__file__).parents[3] / "service" / "static"
EXTERNAL_URL = re.compile(r"(?:https?:)?//[\w-]+(?:\.[\w-]+)+", re.IGNORECASE)
MARKUP_FROM_STRINGS = re.compile(r"\.(?:inner|outer)HTML\b|insertAdjacentHTML|document\.write|\beval\(")
METHODS = ["gradcam", "integrated_gradients", "occlusion", "saliency", "gradient_shap"]
SCREENSHOT_COPY = Path("/tmp/vai-ui-screenshot.png")

pytestmark = [
    pytest.mark.filterwarnings(f"ignore:`torch.jit.{name}` is deprecated:DeprecationWarning")
    for name in ("script", "save", "load")
]  # the digits model is TorchScript by design (as in tests/attribution_workers/conftest.py)


# --- plain HTTP --------------------------------------------------------------------------------


def test_page_is_served_with_a_strict_policy_and_no_data(client: TestClient) -> None:
    page = client.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert page.headers["cache-control"] == "no-cache"
    assert page.headers["x-content-type-options"] == "nosniff"
    html = page.text
    # The shared helpers first: deferred scripts run in document order.
    assert '<script src="/ui/static/page.js" defer></script>\n  <script src="/ui/static/app.js" defer></script>' in html
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script: the policy would block it"
    assert not re.search(r"\sstyle=|<style|\son[a-z]+=", html), "inline style or handler: the policy would block it"


@pytest.mark.parametrize(
    ("name", "media_type"),
    [
        pytest.param("app.js", "text/javascript", id="script"),
        pytest.param("page.js", "text/javascript", id="shared-script"),
        pytest.param("app.css", "text/css", id="stylesheet"),
    ],
)
def test_assets_are_served_from_the_sidecar(client: TestClient, name: str, media_type: str) -> None:
    response = client.get(f"/ui/static/{name}")
    assert response.status_code == 200 and response.headers["content-type"].startswith(media_type)
    assert response.text == (STATIC / name).read_text()
    assert response.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize("name", [pytest.param(p.name, id=p.name) for p in sorted(STATIC.iterdir())])
def test_static_files_reference_no_external_url(name: str) -> None:
    text = (STATIC / name).read_text()
    assert EXTERNAL_URL.findall(text) == []
    assert "@import" not in text
    assert not MARKUP_FROM_STRINGS.search(text), "only textContent and DOM properties may carry data"


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/ui/static/index.html", id="page-not-an-asset"),
        pytest.param("/ui/static/..%2Fui.py", id="traversal"),
        pytest.param("/ui/static/missing.js", id="unknown"),
    ],
)
def test_only_the_viewer_files_are_served(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404


def test_page_needs_no_token_but_the_data_does(make_client: Callable[..., TestClient]) -> None:
    client = make_client(read_tokens="reader")
    assert client.get("/ui").status_code == 200
    assert client.get("/ui/static/app.js").status_code == 200
    assert client.get("/v1/explanations").status_code == 401


# --- the page in a browser ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, DatasetSplit]]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: OpenMP threads only slow it down on a small runner
    yield digits.ensure_digits_model(tmp_path_factory.mktemp("models")), digits.load_digits_split()
    torch.set_num_threads(previous)


def _image_event(
    index: int, image: npt.NDArray[np.float32], logits: npt.NDArray[np.float32], **fields: Any
) -> dict[str, Any]:
    data = base64.b64encode(np.ascontiguousarray(image, dtype="<f4").tobytes()).decode()
    return {
        "model": "digits",
        "request_id": f"img{index}",
        "logits": logits.tolist(),
        "input": {"shape": list(image.shape), "dtype": "float32", "data": data},
        "cohort": {"region": "eu" if index % 2 else "us"},
        **fields,
    }


def _save_records(redis_url: str, now: float, *, ttl_s: int) -> None:
    """Records the worker would not make here: a failed one, and one whose two methods disagree."""
    common: dict[str, Any] = {"model": "digits", "model_version": "v1", "reasons": ("low_confidence",)}
    failed = ExplanationRecord(
        summary=ExplanationSummary(
            **common, request_id="broken1", status="failed", predicted=4, confidence=0.31, timestamp=now - 7200
        ),
        detail=ExplanationDetail(error="explain: <b>not html</b> out of memory"),
    )
    rng = np.random.default_rng(0)
    maps = {
        name: StoredAttribution.from_array(rng.normal(size=(1, 8, 8)), target=7) for name in ("saliency", "gradcam")
    }
    disagreeing = ExplanationRecord(
        summary=ExplanationSummary(
            **common,
            request_id="odd1",
            status="done",
            predicted=7,
            confidence=0.42,
            timestamp=now - 5400,
            methods=tuple(maps),
        ),
        detail=ExplanationDetail(attributions=maps, agreement=0.05),
    )

    async def save() -> None:
        client = AsyncRedis.from_url(redis_url)
        try:
            store = ExplanationStore(client, ttl_s=ttl_s)
            for record in (failed, disagreeing):
                await store.save(record)
        finally:
            await client.aclose()

    asyncio.run(save())


@pytest.fixture
def stored_site(
    make_settings: Callable[..., SidecarSettings],
    make_worker_settings: Callable[..., WorkerSettings],
    digits_files: tuple[Path, DatasetSplit],
    redis_url: str,
    redis_client: redis.Redis,
) -> Iterator[str]:
    """The sidecar over 7 explanations, 1 queued and 1 failed; auth on (tokens 'read-token', 'ingest-token')."""
    path, split = digits_files
    attribution = {
        "model": {"torchscript": str(path), "input_shape": list(digits.INPUT_SHAPE), "num_classes": 10},
        "methods": METHODS,
        **{"ig_steps": 8, "shap_samples": 4, "fidelity_steps": 4, "fidelity_random_orders": 1},
        **{"sanity_every_s": 0.001, "sanity_samples": 2},
    }
    settings = make_settings(
        sampling={"every_n": 1, "max_per_second": 10_000},
        read_tokens="read-token",
        ingest_tokens="ingest-token",
        cohort_keys=("region",),  # the cohort keys the explanations list filters by
    )
    worker_settings = make_worker_settings(models={"digits": {"attribution": attribution}})
    now = time.time()
    images, labels = split.test.features, split.test.labels
    logits = served_logits(path, images[:7])  # the model is right on these digits: it predicts their labels
    # img0's label differs from its prediction, so it also gets a map for the label's class.
    done = [
        _image_event(i, images[i], logits[i], label=int(labels[i] + (i == 0)) % 10, timestamp=now - 60 * i)
        for i in range(6)
    ]
    queued = _image_event(6, images[6], logits[6], timestamp=now - 3600)
    ingest = {"Authorization": "Bearer ingest-token"}
    with serve_app(create_app(settings)) as base:
        assert httpx.post(f"{base}/v1/events", json={"events": done}, headers=ingest).json()["accepted"] == 6
        wait_until(lambda: redis_client.xlen(keys.sample_stream("digits")) == 6, what="6 queued")

        def finished() -> bool:
            statuses = {redis_client.hget(key, "status") for key in redis_client.scan_iter("vai:expl:digits:*")}
            return statuses == {b"done"} and redis_client.hlen(keys.sanity("digits")) == len(METHODS)

        drain_worker(worker_settings, finished)
        assert httpx.post(f"{base}/v1/events", json=queued, headers=ingest).status_code < 300
        wait_until(lambda: redis_client.hget(keys.explanation("digits", "img6"), "status") == b"queued", what="queued")
        _save_records(redis_url, now, ttl_s=settings.explanation_ttl_s)
        yield base


@pytest.mark.slow
@pytest.mark.usefixtures("chromium")  # first, so that a missing browser skips before the data is made
def test_viewer_shows_stored_explanations_in_chromium(stored_site: str, browser: Browser, tmp_path: Path) -> None:
    browser.navigate(f"{stored_site}/ui?limit=5")
    browser.wait_for("/^401/.test(document.getElementById('message')?.textContent)", "the 401 message")
    browser.type_into("#token", "ingest-token")
    browser.click("#token-form button[type=submit]")
    browser.wait_for("/^403/.test(document.getElementById('message')?.textContent)", "the 403 message")
    assert all("status of 40" in error for error in browser.errors), browser.errors  # the refused fetches only
    browser.errors.clear()

    browser.type_into("#token", "read-token")
    assert browser.evaluate("document.getElementById('remember').checked")  # kept for the tab unless unticked
    browser.click("#token-form button[type=submit]")
    browser.wait_for("document.querySelectorAll('#list button.item').length === 5", "the first page")
    assert browser.evaluate("document.getElementById('message').hidden")
    assert browser.evaluate("sessionStorage.getItem('vai-ui-token')") == "read-token"
    assert browser.evaluate("document.getElementById('f-model').value") == "digits"
    browser.type_into("#f-cohort", "region:eu")
    browser.click("#filters button[type=submit]")
    browser.wait_for("document.querySelectorAll('#list button.item').length === 3", "the region:eu cohort")
    ids = browser.evaluate("[...document.querySelectorAll('#list button.item')].map(b => b.dataset.requestId)")
    assert ids == ["img1", "img3", "img5"]
    browser.click("#filters button[type=reset]")
    browser.wait_for("document.querySelectorAll('#list button.item').length === 5", "the cleared filters")

    browser.click("#more")
    browser.wait_for("document.querySelectorAll('#list button.item').length === 9", "the second page")
    assert browser.evaluate("document.getElementById('more').hidden")

    _open(browser, "img6")
    assert "Queued" in browser.evaluate("document.querySelector('#detail .banner').textContent")
    _open(browser, "odd1")
    assert "low agreement" in browser.evaluate("document.querySelector('#detail .agreement').textContent")
    _open(browser, "broken1")
    banner = browser.evaluate("document.querySelector('#detail .banner').textContent")
    assert "<b>not html</b>" in banner and browser.evaluate("document.querySelector('#detail b') === null")

    browser.evaluate("document.querySelector('#list button.item').focus()")
    browser.press("ArrowDown", 40)
    assert browser.evaluate("document.activeElement.dataset.requestId") == "img1"
    browser.press("Home", 36)
    browser.press("Enter", 13)
    browser.wait_for("document.getElementById('detail')?.dataset.state === 'ready'", "the first explanation")
    assert browser.evaluate("document.getElementById('detail-title').textContent") == "img0"
    # The server's logits are the model's own: the worker's copy agrees on class and confidence, no banner.
    assert browser.evaluate("document.querySelector('#detail p.mismatch')") is None
    browser.wait_for(
        "![...document.querySelectorAll('img.heatmap')].some(i => i.dataset.state === 'loading')", "maps", timeout_s=45
    )

    maps = browser.evaluate(
        "[...document.querySelectorAll('figure.map')].map(f => [f.dataset.method, f.querySelector('img').naturalWidth])"
    )
    assert [name for name, _ in maps] == [*METHODS, *(f"{method}@label" for method in METHODS)]
    assert all(width > 0 for _, width in maps), maps
    assert browser.evaluate("document.querySelector('canvas.input-canvas').width") == 192
    record = httpx.get(f"{stored_site}/v1/explanations/digits/img0", headers={"Authorization": "Bearer read-token"})
    figures = record.json()
    agreement = browser.evaluate("document.querySelector('#detail .agreement').textContent")
    assert ("low agreement" in agreement) == (figures["agreement"] < 0.2), agreement  # the verdicts' threshold
    rows = browser.evaluate(
        "[...document.querySelectorAll('table.sanity tbody tr')].map(r => [...r.cells].map(c => c.textContent))"
    )
    assert [row[0] for row in rows] == METHODS
    for method, _, verdict, inputs, checked in rows:
        if not figures["sanity_conclusive"][method]:  # 2 inputs a check here: fewer pairs than judge a map
            assert verdict.startswith("inconclusive") and "don't trust it" not in verdict, (method, verdict)
            continue
        assert ("don't trust it" in verdict) == (figures["sanity_similarity"][method] >= 0.5), (method, verdict)
        assert inputs == str(figures["sanity_samples"][method]) and checked.startswith("20"), (inputs, checked)
    # One verdict per method comes first in the trust section, then the figures behind it.
    assert browser.evaluate("document.querySelector('#detail .trust h3').nextElementSibling.matches('table.verdicts')")
    verdicts = browser.evaluate(
        "[...document.querySelectorAll('table.verdicts tbody tr')].map(r => [...r.cells].map(c => c.textContent))"
    )
    assert [method for method, _, _ in verdicts] == METHODS
    for method, shown, why in verdicts:
        verdict = figures["attributions"][method]["verdict"]
        assert shown == {True: "✓ trusted", False: "✗ not trusted", None: "? not judged"}[verdict["trusted"]]
        assert why.startswith(verdict["summary"]) and why.startswith(("Trusted", "Not trusted", "Not judged")), why
        flagged = figures["sanity_flagged"].get(method)  # the latest check; the verdict used the one in force then
        later = flagged is not None and verdict["passes_sanity"] != (not flagged)
        assert ("A later sanity check" in why) == later, why
    deletion = browser.evaluate(
        "Object.fromEntries([...document.querySelectorAll('figure.map')].map(f => [f.dataset.method,"
        " [...f.querySelectorAll('dt')].find(d => d.textContent === 'Deletion AUC')?.nextElementSibling.textContent]))"
    )
    for method in METHODS:  # the worker's judgement with its threshold, not a second rule of the viewer's
        fidelity, verdict = figures["attributions"][method]["fidelity"], figures["attributions"][method]["verdict"]
        if fidelity is None:
            assert "not measured" in deletion[method], (method, deletion[method])
            continue
        said = {True: "faster than chance", False: "no better than random", None: "(not judged)"}
        assert said[verdict["beats_random"]] in deletion[method], (method, deletion[method])
    assert browser.evaluate("location.hash") == "#digits/img0"
    _zoom_a_heatmap(browser)

    shot = tmp_path / "ui.png"
    browser.screenshot(shot)
    shutil.copyfile(shot, SCREENSHOT_COPY)
    assert shot.read_bytes().startswith(b"\x89PNG")

    # One column (800 px): the detail lies below the list; opening an explanation brings it into view.
    browser.call("Emulation.setDeviceMetricsOverride", width=800, height=900, deviceScaleFactor=1, mobile=False)
    browser.evaluate("window.scrollTo(0, 0)")
    _open(browser, "img2")
    browser.wait_for("document.activeElement?.id === 'detail-title'", "the focus on the detail's heading")
    top = browser.evaluate("document.getElementById('detail-title').getBoundingClientRect().top")
    assert 0 <= top < 900, top
    assert browser.errors == []


def _zoom_a_heatmap(browser: Browser) -> None:
    """A heatmap card draws the PNG a third of its size; a click (or Enter) shows it at its own size."""
    card = "document.querySelector('figure.map[data-method=saliency]')"
    drawn = browser.evaluate(f"{card}.querySelector('img').getBoundingClientRect().width")
    natural = browser.evaluate(f"{card}.querySelector('img').naturalWidth")
    assert drawn < natural, (drawn, natural)
    browser.evaluate(f"{card}.querySelector('button.map-zoom').focus()")
    browser.press("Enter", 13)
    browser.wait_for("document.getElementById('zoom').open", "the heatmap at full size")
    shown = browser.evaluate(
        "(() => { const i = document.getElementById('zoom-image'); return [i.alt, i.getBoundingClientRect().width,"
        " i.src, document.getElementById('zoom-open').href]; })()"
    )
    alt = browser.evaluate(f"{card}.querySelector('img').alt")
    assert shown[0] == alt and alt.startswith("saliency heatmap for class "), shown
    assert shown[1] == natural and shown[2] == shown[3] and shown[2].startswith("blob:"), shown
    browser.press("Escape", 27)
    browser.wait_for("!document.getElementById('zoom').open", "the dialog to close")


def _save(redis_url: str, *records: ExplanationRecord) -> None:
    async def save() -> None:
        client = AsyncRedis.from_url(redis_url)
        try:
            store = ExplanationStore(client, ttl_s=3600)
            for record in records:
                await store.save(record)
        finally:
            await client.aclose()

    asyncio.run(save())


def _done(
    request_id: str, agreement: float, *, model: str = "digits", age_s: float = 60, confidence: float = 0.4
) -> ExplanationRecord:
    """A finished record of two methods whose mean agreement is ``agreement`` (no verdicts stored)."""
    rng = np.random.default_rng(1)
    maps = {name: StoredAttribution.from_array(rng.normal(size=(1, 8, 8)), target=3) for name in ("saliency", "lime")}
    summary = ExplanationSummary(
        model=model,
        model_version="v1",
        request_id=request_id,
        status="done",
        reasons=("low_confidence",),
        predicted=3,
        confidence=confidence,
        timestamp=time.time() - age_s,
        methods=tuple(maps),
    )
    return ExplanationRecord(summary=summary, detail=ExplanationDetail(attributions=maps, agreement=agreement))


def _checked(record: ExplanationRecord, prediction: WorkerPrediction) -> ExplanationRecord:
    """``record`` with what the worker's own model made of its input."""
    summary = record.summary.model_copy(update={"worker_prediction": prediction})
    return record.model_copy(update={"summary": summary})


def _confidence_mismatch(
    request_id: str, *, reported: float, predicted: int, probability: float, top: float
) -> ExplanationRecord:
    """A done record of reported class 3 at ``reported`` on which the worker's model gives class 3 ``probability``
    and its top class ``predicted`` ``top``: a confidence mismatch (the class check let it pass)."""
    prediction = WorkerPrediction(
        predicted=predicted,
        probability=probability,
        top_probability=top,
        matches=False,
        reported_probability=reported,
        confidence_check="failed",
        mismatch="confidence",
    )
    return _checked(_done(request_id, 0.5, confidence=reported), prediction)


def _show(browser: Browser, model_and_id: str) -> str:
    """Open ``#model/id`` in the viewer; the detail's text once it has settled."""
    browser.evaluate(f"location.hash = {json.dumps(model_and_id)}")
    wanted = json.dumps(model_and_id.split("/", 1)[1])
    browser.wait_for(
        f"document.getElementById('detail-title')?.textContent === decodeURIComponent({wanted})"
        " && document.getElementById('detail')?.dataset.state === 'ready'",
        f"the detail of {model_and_id}",
    )
    text: str = browser.evaluate("document.getElementById('detail').textContent")
    return text


@pytest.mark.slow
@pytest.mark.usefixtures("chromium")
def test_viewer_uses_the_verdicts_threshold_and_refuses_answers_that_are_not_the_record(
    make_settings: Callable[..., SidecarSettings], redis_url: str, browser: Browser
) -> None:
    queued = ExplanationSummary(
        model="digits",
        model_version="v1",
        request_id="q1",
        status="queued",
        reasons=("every_n",),
        predicted=1,
        confidence=0.9,
        timestamp=time.time() - 30,
    )
    skewed = _checked(
        _done("skewed", 0.5), WorkerPrediction(predicted=4, probability=6.5e-10, top_probability=0.98, matches=False)
    )
    unsure = _confidence_mismatch("unsure", reported=0.55, predicted=3, probability=0.99, top=0.99)  # same class
    tied = _confidence_mismatch("tied", reported=0.40, predicted=5, probability=0.48, top=0.52)  # a near tie (5 over 3)
    records = (_done("between", 0.25), _done("low", 0.1), ExplanationRecord(summary=queued), skewed, unsure, tied)
    _save(redis_url, *records)
    with serve_app(create_app(make_settings())) as base:
        browser.navigate(f"{base}/ui")
        browser.wait_for("document.querySelectorAll('#list button.item').length === 6", "the list")
        # The worker's model disagreeing with the server's prediction is said first, with both figures.
        _show(browser, "digits/skewed")
        banner = browser.evaluate("document.querySelector('#detail .mismatch')?.textContent || ''")
        assert "predicts class 4" in banner and "reported class 3" in banner and "none of them is trusted" in banner
        classes = browser.evaluate("[...document.querySelector('#detail .mismatch').classList]")
        assert classes == ["banner", "banner-failed", "mismatch", "mismatch-class"], classes
        # Same class at another confidence: a banner of its own kind, naming both probabilities.
        _show(browser, "digits/unsure")
        banner = browser.evaluate("document.querySelector('#detail .mismatch')?.textContent || ''")
        assert banner.startswith("⚠ Same class, different confidence: "), banner
        assert "reported class 3 a probability of 0.990 where the server reported 0.550" in banner, banner
        assert "none of them is trusted" in banner, banner
        classes = browser.evaluate("[...document.querySelector('#detail .mismatch').classList]")
        assert classes == ["banner", "banner-failed", "mismatch", "mismatch-confidence"], classes
        # Not "same class" when the worker's top is another class within the tie tolerance.
        _show(browser, "digits/tied")
        banner = browser.evaluate("document.querySelector('#detail .mismatch')?.textContent || ''")
        assert banner.startswith("⚠ Near tie (its top is class 5), different confidence: "), banner
        _show(browser, "digits/between")
        assert browser.evaluate("document.querySelector('#detail .mismatch')") is None
        # One rule on one screen: the verdicts' threshold (0.2), not a second one of the viewer's own.
        _show(browser, "digits/between")
        agreement = browser.evaluate("document.querySelector('#detail .agreement').textContent")
        assert "✓ the methods broadly agree (at least 0.20, the verdicts' threshold)" in agreement, agreement
        _show(browser, "digits/low")
        agreement = browser.evaluate("document.querySelector('#detail .agreement').textContent")
        assert "low agreement (below 0.20, the verdicts' threshold)" in agreement, agreement
        # A queued record has no input yet: it comes with the maps.
        _show(browser, "digits/q1")
        shown = browser.evaluate("document.querySelector('#detail figure.input').textContent")
        assert "Shown once a worker has explained this event" in shown, shown
        # Ids the browser turns into another route's address: an error, not a page of "undefined".
        text = _show(browser, "digits/methods")  # the methods aggregate answers
        banner = browser.evaluate("document.querySelector('#detail .banner-failed')?.textContent || ''")
        assert banner.startswith("Cannot open “methods” here") and "undefined" not in text, text
        text = _show(browser, "digits/%2E%2E")  # the path is normalised to /v1/explanations/
        banner = browser.evaluate("document.querySelector('#detail .banner-failed')?.textContent || ''")
        assert banner and "undefined" not in text, text
    assert [error for error in browser.errors if "status of 4" not in error] == []


def test_the_viewer_learns_which_models_have_explanations(
    make_client: Callable[..., TestClient], redis_url: str
) -> None:
    client = make_client(read_tokens="reader")
    assert client.get("/ui/explained-models").status_code == 401
    reader = {"Authorization": "Bearer reader"}
    assert client.get("/ui/explained-models", headers=reader).json() == {"models": []}
    _save(redis_url, _done("t1", 0.5, model="tabular"), _done("d1", 0.5))
    assert client.get("/ui/explained-models", headers=reader).json() == {"models": ["digits", "tabular"]}
    assert client.get("/v1/explanations", headers=reader).status_code == 422  # why the viewer asks


def _listed(browser: Browser) -> list[str]:
    found: list[str] = browser.evaluate(
        "[...document.querySelectorAll('#list button.item')].map(b => b.dataset.requestId)"
    )
    return found


@pytest.mark.slow
@pytest.mark.usefixtures("chromium")
def test_viewer_lists_one_of_several_models_and_keeps_it_for_the_next_page(
    make_settings: Callable[..., SidecarSettings], redis_url: str, browser: Browser
) -> None:
    """With two models explained the list route needs a model: the viewer fills in the first, offers the other,
    asks "Load more" for the same model, and lists the model of an explanation opened by its address."""
    _save(redis_url, *(_done(f"d{i}", 0.5, age_s=60 + i) for i in range(2)), _done("t0", 0.5, model="tabular"))
    with serve_app(create_app(make_settings())) as base:
        browser.navigate(f"{base}/ui?limit=1")
        browser.wait_for("document.querySelectorAll('#list button.item').length === 1", "the first page")
        assert browser.evaluate("document.getElementById('f-model').value") == "digits"
        note = browser.evaluate("document.getElementById('model-note').textContent")
        assert "2 models have explanations; showing digits" in note and note.endswith("tabular"), note
        browser.click("#more")
        browser.wait_for("document.querySelectorAll('#list button.item').length === 2", "the second page")
        assert _listed(browser) == ["d0", "d1"]
        assert browser.evaluate("document.getElementById('message').hidden")
        pages = [url for url in browser.requests if urlsplit(url).path == "/v1/explanations"]
        assert len(pages) == 2 and all(parse_qs(urlsplit(url).query)["model"] == ["digits"] for url in pages), pages
        browser.click("#model-note button")
        browser.wait_for("document.getElementById('f-model').value === 'tabular'", "the other model")
        browser.wait_for("document.querySelector('#list button.item')?.dataset.requestId === 't0'", "its list")
        # A deep link (from the overview page) lists that explanation's model beside it.
        browser.navigate(f"{base}/ui#digits/d1")
        browser.wait_for("document.getElementById('detail')?.dataset.state === 'ready'", "the detail")
        browser.wait_for("document.querySelectorAll('#list button.item').length === 2", "the list of digits")
        assert browser.evaluate("document.getElementById('f-model').value") == "digits"
        assert browser.evaluate("document.querySelector('#list button.item[aria-current]').dataset.requestId") == "d1"
        note = browser.evaluate("document.getElementById('model-note').textContent")
        assert note == "2 models have explanations; showing digits. Show instead: tabular", note
        assert browser.evaluate("document.getElementById('message').hidden")
    assert [error for error in browser.errors if "status of 4" not in error] == []


@pytest.mark.slow
@pytest.mark.usefixtures("chromium")
def test_the_token_follows_the_links_between_the_two_pages_within_the_tab(
    make_settings: Callable[..., SidecarSettings], redis_url: str, browser: Browser
) -> None:
    """Entered once on the overview, the token serves the viewer reached by its links (kept in this tab's
    sessionStorage, never in an address); unticking "remember for this tab" forgets it on both pages."""
    _save(redis_url, _done("d1", 0.5))
    message = "document.getElementById('message')"
    with serve_app(create_app(make_settings(read_tokens="read-token"))) as base:
        browser.navigate(f"{base}/ui/models/digits")
        browser.wait_for(f"{message}.textContent.startsWith('401')", "the 401 message")
        browser.type_into("#token", "read-token")
        browser.click("#token-form button[type=submit]")
        browser.wait_for(f"{message}.hidden", "the overview to accept the token")
        browser.click("#back")  # ← sampled explanations
        browser.wait_for("location.pathname === '/ui' && location.hash === '#digits'", "the viewer")
        browser.wait_for("document.querySelectorAll('#list button.item').length === 1", "the list, without asking")
        assert browser.evaluate(f"{message}.hidden")
        browser.click("#list button.item")
        browser.wait_for("document.getElementById('detail')?.dataset.state === 'ready'", "the detail")
        assert "Unauthorized" not in browser.evaluate("document.getElementById('detail').textContent")
        browser.click("#overview-link")
        browser.wait_for("location.pathname === '/ui/models/digits' && document.readyState === 'complete'", "back")
        browser.wait_for("document.getElementById('v-methods').dataset.state !== 'loading'", "the overview's views")
        assert browser.evaluate(f"{message}.hidden") and browser.evaluate("document.getElementById('token').value")
        browser.click("#remember")  # untick: forgotten here and on the other page
        assert browser.evaluate("sessionStorage.getItem('vai-ui-token')") is None
        browser.navigate(f"{base}/ui")
        browser.wait_for(f"{message}.textContent.startsWith('401')", "the viewer to ask again")
        assert not browser.evaluate("document.getElementById('remember').checked")
    assert not [url for url in browser.requests if "read-token" in url], "the token must never be in an address"
    assert [error for error in browser.errors if "status of 40" not in error] == []


def _open(browser: Browser, request_id: str) -> None:
    browser.click(f"#list button.item[data-request-id={json.dumps(request_id)}]")
    browser.wait_for(
        f"document.getElementById('detail-title')?.textContent === {json.dumps(request_id)}"
        " && document.getElementById('detail')?.dataset.state === 'ready'",
        f"the detail of {request_id}",
    )


def _timed(request_id: str, seconds: float) -> ExplanationRecord:
    """A done record whose two maps carry their method's time, as the worker stores it: that of the whole batch."""
    record = _done(request_id, 0.5)
    maps = {name: m.model_copy(update={"seconds": seconds}) for name, m in record.detail.attributions.items()}
    return record.model_copy(update={"detail": record.detail.model_copy(update={"attributions": maps})})


@pytest.mark.slow
@pytest.mark.usefixtures("chromium")
def test_a_maps_time_is_labelled_as_its_batchs(
    make_settings: Callable[..., SidecarSettings], redis_url: str, browser: Browser
) -> None:
    """Four events explained in one batch all carry the batch's 0.679 s: the card says it is the batch's time, not
    the map's own."""
    _save(redis_url, _timed("b1", 0.679))
    with serve_app(create_app(make_settings())) as base:
        browser.navigate(f"{base}/ui#digits/b1")
        browser.wait_for("document.getElementById('detail')?.dataset.state === 'ready'", "the detail")
        facts = browser.evaluate(
            "[...document.querySelectorAll('figure.map')].map(f => Object.fromEntries([...f.querySelectorAll('dt')]"
            ".map(d => [d.textContent, d.nextElementSibling.textContent])))"
        )
    assert len(facts) == 2 and "Time" not in facts[0], facts
    for shown in facts:
        assert shown["Time of its batch"] == "0.679 s (whole batch, shared by its events)", shown
    assert [error for error in browser.errors if "status of 4" not in error] == []
