"""The one poster loader: a file path or raw bytes in, a model-ready tensor out.

Every consumer (training, feature extraction, prediction, the server) goes through
`load_poster`, so a poster is decoded and resized the same way everywhere.

Resize policy: the poster is converted to RGB and resized to exactly (height, width) with
Pillow's antialiased bilinear filter, ignoring the aspect ratio (a stretch, as the original
project's `load_img(target_size=...)` did). Real posters are nearly all 182 x 268, so the
stretch to the models' 2:3-ish inputs is small. The tensor is float32 in [0, 1], shape
(3, height, width); each model normalises its own input.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from postergenre.errors import InvalidImageError, NotAnImageError

if TYPE_CHECKING:
    import torch

# Poster file endings, in order of preference (when one id has two files, the first wins).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
# The guard against decompression bombs, checked on every open from the image's header before
# any pixel is decoded (Pillow's global MAX_IMAGE_PIXELS is left as the process has it).
MAX_PIXELS = 40_000_000
MIN_SIDE = 8  # a 1x1 "poster" is a tracking pixel, not a poster

PosterSource = str | os.PathLike | bytes


def _describe(source: PosterSource) -> str:
    return "uploaded bytes" if isinstance(source, bytes | bytearray) else str(source)


def open_poster(source: PosterSource, size: tuple[int, int] | None = None) -> Image.Image:
    """Decode a poster fully and return it as an RGB PIL image (resized when `size` is given).

    Raises InvalidImageError with a one-line reason for anything that is not a usable image:
    a missing or empty file, a non-image, a truncated file, a decompression bomb, a tiny image.
    """
    name = _describe(source)
    try:
        if isinstance(source, bytes | bytearray):
            if not source:
                raise NotAnImageError(f"{name}: empty (0 bytes)")
            fp: io.BytesIO | Path = io.BytesIO(source)
        else:
            fp = Path(source)
            if not fp.is_file():
                raise InvalidImageError(f"{name}: no such file")
            if fp.stat().st_size == 0:
                raise InvalidImageError(f"{name}: empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise InvalidImageError(
                        f"{name}: image claims {w}x{h} pixels, over the {MAX_PIXELS:,} limit"
                    )
                if min(w, h) < MIN_SIDE:
                    raise InvalidImageError(f"{name}: image is {w}x{h}, too small for a poster")
                if size is not None and im.format == "JPEG":
                    im.draft("RGB", (size[1], size[0]))  # fast JPEG downscale while decoding
                im.load()
                image = _to_rgb(im)
    except InvalidImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidImageError(f"{name}: decompression bomb (too many pixels)") from None
    except UnidentifiedImageError:
        raise NotAnImageError(f"{name}: not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        reason = "truncated or corrupt image" if "truncated" in str(e).lower() else str(e)
        raise InvalidImageError(f"{name}: {reason or 'corrupt image'}") from None
    if size is not None:
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR, reducing_gap=None)
    return image


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB for every mode: grayscale, CMYK, palette, 16-bit; alpha is composited on white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if im.mode.startswith("I"):  # 16/32-bit grayscale
        arr = np.asarray(im, dtype=np.float64)
        arr = 255 * (arr - arr.min()) / max(arr.max() - arr.min(), 1)
        return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    return im.convert("RGB")


def load_poster_array(source: PosterSource, size: tuple[int, int]) -> np.ndarray:
    """(height, width, 3) uint8 array of the resized poster."""
    return np.asarray(open_poster(source, size), dtype=np.uint8)


def load_poster(source: PosterSource, size: tuple[int, int]) -> torch.Tensor:
    """(3, height, width) float32 tensor in [0, 1]: the model input for one poster."""
    return to_tensor(load_poster_array(source, size))


def load_poster_batch(sources: Sequence[PosterSource], size: tuple[int, int],
                      workers: int = 2) -> np.ndarray:
    """(N, 3, height, width) float32 array in [0, 1]: posters decoded in a thread pool
    (Pillow releases the GIL while decoding)."""
    if workers > 1 and len(sources) > 1:
        with ThreadPoolExecutor(workers) as pool:
            arrays = list(pool.map(lambda s: load_poster_array(s, size), sources))
    else:
        arrays = [load_poster_array(s, size) for s in sources]
    return np.stack(arrays).transpose(0, 3, 1, 2).astype(np.float32) / 255.0


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) or (N, H, W, 3) uint8 -> (3, H, W) or (N, 3, H, W) float32 in [0, 1]."""
    import torch

    t = torch.from_numpy(np.require(array, requirements=("C", "W")))  # writable copy if needed
    return t.movedim(-1, -3).float().div_(255.0)
