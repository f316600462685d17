"""End-to-end training: one process or DDP under `torchrun`, CPU or CUDA (AMP, channels_last).

    summary = train("datasets/shared", "runs/cnn", make_config("seed-custom", epochs=5))

Every epoch: train on the decoded, optionally augmented and resampled train split; score val
(macro average precision); keep the best weights in RUN/weights.safetensors; write the last
state to RUN/checkpoint/ (what `resume=True` continues from) and a line to RUN/history.jsonl.
At the end the per-genre thresholds that maximise F1 on val go to RUN/thresholds.json.

Reproducibility: the sample order, the augmentation and dropout are seeded per (seed, epoch),
so a run resumed from its checkpoint ends with the same weights as one never interrupted, and
N DDP ranks with a per-rank batch of B/N see exactly the batches of one process with batch B.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from postergenre.data.dataset import load_split
from postergenre.errors import PosterGenreError, RunError
from postergenre.evaluate.metrics import macro_ap, tune_thresholds
from postergenre.io import atomic_open, atomic_write_json, ensure_writable_dir
from postergenre.models import create_model
from postergenre.run import (
    CONFIG,
    WEIGHTS,
    append_history,
    load_run,
    load_weights,
    save_config,
    save_thresholds,
    save_weights,
    write_history,
)
from postergenre.train import distributed
from postergenre.train.augment import apply_affine, random_affine
from postergenre.train.losses import make_loss, positive_weights
from postergenre.train.posters import cached_posters
from postergenre.train.recipes import TrainConfig
from postergenre.train.sampling import EpochSampler, rare_genre_weights

CHECKPOINT = "checkpoint"


def to_batch(arrays: np.ndarray, index: np.ndarray, device: torch.device) -> torch.Tensor:
    """Rows of a (n, h, w, 3) uint8 array -> (b, 3, h, w) float in [0, 1] on `device`."""
    x = torch.from_numpy(np.ascontiguousarray(arrays[index]))
    x = x.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    return x.contiguous(memory_format=fmt)


def _autocast(device: torch.device):
    if device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@torch.inference_mode()
def predict_arrays(model: nn.Module, arrays: np.ndarray, batch_size: int = 128,
                   device: torch.device | str = "cpu") -> np.ndarray:
    """(n, G) probabilities for decoded posters (n, h, w, 3) uint8."""
    device = torch.device(device)
    model.eval()
    out = []
    for i in range(0, len(arrays), batch_size):
        x = to_batch(arrays, np.arange(i, min(i + batch_size, len(arrays))), device)
        with _autocast(device):
            out.append(torch.sigmoid(model(x).float()).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def make_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    lr, wd = config.lr, config.weight_decay
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if config.optimizer == "adam":  # Keras's epsilon
        return torch.optim.Adam(params, lr=lr, eps=1e-7, weight_decay=wd)
    if config.optimizer == "rmsprop":  # Keras's rho and epsilon
        return torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-7, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)


def make_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int
                  ) -> torch.optim.lr_scheduler.LambdaLR:
    if config.schedule == "cosine":
        def factor(step: int) -> float:
            return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    else:
        def factor(step: int) -> float:
            return 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _epoch_seed(seed: int, epoch: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + salt) % (2**63)


def save_checkpoint(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    schedule: Any, state: dict[str, Any]) -> None:
    """Write RUN/checkpoint/epoch-N/ then point latest.json at it (atomic), then drop older."""
    root = run_dir / CHECKPOINT
    folder = root / f"epoch-{state['epoch']}"
    save_weights(model, folder / "model.safetensors")
    with atomic_open(folder / "trainer.pt", "wb") as f:
        torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}, f)
    atomic_write_json(root / "latest.json", {**state, "dir": folder.name})
    for old in root.glob("epoch-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    schedule: Any) -> dict[str, Any] | None:
    """Restore the last checkpoint's tensors in place and return its state (None if none)."""
    latest = run_dir / CHECKPOINT / "latest.json"
    if not latest.is_file():
        return None
    state = json.loads(latest.read_text(encoding="utf-8"))
    folder = latest.parent / state["dir"]
    load_weights(model, folder / "model.safetensors")
    trainer = torch.load(folder / "trainer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(trainer["optimizer"])
    schedule.load_state_dict(trainer["schedule"])
    return state


class _Progress:
    """Rich bars for epochs and batches (loss, val macro AP, ETA); silent when disabled."""

    def __init__(self, enabled: bool, epochs: int, start: int) -> None:
        self.bar = None
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                            TextColumn("eta"), TimeRemainingColumn())
        self.epochs = self.bar.add_task("epochs", total=epochs, completed=start, info="")
        self.batches = self.bar.add_task("batches", total=1, info="")
        self.bar.start()

    def new_epoch(self, epoch: int, steps: int) -> None:
        if self.bar:
            self.bar.reset(self.batches, total=steps, description=f"epoch {epoch}", info="")

    def step(self, loss: float) -> None:
        if self.bar:
            self.bar.update(self.batches, advance=1, info=f"loss {loss:.4f}")

    def end_epoch(self, record: dict[str, Any]) -> None:
        if self.bar:
            self.bar.update(self.epochs, advance=1, info=f"val mAP {record['val_macro_ap']:.4f}"
                            f" (best {record['best_val_macro_ap']:.4f})")

    def close(self) -> None:
        if self.bar:
            self.bar.stop()


def _say(message: str) -> None:
    if distributed.is_main():
        print(message, file=sys.stderr)


def train(dataset: str | Path | None, out: str | Path, config: TrainConfig | None = None, *,
          resume: bool = False, device: str | None = None,
          backbone_weights: str | Path | None = None, progress: bool = True,
          tensorboard: bool = False, cache: bool = True, workers: int = 2,
          time_limit: float | None = None,
          on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train `config` on DATASET into the run folder `out`; return a summary dict.

    With `resume=True` the settings and dataset come from `out`'s config.json and training
    continues after its last checkpoint. `on_epoch_end(record)` is called on every rank after
    each epoch's checkpoint is written (progress hooks, tests). `time_limit` (seconds) stops
    before an epoch that would end past it (at least one epoch runs); `resume` continues later.
    """
    rank, world, dev = distributed.setup(device)
    try:
        return _train(dataset, Path(out), config, resume, rank, world, dev, backbone_weights,
                      progress, tensorboard, cache, workers, time_limit, on_epoch_end)
    finally:
        distributed.cleanup()


def _train(dataset, out: Path, config, resume, rank, world, dev, backbone_weights, progress,
           tensorboard, cache, workers, time_limit, on_epoch_end) -> dict[str, Any]:
    main = rank == 0
    if resume:
        stored = load_run(out).config
        config = TrainConfig.from_dict(stored.get("train", {}))
        dataset = dataset or stored.get("dataset")
        backbone_weights = backbone_weights or stored.get("backbone_weights")
    else:
        config = config or TrainConfig()
        if (out / CONFIG).exists():
            raise RunError(f"{out}: already holds a run; pass --resume to continue it, "
                           "or choose another --out")
        ensure_writable_dir(out)
    if dataset is None:
        raise PosterGenreError("no dataset given (--data)")
    if config.batch_size % world:
        raise PosterGenreError(f"batch size {config.batch_size} must be a multiple of the "
                               f"{world} processes")
    distributed.barrier()

    train_split, val_split = load_split(dataset, "train"), load_split(dataset, "val")
    genres = train_split.genres
    torch.manual_seed(config.seed)
    kwargs = dict(config.model_kwargs)
    if backbone_weights:
        kwargs["backbone_weights"] = str(backbone_weights)
    model = create_model(config.model, len(genres), **kwargs)
    if getattr(model, "pretrained", True) is False:
        _say(f"warning: {config.model} starts from random weights (no --backbone-weights "
             "file given): expect much lower scores than with ImageNet weights")
    size = tuple(model.input_size)
    if main and not resume:
        save_config(out, {"model": config.model, "model_kwargs": config.model_kwargs,
                          "genres": genres, "input_size": list(size),
                          "dataset": str(dataset), "train": config.to_dict(),
                          **({"backbone_weights": str(backbone_weights)}
                             if backbone_weights else {})})

    # Decode posters once (rank 0 fills the disk cache; the other ranks then read it).
    arrays = {}
    for turn in (True, False):
        if main == turn:
            for split in (train_split, val_split):
                arrays[split.name] = cached_posters(split.paths, size, cache, workers)
        distributed.barrier()
    x_train, x_val = arrays["train"], arrays["val"]
    y_train = torch.from_numpy(train_split.labels)

    model.to(dev)
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)
    pos_weight = (positive_weights(train_split.labels, max_weight=config.pos_weight_max)
                  if config.pos_weight else None)
    loss_fn = make_loss(config.loss, pos_weight).to(dev)
    weights = rare_genre_weights(train_split.labels, config.resample) if config.resample else None
    sampler = EpochSampler(len(train_split), weights, seed=config.seed, rank=rank, world=world)
    local_batch = config.batch_size // world
    steps = math.ceil(len(sampler) / local_batch)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], config)
    schedule = make_schedule(optimizer, config, steps * config.epochs)
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda"
                                  and not torch.cuda.is_bf16_supported())

    state: dict[str, Any] = {"epoch": 0, "best": -1.0, "best_epoch": 0, "bad_epochs": 0,
                             "done": False, "history": []}
    if resume and (saved := load_checkpoint(out, model, optimizer, schedule)) is not None:
        state = saved
        if main:  # the history file must match the checkpoint (an epoch may have been cut)
            write_history(out, state["history"])
    writer = _tensorboard(out) if tensorboard and main else None
    bars = _Progress(progress and main, config.epochs, state["epoch"])
    start = time.perf_counter()
    try:
        for epoch in range(state["epoch"], config.epochs):
            if state["done"]:
                break
            t0 = time.perf_counter()
            sampler.set_epoch(epoch)
            order = sampler.order()
            local = order[rank::world].numpy()
            thetas = None
            if config.augment:
                g = torch.Generator().manual_seed(_epoch_seed(config.seed, epoch, 1))
                thetas = random_affine(len(order), size, g)[rank::world]
            torch.manual_seed(_epoch_seed(config.seed, epoch, 2 + rank))  # dropout
            net.train()
            bars.new_epoch(epoch + 1, steps)
            total, seen = 0.0, 0
            for s in range(steps):
                idx = local[s * local_batch:(s + 1) * local_batch]
                x = to_batch(x_train, idx, dev)
                if thetas is not None:
                    x = apply_affine(x, thetas[s * local_batch:(s + 1) * local_batch])
                y = y_train[idx].to(dev, non_blocking=True)
                with _autocast(dev):
                    loss = loss_fn(net(x), y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                total, seen = total + loss.item() * len(idx), seen + len(idx)
                bars.step(loss.item())

            val_map = float("nan")
            if main:
                val_map = macro_ap(val_split.labels, predict_arrays(model, x_val, device=dev))
            val_map = distributed.broadcast(val_map)
            score = val_map if math.isfinite(val_map) else -1.0
            if score > state["best"]:
                state.update(best=score, best_epoch=epoch + 1, bad_epochs=0)
                if main:
                    save_weights(model, out / WEIGHTS)
            else:
                state["bad_epochs"] += 1
            record = {"epoch": epoch + 1, "train_loss": total / max(seen, 1),
                      "val_macro_ap": val_map, "best_val_macro_ap": state["best"],
                      "lr": optimizer.param_groups[0]["lr"],
                      "seconds": round(time.perf_counter() - t0, 2)}
            state["history"].append(record)
            state["epoch"] = epoch + 1
            state["done"] = (config.patience > 0 and state["bad_epochs"] >= config.patience) \
                or epoch + 1 == config.epochs
            if main:
                save_checkpoint(out, model, optimizer, schedule, state)
                append_history(out, record)
                if writer is not None:
                    for key in ("train_loss", "val_macro_ap", "lr"):
                        writer.add_scalar(key, record[key], epoch + 1)
            bars.end_epoch(record)
            distributed.barrier()
            if on_epoch_end is not None:
                on_epoch_end(record)
            elapsed = time.perf_counter() - start
            if time_limit is not None and elapsed + record["seconds"] > time_limit:
                _say(f"stopping after epoch {epoch + 1}: another would pass the time limit "
                     f"({time_limit:.0f} s); --resume continues")
                break
    finally:
        bars.close()
        if writer is not None:
            writer.close()

    if main:  # thresholds of the best weights, tuned on val
        load_weights(model, out / WEIGHTS)
        probs = predict_arrays(model, x_val, device=dev)
        save_thresholds(out, dict(zip(genres, tune_thresholds(val_split.labels, probs),
                                      strict=True)))
    distributed.barrier()
    return {"epochs": state["epoch"], "best_epoch": state["best_epoch"],
            "best_val_macro_ap": state["best"], "seconds": round(time.perf_counter() - start, 1),
            "world": world, "device": str(dev)}


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise PosterGenreError("--tensorboard needs TensorBoard: pip install "
                               "'postergenre[tensorboard]'") from None
    return SummaryWriter(str(out / "tensorboard"))
