"""Odd but real-world input, one class per test: a one-line error or a counted skip, never a
traceback. Each test holds the example that was found and at least one other member."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    assert_one_line_error,
    cli,
    make_poster,
    make_small_dataset,
    make_tiny_run,
    prepare_args,
)

from postergenre.data.fetch import FetchConfig, FetchError, fetch
from postergenre.data.inputs import expand_inputs, imdb_id, title_of
from postergenre.errors import DatasetError

GENRES = ["Comedy", "Drama", "Horror"]


def labels_file(path: Path, rows: list[str]) -> Path:
    path.write_text("imdbId,Title,Genre\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def twelve(tmp_path: Path) -> tuple[Path, Path]:
    """Twelve good movies with posters 1-12 and their labels."""
    posters = tmp_path / "posters"
    for i in range(1, 13):
        make_poster(posters / f"{i}.jpg", seed=i, size=(20, 30))
    kinds = ["Drama", "Comedy|Drama", "Horror", "Comedy"]
    return labels_file(tmp_path / "movies.csv",
                       [f"{i},Movie {i},{kinds[i % 4]}" for i in range(1, 13)]), posters


def without_progress(err: str) -> str:
    """stderr without the poster-checking progress bar (drawn before cleaning can fail)."""
    return "\n".join(line for line in err.splitlines() if not line.startswith("checking posters"))


def report_of(out: Path) -> dict:
    return json.loads((out / "cleaning.json").read_text(encoding="utf-8"))


# --- data prepare: labels and poster folders ---------------------------------------------


def test_ids_that_overflow_or_are_not_finite_are_counted_missing(twelve,
                                                                 tmp_path) -> None:
    labels, posters = twelve
    odd = ["99999999999999999999999", "inf", "-inf", "nan", "1e400", "9223372036854775808",
           "²³", "1e3"]
    with labels.open("a", encoding="utf-8") as f:
        f.write("".join(f"{i},Odd,Drama\n" for i in odd))
    code, out, err = cli(*prepare_args(labels, posters, tmp_path / "ds"))
    assert code == 0 and "Traceback" not in err
    report = report_of(tmp_path / "ds")
    assert report["rows"]["missing_id"] == len(odd) and report["rows"]["kept"] == 12


def test_poster_names_with_non_ascii_digits_are_not_posters(twelve,
                                                            tmp_path) -> None:
    labels, posters = twelve
    for name in ("²³.jpg", "١٢.jpg", "𝟙.png"):  # superscripts, Arabic-Indic, math digits
        shutil.copy(posters / "1.jpg", posters / name)
    code, _, err = cli(*prepare_args(labels, posters, tmp_path / "ds"))
    assert code == 0 and "Traceback" not in err
    report = report_of(tmp_path / "ds")
    assert report["poster_files"]["not_a_poster"] == 3 and report["poster_files"]["kept"] == 12


def test_link_loops_and_dangling_links_are_counted_unreadable(twelve,
                                                              tmp_path) -> None:
    labels, posters = twelve
    os.symlink("14.jpg", posters / "13.jpg")  # 13 -> 14 -> 13: a loop
    os.symlink("13.jpg", posters / "14.jpg")
    os.symlink("nowhere.jpg", posters / "15.jpg")  # dangling
    os.symlink(".", posters / "again")  # a folder loop: folders are not searched
    with labels.open("a") as f:
        f.write("13,Loop,Drama\n15,Dangling,Comedy\n")
    code, out, err = cli(*prepare_args(labels, posters, tmp_path / "ds"))
    assert code == 0 and "Traceback" not in err
    report = report_of(tmp_path / "ds")
    assert report["poster_files"]["unreadable"] == 3
    assert report["rows"]["poster_missing"] == 2 and report["rows"]["kept"] == 12
    assert report["posters_total"] == 15 and sum(report["poster_files"].values()) == 15
    assert "unreadable" in out


@pytest.mark.parametrize("seed", ["-1", str(2**32), str(10**30)])
def test_seed_out_of_range(twelve, tmp_path, seed) -> None:
    labels, posters = twelve
    code, _, err = cli(*prepare_args(labels, posters, tmp_path / "ds"),
                       "--seed", seed)
    assert code in (1, 2) and "Traceback" not in err
    if code == 1:
        assert_one_line_error(err, "--seed", seed)
    assert not (tmp_path / "ds" / "train.csv").exists()


@pytest.mark.parametrize("n", [3, 9])
def test_a_data_set_too_small_to_split(twelve, tmp_path, n) -> None:
    _, posters = twelve
    labels = labels_file(tmp_path / "few.csv",
                         [f"{i},M{i},{'Drama' if i % 2 else 'Comedy'}" for i in range(1, n + 1)])
    code, _, err = cli(*prepare_args(labels, posters, tmp_path / "ds"))
    assert code == 1
    assert_one_line_error(without_progress(err), labels, f"only {n} movies", "at least")


def test_a_ratio_too_small_for_any_movie(twelve, tmp_path) -> None:
    labels, posters = twelve
    code, _, err = cli(*prepare_args(labels, posters, tmp_path / "ds"),
                       "--val", "0.01")
    assert code == 1
    assert_one_line_error(without_progress(err), labels, "too few for the val split")


@pytest.mark.parametrize("genres", ["Drama", "Comedy|Drama"])
def test_every_movie_with_the_same_genres(twelve, tmp_path, genres) -> None:
    _, posters = twelve
    labels = labels_file(tmp_path / "same.csv", [f"{i},M{i},{genres}" for i in range(1, 13)])
    code, _, err = cli(*prepare_args(labels, posters, tmp_path / "ds"))
    assert code == 1
    assert_one_line_error(without_progress(err), labels, f"the genres {genres}")


# --- damaged dataset folders -------------------------------------------------------------


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    dataset = make_small_dataset(tmp_path, GENRES, sizes=(6, 6, 6))
    return make_tiny_run(tmp_path / "run", GENRES), dataset


def empty_split(dataset: Path, name: str) -> None:
    path = dataset / f"{name}.csv"
    path.write_text(path.read_text().splitlines()[0] + "\n")


@pytest.mark.parametrize(("name", "why"), [("train", "prior"), ("val", "thresholds")])
def test_evaluate_with_an_empty_train_or_val_split(tiny, name, why) -> None:
    run, dataset = tiny
    empty_split(dataset, name)
    (run / "thresholds.json").unlink()  # thresholds must then be tuned on val
    code, _, err = cli("evaluate", run, "--data", dataset, "--backend",
                       "torch", "--bootstrap", "0", "--no-report")
    assert code == 1
    assert_one_line_error(err, dataset / f"{name}.csv", f"the {name} split is empty", why)


def test_stats_with_an_empty_train_split_but_empty_test_is_fine(tiny) -> None:
    _, dataset = tiny
    empty_split(dataset, "test")
    code, _, err = cli("data", "stats", dataset)
    assert code == 0, err
    empty_split(dataset, "train")
    code, _, err = cli("data", "stats", dataset)
    assert code == 1
    assert_one_line_error(err, "train.csv", "prior")


@pytest.mark.parametrize(("data", "reason"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "binary"),
    ("imdbId,poster,title,genres,Comedy,Drama,Horror\n1,p.jpg,Am\u00e9lie,Drama,0,1,0\n"
     .encode("latin-1"), "not UTF-8"),
    (b"imdbId,poster,title,genres,Comedy,Drama,Horror\nabc,p.jpg,A,Drama,0,1,0\n",
     "whole numbers"),
    (b"imdbId,poster,title,genres,Comedy,Drama,Horror\n1,p.jpg,A,Drama,0,yes,0\n", "0 or 1"),
], ids=["binary", "latin-1", "bad-id", "bad-label"])
@pytest.mark.parametrize("command", ["evaluate", "stats"])
def test_a_damaged_split_file(tiny, data, reason, command) -> None:
    run, dataset = tiny
    (dataset / "test.csv").write_bytes(data)
    args = (["evaluate", run, "--data", dataset, "--backend", "torch", "--no-report"]
            if command == "evaluate" else ["data", "stats", dataset])
    code, _, err = cli(*args)
    assert code == 1
    assert_one_line_error(err, dataset / "test.csv", reason)


@pytest.mark.parametrize("text", ["{not json", '{"genres": 3}', '["Drama"]', "\udcff"])
def test_a_damaged_genre_list(tiny, text) -> None:
    _, dataset = tiny
    (dataset / "genres.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    code, _, err = cli("data", "stats", dataset)
    assert code == 1
    assert_one_line_error(err, dataset / "genres.json")


def test_library_split_loader_allows_an_empty_test_split(tiny) -> None:
    from postergenre.data.dataset import load_split

    _, dataset = tiny
    empty_split(dataset, "test")
    assert len(load_split(dataset, "test")) == 0
    with pytest.raises(DatasetError, match="empty"):
        load_split(dataset, "test", allow_empty=False)


# --- predict over many inputs -------------------------------------------------------------


def test_an_empty_folder_among_the_inputs_does_not_abort_the_others(tiny,
                                                                   tmp_path) -> None:
    run, _ = tiny
    good = make_poster(tmp_path / "in" / "7.jpg", seed=7)
    empty = tmp_path / "empty"
    empty.mkdir()
    texts = tmp_path / "texts"  # a folder with files, none an image
    texts.mkdir()
    (texts / "notes.txt").write_text("hello")
    code, out, err = cli("predict", "--model", run, "--backend", "torch",
                         empty, good, texts)
    assert code == 1
    assert "7.jpg" in out
    lines = err.strip().splitlines()
    assert f"error: {empty}: folder holds no poster images" in lines
    assert f"error: {texts}: folder holds no poster images" in lines
    assert lines[-1] == "2 of 3 inputs failed" and "Traceback" not in err


def test_only_empty_folders_fail_before_the_model_loads(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = cli("predict", "--model", tmp_path / "no-run", empty)
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [f"error: {empty}: folder holds no poster images",
                                        "1 of 1 inputs failed"]


def test_expand_inputs_still_raises_without_a_callback(tmp_path) -> None:
    with pytest.raises(Exception, match="no poster images"):
        expand_inputs([tmp_path])
    errors: list[str] = []
    assert expand_inputs([tmp_path, "a.jpg"], on_error=errors.append) == ["a.jpg"]
    assert len(errors) == 1


@pytest.mark.parametrize("url", ["http://host:1:1/x", "http://[::1/x", "https://exa mple.org/p",
                                 "http://" + "a" * 300 + ".org/x.jpg", "http://:80/x"])
def test_a_malformed_url_names_the_url(url) -> None:
    with pytest.raises(FetchError) as info:
        fetch(url, FetchConfig(timeout=2, deadline=5, retries=0))
    message = str(info.value)
    assert message.startswith(f"{url}: ") and "\n" not in message


def test_a_malformed_url_in_the_cli_is_one_line(tiny, tmp_path) -> None:
    run, _ = tiny
    good = make_poster(tmp_path / "in" / "7.jpg", seed=7)
    code, out, err = cli("predict", "--model", run, "--backend", "torch",
                         "http://host:1:1/x", good)
    assert code == 1 and "7.jpg" in out
    assert err.strip().splitlines()[0].startswith("error: http://host:1:1/x: malformed URL")


@pytest.mark.parametrize(("body", "reason"), [
    (b"", "empty"),
    (b"<html>not found</html>", "not an image"),
    (None, "truncated"),  # half of a real JPEG
    (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
     b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;", "too small"),
], ids=["empty", "html", "truncated", "1x1-gif"])
def test_every_url_failure_names_the_url(httpserver, tiny, tmp_path, body,
                                         reason) -> None:
    run, _ = tiny
    if body is None:
        data = make_poster(tmp_path / "p.jpg").read_bytes()
        body = data[: len(data) // 2]
    httpserver.expect_request("/p.jpg").respond_with_data(body, content_type="image/jpeg")
    url = httpserver.url_for("/p.jpg")
    code, _, err = cli("predict", "--model", run, "--backend", "torch", url)
    assert code == 1
    first = err.strip().splitlines()[0]
    assert first.startswith(f"error: {url}: ") and reason in first, err
    assert "uploaded bytes" not in err


class Trickle:
    """A server on 127.0.0.1 that sends one byte every `gap` seconds, forever: in the status
    line and headers (`headers=True`), or in a body after complete headers."""

    def __init__(self, headers: bool, gap: float = 0.2) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/slow.jpg"
        self.headers, self.gap, self.done = headers, gap, threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            head = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
            if not self.headers:
                conn.sendall(head)
            stream = head if self.headers else b"\xff" * 100000
            for byte in stream:
                if self.done.wait(self.gap):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    def close(self) -> None:
        self.done.set()
        self.sock.close()


@pytest.mark.parametrize("headers", [True, False], ids=["slow-headers", "slow-body"])
def test_a_url_that_trickles_is_given_up_at_the_deadline(headers) -> None:
    server = Trickle(headers)
    try:
        start = time.monotonic()
        with pytest.raises(FetchError, match="longer than 1.5 s") as info:
            fetch(server.url, FetchConfig(timeout=1.0, deadline=1.5, retries=0))
        assert time.monotonic() - start < 3.0
        assert str(info.value).startswith(server.url)
    finally:
        server.close()


def test_ids_in_file_names_use_ascii_digits_only() -> None:
    titles = {23: "Twenty-three", 114709: "Toy Story"}
    assert imdb_id("²³.jpg") is None and title_of("²³.jpg", titles) is None
    assert imdb_id("posters/١٢.png") is None
    assert imdb_id("tt0114709.jpg") == 114709 and title_of("23.jpg", titles) == "Twenty-three"


# --- the guard ----------------------------------------------------------------------------


@pytest.mark.parametrize("error", [ValueError("boom\nsecond line"), KeyError("k"),
                                   ZeroDivisionError()])
def test_an_unexpected_error_is_one_line_and_a_log(monkeypatch, tmp_path, error) -> None:
    import postergenre.cli.tables as stats

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setenv("POSTERGENRE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(stats, "genre_table", broken)
    code, _, err = cli("data", "stats", tmp_path)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: unexpected {type(error).__name__}")
    assert "this is a bug" in lines[0]
    log = Path(lines[0].rsplit(" ", 1)[-1])
    assert log.parent == tmp_path / "cache" / "logs"
    text = log.read_text()
    assert "Traceback" in text and "broken" in text and type(error).__name__ in text


def test_the_guard_falls_back_to_the_temp_folder(monkeypatch, tmp_path) -> None:
    import postergenre.cli.tables as stats

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("POSTERGENRE_CACHE", str(blocker / "cache"))  # cannot be created
    monkeypatch.setattr(stats, "genre_table", lambda *a: 1 / 0)
    code, _, err = cli("data", "stats", tmp_path)
    assert code == 1 and "this is a bug" in err
    log = Path(err.strip().rsplit(" ", 1)[-1])
    assert log.is_file() and "ZeroDivisionError" in log.read_text()
    log.unlink()


def test_usage_errors_still_exit_2(capsys) -> None:
    code, _, err = cli("predict", "--no-such-option", "x.jpg")
    assert code == 2 and "this is a bug" not in err


if sys.platform != "linux":  # symlink loops and the trickle server assume Linux
    pytestmark = pytest.mark.skip(reason="Linux only")
