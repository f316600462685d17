"""The three training modes as data sources for the engine (engine.py): what a batch is, what
computes its logits, and what trains.

  end_to_end       decoded posters (optionally augmented, sharded across DDP ranks)
                   through the whole model;
  cached_features  the frozen backbone's pooled features of every poster, computed once into
                   the feature cache (features.py), through the head only;
  cached_trunk     the frozen trunk's output (the map before the last N blocks) of every
                   poster and its mirror image, cached once, through the last blocks and head.

Each takes the model (built by fit.py), the train and val splits and the settings, and returns
a `Source`. The model says how to cut it (`features`, `trunk_features`, `tail_logits`, see
models/registry.py), so no mode tests a model's name.

Every mode draws its epochs from the one `EpochSampler` (sampling.py, built by `sampler_of`):
the same seed formula and `--resample` everywhere. Under torchrun, end_to_end shards each
epoch across the ranks (DDP); the cached modes share the feature extraction across ranks, then
every rank trains the same small tail on the whole epoch (unsharded, same seed, same result)
and rank 0 writes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from postergenre.data.dataset import Split
from postergenre.models import model_info
from postergenre.models.registry import FeatureModel, PosterModel, TrunkModel
from postergenre.progress import SILENT, Progress
from postergenre.train import distributed
from postergenre.train.augment import apply_affine, random_affine
from postergenre.train.engine import Source, autocast
from postergenre.train.features import FeatureSpec, extract_features
from postergenre.train.posters import cached_posters
from postergenre.train.recipes import TrainConfig
from postergenre.train.sampling import EpochSampler


def to_batch(arrays: np.ndarray, index: np.ndarray, device: torch.device) -> torch.Tensor:
    """Rows of a (n, h, w, 3) uint8 array -> (b, 3, h, w) float in [0, 1] on `device`."""
    x = torch.from_numpy(np.ascontiguousarray(arrays[index]))
    x = x.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last)  # what oneDNN and cuDNN run fastest


@torch.inference_mode()
def predict_arrays(model: nn.Module, arrays: np.ndarray, batch_size: int = 128,
                   device: torch.device | str = "cpu", precision: str = "fp32") -> np.ndarray:
    """(n, G) probabilities for decoded posters (n, h, w, 3) uint8."""
    device = torch.device(device)
    model.eval()
    out = []
    for i in range(0, len(arrays), batch_size):
        x = to_batch(arrays, np.arange(i, min(i + batch_size, len(arrays))), device)
        with autocast(device, precision):
            out.append(torch.sigmoid(model(x).float()).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@torch.inference_mode()
def probs_of(logits_of, rows: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Probabilities of cached rows (features, trunk rows) through `logits_of`."""
    out = [torch.sigmoid(logits_of(torch.from_numpy(rows[i:i + batch_size].astype(np.float32))))
           for i in range(0, len(rows), batch_size)]
    return torch.cat(out).numpy()


def sampler_of(labels: np.ndarray, config: TrainConfig, rank: int = 0, world: int = 1
               ) -> EpochSampler:
    """The epoch sampler of every mode: the run's seed and `resample`, sharded over `world`."""
    return EpochSampler(len(labels), labels, config.resample, config.seed, rank, world)


def end_to_end(model: nn.Module, train: Split, val: Split, config: TrainConfig,
               device: torch.device, cache: bool = True, workers: int = 2) -> Source:
    rank, world = distributed.rank(), distributed.world_size()
    size = cast(PosterModel, model).input_size
    arrays: dict[str, np.ndarray] = {}
    for turn in (True, False):  # rank 0 fills the disk cache; the other ranks then read it
        if distributed.is_main() == turn:
            for split in (train, val):
                arrays[split.name] = cached_posters(split.paths, size, cache, workers)
        distributed.barrier()
    x_train, x_val = arrays["train"], arrays["val"]
    y_train = torch.tensor(train.labels)  # a copy: the split's array is read-only

    # Module.to takes memory_format; torch's overloads omit it
    model.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = sampler_of(train.labels, config, rank, world)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, g = sampler.draw(epoch)
        local = sampler.shard(order)
        thetas = sampler.shard(random_affine(len(order), size, g)) if config.augment else None
        for step in sampler.batches(config.batch_size):
            idx = local[step]
            x = to_batch(x_train, idx, device)
            if thetas is not None:
                x = apply_affine(x, thetas[step])
            yield x, y_train[idx].to(device, non_blocking=True)

    precision = config.precision
    return Source(model, net, batches, sampler.steps(config.batch_size),
                  lambda: predict_arrays(model, x_val, device=device, precision=precision),
                  train.labels, val.labels, train.genres, device=device, precision=precision)


def _feature_options(config_options: dict[str, Any], progress: Progress) -> dict[str, Any]:
    return {"backend": config_options.get("backend", "auto"),
            "root": config_options.get("cache_root"), "progress": progress}


def cached_features(model: nn.Module, train: Split, val: Split, config: TrainConfig,
                    progress: Progress = SILENT, **options: Any) -> Source:
    """The head on cached features; with `config.flip` the mirrored posters' features double
    the training set and the val features are the mean of a poster's and its mirror's."""
    extract = _feature_options(options, progress)
    features_of = cast(FeatureModel, model)
    dim = features_of.feature_dim
    spec = FeatureSpec(config.model, features_of.input_size, "multi")

    def features(split: Split, flip: bool = False) -> np.ndarray:
        return extract_features(split.paths, spec.mirrored(flip), **extract)[:, :dim]

    x_train, x_val, y_train = features(train), features(val), train.labels
    if config.flip:
        x_train = np.concatenate([x_train, features(train, True)])
        y_train = np.concatenate([y_train, y_train])
        x_val = (x_val + features(val, True)) / 2
    features_of.fit_head_statistics(torch.from_numpy(x_train))
    return head_on_arrays(model, features_of.head, x_train, y_train, x_val, val.labels, config,
                          train.genres, keys=features_of.trained_keys())


def head_on_arrays(model: nn.Module, head: nn.Module, x_train: np.ndarray, y_train: np.ndarray,
                   x_val: np.ndarray, y_val: np.ndarray, config: TrainConfig,
                   genres: list[str], keys: list[str] | None = None) -> Source:
    """`head` (a part of `model`) trained on feature arrays: what `cached_features` runs, and
    what benchmarks use to compare heads on the same cached features."""
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train.astype(np.float32))
    sampler = sampler_of(y_train, config)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = sampler.draw(epoch)[0]
        for step in sampler.batches(config.batch_size):
            yield x[order[step]], y[order[step]]

    return Source(model, head, batches, sampler.steps(config.batch_size),
                  lambda: probs_of(head, x_val),
                  y_train, y_val, genres, keys=keys)


def _frozen_statistics(model: nn.Module) -> None:
    """Dropout and drop-connect on, every batch-norm layer on its stored statistics."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()


def cached_trunk(model: nn.Module, train: Split, val: Split, config: TrainConfig,
                 progress: Progress = SILENT, **options: Any) -> Source:
    """The last `config.trainable_blocks` blocks and the head on the cached trunk (computed by
    the model's frozen part); each training poster is seen plain or mirrored at random (plain
    only where the registry caches no mirrored trunk), batch-norm statistics stay as they were."""
    extract = dict(_feature_options(options, progress), dtype=np.float16, model=model)
    trunk = cast(TrunkModel, model)
    cut = trunk.cut_for(config.trainable_blocks)
    spec = FeatureSpec(config.model, trunk.input_size, "multi", cut=cut,
                       weights=trunk.trunk_id(cut))
    flips = (False, True) if model_info(config.model).finetune_mirrors else (False,)
    rows = {flip: extract_features(train.paths, spec.mirrored(flip), **extract) for flip in flips}
    val_rows = extract_features(val.paths, spec, **extract)
    y = torch.from_numpy(train.labels.astype(np.float32))
    sampler = sampler_of(train.labels, config)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, g = sampler.draw(epoch)
        mirrored = torch.rand(len(train), generator=g).numpy() < 0.5
        for step in sampler.batches(config.batch_size):
            idx = order[step]
            batch = np.where(mirrored[idx, None], rows[flips[-1]][idx], rows[False][idx])
            yield torch.from_numpy(batch.astype(np.float32)), y[idx]

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return trunk.tail_logits(batch, cut, config.drop_connect)

    return Source(model, forward, batches, sampler.steps(config.batch_size),
                  lambda: probs_of(lambda r: trunk.tail_logits(r, cut), val_rows),
                  train.labels, val.labels, train.genres, keys=trunk.trained_keys(),
                  train_mode=lambda: _frozen_statistics(model))


SOURCES: dict[str, Callable[..., Source]] = {
    "end-to-end": end_to_end, "features": cached_features, "finetune": cached_trunk}
