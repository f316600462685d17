"""Labels + posters -> a dataset: clean, multi-hot encode, split by iterative stratification.

Each input row ends in exactly one of ROW_OUTCOMES, checked in that order (a duplicate id
keeps its first row; a poster must fully decode), and each file of the posters folder in
exactly one of POSTER_OUTCOMES (sub-folders are not searched); the report checks both sums.
docs/data.md defines each outcome. A data set that cannot make a split (fewer than
MIN_MOVIES kept movies, or all with the same genres) is a one-line error. The vocabulary is
the sorted set of the kept genres; the split is iterative stratification (`iterstrat`),
reproducible from the seed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from postergenre.data import stats
from postergenre.data.dataset import SPLITS, write_genres, write_split
from postergenre.data.images import IMAGE_SUFFIXES, open_poster
from postergenre.data.movies import read_labels
from postergenre.defaults import SPLIT_SEED, TEST_SHARE, VAL_SHARE
from postergenre.errors import DatasetError, InvalidImageError
from postergenre.genres import SEPARATOR, build_vocabulary, multi_hot, parse_genres
from postergenre.io import atomic_write_json, atomic_write_text, ensure_writable_dir
from postergenre.progress import SILENT, Progress

ROW_OUTCOMES = ("kept", "missing_id", "missing_genre", "duplicate_id", "poster_missing",
                "poster_invalid")
POSTER_OUTCOMES = ("kept", "invalid", "row_dropped", "without_row", "duplicate_file",
                   "not_a_poster", "unreadable")
MAX_SEED = 2**32 - 1  # what numpy's RandomState accepts
MIN_MOVIES = 10  # fewer kept movies cannot make three useful splits


@dataclass
class PrepareReport:
    """What `prepare_dataset` did: every row and poster file accounted for, the split sizes."""

    labels: str
    posters: str
    out: str
    layout: str
    rows_total: int
    rows: dict[str, int]
    posters_total: int
    poster_files: dict[str, int]
    fallback_lines: int = 0
    duplicate_conflicts: list[dict] = field(default_factory=list)
    invalid_posters: list[dict] = field(default_factory=list)
    dropped_rows: dict[str, list[int]] = field(default_factory=dict)
    posters_without_row: list[str] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    genres: int = 0
    prior_top3_hit: dict[str, float | None] = field(default_factory=dict)
    seed: int = 0
    ratios: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def balanced(self) -> bool:
        """True when outcomes sum to the totals, for rows and for poster files."""
        return (sum(self.rows.values()) == self.rows_total
                and sum(self.poster_files.values()) == self.posters_total)

    def to_dict(self) -> dict:
        return asdict(self)


def index_posters(posters: Path) -> tuple[dict[int, Path], dict[str, list[str]]]:
    """Map imdbId -> poster file; also the names that are duplicates or not poster files."""
    by_id: dict[int, Path] = {}
    odd: dict[str, list[str]] = {"duplicate_file": [], "not_a_poster": [], "unreadable": []}
    rank = {ext: i for i, ext in enumerate(IMAGE_SUFFIXES)}
    files = []
    try:
        with os.scandir(posters) as entries:
            for entry in entries:
                kind = _entry_kind(entry)
                if kind == "file":
                    files.append(entry.name)
                elif kind == "unreadable":
                    odd["unreadable"].append(entry.name)
    except OSError as e:
        raise DatasetError(f"{posters}: cannot list the posters folder ({e.strerror})") from None
    odd["unreadable"].sort()
    for name in sorted(files):
        stem, ext = os.path.splitext(name)
        if not (stem.isascii() and stem.isdigit()) or ext.lower() not in rank:
            odd["not_a_poster"].append(name)
            continue
        key, path = int(stem), posters / name
        if key in by_id:
            keep, drop = sorted([by_id[key], path], key=lambda p: rank[p.suffix.lower()])
            by_id[key] = keep
            odd["duplicate_file"].append(drop.name)
        else:
            by_id[key] = path
    return by_id, odd


def _entry_kind(entry: os.DirEntry) -> str:
    """'file', 'folder' (not searched) or 'unreadable' (a dangling link, a link loop...)."""
    try:
        if entry.is_file():
            return "file"
        if entry.is_dir():
            return "folder"
        return "unreadable" if entry.is_symlink() else "other"
    except OSError:  # ELOOP and the like
        return "unreadable"


def check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise DatasetError(f"--seed {seed}: must be a whole number in [0, {MAX_SEED}]")


def check_splittable(source: Path, kept_genres: list[list[str]]) -> None:
    """Refuse a data set too small to split, or one whose movies all share the same genres."""
    if len(kept_genres) < MIN_MOVIES:
        raise DatasetError(f"{source}: only {len(kept_genres)} movies left after cleaning; "
                           f"at least {MIN_MOVIES} are needed to split train/val/test")
    sets = {frozenset(g) for g in kept_genres}
    if len(sets) == 1:
        only = SEPARATOR.join(sorted(next(iter(sets))))
        raise DatasetError(f"{source}: every movie left after cleaning has the genres {only}; "
                           "a classifier needs movies with different genres")


def _check(path: Path) -> str | None:
    try:
        open_poster(path)
    except InvalidImageError as e:
        return str(e).removeprefix(f"{path}: ")
    return None


def validate_posters(paths: Sequence[Path], workers: int | None = None,
                     progress: Progress = SILENT) -> list[str | None]:
    """Fully decode each poster (threads: Pillow decodes without the GIL).

    Returns, per path, None when the poster is usable or the one-line reason it is not.
    """
    progress.start("checking posters", len(paths))
    out = []
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        for result in pool.map(_check, paths, chunksize=64):
            out.append(result)
            progress.advance("checking posters")
    progress.finish("checking posters")
    return out


def check_ratios(val: float, test: float) -> None:
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise DatasetError(f"split ratios val={val} and test={test} must be in [0, 1) with "
                           "val + test < 1")


def split_indices(y: np.ndarray, val: float = 0.15, test: float = 0.15,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Row indices of train/val/test by iterative stratification, sorted, reproducible.

    The test split is carved first, then val from the rest, each with iterstrat's
    MultilabelStratifiedShuffleSplit driven by one RandomState seeded with `seed`.
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    check_ratios(val, test)
    check_seed(seed)
    rng = np.random.RandomState(seed)

    def carve(index: np.ndarray, share: float) -> tuple[np.ndarray, np.ndarray]:
        if share == 0:
            return index, index[:0]
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=share,
                                                    random_state=rng)
        try:
            rest, part = next(splitter.split(np.zeros(len(index)), y[index]))
        except ValueError as e:
            raise DatasetError(
                f"cannot split {len(index)} movies with ratio {share}: {e}"
            ) from None
        return index[rest], index[part]

    rest, test_idx = carve(np.arange(len(y)), test)
    train_idx, val_idx = carve(rest, val / (1 - test))
    return {"train": np.sort(train_idx), "val": np.sort(val_idx), "test": np.sort(test_idx)}


def clean_rows(table: pd.DataFrame, by_id: dict[int, Path], workers: int | None = None,
               progress: Progress = SILENT) -> tuple[pd.Series, pd.Series, list[dict], list[dict]]:
    """Each row's outcome (ROW_OUTCOMES), its parsed genres, duplicate conflicts, bad posters."""
    ids = table["imdbId"]
    genre_lists = table["genre"].map(parse_genres)
    outcome = pd.Series("kept", index=table.index, dtype=object)
    outcome[ids.isna()] = "missing_id"
    outcome[(outcome == "kept") & (genre_lists.str.len() == 0)] = "missing_genre"
    # duplicates among rows that survived so far: a row without genre shadows nothing
    candidates = outcome == "kept"
    outcome[candidates & ids.where(candidates).duplicated(keep="first")] = "duplicate_id"
    conflicts = _conflicts(table[candidates], genre_lists[candidates])

    has_file = ids.map(lambda i: pd.notna(i) and int(i) in by_id).astype(bool)
    outcome[(outcome == "kept") & ~has_file] = "poster_missing"
    check = table.index[outcome == "kept"]
    paths = [by_id[int(ids[i])] for i in check]
    invalid = []
    for i, path, err in zip(check, paths, validate_posters(paths, workers, progress),
                            strict=True):
        if err is not None:
            outcome[i] = "poster_invalid"
            invalid.append({"row": int(table.at[i, "row"]), "imdbId": int(ids[i]),
                            "file": path.name, "error": err})
    return outcome, genre_lists, conflicts, invalid


def poster_outcomes(ids: pd.Series, outcome: pd.Series, by_id: dict[int, Path],
                    odd: dict[str, list[str]]) -> tuple[dict[str, int], list[str]]:
    """Each poster file's outcome count (POSTER_OUTCOMES) and the files without a row."""
    row_ids = set(ids.dropna().astype(int))
    kept = set(ids[outcome == "kept"].astype(int))
    invalid = set(ids[outcome == "poster_invalid"].astype(int))
    without_row = sorted(by_id[i].name for i in by_id if i not in row_ids)
    counts = {
        "kept": len(kept),
        "invalid": len(invalid),
        "row_dropped": sum(1 for i in by_id if i in row_ids and i not in kept | invalid),
        "without_row": len(without_row),
        "duplicate_file": len(odd["duplicate_file"]),
        "not_a_poster": len(odd["not_a_poster"]),
        "unreadable": len(odd["unreadable"]),
    }
    return counts, without_row


def prepare_dataset(labels: str | Path, posters: str | Path, out: str | Path, *,
                    seed: int = SPLIT_SEED, val: float = VAL_SHARE, test: float = TEST_SHARE,
                    workers: int | None = None,
                    progress: Progress = SILENT) -> PrepareReport:
    """Clean `labels` against the `posters` folder and write a dataset to `out`.

    Raises DatasetError (or PosterGenreError for an unwritable `out`) with a one-line reason
    for unusable inputs; a row or poster that cannot be used is dropped and reported instead.
    """
    start = time.perf_counter()
    posters = Path(posters)
    if not posters.is_dir():
        reason = "is not a folder" if posters.exists() else "does not exist"
        raise DatasetError(f"{posters}: posters folder {reason}")
    check_seed(seed)
    movies = read_labels(labels)
    check_ratios(val, test)
    out = ensure_writable_dir(out)
    posters = Path(os.path.abspath(posters))  # absolute, '..' folded, symlinks kept
    by_id, odd = index_posters(posters)

    table = movies.table
    outcome, genre_lists, conflicts, invalid = clean_rows(table, by_id, workers, progress)
    poster_files, without_row = poster_outcomes(table["imdbId"], outcome, by_id, odd)
    keep = outcome == "kept"
    if not keep.any():
        raise DatasetError(f"{movies.source}: no movie left after cleaning against {posters} "
                           f"({_summary(outcome)})")

    kept_genres = genre_lists[keep].tolist()
    check_splittable(movies.source, kept_genres)
    vocabulary = build_vocabulary(kept_genres)
    y = multi_hot(kept_genres, vocabulary)
    parts = split_indices(y, val, test, seed)
    ratios = {"train": 1 - val - test, "val": val, "test": test}
    empty = [name for name in SPLITS if ratios[name] > 0 and len(parts[name]) == 0]
    if empty:
        raise DatasetError(f"{movies.source}: {len(y)} movies are too few for the "
                           f"{' and '.join(empty)} split at these ratios; add movies or raise "
                           "the ratio")
    kept_ids = table.loc[keep, "imdbId"].astype("int64").to_numpy()
    dataset = pd.DataFrame({
        "imdbId": kept_ids,
        "poster": [str(by_id[i]) for i in kept_ids],
        "title": table.loc[keep, "title"].to_numpy(),
        "genres": [SEPARATOR.join(g) for g in kept_genres],
    })
    write_genres(out, vocabulary)
    for name in SPLITS:
        write_split(out, name, dataset.iloc[parts[name]], vocabulary)
    info = stats.card({name: y[parts[name]] for name in SPLITS}, vocabulary)

    report = PrepareReport(
        labels=str(labels), posters=str(posters), out=str(out), layout=movies.layout,
        rows_total=len(table),
        rows={k: int((outcome == k).sum()) for k in ROW_OUTCOMES},
        posters_total=len(by_id) + sum(len(v) for v in odd.values()),
        poster_files=poster_files,
        fallback_lines=movies.fallback_lines,
        duplicate_conflicts=conflicts,
        invalid_posters=invalid,
        dropped_rows={k: table.loc[outcome == k, "row"].astype(int).tolist()
                      for k in ROW_OUTCOMES[1:]},
        posters_without_row=without_row,
        splits={name: int(len(parts[name])) for name in SPLITS},
        genres=len(vocabulary),
        prior_top3_hit=info["prior_baseline"]["top3_hit"],
        seed=seed, ratios={"train": round(1 - val - test, 6), "val": val, "test": test},
        seconds=round(time.perf_counter() - start, 2),
    )
    info = {"source": {"labels": report.labels, "posters": report.posters,
                       "layout": report.layout},
            "seed": seed, "ratios": report.ratios, **info}
    atomic_write_json(out / "card.json", info)
    atomic_write_text(out / "card.md", card_markdown(info))
    atomic_write_json(out / "cleaning.json", report.to_dict())
    return report


def _conflicts(rows: pd.DataFrame, genre_lists: pd.Series) -> list[dict]:
    """Ids seen more than once whose genre sets disagree (the first row wins)."""
    out = []
    dups = rows[rows["imdbId"].duplicated(keep=False)]
    for key, group in dups.groupby("imdbId", sort=False):
        sets = [genre_lists[i] for i in group.index]
        if any(set(g) != set(sets[0]) for g in sets[1:]):
            out.append({"imdbId": int(key), "rows": group["row"].astype(int).tolist(),
                        "genres": [SEPARATOR.join(g) for g in sets]})
    return out


def _summary(outcome: pd.Series) -> str:
    counts = outcome.value_counts()
    return ", ".join(f"{k}: {int(counts[k])}" for k in ROW_OUTCOMES if k in counts)


def card_markdown(info: dict) -> str:
    """The dataset card as Markdown: sizes, prior baseline, labels per movie, genre counts."""
    names = list(info["movies"])
    prior = info["prior_baseline"]
    lines = [
        "# Dataset card", "",
        f"Labels `{Path(info['source']['labels']).name}` ({info['source']['layout']} layout), "
        f"split by iterative stratification with seed {info['seed']} "
        f"(train/val/test = {'/'.join(str(info['ratios'][n]) for n in names)}).", "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
        "| movies | " + " | ".join(str(info["movies"][n]) for n in names) + " |",
        "| genres per movie (mean) | "
        + " | ".join(_fmt(info["labels_per_movie"][n]["mean"], ".2f") for n in names) + " |",
        f"| prior top-3 hit ({', '.join(prior['guess'])}) | "
        + " | ".join(_fmt(prior["top3_hit"][n], ".3f") for n in names) + " |",
        "",
        "The prior baseline always guesses the train split's three most frequent genres; "
        "a model's top-3 accuracy means little unless it beats it on the same split.", "",
        "## Movies per genre", "",
        "| genre | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    counts = info["genre_counts"]
    for g in sorted(counts, key=lambda g: -sum(counts[g].values())):
        lines.append(f"| {g} | " + " | ".join(str(counts[g][n]) for n in names) + " |")
    lines += ["", "## Genres per movie", "",
              "| genres | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    sizes = sorted({int(k) for n in names for k in info["labels_per_movie"][n]["histogram"]})
    for k in sizes:
        lines.append(f"| {k} | " + " | ".join(
            str(info["labels_per_movie"][n]["histogram"].get(str(k), 0)) for n in names) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
