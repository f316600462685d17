"""Read a movie labels file into one table, whatever its variant.

Two layouts are accepted, told apart by their header (names matched case- and space-blind):

- the Kaggle ``MovieGenre.csv`` format: ``imdbId,Imdb Link,Title,IMDB Score,Genre,Poster``;
- the short form ``imdbId,Title,Genre``.

Only ``imdbId`` and ``Genre`` are required; ``Title`` and ``Poster`` (the poster URL) are kept
when present. Nothing is cleaned here beyond parsing: ids that are not whole numbers in ASCII
digits (`inf`, `nan`, `1.5`, `-3`, `²³`, beyond int64) become missing,
and every row keeps its 1-based data-row number (``row``; the header and blank lines are not
counted) so that cleaning can account for each one.

Encoding: the file is decoded line by line, as UTF-8 when the line is valid UTF-8 and as
Windows-1252 otherwise (Latin-1 for the five bytes Windows-1252 leaves undefined). No byte is
ever lost or replaced, and titles that are already mojibake in the file are kept as found.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from postergenre.errors import DatasetError

COLUMNS = ["row", "imdbId", "title", "genre", "poster_url"]
MAX_ID = 2**63 - 1  # ids are stored as int64
_ID = re.compile(r"(?:tt)?([0-9]+)(?:\.0*)?")  # ASCII digits only: '²³' is no id


def parse_id(text: str) -> int | None:
    """An IMDB id ('114709', 'tt0114709', '114709.0') as an int; None for anything else
    (empty, negative, fractional, inf, nan, non-ASCII digits, beyond int64)."""
    match = _ID.fullmatch(text.strip())
    if match is None:
        return None
    value = int(match.group(1))
    return value if value <= MAX_ID else None


@dataclass
class Labels:
    """A parsed labels file: one row per input row, nothing dropped yet."""

    table: pd.DataFrame  # COLUMNS; imdbId is a nullable Int64, the others str ("" when absent)
    source: Path
    layout: str  # "kaggle" (6 columns) or "short" (imdbId,Title,Genre)
    fallback_lines: int  # lines that were not valid UTF-8 and were read as Windows-1252

    def __len__(self) -> int:
        return len(self.table)


def decode_lines(data: bytes) -> tuple[str, int]:
    """Decode bytes line by line: UTF-8, else Windows-1252 (Latin-1 where it has no mapping).

    Returns the text and how many lines needed the fallback.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        pass
    lines, fallbacks = [], 0
    for line in data.split(b"\n"):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            fallbacks += 1
            lines.append("".join(_cp1252(bytes([b])) for b in line))
    return "\n".join(lines), fallbacks


def _cp1252(byte: bytes) -> str:
    try:
        return byte.decode("cp1252")
    except UnicodeDecodeError:
        return byte.decode("latin-1")


def _key(name: str) -> str:
    return "".join(name.split()).lower()


def read_labels(path: str | os.PathLike) -> Labels:
    """Read a labels CSV (Kaggle 6-column or ``imdbId,Title,Genre``) into a Labels table.

    Raises DatasetError with a one-line reason when the file is missing, empty, not a CSV
    or lacks the required columns.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: labels file not found")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read labels file ({e.strerror})") from None
    text, fallbacks = decode_lines(data)
    if not text.strip():
        raise DatasetError(f"{path}: labels file is empty")
    if "\x00" in text:
        raise DatasetError(f"{path}: not a CSV text file (contains NUL bytes)")
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False,
                         skip_blank_lines=True, quoting=csv.QUOTE_MINIMAL)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error) as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else "unreadable CSV"
        raise DatasetError(f"{path}: not a readable CSV ({reason})") from None
    df = df.fillna("")

    by_key = {_key(c): c for c in df.columns}
    missing = [name for key, name in [("imdbid", "imdbId"), ("genre", "Genre")]
               if key not in by_key]
    if missing:
        found = ",".join(str(c) for c in df.columns[:8]) or "nothing"
        raise DatasetError(
            f"{path}: missing column {' and '.join(missing)} (expected imdbId,Title,Genre or "
            f"the Kaggle imdbId,Imdb Link,Title,IMDB Score,Genre,Poster; found {found})"
        )
    layout = "kaggle" if {"imdblink", "poster"} <= by_key.keys() else "short"

    def column(key: str) -> pd.Series:
        if key in by_key:
            return df[by_key[key]].astype(str).str.strip()
        return pd.Series([""] * len(df), dtype=str)

    table = pd.DataFrame({
        "row": range(1, len(df) + 1),
        "imdbId": pd.array([parse_id(v) for v in column("imdbid")], dtype="Int64"),
        "title": column("title"),
        "genre": column("genre"),
        "poster_url": column("poster"),
    })
    return Labels(table=table, source=path, layout=layout, fallback_lines=fallbacks)
