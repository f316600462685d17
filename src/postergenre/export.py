"""Graphs: ONNX export of a run's model, and its int8 version.

`export_onnx` writes a graph: "image" (N, 3, H, W) float32 in [0, 1] in, "probabilities" out.
`cached_onnx(run)` exports a run once into the cache, keyed by a hash of its config and weights.
`quantize_onnx` makes the int8 graph (static, calibrated on the bundled posters, so anyone can
rebuild it). The check that accepts it (evaluate/int8.py) records itself in RUN/int8.json;
`checked_int8(run)` rebuilds the graph on first use, provided the run is the one checked and
the rebuilt graph agrees with fp32 on the bundled posters as closely as the checked one did.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from postergenre.backends import INPUT, OUTPUT, make_session
from postergenre.data.images import load_poster_batch
from postergenre.defaults import MAX_OPSET, MIN_OPSET, ONNX_OPSET
from postergenre.errors import RunError
from postergenre.io import atomic_write_bytes, atomic_write_json
from postergenre.paths import cache_dir
from postergenre.run import INT8_CARD, WEIGHTS, Run

if TYPE_CHECKING:  # torch is imported where a graph is exported: a cached graph needs none
    from torch import nn


def export_graph(module: nn.Module, path: str | os.PathLike, input_size: tuple[int, int],
                 input_name: str = INPUT, output_name: str = OUTPUT, opset: int = ONNX_OPSET,
                 metadata: dict[str, str] | None = None) -> Path:
    """Write `module` ((N, 3, H, W) in, one tensor out) as an ONNX graph with a dynamic batch
    axis, atomically; `metadata` goes into the graph's metadata_props.

    Uses PyTorch's TorchScript-based exporter (`dynamo=False`): it needs no extra package and
    handles every model in the registry; its deprecation warning is silenced.
    """
    import torch

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise RunError(f"--opset {opset}: the exporter supports {MIN_OPSET} to {MAX_OPSET}")
    path = Path(path)
    modes = {m: m.training for m in module.modules()}
    module.eval()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            # The TorchScript exporter writes to a file object too; the annotation says paths.
            torch.onnx.export(
                module, (torch.rand(1, 3, *input_size),), buffer,  # type: ignore[arg-type]
                dynamo=False,
                opset_version=opset, input_names=[input_name], output_names=[output_name],
                dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            )
    finally:
        for m, training in modes.items():
            m.training = training
    data = buffer.getvalue()
    if metadata:
        import onnx

        graph = onnx.load_from_string(data)
        onnx.helper.set_model_props(graph, metadata)
        data = graph.SerializeToString()
    atomic_write_bytes(path, data)
    return path


def export_onnx(model: nn.Module, path: str | os.PathLike, input_size: tuple[int, int],
                opset: int = ONNX_OPSET, metadata: dict[str, str] | None = None) -> Path:
    """Write `model` (logits out) as an ONNX graph returning probabilities, atomically."""
    from torch import nn

    with_sigmoid = nn.Sequential(OrderedDict(model=model, sigmoid=nn.Sigmoid()))
    return export_graph(with_sigmoid, path, input_size, opset=opset, metadata=metadata)


def run_metadata(run: Run) -> dict[str, str]:
    """What a consumer of the graph needs to know: genres (JSON list), input size, model."""
    return {"genres": json.dumps(run.genres), "input_size": json.dumps(list(run.input_size)),
            "model": run.model_name, "input": "(N, 3, H, W) float32 RGB in [0, 1]"}


def quantize_onnx(src: str | os.PathLike, dst: str | os.PathLike, calibration: np.ndarray,
                  batch_size: int = 16) -> Path:
    """Static int8 quantisation of an exported graph's convolutions, written atomically.

    QDQ format, per-channel int8 weights, uint8 activations whose ranges are calibrated
    (min/max) on `calibration`, a (N, 3, H, W) float32 batch of real posters in [0, 1].
    What follows the last convolution (pooling, the classifier head) stays float: it costs
    little, and quantising it loses the most quality. Check the quality on held-out posters
    before using the result (`quantize_run` does): int8 is not exact.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(range(0, len(calibration), batch_size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self.batches, None)
            return None if start is None else {INPUT: calibration[start : start + batch_size]}

    dst = Path(dst)
    with tempfile.TemporaryDirectory(dir=dst.parent if dst.parent.is_dir() else None) as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(src), str(prepared))
        quantize_static(str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=_after_convs(prepared))
        atomic_write_bytes(dst, quantized.read_bytes())
    return dst


def _after_convs(path: Path) -> list[str]:
    """Names of the graph's nodes that feed no convolution, directly or not: its head."""
    import onnx

    nodes = onnx.load(str(path)).graph.node
    producer = {out: node for node in nodes for out in node.output}
    feeds_conv, todo = set(), [n for n in nodes if n.op_type == "Conv"]
    while todo:
        node = todo.pop()
        if node.name not in feeds_conv:
            feeds_conv.add(node.name)
            todo += [producer[i] for i in node.input if i in producer]
    return [n.name for n in nodes if n.name not in feeds_conv]


GRAPH_KEYS = ("model", "model_kwargs", "genres", "input_size")  # what makes the poster graph


def run_fingerprint(run: Run) -> str:
    """A short hash of what defines the run's poster graph (model, its settings, genres, input
    size) and of its weights: changes whenever the run is retrained, not when metadata such as
    a title model is added."""
    file = run.path / WEIGHTS
    if not file.is_file():
        raise RunError(f"{file}: file is missing")
    graph = {k: v for k, v in run.config.to_json().items() if k in GRAPH_KEYS}
    digest = hashlib.sha256(json.dumps(graph, sort_keys=True).encode())
    with file.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def cached_onnx(run: Run) -> Path:
    """The run's fp32 ONNX graph in the cache, exported on first use."""
    name = f"{run.model_name}-{run_fingerprint(run)}-opset{ONNX_OPSET}.onnx"
    path = cache_dir() / "onnx" / name
    if not path.is_file():
        export_onnx(run.build_model(), path, run.input_size, metadata=run_metadata(run))
    return path


def calibration_posters(size: tuple[int, int]) -> np.ndarray:
    """The posters bundled with the package, as a (N, 3, H, W) batch: int8 calibration data."""
    from postergenre.paths import sample_dir

    paths = sorted((sample_dir() / "posters").glob("*.jpg"))
    return load_poster_batch(paths, size)


def sample_agreement(fp32: Path, int8: Path, x: np.ndarray) -> float:
    """Largest |int8 - fp32| probability over the bundled posters."""
    a = make_session(fp32).run([OUTPUT], {INPUT: x})[0]
    b = make_session(int8).run([OUTPUT], {INPUT: x})[0]
    return float(np.abs(a - b).max())


def checked_int8(run: Run) -> Path | None:
    """The run's int8 graph (in the cache, rebuilt on first use) when `quantize_run` accepted
    int8 for the run's current weights; None otherwise (the backend then uses fp32)."""
    card = run.path / INT8_CARD
    if not card.is_file():
        return None
    try:
        record = json.loads(card.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunError(f"{card}: not valid JSON (rerun `export --int8` to redo the check, or "
                       "delete it to use fp32)") from None
    if not isinstance(record, dict):
        raise RunError(f"{card}: expected a JSON object")
    fingerprint = run_fingerprint(run)
    if not record.get("accepted") or record.get("run") != fingerprint:
        return None
    path = cache_dir() / "onnx" / f"{run.model_name}-{fingerprint}-int8.onnx"
    refused = path.with_name(f"{path.stem}-refused.json")  # this CPU's int8 kernels disagreed
    if path.is_file():
        return path
    if refused.is_file():
        return None
    fp32 = cached_onnx(run)
    x = calibration_posters(run.input_size)
    with tempfile.TemporaryDirectory() as tmp:
        candidate = quantize_onnx(fp32, Path(tmp) / "int8.onnx", x)
        allowed = 2 * record.get("sample_max_diff", 0.0) + 1e-3
        diff = sample_agreement(fp32, candidate, x)
        if diff > allowed:  # remembered, so the next start neither rebuilds nor warns again
            atomic_write_json(refused, {"sample_max_diff": diff, "allowed": allowed})
            warnings.warn(f"the int8 graph rebuilt on this CPU is off the checked one by "
                          f"{diff:.3f} (allowed {allowed:.3f}); using fp32 ({refused})",
                          stacklevel=2)
            return None
        atomic_write_bytes(path, candidate.read_bytes())
    return path
