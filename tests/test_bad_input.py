"""Bad input through the real CLI: a one-line error (exit 1) or a reported skip, no traceback."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from conftest import assert_one_line_error, cli, make_poster, prepare_args
from PIL import Image


def png(width: int, height: int, header_only: bool = False) -> bytes:
    if not header_only:
        buf = io.BytesIO()
        Image.new("RGB", (width, height), "green").save(buf, "PNG")
        return buf.getvalue()

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    """Twelve good movies (ids 1-12) and a labels file for them."""
    posters = tmp_path / "posters"
    for i in range(1, 13):
        make_poster(posters / f"{i}.jpg", seed=i, size=(20, 30))
    genres = ["Drama", "Comedy|Drama", "Horror", "Comedy"]
    rows = [f"{i},Movie {i},{genres[i % 4]}" for i in range(1, 13)]
    labels = tmp_path / "movies.csv"
    labels.write_text("imdbId,Title,Genre\n" + "\n".join(rows) + "\n")
    return labels, posters


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty"), (b"movie,genres\n1,Drama\n", "missing column")],
    ids=["empty-csv", "wrong-columns"],
)
def test_unusable_labels_file(inputs, tmp_path, content, reason) -> None:
    _, posters = inputs
    labels = tmp_path / "bad.csv"
    labels.write_bytes(content)
    code, _, err = cli(*prepare_args(labels, posters, tmp_path / "ds"))
    assert code == 1
    assert_one_line_error(err, labels, reason)
    assert not (tmp_path / "ds" / "train.csv").exists()


def test_missing_labels_file(inputs, tmp_path) -> None:
    _, posters = inputs
    code, _, err = cli(*prepare_args(tmp_path / "nope.csv", posters, tmp_path / "ds"))
    assert code == 1
    assert_one_line_error(err, tmp_path / "nope.csv", "not found")


def test_non_utf8_bytes_are_decoded_and_reported(inputs, tmp_path) -> None:
    labels, posters = inputs
    with labels.open("ab") as f:
        f.write(b"1,Le Caf\xe9,Drama\n")  # a duplicate of id 1, in Windows-1252
    labels.write_bytes(labels.read_bytes().replace(b"Movie 2,", b"Am\xe9lie,"))
    code, _, _ = cli(*prepare_args(labels, posters, tmp_path / "ds"))
    assert code == 0
    report = json.loads((tmp_path / "ds" / "cleaning.json").read_text())
    assert report["fallback_lines"] == 2 and report["rows"]["duplicate_id"] == 1
    text = "".join((tmp_path / "ds" / f"{s}.csv").read_text(encoding="utf-8")
                   for s in ("train", "val", "test"))
    assert "Am\u00e9lie" in text


def test_bad_posters_are_reported_skips(inputs, tmp_path) -> None:
    labels, posters = inputs
    truncated = (posters / "1.jpg").read_bytes()
    bad = {
        101: ("zero-byte", b"", "0 bytes"),
        102: ("truncated", truncated[: len(truncated) // 2], "truncated"),
        103: ("text", b"imdbId,Title\nnot a picture\n", "not an image"),
        104: ("1x1", png(1, 1), "too small"),
        105: ("giant header", png(60_000, 60_000, header_only=True), "pixels"),
    }
    for i, (_, data, _) in bad.items():
        (posters / f"{i}.jpg").write_bytes(data)
    (posters / "106.jpg").write_bytes(png(20, 30))  # a PNG named .jpg: a valid poster
    extra = [f"{i},{name},Drama" for i, (name, _, _) in bad.items()] + ["106,PNG,Comedy"]
    labels.write_text(labels.read_text() + "\n".join(extra) + "\n")

    code, out, err = cli(*prepare_args(labels, posters, tmp_path / "ds"))
    assert code == 0 and "Traceback" not in err
    report = json.loads((tmp_path / "ds" / "cleaning.json").read_text())
    assert report["rows"]["kept"] == 13 and report["rows"]["poster_invalid"] == 5
    reasons = {d["imdbId"]: d["error"] for d in report["invalid_posters"]}
    for i, (_, _, reason) in bad.items():
        assert reason in reasons[i] and "\n" not in reasons[i]
    assert "poster invalid" in out


def test_unwritable_output_folder(inputs, tmp_path) -> None:
    labels, posters = inputs
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a folder cannot be made inside a file, not even by root
    out = blocker / "ds"
    code, _, err = cli(*prepare_args(labels, posters, out))
    assert code == 1
    assert_one_line_error(err, out, "not writable")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes through permissions")
def test_read_only_output_folder(inputs, tmp_path) -> None:
    labels, posters = inputs
    out = tmp_path / "ro"
    out.mkdir(mode=0o500)
    code, _, err = cli(*prepare_args(labels, posters, out))
    assert code == 1
    assert_one_line_error(err, out, "not writable")


def test_posters_path_that_does_not_exist(inputs, tmp_path) -> None:
    labels, _ = inputs
    missing = tmp_path / "no-posters"
    code, _, err = cli(*prepare_args(labels, missing, tmp_path / "ds"))
    assert code == 1
    assert_one_line_error(err, missing, "does not exist")


def test_impossible_split_ratios(inputs, tmp_path) -> None:
    labels, posters = inputs
    code, _, err = cli(*prepare_args(labels, posters, tmp_path / "ds"),
                       "--val", "0.6", "--test", "0.5")
    assert code == 1
    assert_one_line_error(err, "val + test < 1")


def test_no_movie_left(inputs, tmp_path) -> None:
    labels, _ = inputs
    empty = tmp_path / "empty-posters"
    empty.mkdir()
    code, _, err = cli(*prepare_args(labels, empty, tmp_path / "ds"))
    assert code == 1
    assert_one_line_error(err, labels, "no movie left", "poster_missing: 12")


def test_stats_on_a_folder_that_is_not_a_dataset(tmp_path) -> None:
    code, _, err = cli("data", "stats", tmp_path)
    assert code == 1
    assert_one_line_error(err, tmp_path, "not a dataset")


@pytest.mark.slow
def test_a_real_process_prints_one_line(inputs, tmp_path) -> None:
    _, posters = inputs
    labels = tmp_path / "empty.csv"
    labels.write_bytes(b"")
    result = subprocess.run(
        [sys.executable, "-m", "postergenre", *map(str, prepare_args(labels, posters, tmp_path))],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert_one_line_error(result.stderr, labels, "empty")
