"""`predict`: input expansion, URL inputs, titles, streaming prediction and the CLI formats."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_poster, make_tiny_run, run_cli

from postergenre import predict as P
from postergenre.data.fetch import FetchError
from postergenre.data.inputs import expand_inputs, file_name, load_titles, read_input, title_of
from postergenre.errors import InvalidImageError, PosterGenreError

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance"]
SIZE = (80, 80)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A custom-cnn run with random weights on small 80x80 inputs."""
    return make_tiny_run(tmp_path_factory.mktemp("run"), GENRES, SIZE)


@pytest.fixture(scope="module")
def posters(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("posters")
    for i, imdb in enumerate([114709, 113277, 120338]):
        make_poster(folder / f"{imdb}.jpg", seed=i, size=(40, 60))
    make_poster(folder / "sub" / "deeper" / "tt0110912.png", seed=5, size=(40, 60))
    (folder / "notes.txt").write_text("not a poster")
    return folder


def test_expand_inputs_walks_folders_and_keeps_files_and_urls(posters, tmp_path):
    out = expand_inputs([str(posters), "missing.jpg", "https://example.org/a.jpg"])
    assert out[:4] == sorted(out[:4])
    assert {Path(p).name for p in out[:4]} == {"114709.jpg", "113277.jpg", "120338.jpg",
                                               "tt0110912.png"}
    assert out[4:] == ["missing.jpg", "https://example.org/a.jpg"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(PosterGenreError, match="no poster images"):
        expand_inputs([tmp_path / "empty"])


def test_titles_from_labels_csv(tmp_path):
    labels = tmp_path / "movies.csv"
    labels.write_text("imdbId,Title,Genre\n114709,Toy Story (1995),Animation|Comedy\n"
                      "110912,Pulp Fiction (1994),Crime|Drama\n", encoding="utf-8")
    titles = load_titles(labels)
    assert title_of("posters/114709.jpg", titles) == "Toy Story (1995)"
    assert title_of("https://x.org/p/tt0110912.jpg?s=1", titles) == "Pulp Fiction (1994)"
    assert title_of("posters/999.jpg", titles) is None
    assert file_name("https://x.org/p/poster.jpg?s=1") == "poster.jpg"


def test_predict_stream_matches_predictor_and_reports_bad_inputs(tiny_run, posters, tmp_path):
    predictor = P.Predictor.load(tiny_run, backend="torch", batch_size=2)
    good = expand_inputs([posters])
    bad_image = tmp_path / "bad.jpg"
    bad_image.write_bytes(b"this is text")
    sources = [good[0], str(tmp_path / "missing.jpg"), good[1], str(bad_image), *good[2:]]
    done: list[int] = []
    results = list(P.predict_stream(predictor, sources, on_done=done.append))
    assert [r.source for r in results] == sources
    assert sum(done) == len(sources)
    errors = {r.source: r.error for r in results if r.error}
    assert set(errors) == {str(tmp_path / "missing.jpg"), str(bad_image)}
    assert "no such file" in errors[str(tmp_path / "missing.jpg")]
    expected = predictor.predict_files(good)
    got = np.stack([r.probabilities for r in results if r.error is None])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_read_input_fetches_urls_and_names_them_in_errors(httpserver, posters):
    data = (posters / "114709.jpg").read_bytes()
    httpserver.expect_request("/poster.jpg").respond_with_data(data, content_type="image/jpeg")
    httpserver.expect_request("/gone.jpg").respond_with_data("nope", status=404)
    httpserver.expect_request("/half.jpg").respond_with_data(data[:300], content_type="image/jpeg")
    url = httpserver.url_for("/poster.jpg")
    np.testing.assert_array_equal(read_input(url, SIZE),
                                  read_input(str(posters / "114709.jpg"), SIZE))
    with pytest.raises(FetchError, match="HTTP 404"):
        read_input(httpserver.url_for("/gone.jpg"), SIZE)
    half = httpserver.url_for("/half.jpg")
    with pytest.raises(InvalidImageError) as info:
        read_input(half, SIZE)
    assert str(info.value).startswith(f"{half}: ") and "uploaded bytes" not in str(info.value)


def _invoke(*args: str):
    return run_cli("predict", "--backend", "torch", *args)


def test_cli_json_lines(tiny_run, posters):
    result = _invoke(str(posters), "--model", str(tiny_run), "--format", "json", "--top-k", "2")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 4
    for rec in lines:
        assert set(rec) == {"path", "title", "top", "scores"}
        assert list(rec["scores"]) == GENRES
        top = dict(rec["top"])
        assert len(top) == 2 and top == {g: rec["scores"][g] for g in top}
        assert min(top.values()) >= max(p for g, p in rec["scores"].items() if g not in top)


def test_cli_table_titles_csv_and_failures(tiny_run, posters, tmp_path):
    labels = tmp_path / "movies.csv"
    labels.write_text("imdbId,Title,Genre\n114709,Toy Story (1995),Comedy\n", encoding="utf-8")
    missing = str(tmp_path / "missing.jpg")
    result = _invoke(str(posters / "114709.jpg"), missing, str(posters / "113277.jpg"),
                     "--model", str(tiny_run), "--labels", str(labels))
    assert result.exit_code == 1
    rows = result.stdout.splitlines()
    assert rows[0].startswith("Toy Story (1995)   ") and rows[1].startswith("113277.jpg")
    assert rows[0].count("(0.") + rows[0].count("(1.") == 3  # three genres with scores
    assert f"error: {missing}: no such file" in result.stderr

    result = _invoke(str(posters), "--model", str(tiny_run), "--format", "csv")
    table = list(csv.reader(io.StringIO(result.stdout)))
    assert table[0] == ["path", "title", "top", *GENRES]
    assert len(table) == 5 and all(len(r) == 3 + len(GENRES) for r in table)


def test_cli_threshold_lists_genres_over_threshold(tiny_run, posters):
    result = _invoke(str(posters), "--model", str(tiny_run), "--format", "json",
                     "--threshold", "0")
    for rec in map(json.loads, result.stdout.splitlines()):
        assert len(rec["top"]) == len(GENRES)  # threshold 0: every genre
    result = _invoke(str(posters), "--model", str(tiny_run), "--format", "json",
                     "--threshold", "tuned")
    for rec in map(json.loads, result.stdout.splitlines()):
        assert {g for g, _ in rec["top"]} == {g for g, p in rec["scores"].items() if p >= 0.5}
    assert _invoke(str(posters), "--threshold", "high").exit_code == 2


@pytest.mark.realdata
def test_cli_on_real_posters_with_real_titles(tiny_run, real_data):
    posters = [str(real_data / "posters" / f"{i}.jpg") for i in (114709, 113277)]
    result = _invoke(*posters, "--model", str(tiny_run), "--labels",
                     str(real_data / "movies.csv"), "--format", "json")
    assert result.exit_code == 0, result.output
    titles = [json.loads(line)["title"] for line in result.stdout.splitlines()]
    assert titles == ["Toy Story (1995)", "Heat (1995)"]


def test_float16_weights_load_back_and_predict_nearly_the_same(tiny_run, posters, tmp_path):
    """How the shipped model is stored: float16 safetensors, read back into float32."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from postergenre.io import save_weights

    half = tmp_path / "half"
    shutil.copytree(tiny_run, half)
    state = load_file(str(tiny_run / "weights.safetensors"))
    save_weights(state, half / "weights.safetensors", dtype=torch.float16)
    stored = load_file(str(half / "weights.safetensors"))
    assert {str(v.dtype) for k, v in stored.items() if state[k].is_floating_point()} == \
        {"torch.float16"}
    assert all(stored[k].dtype == v.dtype for k, v in state.items() if not v.is_floating_point())
    files = sorted(posters.glob("*.jpg"))
    full = P.Predictor.load(tiny_run, backend="torch").predict_files(files)
    small = P.Predictor.load(half, backend="torch").predict_files(files)
    assert small.dtype == np.float32 and 0 < np.abs(full - small).max() < 1e-2


def test_titles_of_the_shipped_models_dataset_are_found(tmp_path, monkeypatch):
    """Predict finds the titles of the posters of the dataset the shipped model names."""
    from conftest import make_small_dataset

    from postergenre.run import load_run

    shipped = load_run(None)
    assert shipped.dataset
    where = tmp_path / Path(shipped.dataset)
    dataset = make_small_dataset(where.parent / "build", shipped.genres[:3], (3, 1, 1))
    dataset.rename(where)
    monkeypatch.chdir(tmp_path)
    poster = where.parent / "build" / "p" / "0.jpg"
    result = run_cli("predict", str(poster), "--backend", "torch")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("t0 ")  # the title, not the file name


def test_titles_of_a_features_run_are_found(tmp_path):
    from conftest import make_small_dataset, train_features

    dataset = make_small_dataset(tmp_path, ["Comedy", "Drama"], (4, 2, 1))
    run = train_features(dataset, tmp_path / "run", (64, 48), epochs=1, hidden=4)
    titles = load_titles(None, P.load_run(run).dataset)
    assert titles[0] == "t0" and titles[200] == "t0"
