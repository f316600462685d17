"""End to end in headless Chromium: upload a poster, click a genre bar, see its heat map.

Set POSTERGENRE_SCREENSHOT=page.png to keep a screenshot of the page with the heat map shown.
"""

from __future__ import annotations

import os

import pytest
from conftest import CHROMEDRIVER, CHROMIUM, make_run, running_server, striped_poster
from conftest import RUN_INPUT_SIZE as INPUT_SIZE

from postergenre.predict import Predictor
from postergenre.serve import create_app

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium/chromedriver absent"),
]


def test_clicking_a_genre_shows_its_heat_map_over_the_poster(browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    predictor = Predictor.load(make_run(tmp_path / "run"), backend="torch")
    poster = striped_poster(tmp_path / "poster.jpg")

    with running_server(create_app(predictor)) as url:
        browser.get(url + "/")
        heatmap = browser.find_element(By.ID, "heatmap")
        browser.find_element(By.ID, "file").send_keys(str(poster))
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#bars li.bar"))
        assert not heatmap.is_displayed()  # nothing shown before a click

        bar = browser.find_elements(By.CSS_SELECTOR, "#bars li.bar")[1]
        genre = bar.get_attribute("data-genre")
        bar.click()
        wait.until(lambda d: heatmap.is_displayed()
                   and int(heatmap.get_attribute("naturalWidth") or 0) > 0)
        src = heatmap.get_attribute("src")
        natural = int(heatmap.get_attribute("naturalWidth"))
        box, poster_box = heatmap.rect, browser.find_element(By.ID, "poster").rect
        shown = [b.get_attribute("data-genre")
                 for b in browser.find_elements(By.CSS_SELECTOR, "#bars li.bar.shown")]
        caption = browser.find_element(By.ID, "explained").text
        if os.environ.get("POSTERGENRE_SCREENSHOT"):
            browser.save_screenshot(os.environ["POSTERGENRE_SCREENSHOT"])

        bar = browser.find_elements(By.CSS_SELECTOR, "#bars li.bar")[1]
        bar.click()  # the same bar again hides the map
        wait.until(lambda d: not heatmap.is_displayed())
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]

    assert src.startswith("data:image/png;base64,")
    assert natural == INPUT_SIZE[1]  # the map at the model's input size...
    assert (round(box["width"]), round(box["height"])) == (round(poster_box["width"]),
                                                           round(poster_box["height"]))
    assert (box["x"], box["y"]) == (poster_box["x"], poster_box["y"])  # ...laid over the poster
    assert shown == [genre] and genre in caption
    assert not errors, errors
