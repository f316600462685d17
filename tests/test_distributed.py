"""DDP: `train` under torchrun with 2 CPU processes (gloo) matches one process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import make_dataset
from safetensors.torch import load_file

from postergenre.run import read_history
from postergenre.train import distributed

# Float sums of the two ranks' gradients happen in another order than one process's: the
# weights agree to float32 rounding (measured: 2e-8), not bit for bit. SGD keeps it so; Adam's
# division by sqrt(v) can blow rounding up for weights whose gradients are ~0.
ATOL = 1e-6


def test_helpers_are_no_ops_in_one_process():
    assert distributed.setup("cpu") == (0, 1, torch.device("cpu"))
    assert distributed.is_main() and distributed.broadcast(7) == 7
    distributed.barrier()
    distributed.cleanup()


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    data = make_dataset(tmp_path / "data")
    env = {**os.environ, "POSTERGENRE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    # No dropout (each rank draws its own masks); augmentation and shuffling are shared.
    common = ["train", "--data", str(data), "--model", "custom-cnn", "--model-arg",
              "input_size=[76,76]", "--model-arg", "conv_dropout=0", "--model-arg",
              "dense_dropout=0", "--epochs", "2", "--batch-size", "8", "--augment",
              "--optimizer", "sgd", "--lr", "0.01",
              "--device", "cpu", "--precision", "fp32", "--no-progress"]
    one = [sys.executable, "-m", "postergenre", *common, "--out", str(tmp_path / "one")]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "postergenre", *common, "--out", str(tmp_path / "two")]
    # A control: the same run on other batches (no augmentation) must be far outside ATOL.
    other = [*one[:-1], str(tmp_path / "other"), "--no-augment"]
    for cmd in (one, two, other):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    a = load_file(str(tmp_path / "one" / "weights.safetensors"))
    b = load_file(str(tmp_path / "two" / "weights.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=ATOL), k
    c = load_file(str(tmp_path / "other" / "weights.safetensors"))
    assert max((a[k] - c[k]).abs().max().item() for k in a) > 100 * ATOL
    h1, h2 = read_history(tmp_path / "one"), read_history(tmp_path / "two")
    assert len(h1) == len(h2) == 2
    assert abs(h1[-1]["val_macro_ap"] - h2[-1]["val_macro_ap"]) < 1e-3
