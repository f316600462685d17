"""`postergenre demo`."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", help="Folder for the demo's files."),
    model: Path | None = typer.Option(None, "--model",
                                      help="A run folder; the shipped model by default."),
) -> None:
    """Run the bundled sample through the pipeline and predict its posters' genres.

    Cleans and splits the sample (prints the cleaning report and the genre table), predicts
    the top-3 genres of each poster with the shipped model, and writes OUT/predictions.png.
    """
    from postergenre.demo import run_demo

    run_demo(out, model)
