"""The one poster loader: colour modes, resize policy, file vs bytes, every kind of bad image."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_poster
from PIL import Image

from postergenre.data.images import (
    MAX_PIXELS,
    load_poster,
    load_poster_array,
    open_poster,
    to_tensor,
)
from postergenre.errors import InvalidImageError, NotAnImageError

SIZE = (30, 20)  # (height, width)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels and that holds no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "I;16", "1", "RGB"])
def test_every_colour_mode_becomes_rgb(mode: str) -> None:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
    image = rgb.convert(mode) if mode != "I;16" else Image.fromarray(
        rng.integers(0, 65535, (40, 30), dtype=np.uint16))
    fmt = "JPEG" if mode in ("L", "CMYK", "RGB") else ("TIFF" if mode == "1" else "PNG")
    out = open_poster(encode(image, fmt))
    assert out.mode == "RGB" and out.size == (30, 40)
    if mode == "L":  # grey stays grey: the three channels are equal
        arr = np.asarray(out)
        assert np.array_equal(arr[..., 0], arr[..., 1])


def test_16bit_grayscale_uses_the_full_range() -> None:
    ramp = np.tile(np.linspace(1000, 3000, 30, dtype=np.uint16), (40, 1))
    arr = np.asarray(open_poster(encode(Image.fromarray(ramp), "PNG")))
    assert arr.min() == 0 and arr.max() == 255


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
def test_transparent_pixels_are_composited_on_white(mode: str) -> None:
    rgba = np.zeros((40, 30, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # opaque red-ish left half, fully transparent right half
    rgba[:, :15, 3] = 255
    image = Image.fromarray(rgba, "RGBA")
    if mode == "LA":
        image = image.convert("LA")
    elif mode == "PA":
        image = image.convert("P")
        image.info["transparency"] = image.getpixel((29, 0))
    arr = np.asarray(open_poster(encode(image, "PNG")))
    assert (arr[:, 20:] == 255).all()  # transparent -> white
    assert (arr[:, :10] < 255).any()  # the opaque part is not


def test_resize_policy_stretches_to_the_exact_size() -> None:
    wide = Image.new("RGB", (300, 50), (10, 20, 30))
    t = load_poster(encode(wide, "PNG"), SIZE)
    assert t.shape == (3, *SIZE) and t.dtype == torch.float32
    assert torch.allclose(t[:, 0, 0], torch.tensor([10, 20, 30]) / 255.0)


def test_file_and_bytes_give_the_same_tensor(tmp_path: Path) -> None:
    path = make_poster(tmp_path / "1.jpg", seed=3)
    from_file = load_poster(path, SIZE)
    from_bytes = load_poster(path.read_bytes(), SIZE)
    assert torch.equal(from_file, from_bytes)
    assert from_file.min() >= 0.0 and from_file.max() <= 1.0


def test_jpeg_fast_downscale_stays_close_to_a_full_decode(tmp_path: Path) -> None:
    path = make_poster(tmp_path / "1.jpg", seed=1, size=(182, 268))
    fast = load_poster_array(path, (67, 45)).astype(float)
    full = Image.open(path).convert("RGB").resize((45, 67), Image.BILINEAR, reducing_gap=None)
    assert np.abs(fast - np.asarray(full, dtype=float)).mean() < 8


def test_to_tensor_handles_batches() -> None:
    batch = np.full((2, 5, 4, 3), 255, dtype=np.uint8)
    t = to_tensor(batch)
    assert t.shape == (2, 3, 5, 4) and float(t.max()) == 1.0


def test_png_bytes_under_a_jpg_name_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "2.jpg"
    path.write_bytes(encode(Image.new("RGB", (20, 30), "blue"), "PNG"))
    assert open_poster(path).getpixel((0, 0)) == (0, 0, 255)


@pytest.mark.parametrize(
    ("data", "error", "reason"),
    [
        (b"", InvalidImageError, "0 bytes"),
        (b"imdbId,Title,Genre\n1,A,Drama\n", NotAnImageError, "not an image"),
        (png_header_only(100_000, 100_000), InvalidImageError, "pixels"),
        (encode(Image.new("RGB", (1, 1)), "PNG"), InvalidImageError, "too small"),
    ],
    ids=["empty", "text", "bomb-header", "1x1"],
)
def test_bad_images_raise_one_line_errors_naming_the_file(
    tmp_path: Path, data: bytes, error: type, reason: str
) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(data)
    for source in (path, data):
        with pytest.raises(error) as info:
            open_poster(source)
        message = str(info.value)
        assert reason in message and "\n" not in message
    with pytest.raises(error, match="bad.jpg"):
        load_poster(path, SIZE)


def test_truncated_jpeg_is_refused(tmp_path: Path) -> None:
    data = make_poster(tmp_path / "full.jpg").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidImageError, match="cut.jpg: truncated"):
        open_poster(path)


def test_images_just_over_the_pixel_limit_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # checked per call, whatever Pillow's is
    with pytest.raises(InvalidImageError, match="over the 40,000,000 limit"):
        open_poster(png_header_only(MAX_PIXELS // 1000 + 1, 1000))
    with pytest.raises(InvalidImageError) as at_limit:  # a header only: truncated, not too big
        open_poster(png_header_only(MAX_PIXELS // 1000, 1000))
    assert "limit" not in str(at_limit.value)


def test_missing_file_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError, match="no such file"):
        open_poster(tmp_path / "nope.jpg")


@pytest.mark.realdata
def test_real_posters_load(real_data: Path) -> None:
    paths = sorted((real_data / "posters").glob("*.jpg"))[:3]
    batch = torch.stack([load_poster(p, (268, 182)) for p in paths])
    assert batch.shape == (3, 3, 268, 182)
    assert batch.std() > 0.05  # real pictures, not blank frames
