"""The fast path: a head trained on cached features becomes a run that Predictor loads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import make_poster, make_small_dataset, run_cli, train_features
from safetensors.numpy import load_file

from postergenre.errors import PosterGenreError
from postergenre.predict import Predictor
from postergenre.run import load_run, read_history
from postergenre.train.features import FeatureSpec, extract_features
from postergenre.train.sources import probs_of

GENRES = ["Comedy", "Drama", "Horror"]
SIZE = (64, 48)


pytestmark = pytest.mark.usefixtures("isolated")


@pytest.fixture
def dataset(tmp_path):
    return make_small_dataset(tmp_path, GENRES)


@pytest.mark.parametrize("options", [{"head": "linear"},
                                     {"head": "mlp", "pool": "meanmax", "flip": True,
                                      "hidden": 8, "loss": "asl", "pos_weight": True}])
def test_run_predicts_what_the_cached_features_predict(dataset, tmp_path, options):
    out = train_features(dataset, tmp_path / "run", SIZE, epochs=3, **options)
    run = load_run(out)
    assert run.config.partial_weights and set(run.thresholds) == set(GENRES)
    assert all(k.startswith("head.") for k in load_file(str(out / "weights.safetensors")))
    assert 1 <= len(read_history(out)) <= 3
    val = pd.read_csv(dataset / "val.csv")["poster"].tolist()
    probs = Predictor.load(out, backend="torch").predict_files(val)
    model = run.build_model()
    spec = FeatureSpec(input_size=SIZE, pool="multi")
    x = extract_features(val, spec, backend="torch")[:, :model.feature_dim]
    if options.get("flip"):
        flipped = FeatureSpec(input_size=SIZE, pool="multi", flip=True)
        x = (x + extract_features(val, flipped)[:, :model.feature_dim]) / 2
    np.testing.assert_allclose(probs, probs_of(model.head, x), rtol=1e-4, atol=1e-5)


def test_only_models_that_declare_the_mode(dataset, tmp_path):
    with pytest.raises(PosterGenreError, match="cannot train in features mode"):
        train_features(dataset, tmp_path / "run", (80, 80), model="custom-cnn")
    assert not (tmp_path / "run").exists()  # checked before anything is written


def test_shipped_model_is_a_small_fine_tuned_lite0_run(tmp_path):
    from postergenre.run import default_run_dir

    run = load_run(None)
    assert run.model_name == "efficientnet-lite0" and run.config.partial_weights
    assert run.config.model_kwargs["trainable_blocks"] == 2
    assert set(run.thresholds) == set(run.genres)
    weights = default_run_dir() / "weights.safetensors"
    assert weights.stat().st_size < 5_000_000
    stored = load_file(str(weights))
    assert any(k.startswith("backbone._blocks.15.") for k in stored)  # fine-tuned, shipped
    assert not any(k.startswith("backbone._blocks.13.") for k in stored)  # from the package
    posters = [make_poster(tmp_path / f"{i}.jpg", seed=i) for i in range(2)]
    probs = Predictor.load(None, backend="torch").predict_files(posters)
    assert probs.shape == (2, len(run.genres)) and ((probs > 0) & (probs < 1)).all()
    pytest.importorskip("onnxruntime")
    from postergenre.predict import make_backend

    x = Predictor.load(None, backend="torch").load_batch(posters)
    from postergenre.export import checked_int8

    assert (default_run_dir() / "int8.json").is_file()  # shipped with its int8 check
    # int8 where that check passed and this CPU's int8 kernels agree with it (AVX2 without
    # VNNI does not: fp32 there)
    default = make_backend(run, "onnx")
    assert default.int8 == (checked_int8(run) is not None)
    np.testing.assert_allclose(default(x), probs, atol=1e-4 if not default.int8 else 0.1)


def test_train_cli_fast_path_defaults_to_the_shipped_recipe(dataset, tmp_path):
    """`postergenre train --model efficientnet-lite0` on a CPU trains a head on cached
    features with the shipped model's head and pooling, unless options say otherwise."""
    

    args = ["train", "--data", str(dataset), "--model", "efficientnet-lite0", "--epochs", "2",
            "--model-arg", f"input_size={list(SIZE)}", "--no-progress"]
    result = run_cli(*args, "--out", str(tmp_path / "a"))
    assert result.exit_code == 0, result.output
    shipped = load_run(None).config.model_kwargs
    kwargs = load_run(tmp_path / "a").config.model_kwargs
    assert (kwargs["head"], kwargs["pool"]) == (shipped["head"], shipped["pool"])
    result = run_cli(*args, "--out", str(tmp_path / "b"), "--head", "linear")
    assert result.exit_code == 0, result.output
    assert load_run(tmp_path / "b").config.model_kwargs["head"] == "linear"
    probs = Predictor.load(tmp_path / "b", backend="torch").predict_files(
        [load_split_paths(dataset)[0]])
    assert probs.shape == (1, len(GENRES)) and np.all((probs >= 0) & (probs <= 1))


def load_split_paths(dataset):
    from postergenre.data.dataset import load_split

    return [str(p) for p in load_split(dataset, "test").paths]
