"""The frozen-feature cache: extract a frozen backbone's pooled features once, train heads fast.

Features are keyed by the poster's content (sha1 of its bytes), so a renamed poster is found and
a changed one is recomputed. One folder per `FeatureSpec` (backbone, input size, pooling, flip):

    CACHE/features/efficientnet-lite0_268x182_mean/chunk-r0-<n>.safetensors

Each chunk holds `sha1` (n, 20) uint8 digests and `features` (n, D) float32, written atomically
every `chunk_size` posters, so a killed extraction keeps its finished chunks and resumes.
Extraction runs the backbone in onnxruntime when it is installed (several times faster than
eager PyTorch on a CPU) and shards across ranks under torchrun (rank r takes items r::world).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from torch import nn

from postergenre.data.images import load_poster_array, to_tensor
from postergenre.errors import DatasetError, InvalidImageError
from postergenre.models.registry import FeatureModel, TrunkModel
from postergenre.paths import cache_dir
from postergenre.progress import SILENT, Progress
from postergenre.train import distributed


@dataclass(frozen=True)
class FeatureSpec:
    """What a cached feature is: backbone, input size (h, w), pooling, mirrored or not, and
    `cut`: when set, the backbone's state after its first `cut` blocks (the map and the "multi"
    stage means so far, flattened, in float16) instead of pooled features: what fine-tuning
    the remaining blocks starts from (train/sources.py, `cached_trunk`); `weights`: the model's
    `trunk_id(cut)` (its frozen weights and normalisation, when the name does not say them)."""

    model: str = "efficientnet-lite0"
    input_size: tuple[int, int] = (268, 182)
    pool: str = "mean"
    flip: bool = False
    cut: int | None = None
    weights: str = ""

    @property
    def key(self) -> str:
        h, w = self.input_size
        pool = self.pool if self.cut is None else f"trunk{self.cut}"
        return f"{self.model}_{h}x{w}_{pool}" + ("_flip" if self.flip else "") + (
            f"_{self.weights}" if self.weights else "")

    def mirrored(self, flip: bool = True) -> FeatureSpec:
        return replace(self, flip=flip)

    def build(self) -> nn.Module:
        """The frozen backbone (with a throwaway head) this spec describes."""
        from postergenre.models import create_model

        pool = "multi" if self.cut is not None else self.pool
        return create_model(self.model, 1, input_size=self.input_size, pool=pool).eval()


def sha1_file(path: str | os.PathLike) -> bytes:
    return hashlib.sha1(Path(path).read_bytes()).digest()


class FeatureCache:
    """Content-addressed feature store for one spec; chunks are append-only safetensors files."""

    def __init__(self, spec: FeatureSpec, root: str | os.PathLike | None = None) -> None:
        self.spec = spec
        self.dir = Path(root or cache_dir()) / "features" / spec.key

    def load(self) -> dict[bytes, np.ndarray]:
        """Every cached feature, by sha1 digest."""
        index: dict[bytes, np.ndarray] = {}
        for chunk in sorted(self.dir.glob("chunk-*.safetensors")):
            data = load_file(str(chunk))
            for digest, row in zip(data["sha1"], data["features"], strict=True):
                index[digest.tobytes()] = row
        return index

    def write_chunk(self, digests: list[bytes], features: np.ndarray, rank: int = 0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"chunk-r{rank}-{uuid.uuid4().hex[:12]}.safetensors"
        tmp = self.dir / f".{name}.tmp"
        sha = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), 20)
        dtype = np.float16 if self.spec.cut is not None else np.float32
        save_file({"sha1": sha, "features": np.ascontiguousarray(features, dtype)}, str(tmp))
        tmp.replace(self.dir / name)


class _OnnxFeatures:
    """The spec's feature extractor exported once to ONNX and run with onnxruntime."""

    def __init__(self, model: nn.Module, spec: FeatureSpec) -> None:
        from postergenre.backends import make_session
        from postergenre.export import export_graph

        path = cache_dir() / "onnx" / f"features_{spec.mirrored(False).key}.onnx"
        if not path.is_file():  # mirroring happens in the loader
            export_graph(_FeatureModule(model, spec.cut).eval(), path, spec.input_size,
                         input_name="x", output_name="f")
        self.session = make_session(path, threads=torch.get_num_threads())

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"x": x})[0]


class _FeatureModule(nn.Module):
    """The spec's features as a module's forward: pooled features, or the trunk's state."""

    def __init__(self, model: nn.Module, cut: int | None = None) -> None:
        super().__init__()
        self.model, self.cut = model, cut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cut is not None:
            return cast(TrunkModel, self.model).trunk_features(x, self.cut)
        return cast(FeatureModel, self.model).features(x)


class _TorchFeatures:
    def __init__(self, model: nn.Module, cut: int | None = None) -> None:
        self.module = _FeatureModule(model, cut)

    @torch.inference_mode()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.module(torch.from_numpy(x)).numpy()


def make_extractor(spec: FeatureSpec, backend: str = "auto", model: nn.Module | None = None):
    """A callable (N, 3, H, W) float32 array in [0, 1] -> (N, D) features: of `model` (in eval
    mode) when given, else of `spec.build()`."""
    model = spec.build() if model is None else model.eval()
    if backend in ("auto", "onnx"):
        try:
            return _OnnxFeatures(model, spec)
        except ImportError:
            if backend == "onnx":
                raise
    return _TorchFeatures(model, spec.cut)


def _batches(paths: Sequence[Path], spec: FeatureSpec, batch_size: int
             ) -> Iterator[tuple[list[int], np.ndarray, list[str]]]:
    """(indices, images, errors) per batch, decoded on a helper thread one batch ahead."""

    def load(start: int) -> tuple[list[int], np.ndarray, list[str]]:
        keep, arrays, errors = [], [], []
        for i in range(start, min(start + batch_size, len(paths))):
            try:
                arr = load_poster_array(paths[i], spec.input_size)
            except InvalidImageError as e:
                errors.append(str(e))
                continue
            keep.append(i)
            arrays.append(arr[:, ::-1] if spec.flip else arr)
        x = to_tensor(np.stack(arrays)).numpy() if arrays else np.zeros((0,), np.float32)
        return keep, x, errors

    with ThreadPoolExecutor(1) as pool:
        yield from pool.map(load, range(0, len(paths), batch_size))


def cache_features(paths: Sequence[str | os.PathLike], spec: FeatureSpec = FeatureSpec(),
                   batch_size: int = 64, chunk_size: int = 512, backend: str = "auto",
                   root: str | os.PathLike | None = None, progress: Progress = SILENT,
                   rank: int | None = None, world: int | None = None,
                   model: nn.Module | None = None) -> list[str]:
    """Compute and cache this rank's share (r::world) of the posters not cached yet (with
    `model`'s frozen part when given, see `make_extractor`).

    Returns the errors of unreadable posters (one line each); the others are cached regardless.
    """
    if rank is None or world is None:
        rank, world = distributed.rank(), distributed.world_size()
    files = [Path(p) for p in paths]
    cache = FeatureCache(spec, root)
    digests = [sha1_file(p) if p.is_file() else b"" for p in files]
    errors = [f"{p}: no such file" for p, d in zip(files, digests, strict=True) if not d]
    cached = cache.load()
    first = sorted({d: i for i, d in reversed(list(enumerate(digests))) if d}.values())
    todo = [i for i in first[rank::world] if digests[i] not in cached]  # a stable share
    if not todo:
        return errors
    extractor = make_extractor(spec, backend, model)
    todo_paths = [files[i] for i in todo]
    done_digests: list[bytes] = []
    done_rows: list[np.ndarray] = []
    task = f"features {spec.key}"
    progress.start(task, len(todo))
    for keep, x, bad in _batches(todo_paths, spec, batch_size):
        errors += bad
        if keep:
            done_digests += [digests[todo[j]] for j in keep]
            done_rows += list(extractor(x))
        if len(done_digests) >= chunk_size:
            cache.write_chunk(done_digests, np.stack(done_rows), rank)
            done_digests, done_rows = [], []
        progress.advance(task, len(keep) + len(bad))
    progress.finish(task)
    if done_digests:
        cache.write_chunk(done_digests, np.stack(done_rows), rank)
    return errors


def extract_features(paths: Sequence[str | os.PathLike], spec: FeatureSpec = FeatureSpec(),
                     dtype: type = np.float32, **kwargs) -> np.ndarray:
    """Features (len(paths), D) of the posters, computing only those not in the cache yet.

    Under torchrun every rank computes its share, then all read the completed cache.
    Unreadable posters do not stop the others: the rest is cached, then a DatasetError names them.
    """
    errors = cache_features(paths, spec, **kwargs)
    distributed.barrier()
    if errors:
        raise DatasetError(f"{len(errors)} poster(s) could not be read, e.g. {errors[0]}")
    index = FeatureCache(spec, kwargs.get("root")).load()
    return np.stack([index[sha1_file(p)] for p in paths]).astype(dtype, copy=False)
