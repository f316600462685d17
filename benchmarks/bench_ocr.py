"""The text printed on the poster (OCR) as a third input beside the poster and its title: the
"OCR" subsection of docs/benchmarks.md's Fusion section.

    python benchmarks/bench_ocr.py [DATASET] [--sections cost,ocr,quality]
                                   [--n-train 1500] [--n-val 1000] [--workers 2]

cost: ms per poster of rapidocr-onnxruntime (its detection and recognition models ship inside
its wheel: nothing is downloaded) on 50 val posters: one process with one thread, one process
with two threads, and two single-threaded processes side by side (throughput); the shipped
poster model on the same posters in the same run, for scale.
ocr: the OCR text of a seeded random subset of train and of val posters, cached per imdbId in
POSTERGENRE_CACHE (or a temp folder)/bench-ocr/ocr-*.json, written every 25 posters, so a
killed run resumes where it stopped.
quality: on the val subset, every row beside the prior on that subset: OCR text alone, title +
year with and without the OCR text, poster + title with and without it (fusions fitted out of
fold: 5-fold cross-fitting within the val subset). The poster model is bench_fusion.py's proxy
(the shipped head's recipe on frozen features, fitted on train; the shipped model saw val).

Skips with a message (exit 0) when rapidocr_onnxruntime is not importable.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from postergenre.data.dataset import load_split
from postergenre.data.titles import parse_title
from postergenre.evaluate.metrics import macro_ap, prior_scores
from postergenre.models.text import TitleModel
from postergenre.train.text import fit_fusion

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fusion import BASE, cache_dir, header, proxy_probs, row, val_scores  # noqa: E402

# posters are 182 x 268: the detector's default (shortest side up to 736) costs 2.5x for the
# same words; posters are upright, so no angle classifier
OCR = {"det_limit_side_len": 368, "use_cls": False}
SAVE_EVERY = 25
_ENGINE = None


def engine(threads: int, settings: dict | None = None):
    from rapidocr_onnxruntime import RapidOCR

    if threads == 1:
        import cv2

        cv2.setNumThreads(1)
    return RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1,
                    **(OCR if settings is None else settings))


def _init_worker() -> None:
    global _ENGINE
    _ENGINE = engine(1)


def read_text(path: str, ocr=None) -> str:
    """The recognised strings of one poster, top to bottom, joined by spaces ("" for none)."""
    result, _ = (ocr or _ENGINE)(path)
    return " ".join(r[1] for r in result) if result else ""


def section_cost(val, n: int = 50) -> dict:
    from multiprocessing import Pool

    paths = [str(val.paths[i]) for i in np.random.default_rng(1).choice(len(val), n + 2, False)]
    out = {}
    for name, ocr in (("the package's defaults (shortest side to 736, angle classifier), "
                       "1 process, 1 thread", engine(1, {})),
                      ("1 process, 1 thread", engine(1)), ("1 process, 2 threads", engine(2))):
        read_text(paths[-1], ocr)  # warm up
        t = time.perf_counter()
        words = [len(read_text(p, ocr).split()) for p in paths[:n]]
        out[name] = 1000 * (time.perf_counter() - t) / n
    from postergenre.predict import Predictor, predict_stream

    predictor = Predictor.load()  # the shipped poster model (int8), for scale, same posters
    list(predict_stream(predictor, paths[-2:]))
    t = time.perf_counter()
    list(predict_stream(predictor, paths[:n]))
    out["the shipped poster model (int8, decode + resize + model, a stream of 50)"] = (
        1000 * (time.perf_counter() - t) / n)
    with Pool(2, initializer=_init_worker) as pool:
        pool.map(read_text, paths[-2:])  # warm up each worker
        t = time.perf_counter()
        pool.map(read_text, paths[:n], chunksize=1)
        out["2 processes x 1 thread (throughput)"] = 1000 * (time.perf_counter() - t) / n
    print(f"\n### OCR cost (rapidocr-onnxruntime, {OCR}; {n} val posters)\n")
    for k, ms in out.items():
        print(f"- {k}: {ms:.0f} ms/poster ({1000 / ms:.1f} posters/s)")
    print(f"- words read per poster: mean {np.mean(words):.1f}, none on "
          f"{np.mean(np.array(words) == 0):.0%} of the posters")
    print(f"- load average during the run: {os.getloadavg()[0]:.1f}")
    return {"ms_per_poster": out, "words_mean": float(np.mean(words))}


def subset(split, n: int, seed: int) -> np.ndarray:
    """n posters of a split at random: the first n of a seeded permutation, in its order (the
    splits list older films first), so a larger n keeps the smaller one's posters and a stopped
    OCR run leaves a random sample."""
    return np.random.default_rng(seed).permutation(len(split))[:n]


def ocr_cache(split) -> Path:
    tag = "-".join(f"{k}{v}" for k, v in OCR.items())
    return cache_dir().parent / "bench-ocr" / f"ocr-{split.name}-{tag}.json"


def load_cache(path: Path) -> dict[str, str]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def section_ocr(split, idx: np.ndarray, workers: int) -> dict[str, str]:
    """OCR the posters `idx` of a split (resuming from the cache); imdbId -> text."""
    from multiprocessing import Pool

    path = ocr_cache(split)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = load_cache(path)
    todo = [i for i in idx if str(split.ids[i]) not in done]
    print(f"{split.name}: {len(idx) - len(todo)} of {len(idx)} cached, {len(todo)} to read "
          f"({path.name})", flush=True)
    t = time.perf_counter()

    def save() -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(done, ensure_ascii=False), encoding="utf-8")
        tmp.replace(path)

    with Pool(workers, initializer=_init_worker) as pool:
        paths = [str(split.paths[i]) for i in todo]
        for k, text in enumerate(pool.imap(read_text, paths, chunksize=2), 1):
            done[str(split.ids[todo[k - 1]])] = text
            if k % SAVE_EVERY == 0 or k == len(todo):
                save()
                rate = k / (time.perf_counter() - t)
                print(f"  {k}/{len(todo)} ({rate:.2f} posters/s)", flush=True)
    return done


def with_ocr(titles: list[str], texts: list[str]) -> list[str]:
    """The title with the poster's text after its name, the year kept last: "Name OCR (YYYY)"."""
    out = []
    for title, text in zip(titles, texts, strict=True):
        name, year = parse_title(title)
        out.append(f"{name} {text}" + (f" ({year})" if year else ""))
    return out


def cross_fit(n: int, fuse, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold fused probabilities: fuse(fit_rows, held_rows) -> held probabilities (the
    same folds as train.text.cross_fit_fusion)."""
    order = np.random.default_rng(seed).permutation(n)
    out = None
    for k in range(folds):
        held = order[k::folds]
        part = fuse(np.setdiff1d(order, held), held)
        out = np.zeros((n, part.shape[1]), np.float32) if out is None else out
        out[held] = part
    return out


def sigmoid(z: np.ndarray) -> np.ndarray:
    return (0.5 * (1 + np.tanh(0.5 * np.asarray(z, np.float64)))).astype(np.float32)


def paired_delta(y, a, b, genres, n_boot: int = 1000, seed: int = 0):
    """Macro AP of b minus a, with a 95% bootstrap interval over posters (paired)."""
    cols = np.flatnonzero(y.sum(0) >= 10)
    rng = np.random.default_rng(seed)
    d = []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        d.append(macro_ap(y[i], b[i], cols) - macro_ap(y[i], a[i], cols))
    return macro_ap(y, b, cols) - macro_ap(y, a, cols), np.percentile(d, [2.5, 97.5])


def section_quality(train, val, itr, iva, log: dict) -> None:
    tr_text, va_text = load_cache(ocr_cache(train)), load_cache(ocr_cache(val))
    itr = np.array([i for i in itr if str(train.ids[i]) in tr_text])
    iva = np.array([i for i in iva if str(val.ids[i]) in va_text])
    g = train.genres
    ytr, y = train.labels[itr], val.labels[iva]
    ttr = [train.titles[i] for i in itr]
    tva = [val.titles[i] for i in iva]
    otr = [tr_text[str(train.ids[i])] for i in itr]
    ova = [va_text[str(val.ids[i])] for i in iva]
    empty = np.mean([not t.strip() for t in ova])
    print(f"\n### Quality on the val subset ({len(iva)} val posters; text models on {len(itr)} "
          f"train posters unless said; {empty:.0%} of the val posters with no text read)\n")

    def fit(titles, labels, **change):
        return TitleModel(g, **{**BASE, **change}).fit(titles, labels)

    t_full = fit(train.titles, train.labels).decision_function(tva)
    t_small = fit(ttr, ytr).decision_function(tva)
    o_small = fit(otr, ytr, year="none").decision_function(ova)
    to_small = fit(with_ocr(ttr, otr), ytr).decision_function(with_ocr(tva, ova))
    px = proxy_probs(train, val)[iva]

    def fused(first, second, prior_labels):
        """first (probabilities) + second (logits), per-genre weights, out of fold."""
        return cross_fit(len(y), lambda f, h: fit_fusion(first[f], second[f], y[f], prior_labels,
                                                         g)(first[h], second[h]))

    def fused3(p, t, t_labels, o, o_labels):
        """poster + title, then + OCR, both per-genre, both fitted on the same folds."""
        def fuse(f, h):
            f1 = fit_fusion(p[f], t[f], y[f], t_labels, g)
            z = f1(p, t)
            return fit_fusion(z[f], o[f], y[f], o_labels, g)(z[h], o[h])
        return cross_fit(len(y), fuse)

    rows = [
        ("prior (train genre frequencies)", prior_scores(train.labels, len(y)), None),
        ("title + year, fitted on all train (the shipped settings)", sigmoid(t_full), None),
        ("title + year, fitted on the train subset", sigmoid(t_small), None),
        ("OCR text alone (TF-IDF, no year), train subset", sigmoid(o_small), "small"),
        ("title + year + OCR text appended, train subset", sigmoid(to_small), "small"),
        ("title + year, + OCR model fused (per-genre), train subset",
         fused(sigmoid(t_small), o_small, ytr), "small"),
        ("title + year (all train), + OCR model (train subset) fused",
         fused(sigmoid(t_full), o_small, ytr), "full"),
        ("poster proxy (train only)", px, None),
        ("poster + title + year (all train), per-genre", fused(px, t_full, train.labels), None),
        ("poster + title + year (all train), + OCR model (train subset), per-genre",
         fused3(px, t_full, train.labels, o_small, ytr), "poster"),
        ("poster + title + year (train subset), per-genre", fused(px, t_small, ytr), None),
        ("poster + (title + year + OCR appended, train subset), per-genre",
         fused(px, to_small, ytr), "poster-small"),
        ("poster + OCR model (train subset), per-genre, no title", fused(px, o_small, ytr),
         "proxy"),
    ]
    base_of = {"small": 2, "full": 1, "poster": 8, "poster-small": 10, "proxy": 7}
    print(header("input (deltas: against the row named in brackets)"))
    results = []
    for name, s, base in rows:
        r = val_scores(y, s, g)
        results.append(r)
        ref = results[base_of[base]] if base else None
        label = f"{name} [vs {rows[base_of[base]][0]}]" if base else name
        print(row(label, r, ref), flush=True)
        log["quality"].append({"name": name, **{c: r[c] for c in ("top3_hit", "macro_ap",
                                                                   "micro_ap", "macro_roc_auc",
                                                                   "macro_f1")}})
    d, ci = paired_delta(y, rows[8][1], rows[9][1], g)
    print(f"\nposter + title + OCR minus poster + title, macro AP: {d:+.4f} (paired bootstrap "
          f"95% [{ci[0]:+.4f}, {ci[1]:+.4f}])")
    log["ocr_delta_macro_ap"] = {"delta": d, "ci": list(ci)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dataset", nargs="?", default="datasets/shared")
    ap.add_argument("--sections", default="cost,ocr,quality")
    ap.add_argument("--n-train", type=int, default=1500)
    ap.add_argument("--n-val", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = ap.parse_args()
    if importlib.util.find_spec("rapidocr_onnxruntime") is None:
        print("rapidocr_onnxruntime is not installed (pip install rapidocr-onnxruntime): skipped")
        return
    sections = args.sections.split(",")
    train, val = (load_split(args.dataset, s) for s in ("train", "val"))
    itr, iva = subset(train, args.n_train, args.seed), subset(val, args.n_val, args.seed + 1)
    log: dict = {"ocr_settings": OCR, "quality": []}
    if "cost" in sections:
        log["cost"] = section_cost(val)
    if "ocr" in sections:
        section_ocr(val, iva, args.workers)
        section_ocr(train, itr, args.workers)
    if "quality" in sections:
        section_quality(train, val, itr, iva, log)
    if args.json:
        Path(args.json).write_text(json.dumps(log, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
