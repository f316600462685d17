"""Load a run (or the shipped model) and score posters: `Predictor.load(run).predict_proba(x)`
takes (N, 3, H, W) floats in [0, 1] and returns (N, n_genres) probabilities.

Around it: batched prediction overlapped with decoding (`predict_stream`, inputs read by
`data.inputs.read_input`, URLs fetched by `data.fetch`) and one result as a JSON object
(`json_record`, shared by `predict --format json` and the web service). Inputs and titles live
in `data/inputs.py`, the other output formats in `cli/formats.py`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from postergenre.backends import BACKENDS, OnnxBackend, TorchBackend, onnx_available
from postergenre.data.images import PosterSource, load_poster_batch
from postergenre.data.inputs import read_input
from postergenre.errors import PosterGenreError
from postergenre.run import Run, TitleSide, load_run

if TYPE_CHECKING:  # the onnx path imports no torch
    import torch


def make_backend(run: Run, backend: str = "auto", device: str = "cpu"):
    """The run's model behind one of `BACKENDS` (backends.py): for onnx, the run's checked
    int8 graph when it has one (and `backend` is not 'onnx-fp32'), else its fp32 graph."""
    if backend not in BACKENDS:
        raise PosterGenreError(f"--backend must be one of {', '.join(BACKENDS)}, "
                               f"not {backend!r}")
    if backend.startswith("onnx") or (backend == "auto" and device == "cpu"
                                      and onnx_available()):
        from postergenre.export import cached_onnx, checked_int8

        int8 = checked_int8(run) if backend != "onnx-fp32" else None
        return OnnxBackend(int8 or cached_onnx(run), int8=int8 is not None)
    return TorchBackend(run.build_model(device), device)


class Predictor:
    """A loaded model: genres, tuned thresholds, and probabilities for posters.

    `titles=False` leaves out the run's title side (posters only); `threshold` replaces every
    tuned threshold (poster and fused) by one number."""

    def __init__(self, run: Run, backend: str = "auto", device: str = "cpu",
                 batch_size: int = 64, titles: bool = True,
                 threshold: float | None = None) -> None:
        self.run = run
        self.genres: list[str] = run.genres
        self.thresholds = np.array([run.thresholds.get(g, 0.5) for g in self.genres],
                                   dtype=np.float32)
        self.input_size: tuple[int, int] = run.input_size
        self.batch_size = batch_size
        self.backend = make_backend(run, backend, device)
        # None unless the run has a title model (RUN/text/) and titles are wanted
        self.title_side: TitleSide | None = run.title_side if titles else None
        self.fused_thresholds: np.ndarray | None = (
            None if self.title_side is None else self.title_side.thresholds.copy())
        if threshold is not None:
            self.thresholds[:] = threshold
            if self.fused_thresholds is not None:
                self.fused_thresholds[:] = threshold

    @classmethod
    def load(cls, run: str | Path | None = None, **kwargs: Any) -> Predictor:
        """Load a run directory; None loads the model shipped with the package."""
        return cls(load_run(run), **kwargs)

    def predict_proba(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, 3, H, W) float in [0, 1] -> (N, n_genres) probabilities."""
        x = np.asarray(images, np.float32)  # a CPU torch tensor converts without a copy
        out = [self.backend(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.genres)), np.float32)

    def load_batch(self, sources: Sequence[PosterSource]) -> np.ndarray:
        """Decode and resize posters into one (N, 3, H, W) float32 array in [0, 1]."""
        return load_poster_batch(sources, self.input_size)

    def predict_files(self, sources: Sequence[PosterSource],
                      titles: Sequence[str | None] | None = None) -> np.ndarray:
        """Probabilities for poster files or bytes (raises InvalidImageError for a bad one);
        with `titles` (one per source, None or "" for none) and a run with a title model,
        the rows with a title are fused with it (`fuse`)."""
        probs = self.predict_proba(self.load_batch(sources))
        return probs if titles is None else self.fuse(probs, titles)[0]

    def fuse(self, probabilities: np.ndarray, titles: Sequence[str | None]
             ) -> tuple[np.ndarray, np.ndarray]:
        """Poster probabilities fused with the title model for rows with a non-empty title:
        (probabilities, (n,) bool which rows were fused). Rows without a title, and every row
        when the run has no title model, are returned unchanged."""
        if len(titles) != len(probabilities):
            raise PosterGenreError(f"{len(titles)} titles for {len(probabilities)} posters")
        side = self.title_side
        used = np.array([side is not None and bool(t and t.strip()) for t in titles], bool)
        out = np.array(probabilities, copy=True)
        if side is not None and used.any():
            rows = np.flatnonzero(used)
            text_logits = side.model.decision_function([titles[int(i)] or "" for i in rows])
            out[rows] = side.fusion(out[rows], text_logits)
        return out, used

    def top_k(self, probabilities: np.ndarray, k: int = 3) -> list[list[tuple[str, float]]]:
        """The k best genres of each row, best first."""
        order = np.argsort(-probabilities, axis=1)[:, :k]
        return [
            [(self.genres[j], float(p[j])) for j in row]
            for row, p in zip(order, probabilities, strict=True)
        ]

    def over_threshold(self, probabilities: np.ndarray, fused: np.ndarray | None = None
                       ) -> list[list[tuple[str, float]]]:
        """Genres whose probability reaches their tuned threshold, best first (for rows
        marked in `fused`, the thresholds tuned for the fused scores)."""
        result = []
        for i, p in enumerate(probabilities):
            thr = self.thresholds
            if fused is not None and fused[i] and self.fused_thresholds is not None:
                thr = self.fused_thresholds
            hits = [(self.genres[j], float(p[j])) for j in np.flatnonzero(p >= thr)]
            result.append(sorted(hits, key=lambda t: -t[1]))
        return result




# --- streaming prediction -----------------------------------------------------------------


@dataclass
class Prediction:
    """One input's result: probabilities (n_genres,), or the one-line reason it failed."""

    source: str
    probabilities: np.ndarray | None = None
    error: str | None = None
    fused: bool = False  # the probabilities fuse the poster with its title


def _decode(source: str, size: tuple[int, int]) -> np.ndarray | str:
    try:
        return read_input(source, size)
    except PosterGenreError as e:
        return str(e)


def predict_stream(predictor: Predictor, sources: Sequence[str], workers: int = 2,
                   on_done: Callable[[int], None] | None = None,
                   titles: dict[str, str] | None = None) -> Iterator[Prediction]:
    """Predictions for files and URLs, in input order, one batch at a time.

    Posters are decoded (and URLs fetched) in a thread pool while the model scores the
    previous batch; a bad input yields a Prediction with `error` set, the others go on.
    `titles` (source -> title) are fused a batch at a time (`Predictor.fuse`).
    `on_done(n)` is called after each batch with its size (for a progress bar).
    """
    size, bs = predictor.input_size, predictor.batch_size
    batches = [list(sources[i : i + bs]) for i in range(0, len(sources), bs)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque[list[Future]] = deque()
        for batch in batches[:2]:  # decode one batch ahead of the model
            pending.append([pool.submit(_decode, s, size) for s in batch])
        for i, batch in enumerate(batches):
            decoded = [f.result() for f in pending.popleft()]
            if i + 2 < len(batches):
                pending.append([pool.submit(_decode, s, size) for s in batches[i + 2]])
            good = [j for j, d in enumerate(decoded) if not isinstance(d, str)]
            probs = np.zeros((0, len(predictor.genres)), np.float32)
            if good:
                x = np.stack([decoded[j] for j in good]).transpose(0, 3, 1, 2)
                probs = predictor.predict_proba(x.astype(np.float32) / 255.0)
            fused = np.zeros(len(good), bool)
            if titles:
                probs, fused = predictor.fuse(probs, [titles.get(batch[j]) for j in good])
            row = dict(zip(good, zip(probs, fused, strict=True), strict=True))
            for j, source in enumerate(batch):
                d = decoded[j]
                yield (Prediction(source, error=d) if isinstance(d, str)
                       else Prediction(source, probabilities=row[j][0], fused=bool(row[j][1])))
            if on_done is not None:
                on_done(len(batch))


# --- output formats -----------------------------------------------------------------------


def json_record(source: str, title: str | None, top: list[tuple[str, float]],
                probabilities: np.ndarray, genres: Sequence[str],
                signals: Sequence[str] | None = None) -> dict[str, Any]:
    """The one JSON record of a prediction (a line of `predict --format json`, the body of
    serve's /predict): path, title (null when unknown), top genres, every score; `signals`
    (["poster"] or ["poster", "title"]) when titles were asked for."""
    record: dict[str, Any] = {
        "path": source,
        "title": title,
        "top": [[g, round(p, 4)] for g, p in top],
        "scores": {g: round(float(p), 4) for g, p in zip(genres, probabilities, strict=True)},
    }
    if signals is not None:
        record["signals"] = list(signals)
    return record
