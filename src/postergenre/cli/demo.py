"""`postergenre demo`: the bundled sample through the data pipeline, then the shipped model.

`postergenre demo` (and `make demo`) runs it: it cleans and splits the sample (printing the
cleaning report and the genre table), predicts the top-3 genres of every sample poster with the
model shipped in the package, prints them in the original project's style, and draws the
posters with their predicted and true genres into one picture.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from rich.console import Console


def draw_predictions(posters: Sequence[Path], titles: Sequence[str],
                     top: Sequence[list[tuple[str, float]]], truth: Sequence[list[str]],
                     out: Path, columns: int = 6) -> Path:
    """A grid of posters, each captioned with its top-3 genres and (in grey) its true genres."""
    rows = -(-len(posters) // columns)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from postergenre.data.images import open_poster
    from postergenre.io import atomic_open

    fig = Figure(figsize=(columns * 2.4, rows * 4.4))
    FigureCanvasAgg(fig)  # matplotlib's object API: no pyplot, no global backend
    axes = fig.subplots(rows, columns, squeeze=False,
                        gridspec_kw={"hspace": 0.55, "wspace": 0.1})
    for ax in axes.flat:
        ax.axis("off")
    for ax, path, title, best, true in zip(axes.flat, posters, titles, top, truth, strict=False):
        ax.imshow(open_poster(path))
        hit = any(g in true for g, _ in best)
        ax.set_title(title if len(title) <= 26 else title[:25] + "…", fontsize=8,
                     fontweight="bold")
        caption = "\n".join(f"{g} {p:.2f}{' ✓' if g in true else ''}" for g, p in best)
        below = {"xy": (0.5, 0), "xycoords": "axes fraction", "textcoords": "offset points",
                 "ha": "center", "va": "top"}
        ax.annotate(caption, xytext=(0, -3), fontsize=8,
                    color="#1a7f37" if hit else "#b42318", **below)
        ax.annotate("true: " + ", ".join(true), xytext=(0, -37), fontsize=6.5,
                    color="#555555", **below)
    fig.suptitle("Top-3 predicted genres (✓ = a true genre; green: at least one right)",
                 fontsize=12, y=0.995)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.97, bottom=0.03)
    with atomic_open(out, "wb") as f:
        fig.savefig(f, format="png", dpi=90)
    return out


def run_demo(out: str | Path = "demo-output", model: str | Path | None = None,
             console: Console | None = None) -> Path:
    """Run the demo into `out`; returns the path of the picture."""
    from rich.console import Console

    from postergenre.cli.formats import format_table_row
    from postergenre.cli.tables import genre_table, render_cleaning_report
    from postergenre.data.dataset import SPLITS, load_split
    from postergenre.data.prepare import prepare_dataset
    from postergenre.errors import PosterGenreError
    from postergenre.io import ensure_writable_dir
    from postergenre.paths import sample_dir
    from postergenre.predict import Predictor, predict_stream

    console = console or Console()
    out = ensure_writable_dir(out)
    sample = sample_dir()

    console.rule("1. Data pipeline on the bundled sample")
    report = prepare_dataset(sample / "movies.csv", sample / "posters", out / "dataset")
    console.print(render_cleaning_report(report))
    console.print(genre_table(out / "dataset"))

    console.rule("2. Genres predicted by the shipped model" if model is None else
                 f"2. Genres predicted by {model}")
    predictor = Predictor.load(model)
    splits = [load_split(out / "dataset", name) for name in SPLITS]
    paths = [str(p) for s in splits for p in s.paths]
    titles = [t for s in splits for t in s.titles]
    truth = [[g for g, v in zip(s.genres, row, strict=True) if v] for s in splits
             for row in s.labels]
    order = sorted(range(len(paths)), key=lambda i: titles[i])
    paths, titles = [paths[i] for i in order], [titles[i] for i in order]
    truth = [truth[i] for i in order]

    probabilities = []
    for p in predict_stream(predictor, paths):
        if p.probabilities is None:  # the sample's posters were checked by prepare_dataset
            raise PosterGenreError(str(p.error))
        probabilities.append(p.probabilities)
    top = [predictor.top_k(p[None], 3)[0] for p in probabilities]
    width = max(len(t) for t in titles)
    for title, best in zip(titles, top, strict=True):
        console.print(format_table_row(title, best, width), highlight=False, markup=False,
                      soft_wrap=True)
    hits = sum(any(g in true for g, _ in best) for best, true in zip(top, truth, strict=True))
    console.print(f"\ntop-3 hit on these {len(paths)} posters: {hits}/{len(paths)}")

    picture = draw_predictions([Path(p) for p in paths], titles, top, truth,
                               out / "predictions.png")
    console.print(f"picture: {picture}")

    console.rule("3. A whole catalogue in, one table out: postergenre batch")
    run_batch_demo(sample, out / "genres", model, console)
    return picture


def run_batch_demo(sample: Path, out: Path, model: str | Path | None, console: Console) -> None:
    """The sample's movies.csv through `postergenre batch` into OUT (a rerun resumes it)."""
    import pandas as pd

    from postergenre.batch.local import run_local

    console.print(f"postergenre batch {sample / 'movies.csv'} --posters {sample / 'posters'} "
                  f"--out {out}", highlight=False, soft_wrap=True)
    summary = run_local(sample / "movies.csv", out, model=model, posters=sample / "posters")
    table = pd.read_parquet(out).sort_values("row")
    console.print(f"{len(table)} rows in {out} ({summary.scored} scored now, "
                  f"{summary.skipped} already there); read it with pandas.read_parquet")
    for row in table[table.status == "ok"].head(3).itertuples():
        console.print(f"  {row.id:>8}  {row.title}: {row.top_genres}", highlight=False,
                      markup=False)
    for row in table[table.status != "ok"].itertuples():
        console.print(f"  row {row.row} failed: {row.status}", highlight=False, markup=False)


def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", help="Folder for the demo's files."),
    model: Path | None = typer.Option(None, "--model",
                                      help="A run folder; the shipped model by default."),
) -> None:
    """Run the bundled sample through the pipeline and predict its posters' genres.

    Cleans and splits the sample (prints the cleaning report and the genre table), predicts
    the top-3 genres of each poster with the shipped model, writes OUT/predictions.png, and
    runs the sample's movies.csv through `postergenre batch` into the table OUT/genres.
    """
    run_demo(out, model)
