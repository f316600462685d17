"""Are the heat maps faithful, and how fast are they? (docs/benchmarks.md, section Explain)

    python benchmarks/bench_explain.py [DATASET] [--run RUN ...] [--n 300] [--sections ...]

Faithfulness (a deletion test): for each of N test posters (a fixed random sample), the model's
top genre is explained; then 20% of the poster's pixels are blanked to the poster's mean colour,
chosen five ways: the hottest 20% of the heat map, the coldest 20%, a random 20% in blobs (the
top 20% of upsampled random noise, as blob-shaped as a heat map), a random 20% of single
pixels, and 20% of single pixels drawn with probability in proportion to the heat (as
scattered as the random pixels, but where the map is hot). The drop of the top genre's
probability (PyTorch fp32) is averaged over the posters, with bootstrap 95% intervals (posters
resampled), and so are the paired differences of each map-guided way and its random
counterpart. A faithful map makes the guided drops the larger.

Latency: one explanation of the shipped model (3 genres; decode, Grad-CAM and the three
overlay PNGs the page gets) and one `POST /explain` through the app, p50 / p90 over posters.
DATASET defaults to datasets/shared; runs default to the shipped model.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from postergenre.data.dataset import load_split
from postergenre.data.images import load_poster_array
from postergenre.errors import PosterGenreError
from postergenre.explain import Explainer

FRACTION = 0.2
WAYS = ("hottest", "random blobs", "coldest", "heat-weighted pixels", "random pixels")
PAIRS = (("hottest", "random blobs"), ("hottest", "coldest"),
         ("heat-weighted pixels", "random pixels"))
BATCH = 8


def sample_paths(dataset: Path, n: int, seed: int = 0) -> list[str]:
    paths = [str(p) for p in load_split(dataset, "test").paths]
    order = np.random.default_rng(seed).permutation(len(paths))
    return [paths[i] for i in order[:n]]


def masks(heat: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """(H, W) heat -> one boolean mask per way, each exactly FRACTION of the pixels."""
    h, w = heat.shape
    k = int(round(FRACTION * h * w))

    def top_of(values: np.ndarray) -> np.ndarray:
        order = np.lexsort((rng.random(h * w), values.ravel()))  # ties broken at random
        mask = np.zeros(h * w, bool)
        mask[order[-k:]] = True
        return mask.reshape(h, w)

    noise = torch.from_numpy(rng.random((1, 1, max(1, h // 24), max(1, w // 24))))
    blobs = F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    ways = {"hottest": top_of(heat), "coldest": top_of(-heat),
            "random blobs": top_of(blobs.numpy()), "random pixels": top_of(rng.random((h, w)))}
    # weighted sampling without replacement (Efraimidis-Spirakis keys u^(1/w))
    ways["heat-weighted pixels"] = top_of(rng.random((h, w)) ** (1 / (heat + 1e-6)))
    return ways


def blank(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[mask] = image.reshape(-1, 3).mean(0).round().astype(np.uint8)
    return out


def bootstrap(values: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def faithfulness(run: str | None, paths: list[str]) -> dict[str, np.ndarray]:
    explainer = Explainer.load(run)
    rng = np.random.default_rng(0)
    drops: dict[str, list[float]] = {w: [] for w in WAYS}
    start, done = time.perf_counter(), 0
    for i in range(0, len(paths), BATCH):
        images = []
        for p in paths[i : i + BATCH]:
            try:
                images.append(load_poster_array(p, explainer.input_size))
            except PosterGenreError:
                continue
        batch = np.stack(images)
        probs, targets, maps = explainer.explain_batch(batch, 1)
        variants, owners = [], []
        for j, image in enumerate(batch):
            for way, mask in masks(maps[j, 0], rng).items():
                variants.append(blank(image, mask))
                owners.append((j, way))
        blanked = explainer.predict(np.stack(variants))
        for (j, way), p in zip(owners, blanked, strict=True):
            drops[way].append(float(probs[j, targets[j, 0]] - p[targets[j, 0]]))
        done += len(batch)
        if done % 40 < BATCH:
            print(f"  {done} posters, {time.perf_counter() - start:.0f} s", flush=True)
    seconds = time.perf_counter() - start
    print(f"  {done} posters in {seconds:.0f} s")
    return {w: np.array(v) for w, v in drops.items()}


def report_faithfulness(name: str, drops: dict[str, np.ndarray]) -> None:
    print(f"\n{name}: drop of the top genre's probability after blanking {FRACTION:.0%} "
          f"(n = {len(drops['hottest'])})\n")
    print("| pixels blanked | mean drop | 95% interval |")
    print("| --- | --- | --- |")
    for way in WAYS:
        lo, hi = bootstrap(drops[way])
        print(f"| {way} | {drops[way].mean():.4f} | [{lo:.4f}, {hi:.4f}] |")
    for guided, other in PAIRS:
        diff = drops[guided] - drops[other]
        lo, hi = bootstrap(diff)
        wins = (diff > 0).mean()
        print(f"| {guided} minus {other} (paired) | {diff.mean():.4f} | [{lo:.4f}, {hi:.4f}] "
              f"(larger on {wins:.0%} of posters) |")


def latency(paths: list[str], n: int) -> None:
    from fastapi.testclient import TestClient

    from postergenre.predict import Predictor
    from postergenre.serve import create_app

    explainer = Explainer.load()
    explainer.explain(paths[0]).heat_png(0)  # warm-up (and matplotlib imported)
    times = []
    for p in paths[:n]:
        t = time.perf_counter()
        e = explainer.explain(p)
        for i in range(len(e.genres)):
            e.heat_png(i)
        times.append(time.perf_counter() - t)
    print(f"\none explanation of the shipped model, 3 genres (decode + Grad-CAM + 3 PNGs), "
          f"{n} posters, {torch.get_num_threads()} torch threads on {os.cpu_count()} cores: "
          f"p50 {1000 * np.median(times):.0f} ms, p90 {1000 * np.quantile(times, 0.9):.0f} ms")
    model_times = []
    for p in paths[:n]:
        image = load_poster_array(p, explainer.input_size)
        t = time.perf_counter()
        explainer.explain_array(image)
        model_times.append(time.perf_counter() - t)
    print(f"Grad-CAM alone (one forward pass, 3 backward passes): p50 "
          f"{1000 * np.median(model_times):.0f} ms, "
          f"p90 {1000 * np.quantile(model_times, 0.9):.0f} ms")
    try:
        from captum.attr import LayerGradCam
    except ImportError:
        LayerGradCam = None
    if LayerGradCam is not None:
        cam, captum_times = LayerGradCam(explainer.model, explainer.layer), []
        for p in paths[:n]:
            image = load_poster_array(p, explainer.input_size)
            t = time.perf_counter()
            x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255
            top = explainer.predict(image[None])[0].argsort()[::-1][:3].tolist()
            cam.attribute(x.repeat(3, 1, 1, 1), target=top, relu_attributions=True)
            captum_times.append(time.perf_counter() - t)
        print(f"the same with captum's LayerGradCam (a batch of 3 copies, + a pass for the "
              f"top 3): p50 {1000 * np.median(captum_times):.0f} ms")
    with TestClient(create_app(Predictor.load(), explainer=explainer)) as client:
        times = []
        for p in paths[: n + 1]:
            data = Path(p).read_bytes()
            t = time.perf_counter()
            r = client.post("/explain", files={"file": (Path(p).name, data, "image/jpeg")})
            times.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text
        times = times[1:]  # the first request warms the page's model up
    print(f"POST /explain (3 genres), {n} posters, in-process client: p50 "
          f"{1000 * np.median(times):.0f} ms, p90 {1000 * np.quantile(times, 0.9):.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", nargs="?", default="datasets/shared", type=Path)
    parser.add_argument("--run", action="append", default=[],
                        help="run folder to test (repeatable; default: the shipped model)")
    parser.add_argument("--n", type=int, default=300, help="test posters for faithfulness")
    parser.add_argument("--latency-n", type=int, default=30)
    parser.add_argument("--sections", default="faithfulness,latency")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument("--quick", action="store_true", help="a smoke run on a few posters")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not (args.dataset / "test.csv").is_file():  # `make bench` passes the raw data folder
        args.dataset = Path("datasets/shared")
    n, latency_n = (16, 3) if args.quick else (args.n, args.latency_n)
    paths = sample_paths(args.dataset, max(n, latency_n + 1))
    sections = args.sections.split(",")
    if "faithfulness" in sections:
        for run in args.run or [None]:
            name = run or "shipped model"
            print(f"faithfulness: {name}")
            report_faithfulness(name, faithfulness(run, paths[:n]))
    if "latency" in sections:
        latency(paths, latency_n)


if __name__ == "__main__":
    main()
