"""`train` and `export` refuse what they cannot honour, in one line, before writing anything;
no command writes over its inputs or over a finished run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_small_dataset, make_tiny_run, run_cli, train_features

from postergenre.run import load_run

GENRES = ["Comedy", "Drama", "Horror"]

pytestmark = pytest.mark.usefixtures("isolated")


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_small_dataset(tmp_path, GENRES)


def train(*args: str) -> tuple[int, str]:
    result = run_cli("train", "--no-progress", *args)
    return result.exit_code, result.output


CNN = ["--model", "custom-cnn", "--model-arg", "input_size=[80,80]", "--epochs", "1"]


@pytest.mark.parametrize("extra, expected", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--batch-size", "-4"], "--batch-size must be at least 1"),
    (["--seed", "-1"], "--seed must be between"),
    (["--loss", "focal"], "--loss must be one of"),
    (["--flip"], "--flip does not apply to end-to-end"),
    (["--drop-connect", "0.1"], "--drop-connect does not apply to end-to-end"),
    (["--model-arg", "colour=3"], "custom-cnn has no setting 'colour'"),
    (["--model-arg", "input_size=[20,20]"], "too small for custom-cnn"),
    (["--device", "tpu"], "--device must be cpu or cuda"),
    (["--mode", "features"], "custom-cnn cannot train in features mode"),
    (["--recipe", "seed-custom", "--mode", "features"], "trains end to end"),
])
def test_a_bad_option_is_one_line_and_leaves_nothing(dataset, tmp_path, extra, expected):
    out = tmp_path / "run"
    code, message = train("--data", str(dataset), "--out", str(out), *CNN, *extra)
    assert code == 1 and expected in message, message
    assert not out.exists() or not any(out.iterdir())  # nothing that blocks the retry
    code, message = train("--data", str(dataset), "--out", str(out), *CNN)
    assert code == 0, message


def test_cuda_on_a_machine_without_it(dataset, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, message = train("--data", str(dataset), "--out", str(tmp_path / "r"), *CNN,
                          "--device", "cuda")
    assert code == 1 and "CUDA is not available" in message


@pytest.mark.parametrize("extra, expected", [
    (["--augment"], "--augment does not apply to features"),
    (["--optimizer", "sgd", "--schedule", "cosine", "--augment"], "--augment"),
    (["--drop-connect", "0.1"], "--drop-connect does not apply to features"),
])
def test_the_features_mode_refuses_options_it_does_not_use(dataset, tmp_path, extra, expected):
    code, message = train("--data", str(dataset), "--out", str(tmp_path / "r"), "--model",
                          "efficientnet-lite0", "--model-arg", "input_size=[64,48]", *extra)
    assert code == 1 and expected in message, message


def test_a_finished_run_of_any_mode_is_never_overwritten(dataset, tmp_path):
    run = train_features(dataset, tmp_path / "head", (64, 48), epochs=1, hidden=4)
    before = (run / "weights.safetensors").read_bytes()
    code, message = train("--data", str(dataset), "--out", str(run), "--model",
                          "efficientnet-lite0", "--model-arg", "input_size=[64,48]")
    assert code == 1 and "already holds a run" in message
    code, message = train("--data", str(dataset), "--out", str(run), "--resume")
    assert code == 1 and "--data does not apply with --resume" in message
    code, message = train("--out", str(run), "--resume", "--epochs", "9")
    assert code == 1 and "--epochs does not apply with --resume" in message
    code, message = train("--data", str(dataset), "--out", str(dataset), *CNN)
    assert code == 1 and "is an input of this run" in message
    assert (run / "weights.safetensors").read_bytes() == before


def test_deprecated_freeze_still_works_and_says_so(dataset, tmp_path):
    result = run_cli("train", "--data", str(dataset), "--out",
                                      str(tmp_path / "r"), "--model", "efficientnet-lite0",
                                      "--model-arg", "input_size=[64,48]", "--epochs", "1",
                                      "--freeze", "all", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "--freeze is deprecated" in result.output
    assert load_run(tmp_path / "r").train_settings["mode"] == "features"


def test_export_never_writes_over_its_run(tmp_path):
    run = make_tiny_run(tmp_path / "run", GENRES)
    weights = (run / "weights.safetensors").read_bytes()
    for target in (run / "weights.safetensors", run / "model.onnx"):
        result = run_cli("export", str(run), str(target))
        assert result.exit_code == 1 and "inside the run folder" in result.stderr
    assert (run / "weights.safetensors").read_bytes() == weights
    assert not (run / "model.onnx").exists()


@pytest.mark.parametrize("args, expected", [
    (["--opset", "3"], "--opset 3"),
    (["--opset", "99"], "--opset 99"),
])
def test_export_options_are_checked(tmp_path, args, expected):
    run = make_tiny_run(tmp_path / "run", GENRES)
    result = run_cli("export", str(run), str(tmp_path / "m.onnx"), *args)
    assert result.exit_code == 1 and expected in result.stderr
    (tmp_path / "file").write_text("x")
    result = run_cli("export", str(run), str(tmp_path / "file" / "m.onnx"))
    assert result.exit_code == 1 and "is a file" in result.stderr


def test_a_killed_writes_leftover_is_removed_by_the_next_write(tmp_path):
    from postergenre.io import atomic_write_bytes

    stale = tmp_path / ".m.onnx.abc123.tmp"  # what a kill -9 mid-write leaves
    stale.write_bytes(b"half")
    atomic_write_bytes(tmp_path / "m.onnx", b"whole")
    assert not stale.exists() and (tmp_path / "m.onnx").read_bytes() == b"whole"


@pytest.mark.parametrize("damage, expected", [
    (lambda r: (r / "config.json").write_text("{not json"), "config.json: not valid JSON"),
    (lambda r: (r / "thresholds.json").write_text("[1, 2"), "thresholds.json: not valid JSON"),
    (lambda r: (r / "thresholds.json").write_text('{"Drama": "high"}'), "genre: number"),
    (lambda r: (r / "weights.safetensors").unlink(), "weights.safetensors: "),
    (lambda r: (r / "int8.json").write_text("{"), "int8.json: not valid JSON"),
    (lambda r: (r / "config.json").write_text(json.dumps({
        **json.loads((r / "config.json").read_text()), "genres": GENRES + ["War"]})),
     "weights do not fit the model"),
])
@pytest.mark.parametrize("command", [["predict"], ["evaluate"], ["export"]])
def test_a_damaged_run_folder_is_one_line_naming_the_file(tmp_path, damage, expected, command):
    if command == ["export"] and "int8" in expected:
        pytest.skip("export reads no int8.json")
    run = make_tiny_run(tmp_path / "run", GENRES)
    damage(run)
    poster = make_small_dataset(tmp_path / "d", GENRES, (1, 1, 1)).parent / "p" / "0.jpg"
    args = {"predict": [str(poster), "--model", str(run), "--backend", "onnx"],
            "evaluate": [str(run), "--data", str(tmp_path / "d" / "ds")],
            "export": [str(run), str(tmp_path / "m.onnx")]}[command[0]]
    result = run_cli(*command, *args)
    assert result.exit_code == 1 and expected in result.stderr, result.output
