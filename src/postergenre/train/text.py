"""Fit the title model and its fusion with a run's poster model, and store them in the run
as its `TitleSide` (run.py owns RUN/text/ and config.json's "text", a `TextSettings` that
says what was fitted on what). The poster model's own files are untouched: without a title
the run predicts exactly as before.

The text model learns from the titles of the dataset's training split(s) only: the same movies
as the poster model, never another row of a labels file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from postergenre.data.dataset import load_split
from postergenre.evaluate.metrics import tune_thresholds
from postergenre.models.text import FUSION_FORMS, Fusion, TitleModel, logit
from postergenre.run import TextSettings, TitleSide, save_title_side

GRID = np.round(np.arange(0.0, 3.0001, 0.05), 2)
MIN_VAL_POSITIVES = 10  # fewer: the genre takes the global weight


def fit_text_model(dataset: str | Path, splits: Sequence[str] = ("train",),
                   **settings: Any) -> TitleModel:
    """A TitleModel fitted on the titles of `splits` of a prepared dataset."""
    parts = [load_split(dataset, s) for s in splits]
    titles = [t for p in parts for t in p.titles]
    labels = np.concatenate([p.labels for p in parts])
    return TitleModel(parts[0].genres, **settings).fit(titles, labels)


def _bce(y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(G,) summed binary cross-entropy of logits z."""
    return (np.logaddexp(0, z) - y * z).sum(axis=0)


def fit_fusion(poster_probs: np.ndarray, text_logits: np.ndarray, labels: np.ndarray,
               train_labels: np.ndarray, genres: Sequence[str], form: str = "per-genre"
               ) -> Fusion:
    """Fusion weights minimising cross-entropy on (val) labels.

    global: one text weight w on a grid; per-genre: one w per genre on the grid (genres with
    fewer than MIN_VAL_POSITIVES positives take the global w); stack: a per-genre logistic
    regression on (poster logit, text logit - prior), the same fallback.
    """
    if form not in FUSION_FORMS:
        raise ValueError(f"fusion form must be one of {', '.join(FUSION_FORMS)}, not {form!r}")
    y = (np.asarray(labels) > 0.5).astype(np.float64)
    g = y.shape[1]
    freq = np.clip(np.asarray(train_labels, np.float64).mean(axis=0), 1e-4, 1 - 1e-4)
    prior = np.log(freq / (1 - freq))
    zp, zt = logit(poster_probs), np.asarray(text_logits, np.float64) - prior
    losses = np.stack([_bce(y, zp + w * zt) for w in GRID])  # (grid, G)
    w_global = float(GRID[np.argmin(losses.sum(axis=1))])
    few = y.sum(axis=0) < MIN_VAL_POSITIVES
    a, w, c = np.ones(g), np.full(g, w_global), np.zeros(g)
    if form == "per-genre":
        w = np.where(few, w_global, GRID[np.argmin(losses, axis=0)])
    elif form == "stack":
        from sklearn.linear_model import LogisticRegression

        for j in np.flatnonzero(~few):
            lr = LogisticRegression(C=1.0).fit(np.stack([zp[:, j], zt[:, j]], 1), y[:, j])
            (a[j], w[j]), c[j] = lr.coef_[0], lr.intercept_[0]
    return Fusion(genres, form, a, w, c, prior)


def cross_fit_fusion(poster_probs: np.ndarray, text_logits: np.ndarray, labels: np.ndarray,
                     train_labels: np.ndarray, genres: Sequence[str], form: str,
                     folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold fused probabilities on the fitting split: each fold scored by a fusion
    fitted on the other folds (to compare fusion forms on val without scoring what they saw)."""
    n = len(labels)
    order = np.random.default_rng(seed).permutation(n)
    out = np.zeros(np.shape(labels), np.float32)
    for k in range(folds):
        held = order[k::folds]
        fit = np.setdiff1d(order, held)
        fusion = fit_fusion(poster_probs[fit], text_logits[fit], labels[fit], train_labels,
                            genres, form)
        out[held] = fusion(poster_probs[held], text_logits[held])
    return out


def save_text(run_dir: str | Path, model: TitleModel, fusion: Fusion, thresholds: np.ndarray,
              meta: dict[str, Any]) -> Path:
    """Write RUN/text/ and record it in config.json's "text"; `meta` holds what was fitted
    on what (`TextSettings`' text_fitted_on, fusion_fitted_on, dataset). Returns RUN/text."""
    unknown = set(meta) - {"text_fitted_on", "fusion_fitted_on", "dataset"}
    if unknown:
        raise ValueError(f"save_text: unknown meta {', '.join(sorted(unknown))}")
    settings = {k: v for k, v in model.settings().items() if k != "genres"}
    dataset = meta.get("dataset")
    text = TextSettings(fusion=fusion.form, title_model=settings,
                        text_fitted_on=tuple(meta.get("text_fitted_on", ("train",))),
                        fusion_fitted_on=str(meta.get("fusion_fitted_on", "val")),
                        dataset=None if dataset is None else str(dataset))
    side = TitleSide(model, fusion, np.asarray(thresholds, np.float32))
    return save_title_side(run_dir, side, text)


def fit_and_save(run_dir: str | Path, dataset: str | Path, poster_val_probs: np.ndarray,
                 text_splits: Sequence[str] = ("train",), form: str = "per-genre",
                 **settings: Any) -> Path:
    """The whole chain: the fusion is fitted on val with a text model fitted on train, then the
    text model is refitted on `text_splits` (("train", "val") for a model refitted on both)
    and stored with those weights and the val-tuned fused thresholds."""
    train, val = load_split(dataset, "train"), load_split(dataset, "val")
    model = fit_text_model(dataset, ("train",), **settings)
    val_logits = model.decision_function(val.titles)
    fusion = fit_fusion(poster_val_probs, val_logits, val.labels, train.labels, train.genres,
                        form)
    thresholds = tune_thresholds(val.labels, fusion(poster_val_probs, val_logits))
    if tuple(text_splits) != ("train",):
        model = fit_text_model(dataset, text_splits, **settings)
    meta = {"text_fitted_on": list(text_splits), "fusion_fitted_on": "val",
            "dataset": str(dataset)}
    return save_text(run_dir, model, fusion, thresholds, meta)
