"""`postergenre batch`: the local engine beside `predict`, over HTTP, its memory, and Ray.

    python benchmarks/bench_batch.py [--data ../shared/data] [--n 5000] [--model RUN]
        [--sections files http memory] [--rows 200000] [--latency 0.05] [--ray]

- files: N real posters (the first N of DATA/posters by name) as a catalogue of paths: the
  local engine's rate beside `predict`'s (`predict.predict_stream`, the same run and backend)
  in the same process, one after the other;
- http: the same posters served by a local HTTP server that waits `--latency` s before every
  response: the local engine's rate, and its ratio to the from-files rate;
- memory: `postergenre batch` as its own process on catalogues of `--rows`/10 and `--rows`
  rows (the N posters repeated): its peak RSS (getrusage of the children), both sizes;
- --ray: the Ray engine on the same catalogue with 1 and 2 scoring actors.

Rates are rows scored per second between the first and the last finished batch (model
loading and start-up are left out, the same way for every engine).
"""

from __future__ import annotations

import argparse
import http.server
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Rate:
    """Rows per second between the first and the last progress event."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last = 0.0
        self.rows = 0
        self.first_rows = 0

    def __call__(self, n: int) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first, self.first_rows = now, n
        self.rows += n
        self.last = now

    @property
    def value(self) -> float:
        if self.first is None or self.last <= self.first:
            return float("nan")
        return (self.rows - self.first_rows) / (self.last - self.first)


def write_catalogue(path: Path, sources: list[str], rows: int | None = None) -> Path:
    """imdbId,Poster with `rows` rows (the sources repeated; ids unique)."""
    rows = rows or len(sources)
    with path.open("w", encoding="utf-8") as f:
        f.write("imdbId,Poster\n")
        for i in range(rows):
            f.write(f"{i},{sources[i % len(sources)]}\n")
    return path


def _serve(folder: Path, latency: float, port: Any) -> None:
    """A threaded HTTP server on 127.0.0.1 serving folder/<name> after `latency` s."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real image servers

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            time.sleep(latency)
            body = (folder / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    port.put(httpd.server_address[1])
    httpd.serve_forever()


def serve_folder(folder: Path, latency: float) -> tuple[str, Callable[[], None]]:
    """The server in a process of its own (its threads do not share the engine's GIL)."""
    context = multiprocessing.get_context("spawn")
    port = context.Queue()
    process = context.Process(target=_serve, args=(folder, latency, port), daemon=True)
    process.start()
    url = f"http://127.0.0.1:{port.get(timeout=60)}"

    def stop() -> None:
        process.terminate()
        process.join()

    return url, stop


def local_rate(catalogue: Path, out: Path, args: argparse.Namespace) -> tuple[float, Any]:
    from postergenre.batch.local import run_local

    rate = Rate()
    summary = run_local(catalogue, out, model=args.model, backend=args.backend,
                        batch_size=args.batch_size, on_progress=rate)
    return rate.value, summary


def section_files(sources: list[str], tmp: Path, args: argparse.Namespace) -> float:
    from postergenre.predict import Predictor, predict_stream

    predictor = Predictor.load(args.model, backend=args.backend, batch_size=args.batch_size)
    rate = Rate()
    done = sum(p.error is None for p in predict_stream(predictor, sources, on_done=rate))
    predict = rate.value
    catalogue = write_catalogue(tmp / "files.csv", sources)
    batch, summary = local_rate(catalogue, tmp / "out-files", args)
    print(f"files: {len(sources)} posters ({done} ok by predict, {summary.failed} failed in "
          f"batch); predict_stream {predict:.1f} posters/s, batch --engine local "
          f"{batch:.1f} posters/s: {batch / predict:.2f}x predict")
    return batch


def section_http(posters: Path, sources: list[str], tmp: Path, args: argparse.Namespace,
                 files_rate: float | None) -> None:
    url, stop = serve_folder(posters, args.latency)
    try:
        urls = [f"{url}/{Path(s).name}" for s in sources]
        catalogue = write_catalogue(tmp / "http.csv", urls)
        rate, summary = local_rate(catalogue, tmp / "out-http", args)
    finally:
        stop()
    ratio = f": {rate / files_rate:.2f}x the from-files rate" if files_rate else ""
    print(f"http: {len(urls)} posters over HTTP, {args.latency * 1000:.0f} ms per response, "
          f"{summary.failed} failed; batch --engine local {rate:.1f} posters/s{ratio}")


def section_memory(sources: list[str], tmp: Path, args: argparse.Namespace) -> None:
    peaks = []
    for rows in (args.rows // 10, args.rows):
        catalogue = write_catalogue(tmp / f"rows-{rows}.csv", sources, rows)
        command = [sys.executable, "-m", "postergenre", "batch", str(catalogue), "--out",
                   str(tmp / f"out-{rows}"), "--backend", args.backend,
                   "--batch-size", str(args.batch_size)]
        if args.model:
            command += ["--model", args.model]
        start = time.perf_counter()
        proc = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        seconds = time.perf_counter() - start
        if proc.returncode not in (0, 1):
            sys.exit(f"batch failed (exit {proc.returncode}): {proc.stderr[-500:]}")
        # the children's peak so far: this run's, as the smaller catalogue ran first
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        peaks.append(peak)
        print(f"memory: {rows:,} rows, {seconds:.0f} s ({rows / seconds:.1f} rows/s with "
              f"start-up), peak RSS {peak:,.0f} MiB")
    print(f"memory: peak RSS {peaks[0]:,.0f} MiB at {args.rows // 10:,} rows, "
          f"{peaks[1]:,.0f} MiB at {args.rows:,} rows")


def section_ray(sources: list[str], tmp: Path, args: argparse.Namespace,
                files_rate: float | None) -> None:
    from postergenre.batch.ray_engine import run_ray
    from postergenre.errors import PosterGenreError

    catalogue = write_catalogue(tmp / "ray.csv", sources)
    for actors in (1, 2):
        rate = Rate()
        start = time.perf_counter()
        try:
            summary = run_ray(catalogue, tmp / f"out-ray-{actors}", model=args.model,
                              backend=args.backend, batch_size=args.batch_size,
                              on_progress=rate, address=args.ray_address, actors=actors)
        except PosterGenreError as e:  # e.g. more actors than this machine's cores allow
            print(f"ray: {actors} actor(s): {e}")
            continue
        seconds = time.perf_counter() - start
        steady = rate.value if rate.first is not None else summary.scored / seconds
        ratio = f", {steady / files_rate:.2f}x the local engine" if files_rate else ""
        print(f"ray: {actors} actor(s), {summary.scored} rows, {summary.failed} failed: "
              f"{steady:.1f} posters/s{ratio} ({seconds:.0f} s with start-up)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--n", type=int, default=5000, help="real posters to score")
    parser.add_argument("--model", default=None, help="run folder (default: the shipped model)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sections", nargs="+", default=["files", "http", "memory"],
                        choices=["files", "http", "memory"])
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the memory run")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per response")
    parser.add_argument("--ray", action="store_true", help="also run the Ray engine")
    parser.add_argument("--ray-address", default=None)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 300 posters, "
                        "2,000 memory rows")
    args = parser.parse_args()
    if args.quick:
        args.n, args.rows = min(args.n, 300), min(args.rows, 2000)

    posters = args.data / "posters"
    if not posters.is_dir():
        sys.exit(f"{posters}: no such folder")
    sources = [str(p.resolve()) for p in sorted(posters.glob("*.jpg"))[: args.n]]
    print(f"{len(sources)} posters from {posters}, {os.cpu_count()} CPU cores, "
          f"backend {args.backend}, batch {args.batch_size}")
    files_rate = None
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        if "files" in args.sections:
            files_rate = section_files(sources, tmp, args)
        if "http" in args.sections:
            section_http(posters, sources, tmp, args, files_rate)
        if "memory" in args.sections:
            section_memory(sources, tmp, args)
        if args.ray:
            section_ray(sources, tmp, args, files_rate)


if __name__ == "__main__":
    main()
