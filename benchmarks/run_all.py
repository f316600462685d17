"""The one benchmark command: `python benchmarks/run_all.py` (or `make bench`).

Runs every script in the repository's benchmarks/ folder in sequence, each in its own process,
and says where each figure goes. Every figure in docs/benchmarks.md and the README's table
comes from one of these scripts.

    python benchmarks/run_all.py [--data ../shared/data] [--dataset datasets/shared]
                                [--only speed quality] [--skip train] [--quick]

Scripts read the raw data folder (posters + movies.csv), a prepared dataset (made from the
data folder with `postergenre data prepare` when it is missing), its posters, or nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

# In order: each script's name (benchmarks/bench_<name>.py) and where its figures go.
BENCHMARKS: dict[str, str] = {
    "download": "docs/benchmarks.md, section Download",
    "models": "docs/benchmarks.md, section Models and training",
    "train": "docs/benchmarks.md, section Models and training",
    "quality": "docs/benchmarks.md, section Quality, and the README's table",
    "predict": "docs/benchmarks.md, section Evaluate and predict",
    "serve": "docs/benchmarks.md, section Serve",
    "speed": "docs/benchmarks.md, section Speed, and the README's table",
    "explain": "docs/benchmarks.md, section Explain",
    "fusion": "docs/benchmarks.md, section Fusion, and the README's table",
    "keras": "docs/benchmarks.md, section Models and training (skips without TensorFlow)",
    "cli": "docs/benchmarks.md, section Evaluate and predict (start-up)",
    "batch": "docs/benchmarks.md, section Batch, and docs/batch.md",
}


# What each script reads: the raw data folder, a prepared dataset, the posters folder, or
# nothing (a script not listed reads the data folder).
INPUTS: dict[str, str | None] = {
    "models": None, "serve": None, "predict": "posters",
    "train": "dataset", "quality": "dataset", "explain": "dataset", "fusion": "dataset",
    "keras": "dataset",
}


def benchmarks_dir() -> Path:
    """The folder of this script: the benchmarks of the source checkout."""
    return Path(__file__).resolve().parent


def command(script: Path, data: Path, quick: bool, dataset: Path | None = None) -> list[str]:
    """How to run one script: its input (INPUTS) as `--data PATH`, or PATH alone for a script
    without that option, and `--quick` for a script that takes it."""
    text = script.read_text(encoding="utf-8")
    kind = INPUTS.get(script.stem.removeprefix("bench_"), "data")
    path = {"data": data, "dataset": dataset or data, "posters": data / "posters"}.get(kind or "")
    args = [sys.executable, str(script)]
    if path is not None:
        args += [*(["--data"] if "--data" in text else []), str(path)]
    if quick and "--quick" in text:
        args.append("--quick")
    return args


def prepare(data: Path, dataset: Path) -> None:
    """The prepared dataset the dataset-reading scripts score (made once, then reused)."""
    if (dataset / "train.csv").is_file() or not (data / "movies.csv").is_file():
        return
    print(f"preparing {dataset} from {data}", flush=True)
    subprocess.run([sys.executable, "-m", "postergenre", "data", "prepare", "--labels",
                    str(data / "movies.csv"), "--posters", str(data / "posters"), "--out",
                    str(dataset)], check=True)


def run_all(names: list[str], data: Path, quick: bool = False,
            dataset: Path | None = None) -> dict[str, str]:
    """Run the scripts one after the other; returns name -> outcome ('ok', 'failed', ...)."""
    folder = benchmarks_dir()
    outcomes: dict[str, str] = {}
    for name in names:
        script = folder / f"bench_{name}.py"
        print(f"\n=== {name}: {script.name} -> {BENCHMARKS.get(name, 'docs/benchmarks.md')}",
              flush=True)
        if not script.is_file():
            outcomes[name] = "missing"
            print(f"{script}: not found, skipped", flush=True)
            continue
        start = time.perf_counter()
        code = subprocess.run(command(script, data, quick, dataset),
                              cwd=folder.parent).returncode
        minutes = (time.perf_counter() - start) / 60
        outcomes[name] = "ok" if code == 0 else f"failed (exit {code})"
        print(f"=== {name}: {outcomes[name]} in {minutes:.1f} min", flush=True)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/run_all.py",
        description="Reproduce every figure in docs/benchmarks.md and the README's table.",
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/data"),
                        help="the data folder (default ../shared/data)")
    parser.add_argument("--dataset", type=Path, default=Path("datasets/shared"),
                        help="the prepared dataset (default datasets/shared; made from --data "
                             "when missing)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    parser.add_argument("--skip", nargs="+", metavar="NAME", default=[],
                        help="skip these benchmarks")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: small samples, figures not for quoting")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, where in BENCHMARKS.items():
            print(f"{name:10} benchmarks/bench_{name}.py -> {where}")
        return 0
    unknown = sorted((set(args.only or []) | set(args.skip)) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    names = [n for n in (args.only or BENCHMARKS) if n not in args.skip]
    if any(INPUTS.get(n, "data") == "dataset" for n in names):
        prepare(args.data.resolve(), args.dataset.resolve())
    outcomes = run_all(names, args.data.resolve(), args.quick, args.dataset.resolve())
    print("\nsummary: " + ", ".join(f"{n} {o}" for n, o in outcomes.items()))
    return 0 if all(o == "ok" for o in outcomes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
