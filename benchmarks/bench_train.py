"""Train one model end to end on a prepared dataset and score it on test beside the prior.

    python benchmarks/bench_train.py --data datasets/shared --recipe seed-custom --epochs 3

Prints wall time, peak memory (max RSS), and the test scores (scikit-learn): macro AP, micro
AP, macro ROC-AUC (macro averages over genres with at least 10 test positives, as the
reference figures) and top-3 hit, each beside the prior baseline (every poster scored with the
train split's genre frequencies). Posters are decoded once into the on-disk cache first; that
time is reported separately.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from postergenre.data.dataset import load_split
from postergenre.run import load_run, read_history
from postergenre.train.fit import fit as train
from postergenre.train.posters import cached_posters
from postergenre.train.recipes import make_config
from postergenre.train.sources import predict_arrays

MIN_POSITIVES = 10


def scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    keep = np.flatnonzero(y.sum(axis=0) >= MIN_POSITIVES)
    top3 = np.argsort(-p, axis=1)[:, :3]
    return {
        "macro_ap": float(np.mean([average_precision_score(y[:, g], p[:, g]) for g in keep])),
        "micro_ap": float(average_precision_score(y.ravel(), p.ravel())),
        "macro_auc": float(np.mean([roc_auc_score(y[:, g], p[:, g]) for g in keep])),
        "top3_hit": float(np.mean(np.take_along_axis(y, top3, axis=1).any(axis=1))),
    }


def subset(dataset: str, folder: Path, train: int | None, val: int | None,
           test: int | None) -> str:
    """A copy of the dataset folder with random subsets (seed 0) of its splits."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(dataset) / "genres.json", folder / "genres.json")
    for split, n in (("train", train), ("val", val), ("test", test)):
        table = pd.read_csv(Path(dataset) / f"{split}.csv", dtype=str, keep_default_na=False)
        if n is not None and n < len(table):
            table = table.sample(n, random_state=0)
        table.to_csv(folder / f"{split}.csv", index=False)
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="datasets/shared")
    parser.add_argument("--recipe", default="seed-custom")
    parser.add_argument("--model", default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--train-limit", type=int, default=None,
                        help="Train on a random subset of this many train posters.")
    parser.add_argument("--val-limit", type=int, default=None,
                        help="Validate on a random subset of this many val posters.")
    parser.add_argument("--test-limit", type=int, default=None,
                        help="Score a random subset of this many test posters.")
    parser.add_argument("--minutes", type=float, default=None,
                        help="Stop before an epoch that would end past this wall time.")
    parser.add_argument("--precision", default=None, help="auto | fp32 | bf16 (default auto)")
    parser.add_argument("--keras-python", default=None,
                        help="A Python with TensorFlow: also train the original Keras model on "
                             "the same posters in this run (benchmarks/bench_keras.py)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = make_config(args.recipe, "end-to-end", model=args.model, epochs=args.epochs,
                         precision=args.precision)
    out = args.out or Path("runs") / f"bench-{config.model}"
    full_train = load_split(args.data, "train").labels  # the prior: full train frequencies
    args.full_data = args.data
    if args.train_limit or args.val_limit or args.test_limit:
        args.data = subset(args.data, out.with_name(out.name + "-data"), args.train_limit,
                           args.val_limit, args.test_limit)
    splits = {s: load_split(args.data, s) for s in ("train", "val", "test")}

    start = time.perf_counter()
    from postergenre.models import create_model

    size = create_model(config.model, len(splits["train"].genres)).input_size
    arrays = {s: cached_posters(sp.paths, size) for s, sp in splits.items()}
    decode = time.perf_counter() - start

    before = len(read_history(out)) if args.resume else 0
    start = time.perf_counter()
    limit = args.minutes * 60 if args.minutes else None
    summary = (train(None, out, resume=True, time_limit=limit) if args.resume
               else train(args.data, out, config, time_limit=limit))
    wall = time.perf_counter() - start
    model = load_run(out).build_model()
    y = splits["test"].labels
    model_scores = scores(y, predict_arrays(model, arrays["test"]))
    prior = np.tile(full_train.mean(axis=0), (len(y), 1))
    prior_scores = scores(y, prior)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"{config.model}, recipe {args.recipe}: {summary['epochs']} epochs (best "
          f"{summary['best_epoch']}), train {len(splits['train'])} posters, "
          f"{args.threads} threads")
    print(f"decode/cache {decode:.0f} s, training {wall:.0f} s "
          f"({wall / max(summary['epochs'] - before, 1):.0f} s/epoch), peak RSS {peak:.0f} MiB")
    print("| scores on test | top-3 hit | macro AP | micro AP | macro ROC-AUC |")
    print("| --- | --- | --- | --- | --- |")
    rows = [("prior", prior_scores), (f"{config.model} (PyTorch)", model_scores)]
    history = read_history(out)[before:]
    rates = {"PyTorch": [len(splits["train"]) / r["seconds"] for r in history]}
    print("per epoch (train + val):", ", ".join(f"{r['seconds']:.1f} s" for r in history))
    if args.keras_python:
        keras = run_keras(args, len(splits["train"]), len(splits["val"]), len(y))
        if keras:
            rates["Keras"] = [len(splits["train"]) / s for s in keras["epoch_s"]]
            k = keras["test"]
            rows.append(("the original Keras model", k))
    for name, s in rows:
        print(f"| {name} | {s['top3_hit']:.3f} | {s['macro_ap']:.3f} | {s['micro_ap']:.3f} | "
              f"{s['macro_auc']:.3f} |")
    print("\n| training | seconds per epoch (last) | train posters/s (last) |")
    print("| --- | --- | --- |")
    for name, r in rates.items():
        print(f"| {name} | {len(splits['train']) / r[-1]:.1f} | {r[-1]:.1f} |")
    if "Keras" in rates:
        print(f"PyTorch / Keras: {rates['PyTorch'][-1] / rates['Keras'][-1]:.2f}x (target 2x)")


def run_keras(args: argparse.Namespace, train: int, val: int, test: int) -> dict | None:
    """The original Keras custom CNN on the same subsets (bench_keras.py, its own process and
    Python); None when that Python has no TensorFlow."""
    import json
    import subprocess
    import sys
    import tempfile

    script = Path(__file__).with_name("bench_keras.py")
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "keras.json"
        cmd = [args.keras_python, str(script), "--data", str(args.full_data), "--train",
               str(train), "--val", str(val), "--test", str(test), "--epochs",
               str(args.epochs), "--out", str(result)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        print(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "", flush=True)
        if done.returncode != 0:
            print(f"Keras run failed: {done.stderr.strip()[-500:]}", file=sys.stderr)
            return None
        return json.loads(result.read_text()) if result.is_file() else None


if __name__ == "__main__":
    main()
