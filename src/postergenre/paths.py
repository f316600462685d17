"""Default locations."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where derived files (feature caches, ONNX graphs) live; POSTERGENRE_CACHE overrides."""
    if os.environ.get("POSTERGENRE_CACHE"):
        return Path(os.environ["POSTERGENRE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "postergenre"


def sample_dir() -> Path:
    """The sample bundled with the package: real posters and their rows (the demo's input)."""
    from importlib import resources

    return Path(str(resources.files("postergenre") / "assets" / "sample"))
