"""`postergenre evaluate` on a tiny run and dataset: metrics.json, report.html, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_poster, run_cli

from postergenre.data.dataset import load_split, write_genres, write_split
from postergenre.evaluate.metrics import average_precision, top_k_hit, tune_thresholds
from postergenre.io import save_weights
from postergenre.models import create_model
from postergenre.predict import Predictor
from postergenre.run import RunConfig, write_config

GENRES = ["Comedy", "Drama", "Horror"]
SIZE = (80, 80)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """14 train, 12 val, 24 test posters; Drama on most, Horror on 3 test posters only."""
    root = tmp_path_factory.mktemp("dataset")
    write_genres(root, GENRES)
    rng = np.random.default_rng(0)
    imdb = 1000
    for name, n in (("train", 14), ("val", 12), ("test", 24)):
        rows = []
        for i in range(n):
            imdb += 1
            genres = ["Drama"] if i % 4 else ["Comedy"]
            if i % 3 == 0:
                genres.append("Comedy")
            if name == "test" and i < 3:
                genres.append("Horror")
            path = make_poster(root / "posters" / f"{imdb}.jpg", seed=int(rng.integers(1e6)),
                               size=(40, 60))
            rows.append({"imdbId": imdb, "poster": str(path), "title": f"Movie {imdb}",
                         "genres": "|".join(dict.fromkeys(genres))})
        write_split(root, name, pd.DataFrame(rows), GENRES)
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, dataset) -> Path:
    """A custom-cnn run with random weights, naming `dataset`, without thresholds.json."""
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("run")
    save_weights(create_model("custom-cnn", len(GENRES), input_size=SIZE),
                 run / "weights.safetensors")
    write_config(run, RunConfig(model="custom-cnn", model_kwargs={"input_size": list(SIZE)},
                                genres=tuple(GENRES), input_size=SIZE, dataset=str(dataset)))
    return run


def _invoke(*args: str):
    return run_cli("evaluate", "--backend", "torch", *args)


def test_evaluate_writes_metrics_and_report(run_dir, dataset, tmp_path):
    out = tmp_path / "eval"
    result = _invoke(str(run_dir), "--out", str(out), "--bootstrap", "50")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    html = (out / "report.html").read_text()
    assert html.startswith("<!doctype html>") and "data:image/png;base64," in html
    assert "Movie " in html  # the poster grid names the movies

    # recompute from the predictor directly
    test = load_split(dataset, "test")
    val = load_split(dataset, "val")
    predictor = Predictor.load(run_dir, backend="torch")
    scores = predictor.predict_files(test.paths)
    model, prior = metrics["model"], metrics["prior"]
    assert metrics["split"] == "test" and metrics["thresholds_from"] == "val"
    assert model["n_posters"] == 24
    assert model["top3_hit"] == pytest.approx(top_k_hit(test.labels, scores))
    assert model["excluded_genres"] == ["Horror"]  # 3 positives < 10
    assert model["macro_ap"] == pytest.approx(
        np.mean(average_precision(test.labels, scores)[:2]), abs=1e-6)
    thresholds = tune_thresholds(val.labels, predictor.predict_files(val.paths))
    got = [model["per_genre"][g]["threshold"] for g in GENRES]
    np.testing.assert_allclose(got, thresholds, atol=1e-5)
    for j, g in enumerate(GENRES):  # the prior's AP is the genre's prevalence
        assert prior["per_genre"][g]["ap"] == pytest.approx(test.labels[:, j].mean())
    for res in (model, prior):
        lo, hi = res["ci"]["top3_hit"]
        assert lo <= res["top3_hit"] <= hi
    assert "top3_hit" in result.stdout and "Horror" in result.stdout


def test_evaluate_data_override_and_unreadable_posters(run_dir, dataset, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("genres.json", "train.csv", "val.csv", "test.csv"):
        (copy / name).write_bytes((dataset / name).read_bytes())
    table = pd.read_csv(copy / "test.csv")
    table.loc[0, "poster"] = str(tmp_path / "gone.jpg")
    table.to_csv(copy / "test.csv", index=False)
    result = _invoke(str(run_dir), "--data", str(copy), "--out", str(tmp_path / "o"),
                     "--bootstrap", "0", "--no-report", "--split", "test")
    assert result.exit_code == 0, result.output
    assert "skipped" in result.stderr and "gone.jpg" in result.stderr
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["model"]["n_posters"] == 23 and metrics["dataset"] == str(copy)
    assert not (tmp_path / "o" / "report.html").exists()


def test_evaluate_errors(run_dir, tmp_path):
    result = _invoke(str(tmp_path), "--data", str(tmp_path))
    assert result.exit_code == 1 and result.stderr.startswith("error: ")
    assert "not a run folder" in result.stderr
    result = _invoke(str(run_dir), "--data", str(tmp_path), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1 and result.stderr.startswith("error: ")
    assert "not a dataset folder" in result.stderr
    assert _invoke(str(run_dir), "--split", "dev").exit_code == 2
