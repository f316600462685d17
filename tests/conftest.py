"""Shared fixtures: the real data folder (tests skip cleanly without it) and synthetic posters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `fuzz` (minutes long) run only when `-m` names them: `pytest -m fuzz`."""
    if "fuzz" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="the long fuzz run: select it with -m fuzz")
    for item in items:
        if "fuzz" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests write feature caches and ONNX graphs into a temporary folder, not the user's."""
    import os

    os.environ["POSTERGENRE_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache folder of the test's own and one torch thread: model tests stay independent
    and deterministic."""
    import torch

    monkeypatch.setenv("POSTERGENRE_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """../shared/data next to the repository; skips the test when it is absent."""
    if not (REAL_DATA / "posters").is_dir():
        pytest.skip("real data (../shared/data) not available")
    return REAL_DATA


def make_poster(path: Path, seed: int = 0, size: tuple[int, int] = (182, 268)) -> Path:
    """Write a small random-colour JPEG poster (width, height) and return its path."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, 3)
    arr = np.clip(base + rng.normal(0, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, "JPEG", quality=85)
    return path


def make_tiny_run(path: Path, genres: list[str], size: tuple[int, int] = (80, 80),
                  seed: int = 0) -> Path:
    """A custom-cnn run folder with random weights on small inputs (fast to load and run)."""
    import torch

    from postergenre.io import save_weights
    from postergenre.models import create_model
    from postergenre.run import RunConfig, save_thresholds, write_config

    torch.manual_seed(seed)
    model = create_model("custom-cnn", len(genres), input_size=size)
    save_weights(model, path / "weights.safetensors")
    write_config(path, RunConfig(model="custom-cnn", model_kwargs={"input_size": list(size)},
                                 genres=tuple(genres), input_size=size))
    save_thresholds(path, {g: 0.5 for g in genres})
    return path


def make_small_dataset(root: Path, genres: list[str], sizes: tuple[int, int, int] = (12, 6, 3)
                       ) -> Path:
    """A prepared dataset folder of 48 x 64 random posters, genres in turn; sizes are the
    train/val/test counts."""
    import pandas as pd

    from postergenre.data.dataset import write_genres, write_split

    write_genres(root / "ds", genres)
    for name, n, offset in zip(("train", "val", "test"), sizes, (0, 100, 200), strict=True):
        rows = [{"imdbId": offset + i, "title": f"t{i}", "genres": genres[i % len(genres)],
                 "poster": str(make_poster(root / "p" / f"{offset + i}.jpg", offset + i,
                                           (48, 64)))} for i in range(n)]
        write_split(root / "ds", name, pd.DataFrame(rows), genres)
    return root / "ds"


def train_features(dataset: Path, out: Path, size: tuple[int, int], model: str =
                   "efficientnet-lite0", backend: str = "torch", **options) -> Path:
    """A features-mode run (a head on cached features) at `size`; head settings such as
    head=, pool=, hidden= go to the model, the rest to the training settings."""
    from postergenre.train.fit import fit
    from postergenre.train.recipes import make_config

    kwargs = {"input_size": list(size)}
    kwargs.update({k: options.pop(k) for k in ("head", "pool", "hidden", "dropout")
                   if k in options})
    fit(dataset, out, make_config(mode="features", model=model, model_kwargs=kwargs, **options),
        backend=backend)
    return out


def train_finetune(dataset: Path, out: Path, init: Path, backend: str = "torch",
                   resume: bool = False, **options) -> Path:
    """A finetune-mode run from the features run `init`."""
    from postergenre.train.fit import fit
    from postergenre.train.recipes import make_config

    config = None if resume else make_config(mode="finetune", model="efficientnet-lite0",
                                             init=str(init), **options)
    fit(None if resume else dataset, out, config, backend=backend, resume=resume)
    return out
