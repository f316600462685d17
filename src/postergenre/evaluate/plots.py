"""The report's figures: matplotlib figures rendered to PNG bytes by the Agg canvas.

Each function takes plain arrays (y_true (n, G) 0/1, scores (n, G)) and returns PNG bytes.
Figures are made with matplotlib's object API (`Figure` on a `FigureCanvasAgg`), never pyplot:
no global backend or figure registry is touched.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve

DPI = 100


def _figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def ap_vs_prevalence(genres: Sequence[str], ap: np.ndarray, prevalence: np.ndarray,
                     in_macro: np.ndarray) -> bytes:
    """Per-genre AP against prevalence; the diagonal is the prior (constant scores have
    AP = prevalence)."""
    fig = _figure((7, 5))
    ax = fig.subplots()
    ok = ~np.isnan(ap) & (prevalence > 0)
    for mask, color, label in ((ok & in_macro, "tab:blue", "in macro averages"),
                               (ok & ~in_macro, "tab:gray", "too few positives")):
        ax.scatter(prevalence[mask], ap[mask], s=28, c=color, label=label)
    for j in np.flatnonzero(ok).tolist():
        ax.annotate(genres[j], (prevalence[j], ap[j]), fontsize=7, xytext=(3, 2),
                    textcoords="offset points")
    lo = max(prevalence[ok].min() / 2, 1e-4) if ok.any() else 1e-3
    ax.plot([lo, 1], [lo, 1], "k--", lw=1, label="prior (AP = prevalence)")
    ax.set(xscale="log", yscale="log", xlabel="prevalence in the split",
           ylabel="average precision", title="Per-genre AP against prevalence")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _png(fig)


def pr_curves(y_true: np.ndarray, scores: np.ndarray, genres: Sequence[str],
              columns: Sequence[int]) -> bytes:
    """Precision-recall curves of the given genres, each with its prior (prevalence) as a line."""
    fig = _figure((7, 5))
    ax = fig.subplots()
    colors = colormaps["tab10"]
    for i, j in enumerate(columns):
        precision, recall, _ = precision_recall_curve(y_true[:, j], scores[:, j])
        color = colors(i % 10)
        ax.step(recall, precision, where="post", color=color, label=genres[j])
        ax.axhline(y_true[:, j].mean(), color=color, ls=":", lw=1)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title="Precision-recall of the main genres (dotted: prior)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def reliability(y_true: np.ndarray, scores: np.ndarray, bins: int = 10) -> tuple[bytes, float]:
    """Reliability diagram of every (poster, genre) probability; also returns the expected
    calibration error (the count-weighted mean |observed - predicted| over bins)."""
    p, y = scores.ravel(), y_true.ravel().astype(float)
    which = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    seen = count > 0
    mean_p = np.bincount(which, p, bins)[seen] / count[seen]
    freq = np.bincount(which, y, bins)[seen] / count[seen]
    ece = float(np.sum(count[seen] * np.abs(freq - mean_p)) / max(len(p), 1))
    fig = _figure((6, 6.5))
    ax, hist = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfectly calibrated")
    ax.plot(mean_p, freq, "o-", color="tab:red", label=f"model (ECE {ece:.3f})")
    ax.set(ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1),
           title="Reliability of the probabilities (all genres pooled)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    hist.bar((np.arange(bins) + 0.5) / bins, count, width=0.9 / bins, color="tab:gray")
    hist.set(yscale="log", xlabel="predicted probability", ylabel="pairs")
    return _png(fig), ece


def cooccurrence(y_true: np.ndarray, y_pred: np.ndarray, genres: Sequence[str]) -> bytes:
    """Genre co-occurrence P(column genre | row genre), true labels beside predictions.

    The diagonal (always 1) is left blank so the colour scale shows the pairs."""
    conds = []
    for y in (y_true.astype(float), y_pred.astype(float)):
        both = y.T @ y
        with np.errstate(invalid="ignore", divide="ignore"):
            cond = both / np.diag(both)[:, None]
        np.fill_diagonal(cond, np.nan)
        conds.append(cond)
    vmax = float(np.nanmax(conds[0])) if np.isfinite(conds[0]).any() else 1.0
    fig = _figure((13, 6))
    axes = fig.subplots(1, 2)
    for ax, cond, title in zip(axes, conds, ("true labels", "predicted (tuned thresholds)"),
                               strict=True):
        image = ax.imshow(cond, vmin=0, vmax=vmax, cmap="viridis")
        ax.set_xticks(range(len(genres)), genres, rotation=90, fontsize=7)
        ax.set_yticks(range(len(genres)), genres, fontsize=7)
        ax.set_title(f"P(column | row), {title}")
    fig.colorbar(image, ax=axes, shrink=0.8)
    return _png(fig)
