"""Statistics of multi-hot labels: genre counts, labels per movie, the prior baseline, a plot.

The prior baseline is the score of a model that ignores the poster: it always guesses the
train split's k most frequent genres. Its top-3 hit rate (at least one true genre among the
three guesses) is the figure every model's top-3 accuracy must be read against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from postergenre.data.dataset import SPLITS, load_genres, load_split


def top_genres(train_labels: np.ndarray, k: int = 3) -> np.ndarray:
    """Column indices of the k most frequent genres (ties broken by vocabulary order)."""
    counts = np.asarray(train_labels).sum(axis=0)
    return np.argsort(-counts, kind="stable")[:k]


def prior_top3_hit(train_labels: np.ndarray, eval_labels: np.ndarray, k: int = 3) -> float:
    """Share of `eval_labels` rows with a true genre among the train split's k most frequent.

    This is the top-k accuracy of the constant guess; NaN for an empty evaluation set.
    """
    eval_labels = np.asarray(eval_labels)
    if len(eval_labels) == 0:
        return float("nan")
    top = top_genres(train_labels, k)
    return float((eval_labels[:, top] > 0).any(axis=1).mean())


def labels_per_movie(labels: np.ndarray) -> dict[str, float | None | dict[str, int]]:
    """Mean number of genres per movie (None when empty) and the histogram {n_genres: n_movies}."""
    n = (np.asarray(labels) > 0).sum(axis=1)
    values, counts = np.unique(n, return_counts=True)
    return {
        "mean": round(float(n.mean()), 4) if len(n) else None,
        "histogram": {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)},
    }


def card(splits: Mapping[str, np.ndarray], genres: Sequence[str], k: int = 3) -> dict:
    """The statistics part of a dataset card, from each split's (n, G) multi-hot labels.

    Figures undefined on an empty split (a ratio of 0) are None, so the card stays valid JSON.
    """
    train = splits["train"]
    top = top_genres(train, k)
    return {
        "movies": {name: int(len(y)) for name, y in splits.items()},
        "genres": list(genres),
        "genre_counts": {
            g: {name: int(np.asarray(y)[:, i].sum()) for name, y in splits.items()}
            for i, g in enumerate(genres)
        },
        "labels_per_movie": {name: labels_per_movie(y) for name, y in splits.items()},
        "prior_baseline": {
            "guess": [genres[i] for i in top],
            f"top{k}_hit": {name: round(prior_top3_hit(train, y, k), 4) if len(y) else None
                            for name, y in splits.items()},
        },
    }


def load_labels(dataset: str | Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """The vocabulary and each split's label matrix of a prepared dataset."""
    splits = {name: load_split(dataset, name, allow_empty=name != "train") for name in SPLITS}
    return load_genres(dataset), {name: split.labels for name, split in splits.items()}


def plot_genre_distribution(dataset: str | Path, out: str | Path) -> Path:
    """Write a horizontal bar chart of movies per genre, stacked by split, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from postergenre.io import atomic_open

    genres, splits = load_labels(dataset)
    counts = {name: y.sum(axis=0) for name, y in splits.items()}
    order = np.argsort(sum(counts.values()), kind="stable")  # most frequent on top
    fig = Figure(figsize=(8, 0.28 * len(genres) + 1.5))
    FigureCanvasAgg(fig)  # matplotlib's object API: no pyplot, no global backend
    ax = fig.subplots()
    left = np.zeros(len(genres))
    for name, c in counts.items():
        bars = ax.barh([genres[i] for i in order], c[order], left=left[order], label=name)
        left += c
    ax.bar_label(bars, labels=[f"{int(left[i]):,}" for i in order], padding=3, fontsize=8)
    ax.margins(x=0.1)
    ax.set_xlabel("movies")
    ax.set_title(f"Genre distribution ({sum(len(y) for y in splits.values()):,} movies)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    out = Path(out)
    with atomic_open(out, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    return out
