"""Multi-label scores on plain arrays: `y_true` (n, G) 0/1, `scores` (n, G), higher = more likely.

Every function here is plain numpy, vectorised over genres, so the bootstrap can call them
thousands of times. Definitions follow scikit-learn (tested against it):

- average precision: sum over thresholds of (R_k - R_k-1) * P_k, ties grouped
  (`average_precision_score`)
- ROC-AUC: the Mann-Whitney statistic with average ranks for ties (`roc_auc_score`)
- top-k hit: a poster counts when one of its k best-scored genres is true (the original
  project's "top-3 accuracy")

A genre with no positive (or no negative) has an undefined AP / AUC: NaN, left out of averages.
`evaluate_scores` leaves genres with fewer than `min_positives` positives out of every macro
average and says which.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy.stats import rankdata


class Metric(NamedTuple):
    key: str  # in `evaluate_scores`' dict
    label: str
    higher_is_better: bool = True


# The headline scores, in the order the console, metrics.json readers and the report show them.
HEADLINE = (
    Metric("top3_hit", "top-3 hit (the original's \"top-3 accuracy\")"),
    Metric("macro_ap", "macro average precision"),
    Metric("micro_ap", "micro average precision"),
    Metric("macro_roc_auc", "macro ROC-AUC"),
    Metric("macro_f1", "macro F1 (tuned thresholds)"),
    Metric("micro_f1", "micro F1 (tuned thresholds)"),
    Metric("samples_f1", "sample-averaged F1 (tuned thresholds)"),
    Metric("hamming_loss", "Hamming loss (tuned thresholds)", higher_is_better=False),
    Metric("precision_at_1", "precision@1"),
    Metric("precision_at_3", "precision@3"),
    Metric("recall_at_3", "recall@3"),
)

MIN_POSITIVES = 10


def _check(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim == 1:
        y, s = y[:, None], s[:, None]
    if y.shape != s.shape or y.ndim != 2:
        raise ValueError(f"y_true {y.shape} and scores {s.shape} must be the same (n, G) shape")
    return (y > 0.5), s


def _sorted_by_score(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each column sorted by descending score: labels, scores, and `last` marking tie-group ends."""
    order = np.argsort(-s, axis=0, kind="stable")
    ys = np.take_along_axis(y, order, axis=0)
    ss = np.take_along_axis(s, order, axis=0)
    last = np.ones_like(ys, dtype=bool)
    last[:-1] = ss[:-1] != ss[1:]
    return ys, ss, last


def _group_end(last: np.ndarray) -> np.ndarray:
    """For every sorted position, the index of the end of its tie group."""
    n = last.shape[0]
    idx = np.where(last, np.arange(n)[:, None], n - 1)
    return np.minimum.accumulate(idx[::-1], axis=0)[::-1]


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(G,) average precision per genre; NaN where a genre has no positive."""
    y, s = _check(y_true, scores)
    if len(y) == 0:
        return np.full(y.shape[1], np.nan)
    ys, _, last = _sorted_by_score(y, s)
    tp = np.cumsum(ys, axis=0)
    precision = tp / np.arange(1, len(ys) + 1)[:, None]
    # every positive contributes the precision at the end of its tie group
    at_end = np.take_along_axis(precision, _group_end(last), axis=0)
    positives = ys.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (at_end * ys).sum(axis=0) / positives
    return np.where(positives > 0, ap, np.nan)


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(G,) ROC-AUC per genre; NaN where a genre has no positive or no negative."""
    y, s = _check(y_true, scores)
    ranks = rankdata(s, axis=0)  # average ranks for ties
    pos = y.sum(axis=0).astype(np.float64)
    neg = len(y) - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * y).sum(axis=0) - pos * (pos + 1) / 2) / (pos * neg)
    return np.where((pos > 0) & (neg > 0), auc, np.nan)


def micro_average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """AP of every (poster, genre) pair pooled together."""
    y, s = _check(y_true, scores)
    return float(average_precision(y.reshape(-1, 1), s.reshape(-1, 1))[0])


def top_k_hits(y_true: np.ndarray, scores: np.ndarray, k: int = 3) -> np.ndarray:
    """(n,) number of true genres among each poster's k best-scored genres."""
    y, s = _check(y_true, scores)
    k = min(k, y.shape[1])
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    return np.take_along_axis(y, top, axis=1).sum(axis=1)


def top_k_hit(y_true: np.ndarray, scores: np.ndarray, k: int = 3) -> float:
    """Share of posters with at least one true genre among their k best (the original's metric)."""
    return float(np.mean(top_k_hits(y_true, scores, k) > 0))


def precision_at_k(y_true: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Mean over posters of (true genres among the k best) / k."""
    return float(np.mean(top_k_hits(y_true, scores, k) / k))


def recall_at_k(y_true: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Mean over posters with a true genre of (true genres among the k best) / (true genres)."""
    y, _ = _check(y_true, scores)
    n_true = y.sum(axis=1)
    keep = n_true > 0
    return float(np.mean(top_k_hits(y_true, scores, k)[keep] / n_true[keep]))


def tune_thresholds(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(G,) per-genre thresholds maximising F1 (predict a genre when score >= threshold).

    The threshold lies halfway between the last score kept and the next lower one, so it
    generalises to new scores. A genre without positives gets a threshold above every score.
    """
    y, s = _check(y_true, scores)
    ys, ss, last = _sorted_by_score(y, s)
    tp = np.cumsum(ys, axis=0)
    positives = tp[-1] if len(tp) else np.zeros(y.shape[1])
    predicted = np.arange(1, len(ys) + 1)[:, None]
    f1 = np.where(last, 2 * tp / (predicted + positives), -1.0)  # only at tie-group ends
    best = np.argmax(f1, axis=0)
    cols = np.arange(y.shape[1])
    kept = ss[best, cols]
    below = ss[np.minimum(best + 1, len(ss) - 1), cols]
    thresholds = np.where(best + 1 < len(ss), (kept + below) / 2, kept)
    never = np.nextafter(s.max(axis=0), np.inf) if len(s) else np.ones(y.shape[1])
    return np.where(positives > 0, thresholds, never)


def f1_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Per-genre precision/recall/F1 and micro and sample-averaged F1 of 0/1 predictions.

    Sample-averaged F1: the mean over posters of each poster's F1 (1 when it has no true and
    no predicted genre, as scikit-learn's `zero_division=1`). Undefined per-genre F1 is 0.
    """
    y, p = _check(y_true, y_pred)
    p = p > 0.5
    tp = (y & p).sum(axis=0)
    n_pred, n_true = p.sum(axis=0), y.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_pred > 0, tp / n_pred, 0.0)
        recall = np.where(n_true > 0, tp / n_true, 0.0)
        f1 = np.where(n_pred + n_true > 0, 2 * tp / (n_pred + n_true), 0.0)
        row_tp, row_sum = (y & p).sum(axis=1), y.sum(axis=1) + p.sum(axis=1)
        samples = np.where(row_sum > 0, 2 * row_tp / row_sum, 1.0)
    micro_den = n_pred.sum() + n_true.sum()
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "micro_f1": float(2 * tp.sum() / micro_den) if micro_den else 0.0,
        "samples_f1": float(samples.mean()) if len(samples) else float("nan"),
    }


def hamming_loss(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of (poster, genre) pairs predicted wrong."""
    y, p = _check(y_true, y_pred)
    return float(np.mean(y != (p > 0.5)))


def prior_scores(train_labels: np.ndarray, n: int) -> np.ndarray:
    """The prior baseline: every poster scored with the train split's genre frequencies."""
    freq = np.asarray(train_labels, dtype=np.float64).mean(axis=0)
    return np.tile(freq, (n, 1))


def bootstrap_ci(
    y_true: np.ndarray,
    scores_list: Sequence[np.ndarray],
    metric: Callable[[np.ndarray, np.ndarray], float],
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[tuple[float, float]]:
    """Percentile bootstrap intervals of `metric(y, s)` over posters, one per scores array.

    The same resamples serve every scores array, so intervals of two models are paired.
    """
    y = np.asarray(y_true)
    rng = np.random.default_rng(seed)
    values = np.empty((n_boot, len(scores_list)))
    for b in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        for j, s in enumerate(scores_list):
            values[b, j] = metric(y[idx], np.asarray(s)[idx])
    alpha = (1 - confidence) / 2
    lo, hi = np.nanquantile(values, [alpha, 1 - alpha], axis=0)
    return [(float(a), float(b)) for a, b in zip(lo, hi, strict=True)]


def macro_ap(y_true: np.ndarray, scores: np.ndarray, columns: np.ndarray | None = None) -> float:
    """Mean AP over `columns` (all genres by default), ignoring undefined ones."""
    ap = average_precision(y_true, scores)
    ap = ap if columns is None else ap[columns]
    return float(np.nanmean(ap)) if np.any(~np.isnan(ap)) else float("nan")


def _nan_to_none(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def evaluate_scores(
    y_true: np.ndarray,
    scores: np.ndarray,
    genres: Sequence[str],
    min_positives: int = MIN_POSITIVES,
    thresholds: np.ndarray | Sequence[float] | None = None,
) -> dict[str, Any]:
    """Every score of one model on one split, as a JSON-ready dict.

    `thresholds` (G,) are the per-genre decision thresholds for F1 and Hamming loss (tuned on
    val with `tune_thresholds`, applied unchanged here); None means 0.5 for every genre.
    Genres with fewer than `min_positives` positives are listed but left out of macro averages.
    NaN (an undefined score) becomes None.
    """
    y, s = _check(y_true, scores)
    genres = list(genres)
    if len(genres) != y.shape[1]:
        raise ValueError(f"{len(genres)} genre names for {y.shape[1]} score columns")
    thr = np.full(len(genres), 0.5) if thresholds is None else np.asarray(thresholds, np.float64)
    positives = y.sum(axis=0)
    macro = positives >= min_positives
    ap, auc = average_precision(y, s), roc_auc(y, s)
    f1 = f1_scores(y, s >= thr)

    def mean(values: np.ndarray) -> float | None:
        v = values[macro]
        return _nan_to_none(np.nanmean(v)) if np.any(~np.isnan(v)) else None

    return {
        "n_posters": int(len(y)),
        "min_positives": int(min_positives),
        "macro_genres": [g for g, m in zip(genres, macro, strict=True) if m],
        "excluded_genres": [g for g, m in zip(genres, macro, strict=True) if not m],
        "top3_hit": top_k_hit(y, s, 3),
        "top1_hit": top_k_hit(y, s, 1),
        "precision_at_1": precision_at_k(y, s, 1),
        "precision_at_3": precision_at_k(y, s, 3),
        "recall_at_3": recall_at_k(y, s, 3),
        "macro_ap": mean(ap),
        "micro_ap": _nan_to_none(micro_average_precision(y, s)),
        "macro_roc_auc": mean(auc),
        "macro_f1": mean(f1["f1"]),
        "micro_f1": f1["micro_f1"],
        "samples_f1": f1["samples_f1"],
        "hamming_loss": hamming_loss(y, s >= thr),
        "per_genre": {
            g: {
                "positives": int(positives[j]),
                "prevalence": float(positives[j] / max(len(y), 1)),
                "in_macro": bool(macro[j]),
                "ap": _nan_to_none(ap[j]),
                "roc_auc": _nan_to_none(auc[j]),
                "threshold": float(thr[j]),
                "precision": float(f1["precision"][j]),
                "recall": float(f1["recall"][j]),
                "f1": float(f1["f1"][j]),
            }
            for j, g in enumerate(genres)
        },
    }


def compare_with_prior(
    y_true: np.ndarray,
    scores: np.ndarray,
    genres: Sequence[str],
    train_labels: np.ndarray,
    thresholds: np.ndarray | Sequence[float] | None = None,
    prior_thresholds: np.ndarray | Sequence[float] | None = None,
    min_positives: int = MIN_POSITIVES,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The model's scores beside the prior baseline's, with paired bootstrap 95% intervals.

    Returns {"model": {...}, "prior": {...}} (each `evaluate_scores`' dict plus "ci" holding
    intervals for macro_ap and top3_hit). `prior_thresholds` default to those that maximise the
    prior's F1 on `train_labels` (a constant score: every genre predicted or none).
    """
    y, s = _check(y_true, scores)
    prior = prior_scores(train_labels, len(y))
    if prior_thresholds is None:
        train = np.asarray(train_labels)
        prior_thresholds = tune_thresholds(train, prior_scores(train, len(train)))
    model_r = evaluate_scores(y, s, genres, min_positives, thresholds)
    prior_r = evaluate_scores(y, prior, genres, min_positives, prior_thresholds)
    columns = np.flatnonzero(y.sum(axis=0) >= min_positives)
    results = {"model": model_r, "prior": prior_r}
    if n_boot > 0 and len(y) > 0:
        cis = {
            "macro_ap": bootstrap_ci(y, [s, prior], lambda a, b: macro_ap(a, b, columns),
                                     n_boot, seed=seed),
            "top3_hit": bootstrap_ci(y, [s, prior], top_k_hit, n_boot, seed=seed),
        }
        for i, r in enumerate(results.values()):
            r["ci"] = {k: [_nan_to_none(v) for v in c[i]] for k, c in cis.items()}
    return results
