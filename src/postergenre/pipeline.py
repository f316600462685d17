"""The shipped model's recipe as one resumable pipeline: `postergenre train --recipe shipped`.

    run_pipeline("datasets/shared", "runs/shipped")

runs every stage of the shipped model's card (assets/default/card.md) into OUT:

    OUT/pipeline.json        the state: the settings, and each finished stage's figures and time
        1-head/              head on frozen features (368 x 250) on train, early stopping on val
        2-finetune/          its last 2 blocks fine-tuned on train: the train-only poster model
                             (stage 3 adds its text/: the title model and the fusion)
        trainval/            the dataset with train + val as its train split
        5-head-trainval/     the head on train + val for the epochs stage 1 picked
        6-finetune-trainval/ its last 2 blocks fine-tuned on train + val
        final/               the model to ship: stage 6's weights in float16, the title model
                             refitted on train + val titles, the fusion from stage 3, int8.json
                             (the int8 check on test) and card.md
        evaluation/          metrics.json of the final model on test

`STAGES` is the one list of stages. A stage is done when pipeline.json says so; rerunning skips
finished stages and resumes the one that was cut (a training stage from its last checkpoint),
so a run killed at any moment ends, rerun, with the same model. `time_limit` stops cleanly
between stages or epochs.

The fusion is fitted on the val probabilities of the train-only fine-tuned model (stage 2):
the final model trained on val, so its own val scores are memorised. (The card's first build
used a proxy for them, a head on the frozen features trained on train; stage 2 is the honest
version of the same thing.) The poster thresholds are stage 2's too, tuned on val by a model
that never saw it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from postergenre.errors import PosterGenreError, RunError
from postergenre.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from postergenre.progress import SILENT, Progress

PIPELINES = ("shipped",)  # `--recipe` names that run this pipeline, not one training
STATE = "pipeline.json"
HEAD, FINETUNE, TRAINVAL = "1-head", "2-finetune", "trainval"
HEAD_TV, FINETUNE_TV, FINAL, EVALUATION = ("5-head-trainval", "6-finetune-trainval", "final",
                                           "evaluation")


@dataclass(frozen=True)
class Settings:
    """What the stages train; the defaults are the shipped model's (tests shrink them)."""

    model: str = "efficientnet-lite0"
    input_size: tuple[int, int] = (368, 250)
    head: dict[str, Any] = field(default_factory=dict)  # model settings beyond the mode's
    head_epochs: int | None = None  # None: the features mode's default, with early stopping
    finetune_epochs: int | None = None  # None: the finetune mode's default (8)
    trainable_blocks: int = 2
    batch_size: int | None = None  # None: each mode's default


class Stopped(PosterGenreError):
    """The time limit ran out; the state is saved and a rerun continues."""


@dataclass
class Context:
    dataset: Path
    out: Path
    settings: Settings
    state: dict[str, Any]
    deadline: float | None
    progress: Progress
    log: Callable[[str], None]

    def left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def result(self, stage: str) -> dict[str, Any]:
        return self.state["stages"][stage]


def _train(ctx: Context, folder: str, dataset: Path, mode: str, titles: bool = False,
           **options: Any) -> dict[str, Any]:
    """A training stage: a new run in OUT/folder, or the one a kill cut, resumed."""
    from postergenre.run import holds_run
    from postergenre.train.fit import fit
    from postergenre.train.recipes import make_config

    out, s = ctx.out / folder, ctx.settings
    given = {"batch_size": s.batch_size, "titles": titles, **options}
    config = make_config(mode=mode, model=s.model, **given)
    resume = holds_run(out)
    summary = fit(None if resume else dataset, out, None if resume else config, resume=resume,
                  time_limit=ctx.left(), progress=ctx.progress)
    if summary["stopped"]:
        raise Stopped(summary["stopped"])
    return {k: summary[k] for k in ("epochs", "best_epoch", "best_val_macro_ap")}


def head(ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    return _train(ctx, HEAD, ctx.dataset, "features", epochs=s.head_epochs,
                  model_kwargs={"input_size": list(s.input_size), **s.head})


def finetune(ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    return _train(ctx, FINETUNE, ctx.dataset, "finetune", init=str(ctx.out / HEAD),
                  trainable_blocks=s.trainable_blocks, epochs=s.finetune_epochs)


def titles(ctx: Context) -> dict[str, Any]:
    """The title step on the finished stage-2 run (what `train` does when titles are on)."""
    from postergenre.train.fit import fit

    summary = fit(None, ctx.out / FINETUNE, resume=True, titles=True, progress=ctx.progress)
    if not summary["text"]:
        raise PosterGenreError(f"{ctx.dataset}: the train or val split has no titles; the "
                               "shipped recipe needs them")
    return {"text_seconds": summary["text_seconds"]}


def trainval(ctx: Context) -> dict[str, Any]:
    from postergenre.data.dataset import write_trainval

    write_trainval(ctx.dataset, ctx.out / TRAINVAL)
    return {}


def head_trainval(ctx: Context) -> dict[str, Any]:
    """Stage 1 again on train + val, for exactly the epochs stage 1 picked."""
    s = ctx.settings
    epochs = ctx.result(HEAD)["best_epoch"]
    return _train(ctx, HEAD_TV, ctx.out / TRAINVAL, "features", epochs=epochs,
                  patience=1_000_000, model_kwargs={"input_size": list(s.input_size), **s.head})


def finetune_trainval(ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    return _train(ctx, FINETUNE_TV, ctx.out / TRAINVAL, "finetune",
                  init=str(ctx.out / HEAD_TV), trainable_blocks=s.trainable_blocks,
                  epochs=s.finetune_epochs)


def final(ctx: Context) -> dict[str, Any]:
    """OUT/final: stage 6's weights in float16 with stage 2's poster thresholds, the title
    model refitted on train + val titles with stage 3's fusion and fused thresholds, the int8
    check on test, and its evaluation on test."""
    import torch
    from safetensors.torch import load_file

    from postergenre.evaluate.int8 import quantize_run
    from postergenre.io import save_weights
    from postergenre.run import CONFIG, HISTORY, THRESHOLDS, WEIGHTS, load_run
    from postergenre.train.fit import TITLE_SETTINGS
    from postergenre.train.text import fit_text_model, save_text

    source, honest, out = ctx.out / FINETUNE_TV, ctx.out / FINETUNE, ctx.out / FINAL
    for name in (CONFIG, HISTORY):
        atomic_write_bytes(out / name, (source / name).read_bytes())
    atomic_write_bytes(out / THRESHOLDS, (honest / THRESHOLDS).read_bytes())
    save_weights(load_file(str(source / WEIGHTS)), out / WEIGHTS, dtype=torch.float16)
    side = load_run(honest).title_side
    if side is None:
        raise RunError(f"{honest}: stage 3 left no title model; remove the folder and rerun")
    text = fit_text_model(ctx.dataset, ("train", "val"), **TITLE_SETTINGS)
    save_text(out, text, side.fusion, side.thresholds,
              {"text_fitted_on": ["train", "val"], "fusion_fitted_on": "val",
               "dataset": str(ctx.dataset)})
    ctx.log("int8 check on the test split")
    record = quantize_run(load_run(out), ctx.dataset, split="test")
    return {"int8": {k: record[k] for k in ("split", "posters", "macro_ap_fp32",
                                            "macro_ap_int8", "accepted")}}


def evaluate(ctx: Context) -> dict[str, Any]:
    """The final model on test beside the prior (poster only and fused), then its card."""
    from postergenre.predict import Predictor
    from postergenre.scoring import evaluate_run

    out = ctx.out / FINAL
    results = evaluate_run(out, ctx.dataset, split="test", out=ctx.out / EVALUATION,
                           report=False)
    precision = "int8" if getattr(Predictor.load(out).backend, "int8", False) else "fp32"
    return {"precision": precision, "posters": results["model"]["n_posters"],
            "prior": _figures(results["prior"]), "poster": _figures(results["model"]),
            "fused": _figures(results["fused"])}


def _figures(r: dict[str, Any]) -> dict[str, Any]:
    keep = ("top3_hit", "macro_ap", "micro_ap", "macro_roc_auc", "macro_f1")
    return {**{k: r[k] for k in keep}, "ci": r.get("ci", {})}


@dataclass(frozen=True)
class Stage:
    name: str
    what: str  # one line, for progress and the card
    run: Callable[[Context], dict[str, Any]]


STAGES = (
    Stage(HEAD, "head on frozen features, train, early stopping on val (picks E epochs)", head),
    Stage(FINETUNE, "last blocks fine-tuned on train: the train-only poster model", finetune),
    Stage("3-titles", "title model on train titles, per-genre fusion and fused thresholds on "
          "val with stage 2's val probabilities", titles),
    Stage("4-trainval", "the dataset with train + val as its train split", trainval),
    Stage(HEAD_TV, "head on train + val for E epochs", head_trainval),
    Stage(FINETUNE_TV, "last blocks fine-tuned on train + val", finetune_trainval),
    Stage("7-final", "final model: float16 weights, title model refitted on train + val "
          "titles, stage 3's fusion, int8 check on test", final),
    Stage("8-evaluate", "the final model on test beside the prior, and its card", evaluate),
)


def _check_out(dataset: Path, out: Path, settings: Settings) -> dict[str, Any]:
    """The saved state of OUT, or a new one; an OUT of another build is refused."""
    from postergenre.data.dataset import load_split

    if out.resolve() == dataset.resolve() or dataset.resolve() in out.resolve().parents:
        raise RunError(f"{out}: is inside the input dataset; choose another --out")
    for split in ("train", "val", "test"):
        load_split(dataset, split, allow_empty=False)
    new = {"recipe": "shipped", "dataset": str(dataset.resolve()),
           "settings": json.loads(json.dumps(asdict(settings))), "stages": {}}
    path = out / STATE
    if not path.is_file():
        if out.exists() and any(out.iterdir()):
            raise RunError(f"{out}: not empty and no {STATE}; choose another --out")
        return new
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise RunError(f"{path}: unreadable ({e})") from None
    for key in ("recipe", "dataset", "settings"):
        if state.get(key) != new[key]:
            raise RunError(f"{out}: holds a build with a different {key}; rerun it with the "
                           "same command, or choose another --out")
    return state


def run_pipeline(dataset: str | Path, out: str | Path, *, settings: Settings | None = None,
                 time_limit: float | None = None, progress: Progress = SILENT,
                 log: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Run (or resume) every stage into `out`; return the state. `time_limit` in seconds:
    a training stage stops after the epoch that would end past it, and no stage starts after
    it; the state then says "stopped" and a rerun of the same call continues."""
    dataset, out, settings = Path(dataset), Path(out), settings or Settings()
    state = _check_out(dataset, out, settings)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / STATE, state)  # first: a build killed at once can still resume
    deadline = None if time_limit is None else time.monotonic() + time_limit
    ctx = Context(dataset, out, settings, state, deadline, progress, log)
    state.pop("stopped", None)
    for i, stage in enumerate(STAGES, 1):
        if stage.name in state["stages"]:
            log(f"stage {i}/{len(STAGES)} {stage.name}: done, skipped")
            continue
        left = ctx.left()
        if left is not None and left <= 0:
            state["stopped"] = f"the time limit ran out before stage {stage.name}"
            break
        log(f"stage {i}/{len(STAGES)} {stage.name}: {stage.what}")
        t0 = time.monotonic()
        try:
            result = stage.run(ctx)
        except Stopped as e:
            spent = state.setdefault("partial", {})
            spent[stage.name] = round(spent.get(stage.name, 0.0) + time.monotonic() - t0, 1)
            state["stopped"] = f"stage {stage.name}: {e}"
            break
        seconds = state.get("partial", {}).pop(stage.name, 0.0) + time.monotonic() - t0
        state["stages"][stage.name] = {**result, "seconds": round(seconds, 1)}
        atomic_write_json(out / STATE, state)
        log(f"stage {i}/{len(STAGES)} {stage.name}: done in {seconds:.0f} s")
    atomic_write_json(out / STATE, state)
    if "stopped" not in state:
        atomic_write_text(out / FINAL / "card.md", model_card(state))
    return state


def model_card(state: dict[str, Any]) -> str:
    """The final model's card (markdown) from the pipeline's state: test figures beside the
    prior, the int8 check, and each stage's wall time."""
    stages, ev = state["stages"], state["stages"]["8-evaluate"]
    int8 = stages["7-final"]["int8"]
    s = state["settings"]
    h, w = s["input_size"]
    cols = ("top3_hit", "macro_ap", "micro_ap", "macro_roc_auc", "macro_f1")

    def row(name: str, r: dict[str, Any]) -> str:
        cells = [f"{r[c]:.3f}" for c in cols]
        ci = r.get("ci", {})
        extra = " | ".join(f"[{ci[k][0]:.3f}, {ci[k][1]:.3f}]" if ci.get(k) and None not in
                           ci[k] else "-" for k in ("top3_hit", "macro_ap"))
        return f"| {name} | " + " | ".join(cells) + f" | {extra} |"

    lines = [
        f"# Model card: {s['model']} at {h} x {w}, rebuilt by `postergenre train --recipe "
        "shipped`", "",
        f"Dataset: `{Path(state['dataset']).name}`; test: {ev['posters']} posters. Every "
        "stage below ran in this order; the reasons for each setting are in the shipped "
        "model's card.", "",
        "## Results on the test split, beside the prior", "",
        "Macro averages over the genres with at least 10 positives in the split; macro F1 at "
        "thresholds tuned on val; 95% bootstrap intervals.", "",
        "| model | top-3 hit | macro AP | micro AP | macro ROC-AUC | macro F1 | top-3 hit 95% "
        "| macro AP 95% |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        row("prior (train genre frequencies)", ev["prior"]),
        row(f"this model, poster only (onnxruntime {ev['precision']}, as served)", ev["poster"]),
        row("this model, poster + title + year (fused)", ev["fused"]),
        "",
        f"int8 check on {int8['posters']} {int8['split']} posters: macro AP fp32 "
        f"{int8['macro_ap_fp32']:.4f}, int8 {int8['macro_ap_int8']:.4f} "
        f"({'accepted' if int8['accepted'] else 'refused: the model is served in fp32'}).",
        "",
        "## Stages and their wall times", "",
        "| stage | what | result | time |", "| --- | --- | --- | --- |",
    ]
    for stage in STAGES:
        r = stages[stage.name]
        note = (f"epochs run: {r['epochs']}, best: {r['best_epoch']} (val macro AP "
                f"{r['best_val_macro_ap']:.4f})" if "epochs" in r else "")
        lines.append(f"| {stage.name} | {stage.what} | {note} | {r['seconds']:.0f} s |")
    total = sum(r["seconds"] for r in stages.values())
    lines += ["", f"Total: {total / 60:.1f} min (a stage resumed after a kill counts only its "
              "last, finished attempt)."]
    return "\n".join(lines) + "\n"
