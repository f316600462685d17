"""Decode a split's posters once into one uint8 array at the model's input size.

Decoding JPEGs every epoch is the CPU bottleneck of end-to-end training; 11,000 posters at
200 x 150 x 3 are 1 GB of uint8, so the loop keeps them decoded. The array is also cached on
disk (CACHE/posters/<key>.npy, keyed by the poster paths, their sizes and mtimes, and the input
size) and memory-mapped, so later runs and the other DDP ranks skip decoding altogether.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from postergenre.data.images import load_poster_array
from postergenre.errors import DatasetError, InvalidImageError
from postergenre.io import atomic_open
from postergenre.paths import cache_dir


def cache_key(paths: Sequence[Path], size: tuple[int, int]) -> str:
    h = hashlib.sha1(f"{size[0]}x{size[1]}".encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}|missing\n".encode())
    return f"{size[0]}x{size[1]}-{len(paths)}-{h.hexdigest()[:16]}"


def decode_posters(paths: Sequence[Path], size: tuple[int, int], workers: int = 2,
                   on_done: Callable[[int], None] | None = None) -> np.ndarray:
    """(n, h, w, 3) uint8. A poster that cannot be decoded raises DatasetError naming it."""
    out = np.empty((len(paths), size[0], size[1], 3), dtype=np.uint8)

    def load(i: int) -> None:
        try:
            out[i] = load_poster_array(paths[i], size)
        except InvalidImageError as e:
            raise DatasetError(f"{e} (rerun `data prepare` to drop it)") from None
        if on_done is not None:
            on_done(1)

    with ThreadPoolExecutor(max(1, workers)) as pool:  # Pillow releases the GIL while decoding
        for _ in pool.map(load, range(len(paths))):
            pass
    return out


def cached_posters(paths: Sequence[Path], size: tuple[int, int], cache: bool = True,
                   workers: int = 2, on_done: Callable[[int], None] | None = None) -> np.ndarray:
    """`decode_posters`, read from (or written to) the on-disk cache when `cache` is True."""
    if not cache:
        return decode_posters(paths, size, workers, on_done)
    path = cache_dir() / "posters" / f"{cache_key(paths, size)}.npy"
    if path.is_file():
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # a damaged cache file is rebuilt
    arrays = decode_posters(paths, size, workers, on_done)
    with atomic_open(path, "wb") as f:
        np.save(f, arrays)
    return arrays
