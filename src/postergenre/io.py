"""Atomic writes: a file is either absent or complete, never partial, whatever kills the process;
and the safetensors weight files written that way (`save_weights`, `load_weights`)."""

from __future__ import annotations

import glob
import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

# A new file's flags: mkstemp's, but its mode is 0o666 less the process umask (as open() gives),
# where mkstemp's is 0o600.
_NEW_FILE = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) \
    | getattr(os, "O_BINARY", 0)


def _create_temp(folder: Path, name: str) -> tuple[int, Path]:
    """A new, empty, uniquely named file `.NAME.<random>.tmp` in `folder`: (fd, path)."""
    while True:
        tmp = folder / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, _NEW_FILE, 0o666), tmp
        except FileExistsError:
            continue


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temp file beside `path`; on success fsync and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # a killed write's
        stale.unlink(missing_ok=True)
    fd, tmp = _create_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` if needed and check we can write there; raise a one-line error if not."""
    from postergenre.errors import PosterGenreError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise PosterGenreError(f"{path}: output folder is not writable ({e.strerror})") from None
    return path


# --- safetensors weights (torch and safetensors are imported only when these are called) ----


def load_weights(model: nn.Module, path: Path, partial: bool = False) -> None:
    """Load a safetensors file into `model` (in place); `partial` allows missing tensors (a
    run that stores only its trained ones). Every failure is a one-line RunError naming it."""
    from safetensors.torch import load_file

    from postergenre.errors import RunError

    if not path.is_file():
        raise RunError(f"{path}: weights file is missing")
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises several types for a bad file
        raise RunError(f"{path}: not a readable safetensors file ({e})") from None
    expected = model.state_dict()
    wrong = [k for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise RunError(f"{path}: weights do not fit the model in config.json ({wrong[0]} is "
                       f"{tuple(state[wrong[0]].shape)}, the model needs "
                       f"{tuple(expected[wrong[0]].shape)})")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or (missing and not partial):
        bad = (unexpected or missing)[:3]
        raise RunError(f"{path}: weights do not match the model (e.g. {', '.join(bad)})")


def save_weights(model: nn.Module | dict[str, torch.Tensor], path: Path,
                 keys: list[str] | None = None, dtype: torch.dtype | None = None) -> None:
    """Save (a subset of) a state dict as safetensors, atomically; `dtype` (torch.float16 for
    the shipped model) converts floating-point tensors, and loading converts them back."""
    from safetensors.torch import save

    state = model if isinstance(model, dict) else model.state_dict()
    if keys is not None:
        state = {k: state[k] for k in keys}
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    atomic_write_bytes(path, save(state))
