"""DDP helpers: the same code runs as one process or under `torchrun`.

`torchrun` sets RANK, WORLD_SIZE and LOCAL_RANK; without them `setup()` returns (0, 1, device)
and every helper here is a no-op. Backend: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that logs and writes files."""
    return rank() == 0


def setup(device: str | None = None) -> tuple[int, int, torch.device]:
    """Join the process group when launched by torchrun; return (rank, world, device).

    `device` ("cpu", "cuda") overrides the default (CUDA when available). Under torchrun
    with CUDA, each process takes the GPU of its LOCAL_RANK.
    """
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        index = local if world > 1 else (torch.device(device or "cuda").index or 0)
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    return rank(), world_size(), dev


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast(obj: Any, src: int = 0) -> Any:
    """`obj` from rank `src` on every rank (any picklable object)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
