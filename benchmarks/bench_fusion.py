"""Title + year text model and its late fusion with the poster model: the "Fusion" tables of
docs/benchmarks.md.

    python benchmarks/bench_fusion.py [DATASET] [--sections variants,forms,joint,test]

variants: text-model settings, each fitted on train and scored on val (deltas against the
first row). forms: fusion forms on val, each scored out of fold (5-fold cross-fitting within
val), with the poster model's val scores. joint: the poster head trained on train with the
title model's logits (out of fold on train) as inputs, against the late fusion. test: the
final rows on test, every figure beside the prior, with bootstrap 95% intervals.

The poster model is the shipped one (`Predictor.load()`); its val and test probabilities are
cached in POSTERGENRE_CACHE (or a temp folder) as .npy, keyed by the split's poster ids.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from functools import cache
from pathlib import Path

import numpy as np

from postergenre.data.dataset import load_split
from postergenre.evaluate.metrics import (
    bootstrap_ci,
    compare_with_prior,
    evaluate_scores,
    prior_scores,
    roc_auc,
    tune_thresholds,
)
from postergenre.models.text import TitleModel
from postergenre.train.text import cross_fit_fusion, fit_fusion

BASE = {"word_ngrams": (1, 2), "char_ngrams": (2, 5), "year": "decade", "C": 1.0, "fold": True}
VARIANTS = [
    ("title + decade (word 1-2, char 2-5, repaired and folded, C 1)", {}),
    ("no year", {"year": "none"}),
    ("raw title (no repair, no folding)", {"fold": False}),
    ("decade + 5-year bins", {"year": "decade+5y"}),
    ("year weight 2", {"year_weight": 2.0}),
    ("word 1-1", {"word_ngrams": (1, 1)}),
    ("char 3-6", {"char_ngrams": (3, 6)}),
    ("C 0.5", {"C": 0.5}),
    ("C 2", {"C": 2.0}),
]
PROXY_SPEC = {"input_size": (368, 250), "pool": "multi"}  # the shipped model's frozen features
COLUMNS = ("top3_hit", "macro_ap", "micro_ap", "macro_roc_auc", "macro_f1")


def cache_dir() -> Path:
    root = Path(os.environ.get("POSTERGENRE_CACHE") or Path(tempfile.gettempdir()))
    path = root / "bench-fusion"
    path.mkdir(parents=True, exist_ok=True)
    return path


@cache
def poster_precision(run: str | None) -> str:
    """'int8' where the onnx backend runs the run's checked int8 graph on this CPU, else
    'fp32' (no check, or this CPU's int8 kernels disagree with it)."""
    from postergenre.predict import Predictor

    return "int8" if getattr(Predictor.load(run).backend, "int8", False) else "fp32"


def poster_probs(split, run: str | None) -> np.ndarray:
    """The poster model's probabilities for a split (cached, per precision)."""
    from postergenre.predict import Predictor, predict_stream

    key = (f"{Path(run).name if run else 'default'}-{poster_precision(run)}-{split.name}-"
           f"{len(split)}-{split.ids.sum()}")
    path = cache_dir() / f"poster-{key}.npy"
    if path.is_file():
        return np.load(path)
    predictor = Predictor.load(run)
    out = []
    for p in predict_stream(predictor, [str(s) for s in split.paths]):
        if p.error is not None:
            raise SystemExit(f"error: {p.error}")
        out.append(p.probabilities)
    probs = np.stack(out).astype(np.float32)
    np.save(path, probs)
    return probs


def proxy_probs(train, val) -> np.ndarray:
    """Val probabilities of a poster model that never saw val: an MLP head (256 GELU, dropout
    0.6, AdamW lr 3e-4, weight decay 0.1, 25 epochs, seed 0; the shipped head's recipe without
    early stopping) on the shipped model's frozen Lite0 368 x 250 features, fitted on train.
    The shipped model was refitted on train + val, so its own val scores are memorised."""
    path = cache_dir() / f"proxy-val-{len(val)}-{val.ids.sum()}.npy"
    if path.is_file():
        return np.load(path)
    xtr, xva = frozen_features(train, val)
    probs = head_probs(xtr, train.labels, xva)
    np.save(path, probs)
    return probs


def frozen_features(train, val) -> tuple[np.ndarray, np.ndarray]:
    """The shipped model's frozen Lite0 368 x 250 features, standardised with train's."""
    from postergenre.train.features import FeatureSpec, extract_features

    spec = FeatureSpec(**PROXY_SPEC)
    xtr, xva = (extract_features([str(p) for p in s.paths], spec) for s in (train, val))
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    return (xtr - mean) / std, (xva - mean) / std


def head_probs(xtr, ytr, xva, text_tr=None, text_va=None, joint: str | None = None,
               hidden: int | None = 256) -> np.ndarray:
    """The proxy's head fitted on (xtr, ytr), val probabilities. With text logits (train: out
    of fold) `joint` trains it with the title: "input" (the standardised title logits beside
    the poster features after the input dropout), "output" (per-genre weights w, fused logit =
    head + w * (title logit - prior), learnt with the head, lr 1e-2). hidden None: linear."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    g = ytr.shape[1]
    d = xtr.shape[1] + (g if joint == "input" else 0)
    layers = ([nn.Linear(d, hidden), nn.GELU(), nn.Dropout(0.6), nn.Linear(hidden, g)] if hidden
              else [nn.Linear(d, g)])
    head, drop = nn.Sequential(*layers), nn.Dropout(0.6)
    w = nn.Parameter(torch.ones(g))
    groups = [{"params": head.parameters()}] + ([{"params": [w], "lr": 1e-2}]
                                                 if joint == "output" else [])
    opt = torch.optim.AdamW(groups, lr=3e-4, weight_decay=0.1)
    if text_tr is not None:
        freq = np.clip(ytr.mean(0), 1e-4, 1 - 1e-4)
        text_tr, text_va = (t - np.log(freq / (1 - freq)) for t in (text_tr, text_va))
        if joint == "input":
            mean, std = text_tr.mean(0), text_tr.std(0) + 1e-6
            text_tr, text_va = ((t - mean) / std for t in (text_tr, text_va))
    as_t = lambda a: torch.from_numpy(np.asarray(a, np.float32))  # noqa: E731

    def forward(x, t):
        x = drop(x)
        if joint == "input":
            x = torch.cat([x, t], 1)
        z = head(x)
        return z + w * t if joint == "output" else z

    x, y = as_t(xtr), as_t(ytr)
    t = as_t(text_tr) if text_tr is not None else x[:, :0]
    gen = torch.Generator().manual_seed(0)
    for _ in range(25):
        head.train()
        drop.train()
        for idx in torch.randperm(len(x), generator=gen).split(256):
            opt.zero_grad()
            loss = nn.functional.binary_cross_entropy_with_logits(forward(x[idx], t[idx]), y[idx])
            loss.backward()
            opt.step()
    head.eval()
    drop.eval()
    with torch.inference_mode():
        tva = as_t(text_va) if text_va is not None else x[:len(xva), :0]
        return torch.sigmoid(forward(as_t(xva), tva)).numpy()


def text_oof(train, folds: int = 5) -> np.ndarray:
    """Train-split title logits, each fold scored by a title model fitted on the other folds
    (cached): what the title model says of titles it did not see, as on val."""
    path = cache_dir() / f"text-oof-train-{len(train)}-{train.ids.sum()}-{folds}.npy"
    if path.is_file():
        return np.load(path)
    order = np.random.default_rng(0).permutation(len(train))
    out = np.zeros(train.labels.shape, np.float32)
    for k in range(folds):
        held, fit = order[k::folds], np.setdiff1d(order, order[k::folds])
        model = TitleModel(train.genres, **BASE).fit([train.titles[i] for i in fit],
                                                     train.labels[fit])
        out[held] = model.decision_function([train.titles[i] for i in held])
    np.save(path, out)
    return out


def section_joint(train, val, px, text_val, log: dict) -> None:
    print("\n### Joint training: the head fitted on train with poster features + title logits "
          "(val; deltas against the late fusion)\n")
    print(header("model"))
    y, g = val.labels, val.genres
    print(row("prior (train genre frequencies)", val_scores(y, prior_scores(train.labels, len(y)),
                                                            g)))
    xtr, xva = frozen_features(train, val)
    oof = text_oof(train)
    late = val_scores(y, cross_fit_fusion(px, text_val, y, train.labels, g, "per-genre"), g)
    rows = [
        ("poster proxy alone (MLP head)", px, None),
        ("late fusion: proxy + title + year, per-genre weights (out of fold on val)", None, late),
        ("joint MLP head, title logits beside the poster features (input)",
         head_probs(xtr, train.labels, xva, oof, text_val, "input"), None),
        ("joint MLP head + per-genre title weight learnt with it (output)",
         head_probs(xtr, train.labels, xva, oof, text_val, "output"), None),
        ("linear head, poster features alone", head_probs(xtr, train.labels, xva, hidden=None),
         None),
        ("joint linear head, title logits beside the poster features",
         head_probs(xtr, train.labels, xva, oof, text_val, "input", hidden=None), None),
    ]
    for name, s, r in rows:
        r = r or val_scores(y, s, g)
        print(row(name, r, late), flush=True)
        log["joint"].append({"name": name, **{c: r[c] for c in COLUMNS}})


def row(name: str, r: dict, base: dict | None = None) -> str:
    cells = []
    for c in COLUMNS:
        v = r[c]
        d = f" ({v - base[c]:+.3f})" if base is not None else ""
        cells.append(f"{v:.3f}{d}")
    return f"| {name} | " + " | ".join(cells) + " |"


def header(first: str = "variant") -> str:
    names = ("top-3 hit", "macro AP", "micro AP", "macro ROC-AUC", "macro F1 (val thresholds)")
    return f"| {first} | " + " | ".join(names) + " |\n|" + " --- |" * (len(COLUMNS) + 1)


def val_scores(y, s, genres, thresholds=None):
    """On val, thresholds tuned on the same val scores (the same for every row)."""
    return evaluate_scores(y, s, genres, thresholds=tune_thresholds(y, s)
                           if thresholds is None else thresholds)


def section_variants(train, val, log: dict) -> None:
    print("\n### Text-model variants (fitted on train, val split; deltas against the first row)\n")
    print(header())
    prior = prior_scores(train.labels, len(val))
    print(row("prior (train genre frequencies)", val_scores(val.labels, prior, val.genres)))
    base = None
    for name, change in VARIANTS:
        t = time.perf_counter()
        model = TitleModel(train.genres, **{**BASE, **change}).fit(train.titles, train.labels)
        fit_s = time.perf_counter() - t
        r = val_scores(val.labels, model.predict_proba(val.titles), val.genres)
        print(row(f"{name} (fit {fit_s:.0f} s)", r, base), flush=True)
        log["variants"].append({"name": name, "settings": change, "fit_s": fit_s,
                                **{c: r[c] for c in COLUMNS}})
        base = base or r


def section_forms(train, val, pv, px, text_val, log: dict) -> None:
    print("\n### Fusion forms (val, out of fold: 5-fold cross-fitting within val)\n")
    print(header("fusion"))
    print(row("the shipped model on val (memorised: it was refitted on train + val)",
              val_scores(val.labels, pv, val.genres)))
    print(row("poster proxy: the shipped head's recipe on its frozen features, train only",
              val_scores(val.labels, px, val.genres)))
    for form in ("global", "per-genre", "stack"):
        fused = cross_fit_fusion(pv, text_val, val.labels, train.labels, val.genres, form)
        r = val_scores(val.labels, fused, val.genres)
        print(row(f"{form}, fitted on the shipped model's memorised val scores", r), flush=True)
    base = None
    for form in ("global", "per-genre", "stack"):
        fused = cross_fit_fusion(px, text_val, val.labels, train.labels, val.genres, form)
        r = val_scores(val.labels, fused, val.genres)
        print(row(f"proxy + title + year, {form} (deltas against global)", r, base), flush=True)
        log["forms"].append({"form": form, **{c: r[c] for c in COLUMNS}})
        base = base or r


def section_test(dataset, train, val, test, pv, px, pt, run, form, log: dict) -> None:
    print("\n### Test split, beside the prior (bootstrap 95% intervals, 1,000 resamples)\n")
    genres = train.genres
    text_only = TitleModel(genres, **{**BASE, "year": "none"}).fit(train.titles, train.labels)
    text = TitleModel(genres, **BASE).fit(train.titles, train.labels)
    t = time.perf_counter()
    both = train.titles + val.titles
    text_tv = TitleModel(genres, **BASE).fit(both, np.concatenate([train.labels, val.labels]))
    refit_s = time.perf_counter() - t
    # weights fitted on val with the proxy poster model (which never saw val), then applied to
    # the shipped poster model; thresholds tuned on val for the proxy's fused scores
    fusion = fit_fusion(px, text.decision_function(val.titles), val.labels, train.labels, genres,
                        form)
    fused_val = fusion(px, text.decision_function(val.titles))
    rows = {
        "title only (no year; fitted on train)": (text_only.predict_proba(test.titles),
                                                  text_only.predict_proba(val.titles)),
        "title + year (fitted on train)": (text.predict_proba(test.titles),
                                           text.predict_proba(val.titles)),
        f"poster only (the shipped model, {poster_precision(run)})": (pt, pv),
        "poster only, thresholds tuned on the proxy's val scores": (pt, px),
        f"poster + title + year, {form} fusion (text fitted on train)":
            (fusion(pt, text.decision_function(test.titles)), fused_val),
        f"**poster + title + year, {form} fusion, text refitted on train + val** (to ship)":
            (fusion(pt, text_tv.decision_function(test.titles)), fused_val),
    }
    print(header("model").replace(" |\n|", " | top-3 hit 95% | macro AP 95% | macro ROC-AUC 95% |"
                                   "\n|", 1) + " --- | --- | --- |")
    columns = None
    first = True
    for name, (s_test, s_val) in rows.items():
        res = compare_with_prior(test.labels, s_test, genres, train.labels,
                                 thresholds=tune_thresholds(val.labels, s_val))
        m = res["model"]
        columns = np.array([genres.index(g) for g in m["macro_genres"]])
        auc_ci = bootstrap_ci(test.labels, [s_test],
                              lambda a, b, cols=columns: float(np.nanmean(roc_auc(a, b)[cols])))[0]
        if first:
            p = res["prior"]
            p_auc = "0.500"
            print(row("prior (train genre frequencies)", p)
                  + f" [{p['ci']['top3_hit'][0]:.3f}, {p['ci']['top3_hit'][1]:.3f}]"
                  f" | [{p['ci']['macro_ap'][0]:.3f}, {p['ci']['macro_ap'][1]:.3f}] | {p_auc} |")
            log["test"].append({"name": "prior", **{c: p[c] for c in COLUMNS}, "ci": p["ci"]})
            first = False
        ci = m["ci"]
        print(row(name, m) + f" [{ci['top3_hit'][0]:.3f}, {ci['top3_hit'][1]:.3f}]"
              f" | [{ci['macro_ap'][0]:.3f}, {ci['macro_ap'][1]:.3f}]"
              f" | [{auc_ci[0]:.3f}, {auc_ci[1]:.3f}] |", flush=True)
        log["test"].append({"name": name, **{c: m[c] for c in COLUMNS},
                            "ci": {**ci, "macro_roc_auc": list(auc_ci)}})
    log["fusion"] = fusion.to_json()
    log["refit_s"] = refit_s
    t = time.perf_counter()
    text_tv.decision_function(test.titles)
    per_title_ms = 1000 * (time.perf_counter() - t) / len(test)
    log["text_ms_per_title_batched"] = per_title_ms
    print(f"\nfusion weights ({form}): " + ", ".join(
        f"{g} {w:.2f}" for g, w in zip(genres, fusion.text_weight, strict=True)))
    print(f"text model: refit on train + val {refit_s:.0f} s; scoring {per_title_ms:.3f} ms per "
          f"title (batch of {len(test)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dataset", nargs="?", default="datasets/shared")
    ap.add_argument("--sections", default="variants,forms,joint,test")
    ap.add_argument("--run", default=None, help="poster run (default: the shipped model)")
    ap.add_argument("--form", default="per-genre", help="fusion form of the test rows")
    ap.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = ap.parse_args()
    sections = args.sections.split(",")
    train, val, test = (load_split(args.dataset, s) for s in ("train", "val", "test"))
    log: dict = {"variants": [], "forms": [], "joint": [], "test": []}
    if "variants" in sections:
        section_variants(train, val, log)
    pv = poster_probs(val, args.run) if {"forms", "test"} & set(sections) else None
    px = proxy_probs(train, val) if {"forms", "joint", "test"} & set(sections) else None
    if "forms" in sections:
        text = TitleModel(train.genres, **BASE).fit(train.titles, train.labels)
        section_forms(train, val, pv, px, text.decision_function(val.titles), log)
    if "joint" in sections:
        text = TitleModel(train.genres, **BASE).fit(train.titles, train.labels)
        section_joint(train, val, px, text.decision_function(val.titles), log)
    if "test" in sections:
        section_test(args.dataset, train, val, test, pv, px, poster_probs(test, args.run),
                     args.run, args.form, log)
    if args.json:
        Path(args.json).write_text(json.dumps(log, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
