"""`data prepare` and `data stats`: cleaning accounts for everything, encoding, splits, card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_poster
from PIL import Image
from rich.console import Console
from sklearn.preprocessing import MultiLabelBinarizer

from postergenre.cli.tables import genre_table, render_cleaning_report
from postergenre.data.dataset import SPLITS, load_genres, load_split
from postergenre.data.prepare import prepare_dataset, split_indices
from postergenre.data.stats import plot_genre_distribution, prior_top3_hit
from postergenre.genres import parse_genres
from postergenre.paths import sample_dir

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Western"]


def make_inputs(root: Path, n: int = 40, seed: int = 0) -> tuple[Path, Path, list[str]]:
    """n movies with posters, plus one of each problem that cleaning must catch."""
    rng = np.random.default_rng(seed)
    posters = root / "posters"
    rows = []
    for i in range(1, n + 1):
        k = rng.integers(1, 4)
        genres = "|".join(rng.choice(GENRES, k, replace=False, p=[.2, .25, .35, .1, .07, .03]))
        rows.append(f"{i},Movie {i},{genres}")
        make_poster(posters / f"{i}.jpg", seed=i, size=(20, 30))
    rows += [
        f"{n + 1},No genre,",  # missing genre (its poster exists: row_dropped)
        "1,Movie 1 again,Western",  # duplicate id whose genres disagree
        "2,Movie 2 again," + rows[1].split(",")[2],  # duplicate id that agrees
        f"{n + 2},No poster,Drama",  # poster missing
        f"{n + 3},Broken poster,Drama",  # poster invalid
        ",No id,Drama",  # missing id
    ]
    make_poster(posters / f"{n + 1}.jpg")
    (posters / f"{n + 3}.jpg").write_bytes(b"not a jpeg at all")
    make_poster(posters / "999999.jpg")  # poster without row
    (posters / "notes.txt").write_text("hello")  # not a poster
    make_poster(posters / "3.png")  # a second file for id 3: the .jpg wins
    labels = root / "movies.csv"
    labels.write_text("imdbId,Title,Genre\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return labels, posters, rows


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("prep")
    labels, posters, rows = make_inputs(root)
    report = prepare_dataset(labels, posters, root / "ds", seed=0, workers=2)
    return report, root / "ds", rows


def test_every_row_and_poster_file_is_accounted_for(prepared) -> None:
    report, ds, rows = prepared
    assert report.rows_total == len(rows) and report.posters_total == 40 + 5
    assert report.rows == {"kept": 40, "missing_id": 1, "missing_genre": 1, "duplicate_id": 2,
                           "poster_missing": 1, "poster_invalid": 1}
    assert report.poster_files == {"kept": 40, "invalid": 1, "row_dropped": 1,
                                   "without_row": 1, "duplicate_file": 1, "not_a_poster": 1,
                                   "unreadable": 0}
    assert report.balanced
    assert report.posters_without_row == ["999999.jpg"]
    assert [d["imdbId"] for d in report.duplicate_conflicts] == [1]
    assert report.invalid_posters[0]["imdbId"] == 43
    assert "not an image" in report.invalid_posters[0]["error"]
    saved = json.loads((ds / "cleaning.json").read_text())
    assert saved["rows"] == report.rows and saved["dropped_rows"]["missing_id"] == [46]


def test_first_of_duplicate_rows_is_kept(prepared) -> None:
    _, ds, _ = prepared
    movies = pd.concat(pd.read_csv(ds / f"{s}.csv") for s in SPLITS)
    assert movies["imdbId"].is_unique and len(movies) == 40
    assert movies.set_index("imdbId").loc[1, "title"] == "Movie 1"
    assert movies.set_index("imdbId").loc[3, "poster"].endswith("3.jpg")


def test_multi_hot_matches_multilabelbinarizer(prepared) -> None:
    _, ds, rows = prepared
    genres = load_genres(ds)
    splits = [load_split(ds, s) for s in SPLITS]
    ids = np.concatenate([s.ids for s in splits])
    labels = np.concatenate([s.labels for s in splits])
    truth = {int(r.split(",")[0]): parse_genres(r.split(",")[2]) for r in rows[:40]}
    mlb = MultiLabelBinarizer().fit(list(truth.values()))
    assert genres == list(mlb.classes_)
    assert np.array_equal(labels, mlb.transform([truth[i] for i in ids]))


def test_splits_are_disjoint_sized_by_ratio_and_reproducible(tmp_path: Path, prepared) -> None:
    report, ds, _ = prepared
    ids = {s: set(load_split(ds, s).ids) for s in SPLITS}
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"])
    assert not (ids["val"] & ids["test"])
    assert sum(report.splits.values()) == 40 and report.splits["val"] == 6
    labels, posters, _ = make_inputs(tmp_path)
    again = prepare_dataset(labels, posters, tmp_path / "a", seed=0)
    prepare_dataset(labels, posters, tmp_path / "b", seed=1)
    assert again.splits == report.splits
    for s in SPLITS:
        assert set(load_split(tmp_path / "a", s).ids) == ids[s]
    assert any(set(load_split(tmp_path / "b", s).ids) != ids[s] for s in SPLITS)


def test_split_ratios_are_options(tmp_path: Path) -> None:
    labels, posters, _ = make_inputs(tmp_path)
    report = prepare_dataset(labels, posters, tmp_path / "ds", val=0.25, test=0.0)
    assert report.splits == {"train": 30, "val": 10, "test": 0}
    assert len(load_split(tmp_path / "ds", "test")) == 0
    card = json.loads((tmp_path / "ds" / "card.json").read_text())  # strict JSON: no NaN
    assert card["prior_baseline"]["top3_hit"]["test"] is None


def test_iterative_stratification_keeps_genre_shares() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((3000, 8)) < np.linspace(0.02, 0.5, 8)).astype(np.uint8)
    parts = split_indices(y, val=0.15, test=0.15, seed=0)
    assert sorted(np.concatenate(list(parts.values()))) == list(range(3000))
    for name, share in [("train", 0.7), ("val", 0.15), ("test", 0.15)]:
        got = y[parts[name]].sum(0) / y.sum(0)
        assert np.abs(got - share).max() < 0.02, (name, got)


def test_prior_top3_hit_uses_train_frequencies() -> None:
    train = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]])
    evaluation = np.array([[0, 0, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 1]])
    assert prior_top3_hit(train, evaluation) == 0.5  # the guess is genres 0, 1, 2
    assert prior_top3_hit(train, train) == 0.75
    assert np.isnan(prior_top3_hit(train, evaluation[:0]))


def test_card_reports_counts_labels_per_movie_and_prior(prepared) -> None:
    _, ds, _ = prepared
    card = json.loads((ds / "card.json").read_text())
    train, test = load_split(ds, "train"), load_split(ds, "test")
    for i, g in enumerate(card["genres"]):
        assert card["genre_counts"][g]["test"] == test.labels[:, i].sum()
    assert card["prior_baseline"]["top3_hit"]["test"] == round(
        prior_top3_hit(train.labels, test.labels), 4)
    hist = card["labels_per_movie"]["train"]["histogram"]
    assert sum(hist.values()) == len(train)
    markdown = (ds / "card.md").read_text()
    assert "prior top-3 hit" in markdown and "| Drama |" in markdown


def test_reports_render_as_rich_tables(prepared) -> None:
    report, ds, _ = prepared
    console = Console(record=True, width=120)
    console.print(render_cleaning_report(report))
    console.print(genre_table(ds))
    text = console.export_text()
    assert "poster invalid" in text and "46" in text and "Western" in text
    assert "prior top-3 hit" in text


def test_stats_plot_is_a_png(prepared, tmp_path: Path) -> None:
    _, ds, _ = prepared
    path = plot_genre_distribution(ds, tmp_path / "g.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 300


def test_bundled_sample_exercises_cleaning(tmp_path: Path) -> None:
    sample = sample_dir()
    assert len(list((sample / "posters").iterdir())) <= 36
    report = prepare_dataset(sample / "movies.csv", sample / "posters", tmp_path / "ds")
    assert report.layout == "kaggle" and report.balanced
    assert report.rows["missing_genre"] == report.rows["duplicate_id"] == 1
    assert report.rows["poster_missing"] == 1 and len(report.duplicate_conflicts) == 1
    assert report.poster_files["row_dropped"] == 1
    assert {"Animation", "Horror", "Documentary", "Western", "Musical"} <= set(
        load_genres(tmp_path / "ds"))


@pytest.mark.slow
@pytest.mark.realdata
def test_real_data_is_fully_accounted_for(real_data: Path, tmp_path: Path) -> None:
    report = prepare_dataset(real_data / "movies.csv", real_data / "posters", tmp_path / "ds",
                             workers=2)
    assert report.rows_total == 37_048 and report.posters_total == 16_000
    assert report.balanced
    assert report.rows["missing_genre"] == 118 and report.rows["duplicate_id"] == 571
    assert report.poster_files["without_row"] == 3
    assert 0.70 < report.prior_top3_hit["test"] < 0.76
