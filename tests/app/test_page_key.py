"""The page asks for an API key when the service answers 401 (``CATDOG_API_KEYS_FILE``).

A real server with a key file and a real headless Chromium (``tests/app/browser.py``):
a dropped photo gets a 401, the page prompts for a key, and with the key typed in it
sends the photo again and shows the answer.
"""

from __future__ import annotations

import base64
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from servicekit import uvicorn_server
from tests import images
from tests.app import browser as wd
from tests.app.test_page import DROP_SCRIPT, wait_for_state

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "catdog"
KEY = "k-page-7d1e"


def test_the_page_asks_for_a_key_and_sends_it(tmp_path: Path) -> None:
    wd.require_chromium()
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY}\n")
    photo = base64.b64encode(images.pet_jpeg_bytes("cat", (160, 160), 7)).decode()
    with (
        uvicorn_server(SHIPPED, tmp_path / "server.log", api_keys_file=keys) as server,
        wd.chromium(tmp_path / "chromium") as browser,
    ):
        browser.get(f"{server.url}/")
        browser.execute_script(DROP_SCRIPT, photo, "cat.jpg", "image/jpeg")
        prompt = WebDriverWait(browser, 30).until(expected_conditions.alert_is_present())
        assert "API key" in prompt.text
        prompt.send_keys(KEY)
        prompt.accept()
        wait_for_state(browser, "done")
        assert browser.find_element(By.ID, "label").text.lower() in ("cat", "dog")
        assert browser.execute_script("return sessionStorage.getItem('catdog-api-key');") == KEY
