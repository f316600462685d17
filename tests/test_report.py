"""The HTML report: contents, best/worst selection, and real headless Chromium loading it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_poster

from postergenre.evaluate.metrics import compare_with_prior, tune_thresholds
from postergenre.evaluate.report import best_and_worst, render_report, write_report

GENRES = ["Action", "Comedy", "Drama", "Horror", "Western"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def report_file(tmp_path_factory) -> tuple[Path, dict]:
    """A report over 40 synthetic posters; Western has 2 positives (left out of macro)."""
    tmp = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    n = 40
    y = (rng.random((n, 5)) < [0.3, 0.4, 0.6, 0.3, 0.0]).astype(int)
    y[:2, 4] = 1
    scores = np.clip(0.5 * y + rng.random((n, 5)) * 0.6, 0, 1)
    paths = [make_poster(tmp / "posters" / f"{i}.jpg", seed=i, size=(40, 60)) for i in range(n)]
    titles = [f"Film <{i}>" for i in range(n)]  # markup in titles must be escaped
    results = compare_with_prior(y, scores, GENRES, y, tune_thresholds(y, scores), n_boot=20)
    results.update(run="runs/x", dataset="datasets/d", split="test")
    path = tmp / "report.html"
    write_report(path, results, y, scores, GENRES, tune_thresholds(y, scores), paths, titles)
    return path, results


def test_report_contents(report_file):
    path, results = report_file
    html = path.read_text(encoding="utf-8")
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 4  # the four figures
    assert len(re.findall(r'src="data:image/jpeg;base64,', html)) == 24  # 12 best, 12 worst
    assert "src=\"http" not in html and "<script" not in html  # nothing to fetch: opens offline
    assert "Film &lt;" in html and "Film <" not in html
    excluded = results["model"]["excluded_genres"]
    assert "Western" in excluded
    assert f"left out: {', '.join(excluded)}." in html.replace("\n", " ")
    assert f"{results['model']['top3_hit']:.3f}" in html


def test_best_and_worst_by_hand():
    y = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0], [0, 0, 0]])
    s = np.array([[0.9, 0.1, 0.2],   # true genre ranked first: best
                  [0.9, 0.5, 0.1],   # true genre ranked last: worst
                  [0.5, 0.4, 0.1],   # ranked second
                  [0.3, 0.3, 0.3]])  # no true genre: never shown
    best, worst = best_and_worst(y, s, n=3)
    assert best == [0, 2, 1] and worst == [1, 2, 0]


def test_render_report_handles_a_model_equal_to_the_prior():
    y = np.array([[1, 0], [0, 1], [1, 1], [1, 0]] * 5)
    s = np.tile(y.mean(axis=0), (len(y), 1))
    results = compare_with_prior(y, s, ["A", "B"], y, n_boot=0)
    html = render_report(results, y, s, ["A", "B"], np.array([0.5, 0.5]),
                         ["missing.jpg"] * len(y), [""] * len(y))
    assert "class=better" not in html  # no metric beats the prior
    assert "data:image/jpeg" not in html  # unreadable posters are left out of the grid


@pytest.mark.browser
@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium/chromedriver absent")
def test_report_images_load_in_headless_chromium(report_file, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(report_file[0].as_uri())
        state = driver.execute_script(
            "const imgs = [...document.images];"
            "return {n: imgs.length,"
            " ok: imgs.filter(i => i.complete && i.naturalWidth > 0).length,"
            " title: document.title};")
    finally:
        driver.quit()
    assert state["n"] == 28 and state["ok"] == 28
    assert state["title"] == "Evaluation report"
