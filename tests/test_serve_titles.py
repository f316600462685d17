"""Titles in the service: an optional `title` (and `titles` for a batch) fused with the poster
when the model has a title model; the page's title box reaches the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import CHROMEDRIVER, CHROMIUM, make_poster, make_run, running_server
from conftest import RUN_GENRES as GENRES
from fastapi.testclient import TestClient

from postergenre.models.text import Fusion, TitleModel
from postergenre.predict import Predictor
from postergenre.serve import create_app
from postergenre.train.text import save_text

ZOMBIE = "Zombie Blood (1985)"


def with_title_model(run: Path) -> Path:
    titles = ["Crazy Wedding (1999)", "Mother River (1960)", "Zombie Blood (1985)",
              "Fast Guns (1970)", "Paris Kiss (2001)"] * 12
    y = np.tile(np.eye(len(GENRES), dtype=np.float32)[[1, 2, 3, 0, 4]], (12, 1))
    model = TitleModel(GENRES, n_features=2**10).fit(titles, y)
    g = len(GENRES)
    fusion = Fusion(GENRES, "global", np.ones(g), np.full(g, 2.0), np.zeros(g), np.full(g, -1.0))
    save_text(run, model, fusion, np.full(g, 0.4), {"fusion_fitted_on": "val"})
    return run


@pytest.fixture(scope="module")
def apps(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-titles")
    plain = Predictor.load(make_run(root / "plain"), backend="torch")
    fused = Predictor.load(with_title_model(make_run(root / "fused")), backend="torch")
    poster = make_poster(root / "p.jpg", seed=3).read_bytes()
    return create_app(plain), create_app(fused), poster


def test_a_title_is_fused_only_when_given_and_the_model_has_a_title_model(apps) -> None:
    plain, fused, poster = apps
    with TestClient(plain) as a, TestClient(fused) as b:
        files = {"file": ("p.jpg", poster, "image/jpeg")}
        base = a.post("/predict", files=files).json()
        assert base["signals"] == ["poster"] and base["title"] is None
        assert b.post("/predict", files=files).json()["scores"] == base["scores"]
        assert b.post("/predict", files=files, data={"title": "  "}).json()["scores"] \
            == base["scores"]
        same = a.post("/predict", files=files, data={"title": ZOMBIE}).json()
        assert same["scores"] == base["scores"] and same["signals"] == ["poster"]
        out = b.post("/predict", files=files, data={"title": ZOMBIE}).json()
        assert out["signals"] == ["poster", "title"] and out["title"] == ZOMBIE
        assert out["scores"]["Horror"] > base["scores"]["Horror"]

        batch = b.post("/predict/batch", files=[("files", ("a.jpg", poster, "image/jpeg")),
                                                ("files", ("b.jpg", poster, "image/jpeg"))],
                       data={"titles": [ZOMBIE, ""]}).json()["results"]
        assert [r["signals"] for r in batch] == [["poster", "title"], ["poster"]]
        assert batch[1]["scores"] == base["scores"]


def test_bad_titles_are_422_like_other_bad_fields(apps) -> None:
    _, fused, poster = apps
    with TestClient(fused) as c:
        files = {"file": ("p.jpg", poster, "image/jpeg")}
        long = c.post("/predict", files=files, data={"title": "x" * 301})
        assert long.status_code == 422 and "at most 300" in long.json()["detail"]
        as_file = c.post("/predict/batch", files=[("files", ("a.jpg", poster, "image/jpeg")),
                                                  ("titles", ("t.txt", b"x", "text/plain"))])
        assert as_file.status_code == 422 and "must be text" in as_file.json()["detail"]
        many = c.post("/predict/batch", files=[("files", ("a.jpg", poster, "image/jpeg"))],
                      data={"titles": ["A (2000)", "B (2001)"]})
        assert many.status_code == 422 and "2 titles for 1 files" in many.json()["detail"]
        words = c.post("/explain?genre=Horror", files=files, data={"title": ZOMBIE}).json()
        assert dict(words["title_words"]["Horror"])["zombie"] > 0


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium/chromedriver absent")
def test_the_pages_title_box_reaches_the_model(apps, browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, fused, poster = apps
    path = tmp_path / "poster.jpg"
    path.write_bytes(poster)
    with TestClient(fused) as c:
        expected = c.post("/predict", files={"file": ("poster.jpg", poster, "image/jpeg")},
                          data={"title": ZOMBIE}).json()
    with running_server(fused) as url:
        browser.get(url + "/")
        browser.find_element(By.ID, "title").send_keys(ZOMBIE)
        browser.find_element(By.ID, "file").send_keys(str(path))
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#bars li.bar"))
        first = browser.find_elements(By.CSS_SELECTOR, "#bars li.bar")[0]
        signals = browser.find_element(By.ID, "signals").text
        caption = browser.find_element(By.ID, "filename").text
    assert "poster and its title" in signals and ZOMBIE in caption
    assert first.get_attribute("data-genre") == expected["top"][0][0]
