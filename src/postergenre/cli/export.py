"""`postergenre export --onnx [RUN] OUT.onnx`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from postergenre.errors import PosterGenreError


def export(
    paths: list[Path] = typer.Argument(
        ..., metavar="[RUN] OUT.onnx",
        help="The run folder to export (omit it for the shipped model), then the output file.",
    ),
    onnx: bool = typer.Option(True, "--onnx", help="Write an ONNX graph (the only format)."),
    opset: int = typer.Option(17, help="ONNX opset version."),
    check: bool = typer.Option(True, "--check/--no-check",
                               help="Compare the graph with PyTorch on random posters."),
) -> None:
    """Export a run's model as one ONNX graph for onnxruntime or any ONNX runtime.

    The graph takes "image", a float32 (N, 3, H, W) RGB batch in [0, 1] (N is free; H, W are
    the run's input size) and returns "probabilities" (N, n_genres); the genre names and the
    input size are stored in its metadata.
    """
    from postergenre.export import export_onnx, make_session, run_metadata
    from postergenre.predict import TorchBackend
    from postergenre.run import load_run

    if len(paths) not in (1, 2):
        raise typer.BadParameter("give [RUN] OUT.onnx", param_hint="[RUN] OUT.onnx")
    run_dir, out = (None, paths[0]) if len(paths) == 1 else paths
    if out.is_dir():
        raise PosterGenreError(f"{out}: is a folder; give a file name such as model.onnx")
    run = load_run(run_dir)
    torch_backend = TorchBackend(run)
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
