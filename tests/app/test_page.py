"""The try-it page at ``GET /``: its HTML in-process, then a real headless Chromium using it.

The browser test runs the service (``python -m app``) on the tiny model and drives Chromium
through Selenium 4 and Debian's chromedriver (``tests/app/browser.py``): upload a reddish
JPEG through the file input, a bluish one by a synthetic drop, and a text file named
``.jpg``, reading what the page shows each time. Without Chromium it skips, except under
``CI`` where it fails.

Set ``PAGE_SCREENSHOT=/some/file.png`` to keep a screenshot of the page showing a result.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait
from starlette.routing import Match

from app.api import routes as page
from app.main import create_app
from servicekit import Server, uvicorn_server
from tests import images
from tests.app import browser as wd
from tests.app.helpers import client_for, upload

PERCENT = re.compile(r"\d{1,3}(\.\d)?%")
URL_ATTRIBUTES = {"src", "href", "action", "formaction", "srcset", "poster", "data", "background"}
SAFE_SCHEMES = ("data:", "blob:")

# ---------------------------------------------------------------- the app with the page


def serves_page(app: FastAPI) -> bool:
    """Whether some route of ``app`` answers ``GET /`` (asked through Starlette's matching,
    so routers that FastAPI wraps on inclusion count too)."""
    scope = {"type": "http", "method": "GET", "path": "/", "root_path": "", "headers": []}
    return any(route.matches(scope)[0] == Match.FULL for route in app.routes)


@pytest_asyncio.fixture(scope="module")
async def page_client() -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of the service's app (no lifespan: no model needed for GET /)."""
    async with client_for(create_app()) as client:
        yield client


# ---------------------------------------------------------------- the HTML in-process


class References(HTMLParser):
    """Collects the tags and every URL-valued attribute of a document."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.urls: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.inline_css: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"
        for name, value in attrs:
            if name in URL_ATTRIBUTES and value is not None:
                self.urls.append((tag, name, value.strip()))
            if name == "style" and value:
                self.inline_css.append(value)

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.inline_css.append(data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        """The attributes of every ``tag`` whose attributes include ``attrs``."""
        return [
            found
            for name, found in self.tags
            if name == tag and all(found.get(k) == v for k, v in attrs.items())
        ]


def is_local(url: str) -> bool:
    """Whether ``url`` points at this server (relative, no host) or embeds its data."""
    if url.lower().startswith(SAFE_SCHEMES) or url.startswith("#"):
        return True
    parts = urlsplit(url)
    return not parts.scheme and not parts.netloc and not url.startswith("//")


def parse(html: str) -> References:
    """The page's tags and references."""
    parser = References()
    parser.feed(html)
    parser.close()
    return parser


async def test_page_is_served_as_html(page_client: httpx.AsyncClient) -> None:
    response = await page_client.get("/")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "charset=utf-8" in response.headers["content-type"]
    assert response.text == page.INDEX_PATH.read_text(encoding="utf-8")
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy


async def test_page_has_an_accessible_file_input_and_posts_to_predict(
    page_client: httpx.AsyncClient,
) -> None:
    html = (await page_client.get("/")).text
    doc = parse(html)
    [html_tag] = doc.find("html")
    assert html_tag.get("lang")
    [file_input] = doc.find("input", type="file")
    assert file_input.get("id") and file_input.get("name") == "file"
    assert "image/jpeg" in (file_input.get("accept") or "")
    assert doc.find("label", **{"for": file_input["id"]}), "the file input needs a <label for>"
    assert all("alt" in img for img in doc.find("img")), "every <img> needs alt text"
    assert doc.find("p", role="status") or doc.find("div", role="status")
    assert doc.find("div", role="alert"), "errors must be announced"
    # The script sends the upload as multipart field "file" with POST to predict (relative,
    # so it is /predict at / and still right behind a path prefix).
    assert 'PREDICT_URL = "predict"' in html
    assert re.search(r"fetch\(PREDICT_URL,\s*\{\s*method:\s*\"POST\"", html)
    assert 'form.append("file"' in html
    assert "dragover" in html and '"drop"' in html, "drag and drop"
    assert ".detail" in html, "error answers show their detail"


async def test_page_references_nothing_outside_the_server(page_client: httpx.AsyncClient) -> None:
    html = (await page_client.get("/")).text
    doc = parse(html)
    assert not re.search(r"(?i)\b(https?|wss?|ftp):", html), "absolute URLs to other hosts"
    assert not re.search(r"[\"'(=][ \t]*//[\w.-]", html), "protocol-relative URLs"
    external = [(tag, name, url) for tag, name, url in doc.urls if not is_local(url)]
    assert not external, external
    assert not [a for a in doc.find("script") if a.get("src")], "<script src> is not allowed"
    stylesheets = [a for a in doc.find("link") if "stylesheet" in (a.get("rel") or "")]
    assert not stylesheets, "styles must be inline"
    for css in doc.inline_css:
        assert "@import" not in css
        for url in re.findall(r"url\(\s*['\"]?([^'\")]*)", css):
            assert is_local(url), url
    assert "import(" not in html and "importScripts" not in html


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("predict", True),
        ("docs", True),
        ("/readyz", True),
        ("data:,", True),
        ("blob:abc", True),
        ("#top", True),
        ("https://cdn.example.com/x.js", False),
        ("http://127.0.0.1:8000/predict", False),
        ("//fonts.example.com/f.css", False),
    ],
)
def test_is_local(url: str, local: bool) -> None:
    assert is_local(url) is local


def test_the_service_serves_the_page() -> None:
    app = create_app()
    assert serves_page(app)
    assert "/" not in app.openapi()["paths"]  # a page, not part of the API


# ---------------------------------------------------------------- skipping, but never in CI


def test_browser_test_skips_without_chromium(tmp_path: Path) -> None:
    absent = tmp_path / "absent"
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium chromium-driver"):
        wd.require_chromium(absent, absent, environ={})
    with pytest.raises(pytest.skip.Exception):
        wd.require_chromium(absent, absent, environ={"CI": "false"})


def test_browser_test_fails_without_chromium_in_ci(tmp_path: Path) -> None:
    absent = tmp_path / "absent"
    with pytest.raises(pytest.fail.Exception, match="not installed.*CI is set"):
        wd.require_chromium(absent, absent, environ={"CI": "true"})


# ---------------------------------------------------------------- a real browser


@contextlib.contextmanager
def page_server(model_dir: Path, log_path: Path) -> Iterator[Server]:
    """The service as every documented command starts it, for the duration of the block."""
    with uvicorn_server(model_dir, log_path, poll_interval_s=0) as server:
        yield server


def find(browser: WebDriver, css: str) -> WebElement:
    """The first element matching ``css``."""
    return browser.find_element(By.CSS_SELECTOR, css)


def wait_for_state(browser: WebDriver, wanted: str, timeout: float = 30.0) -> None:
    """Wait until the page's status says ``wanted`` (``done`` or ``error``)."""
    status = find(browser, "#status")
    try:
        WebDriverWait(browser, timeout).until(
            lambda _: status.get_attribute("data-state") == wanted
        )
    except TimeoutException as exc:
        state = status.get_attribute("data-state")
        shown = browser.execute_script("return document.querySelector('main').innerText;")
        raise AssertionError(f"page state {state!r}, not {wanted!r}; it shows:\n{shown}") from exc


DROP_SCRIPT = """
const [b64, name, type] = arguments;
const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const data = new DataTransfer();
data.items.add(new File([bytes], name, {type}));
const zone = document.getElementById("drop");
for (const kind of ["dragenter", "dragover", "drop"]) {
  zone.dispatchEvent(new DragEvent(kind, {bubbles: true, cancelable: true, dataTransfer: data}));
}
"""


def test_a_real_browser_classifies_uploads_and_shows_errors(
    tiny_model_base: Path, tmp_path: Path
) -> None:
    wd.require_chromium()
    cat = images.write(tmp_path / "red cat.jpg", images.pet_jpeg_bytes("cat", (160, 160), 7))
    fake = images.write(tmp_path / "notes.jpg", images.text_bytes("just some notes\n"))
    dog = images.pet_jpeg_bytes("dog", (160, 160), 8)
    with (
        page_server(tiny_model_base, tmp_path / "uvicorn.log") as server,
        wd.chromium(tmp_path / "chromium") as browser,
    ):
        browser.get(f"{server.url}/")
        assert "cat or dog" in browser.title.lower()
        file_input = find(browser, "input[type=file]")

        # 1. A reddish JPEG through the file input: a cat, with both probabilities.
        file_input.send_keys(str(cat))
        wait_for_state(browser, "done")
        result = find(browser, "#result").text
        assert find(browser, "#label").text.lower() == "cat", result
        assert "cat" in result and "dog" in result, result
        assert len(PERCENT.findall(result)) == 2, result
        assert find(browser, "#version").text == "1"
        assert find(browser, "#preview-img").get_attribute("alt") == "Preview of red cat.jpg"
        natural_width = "return document.getElementById('preview-img').naturalWidth;"
        assert browser.execute_script(natural_width) == 160
        assert not find(browser, "#error").is_displayed()
        png = browser.get_screenshot_as_png()
        assert png.startswith(b"\x89PNG")
        (tmp_path / "page.png").write_bytes(png)
        if target := os.environ.get("PAGE_SCREENSHOT"):
            shutil.copyfile(tmp_path / "page.png", target)

        # 2. A bluish JPEG dropped onto the page: a dog.
        dropped = base64.b64encode(dog).decode()
        browser.execute_script(DROP_SCRIPT, dropped, "blue dog.jpg", "image/jpeg")
        WebDriverWait(browser, 30).until(lambda b: find(b, "#label").text.lower() == "dog")
        wait_for_state(browser, "done")

        # 3. A text file named .jpg: the page shows the service's own error detail.
        expected = httpx.post(
            f"{server.url}/predict", files=upload(fake.read_bytes(), "notes.jpg"), timeout=60
        )
        assert expected.status_code == 415, expected.text
        detail = expected.json()["detail"]
        file_input.send_keys(str(fake))
        wait_for_state(browser, "error")
        error = find(browser, "#error").text
        assert detail in error and "415" in error, (detail, error)
        assert not find(browser, "#result").is_displayed()

        # The page only ever talked to this server, broke no rule of its Content-Security-Policy
        # and raised no JavaScript error (the 415 above is logged as a failed network load).
        console = browser.get_log("browser")
        assert not [e for e in console if e.get("source") in ("security", "javascript")], console
        network = [e["message"] for e in console if e.get("source") == "network"]
        assert all(m.startswith(f"{server.url}/predict ") for m in network), network
