"""`postergenre export --onnx [RUN] OUT.onnx`."""

from __future__ import annotations

from pathlib import Path

import typer

from postergenre.defaults import INT8_MAX_AP_DROP, INT8_SPLITS, MAX_OPSET, MIN_OPSET, ONNX_OPSET
from postergenre.errors import PosterGenreError


def export(
    paths: list[Path] = typer.Argument(
        ..., metavar="[RUN] OUT.onnx",
        help="The run folder to export (omit it for the shipped model), then the output file.",
    ),
    onnx: bool = typer.Option(True, "--onnx", help="Write an ONNX graph (the only format)."),
    opset: int = typer.Option(ONNX_OPSET, help=f"ONNX opset version ({MIN_OPSET} to "
                              f"{MAX_OPSET})."),
    check: bool = typer.Option(True, "--check/--no-check",
                               help="Compare the graph with PyTorch on random posters."),
    int8: Path | None = typer.Option(
        None, "--int8", metavar="DATASET",
        help="Quantise to int8 and keep it only if DATASET's val macro AP (see --int8-split) "
             "drops by at most --max-drop; the run then uses it for prediction.",
    ),
    int8_split: str = typer.Option(
        INT8_SPLITS[0], help=f"Split the --int8 check scores: {' or '.join(INT8_SPLITS)} (test "
                             "for a run that trained on val)."),
    max_drop: float = typer.Option(INT8_MAX_AP_DROP,
                                   help="Largest macro AP loss allowed for --int8."),
) -> None:
    """Export a run's model as one ONNX graph, for onnxruntime or any ONNX runtime.

    Input "image": float32 (N, 3, H, W) RGB in [0, 1]; N is free, H x W the run's input size.

    Output "probabilities": (N, n_genres); the genre names and input size are in its metadata.

    With --int8 the graph is quantised and kept only if it passes a check on held-out posters.
    """
    import numpy as np

    from postergenre.backends import TorchBackend, make_session
    from postergenre.export import export_onnx, run_metadata
    from postergenre.run import load_run

    if len(paths) not in (1, 2):
        raise typer.BadParameter("give [RUN] OUT.onnx", param_hint="[RUN] OUT.onnx")
    run_dir, out = (None, paths[0]) if len(paths) == 1 else paths
    if out.is_dir():
        raise PosterGenreError(f"{out}: is a folder; give a file name such as model.onnx")
    run = load_run(run_dir)
    if out.resolve().parent == run.path.resolve():
        raise PosterGenreError(f"{out}: is inside the run folder {run.path}; write the graph "
                               "elsewhere (an export never writes over its run)")
    if out.parent.exists() and not out.parent.is_dir():
        raise PosterGenreError(f"{out}: its parent {out.parent} is a file, not a folder")
    if int8 is not None:
        return _export_int8(run, out, int8, int8_split, max_drop)
    torch_backend = TorchBackend(run.build_model())
    export_onnx(torch_backend.model, out, run.input_size, opset=opset,
                metadata=run_metadata(run))
    size_mb = out.stat().st_size / 1e6
    h, w = run.input_size
    typer.echo(f"wrote {out} ({size_mb:.1f} MB): image (N, 3, {h}, {w}) float in [0, 1] -> "
               f"probabilities (N, {len(run.genres)})")
    if check:
        x = np.random.default_rng(0).random((2, 3, h, w), dtype=np.float32)
        diff = np.abs(make_session(out).run(None, {"image": x})[0] - torch_backend(x)).max()
        typer.echo(f"max |onnxruntime - pytorch| on 2 random posters: {diff:.1e}")
        if diff > 1e-4:
            raise PosterGenreError(f"{out}: the graph differs from PyTorch by {diff:.1e}")


def _export_int8(run, out: Path, dataset: Path, split: str, max_drop: float) -> None:
    from rich.progress import Progress

    from postergenre.data.dataset import load_split
    from postergenre.evaluate.int8 import quantize_run
    from postergenre.io import atomic_write_bytes
    from postergenre.run import INT8_CARD

    if split not in INT8_SPLITS:
        raise typer.BadParameter(f"{split!r}: use {' or '.join(INT8_SPLITS)}",
                                 param_hint="--int8-split")
    total = len(load_split(dataset, split))
    with Progress(transient=True) as progress:
        task = progress.add_task(f"int8 vs fp32 on {split}", total=total)
        record = quantize_run(run, dataset, max_drop=max_drop, split=split,
                              on_batch=lambda n: progress.advance(task, n))
    ap32, ap8 = record["macro_ap_fp32"], record["macro_ap_int8"]
    typer.echo(f"{split} macro AP on {record['posters']} posters: fp32 {ap32:.4f}, "
               f"int8 {ap8:.4f} (change {ap8 - ap32:+.4f}, allowed -{max_drop})")
    if not record["accepted"]:
        raise PosterGenreError(f"{run.path}: int8 loses more than {max_drop} {split} macro AP; "
                               "kept fp32, wrote nothing")
    atomic_write_bytes(out, Path(record["graph"]).read_bytes())
    typer.echo(f"wrote {out} and {run.path / INT8_CARD} (the onnx backend now uses int8)")
