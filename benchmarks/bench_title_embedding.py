"""Pretrained word embeddings of the title as a further text-model block: the "Title
embeddings" table of docs/benchmarks.md.

    python benchmarks/bench_title_embedding.py [DATASET] [--weights 0.5,1]

The embedding is WordLlama's `l2_supercat_256` (256-dimensional token embeddings distilled
from Llama 2's, MIT), which ships inside the `wordllama` wheel with its tokenizer, so it runs
offline: `pip install wordllama` (a benchmark extra, never a runtime dependency). A title's
block is the mean of its tokens' embeddings (the title without its year), L2-normalised and
scaled by a weight, appended to the shipped title model's features (hashed word and character
n-grams + decade); the same multi-label logistic layer is fitted on the train split's titles.
Rows: title only on val, the late fusion with the poster proxy on val (out of fold, as
bench_fusion's "forms"), and a cross-genre stack (each genre's logistic regression over all
the poster and title logits, out of fold); deltas against the shipped title model. Without
wordllama installed the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from functools import cache

import numpy as np
import scipy.sparse as sp
from bench_fusion import BASE, header, proxy_probs, row, val_scores

from postergenre.data.dataset import load_split
from postergenre.data.titles import parse_title
from postergenre.models.text import TitleModel
from postergenre.train.text import cross_fit_fusion


@cache
def wordllama_tables() -> tuple[np.ndarray, object]:
    """(32000, 256) float32 embeddings and the tokenizer, read from the installed wheel's
    files (WordLlama.load() would look for the tokenizer on a hub first)."""
    import wordllama
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    root = os.path.dirname(wordllama.__file__)
    table = load_file(f"{root}/weights/l2_supercat_256.safetensors")["embedding.weight"]
    return table.astype(np.float32), Tokenizer.from_file(
        f"{root}/tokenizers/l2_supercat_tokenizer_config.json")


def embed(titles) -> np.ndarray:
    """(n, 256) mean token embedding of each title without its year, unit L2 norm."""
    table, tokenizer = wordllama_tables()
    names = [parse_title(t or "")[0] for t in titles]
    out = np.zeros((len(names), table.shape[1]), np.float32)
    for i, enc in enumerate(tokenizer.encode_batch(names, add_special_tokens=False)):
        if enc.ids:
            out[i] = table[enc.ids].mean(axis=0)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norm > 0, norm, 1.0)


def cross_genre_stack(px, z, y, C: float = 0.03, folds: int = 5) -> np.ndarray:
    """Out-of-fold val probabilities of a per-genre logistic regression over all the poster
    logits and all the title logits (standardised): fusion across genres."""
    from sklearn.linear_model import LogisticRegression

    from postergenre.models.text import logit

    x = np.hstack([logit(px), z])
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    order = np.random.default_rng(0).permutation(len(y))
    out = np.array(px, np.float32)
    for k in range(folds):
        held = order[k::folds]
        fit = np.setdiff1d(order, held)
        for j in np.flatnonzero(y[fit].sum(0) >= 3):
            lr = LogisticRegression(C=C, max_iter=500).fit(x[fit], y[fit, j])
            out[held, j] = lr.predict_proba(x[held])[:, 1]
    return out


class EmbeddedTitleModel(TitleModel):
    """The shipped title model's features + the weighted title embedding."""

    def __init__(self, genres, weight: float, **settings) -> None:
        super().__init__(genres, **settings)
        self.weight = weight

    def _features(self, titles):
        block = sp.csr_matrix(embed(titles) * self.weight)
        return sp.hstack([super()._features(titles), block], format="csr", dtype=np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dataset", nargs="?", default="datasets/shared")
    ap.add_argument("--weights", default="0.5,1", help="embedding block weights to try")
    args = ap.parse_args()
    if importlib.util.find_spec("wordllama") is None:
        print("wordllama is not installed (pip install wordllama): skipping")
        return
    train, val = (load_split(args.dataset, s) for s in ("train", "val"))
    y, g = val.labels, val.genres
    px = proxy_probs(train, val)
    print("\n### Title embeddings (val; title models fitted on train; fusions out of fold)\n")
    print(header("text model"))
    print(row("poster proxy alone", val_scores(y, px, g)))
    base: dict[str, dict] = {}
    models = [("shipped title model (title + decade)", None)] + [
        (f"+ WordLlama embedding, weight {w}", float(w)) for w in args.weights.split(",")]
    for name, weight in models:
        t = time.perf_counter()
        model = (TitleModel(g, **BASE) if weight is None
                 else EmbeddedTitleModel(g, weight, **BASE)).fit(train.titles, train.labels)
        fit_s = time.perf_counter() - t
        z = model.decision_function(val.titles)
        results = {"title only": val_scores(y, 1 / (1 + np.exp(-z)), g)}
        for form in ("global", "per-genre"):
            fused = cross_fit_fusion(px, z, y, train.labels, g, form)
            results[f"proxy + it, {form} fusion"] = val_scores(y, fused, g)
        results["proxy + it, cross-genre stack"] = val_scores(y, cross_genre_stack(px, z, y), g)
        for kind, r in results.items():
            print(row(f"{name}: {kind} (fit {fit_s:.0f} s)", r, base.get(kind)), flush=True)
            base.setdefault(kind, r)


if __name__ == "__main__":
    main()
