"""The dataset directory format, written by `data prepare` and read by everything after it.

    DATASET/
      genres.json        {"genres": [...]}: the sorted vocabulary, the column order of labels
      train.csv          imdbId, poster, title, genres, then one 0/1 column per genre
      val.csv
      test.csv
      card.json          counts per genre per split, labels per movie, prior baselines
      card.md            the same card for people
      cleaning.json      what was dropped and why; accounts for every row and poster

`poster` holds the poster's path as given to `data prepare`, made absolute.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from postergenre.errors import DatasetError
from postergenre.genres import parse_genres
from postergenre.io import atomic_open, atomic_write_json

SPLITS = ("train", "val", "test")
BASE_COLUMNS = ["imdbId", "poster", "title", "genres"]


@dataclass
class Split:
    """One split of a dataset: plain arrays, row-aligned."""

    name: str
    ids: np.ndarray  # (n,) int64 IMDB ids
    paths: list[Path]  # poster files
    titles: list[str]
    labels: np.ndarray  # (n, n_genres) float32 multi-hot
    genres: list[str]  # the vocabulary, the column order of `labels`

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray | slice) -> Split:
        idx = np.arange(len(self))[index]
        return Split(
            self.name,
            self.ids[idx],
            [self.paths[i] for i in idx],
            [self.titles[i] for i in idx],
            self.labels[idx],
            self.genres,
        )


def load_genres(dataset: str | Path) -> list[str]:
    path = Path(dataset) / "genres.json"
    if not path.is_file():
        raise DatasetError(f"{dataset}: not a dataset folder (no genres.json; run `data prepare`)")
    return list(json.loads(path.read_text(encoding="utf-8"))["genres"])


def load_split(dataset: str | Path, name: str) -> Split:
    """Read DATASET/<name>.csv into a Split."""
    if name not in SPLITS:
        raise DatasetError(f"split must be one of {', '.join(SPLITS)}, not {name!r}")
    genres = load_genres(dataset)
    path = Path(dataset) / f"{name}.csv"
    if not path.is_file():
        raise DatasetError(f"{path}: split file is missing")
    df = pd.read_csv(path, dtype={"imdbId": "int64", "poster": str, "title": str, "genres": str},
                     keep_default_na=False)
    missing = [c for c in BASE_COLUMNS + genres if c not in df.columns]
    if missing:
        raise DatasetError(f"{path}: missing columns {', '.join(missing[:5])}")
    return Split(
        name=name,
        ids=df["imdbId"].to_numpy(np.int64),
        paths=[Path(p) for p in df["poster"]],
        titles=df["title"].tolist(),
        labels=df[genres].to_numpy(np.float32),
        genres=genres,
    )


def write_split(dataset: str | Path, name: str, table: pd.DataFrame, genres: list[str]) -> Path:
    """Write a split atomically. `table` has imdbId, poster, title and genres ('A|B') columns."""
    out = table[BASE_COLUMNS].copy()
    index = {g: i for i, g in enumerate(genres)}
    y = np.zeros((len(out), len(genres)), dtype=np.uint8)
    for row, text in enumerate(out["genres"]):
        for g in parse_genres(text):
            y[row, index[g]] = 1
    out = pd.concat([out.reset_index(drop=True), pd.DataFrame(y, columns=genres)], axis=1)
    path = Path(dataset) / f"{name}.csv"
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        out.to_csv(f, index=False)
    return path


def write_genres(dataset: str | Path, genres: list[str]) -> None:
    atomic_write_json(Path(dataset) / "genres.json", {"genres": list(genres)})
