"""ONNX export and the onnxruntime backend.

`export_onnx(model, path, input_size)` writes one graph: input "image" (N, 3, H, W) float32 in
[0, 1] with a dynamic batch axis, output "probabilities" (N, n_genres) (the sigmoid is inside the
graph). `OnnxBackend(run)` exports a run's model once into the cache (keyed by a hash of the run's
config and weights, so a retrained run re-exports) and scores batches with onnxruntime: the same
numbers as PyTorch eager (max difference < 1e-4), faster on a CPU.

int8: `quantize_run(run, dataset)` quantises the graph (static, calibrated on the posters
bundled with the package, so anyone can rebuild the same graph) and, only when the val macro
AP stays within 0.005 of fp32, records the check in RUN/int8.json (a few hundred bytes: the
graph itself is not stored in the run). The onnx backend then rebuilds the int8 graph into the
cache on first use and uses it, as long as the run's config and weights are the ones it was
checked against and the rebuilt graph agrees with fp32 on the bundled posters as closely as
the checked one did.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from postergenre.data.images import load_poster_batch
from postergenre.errors import RunError
from postergenre.io import atomic_write_bytes, atomic_write_json
from postergenre.paths import cache_dir
from postergenre.run import CONFIG, WEIGHTS, Run

OPSET = 17
INPUT, OUTPUT = "image", "probabilities"
INT8_CARD = "int8.json"  # the record of an accepted int8 check, inside the run
MAX_AP_DROP = 0.005  # the most held-out macro AP an int8 graph may lose
INT8_SPLITS = ("val", "test")  # where the check may score: posters the run did not train on
CHUNK = 8  # posters per onnxruntime call: the fastest per poster on a CPU


def onnx_available() -> bool:
    """True when onnxruntime can be imported."""
    return importlib.util.find_spec("onnxruntime") is not None


class _WithSigmoid(nn.Module):
    """The model followed by a sigmoid: the exported graph returns probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(x))


def export_onnx(model: nn.Module, path: str | os.PathLike, input_size: tuple[int, int],
                opset: int = OPSET, metadata: dict[str, str] | None = None) -> Path:
    """Write `model` (logits out) as an ONNX graph returning probabilities, atomically.

    `metadata` (e.g. the genre names) is stored in the graph's metadata_props.

    Uses PyTorch's TorchScript-based exporter (`dynamo=False`): it needs no extra package and
    handles every model in the registry; its deprecation warning is silenced.
    """
    path = Path(path)
    was_training = model.training
    wrapped = _WithSigmoid(model).eval()
    example = torch.rand(1, 3, *input_size)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped, (example,), buffer, dynamo=False, opset_version=opset,
                input_names=[INPUT], output_names=[OUTPUT],
                dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            )
    finally:
        model.train(was_training)
    data = buffer.getvalue()
    if metadata:
        import onnx

        graph = onnx.load_from_string(data)
        onnx.helper.set_model_props(graph, metadata)
        data = graph.SerializeToString()
    atomic_write_bytes(path, data)
    return path


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


def run_fingerprint(run: Run) -> str:
    """A short hash of the run's config and weights: changes whenever the run is retrained."""
    digest = hashlib.sha256()
    for name in (CONFIG, WEIGHTS):
        file = run.path / name
        if not file.is_file():
            raise RunError(f"{file}: missing")
        with file.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def cached_onnx(run: Run) -> Path:
    """The run's fp32 ONNX graph in the cache, exported on first use."""
    name = f"{run.model_name}-{run_fingerprint(run)}-opset{OPSET}.onnx"
    path = cache_dir() / "onnx" / name
    if not path.is_file():
        export_onnx(run.build_model(), path, run.input_size, metadata=run_metadata(run))
    return path


def calibration_posters(size: tuple[int, int]) -> np.ndarray:
    """The posters bundled with the package, as a (N, 3, H, W) batch: int8 calibration data."""
    from postergenre.paths import sample_dir

    paths = sorted((sample_dir() / "posters").glob("*.jpg"))
    return load_poster_batch(paths, size)


def _sample_agreement(fp32: Path, int8: Path, x: np.ndarray) -> float:
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
    except json.JSONDecodeError:
        return None
    fingerprint = run_fingerprint(run)
    if not record.get("accepted") or record.get("run") != fingerprint:
        return None
    path = cache_dir() / "onnx" / f"{run.model_name}-{fingerprint}-int8.onnx"
    if path.is_file():
        return path
    fp32 = cached_onnx(run)
    x = calibration_posters(run.input_size)
    with tempfile.TemporaryDirectory() as tmp:
        candidate = quantize_onnx(fp32, Path(tmp) / "int8.onnx", x)
        allowed = 2 * record.get("sample_max_diff", 0.0) + 1e-3
        if _sample_agreement(fp32, candidate, x) > allowed:
            warnings.warn("the rebuilt int8 graph differs from the checked one; using fp32",
                          stacklevel=2)
            return None
        atomic_write_bytes(path, candidate.read_bytes())
    return path


def quantize_run(run: Run, dataset: str | os.PathLike, max_drop: float = MAX_AP_DROP,
                 batch_size: int = 16, split: str = "val",
                 on_batch: Callable[[int], None] | None = None) -> dict:
    """Quantise the run's graph to int8 and keep it only if quality holds on held-out posters.

    Calibrates on the posters bundled with the package, then scores every poster of `split`
    (val; test for a run that trained on val) with both graphs. When the int8 macro AP (genres
    with >= 10 positives) is within `max_drop` of fp32, writes RUN/int8.json (the check's
    figures) and the graph into the cache, and the onnx backend uses int8 from then on, until
    the run changes. Returns the figures.
    """
    from postergenre.data.dataset import load_split
    from postergenre.errors import DatasetError
    from postergenre.evaluate.metrics import MIN_POSITIVES, macro_ap

    if split not in INT8_SPLITS:
        raise DatasetError(f"{split!r}: the int8 check runs on {' or '.join(INT8_SPLITS)}")
    held_out = load_split(dataset, split)
    if held_out.genres != run.genres:
        raise DatasetError(f"{dataset}: its genres differ from the run's; use the run's dataset")
    columns = np.flatnonzero(held_out.labels.sum(0) >= MIN_POSITIVES)
    if not len(columns):
        raise DatasetError(f"{dataset}: no genre has {MIN_POSITIVES} positives in {split}; "
                           "too small to check the int8 quality")
    fp32_path = cached_onnx(run)
    calibration = calibration_posters(run.input_size)
    with tempfile.TemporaryDirectory() as tmp:
        int8_path = quantize_onnx(fp32_path, Path(tmp) / "int8.onnx", calibration)
        fp32, int8 = make_session(fp32_path), make_session(int8_path)
        scores: dict[str, list[np.ndarray]] = {"fp32": [], "int8": []}
        for start in range(0, len(held_out), batch_size):
            x = load_poster_batch(held_out.paths[start : start + batch_size], run.input_size)
            scores["fp32"].append(fp32.run([OUTPUT], {INPUT: x})[0])
            scores["int8"].append(int8.run([OUTPUT], {INPUT: x})[0])
            if on_batch:
                on_batch(len(x))
        ap = {k: macro_ap(held_out.labels, np.concatenate(v), columns)
              for k, v in scores.items()}
        record = {
            "run": run_fingerprint(run), "split": split, "posters": len(held_out),
            "calibration_posters": len(calibration),
            "sample_max_diff": _sample_agreement(fp32_path, int8_path, calibration),
            "macro_ap_fp32": round(ap["fp32"], 5),
            "macro_ap_int8": round(ap["int8"], 5), "max_drop": max_drop,
            "accepted": bool(ap["fp32"] - ap["int8"] <= max_drop),
        }
        cached = cache_dir() / "onnx" / f"{run.model_name}-{record['run']}-int8.onnx"
        if record["accepted"]:
            atomic_write_bytes(cached, int8_path.read_bytes())
            atomic_write_json(run.path / INT8_CARD, record)
        record["graph"] = str(cached) if record["accepted"] else None
    return record


def physical_cores() -> int:
    """Physical CPU cores this process may use (hyper-threads share a core's arithmetic units)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        text = Path("/proc/cpuinfo").read_text()
        siblings = [int(line.split(":")[1]) for line in text.splitlines()
                    if line.startswith("siblings")]
        cores = [int(line.split(":")[1]) for line in text.splitlines()
                 if line.startswith("cpu cores")]
        per_core = siblings[0] // cores[0] if siblings and cores else 1
    except (OSError, ValueError, IndexError, ZeroDivisionError):
        per_core = 1
    return max(1, (usable or 1) // max(per_core, 1))


def make_session(model: str | os.PathLike | bytes, threads: int | None = None):
    """An onnxruntime CPU session: full graph optimisation, one intra-op thread per core.

    Idle worker threads do not spin, so that image decoding running beside the model keeps
    the cores.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OnnxBackend:
    """Scores batches with onnxruntime: (N, 3, H, W) float32 in [0, 1] -> (N, G) probabilities.

    Uses the run's checked int8 graph when it has one (and `int8` is true), else its fp32
    graph. Batches are run `chunk` posters at a time: on a CPU, small batches are faster per
    poster (their activations stay in cache), by about 1.4x for 8 posters against 64.
    """

    name = "onnx"

    def __init__(self, run: Run, threads: int | None = None, int8: bool = True,
                 chunk: int = CHUNK) -> None:
        if not onnx_available():
            raise RunError("the onnx backend needs onnxruntime: pip install onnxruntime")
        quantized = checked_int8(run) if int8 else None
        self.int8 = quantized is not None
        self.path = quantized or cached_onnx(run)
        self.session = make_session(self.path, threads)
        self.chunk = chunk

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        parts = [self.session.run([OUTPUT], {INPUT: x[i : i + self.chunk]})[0]
                 for i in range(0, len(x), self.chunk)]
        return np.concatenate(parts) if parts else self.session.run([OUTPUT], {INPUT: x})[0]
