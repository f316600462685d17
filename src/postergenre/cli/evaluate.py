"""`postergenre evaluate`: a run's metrics on a dataset split, beside the prior baseline."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from postergenre.backends import BACKEND_HELP
from postergenre.cli.progress import progress_bar


def evaluate(
    run: Path = typer.Argument(..., help="The run folder to evaluate (what `train` wrote)."),
    split: str = typer.Option("test", "--split", help="Dataset split: train, val or test."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Where to write metrics.json and report.html (default: RUN)."),
    data: Path | None = typer.Option(
        None, "--data", help="Dataset folder (default: the one named in the run's config)."),
    n_boot: int = typer.Option(1000, "--bootstrap", min=0,
                               help="Bootstrap resamples for the 95% intervals (0: none)."),
    no_report: bool = typer.Option(False, "--no-report", help="Write metrics.json only."),
    titles: bool = typer.Option(True, "--titles/--no-titles", help="When the run has a title "
                                "model, also score the posters fused with their titles."),
    gallery: int = typer.Option(
        4, "--gallery", min=0,
        help="Per genre, the report shows this many most confident hits and false alarms "
             "with their heat maps (Grad-CAM; 0: no gallery)."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
) -> None:
    """Score a run on a dataset split, every metric beside the prior baseline.

    Top-3 hit, macro/micro AP, ROC-AUC, F1 at thresholds tuned on val, Hamming loss,
    precision/recall@k, each beside the prior (constant train genre frequencies), with
    bootstrap 95% intervals. Writes metrics.json and a self-contained report.html.
    """
    from postergenre.data.dataset import SPLITS, load_split
    from postergenre.run import load_run
    from postergenre.scoring import evaluate_run

    if split not in SPLITS:
        raise typer.BadParameter(f"must be one of {', '.join(SPLITS)}", param_hint="--split")
    r = load_run(run)  # a bad run folder is reported before anything else
    dataset = data or r.dataset
    total = 0
    if dataset:  # the split, plus val when thresholds must be tuned there
        total = len(load_split(dataset, split))
        if not all(g in r.thresholds for g in r.genres):
            total += len(load_split(dataset, "val"))
    failures: list[str] = []
    with progress_bar(total) as advance:
        results = evaluate_run(run, data, split, out, n_boot=n_boot, backend=backend,
                               report=not no_report, titles=titles, on_done=advance,
                               on_error=failures.append, gallery=gallery)
    for message in failures[:10]:
        print(f"warning: skipped {message}", file=sys.stderr)
    if len(failures) > 10:
        print(f"warning: {len(failures) - 10} more posters skipped", file=sys.stderr)
    _print_summary(results)
    where = out or run
    typer.echo(f"wrote {where / 'metrics.json'}"
               + ("" if no_report else f" and {where / 'report.html'}"))


def _print_summary(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from postergenre.evaluate.metrics import HEADLINE

    model, prior = results["model"], results["prior"]
    columns = {"model" if "fused" not in results else "poster only": model}
    if "fused" in results:
        columns["poster + title"] = results["fused"]
    columns["prior"] = prior
    table = Table(title=f"{results['split']} split: {model['n_posters']} posters")
    for column in ("metric", *columns):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key, *_ in HEADLINE:
        cells = []
        for res in columns.values():
            value = res.get(key)
            ci = res.get("ci", {}).get(key)
            text = "-" if value is None else f"{value:.3f}"
            if ci and None not in ci:
                text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
            cells.append(text)
        table.add_row(key, *cells)
    Console().print(table)
    if model["excluded_genres"]:
        typer.echo(f"left out of macro averages (< {model['min_positives']} positives): "
                   + ", ".join(model["excluded_genres"]))
