"""Reading labels files: both layouts, ids, encodings, and one-line errors for unusable files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from postergenre.data.movies import decode_lines, read_labels
from postergenre.errors import DatasetError

KAGGLE = (
    "imdbId,Imdb Link,Title,IMDB Score,Genre,Poster\n"
    "114709,http://www.imdb.com/title/tt114709,Toy Story (1995),8.3,"
    "Animation|Adventure|Comedy,http://127.0.0.1/114709.jpg\n"
    '113497,http://www.imdb.com/title/tt113497,"Jumanji, the game (1995)",,'
    "Action|Adventure|Family,http://127.0.0.1/113497.jpg\n"
)


def write(tmp_path: Path, data: str | bytes, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def test_short_layout(tmp_path: Path) -> None:
    labels = read_labels(write(tmp_path, "imdbId,Title,Genre\n1,A (1990),Drama\n2,B,\n"))
    t = labels.table
    assert labels.layout == "short" and len(labels) == 2
    assert t["imdbId"].tolist() == [1, 2] and t["row"].tolist() == [1, 2]
    assert t["genre"].tolist() == ["Drama", ""] and t["title"].tolist() == ["A (1990)", "B"]
    assert t["poster_url"].tolist() == ["", ""]


def test_kaggle_layout_keeps_poster_urls_and_quoted_titles(tmp_path: Path) -> None:
    labels = read_labels(write(tmp_path, KAGGLE))
    assert labels.layout == "kaggle"
    assert labels.table["title"][1] == "Jumanji, the game (1995)"
    assert labels.table["poster_url"][0] == "http://127.0.0.1/114709.jpg"
    assert labels.table["genre"][1] == "Action|Adventure|Family"


def test_header_is_matched_case_and_space_blind(tmp_path: Path) -> None:
    labels = read_labels(write(tmp_path, "IMDBID , title,GENRE\n7,X,Comedy\n"))
    assert labels.table["imdbId"][0] == 7 and labels.table["genre"][0] == "Comedy"


def test_ids_that_are_not_whole_numbers_become_missing(tmp_path: Path) -> None:
    rows = "imdbId,Title,Genre\ntt0114709,A,Drama\nabc,B,Drama\n,C,Drama\n1.5,D,Drama\n-3,E,Drama\n"
    ids = read_labels(write(tmp_path, rows)).table["imdbId"]
    assert ids[0] == 114709 and ids[1:].isna().all()


def test_non_utf8_lines_fall_back_to_windows_1252_line_by_line(tmp_path: Path) -> None:
    data = ("imdbId,Title,Genre\n1,Am\u00e9lie,Comedy\n".encode()  # valid UTF-8
            + b"2,Caf\xe9 \x93noir\x94 \x81,Drama\n")  # cp1252, with a byte cp1252 lacks
    labels = read_labels(write(tmp_path, data))
    assert labels.fallback_lines == 1
    assert labels.table["title"].tolist() == ["Am\u00e9lie", "Caf\u00e9 \u201cnoir\u201d \x81"]


def test_mojibake_is_kept_as_found() -> None:
    text = "1,Am\u00c3\u00a9lie,Comedy"  # UTF-8 read as Latin-1 once, upstream
    assert decode_lines(text.encode("utf-8")) == (text, 0)


@given(st.binary(max_size=200))
def test_any_bytes_decode_line_for_line(data: bytes) -> None:
    text, fallbacks = decode_lines(data)
    lines = data.removeprefix(b"\xef\xbb\xbf").split(b"\n")
    assert text.count("\n") == len(lines) - 1
    assert 0 <= fallbacks <= len(lines)


@given(st.text(max_size=200))
def test_utf8_text_round_trips(text: str) -> None:
    if not text.startswith("\ufeff"):
        assert decode_lines(text.encode("utf-8")) == (text, 0)


def test_bom_is_ignored(tmp_path: Path) -> None:
    labels = read_labels(write(tmp_path, b"\xef\xbb\xbfimdbId,Title,Genre\n1,A,Drama\n"))
    assert labels.table["imdbId"][0] == 1


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\n\n  \n", "empty"),
        (b"id,name,tags\n1,A,Drama\n", "missing column imdbId and Genre"),
        (b"imdbId,Title\n1,A\n", "missing column Genre"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a CSV"),
        (b'imdbId,Title,Genre\n1,"A,Drama\n2,B,Comedy\n', "not a readable CSV"),
    ],
    ids=["empty", "blank-lines", "wrong-columns", "no-genre-column", "binary", "bad-quote"],
)
def test_unusable_files_raise_one_line_errors(tmp_path: Path, data: bytes, reason: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(DatasetError) as info:
        read_labels(path)
    message = str(info.value)
    assert message.startswith(str(path)) and reason in message and "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        read_labels(tmp_path / "nope.csv")


@pytest.mark.realdata
def test_real_labels_files(real_data: Path) -> None:
    movies = read_labels(real_data / "movies.csv")
    raw = pd.read_csv(real_data / "movies.csv", dtype=str, keep_default_na=False)
    assert len(movies) == len(raw) and movies.layout == "short"
    assert movies.table["imdbId"].notna().all()
    assert movies.table["title"].tolist() == raw["Title"].str.strip().tolist()
    excerpt = read_labels(real_data / "MovieGenre-excerpt.csv")
    assert excerpt.layout == "kaggle"
    assert excerpt.table["poster_url"].str.startswith("http").all()
    assert excerpt.table["imdbId"].between(3500478, 6098922).all()
