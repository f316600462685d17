"""Train a head on cached frozen-backbone features: the fast CPU path to a complete run.

    train_head("datasets/shared", "runs/lite0", "efficientnet-lite0", head="mlp", dropout=0.5)

reads the dataset's train/val splits, gets every poster's features from the cache (extracting
those missing, see features.py), fits the head with AdamW and early stopping on val macro AP,
tunes per-genre F1 thresholds on val and writes a run directory (config.json, head-only
weights.safetensors with "partial_weights": true, thresholds.json, history.jsonl) that
`Run.build_model()` and `Predictor` load like any other run.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from postergenre.data.dataset import Split, load_genres, load_split
from postergenre.errors import PosterGenreError
from postergenre.evaluate.metrics import average_precision, top_k_hit, tune_thresholds
from postergenre.io import ensure_writable_dir
from postergenre.run import append_history, save_config, save_thresholds, save_weights
from postergenre.train.features import FeatureSpec, extract_features
from postergenre.train.losses import make_loss, positive_weights
from postergenre.train.sampling import rare_genre_weights


def val_scores(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Macro AP over genres with a positive, and top-3 hit: what early stopping watches."""
    ap = average_precision(y, probs)
    return {"val_macro_ap": float(np.nanmean(ap)), "val_top3_hit": top_k_hit(y, probs, 3)}


@torch.inference_mode()
def head_probs(head: nn.Module, features: np.ndarray) -> np.ndarray:
    head.eval()
    return torch.sigmoid(head(torch.from_numpy(features))).numpy()


def fit_head(head: nn.Sequential, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
             y_val: np.ndarray, loss: str = "bce", pos_weight: bool = False,
             resample: float = 0.0, lr: float = 1e-3, weight_decay: float = 1e-2,
             epochs: int = 100, batch_size: int = 256, patience: int = 8, seed: int = 0,
             x_train_flip: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Train `head` (Standardize first) from a `seed`-determined start, in place; keep the
    epoch with the best val macro AP.

    `x_train_flip`, the mirrored posters' features, doubles the training set (augmentation).
    `resample` > 0 draws rare-genre posters more often (weights ** resample, see sampling.py).
    Returns one record per epoch.
    """
    torch.manual_seed(seed)
    for module in head.modules():  # the initial weights depend on the seed only
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    if x_train_flip is not None:
        x_train = np.concatenate([x_train, x_train_flip])
        y_train = np.concatenate([y_train, y_train])
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train.astype(np.float32))
    head[0].fit(x)
    criterion = make_loss(loss, positive_weights(y_train) if pos_weight else None)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    weights = torch.as_tensor(rare_genre_weights(y_train, resample)) if resample > 0 else None
    generator = torch.Generator().manual_seed(seed)
    history, best, best_state, stale = [], -1.0, None, 0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        head.train()
        order = (torch.multinomial(weights, len(x), True, generator=generator)
                 if weights is not None else torch.randperm(len(x), generator=generator))
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            batch_loss = criterion(head(x[idx]), y[idx])
            optimizer.zero_grad()
            batch_loss.backward()
            optimizer.step()
            total += float(batch_loss.detach()) * len(idx)
        record = {"epoch": epoch, "train_loss": total / len(x),
                  **val_scores(y_val, head_probs(head, x_val)),
                  "seconds": time.perf_counter() - start}
        history.append(record)
        if record["val_macro_ap"] > best:
            best, best_state, stale = record["val_macro_ap"], copy.deepcopy(head.state_dict()), 0
        else:
            stale += 1
            if stale >= patience:
                break
    head.load_state_dict(best_state)
    return history


def split_features(split: Split, spec: FeatureSpec, dim: int, **kwargs) -> np.ndarray:
    """The split's cached features, cut to the model's pooling (layouts are prefixes)."""
    return extract_features(split.paths, spec, **kwargs)[:, :dim]


def train_head(dataset: str | Path, out: str | Path, model_name: str = "efficientnet-lite0",
               input_size: tuple[int, int] = (268, 182), pool: str = "multi", flip: bool = False,
               head: str = "mlp", hidden: int = 256, dropout: float = 0.6, loss: str = "bce",
               pos_weight: bool = False, resample: float = 0.0, lr: float = 3e-4,
               weight_decay: float = 0.1, epochs: int = 100, batch_size: int = 256,
               patience: int = 8, seed: int = 0, backend: str = "auto",
               cache_root: str | Path | None = None, progress: bool = True) -> Path:
    """Fit a head on a frozen EfficientNet-Lite's cached features and write a run to `out`.

    The defaults are the shipped model's first stage (docs/benchmarks.md, "Quality") but for
    its input size: the shipped model reads posters at (368, 250), 1.88x the native pixels.
    `flip` trains on mirrored posters too and makes the model average a poster's and its
    mirror's features at prediction time.
    """
    from postergenre.models import create_model

    if not model_name.startswith("efficientnet-"):
        raise PosterGenreError(f"the frozen-feature path needs an efficientnet model, not "
                               f"{model_name!r}")
    genres = load_genres(dataset)
    train, val = load_split(dataset, "train"), load_split(dataset, "val")
    if len(train) == 0 or len(val) == 0:
        raise PosterGenreError(f"{dataset}: train and val splits must not be empty")
    out = ensure_writable_dir(out)
    model_kwargs = {"input_size": list(input_size), "pool": pool, "head": head,
                    "hidden": hidden, "dropout": dropout, "flip_average": flip}
    model = create_model(model_name, len(genres), **model_kwargs)
    spec = FeatureSpec(model_name, tuple(input_size), "multi")
    flip_spec = FeatureSpec(model_name, tuple(input_size), "multi", flip=True)
    options = {"backend": backend, "root": cache_root, "progress": progress}
    dim = model.feature_dim
    x_train, x_val = (split_features(s, spec, dim, **options) for s in (train, val))
    x_train_flip = None
    if flip:
        x_train_flip = split_features(train, flip_spec, dim, **options)
        x_val = (x_val + split_features(val, flip_spec, dim, **options)) / 2
    settings = {"loss": loss, "pos_weight": pos_weight, "resample": resample, "lr": lr,
                "weight_decay": weight_decay, "epochs": epochs, "batch_size": batch_size,
                "patience": patience, "seed": seed}
    start = time.perf_counter()
    history = fit_head(model.head, x_train, train.labels, x_val, val.labels,
                       x_train_flip=x_train_flip, **settings)
    probs = head_probs(model.head, x_val)
    best = val_scores(val.labels, probs)
    save_weights(model, out / "weights.safetensors", keys=model.trained_keys())
    save_thresholds(out, dict(zip(genres, tune_thresholds(val.labels, probs).tolist(),
                                  strict=True)))
    (out / "history.jsonl").unlink(missing_ok=True)
    for record in history:
        append_history(out, record)
    save_config(out, {
        "model": model_name, "model_kwargs": model_kwargs, "genres": genres,
        "input_size": list(input_size), "partial_weights": True,
        "training": {"mode": "frozen-features", "features": spec.key, "dataset": str(dataset),
                     "n_train": len(train), "n_val": len(val), **settings,
                     "epochs_run": len(history), "seconds": time.perf_counter() - start,
                     **best},
    })
    return out
