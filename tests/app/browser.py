"""A thin client of chromedriver's W3C WebDriver HTTP API, driving headless Debian Chromium.

No Selenium: chromedriver speaks JSON over HTTP, and httpx is already a dependency. Needs
the Debian packages ``chromium`` (``/usr/bin/chromium``) and ``chromium-driver``
(``/usr/bin/chromedriver``); :func:`require_chromium` skips a test without them, or fails
it when the ``CI`` environment variable is set, so CI never silently skips.

Typical use::

    with chromium(tmp_path) as browser:
        browser.get("http://127.0.0.1:8000/")
        browser.send_keys(browser.find("input[type=file]"), str(path))
        status = browser.find("#status")
        browser.wait_for(lambda: browser.attribute(status, "data-state") == "done")
        png = browser.screenshot()
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from servicekit import free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
APT_PACKAGES = ("chromium", "chromium-driver")
NOT_INSTALLED = "headless Chromium not installed: apt-get install chromium chromium-driver"
#: The key of an element reference in WebDriver JSON (fixed by the W3C spec).
ELEMENT_KEY = "element-6066-11e4-a52e-4f735466cecf"
DRIVER_START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 60.0  # session creation starts Chromium; slow on a busy 2-core machine
WINDOW_SIZE = (1000, 900)


class WebDriverError(RuntimeError):
    """A WebDriver command failed; ``error`` is the W3C error code (e.g. ``no such element``)."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(f"{error}: {message}")
        self.error = error


def in_ci(environ: dict[str, str] | None = None) -> bool:
    """Whether ``CI`` is set to something other than empty, ``0`` or ``false``."""
    value = (os.environ if environ is None else environ).get("CI", "")
    return value.strip().lower() not in ("", "0", "false", "no")


def require_chromium(
    chromium_path: Path = CHROMIUM,
    chromedriver_path: Path = CHROMEDRIVER,
    environ: dict[str, str] | None = None,
) -> None:
    """Skip the calling test when Chromium or chromedriver is missing; fail instead in CI."""
    if chromium_path.exists() and chromedriver_path.exists():
        return
    if in_ci(environ):
        pytest.fail(f"{NOT_INSTALLED} (CI is set, so this test may not be skipped)")
    pytest.skip(NOT_INSTALLED)


@dataclass
class Chromedriver:
    """A chromedriver process listening on ``port``; its output goes to ``log_path``."""

    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        """Base URL of the WebDriver endpoint."""
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        """Everything chromedriver wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_chromedriver(log_path: Path, timeout: float = DRIVER_START_TIMEOUT) -> Chromedriver:
    """Start chromedriver on a free port and wait until ``GET /status`` says it is ready."""
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(CHROMEDRIVER), f"--port={port}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so Chromium can be cleaned up
        )
    driver = Chromedriver(process, port, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"chromedriver exited with {process.returncode}:\n{driver.log()}")
        with contextlib.suppress(httpx.TransportError):
            answer = httpx.get(f"{driver.url}/status", timeout=5).json()
            if answer.get("value", {}).get("ready"):
                return driver
        time.sleep(0.1)
    stop_chromedriver(driver)
    raise AssertionError(f"chromedriver not ready after {timeout} s:\n{driver.log()}")


def stop_chromedriver(driver: Chromedriver) -> None:
    """Stop chromedriver and anything left in its process group (Chromium, if a quit failed)."""
    if driver.process.poll() is None:
        driver.process.terminate()
        try:
            driver.process.wait(10)
        except subprocess.TimeoutExpired:
            driver.process.kill()
            driver.process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(driver.process.pid, signal.SIGKILL)  # our own group: leftover Chromium


def chrome_options(user_data_dir: Path) -> dict[str, Any]:
    """``goog:chromeOptions`` for a headless, quiet, throw-away Chromium."""
    width, height = WINDOW_SIZE
    return {
        "binary": str(CHROMIUM),
        "args": [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={user_data_dir}",
            f"--window-size={width},{height}",
        ],
    }


class Browser:
    """One WebDriver session: navigation, elements, scripts and screenshots."""

    def __init__(self, driver: Chromedriver, session_id: str) -> None:
        self.driver = driver
        self.session_id = session_id
        self._http = httpx.Client(
            base_url=f"{driver.url}/session/{session_id}", timeout=COMMAND_TIMEOUT
        )

    @classmethod
    def open(cls, driver: Chromedriver, user_data_dir: Path) -> Browser:
        """Create a session (this starts Chromium)."""
        capabilities = {
            "browserName": "chrome",
            "goog:chromeOptions": chrome_options(user_data_dir),
            "goog:loggingPrefs": {"browser": "ALL"},
        }
        answer = httpx.post(
            f"{driver.url}/session",
            json={"capabilities": {"alwaysMatch": capabilities}},
            timeout=COMMAND_TIMEOUT,
        )
        value = _value(answer)
        return cls(driver, value["sessionId"])

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        answer = self._http.request(method, path, json=payload if method == "POST" else None)
        return _value(answer)

    # ------------------------------------------------------------ navigation and elements

    def get(self, url: str) -> None:
        """Navigate to ``url`` and wait for the page to load."""
        self._call("POST", "/url", {"url": url})

    def title(self) -> str:
        """The document title."""
        return self._call("GET", "/title")

    def find(self, css: str) -> str:
        """The id of the first element matching the CSS selector (``no such element`` if none)."""
        found = self._call("POST", "/element", {"using": "css selector", "value": css})
        return found[ELEMENT_KEY]

    def send_keys(self, element: str, text: str) -> None:
        """Type ``text`` into the element; for a file input, ``text`` is a local file path."""
        self._call("POST", f"/element/{element}/value", {"text": text})

    def text(self, element: str) -> str:
        """The rendered (visible) text of the element."""
        return self._call("GET", f"/element/{element}/text")

    def attribute(self, element: str, name: str) -> str | None:
        """The element's attribute ``name`` (None when absent)."""
        return self._call("GET", f"/element/{element}/attribute/{name}")

    def property(self, element: str, name: str) -> Any:
        """The element's DOM property ``name``."""
        return self._call("GET", f"/element/{element}/property/{name}")

    def displayed(self, element: str) -> bool:
        """Whether the element is visible."""
        return self._call("GET", f"/element/{element}/displayed")

    def execute(self, script: str, *args: Any) -> Any:
        """Run ``script`` (a function body; ``arguments`` holds ``args``) and return its result."""
        return self._call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def screenshot(self) -> bytes:
        """A PNG of the viewport."""
        return base64.b64decode(self._call("GET", "/screenshot"))

    def console_log(self) -> list[dict[str, Any]]:
        """Browser console entries since the last call (a chromedriver extension)."""
        return self._call("POST", "/se/log", {"type": "browser"})

    def wait_for(
        self, condition: Callable[[], bool], timeout: float = 30.0, interval: float = 0.2
    ) -> None:
        """Poll ``condition`` until it is true; AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if condition():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout} s")
            time.sleep(interval)

    def quit(self) -> None:
        """End the session (this closes Chromium)."""
        with contextlib.suppress(httpx.HTTPError, WebDriverError):
            self._call("DELETE", "")
        self._http.close()


def _value(answer: httpx.Response) -> Any:
    """The ``value`` of a WebDriver answer, raising WebDriverError for an error answer."""
    try:
        body = answer.json()
    except ValueError as exc:
        raise WebDriverError("invalid answer", f"{answer.status_code} {answer.text[:500]}") from exc
    value = body.get("value")
    if answer.status_code >= 400 or (isinstance(value, dict) and "error" in value):
        value = value if isinstance(value, dict) else {}
        raise WebDriverError(value.get("error", str(answer.status_code)), value.get("message", ""))
    return value


@contextlib.contextmanager
def chromium(workdir: Path) -> Iterator[Browser]:
    """A headless Chromium session for the block; profile and driver log live in ``workdir``."""
    require_chromium()
    workdir.mkdir(parents=True, exist_ok=True)
    driver = start_chromedriver(workdir / "chromedriver.log")
    try:
        browser = Browser.open(driver, workdir / "profile")
        try:
            yield browser
        finally:
            browser.quit()
    finally:
        stop_chromedriver(driver)
