"""`train --recipe shipped`: every stage of the shipped model's card, resumable, in one call.

The stages run at tiny sizes here (`Settings`); the recipe's own sizes are the card's."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_small_dataset, run_cli
from safetensors.torch import load_file

from postergenre.data.dataset import load_split
from postergenre.errors import RunError
from postergenre.pipeline import FINAL, FINETUNE_TV, STAGES, STATE, Settings, run_pipeline
from postergenre.predict import Predictor
from postergenre.run import load_run
from postergenre.train import fit as fit_module

GENRES = ["Comedy", "Drama", "Horror"]
TINY = Settings(input_size=(64, 48), head={"hidden": 8}, head_epochs=3, finetune_epochs=2,
                batch_size=8)

pytestmark = pytest.mark.usefixtures("isolated")


@pytest.fixture
def dataset(tmp_path):
    return make_small_dataset(tmp_path, GENRES, (16, 6, 30))  # 10 test positives per genre


@pytest.mark.slow
def test_the_recipe_builds_a_complete_model(dataset, tmp_path):
    lines: list[str] = []
    state = run_pipeline(dataset, tmp_path / "out", settings=TINY, log=lines.append)
    assert "stopped" not in state and list(state["stages"]) == [s.name for s in STAGES]
    final = tmp_path / "out" / FINAL
    run = load_run(final)
    assert run.config.text.text_fitted_on == ("train", "val")
    weights = load_file(str(final / "weights.safetensors"))
    assert all(v.dtype == torch.float16 for v in weights.values() if v.is_floating_point())
    stage6 = load_file(str(tmp_path / "out" / FINETUNE_TV / "weights.safetensors"))
    assert all(torch.equal(weights[k], stage6[k].half()) for k in stage6)
    # the refit trained on train + val, for the epochs stage 1 picked
    assert len(load_split(tmp_path / "out" / "trainval", "train")) == 16 + 6
    assert state["stages"]["5-head-trainval"]["epochs"] == state["stages"]["1-head"][
        "best_epoch"]
    int8 = state["stages"]["7-final"]["int8"]
    assert int8["split"] == "test" and int8["posters"] == 30
    assert (final / "int8.json").is_file() == int8["accepted"]
    card = (final / "card.md").read_text()
    assert "prior" in card and "fused" in card and "8-evaluate" in card
    assert f"{state['stages']['8-evaluate']['fused']['macro_ap']:.3f}" in card
    assert any(line.startswith("stage 6/8") for line in lines)
    Predictor.load(final, backend="torch")  # it loads like any run
    # a rerun redoes nothing
    lines.clear()
    run_pipeline(dataset, tmp_path / "out", settings=TINY, log=lines.append)
    assert all("done, skipped" in line for line in lines)
    with pytest.raises(RunError, match="a different settings"):
        run_pipeline(dataset, tmp_path / "out", settings=Settings())


@pytest.mark.slow
def test_a_killed_build_resumes_to_the_same_model(dataset, tmp_path, monkeypatch):
    run_pipeline(dataset, tmp_path / "full", settings=TINY)
    real_fit = fit_module.fit

    def kill_in_stage_6(dataset, out, config=None, **kwargs):
        if out.name == FINETUNE_TV:
            def kill(record):
                raise KeyboardInterrupt  # the first epoch is checkpointed, then the kill
            kwargs["on_epoch_end"] = kill
        return real_fit(dataset, out, config, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(fit_module, "fit", kill_in_stage_6)
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(dataset, tmp_path / "cut", settings=TINY)
    done = json.loads((tmp_path / "cut" / STATE).read_text())["stages"]
    assert list(done) == [s.name for s in STAGES[:5]]
    head = tmp_path / "cut" / "1-head" / "weights.safetensors"
    before = head.stat().st_mtime_ns
    lines: list[str] = []
    run_pipeline(dataset, tmp_path / "cut", settings=TINY, log=lines.append)
    assert head.stat().st_mtime_ns == before  # finished stages are not redone
    assert sum("done, skipped" in line for line in lines) == 5
    full, cut = (load_file(str(tmp_path / r / FINAL / "weights.safetensors"))
                 for r in ("full", "cut"))
    assert all(torch.equal(full[k], cut[k]) for k in full)
    assert ((tmp_path / "full" / FINAL / "text" / "fusion.json").read_bytes()
            == (tmp_path / "cut" / FINAL / "text" / "fusion.json").read_bytes())


@pytest.mark.slow
def test_time_limit_stops_cleanly_and_a_rerun_finishes(dataset, tmp_path):
    state = run_pipeline(dataset, tmp_path / "out", settings=TINY, time_limit=1e-9)
    assert "stopped" in state and not state["stages"]
    assert json.loads((tmp_path / "out" / STATE).read_text())["stopped"]
    state = run_pipeline(dataset, tmp_path / "out", settings=TINY)
    assert "stopped" not in state and (tmp_path / "out" / FINAL / "card.md").is_file()


def test_out_must_not_be_the_dataset_or_another_folder(dataset, tmp_path):
    with pytest.raises(RunError, match="inside the input dataset"):
        run_pipeline(dataset, dataset, settings=TINY)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(RunError, match="not empty"):
        run_pipeline(dataset, tmp_path / "busy", settings=TINY)


def test_cli_takes_only_its_own_options(dataset, tmp_path):
    base = ["train", "--recipe", "shipped", "--out", str(tmp_path / "out"), "--no-progress"]
    result = run_cli(*base, "--data", str(dataset), "--epochs", "3")
    assert result.exit_code == 1
    assert "--epochs does not apply to --recipe shipped" in result.stderr
    result = run_cli(*base)
    assert result.exit_code == 1 and "--data is required" in result.stderr
    assert not (tmp_path / "out").exists()
    result = run_cli(*base, "--data", str(dataset), "--time-limit", "0")
    assert result.exit_code == 0, result.output
    assert "rerun the same command to resume" in result.output
    state = json.loads((tmp_path / "out" / STATE).read_text())
    assert state["stopped"] and not state["stages"]


def test_a_build_killed_in_its_first_stage_is_not_refused(dataset, tmp_path, monkeypatch):
    def killed(*args, **kwargs):
        (tmp_path / "out" / "1-head").mkdir(parents=True, exist_ok=True)  # what fit leaves
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(fit_module, "fit", killed)
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(dataset, tmp_path / "out", settings=TINY)
    with monkeypatch.context() as m:  # the rerun gets past the check of OUT into stage 1
        m.setattr(fit_module, "fit", killed)
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(dataset, tmp_path / "out", settings=TINY)
