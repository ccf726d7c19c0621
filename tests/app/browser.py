"""Headless Debian Chromium driven by Selenium 4 through Debian's chromedriver.

Needs the Debian packages ``chromium`` (``/usr/bin/chromium``) and ``chromium-driver``
(``/usr/bin/chromedriver``): the driver is named, so Selenium Manager never looks for
or downloads one. :func:`require_chromium` skips a test without them, or fails it
when the ``CI`` environment variable is set, so CI never silently skips.

Typical use::

    with chromium(tmp_path) as browser:
        browser.get("http://127.0.0.1:8000/")
        browser.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(path))
        WebDriverWait(browser, 30).until(lambda b: ...)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
NOT_INSTALLED = "headless Chromium not installed: apt-get install chromium chromium-driver"
WINDOW_SIZE = (1000, 900)


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


def options(user_data_dir: Path) -> webdriver.ChromeOptions:
    """A headless, quiet, throw-away Chromium that keeps its console log."""
    chosen = webdriver.ChromeOptions()
    chosen.binary_location = str(CHROMIUM)
    width, height = WINDOW_SIZE
    for argument in (
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
    ):
        chosen.add_argument(argument)
    chosen.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return chosen


@contextlib.contextmanager
def chromium(workdir: Path) -> Iterator[webdriver.Chrome]:
    """A headless Chromium session for the block; profile and driver log live in ``workdir``."""
    require_chromium()
    workdir.mkdir(parents=True, exist_ok=True)
    service = Service(str(CHROMEDRIVER), log_output=str(workdir / "chromedriver.log"))
    browser = webdriver.Chrome(options=options(workdir / "profile"), service=service)
    try:
        yield browser
    finally:
        browser.quit()
