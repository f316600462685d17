"""Download throughput: real posters served from 127.0.0.1 with added latency per request.

    python benchmarks/bench_download.py [DATA] [--n 1000] [--latency 0.05]

A uvicorn server (its own process) serves `DATA/posters/*.jpg` from memory, each response
delayed by `--latency` seconds, like a remote image host. `download_posters` then fetches
`--n` posters into a fresh folder at each concurrency and the posters/s are printed. The
serial run fetches only `--serial-n` posters (its rate is steady from the first few dozen),
which keeps the whole benchmark well under two minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from postergenre.data.download import DownloadConfig, download_posters

SHARED_DATA = Path("../shared/data")

HEADER = "imdbId,Imdb Link,Title,IMDB Score,Genre,Poster\n"


def serve(data: Path, n: int, port: int, latency: float) -> None:
    """Run the poster server (blocking): GET /<imdbId>.jpg -> the poster, after `latency` s."""
    import uvicorn

    files = sorted((data / "posters").glob("*.jpg"))[:n]
    posters = {f"/{f.name}".encode(): f.read_bytes() for f in files}

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        await asyncio.sleep(latency)
        body = posters.get(scope["raw_path"])
        status, ctype = (200, b"image/jpeg") if body else (404, b"text/plain")
        body = body or b"not found"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                lifespan="off", backlog=1024)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"poster server did not start at {url}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="?", type=Path, default=SHARED_DATA,
                    help="data folder with posters/ (default ../shared/data)")
    ap.add_argument("--n", type=int, default=1000, help="posters per run")
    ap.add_argument("--serial-n", type=int, default=250, help="posters for the serial run")
    ap.add_argument("--latency", type=float, default=0.05, help="seconds added per request")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.data, args.n, args.serve, args.latency)
        return
    if not (args.data / "posters").is_dir():
        raise SystemExit(f"{args.data}: no posters/ folder")
    ids = [f.stem for f in sorted((args.data / "posters").glob("*.jpg"))[: args.n]]  # as served
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, str(args.data), "--n", str(args.n),
                               "--latency", str(args.latency), "--serve", str(port)])
    try:
        wait_until_up(f"http://127.0.0.1:{port}/")
        print(f"{len(ids)} real posters, {args.latency * 1000:.0f} ms added latency per request")
        print(f"{'concurrency':>11} {'posters':>8} {'seconds':>8} {'posters/s':>10} {'speedup':>8}")
        serial_rate = None
        with tempfile.TemporaryDirectory() as tmp:
            for c in args.concurrency:
                subset = ids[: args.serial_n] if c == 1 else ids
                csv_path = Path(tmp) / f"c{c}.csv"
                csv_path.write_text(HEADER + "".join(
                    f"{i},l,Movie {i},5,Drama,http://127.0.0.1:{port}/{i}.jpg\n" for i in subset))
                config = DownloadConfig(concurrency=c, timeout=30, retries=0)
                start = time.perf_counter()
                summary = download_posters(csv_path, Path(tmp) / f"out{c}", config)
                seconds = time.perf_counter() - start
                if summary.failed:
                    raise SystemExit(f"{summary.failed} failures, e.g. {summary.failures[0]}")
                rate = len(subset) / seconds
                serial_rate = serial_rate or (rate if c == 1 else None)
                speedup = f"{rate / serial_rate:.1f}x" if serial_rate else "-"
                print(f"{c:>11} {len(subset):>8} {seconds:>8.2f} {rate:>10.1f} {speedup:>8}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
