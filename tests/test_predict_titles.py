"""Posters with titles: fused scores only where a title is given, poster-only otherwise."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import make_poster, make_tiny_run, run_cli

from postergenre.models.text import Fusion, TitleModel
from postergenre.predict import Predictor
from postergenre.train.text import save_text

GENRES = ["Comedy", "Drama", "Horror"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tiny poster run twice: without, and with a title model."""
    root = tmp_path_factory.mktemp("runs")
    plain = make_tiny_run(root / "plain", GENRES)
    fused = root / "fused"
    shutil.copytree(plain, fused)
    titles = ["Crazy Wedding (1999)", "Mother River (1960)", "Zombie Blood (1985)"] * 20
    y = np.tile(np.eye(3, dtype=np.float32), (20, 1))
    model = TitleModel(GENRES, n_features=2**10).fit(titles, y)
    fusion = Fusion(GENRES, "global", np.ones(3), np.ones(3), np.zeros(3), np.full(3, -0.7))
    save_text(fused, model, fusion, np.full(3, 0.4), {"fusion_fitted_on": "val"})
    posters = [make_poster(root / "p" / f"{i}.jpg", seed=i, size=(80, 80)) for i in (11, 12)]
    return plain, fused, posters


def test_fused_only_with_a_title(runs) -> None:
    plain, fused, posters = runs
    a, b = Predictor.load(plain, backend="torch"), Predictor.load(fused, backend="torch")
    assert a.title_side is None and b.title_side is not None
    base = a.predict_files(posters)
    posters_only = Predictor.load(fused, backend="torch", titles=False, threshold=0.3)
    assert posters_only.title_side is None and posters_only.fused_thresholds is None
    assert np.array_equal(posters_only.predict_files(posters, ["Zombie Blood (1985)", None]), base)
    assert np.all(posters_only.thresholds == np.float32(0.3))
    fixed = Predictor.load(fused, backend="torch", threshold=0.3)
    assert np.all(fixed.fused_thresholds == np.float32(0.3))
    assert not np.all(b.fused_thresholds == np.float32(0.3))  # the run's own are untouched
    assert np.array_equal(b.predict_files(posters), base)
    assert np.array_equal(b.predict_files(posters, titles=[None, "  "]), base)
    assert np.array_equal(a.predict_files(posters, titles=["Zombie Blood (1985)", None]), base)
    out = b.predict_files(posters, titles=["Zombie Blood (1985)", None])
    assert not np.allclose(out[0], base[0]) and np.array_equal(out[1], base[1])
    assert out[0][2] > base[0][2] and out[0][0] < base[0][0]  # the title says Horror


def _invoke(*args: str):
    return run_cli("predict", "--backend", "torch", "--format", "json", *args)


def test_cli_title(runs) -> None:
    _, fused, posters = runs
    r = _invoke(str(posters[0]), "--model", str(fused), "--title", "Zombie Blood (1985)")
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout.splitlines()[0])
    assert record["signals"] == ["poster", "title"] and record["title"] == "Zombie Blood (1985)"
    plain = json.loads(_invoke(str(posters[0]), "--model", str(fused)).stdout.splitlines()[0])
    assert "signals" not in plain and plain["scores"] != record["scores"]
    r = _invoke(str(posters[0]), str(posters[1]), "--model", str(fused), "--title", "X (2000)")
    assert r.exit_code == 2


def test_cli_titles_file_with_bad_rows(runs, tmp_path) -> None:
    _, fused, posters = runs
    csv = tmp_path / "movies.csv"
    csv.write_text("imdbId,Title,Genre\n11,Zombie Blood (1985),Horror\nabc,Bad Id (1990),Drama\n"
                   "13,,Drama\n", encoding="utf-8")
    r = _invoke(*map(str, posters), "--model", str(fused), "--titles", str(csv))
    assert r.exit_code == 0, r.output
    records = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [rec["signals"] for rec in records] == [["poster", "title"], ["poster"]]
    assert "row 2: no integer imdbId" in r.stderr and "row 3: no title" in r.stderr


def test_evaluate_prints_poster_only_and_fused_side_by_side(runs, tmp_path) -> None:
    from conftest import make_small_dataset

    plain, fused, _ = runs
    dataset = make_small_dataset(tmp_path, GENRES, (6, 3, 12))
    result = run_cli("evaluate", str(fused), "--data", str(dataset),
                                      "--backend", "torch", "--no-report", "--bootstrap", "0",
                                      "--out", str(tmp_path / "e"))
    assert result.exit_code == 0, result.output
    assert "poster only" in result.output and "poster + title" in result.output
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["fused"]["posters_with_title"] == 12
    assert metrics["fused"]["micro_ap"] != metrics["model"]["micro_ap"]
    result = run_cli("evaluate", str(plain), "--data", str(dataset), "--backend", "torch",
                     "--no-report", "--bootstrap", "0", "--out", str(tmp_path / "p"))
    assert result.exit_code == 0 and "poster + title" not in result.output
    assert "fused" not in json.loads((tmp_path / "p" / "metrics.json").read_text())
    result = run_cli("evaluate", str(fused), "--data", str(dataset), "--backend", "torch",
                     "--no-report", "--bootstrap", "0", "--no-titles", "--out", str(tmp_path / "n"))
    assert result.exit_code == 0 and "poster + title" not in result.output
    assert "fused" not in json.loads((tmp_path / "n" / "metrics.json").read_text())


def test_explain_lists_the_title_words_that_pushed_each_genre(runs, tmp_path) -> None:
    plain, fused, posters = runs
    args = ["explain", str(posters[0]), "--genre", "Horror", "--title", "Zombie Blood (1985)",
            "--out", str(tmp_path / "x")]
    result = run_cli(*args, "--model", str(fused))
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.strip().startswith("Horror:"))
    words = dict(w.rsplit(" ", 1) for w in line.split(":", 1)[1].strip().split(", "))
    assert float(words["zombie"]) > 0  # the training titles made "zombie" a Horror word
    result = run_cli(*args[:-2], "--out", str(tmp_path / "y"), "--model",
                                      str(plain))
    assert result.exit_code == 0 and "Horror:" not in result.output


def test_title_word_contributions_add_up_to_the_title_logit(runs) -> None:
    _, fused, _ = runs
    model = Predictor.load(fused, backend="torch").title_side.model
    title = "Crazy Zombie Wedding (1999)"
    tokens, parts = model.contributions(title)
    assert tokens == ["crazy", "zombie", "wedding", "(1990s)"]
    np.testing.assert_allclose(parts.sum(0) + model.intercept,
                               model.decision_function([title])[0], atol=1e-4)


def test_the_title_side_is_read_once_per_run(runs, monkeypatch) -> None:
    """Predictor and Explainer share the run's TitleSide: explaining with a title reads no
    title model from disk."""
    from postergenre.explain import Explainer

    _, fused, posters = runs
    real, loads = TitleModel.load, []

    def counted(settings, weights):
        loads.append(settings)
        return real(settings, weights)

    monkeypatch.setattr(TitleModel, "load", counted)
    predictor = Predictor.load(fused, backend="torch")
    explainer = Explainer(predictor.run)
    for _ in range(3):
        e = explainer.explain(posters[0], k=2, title="Zombie Blood (1985)")
        assert e.title_words is not None and len(e.title_words) == 2
    assert len(loads) == 1
    assert explainer.explain(posters[0], k=2).title_words is None
