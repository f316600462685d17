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

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from postergenre.errors import DatasetError
from postergenre.genres import parse_genres
from postergenre.io import atomic_open, atomic_write_json

if TYPE_CHECKING:
    import pandas as pd

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


# Why a split may not be empty (test may: a dataset can be prepared with --test 0).
NEEDED = {"train": "training and the prior baseline need it",
          "val": "thresholds are tuned and models are selected on it"}


def read_text(path: Path, what: str) -> str:
    """A dataset file's UTF-8 text; a one-line DatasetError if it is binary or not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read {what} ({e.strerror})") from None
    if b"\x00" in data:
        raise DatasetError(f"{path}: {what} is binary, not text (rerun `data prepare`)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: {what} is not UTF-8 text (byte {data[e.start]:#04x} at "
                           f"offset {e.start}; rerun `data prepare`)") from None


def load_genres(dataset: str | os.PathLike) -> list[str]:
    path = Path(dataset) / "genres.json"
    if not path.is_file():
        raise DatasetError(f"{dataset}: not a dataset folder (no genres.json; run `data prepare`)")
    try:
        genres = json.loads(read_text(path, "the genre list"))["genres"]
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        reason = e.msg if isinstance(e, json.JSONDecodeError) else 'no "genres" list'
        raise DatasetError(f"{path}: not a genre list ({reason})") from None
    if (not isinstance(genres, list) or not genres
            or not all(isinstance(g, str) and g for g in genres) or len(set(genres)) < len(genres)):
        raise DatasetError(f"{path}: \"genres\" must be a list of distinct genre names")
    return genres


def load_split(dataset: str | os.PathLike, name: str, allow_empty: bool | None = None) -> Split:
    """Read DATASET/<name>.csv into a Split.

    An empty train or val split is an error (see NEEDED) unless `allow_empty` is True;
    the test split may be empty unless `allow_empty` is False.
    """
    if name not in SPLITS:
        raise DatasetError(f"split must be one of {', '.join(SPLITS)}, not {name!r}")
    genres = load_genres(dataset)
    path = Path(dataset) / f"{name}.csv"
    if not path.is_file():
        raise DatasetError(f"{path}: split file is missing")
    text = read_text(path, "the split file")
    import pandas as pd  # here: the CLI's help reads this module's names without pandas

    try:
        df = pd.read_csv(io.StringIO(text), dtype={"poster": str, "title": str, "genres": str},
                         keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else "unreadable"
        raise DatasetError(f"{path}: not a readable split file ({reason})") from None
    missing = [c for c in BASE_COLUMNS + genres if c not in df.columns]
    if missing:
        raise DatasetError(f"{path}: missing columns {', '.join(missing[:5])}")
    if allow_empty is None:
        allow_empty = name not in NEEDED
    if len(df) == 0 and not allow_empty:
        why = NEEDED.get(name, "it is the split asked for")
        raise DatasetError(f"{path}: the {name} split is empty; {why} (rerun `data prepare`)")
    ids = pd.to_numeric(df["imdbId"], errors="coerce")
    labels = df[genres].apply(pd.to_numeric, errors="coerce")
    bad = (ids.isna() | (ids != ids.round()) | (ids.abs() >= 2**63)).to_numpy()
    if bad.any():
        raise DatasetError(f"{path}: imdbId must be whole numbers (row {int(np.argmax(bad)) + 1})")
    if not labels.isin([0, 1]).all().all():
        raise DatasetError(f"{path}: genre columns must hold 0 or 1")
    return Split(
        name=name,
        ids=ids.to_numpy(np.int64),
        paths=[Path(p) for p in df["poster"]],
        titles=df["title"].tolist(),
        labels=labels.to_numpy(np.float32),
        genres=genres,
    )


def write_split(dataset: str | Path, name: str, table: pd.DataFrame, genres: list[str]) -> Path:
    """Write a split atomically. `table` has imdbId, poster, title and genres ('A|B') columns."""
    import pandas as pd

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


def write_trainval(dataset: str | Path, out: str | Path) -> Path:
    """A copy of DATASET whose train split is its train and val tables concatenated (for a final
    fit on both); val and test are kept as they are, so evaluation still works. Rows are
    copied as written, posters stay where they are. Returns `out`."""
    import pandas as pd

    dataset, out = Path(dataset), Path(out)
    if out.resolve() == dataset.resolve():
        raise DatasetError(f"{out}: is the input dataset; the train + val copy needs a folder "
                           "of its own")
    genres = load_genres(dataset)
    tables = []
    for name in SPLITS:
        load_split(dataset, name)  # checked before anything is written
        tables.append(pd.read_csv(io.StringIO(read_text(dataset / f"{name}.csv", "the split "
                                                        "file")), dtype=str,
                                  keep_default_na=False))
    train, val, test = tables
    for name, table in (("train", pd.concat([train, val], ignore_index=True)), ("val", val),
                        ("test", test)):
        with atomic_open(out / f"{name}.csv", "w", encoding="utf-8", newline="") as f:
            table.to_csv(f, index=False)
    write_genres(out, genres)
    return out
