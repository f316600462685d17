"""`postergenre explain`: Grad-CAM heat maps of posters' top genres, as PNG overlays and arrays."""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def explain(
    paths: list[str] = typer.Argument(
        ..., metavar="POSTER...", help="Poster files, folders (searched recursively) and URLs."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the heat maps (created)."),
    genre: list[str] | None = typer.Option(
        None, "--genre", "-g",
        help="Explain this genre (repeatable) instead of each poster's top genres."),
    model: Path | None = typer.Option(
        None, "--model", "-m", help="Run folder (default: the model shipped with the package)."),
    top_k: int = typer.Option(3, "--top-k", "-k", min=1, help="Top genres to explain."),
    labels: Path | None = typer.Option(
        None, "--labels", help="A labels CSV, for the titles of posters named <imdbId>.jpg."),
    title: str | None = typer.Option(
        None, "--title", help='The title of the one poster given, e.g. "Nerve (2016)": with a '
        "title model, its words' pushes on each genre are listed."),
) -> None:
    """Heat maps of why the model gives each poster its top genres (Grad-CAM).

    For each poster and explained genre: OUT/NAME_GENRE.png (the heat map over the poster) and
    OUT/NAME_GENRE.npy (the map, float32 in [0, 1], at the model's input size); and
    OUT/NAME_summary.png, the maps side by side with their probabilities. The run's PyTorch
    model is explained whatever backend `predict` uses. Unreadable inputs are reported on
    stderr and the others still explained; the exit code is then 1.
    """
    from postergenre.data.inputs import expand_inputs, file_name, load_titles, read_input, title_of
    from postergenre.errors import PosterGenreError
    from postergenre.explain import Explainer, safe_name, write_explanation
    from postergenre.io import ensure_writable_dir

    sources = expand_inputs(paths)
    if title is not None and len(sources) != 1:
        raise typer.BadParameter(f"gives the title of one poster, not {len(sources)}",
                                 param_hint="--title")
    explainer = Explainer.load(model)
    for g in genre or []:
        explainer.genre_index(g)  # an unknown genre fails before any work
    out_dir = ensure_writable_dir(out)
    titles = load_titles(labels, explainer.run.dataset)
    failed, stems = 0, set()
    for source in sources:
        try:
            image = read_input(source, explainer.input_size)
        except PosterGenreError as e:
            failed += 1
            print(f"error: {e}", file=sys.stderr)
            continue
        title_given = title if title is not None else title_of(source, titles)

        explanation = explainer.explain_array(image, genre or None, top_k, source, title_given)
        stem = safe_name(file_name(source).rsplit(".", 1)[0])
        while stem in stems:  # two inputs of the same name
            stem += "-1"
        stems.add(stem)
        write_explanation(explanation, out_dir, stem)
        parts = ", ".join(f"{g} ({explanation.probability(g):.2f})"
                          for g in explanation.genres)
        print(f"{title_given or file_name(source)}   {parts}   -> {out_dir / stem}_*.png")
        for g, words in (explanation.title_words or {}).items():
            print(f"    {g}: " + ", ".join(f"{w} {c:+.2f}" for w, c in words[:5]))
    if failed:
        print(f"{failed} of {len(sources)} inputs failed", file=sys.stderr)
        raise typer.Exit(1)
