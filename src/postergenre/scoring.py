"""Score a run on a dataset split, beside the prior: what `postergenre evaluate` does.

    results = evaluate_run("runs/lite0", "datasets/shared", split="test")

Loads the run behind a backend (predict.py), scores every readable poster of the split,
compares with the prior (evaluate/metrics.py) and writes metrics.json and report.html.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from postergenre.data.dataset import load_split
from postergenre.errors import DatasetError, PosterGenreError
from postergenre.evaluate.metrics import compare_with_prior, tune_thresholds
from postergenre.evaluate.report import write_report
from postergenre.explain import Explainer
from postergenre.explain import gallery as make_gallery
from postergenre.io import atomic_write_json, ensure_writable_dir
from postergenre.predict import Predictor, predict_stream


def score_split(predictor, split, on_done: Callable[[int], None] | None = None,
                on_error: Callable[[str], None] | None = None):
    """The predictor's probabilities for every readable poster of a split.

    Returns (the split restricted to the posters that could be read, their (n, G) scores).
    """
    keep, rows = [], []
    for i, p in enumerate(predict_stream(predictor, [str(x) for x in split.paths],
                                         on_done=on_done)):
        if p.error is None:
            assert p.probabilities is not None  # set whenever `error` is not
            keep.append(i)
            rows.append(p.probabilities)
        elif on_error is not None:
            on_error(p.error)
    scores = np.stack(rows) if rows else np.zeros((0, len(predictor.genres)), np.float32)
    return split.subset(np.array(keep, dtype=int)), scores


def _labels_for(split, genres: list[str], dataset: Path) -> np.ndarray:
    """The split's labels in the model's genre order."""
    if split.genres == genres:
        return split.labels
    missing = [g for g in genres if g not in split.genres]
    if missing:
        raise DatasetError(f"{dataset}: the model's genres {', '.join(missing[:3])} are not in "
                           "this dataset")
    return split.labels[:, [split.genres.index(g) for g in genres]]


def evaluate_run(
    run: str | Path | None,
    dataset: str | os.PathLike | None = None,
    split: str = "test",
    out: str | os.PathLike | None = None,
    n_boot: int = 1000,
    backend: str = "auto",
    report: bool = True,
    titles: bool = True,
    gallery: int = 0,
    on_done: Callable[[int], None] | None = None,
    on_error: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score a run on a dataset split; write metrics.json (and report.html) to `out`.

    `dataset` defaults to the dataset the run's config names. F1 and Hamming loss use the run's
    tuned thresholds (thresholds.json) when it has one for every genre, else thresholds tuned here
    on the val split. Posters that cannot be read are reported through `on_error` and skipped.
    When the run has a title model (and `titles`), the split's titles are fused with the posters
    and results["fused"] holds the fused scores (thresholds tuned for them on val).

    With `gallery` N > 0 the report shows, for each genre in the macro averages, its N most
    confident hits and false alarms with their Grad-CAM heat maps (explain.py, PyTorch).
    """
    predictor = Predictor.load(run, backend=backend, titles=titles)
    r = predictor.run
    dataset = dataset or r.dataset
    if not dataset:
        raise PosterGenreError(f"{r.path}: the run names no dataset; pass --data DATASET")
    dataset = Path(dataset)
    out_dir = ensure_writable_dir(out if out is not None else r.path)
    genres = predictor.genres

    test, scores = score_split(predictor, load_split(dataset, split), on_done, on_error)
    if len(test) == 0:
        raise DatasetError(f"{dataset}: no readable poster in the {split} split")
    y = _labels_for(test, genres, dataset)
    train_y = _labels_for(load_split(dataset, "train"), genres, dataset)
    if all(g in r.thresholds for g in genres):
        thresholds, source = np.array([r.thresholds[g] for g in genres]), "run"
    else:
        val, val_scores = score_split(predictor, load_split(dataset, "val"), on_done, on_error)
        thresholds, source = tune_thresholds(_labels_for(val, genres, dataset), val_scores), "val"

    results = compare_with_prior(y, scores, genres, train_y, thresholds, n_boot=n_boot)
    results = {"run": str(r.path), "dataset": str(dataset), "split": split,
               "thresholds_from": source, **results}
    if predictor.fused_thresholds is not None:  # a title model, and titles: fused scores too
        fused, used = predictor.fuse(scores, list(test.titles))
        results["fused"] = compare_with_prior(y, fused, genres, train_y,
                                              predictor.fused_thresholds, n_boot=n_boot)["model"]
        results["fused"]["posters_with_title"] = int(used.sum())
    atomic_write_json(out_dir / "metrics.json", results)
    if report:
        heatmaps = None
        if gallery > 0:
            shown = results["model"]["macro_genres"] or [  # a tiny split: every genre seen
                g for g, n in zip(genres, y.sum(axis=0), strict=True) if n]
            heatmaps = make_gallery(Explainer(r), y, scores, test.paths, shown, n=gallery)
        write_report(out_dir / "report.html", results, y, scores, genres, thresholds,
                     test.paths, test.titles,
                     title=f"{r.model_name} on {dataset.name}/{split}",
                     gallery=heatmaps)
    return results
