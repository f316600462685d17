"""The training engine: one loop for every training mode, read top to bottom in `run_epochs`.

A mode (train/sources.py) hands the engine a `Source` (model, forward, batches, val
probabilities); the engine owns the rest: optimizer, schedule, loss, per-epoch seeding (a run
resumed from its checkpoint ends with the same weights as one never interrupted), validation
(macro AP), early stopping, the best weights, the last checkpoint, history.jsonl, progress and
thresholds tuned on val. Under DDP every rank trains on its share; rank 0 validates and writes.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from postergenre.evaluate.metrics import macro_ap, top_k_hit, tune_thresholds
from postergenre.io import atomic_open, atomic_write_json, load_weights, save_weights
from postergenre.progress import SILENT, Progress
from postergenre.run import (
    CHECKPOINT,
    CHECKPOINT_LATEST,
    CHECKPOINT_MODEL,
    CHECKPOINT_TRAINER,
    WEIGHTS,
    append_history,
    save_thresholds,
    write_history,
)
from postergenre.train import distributed
from postergenre.train.losses import make_loss, positive_weights
from postergenre.train.recipes import TrainConfig, make_optimizer, make_schedule
from postergenre.train.sampling import epoch_seed


@dataclass
class Source:
    """What a training mode feeds the engine."""

    model: nn.Module  # its state is checkpointed; `keys` of it make the run's weights
    forward: Callable[[Any], torch.Tensor]  # a batch's inputs -> logits (DDP-wrapped if any)
    batches: Callable[[int], Iterator[tuple[Any, torch.Tensor]]]  # epoch -> (inputs, targets)
    steps: int  # batches per epoch on this rank
    val_probs: Callable[[], np.ndarray]  # (n_val, G) with the current weights (rank 0)
    y_train: np.ndarray
    y_val: np.ndarray
    genres: list[str]
    keys: list[str] | None = None  # state-dict keys the run stores (None: all of them)
    train_mode: Callable[[], None] | None = None  # default: model.train()
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"  # of the forward pass: "fp32", "bf16" or "auto" (engine.autocast)


def cpu_has_bf16() -> bool:
    """True when oneDNN runs bfloat16 natively here (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bf16' on CUDA and on CPUs with native bfloat16, else 'fp32'."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" or cpu_has_bf16() else "fp32"


def autocast(device: torch.device, precision: str = "auto"):
    """Mixed precision for the forward pass: bfloat16 (float16 on CUDA without bfloat16) when
    `precision` resolves to 'bf16'; nothing for 'fp32'. Weights, gradients and the optimizer
    stay float32."""
    if resolve_precision(precision, device) == "fp32":
        return nullcontext()
    fp16 = device.type == "cuda" and not torch.cuda.is_bf16_supported()
    return torch.autocast(device.type, dtype=torch.float16 if fp16 else torch.bfloat16)


def save_checkpoint(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    schedule: Any, state: dict[str, Any]) -> None:
    """Write RUN/checkpoint/epoch-N/ then point latest.json at it (atomic), then drop older."""
    root = run_dir / CHECKPOINT
    folder = root / f"epoch-{state['epoch']}"
    save_weights(model, folder / CHECKPOINT_MODEL)
    with atomic_open(folder / CHECKPOINT_TRAINER, "wb") as f:
        torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}, f)
    atomic_write_json(root / CHECKPOINT_LATEST, {**state, "dir": folder.name})
    for old in root.glob("epoch-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    schedule: Any) -> dict[str, Any] | None:
    """Restore the last checkpoint's tensors in place and return its state (None if none)."""
    latest = run_dir / CHECKPOINT / CHECKPOINT_LATEST
    if not latest.is_file():
        return None
    state = json.loads(latest.read_text(encoding="utf-8"))
    folder = latest.parent / state["dir"]
    load_weights(model, folder / CHECKPOINT_MODEL)
    trainer = torch.load(folder / CHECKPOINT_TRAINER, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(trainer["optimizer"])
    schedule.load_state_dict(trainer["schedule"])
    return state


def run_epochs(source: Source, out: Path, config: TrainConfig, *, resume: bool = False,
               progress: Progress = SILENT, time_limit: float | None = None,
               on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
               log: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train `source` for `config.epochs` (or until early stopping / `time_limit` seconds) into
    the run folder `out`; return the final state (on rank 0 with "val_probs": the best
    weights' val probabilities). `on_epoch_end(record)` runs on every rank
    after each epoch's checkpoint; `log(key, record)` receives every record on rank 0."""
    main, rank, model, dev = distributed.is_main(), distributed.rank(), source.model, source.device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, config)
    schedule = make_schedule(optimizer, config, source.steps * config.epochs)
    pos_weight = (positive_weights(source.y_train, max_weight=config.pos_weight_max)
                  if config.pos_weight else None)
    loss_fn = make_loss(config.loss, pos_weight).to(dev)
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda"
                                  and not torch.cuda.is_bf16_supported())
    state: dict[str, Any] = {"epoch": 0, "best": -1.0, "best_epoch": 0, "bad_epochs": 0,
                             "done": False, "history": []}
    if resume and (saved := load_checkpoint(out, model, optimizer, schedule)) is not None:
        state = saved
        if main:  # the history file must match the checkpoint (an epoch may have been cut)
            write_history(out, state["history"])
    progress = progress if main else SILENT
    progress.start("epochs", config.epochs, state["epoch"])
    start = time.perf_counter()
    for epoch in range(state["epoch"], config.epochs):
        if state["done"]:
            break
        t0 = time.perf_counter()
        torch.manual_seed(epoch_seed(config.seed, epoch, 2 + rank))  # dropout, drop-connect
        (source.train_mode or model.train)()
        progress.start("batches", source.steps)
        total, seen = 0.0, 0
        for inputs, targets in source.batches(epoch):
            with autocast(dev, source.precision):
                logits = source.forward(inputs)
            loss = loss_fn(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            total, seen = total + loss.item() * len(targets), seen + len(targets)
            progress.advance("batches", info=f"loss {loss.item():.4f}")

        scores = {"val_macro_ap": float("nan"), "val_top3_hit": float("nan")}
        if main:
            model.eval()
            probs = source.val_probs()  # early stopping watches the macro AP
            scores = {"val_macro_ap": macro_ap(source.y_val, probs),
                      "val_top3_hit": top_k_hit(source.y_val, probs, 3)}
        scores = distributed.broadcast(scores)
        score = scores["val_macro_ap"] if math.isfinite(scores["val_macro_ap"]) else -1.0
        if score > state["best"]:
            state.update(best=score, best_epoch=epoch + 1, bad_epochs=0)
            if main:
                save_weights(model, out / WEIGHTS, keys=source.keys)
        else:
            state["bad_epochs"] += 1
        record = {"epoch": epoch + 1, "train_loss": total / max(seen, 1), **scores,
                  "best_val_macro_ap": state["best"], "lr": optimizer.param_groups[0]["lr"],
                  "seconds": round(time.perf_counter() - t0, 2)}
        state["history"].append(record)
        state["epoch"] = epoch + 1
        state["done"] = (config.patience > 0 and state["bad_epochs"] >= config.patience) \
            or epoch + 1 == config.epochs
        if main:
            save_checkpoint(out, model, optimizer, schedule, state)
            append_history(out, record)
            if log is not None:
                log("epoch", record)
        progress.advance("epochs", info=f"val mAP {record['val_macro_ap']:.4f} "
                         f"(best {state['best']:.4f})")
        distributed.barrier()
        if on_epoch_end is not None:
            on_epoch_end(record)
        if time_limit is not None and time.perf_counter() - start + record["seconds"] > \
                time_limit and not state["done"]:
            state["stopped"] = (f"stopping after epoch {epoch + 1}: another would pass the "
                                f"time limit ({time_limit:.0f} s); --resume continues")
            break
    progress.finish("batches")
    progress.finish("epochs")

    if main:  # thresholds of the best weights, tuned on val
        load_weights(model, out / WEIGHTS, partial=source.keys is not None)
        model.eval()
        state["val_probs"] = source.val_probs()  # the title step fits its fusion on them
        thresholds = tune_thresholds(source.y_val, state["val_probs"])
        save_thresholds(out, dict(zip(source.genres, thresholds.tolist(), strict=True)))
    distributed.barrier()
    state["seconds"] = round(time.perf_counter() - start, 1)
    return state
