"""How fast the command answers: `postergenre --help`, and one poster predicted end to end.

    python benchmarks/bench_cli.py [--data ../shared/data] [--runs 5] [--src SRC]

Each figure is the median of `--runs` runs of the command as its own process, as a user runs
it (interpreter start-up included): wall time, and the CPU time the process used (user + sys;
steadier than the wall time on a busy machine). The predict figure is `postergenre predict
POSTER` with the shipped model on the default backend, after one warm-up run that builds the
model's graph in a private cache; POSTER is the first poster of DATA/posters, else one of the
package's sample posters. `-X importtime` says whether each command imported torch.
With `--src` the package is imported from that source folder (e.g. another checkout's src/),
to measure two versions of the code on the same machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of `command`; exits if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed (exit {done.returncode}): {done.stderr[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def imports_torch(command: list[str], env: dict[str, str]) -> bool:
    done = subprocess.run([command[0], "-X", "importtime", *command[1:]], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return any(line.rsplit("|", 1)[-1].strip() == "torch" for line in done.stderr.splitlines())


def measure(name: str, command: list[str], env: dict[str, str], runs: int) -> None:
    times = [timed(command, env) for _ in range(runs)]
    wall = statistics.median(t[0] for t in times)
    cpu = statistics.median(t[1] for t in times)
    torch = "yes" if imports_torch(command, env) else "no"
    print(f"{name:<28} wall {wall:6.2f} s   cpu {cpu:6.2f} s   imports torch: {torch}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"),
                        help="data folder whose first poster is predicted (default: "
                             "../shared/data; a bundled sample poster when absent)")
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median)")
    parser.add_argument("--src", type=Path, default=SRC,
                        help="source folder the package is imported from (default: this "
                             "checkout's src/)")
    args = parser.parse_args()

    posters = sorted((args.data / "posters").glob("*.jpg")) if args.data.is_dir() else []
    poster = posters[0] if posters else next(
        iter(sorted((args.src / "postergenre" / "assets" / "sample" / "posters").glob("*.jpg"))))
    cli = [sys.executable, "-m", "postergenre"]
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "PYTHONPATH": str(args.src.resolve()), "POSTERGENRE_CACHE": cache,
               "TERM": "dumb"}
        print(f"package from {args.src.resolve()}; {os.cpu_count()} CPU cores; "
              f"median of {args.runs} runs", flush=True)
        measure("postergenre --help", [*cli, "--help"], env, args.runs)
        predict = [*cli, "predict", str(poster)]
        warm_up = timed(predict, env)[0]
        print(f"predict warm-up (builds the graph): {warm_up:.1f} s", flush=True)
        measure("postergenre predict POSTER", predict, env, args.runs)


if __name__ == "__main__":
    main()
