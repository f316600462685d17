"""What `predict` and `explain` are given: files, folders and URLs, and the titles of posters.

- `expand_inputs`: folders replaced by their poster images; files and URLs kept as given;
- `read_input`: one input decoded to pixels (a URL fetched with `data.fetch`), every error one
  line naming the input;
- titles: `read_titles` (a labels CSV), `load_titles` (a labels CSV and/or a dataset's splits),
  `imdb_id` / `title_of` (the imdbId in a poster's file name, `114709.jpg` or `tt0114709.jpg`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from postergenre.data.fetch import FetchConfig, fetch, is_url
from postergenre.data.images import IMAGE_SUFFIXES, load_poster_array
from postergenre.errors import PosterGenreError

__all__ = ["expand_inputs", "file_name", "imdb_id", "is_url", "load_titles", "read_input",
           "read_titles", "title_of"]


def expand_inputs(inputs: Sequence[str | os.PathLike],
                  on_error: Callable[[str], None] | None = None) -> list[str]:
    """Files and URLs as given; folders replaced by their image files (recursively, sorted).

    Nothing is checked here beyond walking folders: a missing file is reported when it is read.
    A folder without images (or one that cannot be walked) is an error: raised, or, with
    `on_error`, reported through it (one line) while the other inputs are kept.
    """
    out: list[str] = []
    for item in inputs:
        path = Path(item)
        if not is_url(item) and path.is_dir():
            try:
                found = _images_in(path)
            except PosterGenreError as e:
                if on_error is None:
                    raise
                on_error(str(e))
                continue
            out.extend(str(p) for p in found)
        else:
            out.append(str(item))
    return out


def _images_in(folder: Path) -> list[Path]:
    found: list[Path] = []
    try:
        for root, _, names in os.walk(folder, onerror=_raise):  # links to folders not followed
            found += [p for n in names if (p := Path(root, n)).suffix.lower() in IMAGE_SUFFIXES
                      and p.is_file()]
    except OSError as e:
        raise PosterGenreError(f"{folder}: cannot read the folder ({e.strerror})") from None
    if not found:
        raise PosterGenreError(f"{folder}: folder holds no poster images")
    return sorted(found)


def _raise(error: OSError) -> None:
    raise error


def read_input(source: str, size: tuple[int, int],
               config: FetchConfig = FetchConfig()) -> np.ndarray:
    """One poster file or URL as (H, W, 3) uint8 at `size` (width, height). Raises
    PosterGenreError, one line starting with `source`: a URL that cannot be fetched
    (`FetchError`) or bytes that are not a usable poster."""
    if not is_url(source):
        return load_poster_array(source, size)
    data = fetch(source, config)
    try:
        return load_poster_array(data, size)
    except PosterGenreError as e:
        raise type(e)(f"{source}: {str(e).removeprefix('uploaded bytes: ')}") from None


# --- titles -------------------------------------------------------------------------------


def load_titles(labels: str | os.PathLike | None = None,
                dataset: str | os.PathLike | None = None) -> dict[int, str]:
    """imdbId -> title, from the splits of `dataset` (a prepared dataset folder; skipped when
    it is absent) and a labels CSV (MovieGenre.csv or imdbId,Title,Genre), which wins."""
    titles: dict[int, str] = {}
    if dataset and Path(dataset).is_dir():
        from postergenre.data.dataset import SPLITS, load_split

        for name in SPLITS:
            try:
                split = load_split(Path(dataset), name)
            except PosterGenreError:
                continue
            titles.update((int(i), t) for i, t in zip(split.ids, split.titles, strict=True) if t)
    if labels is not None:
        titles.update(read_titles(labels)[0])
    return titles


def read_titles(path: str | os.PathLike) -> tuple[dict[int, str], list[str]]:
    """imdbId -> title from a labels CSV (MovieGenre.csv or imdbId,Title,Genre), and one line
    for each row that cannot be used (no integer imdbId, no title); those rows are skipped."""
    from postergenre.data.movies import read_labels

    labels = read_labels(Path(path))
    titles: dict[int, str] = {}
    bad: list[str] = []
    for row, i, title in zip(labels.table["row"], labels.table["imdbId"],
                             labels.table["title"], strict=True):
        if i is None or i is pd.NA:
            bad.append(f"{path}: row {row}: no integer imdbId")
        elif not title:
            bad.append(f"{path}: row {row}: no title")
        else:
            titles[int(i)] = title
    return titles, bad


def file_name(source: str) -> str:
    """The last part of a path or URL (query string dropped)."""
    if is_url(source):
        return source.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or source
    return Path(source).name


def imdb_id(source: str) -> int | None:
    """The IMDB id in a poster's file name (`114709.jpg`, `tt0114709.jpg`), else None."""
    stem = file_name(source).rsplit(".", 1)[0].removeprefix("tt")
    return int(stem) if stem.isascii() and stem.isdigit() else None  # '²³'.isdigit() is True


def title_of(source: str, titles: dict[int, str]) -> str | None:
    """The title of the poster `source` by the imdbId in its file name, else None."""
    i = imdb_id(source)
    return None if i is None else titles.get(i)
