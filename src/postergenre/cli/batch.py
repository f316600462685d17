"""`postergenre batch`: a catalogue (CSV, Parquet or a folder of posters) in, a Parquet table of
genres out, resumable, on this machine or a Ray cluster."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from postergenre.backends import BACKEND_HELP
from postergenre.batch import BATCH_SIZE, ENGINES, FORMATS, PART_ROWS
from postergenre.cli.progress import progress_bar
from postergenre.data.fetch import FetchConfig
from postergenre.errors import PosterGenreError

_FETCH = FetchConfig()


def batch(
    catalogue: Path = typer.Argument(
        ..., metavar="CATALOGUE",
        help="A CSV or Parquet table (MovieGenre.csv as it is) or a folder of posters.",
    ),
    out: Path = typer.Option(..., "--out", "-o",
                             help="Output folder: Parquet parts that pandas.read_parquet reads."),
    model: Path | None = typer.Option(
        None, "--model", "-m",
        help="Run folder to use (default: the model shipped with the package).",
    ),
    engine: str = typer.Option("local", "--engine",
                               help=f"Where the job runs: {' or '.join(ENGINES)}."),
    ray_address: str | None = typer.Option(
        None, "--ray-address",
        help="Ray cluster to join (e.g. ray://head:10001 or auto); default: a local Ray.",
    ),
    actors: int | None = typer.Option(None, "--actors", min=1,
                                      help="Scoring actors of the Ray engine."),
    posters: Path | None = typer.Option(
        None, "--posters",
        help="A folder of downloaded posters: <id>.jpg there is read instead of the poster "
             "column (the output of `data download`).",
    ),
    id_column: str | None = typer.Option(None, "--id-column",
                                         help="Column of the ids (default: imdbId or id)."),
    poster_column: str | None = typer.Option(
        None, "--poster-column",
        help="Column of the poster URLs or paths (default: Poster, poster_url, path or url).",
    ),
    title_column: str | None = typer.Option(
        None, "--title-column",
        help="Column of the titles, fused when the model has a title model (default: Title).",
    ),
    retry_failed: bool = typer.Option(False, "--retry-failed",
                                      help="Score the rows that failed in OUT again."),
    top_k: int = typer.Option(3, "--top-k", "-k", min=1,
                              help="Genres in the top_genres column."),
    output_format: str = typer.Option(
        "parquet", "--format", "-f",
        help="parquet: the parts only; csv or jsonl: also the whole table in OUT/_table.csv "
             "or OUT/_table.jsonl at the end.",
    ),
    batch_size: int = typer.Option(BATCH_SIZE, "--batch-size", min=1,
                                   help="Posters per model call."),
    part_rows: int = typer.Option(PART_ROWS, "--part-rows", min=1,
                                  help="Rows per part file (a killed run redoes at most these)."),
    concurrency: int = typer.Option(_FETCH.concurrency, "--concurrency", min=1,
                                    help="Poster URLs fetched at once."),
    timeout: float = typer.Option(_FETCH.deadline, "--timeout", min=0.1,
                                  help="Seconds one poster download may take in all."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
) -> None:
    """Genres for every row of a movie catalogue, as a Parquet table in OUT.

    Every catalogue row gets one output row: its id, title, source, status ("ok" or why it
    failed), top genres and one probability per genre. Rerun the same command after an
    interruption to resume; --retry-failed scores the failed rows again. The exit code is 1
    when some rows failed (they are in the table with their status).
    """
    import functools
    from dataclasses import replace

    from postergenre.batch.catalogue import Columns, Summary, count_rows, export_table

    if engine not in ENGINES:
        raise typer.BadParameter(f"must be one of {', '.join(ENGINES)}", param_hint="--engine")
    if output_format not in FORMATS:
        raise typer.BadParameter(f"must be one of {', '.join(FORMATS)}", param_hint="--format")
    if engine == "local" and (ray_address is not None or actors is not None):
        raise typer.BadParameter("--ray-address and --actors need --engine ray",
                                 param_hint="--engine")
    fetch = replace(_FETCH, concurrency=concurrency, deadline=timeout,
                    timeout=min(_FETCH.timeout, timeout))
    if engine == "ray":
        try:
            from postergenre.batch.ray_engine import run_ray
        except ImportError as e:
            if (e.name or "").split(".")[0] != "ray":
                raise
            raise PosterGenreError("--engine ray: Ray is not installed "
                                   "(pip install 'postergenre[ray]')") from None
        actor_count: dict[str, Any] = {"actors": actors} if actors else {}
        run: Callable[..., Summary] = functools.partial(run_ray, address=ray_address,
                                                        **actor_count)
    else:
        from postergenre.batch.local import run_local

        run = run_local
    with progress_bar(count_rows(catalogue), "scoring") as advance:
        summary = run(catalogue, out, model=model,
                      columns=Columns(id_column, poster_column, title_column), posters=posters,
                      retry_failed=retry_failed, top_k=top_k, fetch=fetch,
                      batch_size=batch_size, part_rows=part_rows, backend=backend,
                      on_progress=advance)
    if output_format != "parquet":
        print(f"wrote {export_table(out, output_format)}", file=sys.stderr)
    print(f"{summary.rows} rows in {out}: {summary.scored} scored now in "
          f"{summary.seconds:.0f} s, {summary.skipped} already there", file=sys.stderr)
    if summary.failed:
        print(f"{summary.failed} of {summary.rows} rows failed (see their status column); "
              "rerun with --retry-failed to try them again", file=sys.stderr)
        raise typer.Exit(1)
