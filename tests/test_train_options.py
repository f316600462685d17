"""`train` and `export` refuse what they cannot honour, in one line, before writing anything;
no command writes over its inputs or over a finished run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_small_dataset, make_tiny_run, run_cli, train_features

from postergenre.errors import PosterGenreError
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

def postergenre(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                *args: str) -> tuple[int, str]:
    """The installed command's entry point (`postergenre.cli.main`): exit code and stderr."""
    from postergenre.cli import main

    monkeypatch.setattr("sys.argv", ["postergenre", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, capsys.readouterr().err


LITE = ["--model", "efficientnet-lite0", "--model-arg", "input_size=[64,48]"]


@pytest.mark.parametrize("extra, expected", [
    (["--model", "vgg16", "--mode", "finetune", "--drop-connect", "0.1"],
     "--drop-connect: vgg16 has no drop-connect; drop the option"),
    (["--recipe", "seed-vgg16", "--mode", "finetune", "--drop-connect", "0.2"],
     "--drop-connect: vgg16 has no drop-connect; drop the option"),
    ([*LITE, "--mode", "features", "--trainable-blocks", "1"],
     "--trainable-blocks does not apply to features training; drop the option"),
    ([*LITE, "--mode", "features", "--model-arg", "trainable_blocks=1"],
     "--trainable-blocks: features training trains the head only; drop the option"),
    (["--model", "custom-cnn", "--mode", "finetune"],
     "--mode finetune: custom-cnn cannot train in finetune mode; it supports: end-to-end"),
    ([*LITE, "--mode", "features", "--no-cache"],
     "--no-cache does not apply to features training; drop the option"),
    ([*LITE, "--mode", "features", "--workers", "4"],
     "--workers does not apply to features training; drop the option"),
])
def test_an_option_the_model_or_mode_cannot_honour_is_refused_by_the_command(
        dataset, tmp_path, monkeypatch, capsys, extra, expected):
    out = tmp_path / "run"
    code, err = postergenre(monkeypatch, capsys, "train", "--data", str(dataset), "--out",
                            str(out), "--no-progress", *extra)
    assert code == 1 and err == f"error: {expected}\n", err
    assert not out.exists() or not any(out.iterdir())


def test_a_bad_value_is_a_usage_error_of_the_command(dataset, tmp_path, monkeypatch, capsys):
    code, err = postergenre(monkeypatch, capsys, "train", "--data", str(dataset), "--out",
                            str(tmp_path / "r"), "--resample", "lots")
    assert code == 2 and "--resample" in err


def test_the_python_api_refuses_what_the_command_refuses(dataset, tmp_path):
    from postergenre.train.fit import fit
    from postergenre.train.recipes import TrainConfig, make_config

    with pytest.raises(PosterGenreError, match="^--drop-connect: vgg16 has no drop-connect"):
        make_config(mode="finetune", model="vgg16", drop_connect=0.1)
    with pytest.raises(PosterGenreError, match="^--drop-connect: vgg16 has no drop-connect"):
        fit(dataset, tmp_path / "r", TrainConfig(model="vgg16", mode="finetune",
                                                 drop_connect=0.1, trainable_blocks=1))
    with pytest.raises(PosterGenreError, match="^--augment does not apply to features"):
        TrainConfig(model="efficientnet-lite0", mode="features", augment=True)
    with pytest.raises(PosterGenreError, match="^--trainable-blocks does not apply to feat"):
        make_config(mode="features", model="efficientnet-lite0", trainable_blocks=1)
    with pytest.raises(PosterGenreError, match="^--trainable-blocks: features training"):
        fit(dataset, tmp_path / "r", make_config(
            mode="features", model="efficientnet-lite0", model_kwargs={"trainable_blocks": 1}))
    with pytest.raises(PosterGenreError, match="^--mode features: custom-cnn cannot train"):
        fit(dataset, tmp_path / "r", TrainConfig(mode="features"))
    with pytest.raises(PosterGenreError, match="^--backend does not apply to end-to-end"):
        fit(dataset, tmp_path / "r", TrainConfig(), backend="onnx")
    assert not (tmp_path / "r").exists()
    # vgg16 fine-tunes without drop-connect by default, from Python as from the command
    assert make_config(mode="finetune", model="vgg16").drop_connect == 0.0
    assert make_config(mode="finetune", model="efficientnet-lite0").drop_connect > 0


def test_a_stored_run_keeps_only_the_settings_its_mode_reads():
    from postergenre.train.recipes import TrainConfig

    stored = {**TrainConfig(mode="features", model="efficientnet-lite0").to_dict(),
              "drop_connect": 0.2, "trainable_blocks": 3}  # an older run's unread settings
    config = TrainConfig.from_dict(stored)
    assert (config.drop_connect, config.trainable_blocks) == (0.0, 2)


def test_python_and_the_command_make_the_same_run(dataset, tmp_path, monkeypatch, capsys):
    """`postergenre train --model M` and `fit(data, out, make_config(model=M))` pick the same
    mode (the model's default on this device) and store the same settings."""
    from postergenre.train.fit import fit
    from postergenre.train.recipes import make_config

    code, err = postergenre(monkeypatch, capsys, "train", "--data", str(dataset), "--out",
                            str(tmp_path / "cli"), *LITE, "--hidden", "4", "--epochs", "1",
                            "--no-progress")
    assert code in (0, None), err
    fit(dataset, tmp_path / "api", make_config(
        model="efficientnet-lite0", model_kwargs={"input_size": [64, 48], "hidden": 4},
        epochs=1))
    cli, api = load_run(tmp_path / "cli"), load_run(tmp_path / "api")
    assert cli.train_settings == api.train_settings
    assert cli.config.model_kwargs == api.config.model_kwargs
    import torch

    assert cli.train_settings["mode"] == ("end-to-end" if torch.cuda.is_available()
                                          else "features")


def test_every_default_in_the_train_help_is_the_librarys():
    from postergenre.train.recipes import MODE_DEFAULTS, TrainConfig

    result = run_cli("train", "--help", env={"COLUMNS": "400"})
    text = " ".join(result.output.split())
    assert f"features {MODE_DEFAULTS['features']['epochs']}" in text
    assert f"finetune {MODE_DEFAULTS['finetune']['lr']}" in text
    assert f"end-to-end {TrainConfig.patience}" in text


def test_the_commands_defaults_are_the_librarys():
    """Every default of `export`, `serve` and `data` is the one the library's function uses."""
    import inspect

    import typer.main

    from postergenre.cli import app
    from postergenre.data.download import DownloadConfig
    from postergenre.data.prepare import prepare_dataset
    from postergenre.evaluate.int8 import quantize_run
    from postergenre.export import export_onnx
    from postergenre.serve import Limits, serve
    from postergenre.serve.app import MB

    command = typer.main.get_command(app)

    def defaults(*path: str) -> dict[str, object]:
        cmd = command
        for name in path:
            cmd = cmd.commands[name]
        return {p.name: p.default for p in cmd.params}

    def library(function) -> dict[str, object]:
        return {k: p.default for k, p in inspect.signature(function).parameters.items()}

    export, int8 = defaults("export"), library(quantize_run)
    assert export["opset"] == library(export_onnx)["opset"]
    assert (export["max_drop"], export["int8_split"]) == (int8["max_drop"], int8["split"])
    served = defaults("serve")
    assert {k: served[k] for k in ("host", "port", "log_level")} == {
        k: library(serve)[k] for k in ("host", "port", "log_level")}
    assert Limits() == Limits(int(served["max_upload_mb"] * MB), served["max_batch_files"])
    download = defaults("data", "download")
    assert DownloadConfig() == DownloadConfig(**{k: download[k] for k in (
        "concurrency", "timeout", "retries", "max_bytes")})
    prepare = defaults("data", "prepare")
    assert {k: prepare[k] for k in ("seed", "val", "test")} == {
        k: library(prepare_dataset)[k] for k in ("seed", "val", "test")}
