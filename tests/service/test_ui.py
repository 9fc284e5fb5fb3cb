"""The explanation viewer at /ui: its HTTP surface, then the page itself in a real headless Chromium.

The browser test serves the real app with uvicorn on a loopback port, fills Redis with
explanations made by the real digits model and an in-process worker, and drives
Chromium over the DevTools protocol through ``--remote-debugging-pipe`` (stdlib only:
JSON messages ending in NUL on file descriptors 3 and 4).
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
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

from attribution_workers.main import build_runtimes, make_worker
from attribution_workers.settings import WorkerSettings
from common import keys
from demo.models import digits
from demo.models.training import DatasetSplit
from helpers import serve_app, wait_until
from sampler.explanations import (
    ExplanationDetail,
    ExplanationRecord,
    ExplanationStore,
    ExplanationSummary,
    StoredAttribution,
)
from service.app import create_app
from service.settings import SidecarSettings
from service.ui import CONTENT_SECURITY_POLICY

STATIC = Path(__file__).parents[2] / "service" / "static"
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
    assert '<script src="/ui/static/app.js" defer></script>' in html
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script: the policy would block it"
    assert not re.search(r"\sstyle=|<style|\son[a-z]+=", html), "inline style or handler: the policy would block it"


@pytest.mark.parametrize(
    ("name", "media_type"),
    [
        pytest.param("app.js", "text/javascript", id="script"),
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
def chromium() -> str:
    """Path of the browser; looked up before the (slower) data fixtures so that a skip is quick."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: run scripts/setup.sh --with-test-tools")
    pytest.skip("chromium is not installed (Debian package 'chromium')")


class Browser:
    """One headless Chromium page over the DevTools protocol; console errors are collected."""

    def __init__(self, executable: str, profile: Path) -> None:
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()
        to_browser, from_browser = _above_4(to_browser), _above_4(from_browser)
        self._log = profile.with_name("chromium.log")
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        # The browser reads commands on fd 3 and writes answers on fd 4 (bash: dash takes one-digit fds only).
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                ["bash", "-c", f'exec "$0" "$@" 3<&{to_browser} 4>&{from_browser}', executable, *flags],
                pass_fds=(to_browser, from_browser),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        self.errors: list[str] = []
        self._session = ""
        try:
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                self.call(f"{domain}.enable")
            self.call("Emulation.setDeviceMetricsOverride", width=1440, height=1000, deviceScaleFactor=1, mobile=False)
            self.call("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": "light"}])
        except BaseException:
            self.close()
            raise

    def call(self, method: str, timeout_s: float = 30.0, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self._session:
            message["sessionId"] = self._session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._receive(deadline, method)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply["result"]
                return result
            self._note(reply)

    def _receive(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise AssertionError(f"chromium did not answer {waiting_for} in time")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                log = self._log.read_text(errors="replace")[-3000:]
                raise AssertionError(f"chromium closed the DevTools pipe; its log ends:\n{log}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        parsed: dict[str, Any] = json.loads(message)
        return parsed

    def _note(self, event: dict[str, Any]) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            shown = (str(arg.get("value", arg.get("description"))) for arg in params["args"])
            self.errors.append("console: " + " ".join(shown))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append("exception: " + details.get("exception", {}).get("description", details["text"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            self.errors.append(f"{entry['source']}: {entry['text']} {entry.get('url', '')}".strip())

    def evaluate(self, expression: str, timeout_s: float = 30.0) -> Any:
        reply = self.call(
            "Runtime.evaluate", timeout_s=timeout_s, expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in reply:
            raise AssertionError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def wait_for(self, condition: str, what: str, timeout_s: float = 20.0) -> None:
        """Poll the JS ``condition`` inside the page (every 50 ms) until it holds."""
        waiter = f"""(async () => {{
            const end = performance.now() + {timeout_s * 1000};
            while (performance.now() < end) {{
                if ({condition}) return true;
                await new Promise((resolve) => setTimeout(resolve, 50));
            }}
            return false;
        }})()"""
        if not self.evaluate(waiter, timeout_s=timeout_s + 10):
            shown = self.evaluate("document.body.innerText.slice(0, 2000)")
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; the page shows:\n{shown}")

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", "the page to load")

    def press(self, key: str, code: int) -> None:
        text = "\r" if key == "Enter" else ""
        self.call("Input.dispatchKeyEvent", type="keyDown", key=key, code=key, windowsVirtualKeyCode=code, text=text)
        self.call("Input.dispatchKeyEvent", type="keyUp", key=key, code=key, windowsVirtualKeyCode=code)

    def type_into(self, selector: str, text: str) -> None:
        found = f"document.querySelector({json.dumps(selector)})"
        self.evaluate(f"{found}.value = ''; {found}.focus()")
        self.call("Input.insertText", text=text)

    def click(self, selector: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")

    def screenshot(self, path: Path) -> None:
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        self._session = ""  # Browser.close is a browser-level command
        try:
            self.call("Browser.close", timeout_s=5)
        except (AssertionError, OSError):
            pass  # it may close the pipe before answering, or be gone already
        finally:
            os.close(self._write)
            os.close(self._read)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def _above_4(fd: int) -> int:
    """``fd`` moved to 10 or above, clear of the 3 and 4 that the browser's redirections overwrite."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[Browser]:
    opened = Browser(chromium, tmp_path / "chromium-profile")
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, DatasetSplit]]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: OpenMP threads only slow it down on a small runner
    yield digits.ensure_digits_model(tmp_path_factory.mktemp("models")), digits.load_digits_split()
    torch.set_num_threads(previous)


def _drain(settings: WorkerSettings, done: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """An in-process attribution worker until ``done()`` (as in tests/attribution_workers/test_worker.py)."""

    async def loop() -> None:
        worker = make_worker(settings, build_runtimes(settings), CollectorRegistry())
        try:
            await worker.ensure_groups()
            deadline = time.monotonic() + timeout_s
            while not done():
                assert time.monotonic() < deadline, "the worker did not finish in time"
                await worker.step()
        finally:
            await worker.aclose()

    asyncio.run(loop())


def _image_event(index: int, image: npt.NDArray[np.float32], predicted: int, **fields: Any) -> dict[str, Any]:
    logits = np.full(10, -2.0)
    logits[predicted] = 3.0
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
        sampling={"every_n": 1, "max_per_second": 10_000}, read_tokens="read-token", ingest_tokens="ingest-token"
    )
    worker_settings = make_worker_settings(models={"digits": {"attribution": attribution}})
    now = time.time()
    images, labels = split.test.features, split.test.labels
    # img0's label differs from its prediction, so it also gets a map for the label's class.
    done = [
        _image_event(i, images[i], int(labels[i]), label=int(labels[i] + (i == 0)) % 10, timestamp=now - 60 * i)
        for i in range(6)
    ]
    queued = _image_event(6, images[6], int(labels[6]), timestamp=now - 3600)
    ingest = {"Authorization": "Bearer ingest-token"}
    with serve_app(create_app(settings)) as base:
        assert httpx.post(f"{base}/v1/events", json={"events": done}, headers=ingest).json()["accepted"] == 6
        wait_until(lambda: redis_client.xlen(keys.sample_stream("digits")) == 6, what="6 queued")

        def finished() -> bool:
            statuses = {redis_client.hget(key, "status") for key in redis_client.scan_iter("vai:expl:digits:*")}
            return statuses == {b"done"} and redis_client.hlen(keys.sanity("digits")) == len(METHODS)

        _drain(worker_settings, finished)
        assert httpx.post(f"{base}/v1/events", json=queued, headers=ingest).status_code < 300
        wait_until(lambda: redis_client.hget(keys.explanation("digits", "img6"), "status") == b"queued", what="queued")
        _save_records(redis_url, now, ttl_s=settings.explanation_ttl_s)
        yield base


@pytest.mark.slow
@pytest.mark.usefixtures("chromium")  # first, so that a missing browser skips before the data is made
def test_viewer_shows_stored_explanations_in_chromium(stored_site: str, browser: Browser, tmp_path: Path) -> None:
    browser.navigate(f"{stored_site}/ui?limit=5")
    browser.wait_for("/^401/.test(document.getElementById('message').textContent)", "the 401 message")
    browser.type_into("#token", "ingest-token")
    browser.click("#token-form button[type=submit]")
    browser.wait_for("/^403/.test(document.getElementById('message').textContent)", "the 403 message")
    assert all("status of 40" in error for error in browser.errors), browser.errors  # the refused fetches only
    browser.errors.clear()

    browser.type_into("#token", "read-token")
    browser.click("#remember")
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
    browser.wait_for("document.getElementById('detail').dataset.state === 'ready'", "the first explanation")
    assert browser.evaluate("document.getElementById('detail-title').textContent") == "img0"
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
    assert ("low agreement" in agreement) == (figures["agreement"] < 0.3), agreement
    rows = browser.evaluate(
        "[...document.querySelectorAll('table.sanity tbody tr')].map(r => [...r.cells].map(c => c.textContent))"
    )
    assert [method for method, _, _ in rows] == METHODS
    for method, _, verdict in rows:
        assert ("don't trust it" in verdict) == (figures["sanity_similarity"][method] >= 0.5), (method, verdict)
    assert browser.evaluate("location.hash") == "#digits/img0"

    shot = tmp_path / "ui.png"
    browser.screenshot(shot)
    shutil.copyfile(shot, SCREENSHOT_COPY)
    assert shot.read_bytes().startswith(b"\x89PNG")
    assert browser.errors == []


def _open(browser: Browser, request_id: str) -> None:
    browser.click(f"#list button.item[data-request-id={json.dumps(request_id)}]")
    browser.wait_for(
        f"document.getElementById('detail-title').textContent === {json.dumps(request_id)}"
        " && document.getElementById('detail').dataset.state === 'ready'",
        f"the detail of {request_id}",
    )
