"""Rich tables of library results: the cleaning report and the genre table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from rich.table import Table

from postergenre.data import prepare, stats


def render_cleaning_report(report: prepare.PrepareReport) -> Table:
    """The cleaning report as a Rich table: each outcome's count for rows and poster files."""
    table = Table(title=f"Cleaning {Path(report.labels).name} against {Path(report.posters).name}/")
    table.add_column("input")
    table.add_column("outcome")
    table.add_column("count", justify="right")
    for k in prepare.ROW_OUTCOMES:
        table.add_row("rows", k.replace("_", " "), f"{report.rows[k]:,}")
    table.add_row("rows", "[b]total[/b]", f"[b]{report.rows_total:,}[/b]")
    table.add_section()
    for k in prepare.POSTER_OUTCOMES:
        table.add_row("poster files", k.replace("_", " "), f"{report.poster_files.get(k, 0):,}")
    table.add_row("poster files", "[b]total[/b]", f"[b]{report.posters_total:,}[/b]")
    table.add_section()
    table.add_row("duplicates", "genres disagree", f"{len(report.duplicate_conflicts):,}")
    if report.fallback_lines:
        table.add_row("encoding", "lines read as Windows-1252", f"{report.fallback_lines:,}")
    for name, n in report.splits.items():
        table.add_row("split", name, f"{n:,}")
    return table


def genre_table(dataset: str | Path) -> Table:
    """A Rich table: movies per genre in each split, and the share of all movies."""
    genres, splits = stats.load_labels(dataset)
    return genre_table_from(genres, splits, title=f"Genres of {dataset}")


def genre_table_from(genres: Sequence[str], splits: Mapping[str, np.ndarray],
                     title: str = "Genres") -> Table:
    total = sum(len(y) for y in splits.values())
    counts = {name: np.asarray(y).sum(axis=0).astype(int) for name, y in splits.items()}
    all_counts = sum(counts.values())
    table = Table(title=title)
    table.add_column("genre")
    for name in splits:
        table.add_column(name, justify="right")
    table.add_column("all", justify="right")
    table.add_column("share", justify="right")
    for i in np.argsort(-all_counts, kind="stable"):
        share = all_counts[i] / total if total else 0.0
        table.add_row(genres[i], *(str(counts[name][i]) for name in splits),
                      str(all_counts[i]), f"{share:.1%}")
    table.add_section()
    table.add_row("movies", *(str(len(y)) for y in splits.values()), str(total), "")
    train = splits.get("train")
    if train is not None and len(train):
        table.add_row("prior top-3 hit",
                      *(f"{stats.prior_top3_hit(train, y):.3f}" for y in splits.values()), "", "")
        guess = ", ".join(genres[i] for i in stats.top_genres(train))
        table.caption = f"prior: always guess the train split's top 3 ({guess})"
    return table
