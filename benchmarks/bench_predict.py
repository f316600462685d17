"""`postergenre predict --format json` over a poster folder: posters per second, end to end.

    python benchmarks/bench_predict.py [POSTERS] [--model RUN] [--limit N] [--backend auto]

POSTERS defaults to ../shared/data/posters; without --model the shipped model is used. The
command runs as its own process, as a user would run it (start-up included), with its JSON
lines written to a file; the script checks one line per poster and prints the rate. With
--limit the first N posters (sorted by name) are passed as files instead of the folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("posters", nargs="?", default="../shared/data/posters", type=Path)
    parser.add_argument("--model", default=None, help="run folder (default: the shipped model)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N posters")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    if not args.posters.is_dir():
        sys.exit(f"{args.posters}: no such folder")
    inputs = [str(args.posters)]
    if args.limit:
        inputs = [str(p) for p in sorted(args.posters.glob("*.jpg"))[: args.limit]]
    command = [sys.executable, "-m", "postergenre", "predict", *inputs, "--format", "json",
               "--backend", args.backend, "--batch-size", str(args.batch_size)]
    if args.model:
        command += ["--model", args.model]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "predictions.jsonl"
        start = time.perf_counter()
        with out.open("w") as f:
            proc = subprocess.run(command, stdout=f, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "TERM": "dumb"})
        seconds = time.perf_counter() - start
        lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    failed = proc.stderr.count("error: ")
    if proc.returncode not in (0, 1) or not records:
        sys.exit(f"predict failed (exit {proc.returncode}): {proc.stderr[-500:]}")
    print(f"posters predicted: {len(records)} (failed: {failed}), genres per record: "
          f"{len(records[0]['scores'])}")
    print(f"wall time: {seconds:.1f} s (start-up included), "
          f"{len(records) / seconds:.1f} posters/s on {os.cpu_count()} CPU cores")


if __name__ == "__main__":
    main()
