"""Load a run (or the shipped model) and score posters: `Predictor.load(run).predict_proba(x)`.

Plain arrays in and out: `predict_proba` takes a (N, 3, H, W) float array/tensor in [0, 1]
(what `data.images.load_poster` makes) and returns (N, n_genres) probabilities.
Two backends compute the same numbers: PyTorch eager, and onnxruntime (export.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from postergenre.data.images import PosterSource, load_poster_array
from postergenre.run import Run, load_run

BACKENDS = ("auto", "torch", "onnx")


class TorchBackend:
    """Runs the run's PyTorch model."""

    name = "torch"

    def __init__(self, run: Run, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = run.build_model(self.device)

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(batch, dtype=torch.float32, device=self.device)
        return torch.sigmoid(self.model(x)).float().cpu().numpy()


def make_backend(run: Run, backend: str = "auto", device: str = "cpu"):
    """'torch', 'onnx', or 'auto' (onnxruntime when installed and the device is the CPU)."""
    if backend not in BACKENDS:
        from postergenre.errors import PosterGenreError

        raise PosterGenreError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "onnx" or (backend == "auto" and device == "cpu"):
        from postergenre.export import OnnxBackend, onnx_available

        if backend == "onnx" or onnx_available():
            return OnnxBackend(run)
    return TorchBackend(run, device)


class Predictor:
    """A loaded model: genres, tuned thresholds, and probabilities for posters."""

    def __init__(self, run: Run, backend: str = "auto", device: str = "cpu",
                 batch_size: int = 64) -> None:
        self.run = run
        self.genres: list[str] = run.genres
        self.thresholds = np.array([run.thresholds.get(g, 0.5) for g in self.genres],
                                   dtype=np.float32)
        self.input_size: tuple[int, int] = run.input_size
        self.batch_size = batch_size
        self.backend = make_backend(run, backend, device)

    @classmethod
    def load(cls, run: str | Path | None = None, **kwargs) -> Predictor:
        """Load a run directory; None loads the model shipped with the package."""
        return cls(load_run(run), **kwargs)

    def predict_proba(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, 3, H, W) float in [0, 1] -> (N, n_genres) probabilities."""
        x = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images, np.float32)
        out = [self.backend(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.genres)), np.float32)

    def load_batch(self, sources: Sequence[PosterSource]) -> np.ndarray:
        """Decode and resize posters into one (N, 3, H, W) float32 array in [0, 1]."""
        arrays = np.stack([load_poster_array(s, self.input_size) for s in sources])
        return arrays.transpose(0, 3, 1, 2).astype(np.float32) / 255.0

    def predict_files(self, sources: Sequence[PosterSource]) -> np.ndarray:
        """Probabilities for poster files or bytes (raises InvalidImageError for a bad one)."""
        return self.predict_proba(self.load_batch(sources))

    def top_k(self, probabilities: np.ndarray, k: int = 3) -> list[list[tuple[str, float]]]:
        """The k best genres of each row, best first."""
        order = np.argsort(-probabilities, axis=1)[:, :k]
        return [
            [(self.genres[j], float(p[j])) for j in row]
            for row, p in zip(order, probabilities, strict=True)
        ]

    def over_threshold(self, probabilities: np.ndarray) -> list[list[tuple[str, float]]]:
        """Genres whose probability reaches their tuned threshold, best first."""
        result = []
        for p in probabilities:
            hits = [(self.genres[j], float(p[j])) for j in np.flatnonzero(p >= self.thresholds)]
            result.append(sorted(hits, key=lambda t: -t[1]))
        return result
