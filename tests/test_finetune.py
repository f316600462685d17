"""Fine-tuning on a cached trunk: the tail trains, the run predicts what it was trained as."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_small_dataset, run_cli, train_features, train_finetune
from safetensors.numpy import load_file

from postergenre.data.dataset import load_split
from postergenre.errors import PosterGenreError
from postergenre.models import create_model
from postergenre.predict import Predictor
from postergenre.run import load_run, read_history
from postergenre.train.features import FeatureSpec, extract_features
from postergenre.train.sources import probs_of

GENRES = ["Comedy", "Drama", "Horror"]
SIZE = (64, 48)

pytestmark = pytest.mark.usefixtures("isolated")


@pytest.fixture
def dataset(tmp_path):
    return make_small_dataset(tmp_path, GENRES, (16, 6, 3))


@pytest.fixture
def head_run(dataset, tmp_path):
    return train_features(dataset, tmp_path / "head", SIZE, hidden=8, epochs=2)


def test_trunk_then_tail_equals_the_whole_network():
    model = create_model("efficientnet-lite0", 3, input_size=SIZE, pool="multi").eval()
    x = torch.rand(2, 3, *SIZE)
    with torch.no_grad():
        whole = model.features(x)
        for cut in (9, 14, 15):
            rows = model.trunk_features(x, cut)
            assert torch.allclose(model.tail(*model.split_trunk_features(rows, cut), cut), whole,
                                  atol=1e-5)


def test_finetuned_run_changes_only_the_tail_and_loads_like_any_run(dataset, head_run,
                                                                   tmp_path):
    out = train_finetune(dataset, tmp_path / "ft", head_run, trainable_blocks=2, epochs=2,
                         batch_size=8, lr=1e-2)
    run = load_run(out)
    assert run.config.model_kwargs["trainable_blocks"] == 2
    assert [r["epoch"] for r in read_history(out)] == [1, 2]
    stored = load_file(str(out / "weights.safetensors"))
    assert any(k.startswith("backbone._blocks.15.") for k in stored)
    assert not any(k.startswith("backbone._blocks.13.") for k in stored)  # frozen: not stored

    start = load_run(head_run).build_model().state_dict()
    last = load_file(str(out / "checkpoint" / "epoch-2" / "model.safetensors"))
    frozen = "backbone._blocks.13._project_conv.weight"
    tail = "backbone._blocks.15._project_conv.weight"
    assert np.array_equal(start[frozen].numpy(), last[frozen])
    assert not np.array_equal(start[tail].numpy(), last[tail])

    # Serving the run from whole posters gives what training saw through the cached trunk.
    val = load_split(dataset, "val")
    served = Predictor.load(out, backend="torch").predict_files(val.paths)
    model = run.build_model()
    spec = FeatureSpec("efficientnet-lite0", SIZE, "multi", cut=14)
    rows = extract_features(val.paths, spec, backend="torch")
    model.eval()
    np.testing.assert_allclose(served, probs_of(lambda r: model.tail_logits(r, 14), rows),
                               atol=2e-3)


def test_resume_continues_a_killed_run_to_the_same_weights(dataset, head_run, tmp_path):
    options = dict(trainable_blocks=1, epochs=3, batch_size=8, lr=1e-2)
    whole = train_finetune(dataset, tmp_path / "whole", head_run, **options)

    calls = {"n": 0}
    import postergenre.train.engine as ft

    real = ft.append_history

    def die_after_two(run_dir, record):
        real(run_dir, record)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    ft.append_history = die_after_two
    try:
        with pytest.raises(KeyboardInterrupt):
            train_finetune(dataset, tmp_path / "cut", head_run, **options)
    finally:
        ft.append_history = real
    resumed = train_finetune(dataset, tmp_path / "cut", head_run, resume=True)
    assert [r["epoch"] for r in read_history(resumed)] == [1, 2, 3]
    a, b = (load_file(str(p / "weights.safetensors")) for p in (whole, resumed))
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_resampling_reaches_the_cached_trunk(dataset, head_run, tmp_path):
    """--resample draws the finetune epochs too (the one epoch sampler of every mode)."""
    options = dict(trainable_blocks=1, epochs=1, batch_size=8, lr=1e-2)
    plain, again, resampled = (
        load_file(str(train_finetune(dataset, tmp_path / name, head_run, **options, **extra)
                      / "weights.safetensors"))
        for name, extra in (("plain", {}), ("again", {}), ("resampled", {"resample": 1.0})))
    assert all(np.array_equal(plain[k], again[k]) for k in plain)  # same seed, same run
    assert not all(np.array_equal(plain[k], resampled[k]) for k in plain)
    assert load_run(tmp_path / "resampled").train_settings["resample"] == 1.0


def test_bad_starting_points_are_refused(dataset, head_run, tmp_path):
    with pytest.raises(PosterGenreError, match="blocks must be between"):
        train_finetune(dataset, tmp_path / "a", head_run, trainable_blocks=0)
    out = train_finetune(dataset, tmp_path / "b", head_run, trainable_blocks=1, epochs=1,
                         batch_size=8)
    with pytest.raises(PosterGenreError, match="already holds a run"):
        train_finetune(dataset, out, head_run)
    with pytest.raises(PosterGenreError, match="trained in features mode"):
        train_finetune(dataset, tmp_path / "c", out)
    with pytest.raises(PosterGenreError, match="is an input of this run"):
        train_finetune(dataset, head_run.parent / "head", head_run)


def test_cli_init_fine_tunes_and_resume_finds_the_same_path(dataset, head_run, tmp_path):
    

    out = tmp_path / "cli"
    args = ["train", "--data", str(dataset), "--model", "efficientnet-lite0", "--init",
            str(head_run), "--trainable-blocks", "1", "--epochs", "1", "--batch-size", "8", "--out",
            str(out), "--no-progress"]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    assert "1 epochs" in result.output
    assert load_run(out).config.train["mode"] == "finetune"
    result = run_cli("train", "--out", str(out), "--resume", "--no-progress")
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in read_history(out)] == [1]  # finished: nothing more to do

    bad = run_cli("train", "--data", str(dataset), "--init", str(head_run),
                                   "--augment", "--out", str(tmp_path / "x"))
    assert bad.exit_code != 0 and "--augment does not apply to finetune" in bad.stderr
    assert not (tmp_path / "x").exists()
