"""End to end in headless Chromium: upload a poster through the page, read the genre bars.

Set POSTERGENRE_SCREENSHOT=page.png to keep a screenshot of the page after the upload.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_poster
from test_serve import make_run, running_server

from postergenre.predict import Predictor
from postergenre.serve import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium/chromedriver absent"),
]


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
                 "--window-size=1000,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_upload_through_the_page_shows_bars_best_first(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    predictor = Predictor.load(make_run(tmp_path / "run"), backend="torch")
    poster = make_poster(tmp_path / "poster.jpg", seed=3)
    expected = predictor.predict_files([poster])[0]
    ranked = [predictor.genres[j] for j in np.argsort(-expected)]

    with running_server(create_app(predictor)) as url:
        browser.get(url + "/")
        browser.find_element(By.ID, "file").send_keys(str(poster))
        WebDriverWait(browser, 20).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#bars li.bar"))
        bars = browser.find_elements(By.CSS_SELECTOR, "#bars li.bar")
        genres = [b.get_attribute("data-genre") for b in bars]
        top = [b.get_attribute("data-genre") for b in bars if "top" in b.get_attribute("class")]
        hits = {b.get_attribute("data-genre") for b in bars if "hit" in b.get_attribute("class")}
        poster_shown = browser.find_element(By.ID, "poster").get_attribute("naturalWidth")
        if os.environ.get("POSTERGENRE_SCREENSHOT"):
            browser.save_screenshot(str(Path(os.environ["POSTERGENRE_SCREENSHOT"])))
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]

    assert genres == ranked  # every genre, the model's top genre first
    assert top == ranked[:3]
    assert hits == {g for g, p, t in zip(predictor.genres, expected, predictor.thresholds,
                                         strict=True) if p >= t}
    assert int(poster_shown) == 182  # the uploaded poster is displayed beside the bars
    assert not errors, errors
