"""The evaluation report: one self-contained HTML file (figures and posters embedded as data URIs).

Sections: the headline metrics beside the prior baseline with bootstrap 95% intervals; the
per-genre table; per-genre AP against prevalence; precision-recall curves of the main genres;
a reliability diagram; genre co-occurrence, true against predicted; a grid of the best and
worst posters with their top-3 predictions and true genres; and, when heat maps are given
(explain.gallery), each genre's most confident hits and false alarms with their heat maps.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from postergenre.data.images import open_poster
from postergenre.errors import PosterGenreError
from postergenre.evaluate import plots
from postergenre.evaluate.metrics import HEADLINE, average_precision
from postergenre.io import atomic_write_text

THUMB = (201, 136)  # (height, width) of the posters in the grid
MAIN_GENRES = 8
GRID = 12  # posters in each of the best and worst grids

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0}td,th{padding:3px 10px;border-bottom:1px solid #ddd;
text-align:right}th:first-child,td:first-child{text-align:left}.muted{color:#888}
.better{color:#0a7d2c;font-weight:600}figure{margin:1.5em 0}figure img{max-width:100%}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:12px}
.card{font-size:12px;border:1px solid #ddd;border-radius:6px;padding:6px;background:#fafafa}
.card img{display:block;margin:0 auto 4px;width:136px;height:201px;object-fit:cover}
.hit{color:#0a7d2c;font-weight:600}.miss{color:#b00020}.title{font-weight:600}
.strip{display:flex;gap:10px;flex-wrap:wrap;align-items:flex-start;margin:4px 0 10px}
.strip .card{width:140px}.strip h4{width:100%;margin:4px 0 0;font-size:13px;color:#555}
"""


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _ci(res: dict[str, Any], key: str) -> str:
    ci = res.get("ci", {}).get(key)
    return "" if not ci or None in ci else f" <span class=muted>[{ci[0]:.3f}, {ci[1]:.3f}]</span>"


def _figure(png: bytes, caption: str) -> str:
    return (f'<figure><img alt="{html.escape(caption)}" src="{_data_uri(png, "image/png")}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _thumbnail(path: str | os.PathLike) -> str | None:
    try:
        image = open_poster(path, THUMB)
    except PosterGenreError:
        return None
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=80)
    return _data_uri(buf.getvalue(), "image/jpeg")


def _poster_cards(indices: Sequence[int], y_true: np.ndarray, scores: np.ndarray,
                  genres: Sequence[str], paths: Sequence[str | os.PathLike],
                  titles: Sequence[str]) -> str:
    cards = []
    for i in indices:
        uri = _thumbnail(paths[i])
        if uri is None:
            continue
        top = np.argsort(-scores[i])[:3].tolist()
        predicted = ", ".join(
            f'<span class={"hit" if y_true[i, j] else "miss"}>{html.escape(genres[j])} '
            f"({scores[i, j]:.2f})</span>" for j in top)
        true = ", ".join(html.escape(genres[j])
                         for j in np.flatnonzero(y_true[i]).tolist()) or "—"
        title = html.escape(titles[i] or os.path.basename(str(paths[i])))
        cards.append(f'<div class=card><img alt="{title}" src="{uri}"><div class=title>{title}'
                     f"</div><div>{predicted}</div><div class=muted>true: {true}</div></div>")
    return f"<div class=grid>{''.join(cards)}</div>"


def _gallery_section(gallery: dict[str, dict[str, list]], titles: Sequence[str],
                     paths: Sequence[str | os.PathLike]) -> str:
    """Per genre, its most confident hits and false alarms with their heat maps."""
    parts = []
    for genre, kinds in gallery.items():
        strips = []
        for kind, cards in kinds.items():
            items = "".join(
                f'<div class=card><img class=heat alt="{html.escape(genre)} heat map" '
                f'src="{c.image}"><div class=title>'
                f"{html.escape(titles[c.index] or os.path.basename(str(paths[c.index])))}"
                f"</div><div>{html.escape(genre)} {c.probability:.2f}</div></div>"
                for c in cards) or "<span class=muted>none</span>"
            strips.append(f"<div class=strip><h4>most confident {html.escape(kind)}</h4>"
                          f"{items}</div>")
        parts.append(f"<h3>{html.escape(genre)}</h3>{''.join(strips)}")
    return ("<h2>What each genre was learned from</h2><p>For each genre, the posters the model "
            "was surest of: true positives (hits), then posters without the genre "
            "(false alarms), each with its Grad-CAM heat map for that genre (red: what "
            "pushed the genre up most).</p>" + "".join(parts))


def best_and_worst(y_true: np.ndarray, scores: np.ndarray, n: int = GRID) -> tuple[list, list]:
    """Posters whose genre ranking is best and worst: per-poster average precision of the true
    genres among all genres, ties broken by the mean probability of the true genres."""
    has_true = np.flatnonzero(y_true.sum(axis=1) > 0)
    y, s = y_true[has_true], scores[has_true]
    ap = average_precision(y.T, s.T)
    true_mean = (s * y).sum(axis=1) / y.sum(axis=1)
    order = has_true[np.lexsort((true_mean, ap))]  # ascending: worst first
    return list(order[::-1][:n]), list(order[:n])


def render_report(results: dict[str, Any], y_true: np.ndarray, scores: np.ndarray,
                  genres: Sequence[str], thresholds: np.ndarray,
                  paths: Sequence[str | os.PathLike], titles: Sequence[str],
                  title: str = "Evaluation report",
                  gallery: dict[str, dict[str, list]] | None = None) -> str:
    """The report as one HTML string. `results` is `compare_with_prior`'s dict plus optional
    "run", "dataset" and "split" keys; `gallery` (explain.gallery's) adds the heat maps."""
    model, prior = results["model"], results["prior"]
    y_true = np.asarray(y_true)
    per = model["per_genre"]
    ap = np.array([np.nan if per[g]["ap"] is None else per[g]["ap"] for g in genres])
    prevalence = np.array([per[g]["prevalence"] for g in genres])
    in_macro = np.array([per[g]["in_macro"] for g in genres])
    main = list(np.argsort(-y_true.sum(axis=0))[:MAIN_GENRES])
    reliability_png, ece = plots.reliability(y_true, scores)

    rows = []
    for key, label, higher in HEADLINE:
        m, p = model.get(key), prior.get(key)
        better = m is not None and p is not None and (m > p if higher else m < p)
        rows.append(f"<tr><td>{html.escape(label)}</td>"
                    f"<td{' class=better' if better else ''}>{_fmt(m)}{_ci(model, key)}</td>"
                    f"<td>{_fmt(p)}{_ci(prior, key)}</td></tr>")
    genre_rows = []
    for g in sorted(genres, key=lambda g: -per[g]["positives"]):
        r, pr = per[g], prior["per_genre"][g]
        cls = "" if r["in_macro"] else " class=muted"
        genre_rows.append(
            f"<tr{cls}><td>{html.escape(g)}</td><td>{r['positives']}</td>"
            f"<td>{r['prevalence']:.3f}</td><td>{_fmt(r['ap'])}</td><td>{_fmt(pr['ap'])}</td>"
            f"<td>{_fmt(r['roc_auc'])}</td><td>{r['threshold']:.3f}</td><td>{r['precision']:.3f}"
            f"</td><td>{r['recall']:.3f}</td><td>{r['f1']:.3f}</td></tr>")
    best, worst = best_and_worst(y_true, scores)
    excluded = model["excluded_genres"]
    about = " · ".join(html.escape(f"{k}: {results[k]}") for k in ("run", "dataset", "split")
                       if results.get(k))
    thresholds_note = ("from the run (thresholds.json)" if results.get("thresholds_from") == "run"
                       else "tuned on the validation split")
    body = f"""
<h1>{html.escape(title)}</h1>
<p class=muted>{about}</p>
<p>{model['n_posters']} posters. The prior baseline scores every poster with the train split's
genre frequencies. Macro averages are over the {len(model['macro_genres'])} genres with at
least {model['min_positives']} positives in this split; left out:
{html.escape(', '.join(excluded)) or 'none'}. Brackets: bootstrap 95% intervals.
F1 and Hamming loss use per-genre thresholds {thresholds_note}.</p>
<table><tr><th>metric</th><th>model</th><th>prior</th></tr>{''.join(rows)}</table>
<h2>Per genre</h2>
{_figure(plots.ap_vs_prevalence(genres, ap, prevalence, in_macro),
         "Per-genre average precision against prevalence (the dashed diagonal is the prior).")}
<table><tr><th>genre</th><th>positives</th><th>prevalence</th><th>AP</th><th>prior AP</th>
<th>ROC-AUC</th><th>threshold</th><th>precision</th><th>recall</th><th>F1</th></tr>
{''.join(genre_rows)}</table>
<h2>Precision-recall</h2>
{_figure(plots.pr_curves(y_true, scores, genres, main),
         f"Precision-recall curves of the {len(main)} most frequent genres.")}
<h2>Calibration</h2>
{_figure(reliability_png, f"Reliability diagram; expected calibration error {ece:.3f}.")}
<h2>Genre co-occurrence</h2>
{_figure(plots.cooccurrence(y_true[:, in_macro], (scores >= thresholds)[:, in_macro],
                            [g for g, m in zip(genres, in_macro, strict=True) if m]),
         "How often the column genre comes with the row genre (genres in macro averages): "
         "true labels, then predictions at the tuned thresholds.")}
<h2>Best posters</h2>
<p>Top-3 predictions (green: a true genre, red: not) and the true genres.</p>
{_poster_cards(best, y_true, scores, genres, paths, titles)}
<h2>Worst posters</h2>
{_poster_cards(worst, y_true, scores, genres, paths, titles)}
{_gallery_section(gallery, titles, paths) if gallery else ""}
"""
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}"
            f"</title><style>{CSS}</style></head><body>{body}</body></html>\n")


def write_report(path: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
    """`render_report(...)` written atomically to `path`."""
    atomic_write_text(path, render_report(*args, **kwargs))
