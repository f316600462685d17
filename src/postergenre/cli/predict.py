"""`postergenre predict`: genres of poster files, folders and URLs."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import typer

from postergenre.backends import BACKEND_HELP
from postergenre.cli.progress import progress_bar


def _labels_csv(flag: str, use: str) -> Any:
    """An optional labels CSV option; `use` says what its titles are for."""
    return typer.Option(None, flag, help="A labels CSV (MovieGenre.csv or imdbId,Title,Genre) "
                        + use)


def predict(
    paths: list[str] = typer.Argument(
        ..., metavar="PATH...",
        help="Poster files, folders (searched recursively) and http(s) URLs.",
    ),
    model: Path | None = typer.Option(
        None, "--model", "-m",
        help="Run folder to use (default: the model shipped with the package).",
    ),
    top_k: int = typer.Option(3, "--top-k", "-k", min=1, help="Genres to list per poster."),
    threshold: str | None = typer.Option(
        None, "--threshold",
        help="'tuned' lists the genres over their tuned per-genre thresholds instead of the top k; "
             "a number in [0, 1] uses that threshold for every genre.",
    ),
    output_format: str = typer.Option(
        "table", "--format", "-f",
        help="table: 'Title   Genre (p), ...'; json: one object per line with every score; "
             "csv: a header, then path, title, top genres and every score.",
    ),
    labels: Path | None = _labels_csv(
        "--labels", "to show titles of posters named <imdbId>.jpg; titles of the run's dataset "
        "are used when it is present."),
    title: str | None = typer.Option(
        None, "--title",
        help='The movie\'s title, e.g. "Nerve (2016)", fused with the poster when the model '
             "has a title model (one poster only).",
    ),
    titles_file: Path | None = _labels_csv(
        "--titles", "whose titles are fused with posters named <imdbId>.jpg; posters without a "
        "row are scored from the poster only."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Posters per model call."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
) -> None:
    """Predict the genres of poster files, folders and http(s) URLs.

    Without --model the shipped model is used. Inputs that cannot be read (a missing file, a
    folder without posters, a URL that fails) are reported on stderr (one line each) and the
    others are still predicted; the exit code is then 1. A URL download attempt is given up
    after 15 s without a byte or 30 s in all, and tried up to 3 times on a timeout, a broken
    connection or a server error.
    """
    import numpy as np

    from postergenre.cli.formats import FORMATS, csv_header, csv_row, format_table_row
    from postergenre.data.inputs import (
        expand_inputs,
        file_name,
        imdb_id,
        load_titles,
        read_titles,
        title_of,
    )
    from postergenre.predict import Predictor, json_record, predict_stream

    if output_format not in FORMATS:
        raise typer.BadParameter(f"must be one of {', '.join(FORMATS)}", param_hint="--format")
    fixed = _parse_threshold(threshold)
    bad_inputs: list[str] = []  # folders without posters: reported, the other inputs still done
    sources = expand_inputs(paths, on_error=bad_inputs.append)
    for message in bad_inputs:
        print(f"error: {message}", file=sys.stderr)
    if not sources:
        print(f"{len(bad_inputs)} of {len(paths)} inputs failed", file=sys.stderr)
        raise typer.Exit(1)
    if title is not None and len(sources) != 1:
        raise typer.BadParameter(f"gives the title of one poster, not {len(sources)}",
                                 param_hint="--title")
    predictor = Predictor.load(model, backend=backend, batch_size=batch_size, threshold=fixed)
    titles = load_titles(labels, predictor.run.dataset)
    fuse_titles: dict[str, str] | None = None  # source -> the title fused with its poster
    if title is not None:
        fuse_titles = {sources[0]: title.strip()} if title.strip() else {}
    elif titles_file is not None:
        table, bad = read_titles(titles_file)
        for line in bad:
            print(f"warning: {line} (skipped)", file=sys.stderr)
        fuse_titles = {s: t for s in sources if (t := title_of(s, table))}
    if fuse_titles is not None:
        titles.update({i: t for s, t in fuse_titles.items() if (i := imdb_id(s)) is not None})
        if predictor.title_side is None:
            print("warning: the model has no title model: posters only", file=sys.stderr)
    names = {s: (fuse_titles or {}).get(s) or title_of(s, titles) or file_name(s)
             for s in sources}
    width = min(max((len(n) for n in names.values()), default=0), 48)

    writer = csv.writer(sys.stdout, lineterminator="\n") if output_format == "csv" else None
    if writer is not None:
        writer.writerow(csv_header(predictor.genres))
    failed = len(bad_inputs)
    with progress_bar(len(sources)) as advance:
        for p in predict_stream(predictor, sources, on_done=advance, titles=fuse_titles):
            if p.error is not None:
                failed += 1
                print(f"error: {p.error}", file=sys.stderr)
                continue
            assert p.probabilities is not None  # set whenever `error` is not
            probs, signals, used = p.probabilities[None], None, np.array([p.fused])
            if fuse_titles is not None:
                signals = ["poster", "title"] if p.fused else ["poster"]
            top = (predictor.over_threshold(probs, used if signals else None)
                   if threshold is not None else predictor.top_k(probs, top_k))[0]
            title = (fuse_titles or {}).get(p.source) or title_of(p.source, titles)
            if output_format == "table":
                print(format_table_row(names[p.source], top, width))
            elif output_format == "json":
                record = json_record(p.source, title, top, probs[0], predictor.genres, signals)
                print(json.dumps(record, ensure_ascii=False))
            elif writer is not None:
                writer.writerow(csv_row(p.source, title, top, probs[0]))
            sys.stdout.flush()
    if failed:
        print(f"{failed} of {len(sources) + len(bad_inputs)} inputs failed", file=sys.stderr)
        raise typer.Exit(1)


def _parse_threshold(value: str | None) -> float | None:
    if value is None or value == "tuned":
        return None
    try:
        t = float(value)
    except ValueError:
        t = -1.0
    if not 0.0 <= t <= 1.0:
        raise typer.BadParameter("must be 'tuned' or a number in [0, 1]", param_hint="--threshold")
    return t
