"""The title model, its fusion with the poster model, and its place in a run folder."""

from __future__ import annotations

import numpy as np
import pytest

from postergenre.errors import RunError
from postergenre.models.text import Fusion, TitleModel
from postergenre.train.text import cross_fit_fusion, fit_fusion, save_text

GENRES = ["Comedy", "Drama", "Horror"]
WORDS = {"Comedy": ["laugh", "wedding", "crazy"], "Drama": ["river", "mother", "silence"],
         "Horror": ["zombie", "blood", "night"]}


def synthetic(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Titles whose words give their genre away; Horror titles are from the 1980s."""
    rng = np.random.default_rng(seed)
    titles, y = [], np.zeros((n, len(GENRES)), np.float32)
    for i in range(n):
        g = i % len(GENRES)
        words = list(rng.choice(WORDS[GENRES[g]], 2)) + [f"w{rng.integers(50)}"]
        year = 1980 + rng.integers(10) if GENRES[g] == "Horror" else 1950 + rng.integers(60)
        titles.append(f"{' '.join(words).title()} ({year})")
        y[i, g] = 1
    return titles, y


@pytest.fixture(scope="module")
def fitted() -> TitleModel:
    titles, y = synthetic(240)
    return TitleModel(GENRES, n_features=2**10).fit(titles, y)


def test_title_model_learns_words_and_years(fitted: TitleModel) -> None:
    z = fitted.decision_function(["Zombie Blood (1985)", "Crazy Wedding (1999)", "Mother (1960)"])
    assert z.shape == (3, 3) and z.dtype == np.float32
    assert list(z.argmax(axis=1)) == [2, 0, 1]
    p = fitted.predict_proba(["", "Untitled"])
    assert np.all((p > 0) & (p < 1))
    # the year alone moves Horror: 1980s titles lean to it
    eighties, fifties = fitted.decision_function(["w3 (1984)", "w3 (1955)"])[:, 2]
    assert eighties > fifties


def test_title_model_round_trip(fitted: TitleModel, tmp_path) -> None:
    files = tmp_path / "t" / "text.json", tmp_path / "t" / "text.safetensors"
    fitted.save(*files)
    size = sum(f.stat().st_size for f in (tmp_path / "t").iterdir())
    assert size < 3 * 1024 * 1024
    assert not list((tmp_path / "t").glob("*.pkl"))
    loaded = TitleModel.load(*files)
    titles = ["Zombie Night (1987)", "Silence"]
    np.testing.assert_allclose(loaded.decision_function(titles),
                               fitted.decision_function(titles), atol=2e-3)  # float16 weights
    with pytest.raises(RunError, match="missing"):
        TitleModel.load(tmp_path / "nowhere" / "text.json", files[1])
    files[0].write_text("{not json")
    with pytest.raises(RunError, match="unreadable"):
        TitleModel.load(*files)


def test_title_model_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match="labels"):
        TitleModel(GENRES).fit(["a", "b"], np.zeros((3, 3)))


def test_fusion_zero_weight_is_the_poster_model() -> None:
    rng = np.random.default_rng(0)
    poster = rng.uniform(0.01, 0.99, (5, 3)).astype(np.float32)
    fusion = Fusion(GENRES, "per-genre", np.ones(3), np.zeros(3), np.zeros(3), np.zeros(3))
    np.testing.assert_allclose(fusion(poster, rng.normal(size=(5, 3))), poster, atol=1e-6)


def test_fit_fusion_weighs_text_by_its_value() -> None:
    rng = np.random.default_rng(1)
    n = 600
    y = (rng.uniform(size=(n, 3)) < 0.3).astype(np.float32)
    poster = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1.5, y.shape))))
    useful = 3 * (y - 0.5) + rng.normal(0, 1.0, y.shape)
    noise = rng.normal(0, 1.0, y.shape)
    for form in ("global", "per-genre", "stack"):
        good = fit_fusion(poster, useful, y, y, GENRES, form)
        bad = fit_fusion(poster, noise, y, y, GENRES, form)
        assert np.all(good.text_weight > 0.3) and np.all(np.abs(bad.text_weight) < 0.2), form
    oof = cross_fit_fusion(poster, useful, y, y, GENRES, "per-genre")
    assert oof.shape == y.shape and np.all((oof > 0) & (oof < 1))
    restored = Fusion.from_json(good.to_json())
    np.testing.assert_allclose(restored(poster, useful), good(poster, useful))


def test_save_text_in_a_run(fitted: TitleModel, tmp_path) -> None:
    from conftest import make_tiny_run

    from postergenre.run import FUSION, TEXT_DIR, TextSettings, load_run

    run_dir = make_tiny_run(tmp_path / "run", GENRES)
    before = (run_dir / "weights.safetensors").read_bytes()
    fusion = Fusion(GENRES, "global", np.ones(3), np.full(3, 0.7), np.zeros(3), np.zeros(3))
    save_text(run_dir, fitted, fusion, np.array([0.3, 0.4, 0.5]), {"fusion_fitted_on": "val"})
    run = load_run(run_dir)
    assert isinstance(run.config.text, TextSettings) and run.config.text.fusion == "global"
    assert run.config.text.title_model["n_features"] == fitted.n_features
    assert (run_dir / "weights.safetensors").read_bytes() == before
    assert Fusion.load(run_dir / TEXT_DIR / FUSION).text_weight.tolist() == [0.7] * 3
    side = run.title_side
    assert side is not None and side is run.title_side  # read once
    assert side.thresholds.tolist() == pytest.approx([0.3, 0.4, 0.5])
    with pytest.raises(RunError, match="genres"):
        save_text(run_dir, TitleModel(["A", "B", "C"]), fusion, np.zeros(3), {})
