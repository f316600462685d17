"""The run folder's contract: config.json as a typed, versioned RunConfig (run.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from postergenre.errors import RunError
from postergenre.run import (
    CONFIG,
    FORMAT_VERSION,
    RunConfig,
    TextSettings,
    default_run_dir,
    load_run,
    write_config,
)


def test_the_shipped_config_is_a_current_run_config() -> None:
    run = load_run(None)
    raw = json.loads((default_run_dir() / CONFIG).read_text(encoding="utf-8"))
    assert raw["format_version"] == FORMAT_VERSION == run.config.format_version
    assert isinstance(run.config, RunConfig) and isinstance(run.config.text, TextSettings)
    assert run.config.to_json() == raw  # nothing read is lost or invented on the way
    assert run.train_settings["mode"] == "finetune" and run.dataset
    side = run.title_side
    assert side is not None and side.thresholds.shape == (len(run.genres),)


def _write(tmp_path: Path, obj: dict) -> Path:
    folder = tmp_path / "run"
    folder.mkdir(exist_ok=True)
    (folder / CONFIG).write_text(json.dumps(obj), encoding="utf-8")
    return folder


def _one_line_error(folder: Path, match: str) -> str:
    with pytest.raises(RunError, match=match) as caught:
        load_run(folder)
    message = str(caught.value)
    assert "\n" not in message and str(folder / CONFIG) in message
    return message


def test_round_trip_and_one_line_errors(tmp_path: Path) -> None:
    config = RunConfig(model="custom-cnn", model_kwargs={"input_size": [64, 48]},
                       genres=("Comedy", "Drama"), input_size=(64, 48), dataset="data",
                       train={"mode": "end-to-end", "epochs": 3},
                       text=TextSettings(fusion="global", text_fitted_on=("train", "val")))
    write_config(tmp_path / "run", config)
    assert load_run(tmp_path / "run").config == config
    good = config.to_json()

    _write(tmp_path, {**good, "format_version": FORMAT_VERSION + 1})
    assert "upgrade postergenre" in _one_line_error(tmp_path / "run", "is newer than")
    for key in ("model", "genres", "train", "partial_weights"):
        _write(tmp_path, {k: v for k, v in good.items() if k != key})
        _one_line_error(tmp_path / "run", f"missing '{key}'")
    _write(tmp_path, {**good, "genres": "Comedy"})
    _one_line_error(tmp_path / "run", "'genres' must be a list")
    _write(tmp_path, {**good, "partial_weights": 1})
    _one_line_error(tmp_path / "run", "'partial_weights' must be true or false, not int")
    _write(tmp_path, {**good, "input_size": [64]})
    _one_line_error(tmp_path / "run", "'input_size' must be two positive integers")
    _write(tmp_path, {**good, "text": {"fusion": "global"}})
    _one_line_error(tmp_path / "run", "'text': missing 'title_model'")
    old = {k: v for k, v in good.items() if k != "format_version"}
    _write(tmp_path, {**old, "training": old.pop("train")})  # the layout before RunConfig
    _one_line_error(tmp_path / "run", "older postergenre")
