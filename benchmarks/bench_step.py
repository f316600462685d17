"""One training step of the custom CNN, timed: the micro-benchmark behind the dropout figures
of docs/benchmarks.md ("On a CPU without bfloat16").

    python benchmarks/bench_step.py [--steps 8] [--threads 2] [--profile]

A batch of 64 random posters at 200 x 150, channels_last, BCE, fused Adam, float32, as the
seed-custom recipe trains on a CPU without bfloat16. Each row swaps the model's dropout:
`torch` (nn.Dropout, Bernoulli masks) and `bytes` (the model's own, masks from random bytes).
Prints ms per step and posters/s; `--profile` adds torch.profiler's top operators per row.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from postergenre.models import create_model
from postergenre.models.custom_cnn import Dropout


def time_steps(dropout: str, steps: int, profile: bool) -> float:
    torch.manual_seed(0)
    model = create_model("custom-cnn", 27).to(memory_format=torch.channels_last).train()
    if dropout == "torch":
        for parent in model.modules():
            for name, child in parent.named_children():
                if isinstance(child, Dropout):
                    setattr(parent, name, nn.Dropout(child.p))
    opt = torch.optim.Adam(model.parameters(), 1e-3, fused=True)
    x = torch.rand(64, 3, 200, 150).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(64, 27) < 0.1).float()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
        opt.step()

    step()
    step()  # warm-up: oneDNN primitives, allocator
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    if profile:
        from torch.profiler import profile as profiler

        with profiler() as p:
            step()
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"custom-cnn, batch 64, 200 x 150, float32, {args.threads} threads")
    print("| dropout masks | ms per step | posters/s |\n| --- | --- | --- |")
    for dropout in ("torch", "bytes"):
        s = time_steps(dropout, args.steps, args.profile)
        print(f"| {dropout} | {s * 1000:.0f} | {64 / s:.1f} |", flush=True)


if __name__ == "__main__":
    main()
