"""Property-based guard: every CLI command, driven with generated files, ends in a one-line
error, a reported skip or success; never a traceback, never an unexpected-error line.

Inputs: random bytes named .jpg/.png/.csv/.json/.safetensors, real files (the bundled sample,
a tiny run, a tiny dataset) truncated or with their bytes or lines reordered, odd Unicode file
names. Each case asserts: no traceback printed, exit code 0, 1 or 2, no input file changed,
and no "this is a bug" line (the catch-all in `postergenre.cli.main`).

The default run is bounded (a few examples per command, well under 60 s). The long run:
`pytest -m fuzz tests/test_fuzz_cli.py -s` explores for POSTERGENRE_FUZZ_SECONDS (default 600)
and prints its count of cases.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import conftest
import pytest
from conftest import make_small_dataset, make_tiny_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postergenre.paths import sample_dir

GENRES = ["Comedy", "Drama", "Horror"]
EXTENSIONS = (".jpg", ".png", ".csv", ".json", ".safetensors")
QUICK = settings(max_examples=10, deadline=None, database=None, derandomize=True,
                 suppress_health_check=list(HealthCheck))
CASES = {"count": 0}
LONG = {"on": False}  # the long run also draws evaluate's HTML report


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Read-only material the cases copy from: the sample, a tiny run, a tiny dataset."""
    root = tmp_path_factory.mktemp("fuzz-world")
    sample = sample_dir()
    return {
        "sample": sample,
        "run": make_tiny_run(root / "run", GENRES),
        "dataset": make_small_dataset(root, GENRES, sizes=(6, 4, 4)),
    }


def real_files(world: dict[str, Path]) -> list[Path]:
    sample = world["sample"]
    return sorted([sample / "movies.csv", *sorted((sample / "posters").glob("*.jpg"))[:4],
                   *sorted(world["run"].iterdir()), *sorted(world["dataset"].iterdir())])


# --- strategies ---------------------------------------------------------------------------

ODD_CHARS = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\")
odd_stems = st.one_of(
    st.text(ODD_CHARS, min_size=1, max_size=12),
    st.sampled_from(["²³", "١٢", "tt0114709", "114709", "-x", " ", "e\u0301", "\u202ertl",
                     "🎬", "9" * 30, "nan", "inf"]),
).filter(lambda s: s not in (".", "..") and len(s.encode()) < 120)


def _reorder(data: bytes, seed: int, lines: bool) -> bytes:
    import random

    rng = random.Random(seed)
    parts = data.split(b"\n") if lines else [data[i:i + 97] for i in range(0, len(data), 97)]
    rng.shuffle(parts)
    return (b"\n" if lines else b"").join(parts)


@st.composite
def blobs(draw, real: list[Path]) -> bytes:
    """Random bytes, or a real file truncated, byte-reordered or line-reordered."""
    kind = draw(st.sampled_from(["random", "truncated", "reordered", "lines", "whole"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    data = draw(st.sampled_from(real)).read_bytes()
    if kind == "truncated":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if kind in ("reordered", "lines"):
        return _reorder(data, draw(st.integers(0, 2**16)), lines=kind == "lines")
    return data


@st.composite
def odd_files(draw, real: list[Path], max_files: int = 4) -> list[tuple[str, bytes]]:
    n = draw(st.integers(1, max_files))
    out = []
    for _ in range(n):
        out.append((draw(odd_stems) + draw(st.sampled_from(EXTENSIONS)), draw(blobs(real))))
    return out


# --- running the CLI in-process ------------------------------------------------------------


def run_cli(*args: object) -> tuple[int, str]:
    """`postergenre ARGS` through the real entry point: (exit code, stdout + stderr)."""
    CASES["count"] += 1
    result = conftest.run_cli(*args)
    return result.exit_code, result.stdout + result.stderr


# Modules whose unexpected errors are recorded (a warning) instead of failed: none now. Name a
# module here only while a known gap in it is being fixed.
ELSEWHERE: tuple[str, ...] = ()
KNOWN: list[str] = []


def elsewhere(output: str) -> bool:
    """True when the crash log's innermost postergenre frame is in one of ELSEWHERE."""
    log = Path(output.strip().splitlines()[-1].rsplit(" ", 1)[-1])
    frames = [line for line in log.read_text().splitlines()
              if line.strip().startswith("File ") and "postergenre" in line]
    where = frames[-1].split('"')[1] if frames else ""
    if Path(where).name in ELSEWHERE:
        KNOWN.append(f"{Path(where).name}: {log.read_text().strip().splitlines()[-1]}")
        warnings.warn(f"unexpected error in {Path(where).name} (known): {KNOWN[-1]}",
                      stacklevel=2)
        return True
    return False


def snapshot(*roots: Path) -> dict[Path, str]:
    files = {}
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                files[path] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def check(args: list[object], inputs: list[Path]) -> None:
    before = snapshot(*inputs)
    code, output = run_cli(*args)
    assert "Traceback" not in output, output
    assert code in (0, 1, 2), (code, output)
    if "this is a bug" in output:
        assert elsewhere(output), output
    after = snapshot(*inputs)
    changed = [str(p) for p, h in before.items() if after.get(p) != h]
    assert not changed, f"input files changed or removed: {changed}"


def write_files(folder: Path, files: list[tuple[str, bytes]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in files:
        path = folder / name
        path.write_bytes(data)
        paths.append(path)
    return paths


def damaged_copy(src: Path, dst: Path, victim: str | None, data: bytes) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    if victim is not None:
        (dst / victim).write_bytes(data)
    return dst


# --- one property per command --------------------------------------------------------------


def prop_prepare(world, labels: bytes, files: list[tuple[str, bytes]], seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        posters = tmp / "posters"
        posters.mkdir()
        for p in sorted((world["sample"] / "posters").glob("*.jpg"))[:12]:
            shutil.copy(p, posters / p.name)
        write_files(posters, files)
        (tmp / "movies.csv").write_bytes(labels)
        check(["data", "prepare", "--labels", tmp / "movies.csv", "--posters", posters,
               "--out", tmp / "ds", "--seed", seed, "--workers", 1],
              [posters, tmp / "movies.csv"])


def prop_stats(world, victim: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ds = damaged_copy(world["dataset"], Path(tmp) / "ds", victim, data)
        check(["data", "stats", ds], [ds])


def prop_evaluate(world, where: str, victim: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ds = damaged_copy(world["dataset"], tmp / "ds", victim if where == "dataset" else None,
                          data)
        run = damaged_copy(world["run"], tmp / "run", victim if where == "run" else None, data)
        report = [] if LONG["on"] else ["--no-report"]
        check(["evaluate", run, "--data", ds, "--backend", "torch", "--bootstrap", 5,
               "--out", tmp / "out", *report], [ds, run])


def prop_predict(world, files: list[tuple[str, bytes]], as_folder: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_files(tmp / "in", files)
        inputs = [tmp / "in"] if as_folder else paths
        check(["predict", "--model", world["run"], "--backend", "torch", "--format", "json",
               *inputs], [tmp / "in", world["run"]])


def prop_export(world, victim: str | None, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = damaged_copy(world["run"], tmp / "run", victim, data)
        check(["export", "--onnx", run, tmp / "out" / "m.onnx", "--no-check"], [run])


RUN_FILES = ["config.json", "weights.safetensors", "thresholds.json"]
DATASET_FILES = ["genres.json", "train.csv", "val.csv", "test.csv"]


def strategies(world) -> dict[str, tuple]:
    real = real_files(world)
    return {
        "prepare": (prop_prepare, dict(labels=blobs(real), files=odd_files(real),
                                       seed=st.integers(-5, 2**33))),
        "stats": (prop_stats, dict(victim=st.sampled_from(DATASET_FILES), data=blobs(real))),
        "evaluate": (prop_evaluate, dict(where=st.sampled_from(["dataset", "run"]),
                                         victim=st.sampled_from(DATASET_FILES + RUN_FILES),
                                         data=blobs(real))),
        "predict": (prop_predict, dict(files=odd_files(real), as_folder=st.booleans())),
        "export": (prop_export, dict(victim=st.sampled_from([None, *RUN_FILES]),
                                     data=blobs(real))),
    }


def explore(world, name: str, rules: settings) -> None:
    prop, kwargs = strategies(world)[name]
    given(**kwargs)(rules(lambda **kw: prop(world, **kw)))()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["prepare", "stats", "evaluate", "predict", "export"])
def test_cli_never_prints_a_traceback(world, name) -> None:
    explore(world, name, QUICK)


@pytest.mark.slow
def test_serve_help(world) -> None:
    code, output = run_cli("serve", "--help")
    assert code == 0 and "--port" in output and "Traceback" not in output


@pytest.mark.fuzz
def test_fuzz_long(world) -> None:
    """Explore every command in turn, random seeds, until the time is spent."""
    seconds = float(os.environ.get("POSTERGENRE_FUZZ_SECONDS", "600"))
    rules = settings(max_examples=25, deadline=None, database=None,
                     suppress_health_check=list(HealthCheck))
    start, CASES["count"], rounds, LONG["on"] = time.monotonic(), 0, 0, True
    while time.monotonic() - start < seconds:
        for name in strategies(world):
            explore(world, name, rules)
        rounds += 1
    elapsed = time.monotonic() - start
    print(f"\nfuzz: {CASES['count']} cases in {rounds} rounds, {elapsed:.0f} s; "
          f"{len(KNOWN)} known unexpected errors in {', '.join(ELSEWHERE)}:")
    for line in sorted(set(KNOWN)):
        print(f"  {line}")
