"""`train` makes a complete model: the title model and its fusion follow the poster model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_poster, run_cli

from postergenre.data.dataset import load_split, write_genres, write_split
from postergenre.predict import Predictor
from postergenre.run import load_run
from postergenre.train import fit as fit_module
from postergenre.train.fit import fit
from postergenre.train.recipes import make_config

GENRES = ["Action", "Comedy", "Drama"]
WORDS = {"Action": "guns", "Comedy": "laughs", "Drama": "tears"}

pytestmark = pytest.mark.usefixtures("isolated")


def make_dataset(root: Path, sizes: tuple[int, int, int] = (30, 12, 6)) -> Path:
    """Random posters whose titles name their genres: the title model has something to learn."""
    rng = np.random.default_rng(0)
    write_genres(root, GENRES)
    i = 0
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        rows = []
        for _ in range(n):
            labels = [g for g in GENRES if rng.random() < 0.4] or ["Drama"]
            title = " ".join(WORDS[g] for g in labels) + f" {i} ({1950 + i % 60})"
            path = make_poster(root / "posters" / f"{i}.jpg", seed=i, size=(60, 90))
            rows.append({"imdbId": i, "poster": str(path), "title": title,
                         "genres": "|".join(labels)})
            i += 1
        write_split(root, split, pd.DataFrame(rows), GENRES)
    return root


def config(**kw):
    return make_config(model="custom-cnn", model_kwargs={"input_size": [76, 76]}, epochs=2,
                       batch_size=8, patience=0, **kw)


def text_files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / "text").iterdir())}


def test_trained_run_has_a_title_model_that_changes_scores(tmp_path):
    data = make_dataset(tmp_path / "data")
    summary = fit(data, tmp_path / "run", config())
    assert summary["text"] == str(tmp_path / "run" / "text")
    run = load_run(tmp_path / "run")
    assert run.config.text.text_fitted_on == ("train",)
    assert run.config.text.fusion_fitted_on == "val"

    predictor = Predictor.load(tmp_path / "run", backend="torch")
    test = load_split(data, "test")
    poster = predictor.predict_files(test.paths)
    titles = [t if i % 2 else None for i, t in enumerate(test.titles)]
    fused, used = predictor.fuse(poster, titles)
    assert used.tolist() == [t is not None for t in titles]
    assert np.array_equal(fused[~used], poster[~used])  # no title: the poster's scores
    assert not np.allclose(fused[used], poster[used])


def test_no_titles_trains_a_poster_only_run(tmp_path):
    data = make_dataset(tmp_path / "data")
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--model",
            "custom-cnn", "--model-arg", "input_size=[76,76]", "--epochs", "1",
            "--batch-size", "8", "--no-titles", "--no-progress"]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "run" / "text").exists()
    assert load_run(tmp_path / "run").config.text is None
    assert load_run(tmp_path / "run").train_settings["titles"] is False
    # the resumed run keeps its own choice
    result = run_cli("train", "--out", str(tmp_path / "run"), "--resume", "--no-progress")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "run" / "text").exists()


def test_a_dataset_without_titles_trains_poster_only(tmp_path):
    data = make_dataset(tmp_path / "data")
    for name in ("train", "val"):
        table = pd.read_csv(data / f"{name}.csv", dtype=str, keep_default_na=False)
        table["title"] = ""
        table.to_csv(data / f"{name}.csv", index=False)
    assert fit(data, tmp_path / "run", config())["text"] is None
    assert not (tmp_path / "run" / "text").exists()


def test_resume_after_the_poster_model_finishes_the_title_step(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data")
    fit(data, tmp_path / "full", config())

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(fit_module, "fit_titles", killed)
        with pytest.raises(KeyboardInterrupt):
            fit(data, tmp_path / "cut", config())
    assert (tmp_path / "cut" / "weights.safetensors").is_file()
    assert not (tmp_path / "cut" / "text").exists()
    summary = fit(None, tmp_path / "cut", resume=True)
    assert summary["text"] and summary["epochs"] == 2
    assert text_files(tmp_path / "cut") == text_files(tmp_path / "full")
    configs = [json.loads((tmp_path / r / "config.json").read_text()) for r in ("full", "cut")]
    assert configs[0]["text"] == configs[1]["text"]


def test_title_step_added_to_a_finished_poster_only_run(tmp_path):
    data = make_dataset(tmp_path / "data")
    fit(data, tmp_path / "run", config(titles=False))
    assert not (tmp_path / "run" / "text").exists()
    assert fit(None, tmp_path / "run", resume=True, titles=True)["text"]
    assert load_run(tmp_path / "run").config.text.fusion == "per-genre"
