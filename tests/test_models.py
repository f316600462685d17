"""custom-cnn and vgg16: the original architectures, behind the registry."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from postergenre.errors import PosterGenreError
from postergenre.models import create_model, list_models
from postergenre.models.vgg16 import BLOCK5_START, VGG16


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_custom_cnn_is_the_original_architecture():
    model = create_model("custom-cnn", 28)
    assert model.input_size == (200, 150)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 64]
    assert all(c.kernel_size == (5, 5) and c.padding == (0, 0) for c in convs)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    # 200x150 -> valid 5x5 convs and 2x2 pools -> 8 x 5 x 64 = 2560 features
    assert [(m.in_features, m.out_features) for m in linears] == [(2560, 128), (128, 64), (64, 28)]
    drops = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops == [0.25] * 4 + [0.5] * 2
    model.eval()
    assert model(torch.rand(2, 3, 200, 150)).shape == (2, 28)


def test_custom_cnn_relu_after_pool_is_the_original_order():
    """ReLU after the max pool computes what Keras's Conv(activation='relu') -> MaxPool does."""
    torch.manual_seed(0)
    model = create_model("custom-cnn", 5, input_size=(100, 76)).eval()
    f = list(model.features)
    keras_order = torch.nn.Sequential(*[f[i + j] for i in range(0, len(f), 4)
                                        for j in (0, 2, 1, 3)])
    x = torch.rand(3, 3, 100, 76, requires_grad=True)
    ours = model(x)
    (g_ours,) = torch.autograd.grad(ours.sum(), x)
    theirs = model.classifier(keras_order(x))
    (g_theirs,) = torch.autograd.grad(theirs.sum(), x)
    assert torch.allclose(ours, theirs, atol=1e-6) and torch.allclose(g_ours, g_theirs, atol=1e-6)


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_custom_cnn_dropout_keeps_the_bernoulli_distribution(p):
    """The byte-mask dropout: each value kept with probability 1 - p and scaled by 1 / (1 - p),
    in the input's memory layout, the gradient through the same mask; identity in eval."""
    from postergenre.models.custom_cnn import Dropout

    torch.manual_seed(0)
    drop = Dropout(p)
    x = torch.rand(64, 16, 98, 73).add_(0.5).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = drop(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.002  # 7.3 M values: sd 0.0002
    assert torch.allclose(y[kept], x[kept] / (1 - p))
    per_channel = kept.float().mean(dim=(0, 2, 3))  # no pattern across the layout
    assert (per_channel - (1 - p)).abs().max() < 0.01
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(g != 0, kept) and torch.allclose(g[kept], torch.tensor(1 / (1 - p)))
    assert not torch.equal(drop(x), y)  # a fresh mask each call
    drop.eval()
    assert torch.equal(drop(x), x)


def test_custom_cnn_small_input_and_too_small():
    assert create_model("custom-cnn", 3, input_size=(76, 76))(torch.rand(1, 3, 76, 76)).shape \
        == (1, 3)
    with pytest.raises(PosterGenreError, match="too small"):
        create_model("custom-cnn", 3, input_size=(60, 60))


def test_vgg16_freezes_all_but_block5_and_normalises_itself():
    model = create_model("vgg16", 5, input_size=(64, 48))
    assert isinstance(model, VGG16) and model.pretrained is False
    convs = [(i, m) for i, m in enumerate(model.features) if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13
    trainable = [i for i, m in convs if m.weight.requires_grad]
    assert trainable == [BLOCK5_START, BLOCK5_START + 2, BLOCK5_START + 4]
    assert all(p.requires_grad for p in model.classifier.parameters())
    assert model.classifier[1].out_features == 1024
    # ImageNet normalisation inside: the mean colour maps to zero before the first conv
    seen = {}
    model.features[0].register_forward_pre_hook(lambda m, i: seen.update(x=i[0]))
    model(torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).expand(1, 3, 64, 48))
    assert seen["x"].abs().max() < 1e-6


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_vgg16_loads_torchvision_layout_backbone(tmp_path, suffix):
    source = create_model("vgg16", 5, input_size=(64, 48))
    state = {f"features.{k}": v for k, v in source.features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4096, 25088)[:1]  # torchvision's head: ignored
    path = tmp_path / f"vgg16{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    model = create_model("vgg16", 5, input_size=(64, 48), backbone_weights=path)
    assert model.pretrained
    assert torch.equal(model.features[28].weight, source.features[28].weight)
    assert not model.features[0].weight.requires_grad


def test_vgg16_rejects_a_wrong_weights_file(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, bad)
    with pytest.raises(PosterGenreError, match="not a torchvision vgg16"):
        create_model("vgg16", 5, input_size=(64, 48), backbone_weights=bad)
    with pytest.raises(PosterGenreError, match="not found"):
        create_model("vgg16", 5, backbone_weights=tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(PosterGenreError, match="not a readable"):
        create_model("vgg16", 5, backbone_weights=tmp_path / "junk.pth")


def test_registry_lists_both():
    assert {"custom-cnn", "vgg16"} <= set(list_models())
