"""Backends: what turns a batch of posters, (N, 3, H, W) float32 in [0, 1], into (N, G)
probabilities: `TorchBackend` (PyTorch eager, any device) and `OnnxBackend` (onnxruntime on the
CPU); `BACKENDS`, the choices every command offers; `make_session`, the onnxruntime options
every graph here runs with (feature extraction included). Which graph a run uses is decided in
predict.py (`make_backend`); exporting and quantising graphs is export.py's work.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

from postergenre.errors import RunError

if TYPE_CHECKING:  # imported where used: the CLI's help reads BACKENDS without them
    import numpy as np
    import torch
    from torch import nn

BACKENDS: dict[str, str] = {
    "auto": "onnx when onnxruntime is installed and the device is the CPU, else torch",
    "torch": "PyTorch eager",
    "onnx": "onnxruntime, with the run's int8 graph when its quality check passed",
    "onnx-fp32": "onnxruntime, never int8 (exact scores)",
}
BACKEND_HELP = "; ".join(f"{name}: {text}" for name, text in BACKENDS.items()) + "."
INPUT, OUTPUT = "image", "probabilities"  # the names in every exported poster graph
CHUNK = 8  # posters per onnxruntime call: the fastest per poster on a CPU


def onnx_available() -> bool:
    """True when onnxruntime can be imported."""
    return importlib.util.find_spec("onnxruntime") is not None


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
    if not onnx_available():
        raise RunError("the onnx backend needs onnxruntime: pip install onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class TorchBackend:
    """Runs a PyTorch model (logits out) and applies the sigmoid."""

    name = "torch"

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu") -> None:
        import torch

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.as_tensor(batch, dtype=torch.float32, device=self.device)
            return torch.sigmoid(self.model(x)).float().cpu().numpy()


class OnnxBackend:
    """Scores batches with an onnxruntime session of a poster graph (probabilities out).

    Batches are run `chunk` posters at a time: on a CPU, small batches are faster per poster
    (their activations stay in cache), by about 1.4x for 8 posters against 64.
    """

    name = "onnx"

    def __init__(self, graph: str | os.PathLike, int8: bool = False,
                 threads: int | None = None, chunk: int = CHUNK) -> None:
        self.path, self.int8, self.chunk = Path(graph), int8, chunk
        self.session = make_session(self.path, threads)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import numpy as np

        x = np.ascontiguousarray(batch, dtype=np.float32)
        parts = [self.session.run([OUTPUT], {INPUT: x[i : i + self.chunk]})[0]
                 for i in range(0, len(x), self.chunk)]
        return np.concatenate(parts) if parts else self.session.run([OUTPUT], {INPUT: x})[0]
