"""`postergenre data ...`: download posters, prepare a dataset, show its statistics."""

from __future__ import annotations

import typer

app = typer.Typer(help="Download posters, prepare a dataset, show its statistics.",
                  no_args_is_help=True)

# Commands are added below by their owners: download, prepare, stats.
