"""Side by side: parameters, FLOPs and forward throughput of the registered image models.

    python benchmarks/bench_models.py [--batch 64] [--threads 2] [--batches 3]

Throughput is posters per second of a forward pass (eval mode, no grad) on random input at
each model's own input size; FLOPs (multiply-adds x 2) come from torch.utils.flop_counter for
one poster. Timings depend on what else the machine runs: repeat on an idle machine.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from postergenre.models import create_model

MODELS = ("custom-cnn", "vgg16", "efficientnet-lite0")


def measure(name: str, batch: int, batches: int) -> dict:
    model = create_model(name, 28).eval()
    h, w = model.input_size
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            model(torch.rand(1, 3, h, w))
        flops = counter.get_total_flops()
        x = torch.rand(batch, 3, h, w)
        model(x)  # warm-up
        start = time.perf_counter()
        for _ in range(batches):
            model(x)
        seconds = time.perf_counter() - start
    return {"model": name, "input": f"{h}x{w}", "params": params, "trainable": trainable,
            "gflops": flops / 1e9, "posters_per_s": batch * batches / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"forward pass, batch {args.batch}, {args.threads} threads, torch {torch.__version__}")
    print("| model | input (h x w) | parameters (trainable) | GFLOPs / poster | posters/s |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.models:
        r = measure(name, args.batch, args.batches)
        print(f"| {r['model']} | {r['input']} | {r['params'] / 1e6:.2f} M "
              f"({r['trainable'] / 1e6:.2f} M) | {r['gflops']:.2f} | {r['posters_per_s']:.1f} |")


if __name__ == "__main__":
    main()
