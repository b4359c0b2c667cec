"""The web UI of ``editsynth serve`` in a real headless Chromium (selenium + Debian's chromedriver):
upload, edit, chain, undo, see the result, download it.

Set EDITSYNTH_SCREENSHOT=docs/serve.png to save a screenshot of the UI after the edits (and
EDITSYNTH_SERVE_MODEL=shapes to show the shipped shapes editor at work).
"""
from __future__ import annotations

import io
import os
import shutil
import time

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

selenium = pytest.importorskip("selenium", reason="selenium is not installed")
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver")


def scene(path) -> None:
    """A small picture of the shapes world: a red circle and a yellow square on blue."""
    im = Image.new("RGB", (240, 180), (40, 90, 200))
    d = ImageDraw.Draw(im)
    d.ellipse((30, 50, 110, 130), fill=(220, 30, 30))
    d.rectangle((140, 60, 210, 130), fill=(240, 210, 40))
    im.save(path)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1280,1000", f"--user-data-dir={tmp_path_factory.mktemp('chrome-profile')}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, timeout=90):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.25).until(condition)


def status(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "status").text


def test_upload_edit_chain_undo_and_download_in_a_real_browser(editor_server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    src = tmp_path / "scene.png"
    scene(src)
    browser.get(editor_server.url + "/")          # redirects to /ui/
    wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#input-image input[type=file]"))
    browser.find_element(By.CSS_SELECTOR, "#input-image input[type=file]").send_keys(str(src))
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#input-image img"))

    instruction = browser.find_element(By.CSS_SELECTOR, "#instruction textarea")
    instruction.send_keys("make the circle green")
    browser.find_element(By.ID, "edit-button").click()
    wait_for(browser, lambda d: "1 edit(s)" in status(d))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#history img")) == 2
    assert len(browser.find_elements(By.CSS_SELECTOR, "#before-after img")) == 2

    instruction.clear()
    instruction.send_keys("add a triangle")
    browser.find_element(By.ID, "edit-button").click()          # applies to the last result
    wait_for(browser, lambda d: "2 edit(s)" in status(d))
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history img")) == 3)
    if os.environ.get("EDITSYNTH_SCREENSHOT"):
        time.sleep(1)  # let the images finish painting
        browser.save_screenshot(os.environ["EDITSYNTH_SCREENSHOT"])

    browser.find_element(By.ID, "undo-button").click()
    wait_for(browser, lambda d: "1 edit(s)" in status(d) and "make the circle green" in status(d))
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history img")) == 2)

    browser.find_element(By.ID, "download").click()
    files = wait_for(browser, lambda d: [p for p in d.downloads.glob("*.png")], timeout=30)
    downloaded = Image.open(files[0]).convert("RGB")
    assert downloaded.size == (240, 180)
    # What the browser downloaded is the first edit, as the API makes it (seed 0, the server's steps).
    api = httpx.post(f"{editor_server.url}/api/edit", files={"image": ("s.png", src.read_bytes())},
                     data={"instruction": "make the circle green", "seed": "0"}, timeout=60)
    expected = np.asarray(Image.open(io.BytesIO(api.content)), np.int16)
    assert np.abs(np.asarray(downloaded, np.int16) - expected).max() <= 1
