"""`postergenre demo`: the bundled sample through the pipeline, predictions and a picture."""

from __future__ import annotations

from pathlib import Path

from conftest import make_tiny_run
from PIL import Image
from rich.console import Console

from postergenre.cli.demo import run_demo
from postergenre.data.dataset import load_genres
from postergenre.paths import sample_dir
from postergenre.run import default_run_dir


def test_demo_cleans_the_sample_predicts_every_poster_and_draws_them(tmp_path: Path) -> None:
    sample_posters = list((sample_dir() / "posters").iterdir())
    genres = ["Comedy", "Drama", "Horror"]
    run = make_tiny_run(tmp_path / "run", genres)
    console = Console(record=True, width=160)
    picture = run_demo(tmp_path / "out", model=run, console=console)
    text = console.export_text()
    assert "missing_genre" in text or "missing genre" in text  # the cleaning report
    # one prediction line per kept poster (the sample has a poster whose row is dropped)
    kept = sum(1 for line in text.splitlines() if "(0." in line or "(1.0" in line)
    assert kept == len(sample_posters) - 1
    assert f"on these {kept} posters" in text
    with Image.open(picture) as im:
        assert im.format == "PNG" and im.width > 800 and im.height > 800
    assert "Western" in load_genres(tmp_path / "out" / "dataset")
    import pandas as pd  # the sample's catalogue through `batch`: one row each, bad rows kept

    table = pd.read_parquet(tmp_path / "out" / "genres")
    assert sorted(table["row"]) == list(range(len(table))) and len(table) > kept
    assert "duplicate id, first seen at row" in text


def test_demo_uses_the_shipped_model_by_default(tmp_path: Path) -> None:
    if not (default_run_dir() / "config.json").is_file():
        import pytest

        pytest.skip("no shipped model in this checkout")
    console = Console(record=True, width=160)
    run_demo(tmp_path / "out", console=console)
    assert "shipped model" in console.export_text()
