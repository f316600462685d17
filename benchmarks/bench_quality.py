"""Quality of frozen-feature models on a dataset: every variant tried, beside the prior baseline.

    python benchmarks/bench_quality.py datasets/shared [--sections choices,imbalance,final]

Features come from the cache (train/features.py; extracted on first use, which takes minutes
per backbone on a CPU). Choices are made on val; test is reported for the imbalance table and
the final model only. Macro averages are over genres with >= 10 positives in the split.
Prints markdown tables (the "Quality" section of docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from multiprocessing import get_context

import numpy as np
import torch

from postergenre.data.dataset import load_split
from postergenre.evaluate.metrics import evaluate_scores, prior_scores
from postergenre.models.efficientnet import make_head
from postergenre.train.features import FeatureSpec, extract_features
from postergenre.train.sources import probs_of

DIMS = {"mean": 1280, "meanmax": 2560}
LITE0 = "efficientnet-lite0"
SHIPPED_SIZE = (368, 250)  # the shipped model's input: 1.37x the native 268 x 182 poster


class Data:
    """Train/val/test features of one backbone, with flipped copies on demand."""

    def __init__(self, dataset: str) -> None:
        self.splits = {s: load_split(dataset, s) for s in ("train", "val", "test")}
        self.y = {s: split.labels for s, split in self.splits.items()}
        self._cache: dict[tuple, np.ndarray] = {}

    def features(self, split: str, model=LITE0, size=(268, 182), pool="multi", flip=False):
        key = (split, model, tuple(size), flip)
        if key not in self._cache:
            spec = FeatureSpec(model, tuple(size), "multi", flip)
            self._cache[key] = extract_features(self.splits[split].paths, spec)
        x = self._cache[key]
        return x[:, : DIMS.get(pool, x.shape[1])]

    def x(self, split: str, flip: str = "none", **spec) -> np.ndarray:
        """flip: "none"; "test" (val/test average plain and mirrored features); "both" (that,
        and mirrored copies added to train)."""
        plain = self.features(split, **spec)
        if flip == "none" or (flip == "test" and split == "train"):
            return plain
        mirrored = self.features(split, flip=True, **spec)
        return np.concatenate([plain, mirrored]) if split == "train" else (plain + mirrored) / 2


def scores(y: np.ndarray, probs: np.ndarray, genres) -> dict[str, float]:
    m = evaluate_scores(y, probs, genres)
    return {k: m[k] for k in ("top3_hit", "macro_ap", "micro_ap", "macro_roc_auc")}


def fit_head(head: torch.nn.Sequential, x_train: np.ndarray, y_train: np.ndarray,
             x_val: np.ndarray, y_val: np.ndarray, seed: int = 0, lr: float = 1e-3,
             weight_decay: float = 1e-2, **options) -> None:
    """The engine's features mode on arrays (train/sources.py `head_on_arrays`), in a temporary
    run folder: the head ends with its best val epoch's weights."""
    import tempfile
    from pathlib import Path

    from postergenre.train.engine import run_epochs
    from postergenre.train.recipes import make_config
    from postergenre.train.sources import head_on_arrays

    config = make_config(mode="features", seed=seed, lr=lr, weight_decay=weight_decay, **options)
    head[0].fit(torch.from_numpy(x_train))
    genres = [str(j) for j in range(y_train.shape[1])]
    with tempfile.TemporaryDirectory() as tmp:
        run_epochs(head_on_arrays(head, head, x_train, y_train, x_val, y_val, config, genres),
                   Path(tmp), config)


def head_probs(head: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    return probs_of(head.eval(), x)


def train_probs(data: Data, spec: dict | list[dict], head: str = "linear", flip: str = "none",
                splits=("val",), seeds=(0,), **options) -> dict[str, np.ndarray]:
    """Fit `len(seeds)` heads (per backbone when `spec` is a list: an ensemble) and return
    their mean probabilities on `splits`."""
    if isinstance(spec, list):
        runs = [train_probs(data, one, head, flip, splits, seeds, **options) for one in spec]
        return {s: sum(r[s] for r in runs) / len(runs) for s in splits}
    xtr, xva = data.x("train", flip, **spec), data.x("val", flip, **spec)
    ytr = data.y["train"]
    if flip == "both":  # mirrored training copies (augmentation)
        ytr = np.concatenate([ytr, ytr])
    out = {s: 0.0 for s in splits}
    for seed in seeds:
        torch.manual_seed(seed)
        module = make_head(xtr.shape[1], ytr.shape[1], head, options.get("hidden", 512),
                           options.get("dropout", 0.0))
        fit_opts = {k: v for k, v in options.items() if k not in ("hidden", "dropout")}
        fit_head(module, xtr, ytr, xva, data.y["val"], seed=seed, **fit_opts)
        for s in splits:
            out[s] = out[s] + head_probs(module, data.x(s, flip, **spec)) / len(seeds)
    return out


def row(name: str, metrics: dict[str, float], base: dict[str, float] | None = None,
        extra: str = "") -> str:
    cells = []
    for k in ("top3_hit", "macro_ap", "micro_ap", "macro_roc_auc"):
        delta = f" ({metrics[k] - base[k]:+.3f})" if base else ""
        cells.append(f"{metrics[k]:.3f}{delta}")
    return f"| {name} | " + " | ".join(cells) + f" |{extra}"


HEADER = "| variant | top-3 hit | macro AP | micro AP | macro ROC-AUC |"


def sklearn_reference(data: Data, genres) -> dict[str, float]:
    """The README's floor: mean-pooled features, one logistic regression per genre."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(data.x("train", pool="mean"))
    xtr, xva = (scaler.transform(data.x(s, pool="mean")) for s in ("train", "val"))
    probs = np.zeros_like(data.y["val"])
    for j in range(probs.shape[1]):
        y = data.y["train"][:, j]
        if 0 < y.sum() < len(y):
            lr = LogisticRegression(C=0.01, max_iter=300).fit(xtr, y)
            probs[:, j] = lr.predict_proba(xva)[:, 1]
    return scores(data.y["val"], probs, genres)


LINEAR_REG = {"dropout": 0.8, "weight_decay": 1.0, "lr": 1e-4}
MLP = {"head": "mlp", "dropout": 0.6, "weight_decay": 0.1}
MULTI = {"pool": "multi"}
CHOICES: list[tuple[str, dict]] = [  # fit_head defaults (lr 1e-3, weight decay 0.01) unless set
    ("lite0 mean, linear head", {"spec": {"pool": "mean"}}),
    ("lite0 mean+max, linear", {"spec": {"pool": "meanmax"}}),
    ("lite0 mean+max+stages, linear", {"spec": MULTI}),
    ("+ flip TTA (plain and mirrored features averaged)", {"spec": MULTI, "flip": "test"}),
    ("+ flip train augmentation and TTA", {"spec": MULTI, "flip": "both"}),
    ("mean+max+stages, linear, dropout 0.5, wd 0.5, lr 1e-4",
     {"spec": MULTI, "dropout": 0.5, "weight_decay": 0.5, "lr": 1e-4}),
    ("mean, linear, dropout 0.8, wd 1, lr 1e-4", {"spec": {"pool": "mean"}, **LINEAR_REG}),
    ("mean+max+stages, linear, dropout 0.8, wd 1, lr 1e-4", {"spec": MULTI, **LINEAR_REG}),
    ("mean+max+stages, MLP 512, dropout 0.6, wd 0.1, lr 1e-4", {"spec": MULTI, **MLP, "lr": 1e-4}),
    ("same, lr 3e-4 (the frozen-feature recipe)", {"spec": MULTI, **MLP, "lr": 3e-4}),
    ("shipped recipe + flip augmentation and TTA", {"spec": MULTI, **MLP, "lr": 3e-4,
                                                    "flip": "both"}),
    ("shipped recipe + positive weights", {"spec": MULTI, **MLP, "lr": 3e-4, "pos_weight": True}),
    ("shipped recipe on lite2 features", {"spec": {**MULTI, "model": "efficientnet-lite2"},
                                          **MLP, "lr": 3e-4}),
    ("shipped recipe, 2 seeds averaged", {"spec": MULTI, **MLP, "lr": 3e-4, "seeds": (0, 1)}),
    ("shipped recipe, lite0 + lite2 heads averaged",
     {"spec": [MULTI, {**MULTI, "model": "efficientnet-lite2"}], **MLP, "lr": 3e-4}),
    ("shipped recipe on lite0 at 402x273 (1.5x)", {"spec": {**MULTI, "size": (402, 273)}, **MLP,
                                                   "lr": 3e-4}),
    ("shipped recipe on lite1 features", {"spec": {**MULTI, "model": "efficientnet-lite1"},
                                          **MLP, "lr": 3e-4}),
    ("shipped recipe, MLP 256 wide", {"spec": MULTI, **MLP, "lr": 3e-4, "hidden": 256}),
    ("shipped recipe, 5 seeds averaged", {"spec": MULTI, **MLP, "lr": 3e-4,
                                          "seeds": (0, 1, 2, 3, 4)}),
    ("shipped recipe on lite0 at 335x228 (1.25x)", {"spec": {**MULTI, "size": (335, 228)},
                                                    **MLP, "lr": 3e-4}),
    ("MLP 256 wide on lite0 at 368x250 (1.37x): the shipped head",
     {"spec": {**MULTI, "size": SHIPPED_SIZE}, **MLP, "lr": 3e-4, "hidden": 256}),
]


def _fit_in_child(queue, dataset: str, options: dict) -> None:
    data = Data(dataset)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    probs = train_probs(data, splits=("test",), **options)["test"]
    seconds = time.perf_counter() - start
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    queue.put((probs, seconds, peak))


# The shipped model's head recipe (the features mode's defaults).
RECIPE = {"spec": {"pool": "multi"}, "head": "mlp", "dropout": 0.6, "lr": 3e-4,
          "weight_decay": 0.1}
IMBALANCE = [("BCE", {}), ("BCE + positive weights", {"pos_weight": True}),
             ("ASL (gamma- 4, clip 0.05)", {"loss": "asl"}),
             ("BCE + rare-genre resampling (power 0.5)", {"resample": 0.5})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--sections", default="choices,imbalance,finetune,final")
    parser.add_argument("--only", default="", help="comma-separated indices of CHOICES to run")
    parser.add_argument("--run", action="append", default=[],
                        help="run folder(s) to score on test (section final); default: shipped")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    data = Data(args.dataset)
    genres = data.splits["train"].genres
    prior = {s: scores(data.y[s], prior_scores(data.y["train"], len(data.y[s])), genres)
             for s in ("val", "test")}
    sections = args.sections.split(",")
    if "choices" in sections:
        print("\nVal split (choices); deltas against the first row\n\n" + HEADER)
        print("| --- | --- | --- | --- | --- |")
        print(row("prior (train genre frequencies)", prior["val"]))
        base = None
        picked = [int(i) for i in args.only.split(",") if i] or range(len(CHOICES))
        if not args.only:
            print(row("reference: mean + per-genre logistic regression (sklearn)",
                      sklearn_reference(data, genres)), flush=True)
        for i in picked:
            name, options = CHOICES[i]
            try:
                start = time.perf_counter()
                m = scores(data.y["val"], train_probs(data, **options)["val"], genres)
            except Exception as e:  # a missing backbone package, say: report and go on
                print(f"| {name} | skipped: {e} | | | |")
                continue
            base = base or m
            print(row(name, m, base, f" {time.perf_counter() - start:.0f} s"), flush=True)
    if "imbalance" in sections:
        print("\nTest split: imbalance options (the shipped recipe otherwise)\n")
        print(HEADER + " wall time | peak memory |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        print(row("prior", prior["test"]) + " - | - |")
        ctx = get_context("fork")
        for name, opts in IMBALANCE:
            queue = ctx.Queue()
            child = ctx.Process(target=_fit_in_child,
                                args=(queue, args.dataset, {**RECIPE, **opts}))
            child.start()
            probs, seconds, peak = queue.get()
            child.join()
            m = scores(data.y["test"], probs, genres)
            print(row(name, m, prior["test"]) + f" {seconds:.0f} s | +{peak:.0f} MiB |",
                  flush=True)
    if "finetune" in sections:
        finetune_section(args.dataset, data, genres, prior)
    if "final" in sections:
        print("\nTest split: shipped / given runs, beside the prior\n\n" + HEADER)
        print("| --- | --- | --- | --- | --- |")
        print(row("prior (train genre frequencies)", prior["test"]))
        for path in args.run or [None]:
            m = scores(data.y["test"], run_probs(data, path), genres)
            print(row(str(path or "shipped model"), m, prior["test"]), flush=True)


def finetune_section(dataset: str, data: Data, genres, prior) -> None:
    """The shipped recipe end to end: a frozen-feature head, then its last 2 blocks
    fine-tuned on the cached trunk (train/finetune.py); val and test beside the prior."""
    import tempfile

    from postergenre.run import read_history
    from postergenre.train.fit import fit
    from postergenre.train.recipes import make_config

    def train_head(dataset, out, **options):
        fit(dataset, out, make_config(mode="features", model=LITE0, model_kwargs={
            "input_size": list(SHIPPED_SIZE)}, **options))
        return out

    def finetune(dataset, out, init):
        fit(dataset, out, make_config(mode="finetune", model=LITE0, init=str(init)))
        return out

    print("\nFine-tuning the last blocks (cached trunk), val and test, beside the prior\n")
    print("| run | split | top-3 hit | macro AP | micro AP | macro ROC-AUC | time |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        head = train_head(dataset, f"{tmp}/head")
        runs = [("head on frozen features", head, time.perf_counter() - start)]
        for blocks in (2,):
            start = time.perf_counter()
            run = finetune(dataset, f"{tmp}/ft{blocks}", head)
            runs.append((f"+ last {blocks} blocks fine-tuned", run, time.perf_counter() - start))
        for split in ("val", "test"):
            print(row(f"prior | {split}", prior[split]) + " - |")
            for name, run, seconds in runs:
                m = scores(data.y[split], run_probs(data, run, split), genres)
                print(row(f"{name} | {split}", m, prior[split]) + f" {seconds:.0f} s |",
                      flush=True)
        # The final fit: the same recipe on train + val, the head for the epochs val picked.
        start = time.perf_counter()
        both = train_val_dataset(dataset, f"{tmp}/train-val")
        epochs = max(read_history(head), key=lambda r: r["val_macro_ap"])["epoch"]
        refit_head = train_head(both, f"{tmp}/refit-head", epochs=epochs, patience=0)
        refit = finetune(both, f"{tmp}/refit", refit_head)
        m = scores(data.y["test"], run_probs(data, refit, "test"), genres)
        print(row("same, refitted on train + val | test", m, prior["test"])
              + f" {time.perf_counter() - start:.0f} s |", flush=True)


def train_val_dataset(dataset: str, out: str) -> str:
    """A copy of `dataset` whose train split is its train and val splits together."""
    import shutil
    from pathlib import Path

    src, dst = Path(dataset), Path(out)
    dst.mkdir(parents=True)
    for name in ("genres.json", "val.csv", "test.csv"):
        shutil.copy(src / name, dst / name)
    train, val = ((src / f"{s}.csv").read_text().splitlines(keepends=True)
                  for s in ("train", "val"))
    (dst / "train.csv").write_text("".join(train + val[1:]))
    return out


def run_probs(data: Data, path: str | None, split: str = "test") -> np.ndarray:
    """A frozen-feature or fine-tuned run's probabilities on `split`, from the caches."""
    from postergenre.run import load_run

    run = load_run(path)
    model = run.build_model()
    kwargs = run.config.model_kwargs
    blocks = kwargs.get("trainable_blocks", 0)
    if blocks > 0:  # the fine-tuned tail runs on the cached trunk
        cut = model.cut_for(blocks)
        spec = FeatureSpec(run.model_name, tuple(kwargs["input_size"]), "multi", cut=cut)
        rows = extract_features(data.splits[split].paths, spec, dtype=np.float16)
        return probs_of(lambda r: model.tail_logits(r, cut), rows)
    spec = {"model": run.model_name, "size": tuple(kwargs["input_size"]), "pool": kwargs["pool"]}
    flip = "test" if kwargs.get("flip_average") else "none"
    return head_probs(model.head, data.x(split, flip, **spec))


if __name__ == "__main__":
    main()
