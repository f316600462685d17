"""Load test of `postergenre serve` on loopback: requests/s and p50/p95 latency per concurrency.

    python benchmarks/bench_serve.py [--model RUN | --url URL] [--posters DIR]
                                     [--concurrency 1 8 32] [--seconds 10] [--backend auto]

Starts `postergenre serve` as its own process on a free 127.0.0.1 port (or uses --url), then,
for each concurrency level, keeps that many clients posting posters to POST /predict for
--seconds (after a short warm-up) and prints one Markdown table row per level. Posters come
from ../shared/data/posters (the first 64), or are synthetic when it is absent. Without
--model the shipped model is served; if there is none yet, a custom-cnn with random weights
(same architecture and cost as a trained one, 28 genres) stands in, and the output says so.
Bounded: 3 levels x (2 s warm-up + 10 s) plus start-up stay under a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

POSTERS = Path("../shared/data/posters")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_posters(folder: Path, n: int = 64) -> list[bytes]:
    files = sorted(folder.glob("*.jpg"))[:n] if folder.is_dir() else []
    if files:
        return [f.read_bytes() for f in files]
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (268, 182, 3), dtype=np.uint8)).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


def stand_in_run(folder: Path) -> Path:
    """A custom-cnn run with random weights and the data set's 28 genres."""
    from postergenre.io import save_weights
    from postergenre.models import create_model
    from postergenre.run import RunConfig, write_config

    genres = ["Action", "Adult", "Adventure", "Animation", "Biography", "Comedy", "Crime",
              "Documentary", "Drama", "Family", "Fantasy", "Film-Noir", "Game-Show", "History",
              "Horror", "Music", "Musical", "Mystery", "News", "Reality-TV", "Romance",
              "Sci-Fi", "Short", "Sport", "Talk-Show", "Thriller", "War", "Western"]
    model = create_model("custom-cnn", len(genres))
    save_weights(model, folder / "weights.safetensors")
    write_config(folder, RunConfig(model="custom-cnn", model_kwargs={}, genres=tuple(genres),
                                   input_size=tuple(model.input_size)))
    return folder


async def load(url: str, posters: list[bytes], concurrency: int, seconds: float,
               warmup: float = 2.0) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def client(worker: int) -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            i = worker
            while (t0 := time.perf_counter()) < stop_at:
                data = posters[i % len(posters)]
                i += concurrency
                r = await c.post("/predict", files={"file": (f"{i}.jpg", data, "image/jpeg")})
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    latencies.append(t1 - t0)
                    errors += r.status_code != 200

    await asyncio.gather(*(client(w) for w in range(concurrency)))
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(ms), "rps": len(ms) / seconds,
            "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "errors": errors}


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited ({proc.returncode}): {proc.stderr.read()}")
        try:
            return httpx.get(url + "/health", timeout=2).json()
        except httpx.HTTPError:
            time.sleep(0.3)
    sys.exit("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="run folder (default: the shipped model)")
    parser.add_argument("--url", default=None, help="an already running server to test")
    parser.add_argument("--posters", type=Path, default=POSTERS)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    posters = load_posters(args.posters)

    with tempfile.TemporaryDirectory() as tmp:
        proc, url, model = None, args.url, args.model
        note = ""
        if url is None:
            from postergenre.run import default_run_dir

            if model is None and not (default_run_dir() / "config.json").is_file():
                model = str(stand_in_run(Path(tmp)))
                note = " (no shipped model yet: custom-cnn with random weights)"
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            command = [sys.executable, "-m", "postergenre", "serve", "--port", str(port),
                       "--backend", args.backend, "--log-level", "warning"]
            command += ["--model", model] if model else []
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True, env={**os.environ, "TERM": "dumb"})
        try:
            health = wait_ready(url, proc) if proc else httpx.get(url + "/health").json()
            print(f"server: {health['model']} on {health['backend']}, input "
                  f"{health['input_size']}{note}; {len(posters)} posters"
                  f"{'' if args.posters.is_dir() else ' (synthetic)'}; {os.cpu_count()} CPUs")
            print("| concurrency | requests | requests/s | p50 ms | p95 ms | errors |")
            print("| --- | --- | --- | --- | --- | --- |")
            for c in args.concurrency:
                r = asyncio.run(load(url, posters, c, args.seconds))
                print(f"| {c} | {r['requests']} | {r['rps']:.1f} | {r['p50']:.0f} | "
                      f"{r['p95']:.0f} | {r['errors']} |", flush=True)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)


if __name__ == "__main__":
    main()
