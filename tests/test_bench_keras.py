"""benchmarks/bench_keras.py: the Keras peer skips cleanly without TensorFlow, and scores as
the project does."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from postergenre.evaluate.metrics import evaluate_scores

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_keras.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_keras", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_tensorflow_it_says_so_and_skips(tmp_path):
    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("TensorFlow is installed here: the script would train")
    out = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert "TensorFlow is not importable" in out.stdout and "skipped" in out.stdout


def test_its_scores_match_the_project_metrics():
    rng = np.random.default_rng(0)
    y = (rng.random((300, 6)) < [0.5, 0.3, 0.2, 0.1, 0.04, 0.01]).astype(np.float32)
    p = np.clip(y * 0.3 + rng.random(y.shape), 0, 1)
    p[:, 0] = np.round(p[:, 0], 1)  # ties
    ours = load_script().scores(y, p)
    ref = evaluate_scores(y, p, [f"g{i}" for i in range(6)])
    assert ours["top3_hit"] == pytest.approx(ref["top3_hit"])
    assert ours["macro_ap"] == pytest.approx(ref["macro_ap"])
    assert ours["micro_ap"] == pytest.approx(ref["micro_ap"])
    assert ours["macro_auc"] == pytest.approx(ref["macro_roc_auc"])
