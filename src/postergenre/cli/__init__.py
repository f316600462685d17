"""The `postergenre` command: a Typer app whose subcommands are thin wrappers over the library.

Exit codes: 0 success; 1 an error explained in one line (bad input, missing file) or, for
commands over many inputs, at least one input failed; 2 a usage error (unknown option...).
"""

from __future__ import annotations

import sys

import typer

from postergenre import __version__
from postergenre.cli import data, demo, evaluate, explain, export, predict, serve, train
from postergenre.errors import PosterGenreError

app = typer.Typer(
    name="postergenre",
    help="Build, evaluate and serve multi-label movie-genre classifiers from poster images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data.app, name="data")
app.command("train")(train.train)
app.command("evaluate")(evaluate.evaluate)
app.command("predict")(predict.predict)
app.command("explain")(explain.explain)
app.command("export")(export.export)
app.command("serve")(serve.serve)
app.command("demo")(demo.demo)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"postergenre {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Build, evaluate and serve multi-label movie-genre classifiers from poster images."""


def main() -> None:
    try:
        app()
    except PosterGenreError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        sys.exit(130)
