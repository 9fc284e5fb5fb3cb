"""The model overview at /ui/models/{model}: its HTTP surface, then the page in a real headless Chromium.

The browser tests drive Chromium over the DevTools protocol (:mod:`cdp`). One serves a sidecar with
no monitoring data, where every view must say so and offer a retry; the other starts
``vai-sidecar demo`` as a real process, waits (polling its JSON routes) until every route the page
reads has data, and checks that every chart is drawn with marks, that hover and click on the
projection work, and that no request leaves the origin. Screenshots go to /tmp/vai-overview-*.png.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from cdp import Browser
from common.embedded_redis import free_port
from helpers import serve_app, wait_until
from monitors.fleet.results import DriftStatus
from monitors.fleet.views import Distributions, Histogram, Projection, ProjectionPoint
from service.app import create_app
from service.routes.ui import CONTENT_SECURITY_POLICY
from service.settings import SidecarSettings

REPO = Path(__file__).parents[3]
STATIC = REPO / "service" / "static"
MARKUP_FROM_STRINGS = re.compile(r"\.(?:inner|outer)HTML\b|insertAdjacentHTML|document\.write|\beval\(|new Function")
OVERVIEW_FILES = ("overview.html", "overview.js", "overview.css", "charts.js", "page.js")
VIEWS = ("distributions", "drift", "calibration", "cohorts", "projection", "methods", "layers")
CHART_VIEWS = ("distributions", "drift", "calibration", "cohorts", "projection")
TABLE_VIEWS = ("methods", "layers")
SCREENSHOTS = Path("/tmp")


# --- plain HTTP --------------------------------------------------------------------------------


def test_overview_is_served_with_the_viewers_policy_and_no_inline_code(client: TestClient) -> None:
    page = client.get("/ui/models/digits")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert page.headers["cache-control"] == "no-cache"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    html = page.text
    assert html == (STATIC / "overview.html").read_text()
    scripts = re.findall(r"<script[^>]*>", html)
    assert scripts == [
        '<script src="/ui/static/page.js" defer>',
        '<script src="/ui/static/charts.js" defer>',
        '<script src="/ui/static/overview.js" defer>',
    ]
    assert not re.search(r"\sstyle=|<style|\son[a-z]+=", html), "inline style or handler: the policy would block it"
    assert "model-name" in html and "digits" not in html, "the page holds no data: the script reads the address"


@pytest.mark.parametrize(
    ("name", "media_type"),
    [
        pytest.param("overview.js", "text/javascript", id="script"),
        pytest.param("charts.js", "text/javascript", id="charts"),
        pytest.param("overview.css", "text/css", id="stylesheet"),
    ],
)
def test_overview_assets_are_served_from_the_sidecar(client: TestClient, name: str, media_type: str) -> None:
    response = client.get(f"/ui/static/{name}")
    assert response.status_code == 200 and response.headers["content-type"].startswith(media_type)
    assert response.text == (STATIC / name).read_text()
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in OVERVIEW_FILES])
def test_overview_files_build_no_markup_from_strings(name: str) -> None:
    text = (STATIC / name).read_text()
    assert not MARKUP_FROM_STRINGS.search(text), "only textContent and DOM properties may carry data"
    assert "http:" not in text and "https:" not in text and "@import" not in text
    assert "fetch(" not in text or 'credentials: "omit"' in text


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        pytest.param("bad%20name", "“bad name”", id="bad-model-name"),
        pytest.param("m" * 65, f"“{'m' * 65}”", id="model-name-too-long"),
        pytest.param("%3Cb%3E", "“&lt;b&gt;”", id="markup"),
        pytest.param("%2E%2E.", "“...”", id="dots"),
        pytest.param("x" * 200, f"“{'x' * 80}…”", id="long-name-cut"),
    ],
)
def test_a_name_no_model_can_have_is_a_page_saying_so(client: TestClient, name: str, shown: str) -> None:
    """A person reads this address: a page in the viewer's policy, the name escaped, not the API's JSON with the
    name's regular expression in it."""
    response = client.get(f"/ui/models/{name}")
    assert response.status_code == 422
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    page = response.text
    assert f"{shown} is not a valid model name" in page, page
    assert "<b>" not in page and "A-Za-z" not in page and "{" not in page
    assert not re.search(r"<script|\sstyle=|<style|\son[a-z]+=", page), "inline code: the policy would block it"


def test_a_file_that_is_not_an_asset_is_a_404_naming_it(client: TestClient) -> None:
    response = client.get("/ui/static/overview.html")
    assert response.status_code == 404 and response.json()["field"] == "name"


def test_overview_needs_no_token_but_its_data_does(make_client: Callable[..., TestClient]) -> None:
    client = make_client(read_tokens="reader")
    assert client.get("/ui/models/digits").status_code == 200
    assert client.get("/ui/static/charts.js").status_code == 200
    assert client.get("/v1/models/digits/calibration").status_code == 401


# --- the page in a browser ---------------------------------------------------------------------


def _states(browser: Browser) -> dict[str, str]:
    found: dict[str, str] = browser.evaluate(
        "Object.fromEntries([...document.querySelectorAll('section.view')].map(s => [s.id.slice(2), s.dataset.state]))"
    )
    return found


def _same_origin(requests: list[str], base: str) -> list[str]:
    """The requests that left ``base``'s origin (data: and blob: URLs stay in the page)."""
    origin = urlsplit(base)
    return [
        url
        for url in requests
        if urlsplit(url).scheme not in ("data", "blob")
        and (urlsplit(url).scheme, urlsplit(url).netloc) != (origin.scheme, origin.netloc)
    ]


@pytest.mark.slow
@pytest.mark.usefixtures("chromium")
def test_every_view_says_when_it_has_no_data_and_offers_a_retry(
    make_settings: Callable[..., SidecarSettings], browser: Browser
) -> None:
    message = "document.getElementById('message')?.textContent"
    with serve_app(create_app(make_settings(read_tokens="read-token"))) as base:
        browser.navigate(f"{base}/ui/models/digits")
        browser.wait_for(f"{message}.startsWith('401')", "the 401 message")
        assert "needs a read token" in browser.evaluate(message)
        browser.type_into("#token", "not-a-token")
        browser.click("#token-form button[type=submit]")
        browser.wait_for(f"{message}.includes('does not know this token')", "the viewer's words for an unknown token")
        browser.type_into("#token", "read-token")
        browser.click("#token-form button[type=submit]")
        states = "[...document.querySelectorAll('section.view')].map(s => s.dataset.state)"
        browser.wait_for(f"{states}.every(s => s === 'empty')", "every view to say it has no data")
        # the views settle one by one; the message is hidden once the whole refresh has finished
        browser.wait_for("document.getElementById('message').hidden", "the 401 message to go")
        texts: dict[str, str] = browser.evaluate(
            "Object.fromEntries([...document.querySelectorAll('section.view')]"
            ".map(s => [s.id.slice(2), s.querySelector('.empty')?.textContent]))"
        )
        assert set(texts) == set(VIEWS), texts
        # A view whose route says the model is unknown says so; the others have no data yet (layers: no worker).
        for view, text in texts.items():
            lead = "No data yet: 404: " if view == "layers" else "Unknown model: 404: model: 'digits' is unknown to "
            assert text.startswith(lead), (view, text)
        assert "unknown to this fleet" in texts["methods"] and "workers" not in texts["methods"], texts["methods"]
        assert browser.evaluate("document.getElementById('model-name').textContent") == "digits"
        # No monitor knows the model: one notice instead of seven empty views, and no "updated" time.
        notice = browser.evaluate("document.getElementById('unknown').hidden ? '' : document.body.innerText")
        assert "Unknown model “digits”: 'digits' is unknown to the monitors" in notice, notice
        assert browser.evaluate("document.getElementById('views').hidden")
        refreshed = browser.evaluate("document.getElementById('refreshed').textContent")
        assert refreshed.startswith("⚠ nothing could be loaded at ") and "updated" not in refreshed, refreshed
        browser.click("#v-calibration .retry")
        browser.wait_for("document.querySelector('#v-calibration').dataset.state === 'empty'", "the retry")
        assert _same_origin(browser.requests, base) == []
    assert all("status of 40" in error or "status of 50" in error for error in browser.errors), browser.errors


class _Scripted:
    """The real app, except that some GET paths answer from a script: each path's answers in turn, the last one
    repeated (a 503 carries ``Retry-After`` as the sidecar's do)."""

    def __init__(self, app: ASGIApp, answers: dict[str, list[tuple[int, Any]]]) -> None:
        self.app = app
        self.answers = answers
        self.asked: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path not in self.answers:
            await self.app(scope, receive, send)
            return
        script = self.answers[path]
        status, body = script[min(self.asked[path], len(script) - 1)]
        self.asked[path] += 1
        payload = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        if status == 503:
            headers.append((b"retry-after", b"2"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _projection_body() -> dict[str, Any]:
    """A small published projection: 20 reference and 20 production points, 3 of them explained."""
    points = [ProjectionPoint(x=i / 10, y=(i % 5) / 10, source="reference", predicted=i % 3) for i in range(20)]
    points += [
        ProjectionPoint(
            x=1 + i / 10,
            y=(i % 4) / 10,
            source="production",
            time=time.time() - i,
            predicted=i % 3,
            request_id=f"p{i}" if i % 7 == 0 else None,
        )
        for i in range(20)
    ]
    body = Projection(
        model="digits",
        method="pca",
        computed_at=time.time(),
        seconds=0.01,
        reference_count=20,
        production_count=20,
        points=tuple(points),
    )
    return body.model_dump(mode="json")


def _page_errors(browser: Browser) -> list[str]:
    """Console errors and exceptions of the page, not the browser's log of refused fetches (no data: 404)."""
    return [error for error in browser.errors if "status of 40" not in error and "status of 50" not in error]


@pytest.mark.slow
@pytest.mark.usefixtures("chromium")
def test_projection_recovers_when_its_first_load_failed(
    make_settings: Callable[..., SidecarSettings], browser: Browser
) -> None:
    computing = {"error": "the pca projection of 'digits' is being computed by its monitor; try again in 2 s"}
    app = _Scripted(
        create_app(make_settings()),
        {"/v1/models/digits/projection": [(503, computing), (200, _projection_body())]},
    )
    projection = "document.getElementById('v-projection')"
    with serve_app(app) as base:
        browser.navigate(f"{base}/ui/models/digits")
        browser.wait_for(f"{projection}.dataset.state === 'empty'", "the first answer (503)")
        shown = browser.evaluate(f"{projection}.querySelector('.empty').textContent")
        assert shown.startswith("No data yet: 503: ") and "being computed" in shown, shown
        browser.click("#v-projection .retry")
        browser.wait_for(f"{projection}.dataset.state === 'ready'", "the projection after Retry")
        assert _marks(browser) == 40
        links = browser.evaluate("[...document.querySelectorAll('#v-projection .side a')].map(a => a.textContent)")
        assert links == ["p14", "p7", "p0"]
        x, y = browser.centre_of("#v-projection .mark")
        browser.mouse("mouseMoved", x, y)
        browser.wait_for("!document.getElementById('tooltip').hidden", "the tooltip")
        assert app.asked["/v1/models/digits/projection"] == 2
    assert _page_errors(browser) == []


def _layers_body() -> dict[str, Any]:
    """One worker's layer report as the worker writes it once a figure can be "not applicable" (``null``)."""
    layer = {"kind": "activation", "units": 16, "saturated_ratio": None}
    layers = [
        {**layer, "name": "conv.0", "kind": "conv", "dead_ratio": None, "activation_shift": None},
        {**layer, "name": "relu.1", "dead_ratio": 0.75, "activation_shift": 0.5, "shift_units": 12},
        {**layer, "name": "relu.2", "dead_ratio": 0.0, "activation_shift": None},
    ]
    report = {"worker": "w1", "version": "v1", "samples": 3, "window": 3, "baseline": "first_window"}
    return {"model": "digits", "reports": [{**report, "updated_at": time.time(), "layers": layers}]}


@pytest.mark.slow
@pytest.mark.usefixtures("chromium")
def test_layer_figures_not_measured_read_n_a_and_the_projection_is_asked_for_a_bounded_number_of_points(
    make_settings: Callable[..., SidecarSettings], browser: Browser
) -> None:
    app = _Scripted(
        create_app(make_settings()),
        {
            "/v1/models/digits/layers": [(200, _layers_body())],
            "/v1/models/digits/projection": [(200, _projection_body())],
        },
    )
    with serve_app(app) as base:
        browser.navigate(f"{base}/ui/models/digits")
        browser.wait_for("document.getElementById('v-layers').dataset.state === 'ready'", "the layer table")
        browser.wait_for("document.getElementById('v-projection').dataset.state === 'ready'", "the projection")
        rows = browser.evaluate(
            "[...document.querySelectorAll('#v-layers tbody tr')].map(r =>"
            " [r.className, ...[...r.cells].map(c => c.textContent.trim())])"
        )
        shift_titles = browser.evaluate(
            "[...document.querySelectorAll('#v-layers tbody tr')].map(r => r.cells[6].title)"
        )
        asked = [url for url in browser.requests if urlsplit(url).path == "/v1/models/digits/projection"]
    conv, dead, healthy = rows  # class, layer, kind, units, n, dead, saturated, shift
    assert shift_titles[0] == "" and shift_titles[1].startswith("over 12 of 16 units"), shift_titles
    assert conv[5] == "n/a" and conv[7] == "n/a" and "mostly dead" not in conv[5] and conv[0] != "flagged", conv
    assert dead[0] == "flagged" and "75.0%" in dead[5] and "mostly dead" in dead[5], dead
    assert healthy[0] != "flagged" and healthy[5].startswith("0.0%") and healthy[7] == "n/a", healthy
    assert asked and all(re.search(r"[?&]limit=\d+", url) for url in asked), asked
    assert _page_errors(browser) == []


def _two_versions() -> dict[str, Any]:
    """Reports of two versions: v1 over a full window of 64, v2 on the one input it has seen; v1's ``relu`` left out
    2 inputs whose output overflowed."""
    layer = {"kind": "activation", "units": 16, "saturated_ratio": None, "activation_shift": None}
    report = {"worker": "w1", "baseline": "first_window", "updated_at": time.time()}
    v1 = {**report, "version": "v1", "samples": 200, "window": 64}
    v1["layers"] = [{**layer, "name": "relu", "dead_ratio": 0.25, "inputs": 64, "nonfinite_inputs": 2}]
    v2 = {**report, "version": "v2", "samples": 1, "window": 1}
    v2["layers"] = [{**layer, "name": "relu", "dead_ratio": None, "inputs": 1, "nonfinite_inputs": 0}]
    return {"model": "digits", "reports": [v1, v2]}


@pytest.mark.slow
@pytest.mark.usefixtures("chromium")
def test_each_layer_table_says_its_own_window_and_how_many_inputs_each_layer_rests_on(
    make_settings: Callable[..., SidecarSettings], browser: Browser
) -> None:
    """The caption of every report's table gives that report's window (v2 rests on 1 input, not v1's 64), and each
    layer's ``inputs`` (n) and ``nonfinite_inputs`` are shown."""
    app = _Scripted(create_app(make_settings()), {"/v1/models/digits/layers": [(200, _two_versions())]})
    with serve_app(app) as base:
        browser.navigate(f"{base}/ui/models/digits")
        browser.wait_for("document.getElementById('v-layers').dataset.state === 'ready'", "the layer tables")
        captions = browser.evaluate("[...document.querySelectorAll('#v-layers caption')].map(c => c.textContent)")
        head = browser.evaluate("[...document.querySelectorAll('#v-layers thead th')].map(c => c.textContent)")
        rows = browser.evaluate(
            "[...document.querySelectorAll('#v-layers tbody tr')].map(r => [...r.cells].map(c => c.textContent))"
        )
        evidence = browser.evaluate("document.querySelector('#v-layers .evidence').textContent")
    assert "version v1" in captions[0] and "over the last 64 " in captions[0], captions
    assert "version v2" in captions[1] and "over the last 1 " in captions[1], captions
    assert head[:5] == ["Layer", "Kind", "Units", "n", "Dead units"], head
    (v1,), (v2,) = rows[:1], rows[1:]
    assert v1[3].startswith("64") and "2 non-finite left out" in v1[3], v1
    assert v2[3] == "1", v2
    # What the figures rest on: the n of the tables (1 to 64), not the inputs inspected since start (201).
    assert evidence.startswith("Observed pattern: each figure rests on n = 1–64 recent inputs"), evidence
    assert "201 inputs inspected since start, all workers (1 worker(s), 2 model version(s))" in evidence, evidence
    assert "no activation shift measured yet" in evidence, evidence
    assert _page_errors(browser) == []


def _demo_like_layers() -> dict[str, Any]:
    """As the audit saw the demo: two workers of one version, windows of 64 (one layer at 41 finite inputs), shifts
    against the version's stored first window of 64, and 10283 inputs inspected since start between them."""
    layer = {"kind": "activation", "units": 16, "saturated_ratio": None, "dead_ratio": 0.0, "activation_shift": 0.2}
    report = {"version": "v1", "window": 64, "baseline": "first_window", "baseline_stored": True}
    report |= {"baseline_worker": "w1", "baseline_taken_at": time.time() - 600, "updated_at": time.time()}
    first = {**report, "worker": "w1", "samples": 6000, "layers": [{**layer, "name": "relu", "inputs": 64}]}
    second = {**report, "worker": "w2", "samples": 4283, "layers": [{**layer, "name": "relu", "inputs": 41}]}
    return {"model": "digits", "reports": [first, second]}


@pytest.mark.slow
@pytest.mark.usefixtures("chromium")
def test_the_layer_evidence_states_the_n_of_its_figures_and_labels_the_cumulative_count(
    make_settings: Callable[..., SidecarSettings], browser: Browser
) -> None:
    app = _Scripted(create_app(make_settings()), {"/v1/models/digits/layers": [(200, _demo_like_layers())]})
    with serve_app(app) as base:
        browser.navigate(f"{base}/ui/models/digits")
        browser.wait_for("document.getElementById('v-layers').dataset.state === 'ready'", "the layer tables")
        evidence = browser.evaluate("document.querySelector('#v-layers .evidence').textContent")
        captions = browser.evaluate("[...document.querySelectorAll('#v-layers caption')].map(c => c.textContent)")
    assert "each figure rests on n = 41–64 recent inputs" in evidence, evidence
    assert "the activation shift also on a baseline: the version's first 64 inputs" in evidence, evidence
    assert "10283 inputs inspected since start, all workers" in evidence, evidence
    assert "over 10283" not in evidence and "10283 sampled inputs" not in evidence, evidence
    assert "figures over the last 64 inputs (6000 inspected since the worker started)" in captions[0], captions
    assert _page_errors(browser) == []


def _method(name: str, **fields: Any) -> dict[str, Any]:
    """One method's figures over 200 explanations, as the audit saw Grad-CAM's: 63 explained under a conclusive
    check (55 judged), 31 not trusted before one, the other 106 before any."""
    figures = {"method": name, "explanations": 200, "sanity_checked": 63, "sanity_pass_share": 1.0}
    figures |= {"mean_fidelity_gain": 0.1, "fidelity_count": 60, "mean_agreement": 0.3, "agreement_count": 60}
    figures |= {"trusted_share": 17 / 55, "verdict_count": 55, "failed_before_sanity": 31, "latest_sanity": None}
    return figures | fields


@pytest.mark.slow
@pytest.mark.usefixtures("chromium")
def test_each_method_shows_its_latest_sanity_check_and_accounts_for_every_explanation(
    make_settings: Callable[..., SidecarSettings], browser: Browser
) -> None:
    """An inconclusive latest check says so (never a pass); no check yet says "not yet"; a sidecar that does not
    report ``conclusive`` leaves it unknown; each method's explanations are accounted for, adding up to its count."""
    latest = {"similarity": 0.31, "flagged": False, "samples": 6, "checked_at": time.time() - 30}
    methods = [
        _method("gradcam", latest_sanity={**latest, "conclusive": False}),
        _method("integrated_gradients", latest_sanity={**latest, "samples": 8, "conclusive": True}),
        _method("occlusion", latest_sanity={**latest, "samples": 8, "flagged": True, "conclusive": True}),
        _method("saliency", latest_sanity=latest),  # from a sidecar before ``conclusive``
        _method("smoothgrad"),
    ]
    body = {"model": "digits", "explanations": 200, "methods": methods}
    app = _Scripted(create_app(make_settings()), {"/v1/explanations/digits/methods": [(200, body)]})
    with serve_app(app) as base:
        browser.navigate(f"{base}/ui/models/digits")
        browser.wait_for("document.getElementById('v-methods').dataset.state === 'ready'", "the methods table")
        head = browser.evaluate("[...document.querySelectorAll('#v-methods thead th')].map(c => c.textContent)")
        latest_shown = browser.evaluate(
            "Object.fromEntries([...document.querySelectorAll('#v-methods tr.method')].map(r =>"
            " [r.dataset.method, r.querySelector('td.latest-sanity').textContent]))"
        )
        accounts = browser.evaluate(
            "Object.fromEntries([...document.querySelectorAll('#v-methods tr.accounting')].map(r =>"
            " [r.dataset.method, r.textContent]))"
        )
    assert head[3] == "Latest sanity check", head
    inconclusive = latest_shown["gradcam"]
    assert inconclusive.startswith("inconclusive: only 6 pairs measured similarity 0.31 over 6 pairs"), inconclusive
    assert inconclusive.endswith(" s ago") and "pass" not in inconclusive, inconclusive
    assert latest_shown["integrated_gradients"].startswith("✓ passes similarity 0.31 over 8 pairs"), latest_shown
    assert latest_shown["occlusion"].startswith("⚠ flagged similarity 0.31 over 8 pairs"), latest_shown
    unknown = latest_shown["saliency"]
    assert unknown.startswith("? conclusive not reported similarity") and "pass" not in unknown, unknown
    assert latest_shown["smoothgrad"] == "not yet", latest_shown
    account = accounts["gradcam"]
    assert account.startswith("Of 200 explanations with gradcam: 55 judged under a conclusive sanity check"), account
    assert "; 8 checked but not judged" in account, account
    assert "; 31 not trusted before any conclusive check" in account, account
    assert "; 106 explained before any conclusive sanity check" in account, account
    counts = [int(n) for n in re.findall(r"(?:: |; )(\d+) ", account)]
    assert sum(counts) == 200, (counts, account)
    assert _page_errors(browser) == []


@pytest.mark.slow
@pytest.mark.usefixtures("chromium")
def test_the_projection_says_when_its_points_are_a_subsample_and_when_its_recompute_failed(
    make_settings: Callable[..., SidecarSettings], browser: Browser
) -> None:
    """A cut to the page's limit is said (shown of total); so is a warning of the owner; and a recompute that failed
    after the page drew the projection is said on the next refresh, the points (same ``computed_at``) kept."""
    body = _projection_body()
    cut = {**body, "shown_reference": 12, "shown_production": 8, "reference_count": 300, "production_count": 200}
    cut["warning"] = "All 300 embeddings of the reference are the same point (no variance)"
    failed = {**cut, "recompute_error": "ValueError: 150 of the 220 points were placed at non-finite coordinates"}
    app = _Scripted(create_app(make_settings()), {"/v1/models/digits/projection": [(200, cut), (200, failed)]})
    evidence = "document.querySelector('#v-projection .evidence').textContent"
    with serve_app(app) as base:
        browser.navigate(f"{base}/ui/models/digits")
        browser.wait_for("document.getElementById('v-projection').dataset.state === 'ready'", "the projection")
        first = browser.evaluate(evidence)
        browser.wait_for(f"{evidence}.includes('recompute failed')", "the next refresh (every 10 s)", timeout_s=40)
        second = browser.evaluate(evidence)
        marks = _marks(browser)
    assert "12 of 300 (an even subsample) reference and 8 of 200 (an even subsample) recent production" in first
    assert "⚠ All 300 embeddings of the reference are the same point" in first and "recompute" not in first
    assert second.startswith("⚠ The latest recompute failed (ValueError: 150 of the 220 points"), second
    assert "this is the last successful one" in second and marks == 40
    assert _page_errors(browser) == []


def _histogram(edges: list[float], production: list[int], reference: list[int]) -> Histogram:
    return Histogram(edges=tuple(edges), production=tuple(production), reference=tuple(reference))


def _calibration(fit_gap: float) -> dict[str, Any]:
    series = {"version": "v1", "cohort": "all", "count": 40, "accuracy": 0.8, "accuracy_lower": 0.65}
    series |= {"accuracy_upper": 0.9, "ece": 0.1, "mce": 0.2, "brier_score": None, "brier_count": 0, "bins": []}
    estimate = {"version": "v1", "cohort": "all", "estimated_accuracy": 0.9, "predictions": 400, "threshold": 1.0}
    estimate |= {"fitted_on": 40, "fit_gap": fit_gap, "source": "labelled_window", "fitted_cohort": "all"}
    return {"model": "digits", "series": [series], "estimates": [estimate], "temperature": []}


@pytest.mark.slow
@pytest.mark.usefixtures("chromium")
def test_an_accuracy_estimate_that_misses_its_own_labels_is_flagged(
    make_settings: Callable[..., SidecarSettings], browser: Browser
) -> None:
    texts = []
    for fit_gap in (0.1, 0.0):
        app = _Scripted(create_app(make_settings()), {"/v1/models/digits/calibration": [(200, _calibration(fit_gap))]})
        with serve_app(app) as base:
            browser.navigate(f"{base}/ui/models/digits")
            browser.wait_for("document.getElementById('v-cohorts').dataset.state === 'ready'", "the cohorts view")
            texts.append(browser.evaluate("document.querySelector('#v-cohorts .evidence').textContent"))
    flagged, fitting = texts
    assert "off by 10.0 points" in flagged and "do not rely on it" in flagged, flagged
    assert "off by" not in fitting and "fitted on 40 labelled ones" in fitting, fitting


def test_margin_overflow_bin_is_open_and_drift_copy_follows_the_monitors_state(
    make_settings: Callable[..., SidecarSettings], browser: Browser
) -> None:
    bins = 20
    distributions = Distributions(
        model="digits",
        updated_at=time.time(),
        production_count=200,
        reference_count=100,
        confidence=_histogram([i / bins for i in range(bins + 1)], [10] * bins, [5] * bins),
        margin=_histogram([14 * i / bins for i in range(bins + 1)], [9] * (bins - 1) + [29], [5] * bins),
    )
    status = DriftStatus(model="digits", state="monitoring", examined=341, owner="m1", updated_at=time.time())
    app = _Scripted(
        create_app(make_settings()),
        {
            "/v1/models/digits/distributions": [(200, distributions.model_dump(mode="json"))],
            "/v1/models/digits/drift": [(200, {**status.model_dump(mode="json"), "age_s": 1.0})],
            "/v1/models/digits/drift/history": [(200, {"points": []})],
        },
    )
    with serve_app(app) as base:
        browser.navigate(f"{base}/ui/models/digits")
        browser.wait_for("document.getElementById('v-distributions').dataset.state === 'ready'", "the histograms")
        browser.wait_for("document.getElementById('v-drift').dataset.state === 'empty'", "the drift view")
        drift = browser.evaluate("document.querySelector('#v-drift .empty').textContent")
        assert "monitoring" in drift and "341" in drift and "warming up" not in drift, drift
        titles = browser.evaluate(
            "[...document.querySelectorAll('#v-distributions svg.chart')].map(s =>"
            " [...s.querySelectorAll('.mark title')].map(t => t.textContent))"
        )
        confidence, margin = titles
        assert confidence[-1].startswith("0.95–1: production"), confidence[-1]
        assert margin[-2].startswith("12.6–13.3: production"), margin[-2]
        assert margin[-1].startswith("≥ 13.3"), margin[-1]
        chart_text = browser.evaluate("document.querySelectorAll('#v-distributions svg.chart')[1].textContent")
        assert "≥ 13.3" in chart_text

        # Warming up: the copy says how far the reference has got, as the monitor published it.
        warming = DriftStatus(
            model="digits",
            state="warming_up",
            warmup_collected=1234,
            warmup_needed=5000,
            examined=1234,
            owner="m1",
            updated_at=time.time(),
        )
        app.answers["/v1/models/digits/drift"] = [(200, {**warming.model_dump(mode="json"), "age_s": 1.0})]
        app.asked.clear()
        browser.navigate(f"{base}/ui/models/digits")
        browser.wait_for("document.getElementById('v-drift').dataset.state === 'empty'", "the drift view again")
        drift = browser.evaluate("document.querySelector('#v-drift .empty').textContent")
        assert "warming up" in drift and "1234 of 5000 records collected" in drift, drift
    assert _page_errors(browser) == []


@pytest.mark.slow
@pytest.mark.usefixtures("chromium")
def test_a_failed_refresh_keeps_the_drift_alarms_and_ages_what_it_keeps(
    make_settings: Callable[..., SidecarSettings], browser: Browser
) -> None:
    """Redis down after a first good load: the verdict list keeps its alarm, marked not refreshed, and the kept
    views' "N s ago" go on counting. The methods table gives the n behind the mean agreement."""
    now = time.time()
    detector = {"name": "mmd", "score": 0.9, "threshold": 0.5, "drift": True}
    status = DriftStatus(model="digits", state="monitoring", examined=900, owner="m1", updated_at=now - 3)
    drift = {**status.model_dump(mode="json"), "detectors": [detector], "age_s": 3.0}
    history = {
        "points": [
            {"time": now - 60 + i, "detector": "mmd", "score": 0.3 + 0.2 * i, "threshold": 0.5, "drift": i > 1}
            for i in range(4)
        ]
    }
    bins = [i / 4 for i in range(5)]
    distributions = Distributions(
        model="digits",
        updated_at=now - 3,
        production_count=40,
        reference_count=40,
        confidence=_histogram(bins, [10] * 4, [10] * 4),
        margin=_histogram(bins, [10] * 4, [10] * 4),
    )
    figures = {
        "method": "saliency",
        "explanations": 9,
        "sanity_checked": 9,
        "sanity_pass_share": 1.0,
        "mean_fidelity_gain": 0.1,
        "fidelity_count": 8,
        "mean_agreement": 0.4,
        "agreement_count": 7,
        "trusted_share": 1.0,
        "verdict_count": 9,
    }
    down = (503, {"error": "redis is unavailable"})
    app = _Scripted(
        create_app(make_settings()),
        {
            "/v1/models/digits/drift": [(200, drift), down],
            "/v1/models/digits/drift/history": [(200, history), down],
            "/v1/models/digits/distributions": [(200, distributions.model_dump(mode="json")), down],
            "/v1/explanations/digits/methods": [(200, {"model": "digits", "explanations": 9, "methods": [figures]})],
        },
    )
    verdicts = "document.querySelector('#v-drift .verdicts').textContent"
    shown_age = "document.querySelector('#v-distributions .evidence time.ago')?.textContent"
    with serve_app(app) as base:
        browser.navigate(f"{base}/ui/models/digits")
        for view in ("drift", "distributions", "methods"):
            browser.wait_for(f"document.getElementById('v-{view}').dataset.state === 'ready'", f"the {view} view")
        assert "mmd" in browser.evaluate(verdicts) and "▲ drift" in browser.evaluate(verdicts)
        agreement = browser.evaluate("document.querySelector('#v-methods tbody tr').cells[5].textContent")
        assert agreement == "0.40 (n = 7)", agreement
        browser.click("#token-form button[type=submit]")  # refresh now, with Redis "down"
        browser.wait_for(f"{verdicts}.includes('Not refreshed')", "the verdict marked stale")
        kept = browser.evaluate(verdicts)
        assert "⚠ Not refreshed: 503: redis is unavailable" in kept and "mmd" in kept and "▲ drift" in kept, kept
        assert "No current verdict" not in kept
        assert browser.evaluate("document.getElementById('projection-verdict').textContent").endswith("(not refreshed)")
        browser.wait_for("document.querySelector('#v-distributions .stale') !== null", "the histograms marked stale")
        browser.click("#auto")  # no more refreshes: the ages must count on by themselves
        first = browser.evaluate(shown_age)
        assert first is not None and re.fullmatch(r"\d+ s ago", first), first
        browser.wait_for(f"{shown_age} !== {json.dumps(first)}", "the kept histograms' age to go on", timeout_s=12)
    assert _page_errors(browser) == []


# --- against a running demo --------------------------------------------------------------------


@dataclass
class Demo:
    base: str
    process: subprocess.Popen[bytes]


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    """``vai-sidecar demo`` until Ctrl-C, its drift phase from 20 s on (the default 60 s only waits longer for
    the drift alarm the page shows), auth off, on a free port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAI_")}
    env.update({"PYTHONPATH": str(REPO), "VAI_LOG_LEVEL": "warning"})
    log = (tmp_path / "demo.log").open("wb")
    command = [sys.executable, "-m", "common.cli", "demo", "--port", str(port), "--drift-after", "20"]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield Demo(f"http://127.0.0.1:{port}", process)
    finally:
        if process.poll() is None:
            process.terminate()  # SIGTERM: the demo stops its embedded redis-server itself
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def _json(base: str, path: str, **params: Any) -> Any:
    """The JSON at ``path``, or None while the route answers anything but 200."""
    try:
        response = httpx.get(f"{base}{path}", params=params, timeout=5)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


READY: dict[str, tuple[str, dict[str, Any], Callable[[Any], bool]]] = {
    "distributions": ("/v1/models/digits/distributions", {}, lambda d: d["production_count"] > 0),
    "drift": ("/v1/models/digits/drift", {}, lambda d: len(d["detectors"]) > 0),
    "drift history (with an alarm)": (
        "/v1/models/digits/drift/history",
        {},
        lambda d: any(point["drift"] for point in d["points"]),
    ),
    "calibration (with estimates)": (
        "/v1/models/digits/calibration",
        {},
        lambda d: any(s["count"] > 0 for s in d["series"]) and len(d.get("estimates", [])) > 0,
    ),
    "projection (with explained points)": (
        "/v1/models/digits/projection",
        {"method": "pca"},
        lambda d: (
            {p["source"] for p in d["points"]} == {"reference", "production"}
            and any(p["request_id"] for p in d["points"])
        ),
    ),
    "methods": ("/v1/explanations/digits/methods", {}, lambda d: d["explanations"] > 0),
    "layers": ("/v1/models/digits/layers", {}, lambda d: len(d["reports"]) > 0),
}


def _wait_for_data(demo: Demo, timeout_s: float) -> None:
    """Poll every route the page reads until each has data; fail naming those still without."""
    missing = set(READY)

    def all_ready() -> bool:
        if demo.process.poll() is not None:
            raise AssertionError(f"the demo exited with {demo.process.returncode}")
        for name in sorted(missing):
            path, params, ready = READY[name]
            body = _json(demo.base, path, **params)
            if body is not None and ready(body):
                missing.discard(name)
        return not missing

    try:
        wait_until(all_ready, timeout_s=timeout_s, what="every route of the overview to have data", interval_s=2.0)
    except AssertionError as error:
        raise AssertionError(f"{error}; still without data: {sorted(missing)}") from None


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.usefixtures("chromium")
def test_overview_draws_every_view_from_a_running_demo(demo: Demo, browser: Browser) -> None:
    _wait_for_data(demo, timeout_s=360)
    browser.navigate(f"{demo.base}/ui")  # in through the explanation list's link
    browser.wait_for(
        "document.getElementById('overview-link') && !document.getElementById('overview-link').hidden",
        "the link to the overview",
    )
    browser.click("#overview-link")
    browser.wait_for("location.pathname === '/ui/models/digits' && document.readyState === 'complete'", "the overview")
    states = "[...document.querySelectorAll('section.view')].map(s => s.dataset.state)"
    browser.wait_for(f"{states}.every(s => s === 'ready')", "every view to be drawn", timeout_s=30)
    marks = browser.evaluate(
        "Object.fromEntries([...document.querySelectorAll('section.view')].map(s => [s.id.slice(2),"
        " [...s.querySelectorAll('svg.chart')].map(g => [Number(g.dataset.marks),"
        " g.querySelectorAll('.mark').length])]))"
    )
    for view in CHART_VIEWS:
        assert marks[view], f"{view}: no chart"
        assert all(counted > 0 and drawn >= counted for counted, drawn in marks[view]), (view, marks[view])
    assert len(marks["distributions"]) == 2
    rows = browser.evaluate(
        "Object.fromEntries(['methods', 'layers'].map(v => [v,"
        " [...document.querySelectorAll(`#v-${v} table.data tbody tr`)].length]))"
    )
    assert all(rows[view] > 0 for view in TABLE_VIEWS), rows
    captions = browser.evaluate("[...document.querySelectorAll('section.view .evidence')].map(p => p.textContent)")
    assert len(captions) == len(VIEWS) and all(re.search(r"\d", text) for text in captions), captions
    assert "not measured" in browser.evaluate("document.querySelector('#v-cohorts .evidence').textContent")
    assert browser.evaluate("document.querySelectorAll('#v-drift .alarm').length") > 0
    assert browser.evaluate("document.getElementById('projection-verdict').textContent") not in ("", "—")
    browser.screenshot(SCREENSHOTS / "vai-overview-page.png")

    _hover_and_zoom(browser)
    x, y = browser.centre_of("#v-projection .mark.linked")
    browser.mouse("mouseMoved", x, y)
    browser.wait_for(
        "/explanation: \\S+ \\(click/.test(document.getElementById('tooltip')?.textContent)", "its tooltip"
    )
    shown = browser.evaluate("document.getElementById('tooltip').textContent")
    request_id = re.search(r"explanation: (\S+) \(click", shown)
    assert request_id is not None, shown
    browser.mouse_click(x, y)
    browser.wait_for("location.pathname === '/ui' && location.hash.startsWith('#digits/')", "the explanation viewer")
    opened = browser.evaluate("decodeURIComponent(location.hash.slice('#digits/'.length))")
    assert opened == request_id.group(1)
    browser.wait_for(
        f"document.getElementById('detail-title')?.textContent === {opened!r}"
        " && document.getElementById('detail')?.dataset.state === 'ready'",
        "the explanation's detail",
    )
    browser.screenshot(SCREENSHOTS / "vai-overview-click-through.png")
    assert _same_origin(browser.requests, demo.base) == []
    assert browser.errors == []
    for name in ("page", "projection", "click-through"):
        print(f"screenshot: {SCREENSHOTS / f'vai-overview-{name}.png'}")


def _marks(browser: Browser) -> int:
    return int(browser.evaluate("Number(document.querySelector('#v-projection svg.chart').dataset.marks)"))


def _hover_and_zoom(browser: Browser) -> None:
    """Hover shows the tooltip; the wheel and a dragged box zoom in; a refresh keeps the zoom and the chosen
    calibration series; reset shows every point again."""
    x, y = browser.centre_of("#v-projection .mark")
    browser.mouse("mouseMoved", x, y)
    browser.wait_for("!document.getElementById('tooltip').hidden", "the tooltip")
    tooltip = browser.evaluate("document.getElementById('tooltip').textContent")
    assert "source:" in tooltip and "predicted class:" in tooltip, tooltip
    full = _marks(browser)
    left, top = browser.centre_of("#v-projection svg.chart")
    browser.mouse("mouseWheel", left, top, deltaX=0, deltaY=-400)
    browser.wait_for("!document.getElementById('reset-zoom').disabled", "the wheel's zoom")
    assert _marks(browser) <= full
    browser.click("#reset-zoom")
    browser.mouse("mouseMoved", left - 150, top - 120)
    browser.mouse("mousePressed", left - 150, top - 120, button="left", buttons=1, clickCount=1)
    browser.mouse("mouseMoved", left + 150, top + 120, buttons=1)
    browser.mouse("mouseReleased", left + 150, top + 120, button="left", buttons=0, clickCount=1)
    browser.wait_for("!document.getElementById('reset-zoom').disabled", "the box's zoom")
    assert _marks(browser) < full
    cohort = browser.evaluate(
        "(() => { const s = document.getElementById('series');"
        " const o = [...s.options].find(o => o.text.includes('region=')); s.value = o.value;"
        " s.dispatchEvent(new Event('change')); return o.text; })()"
    )
    refreshes = browser.evaluate("Number(document.getElementById('refreshed').dataset.count)")
    browser.wait_for(
        f"Number(document.getElementById('refreshed')?.dataset.count) > {refreshes}", "the next refresh", timeout_s=30
    )
    assert browser.evaluate("!document.getElementById('reset-zoom').disabled"), "the refresh lost the zoom"
    chosen = browser.evaluate("document.getElementById('series').selectedOptions[0].text")
    assert chosen.split(" (")[0] == cohort.split(" (")[0], (chosen, cohort)
    zoomed = _marks(browser)
    x, y = browser.centre_of("#v-projection .mark")
    browser.mouse("mouseMoved", x, y)
    browser.wait_for("!document.getElementById('tooltip').hidden", "the tooltip when zoomed")
    browser.screenshot(SCREENSHOTS / "vai-overview-projection.png")
    browser.click("#reset-zoom")
    assert _marks(browser) > zoomed
