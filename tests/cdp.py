"""A headless Chromium driven over the DevTools protocol, for the browser tests of the viewer pages.

Stdlib only: Chromium runs with ``--remote-debugging-pipe`` and reads JSON messages ending in NUL
on file descriptor 3, writing its answers and events on 4. Console errors, uncaught exceptions
and every network request the page makes are recorded as they arrive.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

NAVIGATED = re.compile(r"navigated or closed|context was destroyed|Cannot find context", re.IGNORECASE)


def find_chromium() -> str:
    """Path of the browser; skips the test where none is installed (fails on CI, which must have it)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: run scripts/setup.sh --with-test-tools")
    pytest.skip("chromium is not installed (Debian package 'chromium')")


class Browser:
    """One headless Chromium page over the DevTools protocol; console errors and requests are collected."""

    def __init__(self, executable: str, profile: Path, *, width: int = 1440, height: int = 1000) -> None:
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
        self.requests: list[str] = []
        """URL of every request the page sent (``Network.requestWillBeSent``), in order."""
        self._session = ""
        try:
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.call(f"{domain}.enable")
            self.call(
                "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
            )
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
        if method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
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
        """Poll the JS ``condition`` inside the page (every 50 ms) until it holds, across a navigation."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = max(0.0, deadline - time.monotonic())
            waiter = f"""(async () => {{
                const end = performance.now() + {left * 1000};
                while (performance.now() < end) {{
                    if ({condition}) return true;
                    await new Promise((resolve) => setTimeout(resolve, 50));
                }}
                return false;
            }})()"""
            try:
                held = self.evaluate(waiter, timeout_s=left + 10)
                break
            except AssertionError as error:  # the page navigated while waiting: ask the new one
                if not NAVIGATED.search(str(error)) or time.monotonic() >= deadline:
                    raise
        if not held:
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

    def centre_of(self, selector: str) -> tuple[float, float]:
        """Viewport coordinates of the middle of the first element matching ``selector``, scrolled into view."""
        found = f"document.querySelector({json.dumps(selector)})"
        box = self.evaluate(
            f"(() => {{ const e = {found}; e.scrollIntoView({{block: 'center'}});"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        return float(box[0]), float(box[1])

    def mouse(self, kind: str, x: float, y: float, **params: Any) -> None:
        """A real mouse event (``mouseMoved``, ``mousePressed``, ``mouseReleased``, ``mouseWheel``) at (x, y)."""
        self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, **params)

    def mouse_click(self, x: float, y: float) -> None:
        self.mouse("mouseMoved", x, y)
        self.mouse("mousePressed", x, y, button="left", buttons=1, clickCount=1)
        self.mouse("mouseReleased", x, y, button="left", buttons=0, clickCount=1)

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
