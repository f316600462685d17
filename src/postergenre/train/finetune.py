"""Fine-tune the last blocks of a frozen-feature run on a CPU: cache the trunk, train the tail.

    finetune("datasets/shared", "runs/lite0-ft", init="runs/lite0", blocks=2)

Linear-probe-then-fine-tune: `init` is a run whose head was fitted on frozen features
(`train_head`). Its last `blocks` MBConv blocks, the final 1x1 conv and the head then train
together at a small learning rate. The trunk (stem and earlier blocks) stays frozen, so its
output for every poster, and for its mirror image (the augmentation), is computed once into the
feature cache (a "trunkN" spec, see features.py); an epoch runs only the tail, about 70 s for
11,000 posters on 2 CPU cores instead of over 6 minutes through the whole network.

Batch-norm statistics stay as ImageNet left them (their scales and shifts train). Each epoch
ends with a checkpoint, so `resume=True` continues a killed run to the same weights; the run
keeps the epoch with the best val macro AP. The run folder loads like any other
(`partial_weights`: it stores the head and the fine-tuned layers only).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from postergenre.data.dataset import load_genres, load_split
from postergenre.errors import PosterGenreError, RunError
from postergenre.evaluate.metrics import tune_thresholds
from postergenre.io import ensure_writable_dir
from postergenre.run import (
    CONFIG,
    HISTORY,
    WEIGHTS,
    append_history,
    load_run,
    load_weights,
    save_config,
    save_thresholds,
    save_weights,
    write_history,
)
from postergenre.train.features import FeatureSpec, extract_features
from postergenre.train.head import val_scores
from postergenre.train.loop import _epoch_seed, _Progress, load_checkpoint, save_checkpoint


def tail_probs(model: nn.Module, rows: np.ndarray, cut: int, batch_size: int = 256
                ) -> np.ndarray:
    """Probabilities from cached trunk rows, through the tail and the head."""
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            batch = torch.from_numpy(rows[i:i + batch_size].astype(np.float32))
            out.append(torch.sigmoid(model.head(model.tail(*model.split_trunk_features(
                batch, cut), cut))))
    return torch.cat(out).numpy()


def _train_mode(model: nn.Module) -> None:
    """Dropout and drop-connect on, every batch-norm layer on its stored statistics."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()


def finetune(dataset: str | Path, out: str | Path, init: str | Path, blocks: int = 2,
             epochs: int = 8, lr: float = 1e-4, weight_decay: float = 0.05,
             batch_size: int = 64, drop_connect: float = 0.2, seed: int = 0,
             resume: bool = False, backend: str = "auto", cache_root: str | Path | None = None,
             progress: bool = True) -> Path:
    """Fine-tune `init`'s last `blocks` blocks, final conv and head; write a run to `out`.

    AdamW with a one-cycle schedule (10% warm-up, cosine decay) over `epochs`; each training
    poster is seen plain or mirrored at random. The defaults are the shipped model's recipe.
    """
    from postergenre.models import create_model

    out = Path(out)
    if resume:
        if not (out / CONFIG).is_file():
            raise RunError(f"{out}: no run to resume (no config.json)")
        stored = load_run(out).config["training"]
        init, dataset = stored["init"], stored["dataset"]
        blocks, epochs, lr, weight_decay = (stored[k] for k in ("blocks", "epochs", "lr",
                                                                 "weight_decay"))
        batch_size, drop_connect, seed = (stored[k] for k in ("batch_size", "drop_connect",
                                                              "seed"))
    elif (out / CONFIG).exists():
        raise RunError(f"{out}: already holds a run; pass --resume to continue it, or choose "
                       "another --out")
    start_run = load_run(init)
    kwargs = dict(start_run.config.get("model_kwargs", {}))
    if not start_run.model_name.startswith("efficientnet-") or kwargs.get("pool") != "multi":
        raise PosterGenreError(f"{init}: fine-tuning starts from an efficientnet run with "
                               "'multi' pooling (one made by the frozen-feature path)")
    if kwargs.get("flip_average") or kwargs.get("trainable_blocks", 0) != 0:
        raise PosterGenreError(f"{init}: start from a plain frozen-feature run (no flip "
                               "averaging, no fine-tuned blocks)")
    genres = load_genres(dataset)
    if genres != start_run.genres:
        raise PosterGenreError(f"{init}: its genres differ from {dataset}'s")
    kwargs["trainable_blocks"] = blocks
    model = create_model(start_run.model_name, len(genres), **kwargs)
    n_blocks = len(model.backbone._blocks)
    if not 1 <= blocks <= n_blocks - 1:
        raise PosterGenreError(f"blocks must be between 1 and {n_blocks - 1}, not {blocks}")
    load_weights(model, start_run.path / WEIGHTS, partial=True)
    cut = n_blocks - blocks

    train, val = load_split(dataset, "train"), load_split(dataset, "val")
    if len(train) == 0 or len(val) == 0:
        raise PosterGenreError(f"{dataset}: train and val splits must not be empty")
    ensure_writable_dir(out)
    settings = {"mode": "finetune", "init": str(init), "dataset": str(dataset),
                "blocks": blocks, "epochs": epochs, "lr": lr, "weight_decay": weight_decay,
                "batch_size": batch_size, "drop_connect": drop_connect, "seed": seed,
                "n_train": len(train), "n_val": len(val)}
    if not resume:
        save_config(out, {"model": start_run.model_name, "model_kwargs": kwargs,
                          "genres": genres, "input_size": list(model.input_size),
                          "partial_weights": True, "training": settings})

    size = tuple(model.input_size)
    options = {"backend": backend, "root": cache_root, "progress": progress,
               "dtype": np.float16}
    rows = {flip: extract_features(train.paths, FeatureSpec(start_run.model_name, size,
                                                            f"trunk{cut}", flip), **options)
            for flip in (False, True)}
    val_rows = extract_features(val.paths, FeatureSpec(start_run.model_name, size,
                                                       f"trunk{cut}"), **options)
    y_train = torch.from_numpy(train.labels.astype(np.float32))

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    steps = math.ceil(len(train) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, pct_start=0.1,
                                                   total_steps=steps * epochs)
    criterion = nn.BCEWithLogitsLoss()
    state: dict[str, Any] = {"epoch": 0, "best": -1.0, "best_epoch": 0, "history": []}
    if resume and (saved := load_checkpoint(out, model, optimizer, schedule)) is not None:
        state = saved
        write_history(out, state["history"])
    elif not resume:
        (out / HISTORY).unlink(missing_ok=True)
    if state["epoch"] == 0:  # the starting point, for the record
        state["best"] = val_scores(val.labels, tail_probs(model, val_rows, cut))["val_macro_ap"]
        save_weights(model, out / WEIGHTS, keys=model.trained_keys())

    bars = _Progress(progress, epochs, state["epoch"])
    for epoch in range(state["epoch"], epochs):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
        order = torch.randperm(len(train), generator=g).numpy()
        mirrored = torch.rand(len(train), generator=g).numpy() < 0.5
        torch.manual_seed(_epoch_seed(seed, epoch, 1))  # dropout and drop-connect
        _train_mode(model)
        total = 0.0
        bars.new_epoch(epoch + 1, steps)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            batch = np.where(mirrored[idx, None], rows[True][idx], rows[False][idx])
            x, means = model.split_trunk_features(torch.from_numpy(batch.astype(np.float32)),
                                                  cut)
            loss = criterion(model.head(model.tail(x, means, cut, drop_connect)), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
            bars.step(loss.item())
        scores = val_scores(val.labels, tail_probs(model, val_rows, cut))
        if scores["val_macro_ap"] > state["best"]:
            state.update(best=scores["val_macro_ap"], best_epoch=epoch + 1)
            save_weights(model, out / WEIGHTS, keys=model.trained_keys())
        record = {"epoch": epoch + 1, "train_loss": total / len(train), **scores,
                  "best_val_macro_ap": state["best"], "lr": schedule.get_last_lr()[0],
                  "seconds": round(time.perf_counter() - t0, 2)}
        state["history"].append(record)
        state["epoch"] = epoch + 1
        save_checkpoint(out, model, optimizer, schedule, state)
        append_history(out, record)
        bars.end_epoch(record)
    bars.close()

    load_weights(model, out / WEIGHTS, partial=True)
    probs = tail_probs(model, val_rows, cut)
    save_thresholds(out, dict(zip(genres, tune_thresholds(val.labels, probs).tolist(),
                                  strict=True)))
    return out
