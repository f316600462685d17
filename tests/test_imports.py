"""Importing the package changes no global state; atomic writes honour the process umask."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from postergenre.io import atomic_write_text

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
