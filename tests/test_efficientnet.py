"""EfficientNet-Lite: offline ImageNet weights, pooling layouts, frozen/fine-tune modes, ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from postergenre.errors import PosterGenreError
from postergenre.models import create_model, list_models
from postergenre.models.efficientnet import pretrained_path

SIZE = (64, 48)  # tiny inputs keep the tests fast


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def make(**kwargs):
    return create_model("efficientnet-lite0", 5, input_size=SIZE, **kwargs).eval()


def test_registered():
    assert {"efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"} <= set(list_models())


def test_features_match_the_package_model_on_scaled_input():
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_name("efficientnet-lite0", image_size=SIZE)
    reference.load_state_dict(torch.load(pretrained_path("lite0"), weights_only=True))
    reference.eval()
    x = torch.rand(2, 3, *SIZE)
    with torch.no_grad():
        expected = reference.extract_features(x * 2 - 1).mean((2, 3))  # [-1, 1] inputs
        got = make().features(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("pool", "dim"), [("mean", 1280), ("meanmax", 2560),
                                           ("multi", 2560 + 112 + 192 + 320)])
def test_pool_layouts_are_prefixes(pool, dim):
    x = torch.rand(2, 3, *SIZE)
    model, multi = make(pool=pool), make(pool="multi")
    with torch.no_grad():
        f, g = model.features(x), multi.features(x)
    assert model.feature_dim == dim and f.shape == (2, dim)
    torch.testing.assert_close(f, g[:, :dim])
    assert model(x).shape == (2, 5)


def test_frozen_mode_trains_and_stores_only_the_head():
    model = make()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("head.") for n in trainable)
    assert all(k.startswith("head.") for k in model.trained_keys())
    bn = model.backbone._bn1
    before = bn.running_mean.clone()
    model.train()
    model(torch.rand(4, 3, *SIZE))
    torch.testing.assert_close(bn.running_mean, before)  # frozen batch norm never moves


def test_fine_tune_last_blocks():
    model = make(trainable_blocks=2)
    last, first = model.backbone._blocks[-1], model.backbone._blocks[0]
    assert all(p.requires_grad for p in last.parameters())
    assert not any(p.requires_grad for p in first.parameters())
    keys = model.trained_keys()
    assert any(k.startswith("backbone._blocks.15.") for k in keys)
    assert not any(k.startswith("backbone._blocks.0.") for k in keys)
    model.train()
    assert last.training and not first.training
    assert len(make(trainable_blocks=-1).trained_keys()) == len(model.state_dict())


def test_flip_average_is_mirror_invariant():
    model = make(flip_average=True)
    x = torch.rand(2, 3, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x.flip(3)), rtol=1e-4, atol=1e-5)


def test_mlp_head_and_bad_options():
    model = make(head="mlp", hidden=16, dropout=0.5)
    assert model.head[-1].in_features == 16
    for kwargs in ({"pool": "median"}, {"head": "tree"}):
        with pytest.raises(PosterGenreError):
            make(**kwargs)
    with pytest.raises(PosterGenreError, match="variant"):
        from postergenre.models.efficientnet import EfficientNetLite

        EfficientNetLite(5, variant="lite9")


def test_exports_to_one_onnx_graph(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from postergenre.export import export_onnx

    model = make(pool="multi", head="mlp", hidden=8, flip_average=True)
    path = export_onnx(model, tmp_path / "m.onnx", SIZE)
    x = np.random.default_rng(0).random((3, 3, *SIZE), dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)
