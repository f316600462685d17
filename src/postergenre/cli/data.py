"""`postergenre data ...`: download posters, prepare a dataset, show its statistics."""

from __future__ import annotations

from pathlib import Path

import typer

from postergenre.defaults import (
    DOWNLOAD_CONCURRENCY,
    DOWNLOAD_RETRIES,
    DOWNLOAD_TIMEOUT,
    MAX_POSTER_BYTES,
    SPLIT_SEED,
    TEST_SHARE,
    VAL_SHARE,
)

app = typer.Typer(help="Download posters, prepare a dataset, show its statistics.",
                  no_args_is_help=True)

# Commands are added below by their owners: download, prepare, stats.


@app.command("download")
def download(
    csv_path: Path = typer.Argument(..., metavar="CSV",
                                    help="MovieGenre.csv in the Kaggle 6-column format."),
    out: Path = typer.Option(..., "--out", "-o",
                             help="Output folder; posters go to OUT/posters/<imdbId>.jpg."),
    concurrency: int = typer.Option(DOWNLOAD_CONCURRENCY, min=1, max=512,
                                    help="Simultaneous requests."),
    timeout: float = typer.Option(DOWNLOAD_TIMEOUT, min=0.1,
                                  help="Seconds allowed per attempt."),
    retries: int = typer.Option(DOWNLOAD_RETRIES, min=0, help="Retries on 5xx, timeouts and "
                                "broken connections (exponential backoff)."),
    max_bytes: int = typer.Option(MAX_POSTER_BYTES, min=1,
                                  help="Largest poster accepted, in bytes."),
) -> None:
    """Download every poster of a Kaggle MovieGenre.csv, validated, resumable and crash-safe.

    Posters already present and valid are skipped: rerun an interrupted download to resume.
    Every failure and its reason is listed in OUT/download-report.json.
    The exit code is 1 when any poster failed.
    """
    from rich import progress as rp
    from rich.console import Console

    from postergenre.data.download import REPORT_NAME, DownloadConfig, download_posters

    config = DownloadConfig(concurrency=concurrency, timeout=timeout, retries=retries,
                            max_bytes=max_bytes)
    console = Console(stderr=True)
    columns = (rp.TextColumn("downloading"), rp.BarColumn(), rp.MofNCompleteColumn(),
               rp.TextColumn("{task.fields[rate]} posters/s"), rp.TimeElapsedColumn(),
               rp.TextColumn("ETA"), rp.TimeRemainingColumn())
    progress = rp.Progress(*columns, console=console)
    task = progress.add_task("download", total=None, rate="-")

    def on_start(total: int) -> None:  # the CSV is read and OUT is writable: show the bar
        progress.update(task, total=total)
        progress.start()

    def on_done(_: str) -> None:
        speed = progress.tasks[task].speed
        progress.update(task, advance=1, rate=f"{speed:.1f}" if speed else "-")

    try:
        summary = download_posters(csv_path, out, config, on_start=on_start, on_done=on_done)
    finally:
        if progress.live.is_started:
            progress.stop()
    console.print(f"{summary.downloaded} downloaded, {summary.skipped} already present, "
                  f"{summary.failed} failed; report: {out / REPORT_NAME}")
    if summary.failed:
        raise typer.Exit(1)


@app.command("prepare")
def prepare(
    labels: Path = typer.Option(..., "--labels", "-l", metavar="CSV",
                                help="Labels: Kaggle MovieGenre.csv (6 columns) or "
                                     "imdbId,Title,Genre."),
    posters: Path = typer.Option(..., "--posters", "-p", metavar="DIR",
                                 help="Folder of posters named <imdbId>.jpg."),
    out: Path = typer.Option(..., "--out", "-o", metavar="DATASET",
                             help="Output dataset folder (created if needed)."),
    seed: int = typer.Option(SPLIT_SEED, help="Seed of the stratified split (same seed, same "
                             "split)."),
    val: float = typer.Option(VAL_SHARE, min=0.0, max=0.99, help="Share of movies in val."),
    test: float = typer.Option(TEST_SHARE, min=0.0, max=0.99, help="Share of movies in test; "
                               "train gets the rest."),
    workers: int = typer.Option(0, min=0, help="Threads decoding posters (0: one per core)."),
) -> None:
    """Clean labels against posters, multi-hot encode, split train/val/test by iterative
    stratification and write DATASET (splits, genres.json, card.json/md, cleaning.json).

    Rows without id or genre, duplicate ids (first kept) and rows whose poster is missing or
    does not decode are dropped; posters without a row are left out. The cleaning report
    accounts for every row and every poster file.
    """
    from rich.console import Console

    from postergenre.cli.progress import RichProgress
    from postergenre.cli.tables import render_cleaning_report
    from postergenre.data.prepare import prepare_dataset

    with RichProgress() as bars:
        report = prepare_dataset(labels, posters, out, seed=seed, val=val, test=test,
                                 workers=workers or None, progress=bars)
    console = Console()
    console.print(render_cleaning_report(report))
    prior = ", ".join(f"{k} {v:.3f}" for k, v in report.prior_top3_hit.items())
    console.print(f"{report.rows['kept']:,} movies, {report.genres} genres -> {out} "
                  f"in {report.seconds:.1f} s; prior top-3 hit: {prior}")


@app.command("stats")
def stats(
    dataset: Path = typer.Argument(..., metavar="DATASET", help="A prepared dataset folder."),
    plot: Path | None = typer.Option(None, "--plot", metavar="PNG",
                              help="Where to write the genre plot "
                                   "(default: DATASET/genres.png)."),
) -> None:
    """Print movies per genre in each split with the prior baseline, and write a genre plot."""
    from rich.console import Console

    from postergenre.cli.tables import genre_table
    from postergenre.data.stats import plot_genre_distribution

    console = Console()
    console.print(genre_table(dataset))
    path = plot_genre_distribution(dataset, plot or Path(dataset) / "genres.png")
    console.print(f"plot: {path}")
