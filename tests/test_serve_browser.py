"""The search page of ``clip-zoo serve`` in a real browser: Debian's headless Chromium driven by Selenium
through the system chromedriver (never Selenium Manager, never a browser download)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from serve_helpers import make_collection, start_server

pytest.importorskip("torch")
pytest.importorskip("fastapi")
pytest.importorskip("selenium")

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--disable-dev-shm-usage", "--window-size=1200,900")

needs_chromium = pytest.mark.skipif(not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
                                    reason="Debian's chromium and chromium-driver are not installed "
                                           "(apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_browser")
    collection = make_collection(root)
    srv = start_server(root, "--index", str(collection.npy))
    yield srv, root
    srv.stop()


@pytest.fixture
def browser(tmp_path, monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # belt and braces: Selenium Manager may never go online

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    # An explicit driver path: Selenium Manager (which may download a driver or browser) never runs.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def _pixel_spread(png: Path) -> float:
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB"), np.float32)
    return float(pixels.std())


@needs_chromium
def test_search_page_shows_the_expected_top_result(served, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    srv, _ = served
    browser.get(srv.url + "/")
    wait = WebDriverWait(browser, 60)
    box = wait.until(ec.element_to_be_clickable((By.ID, "query")))
    box.send_keys("a photo of a red circle", Keys.ENTER)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result")) == 12)
    first = browser.find_elements(By.CSS_SELECTOR, "#results .result")[0]
    assert first.get_attribute("data-path").endswith("00_red_circle.png")
    assert first.find_element(By.CSS_SELECTOR, ".score").text.startswith("#1")
    # the thumbnail came from the server (by id) and decoded in the browser
    wait.until(lambda d: d.execute_script(
        "const i = document.querySelector('#results .result img'); return i.complete && i.naturalWidth > 0;"))
    status = browser.find_element(By.ID, "status").text
    assert "of 48" in status and " ms" in status, status
    browser.find_element(By.ID, "next").click()  # paging: ranks 13-24
    wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("results 13-24"))
    browser.find_element(By.ID, "prev").click()
    wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("results 1-12"))
    wait.until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0);"))
    shot = tmp_path / "search.png"  # kept under pytest's tmp dir for a look after a failure
    assert browser.save_screenshot(str(shot))
    assert _pixel_spread(shot) > 20, "the screenshot is blank"


def test_blank_screenshot_check_can_fail(tmp_path):
    """The non-blank check itself: a uniform image has no spread."""
    from PIL import Image

    Image.new("RGB", (300, 200), (255, 255, 255)).save(tmp_path / "blank.png")
    assert _pixel_spread(tmp_path / "blank.png") == 0
