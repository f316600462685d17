"""The training loop, the run directory it writes, resume, augmentation and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dataset, run_cli
from safetensors.torch import load_file

from postergenre.errors import PosterGenreError, RunError
from postergenre.run import load_run, read_history
from postergenre.train.augment import apply_affine, random_affine
from postergenre.train.fit import fit as train
from postergenre.train.recipes import RECIPES, make_config

GENRES = ["Action", "Comedy", "Drama"]
TINY = {"input_size": [76, 76]}


pytestmark = pytest.mark.usefixtures("isolated")


def tiny_config(**kw):
    base = dict(model="custom-cnn", model_kwargs=TINY, epochs=2, batch_size=8, patience=0)
    return make_config(**{**base, **kw})


def test_train_writes_a_complete_run(tmp_path):
    data = make_dataset(tmp_path / "data")
    summary = train(data, tmp_path / "run", tiny_config())
    run = load_run(tmp_path / "run")
    assert run.genres == GENRES and run.input_size == (76, 76)
    assert set(run.thresholds) == set(GENRES)
    history = read_history(tmp_path / "run")
    assert [r["epoch"] for r in history] == [1, 2] == list(range(1, summary["epochs"] + 1))
    assert summary["best_val_macro_ap"] == max(r["val_macro_ap"] for r in history)
    model = run.build_model()  # the best weights load into the registered model
    assert model(torch.rand(2, 3, 76, 76)).shape == (2, 3)


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    data = make_dataset(tmp_path / "data")
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(data, tmp_path / name, tiny_config(epochs=1, seed=seed, augment=True))
    a, b, c = (load_file(str(tmp_path / n / "weights.safetensors")) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resumed_run_ends_with_the_same_weights(tmp_path):
    data = make_dataset(tmp_path / "data")
    config = tiny_config(epochs=3, augment=True, resample=0.5, schedule="cosine")
    train(data, tmp_path / "full", config)

    def kill_after_first(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(data, tmp_path / "cut", config, on_epoch_end=kill_after_first)
    assert len(read_history(tmp_path / "cut")) == 1
    train(None, tmp_path / "cut", resume=True)
    full = load_file(str(tmp_path / "full" / "weights.safetensors"))
    cut = load_file(str(tmp_path / "cut" / "weights.safetensors"))
    assert all(torch.equal(full[k], cut[k]) for k in full)
    last = [json.loads(p.read_text()) for p in (tmp_path / "full" / "checkpoint" / "latest.json",
                                                tmp_path / "cut" / "checkpoint" / "latest.json")]
    assert last[0]["history"][-1]["train_loss"] == last[1]["history"][-1]["train_loss"]
    assert len(read_history(tmp_path / "cut")) == 3


def test_early_stopping_stops_and_keeps_the_best_epoch(tmp_path):
    data = make_dataset(tmp_path / "data")
    summary = train(data, tmp_path / "run", tiny_config(epochs=30, patience=1, lr=1e-9))
    assert summary["epochs"] < 30
    history = read_history(tmp_path / "run")
    assert summary["best_epoch"] == 1 + int(np.argmax([r["val_macro_ap"] for r in history]))


def test_existing_run_is_not_overwritten(tmp_path):
    data = make_dataset(tmp_path / "data")
    train(data, tmp_path / "run", tiny_config(epochs=1))
    with pytest.raises(RunError, match="already holds a run"):
        train(data, tmp_path / "run", tiny_config(epochs=1))
    with pytest.raises(RunError, match="no run to resume"):
        train(None, tmp_path / "nothing", resume=True)
    # killed before its first checkpoint: --resume starts it over with its stored settings
    shutil.rmtree(tmp_path / "run" / "checkpoint")
    assert train(None, tmp_path / "run", resume=True)["epochs"] == 1


def test_recipes_and_overrides():
    custom = make_config("seed-custom")  # the notebook: Adam 1e-3, batch 64, 30 epochs, plain
    assert (custom.optimizer, custom.lr, custom.batch_size, custom.epochs, custom.augment,
            custom.weight_decay, custom.patience) == ("adam", 1e-3, 64, 30, False, 0.0, 0)
    vgg = make_config("seed-vgg16", "end-to-end", epochs=2)
    assert (vgg.model, vgg.optimizer, vgg.lr, vgg.epochs, vgg.batch_size, vgg.augment) == (
        "vgg16", "rmsprop", 1e-4, 2, 64, True)
    assert RECIPES["seed-custom"]["epochs"] == 30
    with pytest.raises(PosterGenreError, match="unknown recipe"):
        make_config("nope")
    with pytest.raises(PosterGenreError, match="optimizer"):
        make_config(optimizer="lion")


def test_augmentation_is_identity_at_zero_and_flips_exactly():
    from postergenre.train.augment import AugmentConfig

    x = torch.rand(2, 3, 20, 12)
    still = AugmentConfig(rotation=0, shift=0, shear=0, zoom=0, flip=False)
    assert torch.allclose(apply_affine(x, random_affine(2, (20, 12), config=still)), x, atol=1e-5)
    flip = AugmentConfig(rotation=0, shift=0, shear=0, zoom=0, flip=True)
    g = torch.Generator().manual_seed(0)
    theta = random_affine(64, (20, 12), g, config=flip)
    flipped = theta[:, 0, 0] < 0
    assert 0 < flipped.sum() < 64
    y = apply_affine(x[:1].expand(64, -1, -1, -1), theta)
    assert torch.allclose(y[flipped], x[:1].flip(-1).expand_as(y[flipped]), atol=1e-5)


def test_augmentation_keeps_rotations_rigid_on_non_square_images():
    from postergenre.train.augment import AugmentConfig

    rot = AugmentConfig(rotation=90, shift=0, shear=0, zoom=0, flip=False)
    theta = random_affine(256, (200, 100), torch.Generator().manual_seed(1), config=rot)
    # In pixel units the linear part must be a rotation: orthonormal with determinant 1.
    d = torch.tensor([50.0, 100.0])
    a = theta[:, :, :2] * d.view(1, 2, 1) / d.view(1, 1, 2)
    eye = torch.eye(2).expand_as(a)
    assert torch.allclose(a @ a.transpose(1, 2), eye, atol=1e-5)


def test_cli_trains_and_resumes(tmp_path):
    

    data = make_dataset(tmp_path / "data")
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--model",
            "custom-cnn", "--model-arg", "input_size=[76,76]", "--epochs", "1",
            "--batch-size", "8", "--loss", "asl", "--pos-weight", "--no-progress"]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    config = load_run(tmp_path / "run").config
    assert config.train["loss"] == "asl" and config.train["pos_weight"] is True
    assert config.model_kwargs == TINY
    result = run_cli("train", "--out", str(tmp_path / "run"), "--resume",
                                      "--no-progress")
    assert result.exit_code == 0, result.output
    assert len(read_history(tmp_path / "run")) == 1


def test_time_limit_stops_early_and_resume_finishes(tmp_path):
    data = make_dataset(tmp_path / "data")
    summary = train(data, tmp_path / "run", tiny_config(epochs=3), time_limit=1e-9)
    assert summary["epochs"] == 1 and (tmp_path / "run" / "thresholds.json").is_file()
    assert train(None, tmp_path / "run", resume=True)["epochs"] == 3


@pytest.mark.slow
def test_run_killed_with_sigkill_resumes_to_the_same_weights(tmp_path):
    """A real `postergenre train` process killed (SIGKILL) after its first checkpoint, then
    `--resume`d, ends with exactly the weights of a run that was never interrupted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    data = make_dataset(tmp_path / "data", {"train": 64, "val": 8, "test": 8})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "POSTERGENRE_CACHE": str(tmp_path / "cache")}
    args = ["--data", str(data), "--model", "custom-cnn", "--model-arg", "input_size=[76,76]",
            "--epochs", "8", "--batch-size", "8", "--patience", "0", "--augment",
            "--no-progress"]

    def cli(out: Path, *extra: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "postergenre", "train", *args, "--out", str(out)]
        return subprocess.Popen([*command, *extra], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)

    assert cli(tmp_path / "full").wait(timeout=300) == 0
    victim = cli(tmp_path / "cut")
    latest = tmp_path / "cut" / "checkpoint" / "latest.json"
    deadline = time.monotonic() + 120
    while not latest.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    checkpointed = len(json.loads(latest.read_text())["history"])
    assert 1 <= checkpointed < 8  # killed midway, after a checkpoint

    resumed = subprocess.run([sys.executable, "-m", "postergenre", "train", "--out",
                              str(tmp_path / "cut"), "--resume", "--no-progress"],
                             env=env, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()
    full = load_file(str(tmp_path / "full" / "weights.safetensors"))
    cut = load_file(str(tmp_path / "cut" / "weights.safetensors"))
    assert all(torch.equal(full[k], cut[k]) for k in full)
    assert len(read_history(tmp_path / "cut")) == 8
