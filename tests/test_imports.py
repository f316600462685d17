"""Importing the package changes no global state; atomic writes honour the process umask."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import make_poster, make_tiny_run

from postergenre.export import cached_onnx
from postergenre.io import atomic_write_text
from postergenre.run import load_run

SRC = Path(__file__).resolve().parents[1] / "src"

# Imports every module of the package in a fresh interpreter, watching the global state that
# a module could change at import: the umask (os.umask is wrapped to count calls), Pillow's
# decompression-bomb limit and truncated-image switch, matplotlib's backend and pyplot.
WALK_ALL = """
import importlib, os, pkgutil, sys

calls = []
real_umask = os.umask
os.umask = lambda mask: calls.append(mask) or real_umask(mask)
mask = real_umask(0o027); real_umask(mask)

import matplotlib
from PIL import Image, ImageFile

before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES,
          dict.__getitem__(matplotlib.rcParams, "backend"))
import postergenre

names = [m.name for m in pkgutil.walk_packages(postergenre.__path__, "postergenre.")
         if m.name != "postergenre.__main__"]
for name in names:
    importlib.import_module(name)
after = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES,
         dict.__getitem__(matplotlib.rcParams, "backend"))
assert len(names) > 40, names
assert not calls, f"os.umask called at import: {calls}"
assert real_umask(mask) == mask
assert after == before, (before, after)
assert "matplotlib.pyplot" not in sys.modules, "pyplot imported"
print("ok", len(names))
"""


@pytest.mark.slow
def test_importing_every_module_changes_no_global_state() -> None:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    env.pop("MPLBACKEND", None)
    done = subprocess.run([sys.executable, "-c", WALK_ALL], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok")


def test_atomic_writes_get_the_mode_the_umask_gives(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        plain = tmp_path / "b.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.txt").stat().st_mode)
    assert mode == 0o640 == stat.S_IMODE(plain.stat().st_mode)
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left beside it


# --- a CLI that answers at once: help and the cached onnx predict path import no torch ------

HEAVY = ("torch", "matplotlib", "pandas")


def _imported(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -X importtime -m postergenre ARGS` started (its stderr lists every import)."""
    env = dict(env or os.environ, PYTHONPATH=str(SRC))
    return subprocess.Popen([sys.executable, "-X", "importtime", "-m", "postergenre", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)


def _top_level_imports(stderr: str) -> set[str]:
    return {line.rsplit("|", 1)[1].strip().split(".")[0]
            for line in stderr.splitlines() if line.startswith("import time:")}


def _commands() -> list[list[str]]:
    """Every command and subcommand of the app, as argument lists."""
    import typer

    from postergenre.cli import app

    found: list[list[str]] = []

    def walk(command: Any, path: list[str]) -> None:  # a click command or group
        found.append(path)
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def test_help_of_every_command_imports_no_heavy_library() -> None:
    commands = _commands()
    assert {"train", "predict", "data prepare"} <= {" ".join(c) for c in commands}
    started = [(c, _imported([*c, "--help"])) for c in commands]
    for command, process in started:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr[-1000:]
        heavy = _top_level_imports(stderr) & set(HEAVY)
        assert not heavy, f"`postergenre {' '.join(command)} --help` imports {sorted(heavy)}"


@pytest.mark.slow
def test_predict_on_a_cached_onnx_graph_imports_no_torch(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTERGENRE_CACHE", str(tmp_path / "cache"))
    run = make_tiny_run(tmp_path / "run", ["Drama", "Comedy"])
    cached_onnx(load_run(run))  # the first build of the graph may import torch
    poster = make_poster(tmp_path / "1.jpg")
    process = _imported(["predict", "--model", str(run), "--backend", "onnx", str(poster)])
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-1000:]
    imported = _top_level_imports(stderr)
    assert "onnxruntime" in imported and "torch" not in imported


# --- true dependencies ---------------------------------------------------------------------


def _requirement_name(spec: str) -> str:
    return re.split(r"[\[<>=!~; ]", spec, maxsplit=1)[0].lower().replace("_", "-")


def test_every_third_party_import_is_declared() -> None:
    """Each module the package imports, at the top or inside a function, comes from a
    distribution named in pyproject's dependencies (or, for optional features, an extra)."""
    import ast
    import tomllib
    from importlib.metadata import packages_distributions

    project = tomllib.loads((SRC.parent / "pyproject.toml").read_text())["project"]
    runtime = {_requirement_name(r) for r in project["dependencies"]}
    extras = {_requirement_name(r) for name, reqs in project["optional-dependencies"].items()
              if name != "dev" for r in reqs}
    imported: dict[str, str] = {}
    for path in (SRC / "postergenre").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0
                     and node.module else [])
            for name in names:
                imported.setdefault(name.split(".")[0], path.name)
    distributions = packages_distributions()
    missing = []
    for module, where in sorted(imported.items()):
        if module in sys.stdlib_module_names or module == "postergenre":
            continue
        names = {_requirement_name(d) for d in distributions.get(module, [module])}
        if not names & (runtime | extras):
            missing.append(f"{module} (imported in {where}, from {sorted(names)})")
    assert not missing, "undeclared: " + ", ".join(missing)
