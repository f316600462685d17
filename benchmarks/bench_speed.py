"""CPU speed: end-to-end throughput, single-poster latency and peak memory, per backend.

    python benchmarks/bench_speed.py [--data ../shared/data] [--run RUN] [--n 2000] [--quick]

Each configuration runs in its own process (so its peak memory is its own) on the same
posters, one after the other:
  torch          the model (shipped one unless --run) in PyTorch eager
  onnx           the same model in onnxruntime, as `postergenre predict` runs it by default:
                 int8 when the run carries a checked int8 graph (`export --int8`), else fp32
  onnx-fp32      onnxruntime fp32, when `onnx` ran int8
  onnx+titles    `onnx` with every poster's title (from DATA/movies.csv) fused in, as
                 `predict --titles` does it; skipped when the run has no title model
  vgg16-original the original project's VGG16 at 200 x 150 in PyTorch eager (random weights:
                 only its cost matters)
  vgg16-onnx     the same VGG16 in onnxruntime fp32: the original architecture at its best here
Figures: end-to-end posters/s over N posters (decode + resize + model, decoding overlapped
with the model as `postergenre predict` does it: predict.predict_stream), single-poster
latency p50/p95 in a warm process (decode + resize + model), the model alone at batch 64,
and the process's peak RSS.
They go to docs/benchmarks.md, section "Speed".
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIGS = ("torch", "onnx", "onnx-fp32", "onnx+titles", "vgg16-original", "vgg16-onnx")
TARGETS = {"throughput": 150.0, "p50_ms": 15.0, "vs_vgg16": 5.0}


def poster_paths(data: Path, n: int) -> list[Path]:
    paths = sorted((data / "posters").glob("*.jpg"))[:n]
    if not paths:
        sys.exit(f"error: {data / 'posters'}: no posters found")
    for p in paths:  # read once so that every configuration finds them in the page cache
        p.read_bytes()
    return paths


def random_run(model: str, directory: Path, **kwargs) -> Path:
    """A run folder with a randomly initialised model (speed does not depend on weights).

    Seeded, so that its ONNX graph is exported into the cache once, not at every run."""
    import torch

    from postergenre.io import save_weights
    from postergenre.models import create_model
    from postergenre.run import RunConfig, write_config

    torch.manual_seed(0)
    net = create_model(model, 28, **kwargs)
    keys = net.trained_keys() if hasattr(net, "trained_keys") else None
    save_weights(net, directory / "weights.safetensors", keys)
    write_config(directory, RunConfig(model=model, model_kwargs=kwargs,
                                      genres=tuple(f"genre{i}" for i in range(28)),
                                      input_size=tuple(net.input_size),
                                      partial_weights=bool(keys)))
    return directory


def movie_titles(data: Path) -> dict[int, str]:
    from postergenre.data.inputs import read_titles

    return read_titles(data / "movies.csv")[0]


def measure(run: str | None, backend: str, paths: list[Path], latency_n: int,
            titles: dict[int, str] | None = None) -> dict:
    """Runs in the worker process: every figure for one configuration; with `titles`, each
    poster's title is fused with it (the text path's cost included: the titles are looked up
    and fused inside the timed loop)."""
    import torch

    from postergenre.backends import physical_cores
    from postergenre.data.inputs import imdb_id
    from postergenre.predict import Predictor, make_backend, predict_stream

    torch.set_num_threads(physical_cores())
    predictor = Predictor.load(run, backend="torch" if backend == "torch" else "onnx")
    title = (lambda p: titles.get(imdb_id(str(p)))) if titles else (lambda p: None)
    if backend == "onnx-fp32":
        predictor.backend = make_backend(predictor.run, "onnx-fp32")
    warm = predictor.load_batch(paths[:64])
    predictor.predict_proba(warm)  # warm-up (and, for onnx, the one-off export)

    start = time.perf_counter()
    predictor.predict_proba(warm)
    model_only = len(warm) / (time.perf_counter() - start)

    start = time.perf_counter()
    sources = [str(p) for p in paths]
    fused = {s: t for s in sources if (t := title(s))} if titles else None
    scored = list(predict_stream(predictor, sources, titles=fused))  # as `predict --titles`
    throughput = len(scored) / (time.perf_counter() - start)
    failed = sum(s.error is not None for s in scored)

    latencies = []
    for path in paths[-latency_n:]:
        start = time.perf_counter()
        predictor.predict_files([path], titles=[title(path)] if titles else None)
        latencies.append(1000 * (time.perf_counter() - start))
    card = predictor.run.path / "int8.json"
    int8_check = json.loads(card.read_text()) if backend == "onnx" and card.is_file() else None
    return {
        "int8_check": int8_check if getattr(predictor.backend, "int8", False) else None,
        "model": predictor.run.model_name, "input_size": list(predictor.input_size),
        "backend": predictor.backend.name, "int8": getattr(predictor.backend, "int8", False),
        "posters": len(paths), "failed": failed,
        "throughput": throughput, "model_only_b64": model_only,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p95_ms": float(np.percentile(latencies, 95)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def worker(args: argparse.Namespace) -> None:
    paths = poster_paths(args.data, args.n)
    with tempfile.TemporaryDirectory() as tmp:
        run, backend = args.run, args.worker
        if args.worker.startswith("vgg16"):
            run = str(random_run("vgg16", Path(tmp)))
            backend = "torch" if args.worker == "vgg16-original" else "onnx"
        elif run is None:
            from postergenre.errors import RunError
            from postergenre.run import load_run

            try:
                load_run(None)
            except RunError:  # no shipped model in this checkout: same architecture, random head
                run = str(random_run("efficientnet-lite0", Path(tmp)))
        titles = None
        if backend == "onnx+titles":
            backend, titles = "onnx", movie_titles(args.data)
        print(json.dumps(measure(run, backend, paths, args.latency_n, titles)))


def run_config(config: str, args: argparse.Namespace) -> dict:
    n = args.vgg_n if config.startswith("vgg16") else args.n
    cmd = [sys.executable, __file__, "--worker", config, "--data", str(args.data), "--n", str(n),
           "--latency-n", str(args.latency_n)] + (["--run", args.run] if args.run else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"error: {config} failed:\n{out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def has_title_model(run: str | None) -> bool:
    from postergenre.errors import RunError
    from postergenre.run import load_run

    try:
        return load_run(run).config.text is not None
    except RunError:
        return False


def report(results: dict[str, dict]) -> None:
    print("| configuration | model (input) | posters/s end to end | model only, 64 decoded "
          "| p50 ms | p95 ms | peak RSS MB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        h, w = r["input_size"]
        if name == "onnx":
            name += " (int8)" if r["int8"] else " (fp32)"
        print(f"| {name} | {r['model']} ({h}x{w}) | {r['throughput']:.0f} "
              f"| {r['model_only_b64']:.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} "
              f"| {r['peak_rss_mb']:.0f} |")
    check = results.get("onnx", {}).get("int8_check")
    if check:
        print(f"\nint8 graph checked on {check['posters']} {check['split']} posters: macro AP "
              f"fp32 {check['macro_ap_fp32']:.4f}, int8 {check['macro_ap_int8']:.4f} "
              f"(allowed loss {check['max_drop']})")
    best = results.get("onnx") or results.get("torch")
    if best:
        print(f"\ntarget >= {TARGETS['throughput']:.0f} posters/s: {best['throughput']:.0f}; "
              f"target p50 <= {TARGETS['p50_ms']:.0f} ms: {best['p50_ms']:.1f} ms")
    for name in ("vgg16-original", "vgg16-onnx"):
        if best and name in results:
            ratio = best["throughput"] / results[name]["throughput"]
            print(f"speed-up over {name} (target >= {TARGETS['vs_vgg16']:.0f}x): {ratio:.1f}x")
    print("-> docs/benchmarks.md, section Speed")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--run", default=None, help="run folder (default: the shipped model)")
    parser.add_argument("--n", type=int, default=2000, help="posters for throughput")
    parser.add_argument("--vgg-n", type=int, default=320, help="posters for the VGG16 run")
    parser.add_argument("--latency-n", type=int, default=100, help="posters for latency")
    parser.add_argument("--only", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--quick", action="store_true", help="a smoke run on a few posters")
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.vgg_n, args.latency_n = 128, 64, 10
    if args.worker:
        return worker(args)
    results = {}
    for config in args.only:
        if config == "onnx-fp32" and not results.get("onnx", {}).get("int8", True):
            continue  # `onnx` already ran fp32
        if config == "onnx+titles" and not has_title_model(args.run):
            continue
        results[config] = run_config(config, args)
        print(f"{config}: {json.dumps(results[config])}", flush=True)
    report(results)


if __name__ == "__main__":
    main()
